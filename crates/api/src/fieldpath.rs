//! Field paths and field sets in the `FieldsV1` form of managedFields (`f:name`, `k:{...}`,
//! `v:...`, `.`), used to record who owns which fields and to find server-side apply
//! conflicts. Lists of objects are keyed by their usual Kubernetes list-map keys (name,
//! containerPort+protocol, port+protocol, mountPath, ip, type); other lists are atomic.

use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pe {
    /// A map field.
    F(String),
    /// A list element identified by key fields (canonical JSON object).
    K(String),
    /// A set element identified by its value (canonical JSON).
    V(String),
}

pub type Path = Vec<Pe>;
pub type Set = BTreeSet<Path>;

const KEY_CANDIDATES: &[&[&str]] = &[
    &["containerPort", "protocol"],
    &["port", "protocol"],
    &["mountPath"],
    &["devicePath"],
    &["name"],
    &["ip"],
    &["type"],
];

/// The key fields that identify elements of this list, if it is a keyed list.
fn list_key(items: &[Value]) -> Option<&'static [&'static str]> {
    if items.is_empty() || !items.iter().all(Value::is_object) {
        return None;
    }
    KEY_CANDIDATES
        .iter()
        .find(|keys| items.iter().all(|i| !i[keys[0]].is_null()))
        .copied()
}

fn key_of(item: &Value, keys: &[&str]) -> String {
    let mut m = Map::new();
    for k in keys {
        let v = &item[*k];
        if !v.is_null() {
            m.insert((*k).to_string(), v.clone());
        } else if *k == "protocol" {
            m.insert("protocol".into(), json!("TCP"));
        }
    }
    Value::Object(m).to_string()
}

/// Leaf paths (and keyed list elements) of an object.
pub fn set_of(v: &Value) -> Set {
    let mut out = Set::new();
    let mut prefix = Vec::new();
    collect(v, &mut prefix, &mut out);
    out
}

fn collect(v: &Value, prefix: &mut Path, out: &mut Set) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                prefix.push(Pe::F(k.clone()));
                collect(c, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => match list_key(items) {
            Some(keys) => {
                for it in items {
                    prefix.push(Pe::K(key_of(it, keys)));
                    out.insert(prefix.clone());
                    collect(it, prefix, out);
                    prefix.pop();
                }
            }
            None => {
                if !prefix.is_empty() {
                    out.insert(prefix.clone());
                }
            }
        },
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
        }
    }
}

/// The value at a path, if present.
pub fn get<'a>(v: &'a Value, path: &[Pe]) -> Option<&'a Value> {
    let mut cur = v;
    for pe in path {
        cur = match pe {
            Pe::F(f) => cur.get(f)?,
            Pe::K(k) => {
                let key: Value = serde_json::from_str(k).ok()?;
                let items = cur.as_array()?;
                items.iter().find(|it| matches_key(it, &key))?
            }
            Pe::V(s) => {
                let want: Value = serde_json::from_str(s).ok()?;
                cur.as_array()?.iter().find(|it| **it == want)?
            }
        };
    }
    Some(cur)
}

fn matches_key(item: &Value, key: &Value) -> bool {
    key.as_object().is_some_and(|m| {
        m.iter().all(|(k, v)| {
            let have = &item[k];
            have == v || (k == "protocol" && have.is_null() && v == "TCP")
        })
    })
}

