//! Filter results and the failure message, formatted exactly as kube-scheduler does
//! (`framework.FitError.Error()` and the DefaultPreemption post-filter message).

use std::collections::BTreeMap;

/// The plugins, in the default profile's filter order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Plugin {
    NodeUnschedulable,
    NodeName,
    TaintToleration,
    NodeAffinity,
    NodePorts,
    NodeResourcesFit,
    PodTopologySpread,
    InterPodAffinity,
    NodeResourcesBalancedAllocation,
}

impl Plugin {
    pub fn name(self) -> &'static str {
        match self {
            Plugin::NodeUnschedulable => "NodeUnschedulable",
            Plugin::NodeName => "NodeName",
            Plugin::TaintToleration => "TaintToleration",
            Plugin::NodeAffinity => "NodeAffinity",
            Plugin::NodePorts => "NodePorts",
            Plugin::NodeResourcesFit => "NodeResourcesFit",
            Plugin::PodTopologySpread => "PodTopologySpread",
            Plugin::InterPodAffinity => "InterPodAffinity",
            Plugin::NodeResourcesBalancedAllocation => "NodeResourcesBalancedAllocation",
        }
    }

    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of plugins as a bit set (which plugins rejected a pod).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PluginSet(pub u32);

impl PluginSet {
    pub const ALL: PluginSet = PluginSet(u32::MAX);
    pub fn insert(&mut self, p: Plugin) {
        self.0 |= p.bit();
    }
    pub fn intersects(self, other: PluginSet) -> bool {
        self.0 & other.0 != 0
    }
    pub fn of(ps: &[Plugin]) -> PluginSet {
        let mut s = PluginSet::default();
        for p in ps {
            s.insert(*p);
        }
        s
    }
}

/// Why a filter rejected a node. `Unresolvable` (UnschedulableAndUnresolvable upstream)
/// means removing pods from the node would not help, so preemption is not tried there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unschedulable,
    Unresolvable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub plugin: Plugin,
    pub reasons: Vec<String>,
}

impl Status {
    pub fn new(code: Code, plugin: Plugin, reason: impl Into<String>) -> Status {
        Status {
            code,
            plugin,
            reasons: vec![reason.into()],
        }
    }
}

pub const NO_NODES_AVAILABLE: &str = "no nodes available to schedule pods";

/// A pod that fits no node: the first failing filter's status for every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    pub num_all_nodes: usize,
    pub statuses: Vec<Status>,
    /// The pod's spec.preemptionPolicy is Never.
    pub preemption_never: bool,
}

/// `"N reason"` for each distinct reason, sorted as Go's sort.Strings does (bytewise).
fn histogram<'a>(reasons: impl Iterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reasons {
        *counts.entry(r).or_default() += 1;
    }
    let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    parts.join(", ")
}

impl FitError {
    pub fn unschedulable_plugins(&self) -> PluginSet {
        let mut s = PluginSet::default();
        for st in &self.statuses {
            s.insert(st.plugin);
        }
        s
    }

    /// The message kube-scheduler puts in the PodScheduled condition and the
    /// FailedScheduling event: `0/N nodes are available: <histogram>.` followed by what the
    /// DefaultPreemption post-filter reports when preemption cannot help.
    pub fn message(&self) -> String {
        let n = self.num_all_nodes;
        let mut msg = format!("0/{n} nodes are available:");
        let filter = histogram(
            self.statuses
                .iter()
                .flat_map(|s| s.reasons.iter().map(|r| r.as_str())),
        );
        if !filter.is_empty() {
            msg.push_str(&format!(" {filter}."));
        }
        msg.push(' ');
        msg.push_str(&self.preemption_message());
        msg
    }

    /// DefaultPreemption's answer. Nodes rejected as Unschedulable are preemption
    /// candidates; without lower-priority pods to evict (corral does not preempt, so no pod
    /// is ever a victim) each yields "No preemption victims found for incoming pod"; the
    /// others are "Preemption is not helpful for scheduling".
    fn preemption_message(&self) -> String {
        if self.preemption_never {
            return "preemption: not eligible due to preemptionPolicy=Never.".to_string();
        }
        let n = self.num_all_nodes;
        let potential = self
            .statuses
            .iter()
            .filter(|s| s.code == Code::Unschedulable)
            .count();
        let reasons =
            std::iter::repeat_n("No preemption victims found for incoming pod", potential).chain(
                std::iter::repeat_n(
                    "Preemption is not helpful for scheduling",
                    n.saturating_sub(potential),
                ),
            );
        format!(
            "preemption: 0/{n} nodes are available: {}.",
            histogram(reasons)
        )
    }
}

