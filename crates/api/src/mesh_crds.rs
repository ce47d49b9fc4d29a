//! The Istio resource kinds corral's mesh implements, served out of the box as ordinary
//! CustomResourceDefinitions so that `kubectl apply` of VirtualServices, DestinationRules,
//! PeerAuthentications and AuthorizationPolicies works without installing Istio.
//!
//! The schemas are corral's own: the top-level fields are typed (so a wrong type is
//! refused with its path) and everything below them is preserved as written, so Istio
//! YAML is stored unchanged even where corral does not act on a field. A CRD already in
//! the store (Istio's own, applied by the user) is left as it is.

use crate::error::ApiResult;
use crate::handlers::create_object;
use crate::server::Shared;
use crate::storage;
use serde_json::{json, Value};

/// A field kept as written, of the given JSON type.
fn any(ty: &str) -> Value {
    json!({"type": ty, "x-kubernetes-preserve-unknown-fields": true})
}

fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}

fn objects() -> Value {
    json!({"type": "array", "items": any("object")})
}

fn string_map() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}})
}

fn selector() -> Value {
    json!({"type": "object", "properties": {"matchLabels": string_map()}})
}

fn enumeration(values: &[&str]) -> Value {
    json!({"type": "string", "enum": values})
}

struct Kind {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    short: &'static [&'static str],
    versions: &'static [&'static str],
    spec: Value,
    /// (name, type, jsonPath) for `kubectl get`, before Age.
    columns: Vec<(&'static str, &'static str, &'static str)>,
}

fn kinds() -> Vec<Kind> {
    const NETWORKING: &[&str] = &["v1", "v1beta1", "v1alpha3"];
    const SECURITY: &[&str] = &["v1", "v1beta1"];
    vec![
        Kind {
            group: "networking.istio.io",
            kind: "VirtualService",
            plural: "virtualservices",
            short: &["vs"],
            versions: NETWORKING,
            spec: json!({"hosts": strings(), "gateways": strings(), "http": objects(),
                         "tcp": objects(), "tls": objects(), "exportTo": strings()}),
            columns: vec![
                ("Gateways", "string", ".spec.gateways"),
                ("Hosts", "string", ".spec.hosts"),
            ],
        },
        Kind {
            group: "networking.istio.io",
            kind: "DestinationRule",
            plural: "destinationrules",
            short: &["dr"],
            versions: NETWORKING,
            spec: json!({"host": {"type": "string"}, "trafficPolicy": any("object"),
                         "subsets": {"type": "array", "items": {"type": "object",
                             "x-kubernetes-preserve-unknown-fields": true,
                             "properties": {"name": {"type": "string"}, "labels": string_map(),
                                            "trafficPolicy": any("object")}}},
                         "exportTo": strings(), "workloadSelector": any("object")}),
            columns: vec![("Host", "string", ".spec.host")],
        },
        Kind {
            group: "networking.istio.io",
            kind: "Gateway",
            plural: "gateways",
            short: &["gw"],
            versions: NETWORKING,
            spec: json!({"selector": string_map(), "servers": objects()}),
            columns: vec![],
        },
        Kind {
            group: "networking.istio.io",
            kind: "ServiceEntry",
            plural: "serviceentries",
            short: &["se"],
            versions: NETWORKING,
            spec: json!({"hosts": strings(), "addresses": strings(), "ports": objects(),
                         "location": enumeration(&["MESH_EXTERNAL", "MESH_INTERNAL"]),
                         "resolution": enumeration(&["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"]),
                         "endpoints": objects(), "exportTo": strings()}),
            columns: vec![
                ("Hosts", "string", ".spec.hosts"),
                ("Location", "string", ".spec.location"),
                ("Resolution", "string", ".spec.resolution"),
            ],
        },
        Kind {
            group: "security.istio.io",
            kind: "PeerAuthentication",
            plural: "peerauthentications",
            short: &["pa"],
            versions: SECURITY,
            spec: json!({"selector": selector(),
                         "mtls": {"type": "object", "properties": {"mode":
                             enumeration(&["UNSET", "DISABLE", "PERMISSIVE", "STRICT"])}},
                         "portLevelMtls": {"type": "object", "additionalProperties": any("object")}}),
            columns: vec![("Mode", "string", ".spec.mtls.mode")],
        },
        Kind {
            group: "security.istio.io",
            kind: "AuthorizationPolicy",
            plural: "authorizationpolicies",
            short: &["ap"],
            versions: SECURITY,
            spec: json!({"selector": selector(), "targetRef": any("object"),
                         "action": enumeration(&["ALLOW", "DENY", "AUDIT", "CUSTOM"]),
                         "rules": objects(), "provider": any("object")}),
            columns: vec![("Action", "string", ".spec.action")],
        },
    ]
}

fn definition(k: &Kind) -> Value {
    let mut columns: Vec<Value> = k
        .columns
        .iter()
        .map(|(name, ty, path)| json!({"name": name, "type": ty, "jsonPath": path}))
        .collect();
    columns.push(json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}));
    let schema = json!({"openAPIV3Schema": {
        "type": "object",
        "properties": {
            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                     "properties": k.spec},
            "status": any("object"),
        },
    }});
    let versions: Vec<Value> = k
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"name": v, "served": true, "storage": i == 0, "schema": schema,
                   "subresources": {"status": {}}, "additionalPrinterColumns": columns})
        })
        .collect();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{}", k.plural, k.group),
            "labels": {"app.kubernetes.io/managed-by": "corral"},
        },
        "spec": {
            "group": k.group,
            "scope": "Namespaced",
            "names": {"kind": k.kind, "listKind": format!("{}List", k.kind), "plural": k.plural,
                      "singular": k.kind.to_ascii_lowercase(), "shortNames": k.short,
                      "categories": ["istio-io", format!("{}-istio-io", k.group.split('.').next().unwrap_or(""))]},
            "versions": versions,
        },
    })
}

/// Creates the mesh CRDs that are not in the store yet.
pub async fn install(st: &Shared) -> ApiResult<()> {
    let res = st
        .registry
        .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .expect("built in");
    for k in kinds() {
        let crd = definition(&k);
        let name = crd["metadata"]["name"].as_str().unwrap_or("").to_string();
        if storage::get(&st.store, &res, None, &name).await?.is_some() {
            continue;
        }
        match create_object(st, &res, None, crd, &crate::namespaces::system_ctx()).await {
            Ok(_) => {}
            Err(e) if e.code() == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