/// Remove the value at a path (a field, or a whole keyed element).
pub fn remove(v: &mut Value, path: &[Pe]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for pe in parents {
        let next = match pe {
            Pe::F(f) => cur.get_mut(f),
            Pe::K(k) => {
                let key: Value = serde_json::from_str(k).unwrap_or(Value::Null);
                cur.as_array_mut()
                    .and_then(|a| a.iter_mut().find(|it| matches_key(it, &key)))
            }
            Pe::V(_) => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Pe::F(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Pe::K(k) => {
            let key: Value = serde_json::from_str(k).unwrap_or(Value::Null);
            if let Some(a) = cur.as_array_mut() {
                a.retain(|it| !matches_key(it, &key));
            }
        }
        Pe::V(s) => {
            let want: Value = serde_json::from_str(s).unwrap_or(Value::Null);
            if let Some(a) = cur.as_array_mut() {
                a.retain(|it| *it != want);
            }
        }
    }
}

/// Merge `config` into `live` the way apply does: maps field by field, keyed lists element
/// by element, everything else replaced.
pub fn merge(live: &mut Value, config: &Value) {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) => {
            for (k, cv) in c {
                match l.get_mut(k) {
                    Some(lv) if !lv.is_null() => merge(lv, cv),
                    _ => {
                        l.insert(k.clone(), cv.clone());
                    }
                }
            }
        }
        (l @ Value::Array(_), Value::Array(c)) => {
            let keys = list_key(c);
            match (keys, l.as_array_mut()) {
                (Some(keys), Some(la)) if list_key(la).is_none_or(|k| k == keys) => {
                    for ci in c {
                        let key: Value =
                            serde_json::from_str(&key_of(ci, keys)).unwrap_or_default();
                        match la.iter_mut().find(|it| matches_key(it, &key)) {
                            Some(li) => merge(li, ci),
                            None => la.push(ci.clone()),
                        }
                    }
                }
                _ => *l = Value::Array(c.clone()),
            }
        }
        (l, c) => *l = c.clone(),
    }
}

fn pe_key(pe: &Pe) -> String {
    match pe {
        Pe::F(f) => format!("f:{f}"),
        Pe::K(k) => format!("k:{k}"),
        Pe::V(v) => format!("v:{v}"),
    }
}

/// Encode a set as FieldsV1 JSON.
pub fn to_fields_v1(set: &Set) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for (i, pe) in path.iter().enumerate() {
            let entry = cur
                .entry(pe_key(pe))
                .or_insert_with(|| Value::Object(Map::new()));
            let m = entry.as_object_mut().expect("field set nodes are objects");
            if i == path.len() - 1 && matches!(pe, Pe::K(_)) {
                m.insert(".".into(), json!({}));
            }
            cur = m;
        }
    }
    Value::Object(root)
}

/// Decode FieldsV1 JSON into a set.
pub fn from_fields_v1(v: &Value) -> Set {
    let mut out = Set::new();
    let mut prefix = Vec::new();
    decode(v, &mut prefix, &mut out);
    out
}

fn decode(v: &Value, prefix: &mut Path, out: &mut Set) {
    let Some(m) = v.as_object() else {
        return;
    };
    for (k, child) in m {
        if k == "." {
            continue;
        }
        let pe = if let Some(f) = k.strip_prefix("f:") {
            Pe::F(f.to_string())
        } else if let Some(kk) = k.strip_prefix("k:") {
            Pe::K(kk.to_string())
        } else if let Some(vv) = k.strip_prefix("v:") {
            Pe::V(vv.to_string())
        } else {
            continue;
        };
        prefix.push(pe);
        let cm = child.as_object();
        if cm.is_none_or(|c| c.is_empty() || c.contains_key(".")) {
            out.insert(prefix.clone());
        }
        decode(child, prefix, out);
        prefix.pop();
    }
}

/// `.spec.replicas`, `.spec.containers[name="web"].image`: how conflicts are reported.
pub fn render(path: &[Pe]) -> String {
    let mut s = String::new();
    for pe in path {
        match pe {
            Pe::F(f) => {
                s.push('.');
                s.push_str(f);
            }
            Pe::K(k) => {
                let key: Value = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = key
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                    .unwrap_or_default();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
            Pe::V(v) => s.push_str(&format!("[={v}]")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_fields_v1() {
        let obj = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "x"}]}}}});
        let set = set_of(&obj);
        let enc = to_fields_v1(&set);
        assert!(
            enc["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]["."]
                .is_object()
        );
        assert_eq!(from_fields_v1(&enc), set);
    }

    #[test]
    fn merge_keyed_lists() {
        let mut live = json!({"c": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]});
        merge(&mut live, &json!({"c": [{"name": "b", "image": "3"}]}));
        assert_eq!(live["c"][1]["image"], "3");
        assert_eq!(live["c"][0]["image"], "1");
        let p = vec![Pe::F("c".into()), Pe::K("{\"name\":\"a\"}".into())];
        remove(&mut live, &p);
        assert_eq!(live["c"].as_array().unwrap().len(), 1);
    }
}
