//! One scheduling decision, without I/O: pre-filter, filter the nodes (a rotating sample
//! of them, as kube-scheduler's percentageOfNodesToScore), score the feasible ones with the
//! profile's weighted plugins and pick the best (ties broken at random). Failure yields a
//! `FitError` carrying each node's first failing filter.

use crate::cache::Cache;
use crate::config::ProfileKind;
use crate::framework::{FitError, Status};
use crate::plugins::{basic, interpod, noderesources, spread};
use crate::types::{NodeInfo, PodInfo};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub node: String,
    pub evaluated: usize,
    pub feasible: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    /// The cluster has no nodes at all.
    NoNodes,
    Unschedulable(FitError),
}

const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
const MIN_FEASIBLE_NODES_PERCENTAGE: usize = 5;

/// kube-scheduler's numFeasibleNodesToFind: all nodes below 100; otherwise a percentage
/// (adaptive when 0: 50% minus 1% per 125 nodes, at least 5%), at least 100 nodes.
pub fn num_feasible_nodes_to_find(percentage: u32, all: usize) -> usize {
    if all < MIN_FEASIBLE_NODES_TO_FIND || percentage >= 100 {
        return all;
    }
    let mut pct = percentage as usize;
    if pct == 0 {
        pct = 50usize
            .saturating_sub(all / 125)
            .max(MIN_FEASIBLE_NODES_PERCENTAGE);
    }
    (all * pct / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// The per-pod pre-computed state of the filters that need the whole cluster.
struct Cycle<'a> {
    pod: &'a PodInfo,
    cache: &'a Cache,
    interpod: Option<interpod::FilterState>,
    spread: Option<spread::FilterState>,
}

impl<'a> Cycle<'a> {
    fn new(pod: &'a PodInfo, cache: &'a Cache) -> Cycle<'a> {
        Cycle {
            pod,
            cache,
            interpod: interpod::prefilter(pod, cache),
            spread: spread::prefilter(pod, cache),
        }
    }

    /// The filters in the default profile's order; the first failure wins, as upstream.
    fn filter(&self, ni: &NodeInfo) -> Option<Status> {
        let pod = self.pod;
        let node = ni.node.as_ref()?;
        basic::node_unschedulable(pod, node)
            .or_else(|| basic::node_name(pod, node))
            .or_else(|| basic::taint_toleration(pod, node))
            .or_else(|| basic::node_affinity(pod, node))
            .or_else(|| basic::node_ports(pod, ni))
            .or_else(|| noderesources::fit(&pod.requests, ni))
            .or_else(|| {
                self.spread
                    .as_ref()
                    .and_then(|s| spread::filter(pod, s, node))
            })
            .or_else(|| {
                self.interpod
                    .as_ref()
                    .and_then(|s| interpod::filter(pod, s, node, self.cache))
            })
    }
}

/// State kept across decisions: where the next node sample starts, the round-robin
/// position and the tie-breaking random generator.
#[derive(Debug, Clone)]
pub struct Algorithm {
    next_start: usize,
    rr_next: usize,
    rng: u64,
}

impl Default for Algorithm {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Algorithm::with_seed(seed)
    }
}

