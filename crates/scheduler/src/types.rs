//! The scheduler's own view of pods and nodes: everything the plugins need, parsed once
//! from the API objects (requests, ports, affinity terms, tolerations, spread constraints),
//! and the per-node aggregate (`NodeInfo`) of the pods bound or assumed there.

use crate::resources::{self, Resource};
use crate::selectors::{Labels, NodeTerm, Selector};
use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm, Taint, Toleration};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";

/// An inter-pod (anti-)affinity term, with the namespaces it applies to resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityTerm {
    pub namespaces: Vec<String>,
    pub namespace_selector: Option<Selector>,
    pub selector: Selector,
    pub topology_key: String,
}

impl AffinityTerm {
    fn new(owner_namespace: &str, t: &PodAffinityTerm) -> AffinityTerm {
        let mut namespaces = t.namespaces.clone().unwrap_or_default();
        if namespaces.is_empty() && t.namespace_selector.is_none() {
            namespaces.push(owner_namespace.to_string());
        }
        // matchLabelKeys / mismatchLabelKeys are merged by `term_with_label_keys`.
        let selector = Selector::from_label_selector(t.label_selector.as_ref());
        AffinityTerm {
            namespaces,
            namespace_selector: t
                .namespace_selector
                .as_ref()
                .map(|s| Selector::from_label_selector(Some(s))),
            selector,
            topology_key: t.topology_key.clone(),
        }
    }

