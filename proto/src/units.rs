//! Quantities written for people: status lines and error messages.

/// Bytes in binary units, with one decimal above a KiB.
pub fn binary_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// How far a copy stands, in stored sizes (`rpc::stored_size`): what it
/// copied, the size left by estimate, the rate, and when it should be
/// done at that rate.
pub fn copy_progress(
    pairs_copied: u64,
    bytes_copied: u64,
    size_left: Option<u64>,
    size_per_sec: u64,
) -> String {
    let copied = bytes_copied + crate::rpc::STORED_PAIR_OVERHEAD * pairs_copied;
    let rate = binary_bytes(size_per_sec);
    let left = match size_left {
        None => format!("size left unknown, {rate}/s"),
        Some(0) => format!("nothing left, {rate}/s"),
        Some(left) if size_per_sec == 0 => {
            format!("about {} left, no progress now", binary_bytes(left))
        }
        Some(left) => format!(
            "about {} left at {rate}/s, done in about {} s",
            binary_bytes(left),
            left.div_ceil(size_per_sec)
        ),
    };
    format!(
        "{pairs_copied} pairs ({} stored) copied, {left}",
        binary_bytes(copied)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_says_what_is_left_and_when_it_should_be_done() {
        let copied = "1000 pairs (1.0 MiB stored) copied";
        let bytes = (1 << 20) - 32_000;
        assert_eq!(
            copy_progress(1_000, bytes, None, 0),
            format!("{copied}, size left unknown, 0 B/s")
        );
        assert_eq!(
            copy_progress(1_000, bytes, Some(100 << 20), 40 << 20),
            format!("{copied}, about 100.0 MiB left at 40.0 MiB/s, done in about 3 s")
        );
        assert_eq!(
            copy_progress(1_000, bytes, Some(5 << 20), 0),
            format!("{copied}, about 5.0 MiB left, no progress now")
        );
        assert_eq!(
            copy_progress(1_000, bytes, Some(0), 7),
            format!("{copied}, nothing left, 7 B/s")
        );
    }

    #[test]
    fn bytes_take_the_largest_unit_under_1024() {
        assert_eq!(binary_bytes(512), "512 B");
        assert_eq!(binary_bytes(2048), "2.0 KiB");
        assert_eq!(binary_bytes(3 << 29), "1.5 GiB");
    }
}
