//! Kubernetes resource quantities (`100m`, `0.5`, `64Mi`, `1G`, `1e3`) as numbers, for
//! cgroup limits and resourceFieldRef values.

/// The value of a quantity in base units (cores, bytes), or None if it is malformed.
pub fn parse(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    if num.is_empty() {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * mult)
}

/// CPU in millicores, rounded up as Kubernetes does (`0.0001` is 1m).
pub fn cpu_millis(q: &str) -> Option<u64> {
    parse(q).map(|v| (v * 1000.0 - 1e-9).ceil().max(0.0) as u64)
}

/// Bytes, rounded up.
pub fn bytes(q: &str) -> Option<u64> {
    parse(q).map(|v| (v - 1e-9).ceil().max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(cpu_millis("100m"), Some(100));
        assert_eq!(cpu_millis("0.5"), Some(500));
        assert_eq!(cpu_millis("2"), Some(2000));
        assert_eq!(cpu_millis("1u"), Some(1));
        assert_eq!(bytes("64Mi"), Some(64 << 20));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("128974848"), Some(128974848));
        assert_eq!(bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(parse("12x"), None);
        assert_eq!(parse("Mi"), None);
    }
}
