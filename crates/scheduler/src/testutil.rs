//! Builders for unit tests: pods through real `k8s_openapi` objects and `PodInfo::from_pod`,
//! so tests exercise the same parsing as the running scheduler.

use crate::resources::Resource;
use crate::selectors::Labels;
use crate::types::{NodeData, NodeInfo, PodInfo};
use k8s_openapi::api::core::v1::*;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

pub fn node(name: &str, milli_cpu: i64, memory: i64) -> NodeData {
    NodeData {
        name: name.into(),
        labels: Labels::new(),
        taints: vec![],
        unschedulable: false,
        allocatable: Resource {
            milli_cpu,
            memory,
            allowed_pods: 110,
            ..Default::default()
        },
    }
}

pub fn node_labels(name: &str, labels: &[(&str, &str)]) -> NodeData {
    let mut n = node(name, 32000, 128 << 30);
    n.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    n
}

pub fn taint(key: &str, value: &str, effect: &str) -> Taint {
    Taint {
        key: key.into(),
        value: (!value.is_empty()).then(|| value.to_string()),
        effect: effect.into(),
        time_added: None,
    }
}

pub fn info(n: NodeData) -> NodeInfo {
    NodeInfo::with_node(n)
}

pub struct PodBuilder(Pod);

pub fn pod(name: &str) -> PodBuilder {
    PodBuilder(Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    })
}

fn sel(key: &str, value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some([(key.to_string(), value.to_string())].into()),
        match_expressions: None,
    }
}

fn term(key: &str, value: &str, topology: &str) -> PodAffinityTerm {
    PodAffinityTerm {
        label_selector: Some(sel(key, value)),
        topology_key: topology.into(),
        ..Default::default()
    }
}

fn node_term(reqs: &[(&str, &str, &[&str])]) -> NodeSelectorTerm {
    NodeSelectorTerm {
        match_expressions: Some(
            reqs.iter()
                .map(|(k, op, vals)| NodeSelectorRequirement {
                    key: k.to_string(),
                    operator: op.to_string(),
                    values: Some(vals.iter().map(|s| s.to_string()).collect()),
                })
                .collect(),
        ),
        match_fields: None,
    }
}

impl PodBuilder {
    fn spec(&mut self) -> &mut PodSpec {
        self.0.spec.as_mut().unwrap()
    }

    fn aff(&mut self) -> &mut Affinity {
        self.spec().affinity.get_or_insert_with(Default::default)
    }

    pub fn build(self) -> PodInfo {
        PodInfo::from_pod(&self.0)
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(k.into(), v.into());
        self
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.0.metadata.namespace = Some(ns.into());
        self
    }

    pub fn on(mut self, node: &str) -> Self {
        self.spec().node_name = Some(node.into());
        self
    }

    pub fn priority(mut self, p: i32) -> Self {
        self.spec().priority = Some(p);
        self
    }

    pub fn preemption_never(mut self) -> Self {
        self.spec().preemption_policy = Some("Never".into());
        self
    }

    pub fn request(mut self, name: &str, q: &str) -> Self {
        let c = &mut self.spec().containers[0];
        c.resources
            .get_or_insert_with(Default::default)
            .requests
            .get_or_insert_with(Default::default)
            .insert(name.into(), Quantity(q.into()));
        self
    }

    pub fn requests(self, cpu: &str, mem: &str) -> Self {
        self.request("cpu", cpu).request("memory", mem)
    }