/// Events carry at most 1024 characters of message (kube-scheduler's truncateMessage).
pub fn truncate_event_message(msg: &str) -> String {
    const LIMIT: usize = 1024;
    if msg.len() <= LIMIT {
        return msg.to_string();
    }
    let mut end = LIMIT - 3;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &msg[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(code: Code, plugin: Plugin, reasons: &[&str]) -> Status {
        Status {
            code,
            plugin,
            reasons: reasons.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn single_reason() {
        let e = FitError {
            num_all_nodes: 3,
            statuses: vec![
                st(
                    Code::Unschedulable,
                    Plugin::NodeResourcesFit,
                    &["Insufficient cpu"]
                );
                3
            ],
            preemption_never: false,
        };
        assert_eq!(
            e.message(),
            "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: \
             3 No preemption victims found for incoming pod."
        );
    }

    #[test]
    fn several_reasons_sorted_as_go_strings() {
        let taint = "node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }";
        let aff = "node(s) didn't match Pod's node affinity/selector";
        let e = FitError {
            num_all_nodes: 5,
            statuses: vec![
                st(Code::Unresolvable, Plugin::TaintToleration, &[taint]),
                st(
                    Code::Unschedulable,
                    Plugin::NodeResourcesFit,
                    &["Insufficient memory"],
                ),
                st(
                    Code::Unschedulable,
                    Plugin::NodeResourcesFit,
                    &["Insufficient memory"],
                ),
                st(Code::Unresolvable, Plugin::NodeAffinity, &[aff]),
                st(Code::Unresolvable, Plugin::NodeAffinity, &[aff]),
            ],
            preemption_never: false,
        };
        assert_eq!(
            e.message(),
            "0/5 nodes are available: 1 node(s) had untolerated taint \
             {node-role.kubernetes.io/control-plane: }, 2 Insufficient memory, 2 node(s) didn't \
             match Pod's node affinity/selector. preemption: 0/5 nodes are available: 2 No \
             preemption victims found for incoming pod, 3 Preemption is not helpful for \
             scheduling."
        );
        assert!(e
            .unschedulable_plugins()
            .intersects(PluginSet::of(&[Plugin::NodeAffinity])));
        assert!(!e
            .unschedulable_plugins()
            .intersects(PluginSet::of(&[Plugin::NodePorts])));
    }

    #[test]
    fn multiple_reasons_per_node_and_bytewise_order() {
        // 10 sorts before 2 bytewise, as in Go.
        let mut statuses = vec![
            st(
                Code::Unschedulable,
                Plugin::NodeResourcesFit,
                &["Insufficient cpu", "Insufficient memory"]
            );
            10
        ];
        statuses.extend(vec![
            st(
                Code::Unresolvable,
                Plugin::NodeUnschedulable,
                &["node(s) were unschedulable"]
            );
            2
        ]);
        let e = FitError {
            num_all_nodes: 12,
            statuses,
            preemption_never: false,
        };
        assert_eq!(
            e.message(),
            "0/12 nodes are available: 10 Insufficient cpu, 10 Insufficient memory, 2 node(s) \
             were unschedulable. preemption: 0/12 nodes are available: 10 No preemption victims \
             found for incoming pod, 2 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn preemption_never_and_no_nodes() {
        let e = FitError {
            num_all_nodes: 1,
            statuses: vec![st(
                Code::Unschedulable,
                Plugin::NodeResourcesFit,
                &["Too many pods"],
            )],
            preemption_never: true,
        };
        assert_eq!(
            e.message(),
            "0/1 nodes are available: 1 Too many pods. preemption: not eligible due to \
             preemptionPolicy=Never."
        );
    }

    #[test]
    fn event_messages_are_truncated() {
        let long = "x".repeat(2000);
        let t = truncate_event_message(&long);
        assert_eq!(t.len(), 1024);
        assert!(t.ends_with("..."));
        assert_eq!(truncate_event_message("short"), "short");
    }
}
