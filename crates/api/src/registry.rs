//! The table of resources the server serves: built-in kinds, fixed at start, and custom
//! resources, added and removed as CustomResourceDefinitions come and go. Everything that
//! routes, discovers or documents a resource reads it from here.

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// One served resource in one version.
#[derive(Clone, Debug)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub status: bool,
    /// JSON paths of the scale subresource (spec replicas, status replicas, label selector).
    pub scale: Option<ScalePaths>,
    /// OpenAPI definition name of the kind (`io.k8s.api.apps.v1.Deployment`) for built-ins.
    pub definition: Option<&'static str>,
    /// Where objects live in the store: versions of one resource share one key space.
    pub storage_group: String,
    pub storage_resource: String,
    /// The version objects are stored in; others are converted on the way in and out.
    pub storage_version: String,
    /// For custom resources: the CRD version entry (schema, printer columns, ...).
    pub crd: Option<Arc<CrdVersion>>,
}

#[derive(Clone, Debug)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

impl ScalePaths {
    fn standard() -> Self {
        ScalePaths {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: Some(".status.selector".into()),
        }
    }
}

/// What a CRD says about one of its versions.
#[derive(Debug)]
pub struct CrdVersion {
    pub crd_name: String,
    pub schema: Value,
    pub printer_columns: Value,
    pub served: bool,
    pub storage: bool,
    pub preserve_unknown_root: bool,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn group_version(&self) -> (String, String) {
        (self.group.clone(), self.version.clone())
    }

    /// Human-readable resource reference for error messages, e.g. `deployments.apps`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }

    pub fn is_custom(&self) -> bool {
        self.crd.is_some()
    }
}

struct B<'a> {
    group: &'a str,
    version: &'a str,
    kind: &'a str,
    plural: &'a str,
    short: &'a [&'a str],
    namespaced: bool,
    status: bool,
    scale: bool,
    def: &'static str,
    categories: &'a [&'a str],
}

fn builtin(b: B<'_>) -> Resource {
    Resource {
        group: b.group.into(),
        version: b.version.into(),
        kind: b.kind.into(),
        list_kind: format!("{}List", b.kind),
        plural: b.plural.into(),
        singular: b.kind.to_lowercase(),
        short_names: b.short.iter().map(|s| s.to_string()).collect(),
        categories: b.categories.iter().map(|s| s.to_string()).collect(),
        namespaced: b.namespaced,
        status: b.status,
        scale: b.scale.then(ScalePaths::standard),
        definition: Some(b.def),
        storage_group: b.group.into(),
        storage_resource: b.plural.into(),
        storage_version: b.version.into(),
        crd: None,
    }
}

