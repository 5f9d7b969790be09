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

/// How far a copy stands: the size left by estimate, the rate, and when
/// it should be done at that rate (`"size left unknown"` before an
/// estimate).
pub fn copy_left(size_left: Option<u64>, size_per_sec: u64) -> String {
    let Some(left) = size_left else {
        return format!("size left unknown, {}/s", binary_bytes(size_per_sec));
    };
    let eta = match (left, size_per_sec) {
        (0, _) => "done".to_owned(),
        (_, 0) => "no progress now".to_owned(),
        (left, rate) => format!("done in about {} s", left.div_ceil(rate)),
    };
    format!(
        "about {} left at {}/s, {eta}",
        binary_bytes(left),
        binary_bytes(size_per_sec)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_says_what_is_left_and_when_it_should_be_done() {
        assert_eq!(copy_left(None, 0), "size left unknown, 0 B/s");
        assert_eq!(
            copy_left(Some(100 << 20), 40 << 20),
            "about 100.0 MiB left at 40.0 MiB/s, done in about 3 s"
        );
        assert_eq!(
            copy_left(Some(5 << 20), 0),
            "about 5.0 MiB left at 0 B/s, no progress now"
        );
        assert_eq!(copy_left(Some(0), 7), "about 0 B left at 7 B/s, done");
    }

    #[test]
    fn bytes_take_the_largest_unit_under_1024() {
        assert_eq!(binary_bytes(512), "512 B");
        assert_eq!(binary_bytes(2048), "2.0 KiB");
        assert_eq!(binary_bytes(3 << 29), "1.5 GiB");
    }
}
