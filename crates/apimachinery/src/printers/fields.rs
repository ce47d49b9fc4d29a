//! Small readers for fields of a JSON object, treating absent or mistyped fields as Go's zero value
//! (the printers were written against typed Go structs, where a missing field reads as "", 0 or nil).

use serde_json::{Map, Value};

/// The value at a dotted path (`"spec.template.spec.containers"`), if every step is an object key.
pub fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for key in path.split('.') {
        cur = cur.as_object()?.get(key)?;
    }
    if cur.is_null() {
        None
    } else {
        Some(cur)
    }
}

/// Whether the field is present and not null (a Go pointer that is non-nil).
pub fn has(v: &Value, path: &str) -> bool {
    at(v, path).is_some()
}

/// A string field, or "" when absent.
pub fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    opt_str(v, path).unwrap_or("")
}

/// A string field when present and a string.
pub fn opt_str<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

/// An integer field, or 0 when absent. Floats are truncated the way Go converts them.
pub fn i64_at(v: &Value, path: &str) -> i64 {
    opt_i64(v, path).unwrap_or(0)
}

/// An integer field when present and numeric.
pub fn opt_i64(v: &Value, path: &str) -> Option<i64> {
    let n = at(v, path)?;
    n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))
}

/// A boolean field, or false when absent.
pub fn bool_at(v: &Value, path: &str) -> bool {
    at(v, path).and_then(Value::as_bool).unwrap_or(false)
}

/// An array field, or an empty slice when absent.
pub fn arr_at<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// An object field when present.
pub fn map_at<'a>(v: &'a Value, path: &str) -> Option<&'a Map<String, Value>> {
    at(v, path).and_then(Value::as_object)
}

/// The number of entries in a map field (0 when absent).
pub fn map_len(v: &Value, path: &str) -> usize {
    map_at(v, path).map_or(0, Map::len)
}

/// `metadata.name`.
pub fn name(obj: &Value) -> &str {
    str_at(obj, "metadata.name")
}

/// `metadata.creationTimestamp`, "" when absent.
pub fn created(obj: &Value) -> &str {
    str_at(obj, "metadata.creationTimestamp")
}

/// Whether `metadata.deletionTimestamp` is set (the object is being deleted).
pub fn deleting(obj: &Value) -> bool {
    has(obj, "metadata.deletionTimestamp")
}

/// A string, or `fallback` when it is empty (Go's `if x == "" { x = "<none>" }` idiom).
pub fn or<'a>(s: &'a str, fallback: &'a str) -> &'a str {
    if s.is_empty() {
        fallback
    } else {
        s
    }
}
