//! Keys and values as text: printable ASCII as itself, `\\` as `\\\\`, and any
//! other byte as `\xNN`. The cluster file's shard begins, workload traces and
//! the command-line client all read and write keys this way.

use bytes::Bytes;

/// Text that is not a valid escaped key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyTextError {
    #[error("bad \\x escape in {0:?}: use two hex digits, as in \\xff")]
    BadHexEscape(String),
    #[error("bad escape in {0:?}: use \\xNN or \\\\")]
    UnknownEscape(String),
}

/// Turns `\xNN` escapes (and `\\`) into bytes.
pub fn unescape(text: &str) -> Result<Bytes, KeyTextError> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                let digits = std::str::from_utf8(&hex).ok().filter(|h| h.len() == 2);
                let Some(value) = digits.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                    return Err(KeyTextError::BadHexEscape(text.to_owned()));
                };
                out.push(value);
            }
            _ => return Err(KeyTextError::UnknownEscape(text.to_owned())),
        }
    }
    Ok(Bytes::from(out))
}

/// Shows bytes as text, escaping what is not printable ASCII.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        let raw = b"a\\b\xff\x00z";
        assert_eq!(escape(raw), "a\\\\b\\xff\\x00z");
        assert_eq!(unescape(&escape(raw)).unwrap(), Bytes::from_static(raw));
    }

    #[test]
    fn bad_escapes_are_refused() {
        assert!(matches!(
            unescape("\\x4"),
            Err(KeyTextError::BadHexEscape(_))
        ));
        assert!(matches!(
            unescape("\\xzz"),
            Err(KeyTextError::BadHexEscape(_))
        ));
        assert!(matches!(
            unescape("\\q"),
            Err(KeyTextError::UnknownEscape(_))
        ));
        assert!(matches!(
            unescape("\\"),
            Err(KeyTextError::UnknownEscape(_))
        ));
    }
}
