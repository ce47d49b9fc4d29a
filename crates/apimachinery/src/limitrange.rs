//! LimitRange semantics, as Kubernetes' LimitRanger admission plugin and the LimitRange
//! defaulting apply them: defaults filled into containers that lack requests or limits
//! (with the `kubernetes.io/limit-ranger` annotation saying what was set), then the min,
//! max and maxLimitRequestRatio checks per Container, per Pod and per PersistentVolumeClaim,
//! with upstream's wording.

use crate::quantity::Quantity;
use crate::quota::{parse_list, pod_resources, ResourceList};
use serde_json::{json, Value};

pub const ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// LimitRange defaulting (SetDefaults_LimitRangeItem): for Container items, a missing
/// default limit is the max, a missing default request is the default limit, else the min.
pub fn set_defaults(lr: &mut Value) {
    let Some(items) = lr["spec"]["limits"].as_array_mut() else {
        return;
    };
    for item in items {
        if item["type"].as_str() != Some("Container") || !item.is_object() {
            continue;
        }
        for f in ["default", "defaultRequest"] {
            if !item[f].is_object() {
                item[f] = json!({});
            }
        }
        let fill = |item: &mut Value, from: &str, to: &str| {
            let src = item[from].as_object().cloned().unwrap_or_default();
            for (k, v) in src {
                if item[to].get(&k).is_none() {
                    item[to][k] = v;
                }
            }
        };
        fill(item, "max", "default");
        fill(item, "default", "defaultRequest");
        fill(item, "min", "defaultRequest");
        for f in ["default", "defaultRequest"] {
            if item[f].as_object().is_some_and(|m| m.is_empty()) {
                if let Some(m) = item.as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
}

fn container_items(lr: &Value) -> impl Iterator<Item = &Value> {
    lr["spec"]["limits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["type"].as_str() == Some("Container"))
}

/// Fills in a pod's missing container requests and limits from the LimitRange's Container
/// defaults and records what was set in the `kubernetes.io/limit-ranger` annotation.
pub fn default_pod(lr: &Value, pod: &mut Value) {
    let mut limits = serde_json::Map::new();
    let mut requests = serde_json::Map::new();
    for item in container_items(lr) {
        for (k, v) in item["defaultRequest"].as_object().into_iter().flatten() {
            requests.insert(k.clone(), v.clone());
        }
        for (k, v) in item["default"].as_object().into_iter().flatten() {
            limits.insert(k.clone(), v.clone());
        }
    }
    if limits.is_empty() && requests.is_empty() {
        return;
    }
    let mut notes: Vec<String> = Vec::new();
    for (list, prefix) in [
        ("containers", "container"),
        ("initContainers", "init container"),
    ] {
        let Some(cs) = pod["spec"][list].as_array_mut() else {
            continue;
        };
        for c in cs {
            let name = c["name"].as_str().unwrap_or("").to_string();
            if !c["resources"].is_object() {
                c["resources"] = json!({});
            }
            let mut set = |field: &str, defaults: &serde_json::Map<String, Value>| {
                if !c["resources"][field].is_object() {
                    c["resources"][field] = json!({});
                }
                let mut names = Vec::new();
                for (k, v) in defaults {
                    if c["resources"][field].get(k).is_none() {
                        c["resources"][field][k] = v.clone();
                        names.push(k.clone());
                    }
                }
                names.sort();
                names
            };
            let set_limits = set("limits", &limits);
            let set_requests = set("requests", &requests);
            if !set_requests.is_empty() {
                notes.push(format!(
                    "{} request for {prefix} {name}",
                    set_requests.join(", ")
                ));
            }
            if !set_limits.is_empty() {
                notes.push(format!(
                    "{} limit for {prefix} {name}",
                    set_limits.join(", ")
                ));
            }
            // Empty maps are not sent back (Go drops them when it serializes).
            for field in ["limits", "requests"] {
                if c["resources"][field]
                    .as_object()
                    .is_some_and(|m| m.is_empty())
                {
                    if let Some(m) = c["resources"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
    }
    if !notes.is_empty() {
        if !pod["metadata"]["annotations"].is_object() {
            pod["metadata"]["annotations"] = json!({});
        }
        pod["metadata"]["annotations"][ANNOTATION] =
            json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
    }
}

/// Request, limit and enforced value at a common precision (milli-units unless too big).
fn comparable(
    req: Option<&Quantity>,
    lim: Option<&Quantity>,
    enforced: &Quantity,
) -> (i64, i64, i64) {
    let zero = Quantity::zero();
    let (r, l) = (req.unwrap_or(&zero), lim.unwrap_or(&zero));
    const MAX_MILLI: i64 = i64::MAX / 1000;
    if r.value() <= MAX_MILLI && l.value() <= MAX_MILLI && enforced.value() <= MAX_MILLI {
        (r.milli_value(), l.milli_value(), enforced.milli_value())
    } else {
        (r.value(), l.value(), enforced.value())
    }
}

fn min_constraint(
    kind: &str,
    name: &str,
    enforced: &Quantity,
    req: &ResourceList,
    lim: &ResourceList,
) -> Option<String> {
    let (r, l) = (req.get(name), lim.get(name));
    let (rv, lv, ev) = comparable(r, l, enforced);
    match r {
        None => Some(format!(
            "minimum {name} usage per {kind} is {enforced}.  No request is specified"
        )),
        Some(r) if rv < ev => Some(format!(
            "minimum {name} usage per {kind} is {enforced}, but request is {r}"
        )),
        _ => match l {
            Some(l) if lv < ev => Some(format!(
                "minimum {name} usage per {kind} is {enforced}, but limit is {l}"
            )),
            _ => None,
        },
    }
}

fn max_constraint(
    kind: &str,
    name: &str,
    enforced: &Quantity,
    req: &ResourceList,
    lim: &ResourceList,
) -> Option<String> {
    let (r, l) = (req.get(name), lim.get(name));
    let (rv, lv, ev) = comparable(r, l, enforced);
    match l {
        None => Some(format!(
            "maximum {name} usage per {kind} is {enforced}.  No limit is specified"
        )),
        Some(l) if lv > ev => Some(format!(
            "maximum {name} usage per {kind} is {enforced}, but limit is {l}"
        )),
        _ => match r {
            Some(r) if rv > ev => Some(format!(
                "maximum {name} usage per {kind} is {enforced}, but request is {r}"
            )),
            _ => None,
        },
    }
}

fn max_request_constraint(
    kind: &str,
    name: &str,
    enforced: &Quantity,
    req: &ResourceList,
) -> Option<String> {
    let r = req.get(name);
    let (rv, _, ev) = comparable(r, None, enforced);
    match r {
        None => Some(format!(
            "maximum {name} usage per {kind} is {enforced}.  No request is specified"
        )),
        Some(r) if rv > ev => Some(format!(
            "maximum {name} usage per {kind} is {enforced}, but request is {r}"
        )),
        _ => None,
    }
}

fn ratio_constraint(
    kind: &str,
    name: &str,
    enforced: &Quantity,
    req: &ResourceList,
    lim: &ResourceList,
) -> Option<String> {
    let (r, l) = (req.get(name), lim.get(name));
    let (rv, lv, _) = comparable(r, l, enforced);
    if r.is_none() || rv == 0 {
        return Some(format!(
            "{name} max limit to request ratio per {kind} is {enforced}, but no request is specified or request is 0"
        ));
    }
    if l.is_none() || lv == 0 {
        return Some(format!(
            "{name} max limit to request ratio per {kind} is {enforced}, but no limit is specified or limit is 0"
        ));
    }
    let observed = lv as f64 / rv as f64;
    let (mut scaled, mut max) = (observed, enforced.value() as f64);
    if enforced.value() <= i64::MAX / 1000 {
        scaled = observed * 1000.0;
        max = enforced.milli_value() as f64;
    }
    (scaled > max).then(|| {
        format!(
            "{name} max limit to request ratio per {kind} is {enforced}, but provided ratio is {observed:.6}"
        )
    })
}

fn check(kind: &str, item: &Value, req: &ResourceList, lim: &ResourceList, errs: &mut Vec<String>) {
    for (name, v) in parse_list(&item["min"]) {
        errs.extend(min_constraint(kind, &name, &v, req, lim));
    }
    for (name, v) in parse_list(&item["max"]) {
        errs.extend(max_constraint(kind, &name, &v, req, lim));
    }
    for (name, v) in parse_list(&item["maxLimitRequestRatio"]) {
        errs.extend(ratio_constraint(kind, &name, &v, req, lim));
    }
}

/// The pod's violations of the LimitRange, in upstream's words (empty: allowed).
pub fn validate_pod(lr: &Value, pod: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    let spec = &pod["spec"];
    for item in lr["spec"]["limits"].as_array().into_iter().flatten() {
        match item["type"].as_str() {
            Some("Container") => {
                for list in ["containers", "initContainers"] {
                    for c in spec[list].as_array().into_iter().flatten() {
                        let req = parse_list(&c["resources"]["requests"]);
                        let lim = parse_list(&c["resources"]["limits"]);
                        check("Container", item, &req, &lim, &mut errs);
                    }
                }
            }
            Some("Pod") => {
                let req = pod_resources(spec, "requests");
                let lim = pod_resources(spec, "limits");
                check("Pod", item, &req, &lim, &mut errs);
            }
            _ => {}
        }
    }
    errs
}

/// A claim's violations: storage requests against the PersistentVolumeClaim min and max.
pub fn validate_pvc(lr: &Value, pvc: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    let req = parse_list(&pvc["spec"]["resources"]["requests"]);
    for item in lr["spec"]["limits"].as_array().into_iter().flatten() {
        if item["type"].as_str() != Some("PersistentVolumeClaim") {
            continue;
        }
        for (name, v) in parse_list(&item["min"]) {
            errs.extend(min_constraint(
                "PersistentVolumeClaim",
                &name,
                &v,
                &req,
                &ResourceList::new(),
            ));
        }
        for (name, v) in parse_list(&item["max"]) {
            errs.extend(max_request_constraint(
                "PersistentVolumeClaim",
                &name,
                &v,
                &req,
            ));
        }
    }
    errs
}

/// Joins errors as Kubernetes' aggregate error does: one as itself, more as `[a, b]`,
/// duplicates once.
pub fn aggregate(errs: &[String]) -> String {
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<&String> = errs.iter().filter(|e| seen.insert(e.as_str())).collect();
    if unique.len() == 1 {
        unique[0].clone()
    } else {
        format!(
            "[{}]",
            unique
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lr(items: Value) -> Value {
        let mut lr = json!({"spec": {"limits": items}});
        set_defaults(&mut lr);
        lr
    }

    #[test]
    fn defaulting_of_the_limit_range() {
        let l = lr(json!([{"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "10Mi"}}]));
        let item = &l["spec"]["limits"][0];
        assert_eq!(item["default"], json!({"cpu": "1"}));
        assert_eq!(
            item["defaultRequest"],
            json!({"cpu": "1", "memory": "10Mi"})
        );
    }

    #[test]
    fn defaults_and_annotation() {
        let l = lr(json!([{"type": "Container",
            "default": {"cpu": "500m", "memory": "256Mi"},
            "defaultRequest": {"cpu": "250m", "memory": "128Mi"}}]));
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "x"}, {"name": "y", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1"}}}],
            "initContainers": [{"name": "i"}]}});
        default_pod(&l, &mut pod);
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["limits"],
            json!({"cpu": "500m", "memory": "256Mi"})
        );
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["requests"],
            json!({"cpu": "250m", "memory": "128Mi"})
        );
        assert_eq!(
            pod["spec"]["containers"][1]["resources"]["limits"],
            json!({"cpu": "1", "memory": "256Mi"})
        );
        assert_eq!(
            pod["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container x; cpu, memory limit for container x; \
             memory request for container y; memory limit for container y; \
             cpu, memory request for init container i; cpu, memory limit for init container i"
        );
    }

    fn pod_with(res: Value) -> Value {
        json!({"spec": {"containers": [{"name": "c", "resources": res}]}})
    }

    #[test]
    fn min_max_ratio_messages() {
        let l = lr(
            json!([{"type": "Container", "max": {"cpu": "500m"}, "min": {"memory": "10Mi"},
                           "maxLimitRequestRatio": {"cpu": "2"}}]),
        );
        let p = pod_with(
            json!({"limits": {"cpu": "1", "memory": "20Mi"}, "requests": {"cpu": "250m", "memory": "5Mi"}}),
        );
        assert_eq!(
            validate_pod(&l, &p),
            [
                "minimum memory usage per Container is 10Mi, but request is 5Mi",
                "maximum cpu usage per Container is 500m, but limit is 1",
                "cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000",
            ]
        );
        let ok = pod_with(
            json!({"limits": {"cpu": "500m", "memory": "20Mi"}, "requests": {"cpu": "250m", "memory": "10Mi"}}),
        );
        assert!(validate_pod(&l, &ok).is_empty());
        let none = pod_with(json!({}));
        assert_eq!(
            validate_pod(&lr(json!([{"type": "Pod", "max": {"cpu": "2"}}])), &none),
            ["maximum cpu usage per Pod is 2.  No limit is specified"]
        );
    }

    #[test]
    fn pvc_storage_bounds() {
        let l = lr(
            json!([{"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}, "max": {"storage": "2Gi"}}]),
        );
        let pvc = |s: &str| json!({"spec": {"resources": {"requests": {"storage": s}}}});
        assert_eq!(
            validate_pvc(&l, &pvc("5Gi")),
            ["maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 5Gi"]
        );
        assert_eq!(
            validate_pvc(&l, &pvc("500Mi")),
            ["minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"]
        );
        assert!(validate_pvc(&l, &pvc("1536Mi")).is_empty());
    }

    #[test]
    fn aggregate_errors() {
        assert_eq!(aggregate(&["a".into()]), "a");
        assert_eq!(aggregate(&["a".into(), "b".into(), "a".into()]), "[a, b]");
    }
}
