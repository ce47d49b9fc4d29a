//! Conversion between the versions of one resource that share a key space: autoscaling/v1
//! and v2 HorizontalPodAutoscalers (stored as v2), and core/v1 and events.k8s.io/v1 Events
//! (stored as core/v1), so a write through either API is visible through both.

use crate::registry::Resource;
use serde_json::{json, Map, Value};

pub fn to_storage(res: &Resource, mut obj: Value) -> Value {
    match (res.group.as_str(), res.version.as_str()) {
        ("autoscaling", "v1") => hpa_v1_to_v2(obj),
        ("events.k8s.io", _) => event_new_to_core(obj),
        _ => {
            // Custom resources are stored in their storage version; with no conversion
            // webhook the versions must be schema-compatible, so only apiVersion changes.
            if res.is_custom() && res.storage_version != res.version {
                obj["apiVersion"] = json!(format!("{}/{}", res.group, res.storage_version));
            }
            obj
        }
    }
}

pub fn from_storage(res: &Resource, mut obj: Value) -> Value {
    match (res.group.as_str(), res.version.as_str()) {
        ("autoscaling", "v1") => hpa_v2_to_v1(obj),
        ("events.k8s.io", _) => event_core_to_new(obj),
        _ => {
            if res.is_custom() && res.storage_version != res.version {
                obj["apiVersion"] = json!(res.api_version());
            }
            obj
        }
    }
}

fn take(obj: &mut Value, path: &[&str]) -> Option<Value> {
    let (last, parents) = path.split_last()?;
    let mut cur = obj;
    for p in parents {
        cur = cur.get_mut(*p)?;
    }
    cur.as_object_mut()?.remove(*last)
}

fn hpa_v1_to_v2(mut obj: Value) -> Value {
    obj["apiVersion"] = json!("autoscaling/v2");
    if let Some(pct) = take(&mut obj, &["spec", "targetCPUUtilizationPercentage"]) {
        obj["spec"]["metrics"] = json!([{
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": pct}}
        }]);
    }
    if let Some(cur) = take(&mut obj, &["status", "currentCPUUtilizationPercentage"]) {
        obj["status"]["currentMetrics"] = json!([{
            "type": "Resource",
            "resource": {"name": "cpu", "current": {"averageUtilization": cur}}
        }]);
    }
    obj
}

fn hpa_v2_to_v1(mut obj: Value) -> Value {
    obj["apiVersion"] = json!("autoscaling/v1");
    let cpu_target = |metrics: &Value, key: &str| -> Option<Value> {
        metrics.as_array()?.iter().find_map(|m| {
            let r = m.get("resource")?;
            if r.get("name")?.as_str()? != "cpu" {
                return None;
            }
            r.get(key)?.get("averageUtilization").cloned()
        })
    };
    if let Some(metrics) = take(&mut obj, &["spec", "metrics"]) {
        if let Some(p) = cpu_target(&metrics, "target") {
            obj["spec"]["targetCPUUtilizationPercentage"] = p;
        }
    }
    take(&mut obj, &["spec", "behavior"]);
    if let Some(metrics) = take(&mut obj, &["status", "currentMetrics"]) {
        if let Some(p) = cpu_target(&metrics, "current") {
            obj["status"]["currentCPUUtilizationPercentage"] = p;
        }
    }
    take(&mut obj, &["status", "conditions"]);
    obj
}

fn move_field(from: &mut Map<String, Value>, a: &str, to: &mut Map<String, Value>, b: &str) {
    if let Some(v) = from.remove(a) {
        to.insert(b.into(), v);
    }
}

/// events.k8s.io/v1 -> core/v1 field names (upstream's conversion, field by field).
fn event_new_to_core(obj: Value) -> Value {
    let Value::Object(mut src) = obj else {
        return obj;
    };
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("kind".into(), json!("Event"));
    src.remove("apiVersion");
    src.remove("kind");
    move_field(&mut src, "metadata", &mut out, "metadata");
    move_field(&mut src, "regarding", &mut out, "involvedObject");
    move_field(&mut src, "related", &mut out, "related");
    move_field(&mut src, "note", &mut out, "message");
    move_field(&mut src, "reason", &mut out, "reason");
    move_field(&mut src, "type", &mut out, "type");
    move_field(&mut src, "action", &mut out, "action");
    move_field(&mut src, "eventTime", &mut out, "eventTime");
    move_field(
        &mut src,
        "reportingController",
        &mut out,
        "reportingComponent",
    );
    move_field(&mut src, "reportingInstance", &mut out, "reportingInstance");
    move_field(&mut src, "deprecatedSource", &mut out, "source");
    move_field(
        &mut src,
        "deprecatedFirstTimestamp",
        &mut out,
        "firstTimestamp",
    );
    move_field(
        &mut src,
        "deprecatedLastTimestamp",
        &mut out,
        "lastTimestamp",
    );
    move_field(&mut src, "deprecatedCount", &mut out, "count");
    if let Some(Value::Object(mut series)) = src.remove("series") {
        let mut s = Map::new();
        move_field(&mut series, "count", &mut s, "count");
        move_field(&mut series, "lastObservedTime", &mut s, "lastObservedTime");
        out.insert("series".into(), Value::Object(s));
    }
    if !out.contains_key("involvedObject") {
        out.insert("involvedObject".into(), json!({}));
    }
    Value::Object(out)
}

fn event_core_to_new(obj: Value) -> Value {
    let Value::Object(mut src) = obj else {
        return obj;
    };
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("events.k8s.io/v1"));
    out.insert("kind".into(), json!("Event"));
    src.remove("apiVersion");
    src.remove("kind");
    move_field(&mut src, "metadata", &mut out, "metadata");
    move_field(&mut src, "involvedObject", &mut out, "regarding");
    move_field(&mut src, "related", &mut out, "related");
    move_field(&mut src, "message", &mut out, "note");
    move_field(&mut src, "reason", &mut out, "reason");
    move_field(&mut src, "type", &mut out, "type");
    move_field(&mut src, "action", &mut out, "action");
    move_field(&mut src, "eventTime", &mut out, "eventTime");
    move_field(
        &mut src,
        "reportingComponent",
        &mut out,
        "reportingController",
    );
    move_field(&mut src, "reportingInstance", &mut out, "reportingInstance");
    move_field(&mut src, "source", &mut out, "deprecatedSource");
    move_field(
        &mut src,
        "firstTimestamp",
        &mut out,
        "deprecatedFirstTimestamp",
    );
    move_field(
        &mut src,
        "lastTimestamp",
        &mut out,
        "deprecatedLastTimestamp",
    );
    move_field(&mut src, "count", &mut out, "deprecatedCount");
    if let Some(Value::Object(mut series)) = src.remove("series") {
        let mut s = Map::new();
        move_field(&mut series, "count", &mut s, "count");
        move_field(&mut series, "lastObservedTime", &mut s, "lastObservedTime");
        out.insert("series".into(), Value::Object(s));
    }
    if !out.contains_key("eventTime") {
        out.insert("eventTime".into(), Value::Null);
    }
    Value::Object(out)
}
