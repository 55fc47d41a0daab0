//! Kubernetes resource quantities: `2`, `1500m`, `4Gi`, `3900Mi`, `1e3`, `128974848`.

/// Parses a quantity into a plain number (cores for CPU, bytes for memory).
pub fn parse(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let value: f64 = num.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "u" => 1e-6,
        "n" => 1e-9,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    Some(value * scale).filter(|v| v.is_finite() && *v >= 0.0)
}

/// Memory quantity in GiB.
pub fn gib(q: &str) -> Option<f64> {
    parse(q).map(|b| b / 1024f64.powi(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_memory_forms() {
        assert_eq!(parse("2"), Some(2.0));
        assert_eq!(parse("1500m"), Some(1.5));
        assert_eq!(gib("4Gi"), Some(4.0));
        assert_eq!(gib("512Mi"), Some(0.5));
        assert_eq!(parse("1e3"), Some(1000.0));
        assert_eq!(parse("1k"), Some(1000.0));
        assert_eq!(parse("lots"), None);
        assert_eq!(parse("-1"), None);
    }
}