/// The built-in kinds corral serves (Kubernetes 1.33 definitions).
pub fn builtin_resources() -> Vec<Resource> {
    const ALL: &[&str] = &["all"];
    const NONE: &[&str] = &[];
    #[rustfmt::skip]
    let table: Vec<B> = vec![
        B { group: "", version: "v1", kind: "Namespace", plural: "namespaces", short: &["ns"], namespaced: false, status: true, scale: false, def: "io.k8s.api.core.v1.Namespace", categories: NONE },
        B { group: "", version: "v1", kind: "Pod", plural: "pods", short: &["po"], namespaced: true, status: true, scale: false, def: "io.k8s.api.core.v1.Pod", categories: ALL },
        B { group: "", version: "v1", kind: "Service", plural: "services", short: &["svc"], namespaced: true, status: true, scale: false, def: "io.k8s.api.core.v1.Service", categories: ALL },
        B { group: "", version: "v1", kind: "Endpoints", plural: "endpoints", short: &["ep"], namespaced: true, status: false, scale: false, def: "io.k8s.api.core.v1.Endpoints", categories: NONE },
        B { group: "", version: "v1", kind: "ConfigMap", plural: "configmaps", short: &["cm"], namespaced: true, status: false, scale: false, def: "io.k8s.api.core.v1.ConfigMap", categories: NONE },
        B { group: "", version: "v1", kind: "Secret", plural: "secrets", short: NONE, namespaced: true, status: false, scale: false, def: "io.k8s.api.core.v1.Secret", categories: NONE },
        B { group: "", version: "v1", kind: "ServiceAccount", plural: "serviceaccounts", short: &["sa"], namespaced: true, status: false, scale: false, def: "io.k8s.api.core.v1.ServiceAccount", categories: NONE },
        B { group: "", version: "v1", kind: "Event", plural: "events", short: &["ev"], namespaced: true, status: false, scale: false, def: "io.k8s.api.core.v1.Event", categories: NONE },
        B { group: "", version: "v1", kind: "Node", plural: "nodes", short: &["no"], namespaced: false, status: true, scale: false, def: "io.k8s.api.core.v1.Node", categories: NONE },
        B { group: "", version: "v1", kind: "PersistentVolume", plural: "persistentvolumes", short: &["pv"], namespaced: false, status: true, scale: false, def: "io.k8s.api.core.v1.PersistentVolume", categories: NONE },
        B { group: "", version: "v1", kind: "PersistentVolumeClaim", plural: "persistentvolumeclaims", short: &["pvc"], namespaced: true, status: true, scale: false, def: "io.k8s.api.core.v1.PersistentVolumeClaim", categories: NONE },
        B { group: "", version: "v1", kind: "ResourceQuota", plural: "resourcequotas", short: &["quota"], namespaced: true, status: true, scale: false, def: "io.k8s.api.core.v1.ResourceQuota", categories: NONE },
        B { group: "", version: "v1", kind: "LimitRange", plural: "limitranges", short: &["limits"], namespaced: true, status: false, scale: false, def: "io.k8s.api.core.v1.LimitRange", categories: NONE },
        B { group: "apps", version: "v1", kind: "Deployment", plural: "deployments", short: &["deploy"], namespaced: true, status: true, scale: true, def: "io.k8s.api.apps.v1.Deployment", categories: ALL },
        B { group: "apps", version: "v1", kind: "ReplicaSet", plural: "replicasets", short: &["rs"], namespaced: true, status: true, scale: true, def: "io.k8s.api.apps.v1.ReplicaSet", categories: ALL },
        B { group: "apps", version: "v1", kind: "StatefulSet", plural: "statefulsets", short: &["sts"], namespaced: true, status: true, scale: true, def: "io.k8s.api.apps.v1.StatefulSet", categories: ALL },
        B { group: "apps", version: "v1", kind: "DaemonSet", plural: "daemonsets", short: &["ds"], namespaced: true, status: true, scale: false, def: "io.k8s.api.apps.v1.DaemonSet", categories: ALL },
        B { group: "apps", version: "v1", kind: "ControllerRevision", plural: "controllerrevisions", short: NONE, namespaced: true, status: false, scale: false, def: "io.k8s.api.apps.v1.ControllerRevision", categories: NONE },
        B { group: "batch", version: "v1", kind: "Job", plural: "jobs", short: NONE, namespaced: true, status: true, scale: false, def: "io.k8s.api.batch.v1.Job", categories: ALL },
        B { group: "batch", version: "v1", kind: "CronJob", plural: "cronjobs", short: &["cj"], namespaced: true, status: true, scale: false, def: "io.k8s.api.batch.v1.CronJob", categories: ALL },
        B { group: "networking.k8s.io", version: "v1", kind: "Ingress", plural: "ingresses", short: &["ing"], namespaced: true, status: true, scale: false, def: "io.k8s.api.networking.v1.Ingress", categories: NONE },
        B { group: "networking.k8s.io", version: "v1", kind: "IngressClass", plural: "ingressclasses", short: NONE, namespaced: false, status: false, scale: false, def: "io.k8s.api.networking.v1.IngressClass", categories: NONE },
        B { group: "networking.k8s.io", version: "v1", kind: "NetworkPolicy", plural: "networkpolicies", short: &["netpol"], namespaced: true, status: false, scale: false, def: "io.k8s.api.networking.v1.NetworkPolicy", categories: NONE },
        B { group: "discovery.k8s.io", version: "v1", kind: "EndpointSlice", plural: "endpointslices", short: NONE, namespaced: true, status: false, scale: false, def: "io.k8s.api.discovery.v1.EndpointSlice", categories: NONE },
        B { group: "autoscaling", version: "v2", kind: "HorizontalPodAutoscaler", plural: "horizontalpodautoscalers", short: &["hpa"], namespaced: true, status: true, scale: false, def: "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler", categories: ALL },
        B { group: "autoscaling", version: "v1", kind: "HorizontalPodAutoscaler", plural: "horizontalpodautoscalers", short: &["hpa"], namespaced: true, status: true, scale: false, def: "io.k8s.api.autoscaling.v1.HorizontalPodAutoscaler", categories: ALL },
        B { group: "coordination.k8s.io", version: "v1", kind: "Lease", plural: "leases", short: NONE, namespaced: true, status: false, scale: false, def: "io.k8s.api.coordination.v1.Lease", categories: NONE },
        B { group: "events.k8s.io", version: "v1", kind: "Event", plural: "events", short: &["ev"], namespaced: true, status: false, scale: false, def: "io.k8s.api.events.v1.Event", categories: NONE },
        B { group: "rbac.authorization.k8s.io", version: "v1", kind: "Role", plural: "roles", short: NONE, namespaced: true, status: false, scale: false, def: "io.k8s.api.rbac.v1.Role", categories: NONE },
        B { group: "rbac.authorization.k8s.io", version: "v1", kind: "RoleBinding", plural: "rolebindings", short: NONE, namespaced: true, status: false, scale: false, def: "io.k8s.api.rbac.v1.RoleBinding", categories: NONE },
        B { group: "rbac.authorization.k8s.io", version: "v1", kind: "ClusterRole", plural: "clusterroles", short: NONE, namespaced: false, status: false, scale: false, def: "io.k8s.api.rbac.v1.ClusterRole", categories: NONE },
        B { group: "rbac.authorization.k8s.io", version: "v1", kind: "ClusterRoleBinding", plural: "clusterrolebindings", short: NONE, namespaced: false, status: false, scale: false, def: "io.k8s.api.rbac.v1.ClusterRoleBinding", categories: NONE },
        B { group: "storage.k8s.io", version: "v1", kind: "StorageClass", plural: "storageclasses", short: &["sc"], namespaced: false, status: false, scale: false, def: "io.k8s.api.storage.v1.StorageClass", categories: NONE },
        B { group: "policy", version: "v1", kind: "PodDisruptionBudget", plural: "poddisruptionbudgets", short: &["pdb"], namespaced: true, status: true, scale: false, def: "io.k8s.api.policy.v1.PodDisruptionBudget", categories: NONE },
        B { group: "apiextensions.k8s.io", version: "v1", kind: "CustomResourceDefinition", plural: "customresourcedefinitions", short: &["crd", "crds"], namespaced: false, status: true, scale: false, def: "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition", categories: NONE },
    ];
    let mut out: Vec<Resource> = table.into_iter().map(builtin).collect();
    for r in out.iter_mut() {
        // Both Event APIs and both autoscaling versions share one key space, as upstream.
        if r.group == "events.k8s.io" {
            r.storage_group = String::new();
            r.storage_version = "v1".into();
        }
        if r.group == "autoscaling" {
            r.storage_version = "v2".into();
        }
    }
    out
}

