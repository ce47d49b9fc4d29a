//! PodTopologySpread: `whenUnsatisfiable: DoNotSchedule` constraints filter (maxSkew,
//! minDomains, node inclusion policies), `ScheduleAnyway` constraints score.

use crate::cache::Cache;
use crate::framework::{Code, Plugin, Status};
use crate::selectors::Selector;
use crate::types::{
    tolerations_tolerate, NodeData, NodeInfo, PodInfo, SpreadConstraint, WhenUnsatisfiable,
    LABEL_HOSTNAME,
};
use std::collections::{HashMap, HashSet};

pub const ERR_CONSTRAINTS: &str = "node(s) didn't match pod topology spread constraints";
pub const ERR_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

fn count_matching(pods: &[std::sync::Arc<PodInfo>], sel: &Selector, ns: &str) -> i64 {
    if sel.is_empty() {
        return 0;
    }
    pods.iter()
        .filter(|p| !p.terminating && p.namespace == ns && sel.matches(&p.labels))
        .count() as i64
}

fn has_all_keys(node: &NodeData, cs: &[SpreadConstraint]) -> bool {
    cs.iter().all(|c| node.labels.contains_key(&c.topology_key))
}

fn included(c: &SpreadConstraint, pod: &PodInfo, node: &NodeData) -> bool {
    if c.honor_node_affinity && !pod.matches_node_selector_and_affinity(node) {
        return false;
    }
    if c.honor_node_taints {
        let untolerated = node.taints.iter().any(|t| {
            (t.effect == "NoSchedule" || t.effect == "NoExecute")
                && !tolerations_tolerate(&pod.tolerations, t)
        });
        if untolerated {
            return false;
        }
    }
    true
}

fn constraints(pod: &PodInfo, when: WhenUnsatisfiable) -> Vec<SpreadConstraint> {
    pod.spread
        .iter()
        .filter(|c| c.when_unsatisfiable == when)
        .cloned()
        .collect()
}

#[derive(Debug)]
pub struct FilterState {
    constraints: Vec<SpreadConstraint>,
    counts: Vec<HashMap<String, i64>>,
}

impl FilterState {
    fn min_match(&self, i: usize) -> i64 {
        let counts = &self.counts[i];
        if (counts.len() as i32) < self.constraints[i].min_domains {
            return 0;
        }
        counts.values().copied().min().unwrap_or(i32::MAX as i64)
    }
}

/// PreFilter: matching pods per topology domain over eligible nodes; `None` without
/// DoNotSchedule constraints.
pub fn prefilter(pod: &PodInfo, cache: &Cache) -> Option<FilterState> {
    let cs = constraints(pod, WhenUnsatisfiable::DoNotSchedule);
    if cs.is_empty() {
        return None;
    }
    let mut counts = vec![HashMap::new(); cs.len()];
    for ni in cache.nodes() {
        let Some(node) = &ni.node else { continue };
        if !has_all_keys(node, &cs) {
            continue;
        }
        for (i, c) in cs.iter().enumerate() {
            if !included(c, pod, node) {
                continue;
            }
            let v = node.labels[&c.topology_key].clone();
            *counts[i].entry(v).or_insert(0) +=
                count_matching(&ni.pods, &c.selector, &pod.namespace);
        }
    }
    Some(FilterState {
        constraints: cs,
        counts,
    })
}

pub fn filter(pod: &PodInfo, st: &FilterState, node: &NodeData) -> Option<Status> {
    for (i, c) in st.constraints.iter().enumerate() {
        let Some(v) = node.labels.get(&c.topology_key) else {
            return Some(Status::new(
                Code::Unresolvable,
                Plugin::PodTopologySpread,
                ERR_MISSING_LABEL,
            ));
        };
        let self_match = i64::from(c.selector.matches(&pod.labels));
        let matched = st.counts[i].get(v).copied().unwrap_or(0);
        if matched + self_match - st.min_match(i) > c.max_skew as i64 {
            return Some(Status::new(
                Code::Unschedulable,
                Plugin::PodTopologySpread,
                ERR_CONSTRAINTS,
            ));
        }
    }
    None
}

