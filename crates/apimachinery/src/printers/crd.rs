//! Tables for custom resources, driven by a CRD version's `additionalPrinterColumns` the way the
//! apiextensions table convertor does it: NAME first, then each declared column evaluated with
//! its JSONPath; a CRD that declares no columns gets a single AGE column.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::age::{parse_time, UNKNOWN};
use super::descriptions as d;
use super::fields::{name, opt_i64, str_at};
use super::jsonpath::JsonPath;
use super::{human_duration, Column};

/// The columns served when a CRD version declares none (`serveDefaultColumnsIfEmpty`).
fn declared_or_default(apc: &Value) -> Vec<Value> {
    match apc.as_array() {
        Some(cols) if !cols.is_empty() => cols.clone(),
        _ => vec![json!({
            "name": "Age",
            "type": "date",
            "description": d::META_CREATION,
            "jsonPath": ".metadata.creationTimestamp",
        })],
    }
}

/// Column definitions for a custom resource from its CRD version's `additionalPrinterColumns`
/// (a JSON array of `{name, type, format, description, priority, jsonPath}`).
///
/// The NAME column comes first. Like the real server, an AGE column is added only when the CRD
/// declares no columns at all; a CRD that wants AGE beside its own columns must declare it.
pub fn crd_columns(additional_printer_columns: &Value) -> Vec<Column> {
    let mut cols = vec![Column::name()];
    for c in declared_or_default(additional_printer_columns) {
        let path = str_at(&c, "jsonPath");
        let description = match str_at(&c, "description") {
            "" => format!("Custom resource definition column (in JSONPath format): {path}"),
            text => text.to_string(),
        };
        cols.push(Column {
            name: str_at(&c, "name").to_string(),
            type_: str_at(&c, "type").to_string(),
            format: str_at(&c, "format").to_string(),
            description,
            priority: opt_i64(&c, "priority").unwrap_or(0) as i32,
        });
    }
    cols
}

/// One custom resource's cells for [`crd_columns`]. A path that finds nothing, fails to
/// evaluate or yields a value of the wrong type gives a `null` cell (shown blank by kubectl).
pub fn crd_row_cells(
    additional_printer_columns: &Value,
    obj: &Value,
    now: DateTime<Utc>,
) -> Vec<Value> {
    let mut cells = vec![Value::from(name(obj))];
    for c in declared_or_default(additional_printer_columns) {
        let Ok(path) = JsonPath::parse(str_at(&c, "jsonPath")) else {
            cells.push(Value::Null);
            continue;
        };
        // Only the first match is shown, as the apiextensions convertor does.
        let cell = match path.find(obj) {
            Ok(found) => match found.first() {
                Some(v) => cell_for(str_at(&c, "type"), v, now),
                None => Value::Null,
            },
            Err(_) => Value::Null,
        };
        cells.push(cell);
    }
    cells
}

/// `cellForJSONValue`, plus the "string" case, which client-go prints with the JSONPath text
/// printer (so numbers and objects show up as text rather than being dropped).
fn cell_for(column_type: &str, v: &Value, now: DateTime<Utc>) -> Value {
    if column_type == "string" {
        return Value::String(print_text(v));
    }
    match (column_type, v) {
        ("integer", Value::Number(n)) => match n.as_i64() {
            Some(i) => i.into(),
            // Go converts a float to int64 by truncation.
            None => n.as_f64().map_or(Value::Null, |f| Value::from(f as i64)),
        },
        ("number", Value::Number(n)) => go_float(n.as_f64().unwrap_or(0.0)),
        ("boolean", Value::Bool(b)) => Value::Bool(*b),
        ("date", Value::String(s)) => {
            if s.is_empty() || s == "null" {
                return UNKNOWN.into();
            }
            match parse_time(s) {
                Some(t) => human_duration(now - t).into(),
                None if chrono::DateTime::parse_from_rfc3339(s).is_ok() => UNKNOWN.into(),
                None => "<invalid>".into(),
            }
        }
        _ => Value::Null,
    }
}

/// A Go float64 cell: encoding/json writes integral floats without a fractional part.
fn go_float(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        Value::from(f as i64)
    } else {
        Value::from(f)
    }
}

/// client-go's `JSONPath.PrintResults` for one value: strings verbatim, maps and arrays as
/// compact JSON, other scalars the way Go's `fmt.Print` writes them.
fn print_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<no value>".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(u)) => u.to_string(),
            _ => go_format_float(n.as_f64().unwrap_or(0.0)),
        },
        Value::Array(_) | Value::Object(_) => go_json(v),
    }
}

/// Go's `%v` for a float64 (strconv's 'g' with the shortest precision): plain digits, or an
/// exponent ("1e+06", "1e-05") when the decimal exponent is below -4 or at least 6.
fn go_format_float(f: f64) -> String {
    if f == 0.0 {
        return "0".to_string();
    }
    // Shortest round-trip digits and decimal exponent, from Rust's `{:e}` ("1.2345e6").
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let eprec = 6;
    let sign = if negative { "-" } else { "" };
    if exp < -4 || exp >= eprec {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{frac}e{exp_sign}{:02}", exp.abs());
    }
    // Plain decimal notation.
    let point = exp + 1;
    let body = if point <= 0 {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}", "0".repeat(point as usize - digits.len()))
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{int}.{frac}")
    };
    format!("{sign}{body}")
}

/// `json.Marshal` of decoded JSON: object keys sorted, and `<`, `>`, `&`, U+2028, U+2029
/// escaped as Go does by default.
fn go_json(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&m[k])))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v)
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_float_text() {
        assert_eq!(go_format_float(1.5), "1.5");
        assert_eq!(go_format_float(3.0), "3");
        assert_eq!(go_format_float(0.25), "0.25");
        assert_eq!(go_format_float(0.00001), "1e-05");
        assert_eq!(go_format_float(-2.5), "-2.5");
        assert_eq!(go_format_float(1e21), "1e+21");
        assert_eq!(go_format_float(123456789.0), "1.23456789e+08");
        assert_eq!(go_format_float(1e6), "1e+06");
        assert_eq!(go_format_float(123456.0), "123456");
    }

    #[test]
    fn go_json_text() {
        let v = json!({"b": 1, "a": ["<x>"]});
        assert_eq!(go_json(&v), r#"{"a":["\u003cx\u003e"],"b":1}"#);
    }
}
