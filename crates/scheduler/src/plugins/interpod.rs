//! InterPodAffinity: required pod affinity / anti-affinity by topology domain (including
//! existing pods' anti-affinity against the incoming pod), and the preferred-terms score.

use crate::cache::Cache;
use crate::framework::{Code, Plugin, Status};
use crate::types::{AffinityTerm, NodeData, NodeInfo, PodInfo};
use std::collections::HashMap;

pub const ERR_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const ERR_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const ERR_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";

/// kube-scheduler's default hardPodAffinityWeight.
pub const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

type Pair = (String, String);

/// Pre-filter counts per topology pair.
#[derive(Debug, Default)]
pub struct FilterState {
    affinity: HashMap<Pair, i64>,
    anti_affinity: HashMap<Pair, i64>,
    existing_anti_affinity: HashMap<Pair, i64>,
}

fn bump(m: &mut HashMap<Pair, i64>, node: &NodeData, key: &str, by: i64) {
    if let Some(v) = node.labels.get(key) {
        *m.entry((key.to_string(), v.clone())).or_default() += by;
    }
}

fn matches_all(terms: &[AffinityTerm], pod: &PodInfo, cache: &Cache) -> bool {
    let ns = cache.namespace_labels(&pod.namespace);
    terms.iter().all(|t| t.matches(pod, ns))
}

/// PreFilter: `None` when nothing can reject (no required terms on the pod and no
/// existing pod with required anti-affinity).
pub fn prefilter(pod: &PodInfo, cache: &Cache) -> Option<FilterState> {
    let has_terms = !pod.required_affinity.is_empty() || !pod.required_anti_affinity.is_empty();
    let any_existing_anti = cache.has_pods_with_required_anti_affinity();
    if !has_terms && !any_existing_anti {
        return None;
    }
    let mut st = FilterState::default();
    let pod_ns = cache.namespace_labels(&pod.namespace);
    for ni in cache.nodes() {
        let Some(node) = &ni.node else { continue };
        if ni.pods_with_required_anti_affinity > 0 {
            for existing in ni
                .pods
                .iter()
                .filter(|p| !p.required_anti_affinity.is_empty())
            {
                for t in &existing.required_anti_affinity {
                    if t.matches(pod, pod_ns) {
                        bump(&mut st.existing_anti_affinity, node, &t.topology_key, 1);
                    }
                }
            }
        }
        if !has_terms {
            continue;
        }
        for existing in &ni.pods {
            let ns = cache.namespace_labels(&existing.namespace);
            if !pod.required_affinity.is_empty()
                && pod
                    .required_affinity
                    .iter()
                    .all(|t| t.matches(existing, ns))
            {
                for t in &pod.required_affinity {
                    bump(&mut st.affinity, node, &t.topology_key, 1);
                }
            }
            for t in &pod.required_anti_affinity {
                if t.matches(existing, ns) {
                    bump(&mut st.anti_affinity, node, &t.topology_key, 1);
                }
            }
        }
    }
    Some(st)
}

fn positive(m: &HashMap<Pair, i64>, key: &str, value: &str) -> bool {
    m.get(&(key.to_string(), value.to_string()))
        .is_some_and(|c| *c > 0)
}

pub fn filter(pod: &PodInfo, st: &FilterState, node: &NodeData, cache: &Cache) -> Option<Status> {
    // Pod affinity: every term's topology label must exist on the node, and each domain
    // must already hold a matching pod, unless no pod matches anywhere and the pod matches
    // its own terms (the first pod of a group that attracts itself).
    let mut pods_exist = true;
    for t in &pod.required_affinity {
        match node.labels.get(&t.topology_key) {
            Some(v) => {
                if !positive(&st.affinity, &t.topology_key, v) {
                    pods_exist = false;
                }
            }
            None => {
                return Some(Status::new(
                    Code::Unresolvable,
                    Plugin::InterPodAffinity,
                    ERR_AFFINITY,
                ))
            }
        }
    }
    let first_of_group = st.affinity.is_empty() && matches_all(&pod.required_affinity, pod, cache);
    if !pods_exist && !first_of_group {
        return Some(Status::new(
            Code::Unresolvable,
            Plugin::InterPodAffinity,
            ERR_AFFINITY,
        ));
    }
    if !st.anti_affinity.is_empty() {
        for t in &pod.required_anti_affinity {
            if let Some(v) = node.labels.get(&t.topology_key) {
                if positive(&st.anti_affinity, &t.topology_key, v) {
                    return Some(Status::new(
                        Code::Unschedulable,
                        Plugin::InterPodAffinity,
                        ERR_ANTI_AFFINITY,
                    ));
                }
            }
        }
    }
    if !st.existing_anti_affinity.is_empty()
        && node
            .labels
            .iter()
            .any(|(k, v)| positive(&st.existing_anti_affinity, k, v))
    {
        return Some(Status::new(
            Code::Unschedulable,
            Plugin::InterPodAffinity,
            ERR_EXISTING_ANTI_AFFINITY,
        ));
    }
    None
}

