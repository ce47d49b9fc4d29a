//! What an object costs against a ResourceQuota, as Kubernetes' quota evaluators count it
//! (pkg/quota/v1/evaluator/core and the generic object-count evaluator): pods (compute
//! requests and limits, terminal pods free), services (node ports, load balancers), claims
//! (storage, per storage class) and `count/<resource>.<group>` for every kind. Also the
//! scope matching (Terminating, BestEffort, PriorityClass, ...) and the "must specify"
//! constraint. Shared by the API server's admission and the quota controller.

use crate::quantity::Quantity;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Resource name -> amount, ordered by name (as Kubernetes prints them).
pub type ResourceList = BTreeMap<String, Quantity>;

/// A ResourceList from JSON; malformed quantities are skipped (validation refuses them).
pub fn parse_list(v: &Value) -> ResourceList {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Quantity::parse(&s).ok().map(|q| (k.clone(), q))
        })
        .collect()
}

/// The JSON form, with canonical quantity strings.
pub fn to_json(list: &ResourceList) -> Value {
    Value::Object(
        list.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
            .collect::<Map<_, _>>(),
    )
}

pub fn add(a: &ResourceList, b: &ResourceList) -> ResourceList {
    let mut out = a.clone();
    for (k, v) in b {
        let e = out.entry(k.clone()).or_default();
        *e = e.add(v);
    }
    out
}

/// `a - b` per key of `a`, never below zero.
pub fn subtract_non_negative(a: &ResourceList, b: &ResourceList) -> ResourceList {
    a.iter()
        .map(|(k, v)| {
            let d = match b.get(k) {
                Some(o) => v.sub(o),
                None => *v,
            };
            (
                k.clone(),
                if d.is_negative() { Quantity::zero() } else { d },
            )
        })
        .collect()
}

/// Only the keys in `names`.
pub fn mask(list: &ResourceList, names: &BTreeSet<String>) -> ResourceList {
    list.iter()
        .filter(|(k, _)| names.contains(*k))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

pub fn names(list: &ResourceList) -> BTreeSet<String> {
    list.keys().cloned().collect()
}

pub fn remove_zeros(list: &ResourceList) -> ResourceList {
    list.iter()
        .filter(|(_, v)| !v.is_zero())
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// The keys whose amount is negative.
pub fn negative(list: &ResourceList) -> Vec<String> {
    list.iter()
        .filter(|(_, v)| v.is_negative())
        .map(|(k, _)| k.clone())
        .collect()
}

/// Whether every amount in `a` is at most its limit in `b` (keys `b` lacks are not limited);
/// the keys that exceed, in order.
pub fn less_than_or_equal(a: &ResourceList, b: &ResourceList) -> (bool, Vec<String>) {
    let exceeded: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k).is_some_and(|limit| *v > limit))
        .map(|(k, _)| k.clone())
        .collect();
    (exceeded.is_empty(), exceeded)
}

/// `a=1,b=2Gi`, sorted by name, as the quota admission messages print lists.
pub fn pretty_print(list: &ResourceList) -> String {
    list.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `count/<resource>[.<group>]` name for objects of a kind.
pub fn object_count_name(group: &str, plural: &str) -> String {
    if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    }
}

/// The older names some core kinds are also counted under.
fn legacy_count_name(group: &str, plural: &str) -> Option<&'static str> {
    if !group.is_empty() {
        return None;
    }
    Some(match plural {
        "pods" => "pods",
        "services" => "services",
        "configmaps" => "configmaps",
        "secrets" => "secrets",
        "persistentvolumeclaims" => "persistentvolumeclaims",
        "replicationcontrollers" => "replicationcontrollers",
        "resourcequotas" => "resourcequotas",
        _ => return None,
    })
}

const STORAGE_CLASS_SUFFIX: &str = ".storageclass.storage.k8s.io/";

fn is_pod_resource(name: &str) -> bool {
    matches!(
        name,
        "pods"
            | "count/pods"
            | "cpu"
            | "memory"
            | "ephemeral-storage"
            | "requests.cpu"
            | "requests.memory"
            | "requests.ephemeral-storage"
            | "limits.cpu"
            | "limits.memory"
            | "limits.ephemeral-storage"
    ) || name.starts_with("hugepages-")
        || name.starts_with("requests.hugepages-")
        || (name.starts_with("requests.") && name.contains('/'))
}

