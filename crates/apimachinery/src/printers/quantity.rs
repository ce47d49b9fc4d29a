//! Canonical resource quantities (`resource.Quantity.String()`): the printers show capacities and
//! quota usage the way Kubernetes re-renders them ("1024Mi" prints as "1Gi", "1.5" as "1500m").

use serde_json::Value;

#[derive(Clone, Copy, PartialEq)]
enum Format {
    DecimalSi,
    BinarySi,
    DecimalExponent,
}

/// A parsed quantity: `mantissa * 10^scale`, in the format its suffix asked for.
struct Parsed {
    mantissa: i128,
    scale: i32,
    format: Format,
}

/// The canonical string of a quantity given as a JSON string (or number). Values this small
/// parser cannot hold exactly (dozens of digits) are returned as written.
pub fn canonical(v: &Value) -> String {
    let raw = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return "0".to_string(),
    };
    match parse(&raw) {
        Some(p) => render(p),
        None => raw,
    }
}

/// The canonical string of an optional quantity field; Go's zero `Quantity` prints "0".
pub fn canonical_opt(v: Option<&Value>) -> String {
    v.map_or_else(|| "0".to_string(), canonical)
}

fn pow10(n: u32) -> Option<i128> {
    10i128.checked_pow(n)
}

fn parse(s: &str) -> Option<Parsed> {
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (int_part, after) = rest.split_at(int_len);
    let (frac_part, suffix) = match after.strip_prefix('.') {
        Some(f) => {
            let n = f.bytes().take_while(u8::is_ascii_digit).count();
            f.split_at(n)
        }
        None => ("", after),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let (format, exp10, exp2) = match suffix {
        "" => (Format::DecimalSi, 0, 0),
        "n" => (Format::DecimalSi, -9, 0),
        "u" => (Format::DecimalSi, -6, 0),
        "m" => (Format::DecimalSi, -3, 0),
        "k" => (Format::DecimalSi, 3, 0),
        "M" => (Format::DecimalSi, 6, 0),
        "G" => (Format::DecimalSi, 9, 0),
        "T" => (Format::DecimalSi, 12, 0),
        "P" => (Format::DecimalSi, 15, 0),
        "E" => (Format::DecimalSi, 18, 0),
        "Ki" => (Format::BinarySi, 0, 10),
        "Mi" => (Format::BinarySi, 0, 20),
        "Gi" => (Format::BinarySi, 0, 30),
        "Ti" => (Format::BinarySi, 0, 40),
        "Pi" => (Format::BinarySi, 0, 50),
        "Ei" => (Format::BinarySi, 0, 60),
        other => {
            let e = other.strip_prefix(['e', 'E'])?;
            (Format::DecimalExponent, e.parse::<i32>().ok()?, 0)
        }
    };
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    // i128 holds 38 digits; leave room for the binary multiplier below.
    if digits.len() > 19 {
        return None;
    }
    let mut mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    mantissa = mantissa.checked_mul(1i128 << exp2)?;
    let mut scale = exp10 - frac_part.len() as i32;
    // Kubernetes keeps nano precision and rounds anything finer *up* (away from zero).
    if scale < -9 && mantissa != 0 {
        let div = pow10((-9 - scale) as u32)?;
        let q = mantissa / div;
        mantissa = if mantissa % div != 0 { q + 1 } else { q };
        scale = -9;
    }
    if negative {
        mantissa = -mantissa;
    }
    Some(Parsed {
        mantissa,
        scale,
        format,
    })
}

fn render(p: Parsed) -> String {
    if p.mantissa == 0 {
        return "0".to_string();
    }
    let mut format = p.format;
    if format == Format::BinarySi {
        // Small or fractional binary quantities are shown in decimal rather than rounded.
        match integer_value(&p) {
            Some(v) if v.abs() >= 1024 => return render_binary(v),
            _ => format = Format::DecimalSi,
        }
    }
    // Strip trailing zeros into the exponent, then lower the exponent to a multiple of three.
    let (mut m, mut e) = (p.mantissa, p.scale);
    while m % 10 == 0 {
        m /= 10;
        e += 1;
    }
    let r = e.rem_euclid(3);
    m *= pow10(r as u32).unwrap_or(1);
    e -= r;
    let suffix = match (format, e) {
        (Format::DecimalExponent, 0) => String::new(),
        (Format::DecimalExponent, _) => format!("e{e}"),
        (_, -9) => "n".into(),
        (_, -6) => "u".into(),
        (_, -3) => "m".into(),
        (_, 0) => String::new(),
        (_, 3) => "k".into(),
        (_, 6) => "M".into(),
        (_, 9) => "G".into(),
        (_, 12) => "T".into(),
        (_, 15) => "P".into(),
        (_, 18) => "E".into(),
        (_, _) => format!("e{e}"),
    };
    format!("{m}{suffix}")
}

fn integer_value(p: &Parsed) -> Option<i128> {
    if p.scale >= 0 {
        return p.mantissa.checked_mul(pow10(p.scale as u32)?);
    }
    let div = pow10((-p.scale) as u32)?;
    (p.mantissa % div == 0).then(|| p.mantissa / div)
}

fn render_binary(mut v: i128) -> String {
    let suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let mut i = 0;
    while v % 1024 == 0 && i + 1 < suffixes.len() {
        v /= 1024;
        i += 1;
    }
    format!("{v}{}", suffixes[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn c(s: &str) -> String {
        canonical(&json!(s))
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(c("10Gi"), "10Gi");
        assert_eq!(c("1024Mi"), "1Gi");
        assert_eq!(c("0.5Gi"), "512Mi");
        assert_eq!(c("1.5Gi"), "1536Mi");
        assert_eq!(c("100m"), "100m");
        assert_eq!(c("1.5"), "1500m");
        assert_eq!(c("1000M"), "1G");
        assert_eq!(c("2"), "2");
        assert_eq!(c("0"), "0");
        assert_eq!(c("0Gi"), "0");
        assert_eq!(c("500Ki"), "500Ki");
        assert_eq!(c("512"), "512");
        assert_eq!(c("100Ki"), "100Ki");
        assert_eq!(c("129e6"), "129e6");
        assert_eq!(c("1e3"), "1e3");
        assert_eq!(c("128974848"), "128974848");
        assert_eq!(c("0.1n"), "1n");
        assert_eq!(c("-1.5"), "-1500m");
        assert_eq!(canonical(&json!(4)), "4");
        assert_eq!(canonical_opt(None), "0");
    }
}
