//! Kubernetes resource quantities (`resource.Quantity`) with exact arithmetic: `500m`, `1.5`,
//! `1Gi`, `1e3` parse to a count of nano-units, add and compare without rounding, and print
//! in the canonical form Kubernetes prints (`String()`): "1024Mi" as "1Gi", "1.5" as "1500m".
//! Quota and LimitRange enforcement and the table printers share this one implementation.

use std::cmp::Ordering;
use std::fmt;

/// The error text Kubernetes gives for a quantity it cannot parse.
pub const FORMAT_ERROR: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{}", FORMAT_ERROR)]
    Format,
    #[error("unable to parse quantity's suffix")]
    Suffix,
    #[error("quantity is too large")]
    TooLarge,
}

/// How a quantity prints: the family of suffix it was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    DecimalSi,
    BinarySi,
    DecimalExponent,
}

/// An exact quantity: `nanos * 10^-9` units. Finer values are rounded up to a nano-unit, as
/// Kubernetes does.
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

const NANO: i128 = 1_000_000_000;

impl Default for Quantity {
    fn default() -> Self {
        Quantity::zero()
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}
impl Eq for Quantity {}
impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl Quantity {
    pub fn zero() -> Quantity {
        Quantity {
            nanos: 0,
            format: Format::DecimalSi,
        }
    }

    /// A whole number of units (an object count), printed in decimal.
    pub fn from_units(v: i64) -> Quantity {
        Quantity {
            nanos: v as i128 * NANO,
            format: Format::DecimalSi,
        }
    }

    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        let s = s.trim();
        let (negative, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            Some(_) => (false, s),
            None => return Err(QuantityError::Format),
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
            return Err(QuantityError::Format);
        }
        if !suffix
            .bytes()
            .all(|b| b"eEinumkKMGTP+-0123456789".contains(&b))
        {
            return Err(QuantityError::Format);
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
                let e = other
                    .strip_prefix(['e', 'E'])
                    .ok_or(QuantityError::Suffix)?;
                let e: i32 = e.parse().map_err(|_| QuantityError::Suffix)?;
                (Format::DecimalExponent, e, 0)
            }
        };
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 30 {
            return Err(QuantityError::TooLarge);
        }
        let mantissa: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| QuantityError::Format)?
        };
        let mantissa = mantissa
            .checked_mul(1i128 << exp2)
            .ok_or(QuantityError::TooLarge)?;
        // value = mantissa * 10^scale; nanos = mantissa * 10^(scale + 9), rounded up.
        let shift = exp10 - frac_part.len() as i32 + 9;
        let nanos = if mantissa == 0 {
            0
        } else if shift >= 0 {
            10i128
                .checked_pow(shift as u32)
                .and_then(|p| mantissa.checked_mul(p))
                .ok_or(QuantityError::TooLarge)?
        } else {
            match 10i128.checked_pow((-shift) as u32) {
                Some(div) => mantissa.div_ceil_pos(div),
                None => 1,
            }
        };
        Ok(Quantity {
            nanos: if negative { -nanos } else { nanos },
            format,
        })
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The sum; a zero left side takes the right side's format (Go's `Quantity.Add`).
    pub fn add(&self, other: &Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_add(other.nanos),
            format: if self.nanos == 0 {
                other.format
            } else {
                self.format
            },
        }
    }

    pub fn sub(&self, other: &Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_sub(other.nanos),
            format: if self.nanos == 0 {
                other.format
            } else {
                self.format
            },
        }
    }

    /// Whole units, rounded up (`Quantity.Value()`), saturating at the i64 bounds.
    pub fn value(&self) -> i64 {
        clamp(ceil_div(self.nanos, NANO))
    }

    /// Thousandths, rounded up (`Quantity.MilliValue()`).
    pub fn milli_value(&self) -> i64 {
        clamp(ceil_div(self.nanos, 1_000_000))
    }

    /// Nano-units (exact).
    pub fn nanos(&self) -> i128 {
        self.nanos
    }
}

trait DivCeilPos {
    fn div_ceil_pos(self, d: i128) -> i128;
}
impl DivCeilPos for i128 {
    fn div_ceil_pos(self, d: i128) -> i128 {
        let q = self / d;
        if self % d != 0 {
            q + 1
        } else {
            q
        }
    }
}

fn ceil_div(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d != 0 && n > 0 {
        q + 1
    } else {
        q
    }
}

fn clamp(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render(self.nanos, -9, self.format))
    }
}

/// The canonical string of `mantissa * 10^scale` in `format`.
pub(crate) fn render(mantissa: i128, scale: i32, format: Format) -> String {
    if mantissa == 0 {
        return "0".to_string();
    }
    let mut format = format;
    if format == Format::BinarySi {
        // Small or fractional binary quantities are shown in decimal rather than rounded.
        match integer_value(mantissa, scale) {
            Some(v) if v.abs() >= 1024 => return render_binary(v),
            _ => format = Format::DecimalSi,
        }
    }
    // Strip trailing zeros into the exponent, then lower the exponent to a multiple of three.
    let (mut m, mut e) = (mantissa, scale);
    while m % 10 == 0 {
        m /= 10;
        e += 1;
    }
    let r = e.rem_euclid(3);
    m = m.saturating_mul(10i128.pow(r as u32));
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

fn integer_value(mantissa: i128, scale: i32) -> Option<i128> {
    if scale >= 0 {
        return mantissa.checked_mul(10i128.checked_pow(scale as u32)?);
    }
    let div = 10i128.checked_pow((-scale) as u32)?;
    (mantissa % div == 0).then(|| mantissa / div)
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

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    #[test]
    fn parses_and_prints_canonically() {
        for (input, out) in [
            ("500m", "500m"),
            ("1.5", "1500m"),
            ("1.2", "1200m"),
            ("1Gi", "1Gi"),
            ("1024Mi", "1Gi"),
            ("0.5Gi", "512Mi"),
            ("1e3", "1e3"),
            ("1000M", "1G"),
            ("0", "0"),
            ("-1.5", "-1500m"),
            ("0.1n", "1n"),
            ("+2", "2"),
            ("100Ki", "100Ki"),
            (".5", "500m"),
        ] {
            assert_eq!(q(input).to_string(), out, "{input}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "abc", "1.2.3", "1Qi", "m", "1 Gi", "--1"] {
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Quantity::parse("abc").unwrap_err().to_string(),
            FORMAT_ERROR
        );
    }

    #[test]
    fn exact_arithmetic() {
        assert_eq!(q("500m").add(&q("700m")), q("1.2"));
        assert_eq!(q("0.1").add(&q("0.2")), q("300m"));
        assert_eq!(q("1Gi").add(&q("512Mi")).to_string(), "1536Mi");
        // A zero sum takes the format of what is added to it.
        assert_eq!(Quantity::zero().add(&q("1Gi")).to_string(), "1Gi");
        assert_eq!(q("1").sub(&q("250m")).to_string(), "750m");
        assert!(q("1e3") == q("1k"));
        assert!(q("999m") < q("1"));
    }

    #[test]
    fn values_round_up() {
        assert_eq!(q("1.5").value(), 2);
        assert_eq!(q("1.5").milli_value(), 1500);
        assert_eq!(q("1n").milli_value(), 1);
        assert_eq!(q("64Mi").value(), 64 << 20);
    }
}