/// Which of the quota's resource `names` objects of this kind are counted against.
pub fn matching_resources(group: &str, plural: &str, names: &BTreeSet<String>) -> BTreeSet<String> {
    let count = object_count_name(group, plural);
    let legacy = legacy_count_name(group, plural);
    names
        .iter()
        .filter(|n| {
            if **n == count || Some(n.as_str()) == legacy {
                return true;
            }
            match (group, plural) {
                ("", "pods") => is_pod_resource(n),
                ("", "services") => {
                    n.as_str() == "services.nodeports" || n.as_str() == "services.loadbalancers"
                }
                ("", "persistentvolumeclaims") => {
                    n.as_str() == "requests.storage"
                        || n.split_once(STORAGE_CLASS_SUFFIX).is_some_and(|(_, r)| {
                            r == "requests.storage" || r == "persistentvolumeclaims"
                        })
                }
                _ => false,
            }
        })
        .cloned()
        .collect()
}

/// Whether a write of an existing object can change what it is charged (quota checks
/// updates of these only; the rest are charged on create).
pub fn charges_updates(group: &str, plural: &str) -> bool {
    group.is_empty() && matches!(plural, "services" | "persistentvolumeclaims")
}

fn one() -> Quantity {
    Quantity::from_units(1)
}

/// What the object uses, by every name a quota may count it under.
pub fn usage(
    group: &str,
    plural: &str,
    obj: &Value,
    now: chrono::DateTime<chrono::Utc>,
) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert(object_count_name(group, plural), one());
    match (group, plural) {
        ("", "pods") => {
            if counts_compute(obj, now) {
                out = add(&out, &pod_compute_usage(&obj["spec"]));
            }
        }
        ("", "services") => {
            out.insert("services".into(), one());
            let spec = &obj["spec"];
            let ports = spec["ports"].as_array().map_or(0, Vec::len) as i64;
            match spec["type"].as_str() {
                Some("NodePort") => {
                    out.insert("services.nodeports".into(), Quantity::from_units(ports));
                }
                Some("LoadBalancer") => {
                    let n = if spec["allocateLoadBalancerNodePorts"] == Value::Bool(false) {
                        spec["ports"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|p| p["nodePort"].as_i64().is_some_and(|n| n != 0))
                            .count() as i64
                    } else {
                        ports
                    };
                    out.insert("services.nodeports".into(), Quantity::from_units(n));
                    out.insert("services.loadbalancers".into(), one());
                }
                _ => {}
            }
        }
        ("", "persistentvolumeclaims") => {
            out.insert("persistentvolumeclaims".into(), one());
            let class = obj["spec"]["storageClassName"]
                .as_str()
                .or_else(|| {
                    obj["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-class"]
                        .as_str()
                })
                .filter(|c| !c.is_empty());
            if let Some(c) = class {
                out.insert(
                    format!("{c}{STORAGE_CLASS_SUFFIX}persistentvolumeclaims"),
                    one(),
                );
            }
            // The larger of what is asked for and what a resize already allocated.
            let mut storage = parse_list(&obj["spec"]["resources"]["requests"])
                .get("storage")
                .copied()
                .unwrap_or_default();
            if let Some(a) = parse_list(&obj["status"]["allocatedResources"]).get("storage") {
                if *a > storage {
                    storage = *a;
                }
            }
            if !storage.is_zero() {
                out.insert("requests.storage".into(), storage);
                if let Some(c) = class {
                    out.insert(
                        format!("{c}{STORAGE_CLASS_SUFFIX}requests.storage"),
                        storage,
                    );
                }
            }
        }
        _ => {
            if let Some(l) = legacy_count_name(group, plural) {
                out.insert(l.into(), one());
            }
        }
    }
    out
}

/// Terminal pods, and pods stuck past their deletion grace period, no longer count for
/// `pods` and compute resources (they still count for `count/pods`).
pub fn counts_compute(pod: &Value, now: chrono::DateTime<chrono::Utc>) -> bool {
    if matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    ) {
        return false;
    }
    let meta = &pod["metadata"];
    if let (Some(ts), Some(grace)) = (
        meta["deletionTimestamp"].as_str(),
        meta["deletionGracePeriodSeconds"].as_i64(),
    ) {
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(ts) {
            if now > t.with_timezone(&chrono::Utc) + chrono::Duration::seconds(grace) {
                return false;
            }
        }
    }
    true
}

