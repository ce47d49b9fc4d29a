//! The scheduler's cache of the cluster: nodes with the pods bound to them, plus pods the
//! scheduler has *assumed* onto a node (bind sent, not yet seen bound through the watch), so
//! that many pods can be scheduled per second without waiting for each watch event. Rebuilt
//! entirely from list + watch; assumptions are confirmed by the watch or forgotten when the
//! bind fails. Namespaces' labels are kept for inter-pod affinity namespace selectors.

use crate::selectors::Labels;
use crate::types::{NodeData, NodeInfo, PodInfo};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Debug, Clone)]
struct PodState {
    pod: Arc<PodInfo>,
    node: String,
    assumed: bool,
    /// The bind request finished successfully (only meaningful while assumed).
    bound: bool,
}

/// What changed, for deciding which unschedulable pods may now fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    NodeAdded,
    NodeUpdated,
    AssignedPodAdded,
    AssignedPodDeleted,
    NamespaceChanged,
}

#[derive(Debug, Default)]
pub struct Cache {
    nodes: HashMap<String, NodeInfo>,
    /// Names of nodes that have a Node object, in a stable order for rotating iteration.
    order: Vec<String>,
    index: HashMap<String, usize>,
    pods: HashMap<String, PodState>,
    namespaces: HashMap<String, Labels>,
    /// Pods (bound or assumed) with any affinity term / with required anti-affinity, so
    /// that pods without affinity skip the inter-pod affinity walk over all nodes.
    with_affinity: usize,
    with_required_anti_affinity: usize,
}

impl Cache {
    pub fn new() -> Cache {
        Cache::default()
    }

    pub fn num_nodes(&self) -> usize {
        self.order.len()
    }

    pub fn num_pods(&self) -> usize {
        self.pods.len()
    }