/// Groups in the order discovery lists them, with their preferred version first.
pub fn group_order(resources: &[Resource]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for r in resources {
        if r.group.is_empty() {
            continue;
        }
        match out.iter_mut().find(|(g, _)| g == &r.group) {
            Some((_, versions)) => {
                if !versions.contains(&r.version) {
                    versions.push(r.version.clone());
                }
            }
            None => out.push((r.group.clone(), vec![r.version.clone()])),
        }
    }
    out
}

/// The live registry: built-ins plus whatever CRDs currently define.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RwLock<Inner>>,
}

struct Inner {
    builtin: Vec<Resource>,
    custom: BTreeMap<String, Vec<Resource>>,
    generation: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        Registry {
            inner: Arc::new(RwLock::new(Inner {
                builtin: builtin_resources(),
                custom: BTreeMap::new(),
                generation: 0,
            })),
        }
    }

    pub fn all(&self) -> Vec<Resource> {
        let inner = self.inner.read().unwrap();
        let mut out = inner.builtin.clone();
        // Custom groups in alphabetical order, as the aggregator orders CRD groups (all of
        // one priority): `kubectl get gateway` then means gateway.networking.k8s.io's, as
        // on a real cluster that also serves Istio's networking.istio.io.
        let mut custom: Vec<&Resource> = inner.custom.values().flatten().collect();
        custom.sort_by(|a, b| a.group.cmp(&b.group));
        out.extend(custom.into_iter().cloned());
        out
    }

    /// Bumped on every CRD change, so cached discovery/OpenAPI documents can be rebuilt.
    pub fn generation(&self) -> u64 {
        self.inner.read().unwrap().generation
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Resource> {
        let inner = self.inner.read().unwrap();
        inner
            .builtin
            .iter()
            .chain(inner.custom.values().flatten())
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    pub fn lookup_kind(&self, group: &str, version: &str, kind: &str) -> Option<Resource> {
        let inner = self.inner.read().unwrap();
        inner
            .builtin
            .iter()
            .chain(inner.custom.values().flatten())
            .find(|r| r.group == group && r.version == version && r.kind == kind)
            .cloned()
    }

    pub fn has_group_version(&self, group: &str, version: &str) -> bool {
        let inner = self.inner.read().unwrap();
        inner
            .builtin
            .iter()
            .chain(inner.custom.values().flatten())
            .any(|r| r.group == group && r.version == version)
    }

    /// Replace the resources a CRD defines (empty = remove).
    pub fn set_custom(&self, crd_name: &str, resources: Vec<Resource>) {
        let mut inner = self.inner.write().unwrap();
        if resources.is_empty() {
            if inner.custom.remove(crd_name).is_none() {
                return;
            }
        } else {
            inner.custom.insert(crd_name.to_string(), resources);
        }
        inner.generation += 1;
    }
}