    pub fn init_requests(mut self, cpu: &str, mem: &str) -> Self {
        self.spec()
            .init_containers
            .get_or_insert_with(Vec::new)
            .push(Container {
                name: "init".into(),
                resources: Some(ResourceRequirements {
                    requests: Some(
                        [
                            ("cpu".to_string(), Quantity(cpu.into())),
                            ("memory".to_string(), Quantity(mem.into())),
                        ]
                        .into(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            });
        self
    }

    pub fn overhead(mut self, cpu: &str) -> Self {
        self.spec().overhead = Some([("cpu".to_string(), Quantity(cpu.into()))].into());
        self
    }

    pub fn host_port(mut self, port: i32, ip: &str, proto: &str) -> Self {
        self.spec().containers[0]
            .ports
            .get_or_insert_with(Vec::new)
            .push(ContainerPort {
                container_port: port,
                host_port: Some(port),
                host_ip: (!ip.is_empty()).then(|| ip.to_string()),
                protocol: Some(proto.into()),
                ..Default::default()
            });
        self
    }

    pub fn toleration(mut self, key: &str, op: &str, value: &str, effect: &str) -> Self {
        self.spec()
            .tolerations
            .get_or_insert_with(Vec::new)
            .push(Toleration {
                key: (!key.is_empty()).then(|| key.to_string()),
                operator: Some(op.into()),
                value: (!value.is_empty()).then(|| value.to_string()),
                effect: (!effect.is_empty()).then(|| effect.to_string()),
                toleration_seconds: None,
            });
        self
    }

    pub fn node_selector(mut self, k: &str, v: &str) -> Self {
        self.spec()
            .node_selector
            .get_or_insert_with(Default::default)
            .insert(k.into(), v.into());
        self
    }

    pub fn required_node_term(mut self, reqs: &[(&str, &str, &[&str])]) -> Self {
        let t = node_term(reqs);
        let na = self
            .aff()
            .node_affinity
            .get_or_insert_with(Default::default);
        na.required_during_scheduling_ignored_during_execution
            .get_or_insert_with(Default::default)
            .node_selector_terms
            .push(t);
        self
    }

    pub fn preferred_node_term(mut self, weight: i32, reqs: &[(&str, &str, &[&str])]) -> Self {
        let t = node_term(reqs);
        let na = self
            .aff()
            .node_affinity
            .get_or_insert_with(Default::default);
        na.preferred_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new)
            .push(PreferredSchedulingTerm {
                weight,
                preference: t,
            });
        self
    }

    pub fn anti_affinity(mut self, key: &str, value: &str, topology: &str) -> Self {
        let a = self
            .aff()
            .pod_anti_affinity
            .get_or_insert_with(Default::default);
        a.required_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new)
            .push(term(key, value, topology));
        self
    }

    pub fn anti_affinity_ns_selector(
        mut self,
        key: &str,
        value: &str,
        topology: &str,
        ns_key: &str,
        ns_value: &str,
    ) -> Self {
        let mut t = term(key, value, topology);
        t.namespace_selector = Some(sel(ns_key, ns_value));
        let a = self
            .aff()
            .pod_anti_affinity
            .get_or_insert_with(Default::default);
        a.required_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new)
            .push(t);
        self
    }

    pub fn affinity(mut self, key: &str, value: &str, topology: &str) -> Self {
        let a = self.aff().pod_affinity.get_or_insert_with(Default::default);
        a.required_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new)
            .push(term(key, value, topology));
        self
    }

    pub fn preferred_affinity(mut self, w: i32, key: &str, value: &str, topology: &str) -> Self {
        let a = self.aff().pod_affinity.get_or_insert_with(Default::default);
        a.preferred_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new)
            .push(WeightedPodAffinityTerm {
                weight: w,
                pod_affinity_term: term(key, value, topology),
            });
        self
    }

    pub fn preferred_anti_affinity(
        mut self,
        w: i32,
        key: &str,
        value: &str,
        topology: &str,
    ) -> Self {
        let a = self
            .aff()
            .pod_anti_affinity
            .get_or_insert_with(Default::default);
        a.preferred_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new)
            .push(WeightedPodAffinityTerm {
                weight: w,
                pod_affinity_term: term(key, value, topology),
            });
        self
    }

    pub fn spread(
        mut self,
        max_skew: i32,
        topology: &str,
        when: &str,
        key: &str,
        value: &str,
    ) -> Self {
        self.spec()
            .topology_spread_constraints
            .get_or_insert_with(Vec::new)
            .push(TopologySpreadConstraint {
                max_skew,
                topology_key: topology.into(),
                when_unsatisfiable: when.into(),
                label_selector: Some(sel(key, value)),
                ..Default::default()
            });
        self
    }
}
