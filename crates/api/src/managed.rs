//! managedFields bookkeeping: which manager (kubectl-create, kubectl-edit, kubectl, a
//! controller) owns which fields. Non-apply writes take ownership of the fields they change;
//! apply writes own exactly the fields in their configuration (set by the apply module).

use crate::fieldpath::{self, Set};
use crate::objects::now_rfc3339;
use serde_json::{json, Value};

/// One managedFields entry, decoded.
#[derive(Clone, Debug)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: Set,
}

pub fn entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or("").to_string(),
            operation: e["operation"].as_str().unwrap_or("Update").to_string(),
            api_version: e["apiVersion"].as_str().unwrap_or("").to_string(),
            time: e["time"].as_str().unwrap_or("").to_string(),
            subresource: e["subresource"].as_str().map(String::from),
            fields: fieldpath::from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

pub fn store_entries(obj: &mut Value, list: Vec<Entry>) {
    let out: Vec<Value> = list
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": fieldpath::to_fields_v1(&e.fields),
            });
            if let Some(s) = e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(m) = obj["metadata"].as_object_mut() {
        if out.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), json!(out));
        }
    }
}

/// The fields of an object that managers can own (type and identity fields excluded).
pub fn owned_fields(obj: &Value) -> Set {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        m.remove("status");
    }
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
            "generateName",
        ] {
            m.remove(f);
        }
        if m.is_empty() {
            o.as_object_mut().map(|x| x.remove("metadata"));
        }
    }
    fieldpath::set_of(&o)
}

/// Record a non-apply write by `manager`: it takes the fields that changed.
pub fn record(
    new: &mut Value,
    old: Option<&Value>,
    manager: &str,
    operation: &str,
    api_version: &str,
) {
    if operation == "Apply" {
        return; // The apply module has already set the entries.
    }
    let new_set = owned_fields(new);
    let changed: Set = match old {
        None => new_set.clone(),
        Some(old) => {
            let old_set = owned_fields(old);
            new_set
                .iter()
                .filter(|p| {
                    fieldpath::get(old, p) != fieldpath::get(new, p) || !old_set.contains(*p)
                })
                .cloned()
                .collect()
        }
    };
    let mut list = entries(old.unwrap_or(new));
    if changed.is_empty() && old.is_some() {
        // Nothing of ours changed; still drop ownership of fields that disappeared.
        for e in list.iter_mut() {
            e.fields.retain(|p| new_set.contains(p));
        }
        store_entries(new, list);
        return;
    }
    for e in list.iter_mut() {
        e.fields.retain(|p| new_set.contains(p));
        if e.manager != manager || e.operation != operation {
            e.fields.retain(|p| !changed.contains(p));
        }
    }
    match list
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == operation && e.subresource.is_none())
    {
        Some(e) => {
            e.fields.extend(changed);
            e.time = now_rfc3339();
            e.api_version = api_version.to_string();
        }
        None => list.push(Entry {
            manager: manager.to_string(),
            operation: operation.to_string(),
            api_version: api_version.to_string(),
            time: now_rfc3339(),
            subresource: None,
            fields: changed,
        }),
    }
    store_entries(new, list);
}