impl Algorithm {
    pub fn with_seed(seed: u64) -> Algorithm {
        Algorithm {
            next_start: 0,
            rr_next: 0,
            rng: seed | 1,
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn schedule(
        &mut self,
        pod: &PodInfo,
        cache: &Cache,
        kind: ProfileKind,
        percentage: u32,
    ) -> Result<Decision, ScheduleError> {
        let n = cache.num_nodes();
        if n == 0 {
            return Err(ScheduleError::NoNodes);
        }
        let cycle = Cycle::new(pod, cache);
        match kind {
            ProfileKind::RoundRobin => self.round_robin(&cycle, n),
            ProfileKind::LeastLoaded => {
                let (feasible, statuses) = self.find_feasible(&cycle, n, n);
                self.pick(&cycle, feasible, statuses, n, |_, c, f| {
                    least_loaded_totals(c, f)
                })
            }
            ProfileKind::Default => {
                let want = num_feasible_nodes_to_find(percentage, n);
                let (feasible, statuses) = self.find_feasible(&cycle, n, want);
                self.pick(&cycle, feasible, statuses, n, default_totals)
            }
        }
    }

    /// Filter nodes from the rotating start until `want` feasible ones are found.
    fn find_feasible<'c>(
        &mut self,
        cycle: &Cycle<'c>,
        n: usize,
        want: usize,
    ) -> (Vec<&'c NodeInfo>, Vec<Status>) {
        let mut feasible = Vec::new();
        let mut statuses = Vec::new();
        let mut processed = 0;
        while processed < n && feasible.len() < want {
            let ni = cycle.cache.node_at((self.next_start + processed) % n);
            processed += 1;
            match cycle.filter(ni) {
                None => feasible.push(ni),
                Some(s) => statuses.push(s),
            }
        }
        self.next_start = (self.next_start + processed) % n;
        (feasible, statuses)
    }

    fn pick<'c>(
        &mut self,
        cycle: &Cycle<'c>,
        feasible: Vec<&'c NodeInfo>,
        statuses: Vec<Status>,
        n: usize,
        totals: impl Fn(&PodInfo, &Cycle<'c>, &[&'c NodeInfo]) -> Vec<i64>,
    ) -> Result<Decision, ScheduleError> {
        let evaluated = feasible.len() + statuses.len();
        if feasible.is_empty() {
            return Err(ScheduleError::Unschedulable(FitError {
                num_all_nodes: n,
                statuses,
                preemption_never: cycle.pod.preemption_never,
            }));
        }
        let idx = if feasible.len() == 1 {
            0
        } else {
            let scores = totals(cycle.pod, cycle, &feasible);
            self.select_host(&scores)
        };
        Ok(Decision {
            node: feasible[idx].name.clone(),
            evaluated,
            feasible: feasible.len(),
        })
    }

    /// The highest score; among equal ones each is picked with equal probability
    /// (reservoir sampling, as kube-scheduler's selectHost).
    fn select_host(&mut self, scores: &[i64]) -> usize {
        let mut best = 0;
        let mut ties = 1u64;
        for (i, s) in scores.iter().enumerate().skip(1) {
            if *s > scores[best] {
                best = i;
                ties = 1;
            } else if *s == scores[best] {
                ties += 1;
                if self.random().is_multiple_of(ties) {
                    best = i;
                }
            }
        }
        best
    }

    fn round_robin(&mut self, cycle: &Cycle<'_>, n: usize) -> Result<Decision, ScheduleError> {
        let mut statuses = Vec::new();
        for k in 0..n {
            let i = (self.rr_next + k) % n;
            let ni = cycle.cache.node_at(i);
            match cycle.filter(ni) {
                None => {
                    self.rr_next = (i + 1) % n;
                    return Ok(Decision {
                        node: ni.name.clone(),
                        evaluated: k + 1,
                        feasible: 1,
                    });
                }
                Some(s) => statuses.push(s),
            }
        }
        Err(ScheduleError::Unschedulable(FitError {
            num_all_nodes: n,
            statuses,
            preemption_never: cycle.pod.preemption_never,
        }))
    }
}

/// The default profile's weighted sum: TaintToleration 3, NodeAffinity 2,
/// NodeResourcesFit 1, PodTopologySpread 2, InterPodAffinity 2, BalancedAllocation 1.
fn default_totals(pod: &PodInfo, cycle: &Cycle<'_>, feasible: &[&NodeInfo]) -> Vec<i64> {
    let mut total = vec![0i64; feasible.len()];
    let mut add = |scores: Option<Vec<i64>>, weight: i64| {
        if let Some(s) = scores {
            for (t, s) in total.iter_mut().zip(s) {
                *t += s * weight;
            }
        }
    };
    add(Some(basic::taint_toleration_scores(pod, feasible)), 3);
    add(basic::node_affinity_scores(pod, feasible), 2);
    add(
        Some(
            feasible
                .iter()
                .map(|n| noderesources::least_allocated_score(pod, n))
                .collect(),
        ),
        1,
    );
    add(spread::scores(pod, cycle.cache, feasible), 2);
    add(interpod::scores(pod, cycle.cache, feasible), 2);
    let balanced: Option<Vec<i64>> = feasible
        .iter()
        .map(|n| noderesources::balanced_allocation_score(pod, n))
        .collect();
    add(balanced, 1);
    total
}

