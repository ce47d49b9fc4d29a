//! The life of an object on its way into the store: checking it against its schema (types,
//! unknown fields per `fieldValidation`), defaulting, and the metadata the server owns (uid,
//! creationTimestamp, generation, deletionTimestamp) that clients may not set or change.

use crate::builtin;
use crate::defaults;
use crate::error::{ApiError, ApiResult};
use crate::openapi::OpenApi;
use crate::registry::Resource;
use crate::request::FieldValidation;
use crate::validation::schema::{self, Defs, Options};
use serde_json::{json, Map, Value};

pub fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Ensure apiVersion/kind are the resource's own (filling them in when absent).
pub fn check_type_meta(res: &Resource, obj: &mut Value) -> ApiResult<()> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(format!(
            "the body of the request must be a {} object",
            res.kind
        )));
    };
    let want_av = res.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("apiVersion".into(), json!(want_av));
        }
        Some(av) if av == want_av => {}
        Some(av) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )))
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("kind".into(), json!(res.kind));
        }
        Some(k) if k == res.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind
            )))
        }
    }
    match map.get("metadata") {
        None | Some(Value::Null) => {
            map.insert("metadata".into(), json!({}));
        }
        Some(Value::Object(_)) => {}
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: metadata must be an object",
                res.kind, res.version, res.kind
            )))
        }
    }
    Ok(())
}

/// Check the body against the kind's schema and normalise it. Returns warnings (unknown
/// fields under `Warn`).
pub fn normalize(
    res: &Resource,
    openapi: &OpenApi,
    obj: &mut Value,
    fv: FieldValidation,
) -> ApiResult<Vec<String>> {
    let mut warnings = Vec::new();
    // Patches can build what no single body may carry.
    crate::body::check_depth(obj)?;
    if res.is_custom() {
        // Custom resources have no typed struct, but their metadata is a real ObjectMeta.
        let meta = obj.get("metadata").cloned().unwrap_or(Value::Null);
        if let Err(e) = serde_json::from_value::<
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        >(meta)
        {
            return Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: metadata: {e}",
                res.kind, res.version, res.kind
            )));
        }
    }
    let components = openapi.components();
    let (schema, defs): (Option<&Value>, Option<&Map<String, Value>>) =
        match (&res.crd, res.definition) {
            (Some(crd), _) => (Some(&crd.schema), None),
            (None, Some(def)) => (components.get(def), Some(&components)),
            _ => (None, None),
        };
    if let Some(schema) = schema {
        let defs = Defs(defs);
        let custom = res.is_custom();
        // Metadata is checked by its own rules and never pruned for custom resources.
        let kept: Vec<(&str, Value)> = ["apiVersion", "kind", "metadata"]
            .into_iter()
            .filter_map(|k| {
                obj.as_object_mut()
                    .and_then(|m| m.remove(k))
                    .map(|v| (k, v))
            })
            .collect();
        let f = schema::walk(
            obj,
            schema,
            &defs,
            &Options {
                check_values: custom,
                prune: custom && fv != FieldValidation::Strict,
                defaults: custom,
            },
        );
        if let Some(map) = obj.as_object_mut() {
            for (k, v) in kept {
                map.insert(k.into(), v);
            }
        }
        let unknown: Vec<String> = f
            .unknown
            .into_iter()
            .filter(|u| !matches!(u.as_str(), "apiVersion" | "kind" | "metadata"))
            .collect();
        if !unknown.is_empty() {
            match fv {
                FieldValidation::Strict => {
                    let list: Vec<String> = unknown
                        .iter()
                        .map(|u| format!("unknown field \"{u}\""))
                        .collect();
                    return Err(ApiError::bad_request(format!(
                        "strict decoding error: {}",
                        list.join(", ")
                    )));
                }
                FieldValidation::Warn => {
                    warnings.extend(unknown.iter().map(|u| format!("unknown field \"{u}\"")));
                }
                FieldValidation::Ignore => {}
            }
        }
        if custom && !f.causes.is_empty() {
            let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
            return Err(ApiError::invalid(&res.kind, &res.group, &name, f.causes));
        }
    }
    // The typed round trip checks types (so defaulting below only meets well-formed
    // objects); defaulting may leave nulls where it looked for optional lists, dropped after.
    if let Some(def) = res.definition {
        let typed = builtin::roundtrip(def, obj.clone()).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                res.kind, res.version, res.kind
            ))
        })?;
        *obj = typed;
        defaults::apply(res, obj);
        strip_nulls(obj);
    }
    Ok(warnings)
}

