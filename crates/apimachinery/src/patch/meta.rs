//! Strategic-merge-patch metadata: the [`PatchSchema`] lookup the merge engine asks, and the
//! built-in table generated from the Go struct tags of k8s.io/api v0.33
//! (`data/patch_meta.json`, made by `tools/gen_patch_meta.py`, embedded at compile time).
//!
//! To refresh it, point the script at bare clones of kubernetes/api, kubernetes/apimachinery
//! and kubernetes/apiextensions-apiserver and a release tag:
//! `python3 tools/gen_patch_meta.py --api-git .. --apimachinery-git .. --apiextensions-git ..
//! --tag v0.33.13 --out data/patch_meta.json`. The `source` entry of the file records the
//! commits it was made from.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

/// What the schema knows about one field of a struct type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FieldMeta {
    /// OpenAPI name of the struct the field holds, or of the list element / map value
    /// struct when `list` / `map` is set. `None` for scalars and opaque types.
    #[serde(rename = "type", default)]
    pub type_name: Option<String>,
    /// The field is a JSON array.
    #[serde(default)]
    pub list: bool,
    /// The field is a JSON object keyed by arbitrary strings (Go `map[string]T`).
    #[serde(default)]
    pub map: bool,
    /// The `patchStrategy` tag: `merge`, `replace`, `retainKeys` or `merge,retainKeys`.
    #[serde(default)]
    pub strategy: Option<String>,
    /// The `patchMergeKey` tag.
    #[serde(default)]
    pub key: Option<String>,
}

impl FieldMeta {
    /// The comma-separated strategies of the `patchStrategy` tag.
    pub fn strategies(&self) -> impl Iterator<Item = &str> {
        self.strategy
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
    }
}

/// Patch metadata lookup by OpenAPI type name, so other sources (a CRD's
/// `x-kubernetes-patch-strategy` extensions, test fixtures) can drive the same engine.
pub trait PatchSchema {
    /// Whether `type_name` is a struct type this schema describes. A root type that is not
    /// known makes `strategic_merge_patch` fall back to merge-patch semantics.
    fn has_type(&self, type_name: &str) -> bool;
    /// Metadata of JSON field `field` of struct type `type_name`, if it has any.
    fn field(&self, type_name: &str, field: &str) -> Option<&FieldMeta>;
}

#[derive(Deserialize)]
struct Data {
    source: Value,
    kinds: Vec<String>,
    types: HashMap<String, HashMap<String, FieldMeta>>,
}

/// The patch metadata of the built-in kinds corral serves.
///
/// Root type names are OpenAPI definition names of the kinds of core/v1, apps/v1, batch/v1,
/// networking.k8s.io/v1, discovery.k8s.io/v1, autoscaling/v1 and v2, coordination.k8s.io/v1,
/// events.k8s.io/v1, rbac.authorization.k8s.io/v1, policy/v1 and apiextensions.k8s.io/v1,
/// e.g. `io.k8s.api.core.v1.Pod`, `io.k8s.api.apps.v1.Deployment`,
/// `io.k8s.api.networking.v1.Ingress`, `io.k8s.api.rbac.v1.ClusterRole`,
/// `io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition`;
/// [`BuiltinSchema::kinds`] lists them all and [`BuiltinSchema::type_name_for`] maps an
/// apiVersion/kind pair to one. Nested struct types (`io.k8s.api.core.v1.PodSpec`,
/// `io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta`, ...) are valid roots too.
pub struct BuiltinSchema {
    data: Data,
}

const BUILTIN_JSON: &str = include_str!("../../data/patch_meta.json");

/// The built-in schema, parsed once on first use.
pub fn builtin_patch_schema() -> &'static BuiltinSchema {
    static SCHEMA: OnceLock<BuiltinSchema> = OnceLock::new();
    SCHEMA.get_or_init(|| BuiltinSchema {
        data: serde_json::from_str(BUILTIN_JSON).expect("embedded patch_meta.json is valid"),
    })
}

impl BuiltinSchema {
    /// OpenAPI names of every kind with metadata (list kinds excluded).
    pub fn kinds(&self) -> &[String] {
        &self.data.kinds
    }

    /// Every (type, field, metadata) entry, e.g. to annotate OpenAPI schemas with
    /// `x-kubernetes-patch-strategy` and `x-kubernetes-patch-merge-key`.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str, &FieldMeta)> {
        self.data
            .types
            .iter()
            .flat_map(|(t, fields)| fields.iter().map(move |(f, m)| (t.as_str(), f.as_str(), m)))
    }

    /// Where the table came from: repositories, tags, commits and paths.
    pub fn source(&self) -> &Value {
        &self.data.source
    }

    /// The root type name for an object's `apiVersion` and `kind`, when it is a built-in
    /// kind: `("apps/v1", "Deployment")` gives `io.k8s.api.apps.v1.Deployment`, `("v1", "Pod")`
    /// gives `io.k8s.api.core.v1.Pod`. Custom resources give `None`.
    pub fn type_name_for(&self, api_version: &str, kind: &str) -> Option<&str> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let name = match group {
            "" => format!("io.k8s.api.core.{version}.{kind}"),
            "apiextensions.k8s.io" => {
                format!("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{version}.{kind}")
            }
            // The Go package (and so the OpenAPI name) is the group's first DNS label.
            g => format!(
                "io.k8s.api.{}.{version}.{kind}",
                g.split('.').next().unwrap_or(g)
            ),
        };
        self.data
            .kinds
            .iter()
            .find(|k| **k == name)
            .map(String::as_str)
    }
}