/// The least-loaded profile: LeastAllocated only, over every feasible node, then fewer pods.
fn least_loaded_totals(cycle: &Cycle<'_>, feasible: &[&NodeInfo]) -> Vec<i64> {
    feasible
        .iter()
        .map(|n| {
            noderesources::least_allocated_score(cycle.pod, n) * 1_000_000 - n.pods.len() as i64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::Code;
    use crate::testutil::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    const GI: i64 = 1 << 30;

    fn schedule(c: &Cache, p: &PodInfo) -> Result<Decision, ScheduleError> {
        Algorithm::with_seed(7).schedule(p, c, ProfileKind::Default, 0)
    }

    fn msg(r: Result<Decision, ScheduleError>) -> String {
        match r {
            Err(ScheduleError::Unschedulable(e)) => e.message(),
            other => panic!("expected a fit error, got {other:?}"),
        }
    }

    #[test]
    fn feasible_nodes_to_find() {
        assert_eq!(num_feasible_nodes_to_find(0, 50), 50);
        assert_eq!(num_feasible_nodes_to_find(0, 5000), 500); // 50 - 40 = 10%
        assert_eq!(num_feasible_nodes_to_find(0, 100), 100);
        assert_eq!(num_feasible_nodes_to_find(0, 10000), 500); // floor 5%
        assert_eq!(num_feasible_nodes_to_find(1, 1000), 100); // at least 100
        assert_eq!(num_feasible_nodes_to_find(100, 5000), 5000);
    }

    #[test]
    fn picks_the_node_with_room_and_explains_failures() {
        let mut c = Cache::new();
        c.set_node(node("small", 1000, 4 * GI));
        c.set_node(node("big", 8000, 4 * GI));
        let mut cp = node("cp", 8000, 4 * GI);
        cp.taints = vec![taint(
            "node-role.kubernetes.io/control-plane",
            "",
            "NoSchedule",
        )];
        c.set_node(cp);
        let p = pod("p").requests("2", "1Gi").build();
        assert_eq!(schedule(&c, &p).unwrap().node, "big");
        let p = pod("p").requests("20", "1Gi").build();
        assert_eq!(
            msg(schedule(&c, &p)),
            "0/3 nodes are available: 1 node(s) had untolerated taint \
             {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu. preemption: 0/3 \
             nodes are available: 3 Preemption is not helpful for scheduling."
        );
        // The first failing filter per node decides its reason.
        let p = pod("p")
            .requests("5", "1Gi")
            .node_selector("x", "y")
            .build();
        assert_eq!(
            msg(schedule(&c, &p)),
            "0/3 nodes are available: 1 node(s) had untolerated taint \
             {node-role.kubernetes.io/control-plane: }, 2 node(s) didn't match Pod's node \
             affinity/selector. preemption: 0/3 nodes are available: 3 Preemption is not \
             helpful for scheduling."
        );
        let mut c2 = Cache::new();
        c2.set_node(node("a", 1000, GI));
        c2.add_or_update_bound(Arc::new(pod("x").requests("800m", "0").on("a").build()));
        assert_eq!(
            msg(schedule(&c2, &pod("p").requests("500m", "0").build())),
            "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: \
             1 No preemption victims found for incoming pod."
        );
        assert_eq!(schedule(&Cache::new(), &p), Err(ScheduleError::NoNodes));
        let p = pod("p").requests("500m", "0").preemption_never().build();
        assert_eq!(
            msg(schedule(&c2, &p)),
            "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to \
             preemptionPolicy=Never."
        );
    }

    #[test]
    fn spreads_by_least_allocated_and_counts_assumed_pods() {
        let mut c = Cache::new();
        for i in 0..4 {
            c.set_node(node(&format!("n{i}"), 4000, 16 * GI));
        }
        let mut algo = Algorithm::with_seed(1);
        let mut per_node: HashMap<String, usize> = HashMap::new();
        for i in 0..16 {
            let p = Arc::new(pod(&format!("p{i}")).requests("1", "1Gi").build());
            let d = algo.schedule(&p, &c, ProfileKind::Default, 0).unwrap();
            c.assume(p, &d.node);
            *per_node.entry(d.node).or_default() += 1;
        }
        // Each node has exactly 4 cpu: assumed pods must be counted or nodes overfill.
        assert_eq!(per_node.len(), 4);
        assert!(per_node.values().all(|n| *n == 4), "{per_node:?}");
        let p = pod("extra").requests("1", "1Gi").build();
        assert!(msg(algo.schedule(&p, &c, ProfileKind::Default, 0))
            .starts_with("0/4 nodes are available: 4 Insufficient cpu."));
    }

    #[test]
    fn anti_affinity_puts_one_per_node() {
        let mut c = Cache::new();
        for i in 0..3 {
            c.set_node(node_labels(
                &format!("n{i}"),
                &[("kubernetes.io/hostname", &format!("n{i}"))],
            ));
        }
        let mut algo = Algorithm::with_seed(3);
        let mut used = Vec::new();
        for i in 0..3 {
            let p = Arc::new(
                pod(&format!("w{i}"))
                    .label("app", "w")
                    .anti_affinity("app", "w", "kubernetes.io/hostname")
                    .build(),
            );
            let d = algo.schedule(&p, &c, ProfileKind::Default, 0).unwrap();
            c.assume(p, &d.node);
            used.push(d.node);
        }
        used.sort();
        assert_eq!(used, vec!["n0", "n1", "n2"]);
        let p = pod("w3")
            .label("app", "w")
            .anti_affinity("app", "w", "kubernetes.io/hostname")
            .build();
        assert_eq!(
            msg(algo.schedule(&p, &c, ProfileKind::Default, 0)),
            "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. preemption: \
             0/3 nodes are available: 3 No preemption victims found for incoming pod."
        );
    }

    #[test]
    fn spread_constraint_balances_zones() {
        let mut c = Cache::new();
        for (n, z) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
            c.set_node(node_labels(n, &[("zone", z)]));
        }
        let mut algo = Algorithm::with_seed(5);
        let mut zones: HashMap<String, usize> = HashMap::new();
        for i in 0..6 {
            let p = Arc::new(
                pod(&format!("w{i}"))
                    .label("app", "w")
                    .spread(1, "zone", "DoNotSchedule", "app", "w")
                    .build(),
            );
            let d = algo.schedule(&p, &c, ProfileKind::Default, 0).unwrap();
            let z = if d.node.starts_with('a') { "a" } else { "b" };
            *zones.entry(z.into()).or_default() += 1;
            c.assume(p, &d.node);
        }
        assert_eq!(zones["a"], 3);
        assert_eq!(zones["b"], 3);
    }

    #[test]
    fn preferred_affinity_and_taints_steer_the_choice() {
        let mut c = Cache::new();
        c.set_node(node_labels("plain", &[]));
        c.set_node(node_labels("ssd", &[("disk", "ssd")]));
        let p = pod("p")
            .preferred_node_term(50, &[("disk", "In", &["ssd"])])
            .build();
        for seed in 0..10 {
            let d = Algorithm::with_seed(seed)
                .schedule(&p, &c, ProfileKind::Default, 0)
                .unwrap();
            assert_eq!(d.node, "ssd");
        }
        let mut soft = node_labels("soft", &[]);
        soft.taints = vec![taint("maint", "", "PreferNoSchedule")];
        let mut c = Cache::new();
        c.set_node(soft);
        c.set_node(node_labels("plain", &[]));
        for seed in 0..10 {
            let d = Algorithm::with_seed(seed)
                .schedule(&pod("p").build(), &c, ProfileKind::Default, 0)
                .unwrap();
            assert_eq!(d.node, "plain");
        }
    }

    #[test]
    fn round_robin_rotates_over_feasible_nodes() {
        let mut c = Cache::new();
        for n in ["a", "b", "c", "d"] {
            c.set_node(node_labels(
                n,
                &[("ok", if n == "c" { "no" } else { "yes" })],
            ));
        }
        let mut algo = Algorithm::with_seed(1);
        let picks: Vec<String> = (0..6)
            .map(|i| {
                let p = pod(&format!("p{i}")).node_selector("ok", "yes").build();
                algo.schedule(&p, &c, ProfileKind::RoundRobin, 0)
                    .unwrap()
                    .node
            })
            .collect();
        assert_eq!(picks, vec!["a", "b", "d", "a", "b", "d"]);
        let p = pod("p").node_selector("ok", "never").build();
        let e = algo
            .schedule(&p, &c, ProfileKind::RoundRobin, 0)
            .unwrap_err();
        match e {
            ScheduleError::Unschedulable(f) => {
                assert_eq!(f.statuses.len(), 4);
                assert!(f.statuses.iter().all(|s| s.code == Code::Unresolvable));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn least_loaded_picks_the_emptiest_node() {
        let mut c = Cache::new();
        for n in ["a", "b", "c"] {
            c.set_node(node(n, 4000, 16 * GI));
        }
        c.add_or_update_bound(Arc::new(pod("x").requests("3", "1Gi").on("a").build()));
        c.add_or_update_bound(Arc::new(pod("y").requests("1", "1Gi").on("b").build()));
        let d = Algorithm::with_seed(1)
            .schedule(
                &pod("p").requests("1", "1Gi").build(),
                &c,
                ProfileKind::LeastLoaded,
                0,
            )
            .unwrap();
        assert_eq!(d.node, "c");
    }

    #[test]
    fn sampling_stops_early_on_big_clusters() {
        let mut c = Cache::new();
        for i in 0..1000 {
            c.set_node(node(&format!("n{i}"), 4000, 16 * GI));
        }
        let mut algo = Algorithm::with_seed(1);
        let d = algo
            .schedule(&pod("p").build(), &c, ProfileKind::Default, 0)
            .unwrap();
        // 50 - 1000/125 = 42%.
        assert_eq!((d.evaluated, d.feasible), (420, 420));
        let d2 = algo
            .schedule(&pod("q").build(), &c, ProfileKind::Default, 0)
            .unwrap();
        assert_eq!(
            d2.evaluated, 420,
            "the next sample starts where the last one stopped"
        );
    }
}