    /// The i-th node (with a Node object) in iteration order.
    pub fn node_at(&self, i: usize) -> &NodeInfo {
        &self.nodes[&self.order[i]]
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name).filter(|n| n.node.is_some())
    }

    /// Every node that has a Node object.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.order.iter().map(|n| &self.nodes[n])
    }

    pub fn namespace_labels(&self, ns: &str) -> Option<&Labels> {
        self.namespaces.get(ns)
    }

    pub fn is_assumed(&self, uid: &str) -> bool {
        self.pods.get(uid).is_some_and(|s| s.assumed)
    }

    pub fn contains_pod(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    /// Add or update a node; returns what kind of change it was (heartbeats and other
    /// status-only updates are `Change::None`).
    pub fn set_node(&mut self, data: NodeData) -> Change {
        let name = data.name.clone();
        let entry = self
            .nodes
            .entry(name.clone())
            .or_insert_with(|| NodeInfo::new(&name));
        let change = match &entry.node {
            None => Change::NodeAdded,
            Some(old) if **old == data => Change::None,
            Some(_) => Change::NodeUpdated,
        };
        entry.node = Some(Arc::new(data));
        if !self.index.contains_key(&name) {
            self.index.insert(name.clone(), self.order.len());
            self.order.push(name);
        }
        change
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(i) = self.index.remove(name) {
            self.order.swap_remove(i);
            if i < self.order.len() {
                self.index.insert(self.order[i].clone(), i);
            }
        }
        // Pods may still reference the node until their deletion is observed.
        if let Some(ni) = self.nodes.get_mut(name) {
            ni.node = None;
            if ni.pods.is_empty() {
                self.nodes.remove(name);
            }
        }
    }

    /// Replace all nodes with a fresh list (after a relist).
    pub fn replace_nodes(&mut self, list: Vec<NodeData>) -> bool {
        let keep: HashSet<String> = list.iter().map(|n| n.name.clone()).collect();
        let gone: Vec<String> = self
            .order
            .iter()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect();
        let mut changed = !gone.is_empty();
        for n in gone {
            self.remove_node(&n);
        }
        for n in list {
            changed |= self.set_node(n) != Change::None;
        }
        changed
    }

    pub fn set_namespace(&mut self, name: String, labels: Labels) -> Change {
        match self.namespaces.insert(name, labels.clone()) {
            Some(old) if old == labels => Change::None,
            _ => Change::NamespaceChanged,
        }
    }

    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    pub fn replace_namespaces(&mut self, list: Vec<(String, Labels)>) {
        self.namespaces = list.into_iter().collect();
    }

    pub fn has_pods_with_affinity(&self) -> bool {
        self.with_affinity > 0
    }

    pub fn has_pods_with_required_anti_affinity(&self) -> bool {
        self.with_required_anti_affinity > 0
    }

    fn count(&mut self, pod: &PodInfo, by: isize) {
        if pod.has_affinity() {
            self.with_affinity = self.with_affinity.wrapping_add_signed(by);
        }
        if !pod.required_anti_affinity.is_empty() {
            self.with_required_anti_affinity =
                self.with_required_anti_affinity.wrapping_add_signed(by);
        }
    }

    fn attach(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.count(&pod, 1);
        self.nodes
            .entry(node.to_string())
            .or_insert_with(|| NodeInfo::new(node))
            .add_pod(pod);
    }

    fn detach(&mut self, uid: &str, node: &str) {
        let removed = self.nodes.get_mut(node).and_then(|ni| ni.remove_pod(uid));
        if let Some(p) = removed {
            self.count(&p, -1);
        }
        if self
            .nodes
            .get(node)
            .is_some_and(|ni| ni.node.is_none() && ni.pods.is_empty())
        {
            self.nodes.remove(node);
        }
    }

    /// The scheduler decided `pod` goes to `node`: count it there now.
    pub fn assume(&mut self, pod: Arc<PodInfo>, node: &str) {
        let mut p = (*pod).clone();
        p.node_name = node.to_string();
        let p = Arc::new(p);
        if let Some(old) = self.pods.remove(&pod.uid) {
            self.detach(&pod.uid, &old.node);
        }
        self.attach(p.clone(), node);
        self.pods.insert(
            pod.uid.clone(),
            PodState {
                pod: p,
                node: node.to_string(),
                assumed: true,
                bound: false,
            },
        );
    }

    /// The bind succeeded; the assumption stays until the watch shows the pod bound.
    pub fn finish_binding(&mut self, uid: &str) {
        if let Some(s) = self.pods.get_mut(uid) {
            s.bound = true;
        }
    }

    /// The bind failed: drop the assumption.
    pub fn forget(&mut self, uid: &str) {
        if let Some(s) = self.pods.get(uid) {
            if s.assumed {
                let node = s.node.clone();
                self.pods.remove(uid);
                self.detach(uid, &node);
            }
        }
    }

    /// A pod bound to a node, seen through the watch (confirms an assumption).
    pub fn add_or_update_bound(&mut self, pod: Arc<PodInfo>) -> Change {
        let uid = pod.uid.clone();
        let change = match self.pods.get(&uid) {
            None => Change::AssignedPodAdded,
            Some(old) if old.assumed => Change::None,
            Some(old) if old.pod.labels != pod.labels || old.node != pod.node_name => {
                Change::AssignedPodAdded
            }
            Some(_) => Change::None,
        };
        if let Some(old) = self.pods.remove(&uid) {
            self.detach(&uid, &old.node);
        }
        let node = pod.node_name.clone();
        self.attach(pod.clone(), &node);
        self.pods.insert(
            uid,
            PodState {
                pod,
                node,
                assumed: false,
                bound: true,
            },
        );
        change
    }

    /// A pod was deleted (or finished): it no longer uses its node.
    pub fn remove_pod(&mut self, uid: &str) -> Change {
        match self.pods.remove(uid) {
            Some(s) => {
                self.detach(uid, &s.node);
                Change::AssignedPodDeleted
            }
            None => Change::None,
        }
    }

    /// After a relist: drop confirmed pods that are no longer listed, and assumed pods
    /// whose bind already succeeded but that are gone (deleted meanwhile). Assumed pods with
    /// a bind still in flight stay until the bind answers.
    pub fn retain_listed(&mut self, listed: &HashSet<String>) -> bool {
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(uid, s)| !listed.contains(*uid) && (!s.assumed || s.bound))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in &gone {
            self.remove_pod(uid);
        }
        !gone.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resource;

    fn node(name: &str, cpu: i64) -> NodeData {
        NodeData {
            name: name.into(),
            labels: Labels::new(),
            taints: vec![],
            unschedulable: false,
            allocatable: Resource {
                milli_cpu: cpu,
                allowed_pods: 110,
                ..Default::default()
            },
        }
    }

    fn pod(uid: &str, node: &str, cpu: i64) -> Arc<PodInfo> {
        let mut p = PodInfo::from_pod(&Default::default());
        p.uid = uid.into();
        p.name = uid.into();
        p.namespace = "default".into();
        p.node_name = node.into();
        p.requests.milli_cpu = cpu;
        Arc::new(p)
    }

    #[test]
    fn assume_confirm_forget() {
        let mut c = Cache::new();
        assert_eq!(c.set_node(node("n1", 4000)), Change::NodeAdded);
        assert_eq!(c.set_node(node("n1", 4000)), Change::None);
        assert_eq!(c.set_node(node("n1", 8000)), Change::NodeUpdated);
        c.assume(pod("a", "", 1000), "n1");
        c.assume(pod("b", "", 500), "n1");
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 1500);
        assert!(c.is_assumed("a"));
        // The watch confirms a: no double counting.
        assert_eq!(c.add_or_update_bound(pod("a", "n1", 1000)), Change::None);
        assert!(!c.is_assumed("a"));
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 1500);
        // b's bind fails: forgotten.
        c.forget("b");
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 1000);
        assert_eq!(c.node("n1").unwrap().pods.len(), 1);
        // forget never drops confirmed pods.
        c.forget("a");
        assert_eq!(c.node("n1").unwrap().pods.len(), 1);
        assert_eq!(c.remove_pod("a"), Change::AssignedPodDeleted);
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 0);
        // Affinity counters follow attach/detach.
        let anti = Arc::new(
            crate::testutil::pod("w")
                .anti_affinity("app", "w", "zone")
                .build(),
        );
        c.assume(anti, "n1");
        assert!(c.has_pods_with_affinity() && c.has_pods_with_required_anti_affinity());
        c.forget("w");
        assert!(!c.has_pods_with_affinity() && !c.has_pods_with_required_anti_affinity());
    }

    #[test]
    fn pods_on_unknown_nodes_and_node_removal() {
        let mut c = Cache::new();
        c.add_or_update_bound(pod("a", "ghost", 100));
        assert_eq!(c.num_nodes(), 0);
        assert!(c.node("ghost").is_none());
        c.set_node(node("ghost", 1000));
        assert_eq!(c.node("ghost").unwrap().requested.milli_cpu, 100);
        c.set_node(node("n2", 1000));
        c.remove_node("ghost");
        assert_eq!(c.num_nodes(), 1);
        assert_eq!(c.node_at(0).name, "n2");
        c.remove_pod("a");
        assert!(!c.nodes.contains_key("ghost"));
    }

    #[test]
    fn relist_drops_missing_but_keeps_in_flight_assumptions() {
        let mut c = Cache::new();
        c.set_node(node("n1", 4000));
        c.add_or_update_bound(pod("a", "n1", 100));
        c.assume(pod("b", "", 100), "n1");
        c.assume(pod("c", "", 100), "n1");
        c.finish_binding("c");
        let listed: HashSet<String> = HashSet::new();
        assert!(c.retain_listed(&listed));
        assert!(!c.contains_pod("a"));
        assert!(c.is_assumed("b"));
        assert!(!c.contains_pod("c"));
        assert!(c.replace_nodes(vec![node("n2", 1)]));
        assert_eq!(c.num_nodes(), 1);
        assert!(c.node("n1").is_none());
    }
}