    /// Whether `pod` (whose namespace has labels `ns_labels`) is selected by this term.
    pub fn matches(&self, pod: &PodInfo, ns_labels: Option<&Labels>) -> bool {
        let ns_ok = self.namespaces.contains(&pod.namespace)
            || match (&self.namespace_selector, ns_labels) {
                (Some(sel), Some(l)) => sel.matches(l),
                (Some(sel), None) => sel.matches(&Labels::new()),
                _ => false,
            };
        ns_ok && self.selector.matches(&pod.labels)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedAffinityTerm {
    pub weight: i32,
    pub term: AffinityTerm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub ip: std::net::IpAddr,
    pub protocol: Protocol,
    pub port: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl HostPort {
    fn unspecified(&self) -> bool {
        self.ip.is_unspecified()
    }
    /// Two host ports conflict on the same protocol and port when either binds all
    /// addresses or both bind the same one.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.protocol == other.protocol
            && self.port == other.port
            && (self.unspecified() || other.unspecified() || self.ip == other.ip)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhenUnsatisfiable {
    DoNotSchedule,
    ScheduleAnyway,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpreadConstraint {
    pub max_skew: i32,
    pub topology_key: String,
    pub when_unsatisfiable: WhenUnsatisfiable,
    pub selector: Selector,
    pub min_domains: i32,
    /// nodeAffinityPolicy: Honor (default) counts only nodes matching the pod's node
    /// affinity/selector.
    pub honor_node_affinity: bool,
    /// nodeTaintsPolicy: Honor counts only nodes whose taints the pod tolerates (default Ignore).
    pub honor_node_taints: bool,
}

/// The PodScheduled condition as last seen, to avoid rewriting an unchanged condition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScheduledCondition {
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: Option<String>,
}

/// A pod as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub resource_version: String,
    pub labels: Labels,
    pub node_name: String,
    pub scheduler_name: String,
    pub priority: i32,
    pub preemption_never: bool,
    pub terminating: bool,
    pub terminal: bool,
    /// Requests used by NodeResourcesFit (filter) and BalancedAllocation.
    pub requests: Resource,
    /// cpu/memory requests with the non-zero defaults, used by LeastAllocated.
    pub non_zero_cpu: i64,
    pub non_zero_memory: i64,
    pub host_ports: Vec<HostPort>,
    pub node_selector: Labels,
    /// `None` when the pod has no required node affinity.
    pub required_node_terms: Option<Vec<NodeTerm>>,
    pub preferred_node_terms: Vec<(i32, NodeTerm)>,
    pub tolerations: Vec<Toleration>,
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<WeightedAffinityTerm>,
    pub preferred_anti_affinity: Vec<WeightedAffinityTerm>,
    pub spread: Vec<SpreadConstraint>,
    pub scheduled_condition: Option<ScheduledCondition>,
    /// A hash of what can change scheduling (spec, labels); status changes do not alter it.
    pub spec_hash: u64,
}

fn toleration_list(pod: &Pod) -> Vec<Toleration> {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default()
}

fn affinity_terms(
    ns: &str,
    labels: &Labels,
    terms: Option<&Vec<PodAffinityTerm>>,
) -> Vec<AffinityTerm> {
    terms
        .into_iter()
        .flatten()
        .map(|t| term_with_label_keys(ns, labels, t))
        .collect()
}

fn term_with_label_keys(ns: &str, labels: &Labels, t: &PodAffinityTerm) -> AffinityTerm {
    let mut term = AffinityTerm::new(ns, t);
    if t.label_selector.is_some() {
        for k in t.match_label_keys.iter().flatten() {
            if let Some(v) = labels.get(k) {
                term.selector.and_equals(k, v);
            }
        }
        for k in t.mismatch_label_keys.iter().flatten() {
            if let Some(v) = labels.get(k) {
                if let Selector::All(reqs) = &mut term.selector {
                    reqs.push(crate::selectors::Requirement {
                        key: k.clone(),
                        op: crate::selectors::Op::NotIn(vec![v.clone()]),
                    });
                }
            }
        }
    }
    term
}

impl PodInfo {
    pub fn from_pod(pod: &Pod) -> PodInfo {
        let meta = &pod.metadata;
        let namespace = meta.namespace.clone().unwrap_or_default();
        let labels: Labels = meta.labels.clone().unwrap_or_default();
        let default_spec = Default::default();
        let spec = pod.spec.as_ref().unwrap_or(&default_spec);
        let requests = resources::pod_requests(spec, false);
        let non_zero = resources::pod_requests(spec, true);
        let mut host_ports = Vec::new();
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        for c in spec.containers.iter().chain(sidecars) {
            for p in c.ports.iter().flatten() {
                let Some(hp) = p.host_port.filter(|p| *p > 0) else {
                    continue;
                };
                let protocol = match p.protocol.as_deref() {
                    Some("UDP") => Protocol::Udp,
                    Some("SCTP") => Protocol::Sctp,
                    _ => Protocol::Tcp,
                };
                let ip = p
                    .host_ip
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
                host_ports.push(HostPort {
                    ip,
                    protocol,
                    port: hp,
                });
            }
        }
        let aff = spec.affinity.as_ref();
        let node_aff = aff.and_then(|a| a.node_affinity.as_ref());
        let required_node_terms = node_aff
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|r| {
                r.node_selector_terms
                    .iter()
                    .map(NodeTerm::from_term)
                    .collect()
            });
        let preferred_node_terms = node_aff
            .and_then(|n| {
                n.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .filter(|t| t.weight != 0)
            .map(|t| (t.weight, NodeTerm::from_term(&t.preference)))
            .filter(|(_, t)| !t.is_empty())
            .collect();
        let pa = aff.and_then(|a| a.pod_affinity.as_ref());
        let paa = aff.and_then(|a| a.pod_anti_affinity.as_ref());
        let weighted = |ts: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
            ts.into_iter()
                .flatten()
                .map(|w| WeightedAffinityTerm {
                    weight: w.weight,
                    term: term_with_label_keys(&namespace, &labels, &w.pod_affinity_term),
                })
                .collect::<Vec<_>>()
        };
        let spread = spec
            .topology_spread_constraints
            .iter()
            .flatten()
            .map(|c| {
                let mut selector = Selector::from_label_selector(c.label_selector.as_ref());
                if c.label_selector.is_some() {
                    for k in c.match_label_keys.iter().flatten() {
                        if let Some(v) = labels.get(k) {
                            selector.and_equals(k, v);
                        }
                    }
                }
                SpreadConstraint {
                    max_skew: c.max_skew,
                    topology_key: c.topology_key.clone(),
                    when_unsatisfiable: if c.when_unsatisfiable == "ScheduleAnyway" {
                        WhenUnsatisfiable::ScheduleAnyway
                    } else {
                        WhenUnsatisfiable::DoNotSchedule
                    },
                    selector,
                    min_domains: c.min_domains.unwrap_or(1).max(1),
                    honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                    honor_node_taints: c.node_taints_policy.as_deref() == Some("Honor"),
                }
            })
            .collect();
        let status = pod.status.as_ref();
        let scheduled_condition = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
            .map(|c| ScheduledCondition {
                status: c.status.clone(),
                reason: c.reason.clone().unwrap_or_default(),
                message: c.message.clone().unwrap_or_default(),
                last_transition_time: c.last_transition_time.as_ref().map(|t| t.0.to_string()),
            });
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
        let mut h = DefaultHasher::new();
        serde_json::to_string(spec).unwrap_or_default().hash(&mut h);
        labels.hash(&mut h);
        PodInfo {
            uid: meta.uid.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            node_name: spec.node_name.clone().unwrap_or_default(),
            scheduler_name: spec
                .scheduler_name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_SCHEDULER_NAME.to_string()),
            priority: spec.priority.unwrap_or(0),
            preemption_never: spec.preemption_policy.as_deref() == Some("Never"),
            terminating: meta.deletion_timestamp.is_some(),
            terminal: phase == "Succeeded" || phase == "Failed",
            non_zero_cpu: non_zero.milli_cpu,
            non_zero_memory: non_zero.memory,
            requests,
            host_ports,
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            required_node_terms,
            preferred_node_terms,
            tolerations: toleration_list(pod),
            required_affinity: affinity_terms(
                &namespace,
                &labels,
                pa.and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                }),
            ),
            required_anti_affinity: affinity_terms(
                &namespace,
                &labels,
                paa.and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                }),
            ),
            preferred_affinity: weighted(pa.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_anti_affinity: weighted(paa.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            spread,
            scheduled_condition,
            spec_hash: h.finish(),
            namespace,
            labels,
        }
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn has_affinity(&self) -> bool {
        !self.required_affinity.is_empty()
            || !self.required_anti_affinity.is_empty()
            || !self.preferred_affinity.is_empty()
            || !self.preferred_anti_affinity.is_empty()
    }

    /// The pod's nodeSelector and required node affinity (NodeAffinity's filter).
    pub fn matches_node_selector_and_affinity(&self, node: &NodeData) -> bool {
        if !self
            .node_selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
        {
            return false;
        }
        match &self.required_node_terms {
            Some(terms) => crate::selectors::any_term_matches(terms, &node.name, &node.labels),
            None => true,
        }
    }
}

/// `Toleration.ToleratesTaint`: effect and key must match when set; operator Exists
/// matches any value, Equal (or empty) needs the same value.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != taint.effect {
            return false;
        }
    }
    if let Some(k) = t.key.as_deref().filter(|k| !k.is_empty()) {
        if k != taint.key {
            return false;
        }
    }
    match t.operator.as_deref().unwrap_or("") {
        "" | "Equal" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        "Exists" => true,
        _ => false,
    }
}