/// Remove null-valued fields (typed built-in objects never carry them).
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

const GENERATE_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub fn generate_suffix() -> String {
    let id = uuid::Uuid::new_v4();
    id.as_bytes()[..5]
        .iter()
        .map(|b| GENERATE_CHARS[(*b as usize) % GENERATE_CHARS.len()] as char)
        .collect()
}

/// Kinds whose strategy maintains metadata.generation upstream: the ones with a spec that
/// controllers report progress on (observedGeneration), and every custom resource.
pub fn tracks_generation(res: &Resource) -> bool {
    res.is_custom()
        || matches!(
            (res.group.as_str(), res.kind.as_str()),
            ("apps", _)
                | ("batch", _)
                | ("networking.k8s.io", "Ingress")
                | ("networking.k8s.io", "NetworkPolicy")
                | ("policy", "PodDisruptionBudget")
                | ("apiextensions.k8s.io", _)
                | ("autoscaling", _)
        )
}

/// Server-owned metadata for a new object.
pub fn init_meta(res: &Resource, obj: &mut Value) {
    let meta = obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object");
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    if tracks_generation(res) {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    meta.remove("deletionGracePeriodSeconds");
    meta.remove("selfLink");
    drop_empty(meta);
}

/// Keep server-owned metadata from `old` and bump generation when the spec changed.
pub fn carry_meta(res: &Resource, old: &Value, new: &mut Value) {
    let old_meta = &old["metadata"];
    let meta = new["metadata"]
        .as_object_mut()
        .expect("metadata is an object");
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old_meta.get(f) {
            Some(v) if !v.is_null() => {
                meta.insert(f.into(), v.clone());
            }
            _ => {
                meta.remove(f);
            }
        }
    }
    meta.remove("selfLink");
    drop_empty(meta);
    if tracks_generation(res) && spec_changed(old, new) {
        let g = old_meta["generation"].as_i64().unwrap_or(0) + 1;
        new["metadata"]["generation"] = json!(g);
    }
}

fn drop_empty(meta: &mut Map<String, Value>) {
    for f in [
        "labels",
        "annotations",
        "finalizers",
        "ownerReferences",
        "managedFields",
    ] {
        let empty = match meta.get(f) {
            Some(Value::Null) => true,
            Some(Value::Object(m)) => m.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            _ => false,
        };
        if empty {
            meta.remove(f);
        }
    }
}

/// Everything but metadata and status counts as spec for generation purposes.
pub fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| -> Map<String, Value> {
        let mut m = v.as_object().cloned().unwrap_or_default();
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
        m
    };
    strip(old) != strip(new)
}

/// Equal apart from resourceVersion and managedFields timestamps: such writes are no-ops.
pub fn same_object(a: &Value, b: &Value) -> bool {
    let norm = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("resourceVersion");
            m.remove("managedFields");
        }
        v
    };
    norm(a) == norm(b)
}

/// Reset what a create may not set for kinds whose status is written through /status.
pub fn reset_status_on_create(res: &Resource, obj: &mut Value) {
    if !res.status {
        return;
    }
    match (res.group.as_str(), res.kind.as_str()) {
        ("", "Pod") => {
            obj["status"] = json!({"phase": "Pending", "qosClass": qos_class(&obj["spec"])});
        }
        ("", "Namespace")
        | ("", "Node")
        | ("", "PersistentVolume")
        | ("", "PersistentVolumeClaim") => {}
        ("", "Service") => {
            obj["status"] = json!({"loadBalancer": {}});
        }
        _ => {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
            if res.group == "apiextensions.k8s.io" {
                obj["status"] = json!({});
            }
        }
    }
}

/// The pod's QoS class from its containers' requests and limits.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|f| spec[*f].as_array().into_iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c["resources"]["requests"].as_object();
        let lim = c["resources"]["limits"].as_object();
        if req.is_some_and(|m| !m.is_empty()) || lim.is_some_and(|m| !m.is_empty()) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = lim.and_then(|m| m.get(r));
            let q = req.and_then(|m| m.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}
