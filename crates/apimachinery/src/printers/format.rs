//! Formatting helpers shared by several printers: label maps, label selectors, container lists,
//! access modes and "a, b, c + 2 more..." lists, each matching its Go counterpart.

use serde_json::{Map, Value};

use super::fields::{arr_at, str_at};

/// `labels.FormatLabels`: `k=v` pairs sorted by key and joined with ",", or `<none>`.
pub fn format_labels(labels: Option<&Map<String, Value>>) -> String {
    let mut pairs: Vec<(&str, &str)> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("")))
        .collect();
    pairs.sort();
    let s = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s
    }
}

/// `metav1.LabelSelectorAsSelector(sel).String()`. A nil or empty selector prints as "" (Go's
/// `Nothing()` and `Everything()` both stringify to the empty string); a malformed one is an error.
pub fn selector_string(sel: Option<&Value>) -> Result<String, ()> {
    let Some(sel) = sel.filter(|s| !s.is_null()) else {
        return Ok(String::new());
    };
    let mut reqs: Vec<(String, String)> = Vec::new();
    if let Some(labels) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in labels {
            reqs.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or(""))));
        }
    }
    for expr in arr_at(sel, "matchExpressions") {
        let key = str_at(expr, "key");
        let mut values: Vec<&str> = arr_at(expr, "values")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        // Requirement.String() prints set values sorted, whatever order they were given in.
        values.sort_unstable();
        let text = match str_at(expr, "operator") {
            "In" | "NotIn" if values.is_empty() => return Err(()),
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" | "DoesNotExist" if !values.is_empty() => return Err(()),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => return Err(()),
        };
        reqs.push((key.to_string(), text));
    }
    // The internal selector keeps its requirements sorted by key.
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(reqs
        .into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join(","))
}

/// `metav1.FormatLabelSelector`: like [`selector_string`] but `<none>` when empty and `<error>`
/// when malformed.
pub fn format_label_selector(sel: Option<&Value>) -> String {
    match selector_string(sel) {
        Ok(s) if s.is_empty() => "<none>".to_string(),
        Ok(s) => s,
        Err(()) => "<error>".to_string(),
    }
}

/// `layoutContainerCells`: container names and images, each joined with ",".
pub fn container_cells(containers: &[Value]) -> (String, String) {
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, "name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, "image")).collect();
    (names.join(","), images.join(","))
}

/// `helper.GetAccessModesAsString`: RWO, ROX, RWX, RWOP in that fixed order, without duplicates.
pub fn access_modes(modes: &[Value]) -> String {
    let has = |m: &str| modes.iter().any(|v| v.as_str() == Some(m));
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(mode, _)| has(mode))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

/// `listWithMoreString`: the first `max` items joined with ",", then " + N more...", or
/// `<unset>` when there is nothing at all.
pub fn list_with_more(list: &[String], count: usize, max: usize) -> String {
    let ret = list.join(",");
    if count > max {
        return format!("{ret} + {} more...", count - max);
    }
    if ret.is_empty() {
        "<unset>".to_string()
    } else {
        ret
    }
}

/// `intstr.IntOrString.String()`.
pub fn int_or_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_i64().map_or_else(|| n.to_string(), |i| i.to_string()),
        other => other.to_string(),
    }
}

/// `net.JoinHostPort`: brackets around IPv6 literals.
pub fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `printBool`: "True" or "False".
pub fn go_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// The first condition of `kind` in a conditions array, as `status == "True"` (Go's
/// `hasJobCondition`, `hasPodReadyCondition` and friends all stop at the first match).
pub fn condition_true(conditions: &[Value], kind: &str) -> bool {
    conditions
        .iter()
        .find(|c| str_at(c, "type") == kind)
        .is_some_and(|c| str_at(c, "status") == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_sorted() {
        let l = json!({"tier": "web", "app": "nginx"});
        assert_eq!(format_labels(l.as_object()), "app=nginx,tier=web");
        assert_eq!(format_labels(None), "<none>");
        assert_eq!(format_labels(json!({}).as_object()), "<none>");
    }

    #[test]
    fn selectors() {
        let sel = json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "dev"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "zone", "operator": "NotIn", "values": ["b"]},
                {"key": "gpu", "operator": "Exists"}
            ]
        });
        assert_eq!(
            selector_string(Some(&sel)).unwrap(),
            "app=web,!canary,env in (dev,prod),gpu,zone notin (b)"
        );
        assert_eq!(format_label_selector(None), "<none>");
        assert_eq!(format_label_selector(Some(&json!({}))), "<none>");
        assert_eq!(selector_string(Some(&json!({}))).unwrap(), "");
        let bad = json!({"matchExpressions": [{"key": "a", "operator": "Like"}]});
        assert_eq!(format_label_selector(Some(&bad)), "<error>");
    }

    #[test]
    fn modes_and_lists() {
        let modes = json!(["ReadWriteMany", "ReadWriteOnce", "ReadWriteOnce"]);
        assert_eq!(access_modes(modes.as_array().unwrap()), "RWO,RWX");
        let l = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(list_with_more(&l, 5, 3), "a,b,c + 2 more...");
        assert_eq!(list_with_more(&l, 3, 3), "a,b,c");
        assert_eq!(list_with_more(&[], 0, 3), "<unset>");
        assert_eq!(join_host_port("fd00::1", 80), "[fd00::1]:80");
    }
}