pub fn tolerations_tolerate(ts: &[Toleration], taint: &Taint) -> bool {
    ts.iter().any(|t| tolerates(t, taint))
}

/// The node fields scheduling depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeData {
    pub name: String,
    pub labels: Labels,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Resource,
}

impl NodeData {
    pub fn from_node(node: &Node) -> NodeData {
        let spec = node.spec.as_ref();
        NodeData {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            allocatable: resources::node_allocatable(node),
        }
    }
}

/// A node and the pods bound or assumed on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    /// `None` while pods reference a node the watch has not delivered (or was deleted).
    pub node: Option<Arc<NodeData>>,
    pub pods: Vec<Arc<PodInfo>>,
    pub requested: Resource,
    pub non_zero_cpu: i64,
    pub non_zero_memory: i64,
    pub used_ports: Vec<HostPort>,
    pub pods_with_affinity: usize,
    pub pods_with_required_anti_affinity: usize,
}

impl NodeInfo {
    pub fn new(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            node: None,
            pods: Vec::new(),
            requested: Resource::default(),
            non_zero_cpu: 0,
            non_zero_memory: 0,
            used_ports: Vec::new(),
            pods_with_affinity: 0,
            pods_with_required_anti_affinity: 0,
        }
    }

    pub fn with_node(node: NodeData) -> NodeInfo {
        let mut ni = NodeInfo::new(&node.name);
        ni.node = Some(Arc::new(node));
        ni
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.non_zero_cpu += pod.non_zero_cpu;
        self.non_zero_memory += pod.non_zero_memory;
        self.used_ports.extend(pod.host_ports.iter().copied());
        if pod.has_affinity() {
            self.pods_with_affinity += 1;
        }
        if !pod.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity += 1;
        }
        self.pods.push(pod);
    }

    /// Remove the pod with this uid; returns it if it was there.
    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let idx = self.pods.iter().position(|p| p.uid == uid)?;
        let pod = self.pods.swap_remove(idx);
        self.requested.sub(&pod.requests);
        self.non_zero_cpu -= pod.non_zero_cpu;
        self.non_zero_memory -= pod.non_zero_memory;
        for hp in &pod.host_ports {
            if let Some(i) = self.used_ports.iter().position(|p| p == hp) {
                self.used_ports.swap_remove(i);
            }
        }
        if pod.has_affinity() {
            self.pods_with_affinity -= 1;
        }
        if !pod.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity -= 1;
        }
        Some(pod)
    }

    pub fn labels(&self) -> Option<&Labels> {
        self.node.as_ref().map(|n| &n.labels)
    }
}