/// ScheduleAnyway scoring: fewer matching pods in the node's domains is better; each
/// constraint weighted by log(number of domains + 2). `None` without such constraints.
pub fn scores(pod: &PodInfo, cache: &Cache, feasible: &[&NodeInfo]) -> Option<Vec<i64>> {
    let cs = constraints(pod, WhenUnsatisfiable::ScheduleAnyway);
    if cs.is_empty() || feasible.is_empty() {
        return None;
    }
    let mut ignored: HashSet<&str> = HashSet::new();
    let mut pair_counts: HashMap<(usize, String), i64> = HashMap::new();
    let mut sizes = vec![0usize; cs.len()];
    for ni in feasible {
        let Some(node) = &ni.node else { continue };
        if !has_all_keys(node, &cs) {
            ignored.insert(&ni.name);
            continue;
        }
        for (i, c) in cs.iter().enumerate() {
            if c.topology_key == LABEL_HOSTNAME {
                continue;
            }
            let key = (i, node.labels[&c.topology_key].clone());
            if let std::collections::hash_map::Entry::Vacant(e) = pair_counts.entry(key) {
                e.insert(0);
                sizes[i] += 1;
            }
        }
    }
    let weights: Vec<f64> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let size = if c.topology_key == LABEL_HOSTNAME {
                feasible.len() - ignored.len()
            } else {
                sizes[i]
            };
            ((size + 2) as f64).ln()
        })
        .collect();
    for ni in cache.nodes() {
        let Some(node) = &ni.node else { continue };
        if !has_all_keys(node, &cs) {
            continue;
        }
        for (i, c) in cs.iter().enumerate() {
            if !included(c, pod, node) {
                continue;
            }
            if let Some(n) = pair_counts.get_mut(&(i, node.labels[&c.topology_key].clone())) {
                *n += count_matching(&ni.pods, &c.selector, &pod.namespace);
            }
        }
    }
    let raw: Vec<Option<i64>> = feasible
        .iter()
        .map(|ni| {
            if ignored.contains(ni.name.as_str()) {
                return None;
            }
            let node = ni.node.as_ref()?;
            let mut score = 0f64;
            for (i, c) in cs.iter().enumerate() {
                let Some(v) = node.labels.get(&c.topology_key) else {
                    continue;
                };
                let cnt = if c.topology_key == LABEL_HOSTNAME {
                    count_matching(&ni.pods, &c.selector, &pod.namespace)
                } else {
                    pair_counts.get(&(i, v.clone())).copied().unwrap_or(0)
                };
                score += cnt as f64 * weights[i] + (c.max_skew - 1) as f64;
            }
            Some(score.round() as i64)
        })
        .collect();
    let present = raw.iter().flatten();
    let min = present.clone().copied().min().unwrap_or(0);
    let max = present.copied().max().unwrap_or(0);
    Some(
        raw.iter()
            .map(|s| match s {
                None => 0,
                Some(_) if max == 0 => super::MAX_NODE_SCORE,
                Some(s) => super::MAX_NODE_SCORE * (max + min - s) / max,
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
        for (n, z) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c")] {
            c.set_node(node_labels(
                n,
                &[("zone", z), ("kubernetes.io/hostname", n)],
            ));
        }
        c
    }

    fn run(p: &PodInfo, c: &Cache, n: &str) -> Option<Status> {
        let st = prefilter(p, c)?;
        filter(p, &st, c.node(n).unwrap().node.as_ref().unwrap())
    }

    #[test]
    fn max_skew_by_zone() {
        let mut c = cluster();
        c.add_or_update_bound(Arc::new(pod("w1").label("app", "w").on("a1").build()));
        c.add_or_update_bound(Arc::new(pod("w2").label("app", "w").on("b1").build()));
        let p = pod("w3")
            .label("app", "w")
            .spread(1, "zone", "DoNotSchedule", "app", "w")
            .build();
        // zone a: 1, b: 1, c: 0 -> min 0; a or b would make skew 2.
        assert_eq!(run(&p, &c, "a2").unwrap().reasons, vec![ERR_CONSTRAINTS]);
        assert_eq!(run(&p, &c, "a2").unwrap().code, Code::Unschedulable);
        assert!(run(&p, &c, "b1").is_some());
        assert!(run(&p, &c, "c1").is_none());
        let p = pod("w3")
            .label("app", "w")
            .spread(2, "zone", "DoNotSchedule", "app", "w")
            .build();
        assert!(run(&p, &c, "a2").is_none());
        // Terminating pods and pods of other namespaces do not count.
        let mut c2 = cluster();
        let mut t = pod("w1").label("app", "w").on("a1").build();
        t.terminating = true;
        c2.add_or_update_bound(Arc::new(t));
        c2.add_or_update_bound(Arc::new(
            pod("o").namespace("x").label("app", "w").on("a1").build(),
        ));
        let p = pod("w3")
            .label("app", "w")
            .spread(1, "zone", "DoNotSchedule", "app", "w")
            .build();
        assert!(run(&p, &c2, "a1").is_none());
    }

    #[test]
    fn missing_label_and_node_affinity_policy() {
        let mut c = cluster();
        c.set_node(node_labels("bare", &[]));
        let p = pod("w")
            .label("app", "w")
            .spread(1, "zone", "DoNotSchedule", "app", "w")
            .build();
        let s = run(&p, &c, "bare").unwrap();
        assert_eq!(
            (s.reasons[0].as_str(), s.code),
            (ERR_MISSING_LABEL, Code::Unresolvable)
        );
        // With a node selector restricting to zone a/b, zone c is not a domain (Honor).
        c.add_or_update_bound(Arc::new(pod("w1").label("app", "w").on("a1").build()));
        let p = pod("w2")
            .label("app", "w")
            .required_node_term(&[("zone", "In", &["a", "b"])])
            .spread(1, "zone", "DoNotSchedule", "app", "w")
            .build();
        assert!(run(&p, &c, "b1").is_none());
        assert!(run(&p, &c, "a2").is_some());
    }

    #[test]
    fn min_domains() {
        let mut c = cluster();
        c.add_or_update_bound(Arc::new(pod("w1").label("app", "w").on("a1").build()));
        c.add_or_update_bound(Arc::new(pod("w2").label("app", "w").on("b1").build()));
        c.add_or_update_bound(Arc::new(pod("w3").label("app", "w").on("c1").build()));
        let mut p = pod("w4")
            .label("app", "w")
            .spread(1, "zone", "DoNotSchedule", "app", "w")
            .build();
        assert!(run(&p, &c, "a2").is_none());
        // With minDomains 4 > 3 domains, the global minimum is 0: skew 2 > 1.
        p.spread[0].min_domains = 4;
        assert!(run(&p, &c, "a2").is_some());
    }

    #[test]
    fn schedule_anyway_scores() {
        let mut c = cluster();
        c.add_or_update_bound(Arc::new(pod("w1").label("app", "w").on("a1").build()));
        c.add_or_update_bound(Arc::new(pod("w2").label("app", "w").on("a2").build()));
        c.add_or_update_bound(Arc::new(pod("w3").label("app", "w").on("b1").build()));
        let p = pod("w4")
            .label("app", "w")
            .spread(1, "zone", "ScheduleAnyway", "app", "w")
            .build();
        assert!(prefilter(&p, &c).is_none(), "ScheduleAnyway never filters");
        let nodes: Vec<&NodeInfo> = ["a1", "b1", "c1"]
            .iter()
            .map(|n| c.node(n).unwrap())
            .collect();
        // 3 zones: weight ln(5) = 1.609; counts a=2 -> 3, b=1 -> 2 (1.6 rounds), c=0 -> 0.
        // normalised: 100*(3+0-s)/3 -> a 0, b 33, c 100.
        assert_eq!(scores(&p, &c, &nodes).unwrap(), vec![0, 33, 100]);
        assert!(scores(&pod("x").build(), &c, &nodes).is_none());
    }
}
