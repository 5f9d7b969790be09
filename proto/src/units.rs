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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_take_the_largest_unit_under_1024() {
        assert_eq!(binary_bytes(512), "512 B");
        assert_eq!(binary_bytes(2048), "2.0 KiB");
        assert_eq!(binary_bytes(3 << 29), "1.5 GiB");
    }
}