impl PatchSchema for BuiltinSchema {
    fn has_type(&self, type_name: &str) -> bool {
        self.data.types.contains_key(type_name)
    }

    fn field(&self, type_name: &str, field: &str) -> Option<&FieldMeta> {
        self.data.types.get(type_name)?.get(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(t: &str, f: &str) -> FieldMeta {
        builtin_patch_schema()
            .field(t, f)
            .unwrap_or_else(|| panic!("no metadata for {t}.{f}"))
            .clone()
    }

    fn merge_key(t: &str, f: &str) -> (Option<String>, Option<String>) {
        let m = meta(t, f);
        (m.strategy, m.key)
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn real_kubernetes_tags() {
        let core = |t: &str| format!("io.k8s.api.core.v1.{t}");
        let meta_v1 = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
        assert_eq!(
            merge_key(&core("ServiceSpec"), "ports"),
            (s("merge"), s("port"))
        );
        assert_eq!(
            merge_key(&core("Container"), "env"),
            (s("merge"), s("name"))
        );
        assert_eq!(
            merge_key(&core("Container"), "ports"),
            (s("merge"), s("containerPort"))
        );
        assert_eq!(
            merge_key(&core("Container"), "volumeMounts"),
            (s("merge"), s("mountPath"))
        );
        assert_eq!(
            merge_key(&core("PodSpec"), "volumes"),
            (s("merge,retainKeys"), s("name"))
        );
        assert_eq!(
            merge_key(&core("PodSpec"), "containers"),
            (s("merge"), s("name"))
        );
        assert_eq!(
            merge_key(&core("PodSpec"), "imagePullSecrets"),
            (s("merge"), s("name"))
        );
        assert_eq!(
            merge_key(&core("PodSpec"), "hostAliases"),
            (s("merge"), s("ip"))
        );
        // Tolerations carry no strategy in k8s.io/api: the list is replaced whole.
        assert_eq!(merge_key(&core("PodSpec"), "tolerations"), (None, None));
        assert_eq!(merge_key(meta_v1, "finalizers"), (s("merge"), None));
        assert_eq!(
            merge_key(meta_v1, "ownerReferences"),
            (s("merge"), s("uid"))
        );
        assert_eq!(
            merge_key("io.k8s.api.apps.v1.DeploymentSpec", "strategy"),
            (s("retainKeys"), None)
        );
        assert_eq!(
            merge_key("io.k8s.api.policy.v1.PodDisruptionBudgetSpec", "selector"),
            (s("replace"), None)
        );
        assert_eq!(merge_key(&core("NodeSpec"), "podCIDRs"), (s("merge"), None));
        assert_eq!(
            merge_key(&core("PodStatus"), "conditions"),
            (s("merge"), s("type"))
        );

        let volumes = meta(&core("PodSpec"), "volumes");
        assert!(volumes.list && !volumes.map);
        assert_eq!(
            volumes.type_name.as_deref(),
            Some("io.k8s.api.core.v1.Volume")
        );
        assert_eq!(
            volumes.strategies().collect::<Vec<_>>(),
            ["merge", "retainKeys"]
        );
        // Inline (embedded) VolumeSource fields are flattened into Volume.
        assert_eq!(
            meta(&core("Volume"), "configMap").type_name.as_deref(),
            Some("io.k8s.api.core.v1.ConfigMapVolumeSource")
        );
        let props = meta(
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps",
            "properties",
        );
        assert!(props.map);
        // Opaque types (Time, Quantity, IntOrString) get no entries.
        assert!(builtin_patch_schema()
            .field(meta_v1, "creationTimestamp")
            .is_none());
    }

    #[test]
    fn kinds_and_names() {
        let s = builtin_patch_schema();
        for k in [
            "io.k8s.api.core.v1.Pod",
            "io.k8s.api.core.v1.ConfigMap",
            "io.k8s.api.apps.v1.Deployment",
            "io.k8s.api.batch.v1.CronJob",
            "io.k8s.api.networking.v1.Ingress",
            "io.k8s.api.rbac.v1.ClusterRoleBinding",
            "io.k8s.api.coordination.v1.Lease",
            "io.k8s.api.discovery.v1.EndpointSlice",
            "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler",
            "io.k8s.api.policy.v1.PodDisruptionBudget",
            "io.k8s.api.events.v1.Event",
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
        ] {
            assert!(s.kinds().iter().any(|x| x == k), "{k} missing");
            assert!(s.has_type(k));
        }
        assert!(!s.kinds().iter().any(|k| k.ends_with("List")));
        assert_eq!(s.type_name_for("v1", "Pod"), Some("io.k8s.api.core.v1.Pod"));
        assert_eq!(
            s.type_name_for("apps/v1", "Deployment"),
            Some("io.k8s.api.apps.v1.Deployment")
        );
        assert_eq!(
            s.type_name_for("networking.k8s.io/v1", "Ingress"),
            Some("io.k8s.api.networking.v1.Ingress")
        );
        assert_eq!(
            s.type_name_for("rbac.authorization.k8s.io/v1", "Role"),
            Some("io.k8s.api.rbac.v1.Role")
        );
        assert_eq!(
            s.type_name_for("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
            Some(
                "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition"
            )
        );
        assert_eq!(s.type_name_for("example.com/v1", "Widget"), None);
        assert!(!s.has_type("com.example.v1.Widget"));
        assert!(s.source().get("kubernetes/api").is_some());
    }
}
