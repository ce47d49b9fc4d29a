//! Validation of objects before they are stored: object metadata for every kind, then the
//! rules of each built-in kind (required fields, allowed values, immutable fields) that
//! Kubernetes enforces and users rely on getting a clear 422 for.

pub mod kinds;
pub mod names;
pub mod schema;

use crate::error::Cause;
use crate::registry::Resource;
use names::{name_errors, name_rule};
use serde_json::Value;

/// Metadata rules shared by all kinds.
pub fn validate_meta(res: &Resource, obj: &Value, causes: &mut Vec<Cause>) {
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().unwrap_or("");
    if name.is_empty() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            message: "Required value: name or generateName is required".into(),
            field: "metadata.name".into(),
        });
    } else {
        for e in name_errors(name_rule(&res.group, &res.plural), name) {
            causes.push(Cause::invalid("metadata.name", &meta["name"], e));
        }
    }
    if res.namespaced {
        let ns = meta["namespace"].as_str().unwrap_or("");
        if ns.is_empty() {
            causes.push(Cause::required("metadata.namespace"));
        }
    } else if meta
        .get("namespace")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        causes.push(Cause::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    names::validate_labels(meta.get("labels"), "metadata.labels", causes);
    names::validate_annotations(meta.get("annotations"), causes);
    if let Some(fins) = meta.get("finalizers").and_then(Value::as_array) {
        for (i, f) in fins.iter().enumerate() {
            let s = f.as_str().unwrap_or("");
            let errs = names::qualified_name_errors(s);
            // Only built-in kinds (core's ObjectMeta rules) insist on a '/': custom resources
            // get apimachinery's qualified-name check alone, and Argo CD's Applications carry
            // `resources-finalizer.argocd.argoproj.io`.
            let kube_rule = !res.is_custom() && !s.contains('/') && !is_standard_finalizer(s);
            if !errs.is_empty() || kube_rule {
                let detail = errs.into_iter().next().unwrap_or_else(|| {
                    "name is neither a standard finalizer name nor is it fully qualified".into()
                });
                causes.push(Cause::invalid(
                    format!("metadata.finalizers[{i}]"),
                    f,
                    detail,
                ));
            }
        }
    }
}

fn is_standard_finalizer(s: &str) -> bool {
    matches!(s, "kubernetes" | "orphan" | "foregroundDeletion")
}

/// Metadata fields a client may not change on update.
pub fn validate_meta_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    for f in ["name", "namespace", "uid", "creationTimestamp"] {
        let (o, n) = (&old["metadata"][f], &new["metadata"][f]);
        if o != n && !n.is_null() {
            causes.push(Cause::immutable(format!("metadata.{f}"), n));
        }
    }
}

/// Run every rule for a create (old = None) or update.
pub fn validate(res: &Resource, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_meta(res, obj, &mut causes);
    if let Some(old) = old {
        validate_meta_update(old, obj, &mut causes);
    }
    if !res.is_custom() {
        kinds::validate_kind(res, obj, old, &mut causes);
    } else {
        crate::mesh_crds::validate(&res.group, &res.kind, obj, &mut causes);
        crate::gateway_crds::validate(&res.group, &res.kind, obj, &mut causes);
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn finalizer_causes(res: &Resource, finalizer: &str) -> Vec<Cause> {
        let obj =
            json!({"metadata": {"name": "x", "namespace": "default", "finalizers": [finalizer]}});
        let mut causes = Vec::new();
        validate_meta(res, &obj, &mut causes);
        causes
    }

    #[test]
    fn unqualified_finalizers_are_refused_on_built_ins_only() {
        let cm = crate::registry::Registry::default()
            .lookup("", "v1", "configmaps")
            .expect("configmaps are built in");
        let app = crate::crd::resources_of(&json!({
            "metadata": {"name": "applications.argoproj.io"},
            "spec": {
                "group": "argoproj.io",
                "scope": "Namespaced",
                "names": {"plural": "applications", "kind": "Application"},
                "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                              "schema": {"openAPIV3Schema": {"type": "object"}}}],
            },
        }))
        .remove(0);
        let argo = "resources-finalizer.argocd.argoproj.io";
        assert!(finalizer_causes(&app, argo).is_empty());
        let c = finalizer_causes(&cm, argo);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, "metadata.finalizers[0]");
        assert!(finalizer_causes(&cm, "example.com/cleanup").is_empty());
        // Both still need a qualified name.
        assert_eq!(finalizer_causes(&app, "bad name!").len(), 1);
    }
}