fn container_list(c: &Value, field: &str) -> ResourceList {
    parse_list(&c["resources"][field])
}

/// A pod's effective requests or limits: containers summed, restartable (sidecar) init
/// containers added, other init containers as a maximum, plus overhead (as
/// resourcehelper.PodRequests / PodLimits).
pub fn pod_resources(spec: &Value, field: &str) -> ResourceList {
    let mut total = ResourceList::new();
    for c in spec["containers"].as_array().into_iter().flatten() {
        total = add(&total, &container_list(c, field));
    }
    let mut sidecars = ResourceList::new();
    let mut init_max = ResourceList::new();
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        let own = container_list(c, field);
        let effective = if c["restartPolicy"].as_str() == Some("Always") {
            total = add(&total, &own);
            sidecars = add(&sidecars, &own);
            sidecars.clone()
        } else {
            add(&own, &sidecars)
        };
        for (k, v) in effective {
            let e = init_max.entry(k).or_default();
            if v > *e {
                *e = v;
            }
        }
    }
    for (k, v) in init_max {
        let e = total.entry(k).or_default();
        if v > *e {
            *e = v;
        }
    }
    let overhead = parse_list(&spec["overhead"]);
    for (k, v) in overhead {
        if field == "requests" || total.contains_key(&k) {
            let e = total.entry(k).or_default();
            *e = e.add(&v);
        }
    }
    total
}

/// `podComputeUsageHelper`: the quota names for a set of requests and limits.
fn compute_usage(requests: &ResourceList, limits: &ResourceList) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert("pods".into(), one());
    for r in ["cpu", "memory", "ephemeral-storage"] {
        if let Some(v) = requests.get(r) {
            out.insert(r.into(), *v);
            out.insert(format!("requests.{r}"), *v);
        }
        if let Some(v) = limits.get(r) {
            out.insert(format!("limits.{r}"), *v);
        }
    }
    for (k, v) in requests {
        if k.starts_with("hugepages-") {
            out.insert(k.clone(), *v);
            out.insert(format!("requests.{k}"), *v);
        } else if is_extended(k) {
            out.insert(format!("requests.{k}"), *v);
        }
    }
    out
}

fn is_extended(name: &str) -> bool {
    match name.split_once('/') {
        Some((domain, _)) => {
            !(domain == "kubernetes.io"
                || domain.ends_with(".kubernetes.io")
                || name.starts_with("requests."))
        }
        None => false,
    }
}

fn pod_compute_usage(spec: &Value) -> ResourceList {
    compute_usage(
        &pod_resources(spec, "requests"),
        &pod_resources(spec, "limits"),
    )
}

