//! NodeResourcesFit (filter; LeastAllocated score) and NodeResourcesBalancedAllocation.

use super::MAX_NODE_SCORE;
use crate::framework::{Code, Plugin, Status};
use crate::resources::Resource;
use crate::types::{NodeInfo, PodInfo};

/// NodeResourcesFit filter: pods count, then cpu, memory, ephemeral-storage and scalar
/// resources against allocatable minus what pods on the node (bound or assumed) request.
/// A request larger than the whole allocatable is Unresolvable (preemption cannot help).
pub fn fit(req: &Resource, node: &NodeInfo) -> Option<Status> {
    let alloc = &node.node.as_ref()?.allocatable;
    let used = &node.requested;
    let mut reasons = Vec::new();
    let mut unresolvable = false;
    if node.pods.len() as i64 + 1 > alloc.allowed_pods {
        reasons.push("Too many pods".to_string());
    }
    if req.is_zero() {
        return finish(reasons, unresolvable);
    }
    let mut check = |name: &str, want: i64, have: i64, used: i64| {
        if want > 0 && want > have - used {
            reasons.push(format!("Insufficient {name}"));
            unresolvable |= want > have;
        }
    };
    check("cpu", req.milli_cpu, alloc.milli_cpu, used.milli_cpu);
    check("memory", req.memory, alloc.memory, used.memory);
    check(
        "ephemeral-storage",
        req.ephemeral_storage,
        alloc.ephemeral_storage,
        used.ephemeral_storage,
    );
    for (name, want) in &req.scalar {
        let have = alloc.scalar.get(name).copied().unwrap_or(0);
        let u = used.scalar.get(name).copied().unwrap_or(0);
        check(name, *want, have, u);
    }
    finish(reasons, unresolvable)
}

fn finish(reasons: Vec<String>, unresolvable: bool) -> Option<Status> {
    if reasons.is_empty() {
        return None;
    }
    let code = if unresolvable {
        Code::Unresolvable
    } else {
        Code::Unschedulable
    };
    Some(Status {
        code,
        plugin: Plugin::NodeResourcesFit,
        reasons,
    })
}

fn least_requested(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_NODE_SCORE / capacity
}

/// LeastAllocated (NodeResourcesFit's default scoring strategy): free fraction of cpu and
/// memory, weight 1 each, counting the non-zero defaults for requests left unset.
pub fn least_allocated_score(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let Some(d) = &node.node else { return 0 };
    let pairs = [
        (
            node.non_zero_cpu + pod.non_zero_cpu,
            d.allocatable.milli_cpu,
        ),
        (
            node.non_zero_memory + pod.non_zero_memory,
            d.allocatable.memory,
        ),
    ];
    let (mut sum, mut weights) = (0, 0);
    for (req, cap) in pairs {
        if cap == 0 {
            continue;
        }
        sum += least_requested(req, cap);
        weights += 1;
    }
    if weights == 0 {
        0
    } else {
        sum / weights
    }
}

/// NodeResourcesBalancedAllocation: prefer nodes where cpu and memory would be used in
/// equal fractions, from actual requests. `None` for best-effort pods (skipped upstream).
pub fn balanced_allocation_score(pod: &PodInfo, node: &NodeInfo) -> Option<i64> {
    if pod.requests.milli_cpu == 0 && pod.requests.memory == 0 {
        return None;
    }
    let d = node.node.as_ref()?;
    let pairs = [
        (
            node.requested.milli_cpu + pod.requests.milli_cpu,
            d.allocatable.milli_cpu,
        ),
        (
            node.requested.memory + pod.requests.memory,
            d.allocatable.memory,
        ),
    ];
    let fractions: Vec<f64> = pairs
        .iter()
        .filter(|(_, cap)| *cap != 0)
        .map(|(req, cap)| (*req as f64 / *cap as f64).min(1.0))
        .collect();
    let std = if fractions.len() == 2 {
        ((fractions[0] - fractions[1]) / 2.0).abs()
    } else {
        0.0
    };
    Some(((1.0 - std) * MAX_NODE_SCORE as f64) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use std::sync::Arc;

    const GI: i64 = 1 << 30;

    #[test]
    fn fit_reasons() {
        let mut n = info(node("n", 2000, 4 * GI));
        n.add_pod(Arc::new(pod("a").requests("1500m", "1Gi").build()));
        let p = pod("p").requests("1", "1Gi").build();
        let s = fit(&p.requests, &n).unwrap();
        assert_eq!(s.reasons, vec!["Insufficient cpu"]);
        assert_eq!(s.code, Code::Unschedulable);
        let p = pod("p").requests("1", "5Gi").build();
        let s = fit(&p.requests, &n).unwrap();
        assert_eq!(s.reasons, vec!["Insufficient cpu", "Insufficient memory"]);
        assert_eq!(
            s.code,
            Code::Unresolvable,
            "5Gi exceeds the node's whole allocatable"
        );
        assert!(fit(&pod("p").requests("500m", "3Gi").build().requests, &n).is_none());
        // ephemeral storage and extended resources
        let p = pod("p")
            .request("ephemeral-storage", "1Gi")
            .request("example.com/gpu", "1")
            .build();
        let s = fit(&p.requests, &n).unwrap();
        assert_eq!(
            s.reasons,
            vec![
                "Insufficient ephemeral-storage",
                "Insufficient example.com/gpu"
            ]
        );
    }

    #[test]
    fn too_many_pods_even_without_requests() {
        let mut d = node("n", 2000, GI);
        d.allocatable.allowed_pods = 1;
        let mut n = info(d);
        assert!(fit(&pod("p").build().requests, &n).is_none());
        n.add_pod(Arc::new(pod("a").build()));
        assert_eq!(
            fit(&pod("p").build().requests, &n).unwrap().reasons,
            vec!["Too many pods"]
        );
    }

    #[test]
    fn init_containers_and_overhead_count() {
        let n = info(node("n", 2000, 4 * GI));
        let p = pod("p")
            .requests("1", "1Gi")
            .init_requests("3", "1Gi")
            .build();
        assert_eq!(
            fit(&p.requests, &n).unwrap().reasons,
            vec!["Insufficient cpu"]
        );
        let p = pod("p").requests("1800m", "1Gi").overhead("300m").build();
        assert_eq!(
            fit(&p.requests, &n).unwrap().reasons,
            vec!["Insufficient cpu"]
        );
    }

    #[test]
    fn least_allocated_matches_upstream_arithmetic() {
        // Upstream test: node 4000m/10000 bytes, pod 3000m/5000 on an empty node:
        // cpu (4000-3000)*100/4000 = 25, memory (10000-5000)*100/10000 = 50 -> 37.
        let n = info(node("n", 4000, 10000));
        let p = pod("p").requests("3", "5000").build();
        assert_eq!(least_allocated_score(&p, &n), 37);
        // A pod without requests counts 100m and 200Mi.
        let n = info(node("n", 1000, 1000 * 1024 * 1024));
        let p = pod("p").build();
        assert_eq!(least_allocated_score(&p, &n), (90 + 80) / 2);
    }

    #[test]
    fn balanced_allocation() {
        let n = info(node("n", 4000, 10000));
        // cpu 3000/4000 = .75, mem 5000/10000 = .5: std .125 -> 87.
        let p = pod("p").requests("3", "5000").build();
        assert_eq!(balanced_allocation_score(&p, &n), Some(87));
        let p = pod("p").requests("2", "5000").build();
        assert_eq!(balanced_allocation_score(&p, &n), Some(100));
        assert_eq!(balanced_allocation_score(&pod("p").build(), &n), None);
    }
}
