//! Facts about nodes the DaemonSet and node lifecycle controllers share: node selectors
//! and required node affinity, taints against tolerations, the Ready condition, and the
//! tolerations Kubernetes gives every DaemonSet pod.

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Taint, Toleration,
};
use std::collections::BTreeMap;

pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Kubernetes' ToleratesTaint.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            key == taint.key
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// A node selector term: every expression on labels and every field (metadata.name)
/// matches. An empty term matches nothing, as in Kubernetes.
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let v = (r.key == "metadata.name").then(|| node.metadata.name.as_deref().unwrap_or(""));
            requirement_matches(r, v)
        })
}

/// nodeSelector and required node affinity both hold.
pub fn fits_affinity(spec: &PodSpec, node: &Node) -> bool {
    let labels: BTreeMap<String, String> = node.metadata.labels.clone().unwrap_or_default();
    if let Some(sel) = &spec.node_selector {
        if sel.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        Some(r) => r.node_selector_terms.iter().any(|t| term_matches(t, node)),
        None => true,
    }
}

pub fn taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
}

/// The node's Ready condition status ("True", "False", "Unknown"), if it has one.
pub fn ready_status(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    }
}

/// Kubernetes' AddOrUpdateDaemonPodTolerations: DaemonSet pods stay on nodes that are
/// not ready, unreachable, under pressure or cordoned.
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let mut add = vec![
        toleration(NOT_READY, "NoExecute"),
        toleration(UNREACHABLE, "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration(UNSCHEDULABLE, "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        add.push(toleration(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    let list = spec.tolerations.get_or_insert_with(Vec::new);
    for t in add {
        // Replace one with the same key and effect (AddOrUpdateTolerationInPod).
        if let Some(old) = list.iter_mut().find(|o| {
            o.key == t.key && o.effect == t.effect && o.operator == t.operator && o.value == t.value
        }) {
            *old = t;
        } else {
            list.push(t);
        }
    }
}

/// The node a pod is on, or for an unscheduled DaemonSet pod the node its required
/// affinity names (Kubernetes' GetTargetNodeName).
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    for t in terms {
        for f in t.match_fields.iter().flatten() {
            if f.key == "metadata.name" && f.operator == "In" {
                if let Some(v) = f.values.as_ref().filter(|v| v.len() == 1) {
                    return Some(v[0].clone());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: Some(value.into()),
            effect: effect.into(),
            time_added: None,
        }
    }

    #[test]
    fn tolerations_match_like_kubernetes() {
        let t = taint("dedicated", "gpu", "NoSchedule");
        let eq = Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("gpu".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        };
        assert!(tolerates(&eq, &t));
        assert!(!tolerates(
            &Toleration {
                value: Some("cpu".into()),
                ..eq.clone()
            },
            &t
        ));
        assert!(!tolerates(
            &Toleration {
                effect: Some("NoExecute".into()),
                ..eq.clone()
            },
            &t
        ));
        let exists_all = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&exists_all, &t));
        let exists_key = Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&exists_key, &t));
        assert!(!tolerates(&exists_key, &taint("other", "", "NoSchedule")));
        let mut spec = PodSpec::default();
        add_daemon_tolerations(&mut spec);
        add_daemon_tolerations(&mut spec);
        let tols = spec.tolerations.unwrap();
        assert_eq!(tols.len(), 6);
        assert!(tolerated(&tols, &taint(UNREACHABLE, "", "NoExecute")));
        assert!(tolerated(&tols, &taint(UNSCHEDULABLE, "", "NoSchedule")));
        assert!(!tolerated(&tols, &taint("dedicated", "gpu", "NoSchedule")));
    }

    #[test]
    fn affinity_and_selectors() {
        let mut node = Node::default();
        node.metadata.name = Some("n1".into());
        node.metadata.labels = Some(
            [
                ("disk".to_string(), "ssd".to_string()),
                ("cores".to_string(), "8".to_string()),
            ]
            .into(),
        );
        let mut spec = PodSpec::default();
        assert!(fits_affinity(&spec, &node));
        spec.node_selector = Some([("disk".to_string(), "hdd".to_string())].into());
        assert!(!fits_affinity(&spec, &node));
        spec.node_selector = Some([("disk".to_string(), "ssd".to_string())].into());
        assert!(fits_affinity(&spec, &node));
        let req = |key: &str, op: &str, vals: &[&str]| NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(vals.iter().map(|s| s.to_string()).collect()),
        };
        let term = NodeSelectorTerm {
            match_expressions: Some(vec![req("cores", "Gt", &["4"])]),
            match_fields: Some(vec![req("metadata.name", "In", &["n1"])]),
        };
        assert!(term_matches(&term, &node));
        let term2 = NodeSelectorTerm {
            match_expressions: Some(vec![req("cores", "Lt", &["4"])]),
            match_fields: None,
        };
        assert!(!term_matches(&term2, &node));
        assert!(!term_matches(&NodeSelectorTerm::default(), &node));
    }
}
