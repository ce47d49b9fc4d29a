//! NodeUnschedulable, NodeName, TaintToleration, NodeAffinity and NodePorts: the filters
//! that look at one node and the pod only, and the two scores that do the same.

use super::default_normalize;
use crate::framework::{Code, Plugin, Status};
use crate::types::{tolerations_tolerate, NodeData, NodeInfo, PodInfo};
use k8s_openapi::api::core::v1::{Taint, Toleration};

pub const ERR_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const ERR_NODE_NAME: &str = "node(s) didn't match the requested node name";
pub const ERR_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const ERR_NODE_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const TAINT_NODE_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// NodeUnschedulable: spec.unschedulable rejects pods that do not tolerate the
/// `node.kubernetes.io/unschedulable:NoSchedule` taint.
pub fn node_unschedulable(pod: &PodInfo, node: &NodeData) -> Option<Status> {
    if !node.unschedulable {
        return None;
    }
    let taint = Taint {
        key: TAINT_NODE_UNSCHEDULABLE.into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    if tolerations_tolerate(&pod.tolerations, &taint) {
        return None;
    }
    Some(Status::new(
        Code::Unresolvable,
        Plugin::NodeUnschedulable,
        ERR_UNSCHEDULABLE,
    ))
}

/// NodeName: a pod naming a node fits only there.
pub fn node_name(pod: &PodInfo, node: &NodeData) -> Option<Status> {
    if pod.node_name.is_empty() || pod.node_name == node.name {
        return None;
    }
    Some(Status::new(
        Code::Unresolvable,
        Plugin::NodeName,
        ERR_NODE_NAME,
    ))
}

fn is_do_not_schedule(t: &Taint) -> bool {
    t.effect == "NoSchedule" || t.effect == "NoExecute"
}

/// TaintToleration filter: the first NoSchedule/NoExecute taint the pod does not tolerate.
pub fn taint_toleration(pod: &PodInfo, node: &NodeData) -> Option<Status> {
    let taint = node
        .taints
        .iter()
        .find(|t| is_do_not_schedule(t) && !tolerations_tolerate(&pod.tolerations, t))?;
    Some(Status::new(
        Code::Unresolvable,
        Plugin::TaintToleration,
        format!(
            "node(s) had untolerated taint {{{}: {}}}",
            taint.key,
            taint.value.as_deref().unwrap_or("")
        ),
    ))
}

/// TaintToleration score: fewer untolerated PreferNoSchedule taints is better. Only
/// tolerations with an empty or PreferNoSchedule effect count.
pub fn taint_toleration_scores(pod: &PodInfo, nodes: &[&NodeInfo]) -> Vec<i64> {
    let prefer: Vec<Toleration> = pod
        .tolerations
        .iter()
        .filter(|t| {
            matches!(
                t.effect.as_deref(),
                None | Some("") | Some("PreferNoSchedule")
            )
        })
        .cloned()
        .collect();
    let mut scores: Vec<i64> = nodes
        .iter()
        .map(|n| {
            n.node.as_ref().map_or(0, |d| {
                d.taints
                    .iter()
                    .filter(|t| t.effect == "PreferNoSchedule" && !tolerations_tolerate(&prefer, t))
                    .count() as i64
            })
        })
        .collect();
    default_normalize(&mut scores, true);
    scores
}

/// NodeAffinity filter: nodeSelector and requiredDuringScheduling node affinity.
pub fn node_affinity(pod: &PodInfo, node: &NodeData) -> Option<Status> {
    if pod.matches_node_selector_and_affinity(node) {
        return None;
    }
    Some(Status::new(
        Code::Unresolvable,
        Plugin::NodeAffinity,
        ERR_NODE_AFFINITY,
    ))
}

/// NodeAffinity score: the sum of the weights of matching preferred terms, normalised.
/// `None` when the pod has no preferred terms (the plugin is skipped).
pub fn node_affinity_scores(pod: &PodInfo, nodes: &[&NodeInfo]) -> Option<Vec<i64>> {
    if pod.preferred_node_terms.is_empty() {
        return None;
    }
    let mut scores: Vec<i64> = nodes
        .iter()
        .map(|n| {
            n.node.as_ref().map_or(0, |d| {
                pod.preferred_node_terms
                    .iter()
                    .filter(|(_, t)| t.matches(&d.name, &d.labels))
                    .map(|(w, _)| *w as i64)
                    .sum()
            })
        })
        .collect();
    default_normalize(&mut scores, false);
    Some(scores)
}

/// NodePorts: a requested host port conflicts with one already used on the node.
pub fn node_ports(pod: &PodInfo, node: &NodeInfo) -> Option<Status> {
    let conflict = pod
        .host_ports
        .iter()
        .any(|want| node.used_ports.iter().any(|used| used.conflicts(want)));
    conflict.then(|| Status::new(Code::Unschedulable, Plugin::NodePorts, ERR_NODE_PORTS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn unschedulable_unless_tolerated() {
        let mut n = node("n1", 4000, 1 << 30);
        n.unschedulable = true;
        let p = pod("p").build();
        let s = node_unschedulable(&p, &n).unwrap();
        assert_eq!(s.reasons, vec![ERR_UNSCHEDULABLE]);
        assert_eq!(s.code, Code::Unresolvable);
        let p = pod("p")
            .toleration(TAINT_NODE_UNSCHEDULABLE, "Exists", "", "NoSchedule")
            .build();
        assert!(node_unschedulable(&p, &n).is_none());
    }

    #[test]
    fn node_name_filter() {
        let n = node("n1", 1, 1);
        assert!(node_name(&pod("p").build(), &n).is_none());
        let mut p = pod("p").build();
        p.node_name = "n2".into();
        assert_eq!(node_name(&p, &n).unwrap().reasons, vec![ERR_NODE_NAME]);
        p.node_name = "n1".into();
        assert!(node_name(&p, &n).is_none());
    }

    #[test]
    fn taints_and_tolerations() {
        let mut n = node("n1", 1, 1);
        n.taints = vec![
            taint("soft", "", "PreferNoSchedule"),
            taint("node-role.kubernetes.io/control-plane", "", "NoSchedule"),
            taint("dedicated", "gpu", "NoExecute"),
        ];
        let s = taint_toleration(&pod("p").build(), &n).unwrap();
        assert_eq!(
            s.reasons,
            vec!["node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }"]
        );
        let p = pod("p")
            .toleration("node-role.kubernetes.io/control-plane", "Exists", "", "")
            .build();
        assert_eq!(
            taint_toleration(&p, &n).unwrap().reasons,
            vec!["node(s) had untolerated taint {dedicated: gpu}"]
        );
        let p = pod("p")
            .toleration("node-role.kubernetes.io/control-plane", "Exists", "", "")
            .toleration("dedicated", "Equal", "cpu", "NoExecute")
            .build();
        assert!(
            taint_toleration(&p, &n).is_some(),
            "value must match with Equal"
        );
        let p = pod("p")
            .toleration("node-role.kubernetes.io/control-plane", "Exists", "", "")
            .toleration("dedicated", "Equal", "gpu", "NoExecute")
            .build();
        assert!(taint_toleration(&p, &n).is_none());
        // An empty key with Exists tolerates everything.
        let p = pod("p").toleration("", "Exists", "", "").build();
        assert!(taint_toleration(&p, &n).is_none());
    }

    #[test]
    fn prefer_no_schedule_only_scores() {
        let mut a = node("a", 1, 1);
        a.taints = vec![
            taint("x", "", "PreferNoSchedule"),
            taint("y", "", "PreferNoSchedule"),
        ];
        let mut b = node("b", 1, 1);
        b.taints = vec![taint("x", "", "PreferNoSchedule")];
        let c = node("c", 1, 1);
        let p = pod("p").build();
        assert!(taint_toleration(&p, &a).is_none());
        let (a, b, c) = (info(a), info(b), info(c));
        assert_eq!(taint_toleration_scores(&p, &[&a, &b, &c]), vec![0, 50, 100]);
        let p = pod("p")
            .toleration("x", "Exists", "", "PreferNoSchedule")
            .build();
        assert_eq!(
            taint_toleration_scores(&p, &[&a, &b, &c]),
            vec![0, 100, 100]
        );
        // A NoSchedule toleration does not count for scoring.
        let p = pod("p").toleration("x", "Exists", "", "NoSchedule").build();
        assert_eq!(taint_toleration_scores(&p, &[&a, &b, &c]), vec![0, 50, 100]);
    }

    #[test]
    fn node_selector_and_required_affinity() {
        let n = node_labels("n1", &[("disk", "ssd"), ("zone", "a")]);
        assert!(node_affinity(&pod("p").build(), &n).is_none());
        let p = pod("p").node_selector("disk", "ssd").build();
        assert!(node_affinity(&p, &n).is_none());
        let p = pod("p").node_selector("disk", "hdd").build();
        assert_eq!(
            node_affinity(&p, &n).unwrap().reasons,
            vec![ERR_NODE_AFFINITY]
        );
        let p = pod("p")
            .required_node_term(&[("zone", "In", &["b"])])
            .build();
        assert!(node_affinity(&p, &n).is_some());
        let p = pod("p")
            .required_node_term(&[("zone", "In", &["b"])])
            .required_node_term(&[("zone", "In", &["a"]), ("disk", "Exists", &[])])
            .build();
        assert!(node_affinity(&p, &n).is_none());
        // nodeSelector and affinity must both hold.
        let p = pod("p")
            .node_selector("disk", "hdd")
            .required_node_term(&[("zone", "In", &["a"])])
            .build();
        assert!(node_affinity(&p, &n).is_some());
    }

    #[test]
    fn preferred_node_affinity_scores() {
        let a = info(node_labels("a", &[("zone", "a")]));
        let b = info(node_labels("b", &[("zone", "b"), ("ssd", "1")]));
        let c = info(node_labels("c", &[]));
        let p = pod("p")
            .preferred_node_term(20, &[("zone", "In", &["a"])])
            .preferred_node_term(80, &[("ssd", "Exists", &[])])
            .build();
        assert_eq!(
            node_affinity_scores(&p, &[&a, &b, &c]).unwrap(),
            vec![25, 100, 0]
        );
        assert!(node_affinity_scores(&pod("p").build(), &[&a]).is_none());
    }

    #[test]
    fn host_port_conflicts() {
        let mut n = info(node("n", 1, 1));
        n.add_pod(std::sync::Arc::new(
            pod("a").host_port(80, "", "TCP").build(),
        ));
        let p = pod("p").host_port(80, "", "TCP").build();
        assert_eq!(node_ports(&p, &n).unwrap().reasons, vec![ERR_NODE_PORTS]);
        assert!(node_ports(&pod("p").host_port(80, "", "UDP").build(), &n).is_none());
        assert!(node_ports(&pod("p").host_port(81, "", "TCP").build(), &n).is_none());
        // 0.0.0.0 on the node conflicts with a specific address.
        assert!(node_ports(&pod("p").host_port(80, "127.0.0.1", "TCP").build(), &n).is_some());
        let mut n = info(node("n", 1, 1));
        n.add_pod(std::sync::Arc::new(
            pod("a").host_port(80, "127.0.0.1", "TCP").build(),
        ));
        assert!(node_ports(&pod("p").host_port(80, "127.0.0.2", "TCP").build(), &n).is_none());
        assert!(node_ports(&pod("p").host_port(80, "127.0.0.1", "TCP").build(), &n).is_some());
        assert!(node_ports(&pod("p").host_port(80, "", "TCP").build(), &n).is_some());
        // Removing the pod frees the port.
        n.remove_pod("a");
        assert!(node_ports(&pod("p").host_port(80, "", "TCP").build(), &n).is_none());
    }
}