/// The resources quota validation insists every container names when a quota limits them.
const MUST_SPECIFY: [&str; 6] = [
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// The pod evaluator's constraint: when a quota limits cpu or memory, every container must
/// set it. Err carries upstream's text (`must specify limits.cpu for: a,b; ...`).
pub fn pod_constraints(required: &BTreeSet<String>, pod: &Value) -> Result<(), String> {
    let required: BTreeSet<&str> = required
        .iter()
        .map(String::as_str)
        .filter(|r| MUST_SPECIFY.contains(r))
        .collect();
    if required.is_empty() {
        return Ok(());
    }
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let spec = &pod["spec"];
    for list in ["containers", "initContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            let have = compute_usage(&container_list(c, "requests"), &container_list(c, "limits"));
            for r in &required {
                if !have.contains_key(*r) {
                    missing
                        .entry(r)
                        .or_default()
                        .insert(c["name"].as_str().unwrap_or("").to_string());
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| {
            format!(
                "{r} for: {}",
                names.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    Err(format!("must specify {}", parts.join("; ")))
}

/// A quota's scopes as selector requirements: `spec.scopes` (each `Exists`) and
/// `spec.scopeSelector.matchExpressions`.
fn scope_requirements(quota: &Value) -> Vec<(String, String, Vec<String>)> {
    let spec = &quota["spec"];
    let mut out: Vec<(String, String, Vec<String>)> = spec["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| (s.to_string(), "Exists".to_string(), Vec::new()))
        .collect();
    for e in spec["scopeSelector"]["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let values = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect();
        out.push((
            e["scopeName"].as_str().unwrap_or("").to_string(),
            e["operator"].as_str().unwrap_or("").to_string(),
            values,
        ));
    }
    out
}

/// Whether the quota's scopes take in this object. Only pods have scopes; a scoped quota
/// counts nothing else.
pub fn matches_scopes(quota: &Value, group: &str, plural: &str, obj: &Value) -> bool {
    let reqs = scope_requirements(quota);
    if reqs.is_empty() {
        return true;
    }
    if !(group.is_empty() && plural == "pods") {
        return false;
    }
    reqs.iter()
        .all(|(scope, op, values)| pod_matches_scope(obj, scope, op, values))
}

fn pod_matches_scope(pod: &Value, scope: &str, op: &str, values: &[String]) -> bool {
    let spec = &pod["spec"];
    match scope {
        "Terminating" => is_terminating(spec),
        "NotTerminating" => !is_terminating(spec),
        "BestEffort" => is_best_effort(spec),
        "NotBestEffort" => !is_best_effort(spec),
        "PriorityClass" => {
            let class = spec["priorityClassName"].as_str().unwrap_or("");
            match op {
                "Exists" => !class.is_empty(),
                "In" => values.iter().any(|v| v == class),
                "NotIn" => !values.iter().any(|v| v == class),
                _ => false,
            }
        }
        "CrossNamespacePodAffinity" => uses_cross_namespace_affinity(spec),
        _ => false,
    }
}

fn is_terminating(spec: &Value) -> bool {
    spec["activeDeadlineSeconds"]
        .as_i64()
        .is_some_and(|s| s >= 0)
}

/// QoS class BestEffort: no container asks for or limits cpu or memory.
pub fn is_best_effort(spec: &Value) -> bool {
    for list in ["containers", "initContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            for field in ["requests", "limits"] {
                let l = container_list(c, field);
                if ["cpu", "memory"]
                    .iter()
                    .any(|r| l.get(*r).is_some_and(|q| q > &Quantity::zero()))
                {
                    return false;
                }
            }
        }
    }
    true
}

fn uses_cross_namespace_affinity(spec: &Value) -> bool {
    ["podAffinity", "podAntiAffinity"].iter().any(|kind| {
        let a = &spec["affinity"][kind];
        let terms = a["requiredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(
                a["preferredDuringSchedulingIgnoredDuringExecution"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|w| &w["podAffinityTerm"]),
            );
        terms.into_iter().any(|t| {
            t["namespaces"].as_array().is_some_and(|n| !n.is_empty())
                || !t["namespaceSelector"].is_null()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": containers}})
    }

    #[test]
    fn pod_usage_sums_containers_and_takes_init_maximum() {
        let p = json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "500m"}}},
                {"name": "b", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
            ],
            "initContainers": [
                {"name": "i", "resources": {"requests": {"cpu": "2"}}},
            ],
        }});
        let u = usage("", "pods", &p, now());
        assert_eq!(u["pods"], q("1"));
        assert_eq!(u["count/pods"], q("1"));
        assert_eq!(u["requests.cpu"], q("2"));
        assert_eq!(u["cpu"], q("2"));
        assert_eq!(u["requests.memory"].to_string(), "128Mi");
        assert_eq!(u["limits.cpu"], q("500m"));
        assert!(!u.contains_key("limits.memory"));
    }

    #[test]
    fn terminal_pods_only_count_as_objects() {
        let mut p = pod(json!([{"name": "a", "resources": {"requests": {"cpu": "1"}}}]));
        p["status"]["phase"] = json!("Succeeded");
        let u = usage("", "pods", &p, now());
        assert_eq!(u.keys().collect::<Vec<_>>(), ["count/pods"]);
    }

    #[test]
    fn services_and_claims() {
        let svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 1}, {"port": 2}]}});
        let u = usage("", "services", &svc, now());
        assert_eq!(u["services.nodeports"], q("2"));
        assert_eq!(u["services"], q("1"));
        let lb = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 1}]}});
        assert_eq!(
            usage("", "services", &lb, now())["services.loadbalancers"],
            q("1")
        );
        let pvc = json!({"spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}}});
        let u = usage("", "persistentvolumeclaims", &pvc, now());
        assert_eq!(u["requests.storage"].to_string(), "1Gi");
        assert_eq!(
            u["fast.storageclass.storage.k8s.io/requests.storage"],
            q("1Gi")
        );
        assert_eq!(u["persistentvolumeclaims"], q("1"));
        let d = usage("apps", "deployments", &json!({}), now());
        assert_eq!(d.keys().collect::<Vec<_>>(), ["count/deployments.apps"]);
        let cm = usage("", "configmaps", &json!({}), now());
        assert_eq!(
            cm.keys().collect::<Vec<_>>(),
            ["configmaps", "count/configmaps"]
        );
    }

    #[test]
    fn matching_resources_by_kind() {
        let names: BTreeSet<String> = [
            "pods",
            "requests.cpu",
            "services",
            "count/deployments.apps",
            "secrets",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let m = |g, p| {
            matching_resources(g, p, &names)
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(m("", "pods"), ["pods", "requests.cpu"]);
        assert_eq!(m("", "services"), ["services"]);
        assert_eq!(m("apps", "deployments"), ["count/deployments.apps"]);
        assert_eq!(m("", "secrets"), ["secrets"]);
        assert!(m("", "configmaps").is_empty());
    }

    #[test]
    fn must_specify_message() {
        let required: BTreeSet<String> = ["limits.cpu", "limits.memory", "pods"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = pod(json!([{"name": "c"}, {"name": "d", "resources": {"limits": {"cpu": "1"}}}]));
        assert_eq!(
            pod_constraints(&required, &p).unwrap_err(),
            "must specify limits.cpu for: c; limits.memory for: c,d"
        );
        let ok =
            pod(json!([{"name": "c", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]));
        assert!(pod_constraints(&required, &ok).is_ok());
    }

    #[test]
    fn list_arithmetic_and_printing() {
        let a: ResourceList = [
            ("requests.cpu".to_string(), q("1")),
            ("pods".to_string(), q("2")),
        ]
        .into();
        let b: ResourceList = [("requests.cpu".to_string(), q("500m"))].into();
        let sum = add(&a, &b);
        assert_eq!(pretty_print(&sum), "pods=2,requests.cpu=1500m");
        let hard: ResourceList = [("requests.cpu".to_string(), q("1200m"))].into();
        assert_eq!(
            less_than_or_equal(&sum, &hard),
            (false, vec!["requests.cpu".to_string()])
        );
        assert_eq!(
            pretty_print(&subtract_non_negative(&b, &a)),
            "requests.cpu=0"
        );
        assert_eq!(to_json(&sum), json!({"pods": "2", "requests.cpu": "1500m"}));
    }

    #[test]
    fn scopes() {
        let quota = |scopes: Value| json!({"spec": {"scopes": scopes}});
        let be = pod(json!([{"name": "c"}]));
        let burst = pod(json!([{"name": "c", "resources": {"requests": {"cpu": "1"}}}]));
        assert!(matches_scopes(
            &quota(json!(["BestEffort"])),
            "",
            "pods",
            &be
        ));
        assert!(!matches_scopes(
            &quota(json!(["BestEffort"])),
            "",
            "pods",
            &burst
        ));
        assert!(matches_scopes(
            &quota(json!(["NotBestEffort"])),
            "",
            "pods",
            &burst
        ));
        assert!(matches_scopes(
            &quota(json!(["NotTerminating"])),
            "",
            "pods",
            &be
        ));
        let mut t = be.clone();
        t["spec"]["activeDeadlineSeconds"] = json!(10);
        assert!(matches_scopes(
            &quota(json!(["Terminating"])),
            "",
            "pods",
            &t
        ));
        assert!(!matches_scopes(
            &quota(json!(["Terminating"])),
            "",
            "secrets",
            &json!({})
        ));
        let pc = json!({"spec": {"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}});
        let mut high = be.clone();
        high["spec"]["priorityClassName"] = json!("high");
        assert!(matches_scopes(&pc, "", "pods", &high));
        assert!(!matches_scopes(&pc, "", "pods", &be));
    }
}
