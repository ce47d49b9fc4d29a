//! Discovery documents: the aggregated form (apidiscovery.k8s.io/v2, one request for
//! everything, with the exact Content-Type kubectl decodes by) and the legacy per-group
//! documents the Python dynamic client reads.

use crate::registry::{group_order, Registry, Resource};
use serde_json::{json, Value};

pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
pub const AGGREGATED_V2BETA1: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

/// Which aggregated discovery version the Accept header asks for, if any.
pub fn wants_aggregated(accept: &str) -> Option<&'static str> {
    for part in accept.split(',') {
        let p = part.replace(' ', "");
        if p.contains("as=APIGroupDiscoveryList") && p.contains("g=apidiscovery.k8s.io") {
            if p.contains("v=v2beta1") {
                return Some("v2beta1");
            }
            if p.contains("v=v2") {
                return Some("v2");
            }
        }
    }
    None
}

/// A subresource's name, response kind (group, version, kind) and verbs.
pub type Subresource = (&'static str, (String, String, String), Vec<&'static str>);

/// Subresources served for a resource.
pub fn subresources(r: &Resource) -> Vec<Subresource> {
    let own = (r.group.clone(), r.version.clone(), r.kind.clone());
    let mut out = Vec::new();
    if r.status {
        out.push(("status", own.clone(), vec!["get", "patch", "update"]));
    }
    if r.scale.is_some() {
        out.push((
            "scale",
            ("autoscaling".into(), "v1".into(), "Scale".into()),
            vec!["get", "patch", "update"],
        ));
    }
    if r.group.is_empty() && r.plural == "pods" {
        let core = |k: &str| (String::new(), "v1".to_string(), k.to_string());
        out.push(("binding", core("Binding"), vec!["create"]));
        out.push(("log", core("Pod"), vec!["get"]));
        out.push(("exec", core("PodExecOptions"), vec!["create", "get"]));
        out.push(("attach", core("PodAttachOptions"), vec!["create", "get"]));
        out.push((
            "portforward",
            core("PodPortForwardOptions"),
            vec!["create", "get"],
        ));
        out.push((
            "eviction",
            ("policy".into(), "v1".into(), "Eviction".into()),
            vec!["create"],
        ));
    }
    if r.group.is_empty() && r.plural == "namespaces" {
        out.push(("finalize", own, vec!["update"]));
    }
    out
}

fn aggregated_resource(r: &Resource) -> Value {
    let subs: Vec<Value> = subresources(r)
        .into_iter()
        .map(|(name, (g, v, k), verbs)| {
            json!({"subresource": name, "responseKind": {"group": g, "version": v, "kind": k}, "verbs": verbs})
        })
        .collect();
    let mut v = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        v["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        v["categories"] = json!(r.categories);
    }
    if !subs.is_empty() {
        v["subresources"] = json!(subs);
    }
    v
}

fn aggregated_group(all: &[Resource], group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|ver| {
            let resources: Vec<Value> = all
                .iter()
                .filter(|r| r.group == group && &r.version == ver)
                .map(aggregated_resource)
                .collect();
            json!({"version": ver, "resources": resources, "freshness": "Current"})
        })
        .collect();
    json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": vs})
}

pub fn aggregated(registry: &Registry, legacy: bool, version: &str) -> Value {
    let all = registry.all();
    let items: Vec<Value> = if legacy {
        vec![aggregated_group(&all, "", &["v1".to_string()])]
    } else {
        group_order(&all)
            .iter()
            .map(|(g, vs)| aggregated_group(&all, g, vs))
            .collect()
    };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}],
    })
}

fn api_group(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

pub fn api_group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = group_order(&registry.all())
        .iter()
        .map(|(g, vs)| api_group(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group_doc(registry: &Registry, group: &str) -> Option<Value> {
    let all = registry.all();
    let order = group_order(&all);
    let (g, vs) = order.iter().find(|(g, _)| g == group)?;
    let mut doc = api_group(g, vs);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let all = registry.all();
    let mut resources = Vec::new();
    for r in all
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        resources.push(e);
        for (name, (g, v, k), verbs) in subresources(r) {
            let mut s = json!({
                "name": format!("{}/{}", r.plural, name),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": k,
                "verbs": verbs,
            });
            if g != r.group || v != r.version {
                s["group"] = json!(g);
                s["version"] = json!(v);
            }
            resources.push(s);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}
