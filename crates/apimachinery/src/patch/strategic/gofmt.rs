//! Go-style rendering of decoded JSON (`%v`, `reflect.TypeOf`) for strategic-merge error
//! messages, so they read exactly like the ones from k8s.io/apimachinery/pkg/util/mergepatch.

use serde_json::{Map, Value};

use crate::patch::PatchError;

/// `fmt.Sprintf("%v", v)` of the value encoding/json (with Kubernetes' int64 conversion)
/// would have decoded: `map[a:1 b:[x y]]`, sorted keys.
pub(crate) fn go_fmt(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => format!("[{}]", a.iter().map(go_fmt).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => go_fmt_map(m),
    }
}

pub(crate) fn go_fmt_map(m: &Map<String, Value>) -> String {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    let items: Vec<String> = keys
        .iter()
        .map(|k| format!("{k}:{}", go_fmt(&m[k.as_str()])))
        .collect();
    format!("map[{}]", items.join(" "))
}

/// `reflect.TypeOf(v)` as printed by `mergepatch.ErrBadArgType`.
pub(crate) fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "int64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

pub(crate) const MAP_TYPE: &str = "map[string]interface {}";
pub(crate) const SLICE_TYPE: &str = "[]interface {}";

/// `mergepatch.ErrBadArgType(expected, actual)`.
pub(crate) fn bad_arg_type(expected: &str, actual: &Value) -> PatchError {
    PatchError::Internal(format!(
        "expected a {expected}, but received a {}",
        go_type(actual)
    ))
}

/// `mergepatch.ErrNoMergeKey(m, k)`.
pub(crate) fn no_merge_key(m: &Map<String, Value>, key: &str) -> PatchError {
    PatchError::Internal(format!(
        "map: {} does not contain declared merge key: {key}",
        go_fmt_map(m)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_like_go() {
        assert_eq!(
            go_fmt(&json!({"b": [1, "x"], "a": {"c": null}, "d": true})),
            "map[a:map[c:<nil>] b:[1 x] d:true]"
        );
        assert_eq!(go_type(&json!(1)), "int64");
        assert_eq!(go_type(&json!(1.5)), "float64");
        assert_eq!(
            bad_arg_type(SLICE_TYPE, &json!("x")).to_string(),
            "expected a []interface {}, but received a string"
        );
        let m = json!({"value": "x"});
        assert_eq!(
            no_merge_key(m.as_object().unwrap(), "name").to_string(),
            "map: map[value:x] does not contain declared merge key: name"
        );
        assert_eq!(MAP_TYPE, go_type(&json!({})));
    }
}