/// Preferred inter-pod affinity score for the feasible nodes, normalised to 0..100 by
/// min/max; `None` when skipped (no preferred terms and no existing pods with affinity).
pub fn scores(pod: &PodInfo, cache: &Cache, feasible: &[&NodeInfo]) -> Option<Vec<i64>> {
    let has_preferred =
        !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty();
    let any_with_affinity = cache.has_pods_with_affinity();
    if !has_preferred && !any_with_affinity {
        return None;
    }
    let mut topo: HashMap<String, HashMap<String, i64>> = HashMap::new();
    let pod_ns = cache.namespace_labels(&pod.namespace);
    let mut add = |t: &AffinityTerm, weight: i64, target: &PodInfo, ns, node: &NodeData| {
        if t.matches(target, ns) {
            if let Some(v) = node.labels.get(&t.topology_key) {
                *topo
                    .entry(t.topology_key.clone())
                    .or_default()
                    .entry(v.clone())
                    .or_default() += weight;
            }
        }
    };
    for ni in cache
        .nodes()
        .filter(|n| has_preferred || n.pods_with_affinity > 0)
    {
        let Some(node) = &ni.node else { continue };
        if node.labels.is_empty() {
            continue;
        }
        for existing in &ni.pods {
            let ens = cache.namespace_labels(&existing.namespace);
            for w in &pod.preferred_affinity {
                add(&w.term, w.weight as i64, existing, ens, node);
            }
            for w in &pod.preferred_anti_affinity {
                add(&w.term, -(w.weight as i64), existing, ens, node);
            }
            for t in &existing.required_affinity {
                add(t, HARD_POD_AFFINITY_WEIGHT, pod, pod_ns, node);
            }
            for w in &existing.preferred_affinity {
                add(&w.term, w.weight as i64, pod, pod_ns, node);
            }
            for w in &existing.preferred_anti_affinity {
                add(&w.term, -(w.weight as i64), pod, pod_ns, node);
            }
        }
    }
    let raw: Vec<i64> = feasible
        .iter()
        .map(|ni| {
            let Some(node) = &ni.node else { return 0 };
            topo.iter()
                .filter_map(|(k, vals)| node.labels.get(k).and_then(|v| vals.get(v)))
                .sum()
        })
        .collect();
    let (min, max) = (
        raw.iter().copied().min().unwrap_or(0),
        raw.iter().copied().max().unwrap_or(0),
    );
    let diff = max - min;
    Some(
        raw.iter()
            .map(|s| {
                if diff > 0 {
                    (super::MAX_NODE_SCORE as f64 * ((s - min) as f64 / diff as f64)) as i64
                } else {
                    0
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use std::sync::Arc;

    fn cluster() -> Cache {
        let mut c = Cache::new();
        c.set_node(node_labels(
            "a1",
            &[("zone", "a"), ("kubernetes.io/hostname", "a1")],
        ));
        c.set_node(node_labels(
            "a2",
            &[("zone", "a"), ("kubernetes.io/hostname", "a2")],
        ));
        c.set_node(node_labels(
            "b1",
            &[("zone", "b"), ("kubernetes.io/hostname", "b1")],
        ));
        c.set_node(node_labels("nolabel", &[]));
        c
    }

    fn run(pod: &PodInfo, c: &Cache, node: &str) -> Option<Status> {
        let st = prefilter(pod, c)?;
        filter(pod, &st, c.node(node).unwrap().node.as_ref().unwrap(), c)
    }

    #[test]
    fn required_anti_affinity_by_topology() {
        let mut c = cluster();
        c.add_or_update_bound(Arc::new(pod("web-1").label("app", "web").on("a1").build()));
        let p = pod("web-2")
            .label("app", "web")
            .anti_affinity("app", "web", "zone")
            .build();
        assert_eq!(run(&p, &c, "a2").unwrap().reasons, vec![ERR_ANTI_AFFINITY]);
        assert_eq!(run(&p, &c, "a2").unwrap().code, Code::Unschedulable);
        assert!(run(&p, &c, "b1").is_none());
        // A node without the topology label does not conflict.
        assert!(run(&p, &c, "nolabel").is_none());
        let p = pod("web-2")
            .label("app", "web")
            .anti_affinity("app", "web", "kubernetes.io/hostname")
            .build();
        assert!(run(&p, &c, "a1").is_some());
        assert!(run(&p, &c, "a2").is_none());
        // Other namespaces are not selected by default.
        let p = pod("web-2")
            .namespace("other")
            .anti_affinity("app", "web", "zone")
            .build();
        assert!(run(&p, &c, "a2").is_none());
    }

    #[test]
    fn existing_pods_anti_affinity_rejects_incoming() {
        let mut c = cluster();
        c.add_or_update_bound(Arc::new(
            pod("db")
                .label("app", "db")
                .anti_affinity("app", "web", "zone")
                .on("a1")
                .build(),
        ));
        let p = pod("web").label("app", "web").build();
        assert_eq!(
            run(&p, &c, "a2").unwrap().reasons,
            vec![ERR_EXISTING_ANTI_AFFINITY]
        );
        assert!(run(&p, &c, "b1").is_none());
        assert!(run(&pod("x").label("app", "api").build(), &c, "a2").is_none());
    }

    #[test]
    fn required_affinity_and_the_first_pod_of_a_group() {
        let mut c = cluster();
        let p = pod("cache")
            .label("app", "cache")
            .affinity("app", "cache", "zone")
            .build();
        // No pod matches anywhere and the pod matches itself: allowed where the label exists.
        assert!(run(&p, &c, "a1").is_none());
        assert_eq!(run(&p, &c, "nolabel").unwrap().reasons, vec![ERR_AFFINITY]);
        // A pod that does not match its own term stays pending.
        let q = pod("front")
            .label("app", "front")
            .affinity("app", "cache", "zone")
            .build();
        assert_eq!(run(&q, &c, "a1").unwrap().code, Code::Unresolvable);
        c.add_or_update_bound(Arc::new(
            pod("cache-1").label("app", "cache").on("b1").build(),
        ));
        assert!(run(&q, &c, "b1").is_none());
        assert!(run(&q, &c, "a1").is_some());
        assert!(
            run(&p, &c, "a1").is_some(),
            "now a matching pod exists, only zone b fits"
        );
    }

    #[test]
    fn namespace_selector() {
        let mut c = cluster();
        c.set_namespace(
            "team-a".into(),
            [("team".to_string(), "a".to_string())].into(),
        );
        c.add_or_update_bound(Arc::new(
            pod("x")
                .namespace("team-a")
                .label("app", "x")
                .on("a1")
                .build(),
        ));
        let p = pod("p")
            .anti_affinity_ns_selector("app", "x", "zone", "team", "a")
            .build();
        assert!(run(&p, &c, "a2").is_some());
        let p = pod("p")
            .anti_affinity_ns_selector("app", "x", "zone", "team", "b")
            .build();
        assert!(run(&p, &c, "a2").is_none());
    }

    #[test]
    fn preferred_scores() {
        let mut c = cluster();
        c.add_or_update_bound(Arc::new(pod("x").label("app", "x").on("a1").build()));
        let p = pod("p").preferred_affinity(10, "app", "x", "zone").build();
        let nodes: Vec<&NodeInfo> = ["a1", "a2", "b1"]
            .iter()
            .map(|n| c.node(n).unwrap())
            .collect();
        assert_eq!(scores(&p, &c, &nodes).unwrap(), vec![100, 100, 0]);
        let p = pod("p")
            .preferred_anti_affinity(10, "app", "x", "zone")
            .build();
        assert_eq!(scores(&p, &c, &nodes).unwrap(), vec![0, 0, 100]);
        // Existing pods' required affinity attracts the incoming pod (hard weight 1).
        c.add_or_update_bound(Arc::new(
            pod("y").affinity("app", "p", "zone").on("b1").build(),
        ));
        let p = pod("p").label("app", "p").build();
        let nodes: Vec<&NodeInfo> = ["a1", "a2", "b1"]
            .iter()
            .map(|n| c.node(n).unwrap())
            .collect();
        assert_eq!(scores(&p, &c, &nodes).unwrap(), vec![0, 0, 100]);
        let empty = cluster();
        assert!(scores(&pod("q").build(), &empty, &nodes).is_none());
    }
}
