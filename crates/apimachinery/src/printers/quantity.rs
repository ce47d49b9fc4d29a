//! Canonical resource quantities (`resource.Quantity.String()`): the printers show capacities and
//! quota usage the way Kubernetes re-renders them ("1024Mi" prints as "1Gi", "1.5" as "1500m").

use crate::quantity::Quantity;
use serde_json::Value;

/// The canonical string of a quantity given as a JSON string (or number). Values the parser
/// cannot hold exactly (dozens of digits) are returned as written.
pub fn canonical(v: &Value) -> String {
    let raw = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return "0".to_string(),
    };
    match Quantity::parse(&raw) {
        Ok(q) => q.to_string(),
        Err(_) => raw,
    }
}

/// The canonical string of an optional quantity field; Go's zero `Quantity` prints "0".
pub fn canonical_opt(v: Option<&Value>) -> String {
    v.map_or_else(|| "0".to_string(), canonical)
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
