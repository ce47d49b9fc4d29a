//! The Endpoints controller, after kube-controller-manager's endpoints controller: the
//! legacy core/v1 Endpoints object named like each Service with a selector, listing its
//! pods as `addresses` (ready) and `notReadyAddresses`, grouped into subsets by the
//! ports they serve. Terminating pods are left out (unless the Service publishes
//! not-ready addresses), more than 1000 addresses are truncated with the over-capacity
//! annotation, and the object is written only when it would change. The Endpoints of a
//! Service without a selector belong to its user; those of a deleted Service are deleted.

use crate::endpointutil::{self, Written, LABEL_HEADLESS};
use crate::informer::{Change, Informer, Key};
use crate::queue::{Outcome, Queue};
use crate::{events::Recorder, Error};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Most addresses one Endpoints object holds (upstream's maxCapacity).
pub const MAX_CAPACITY: usize = 1000;
pub const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// Endpoints used as a leader-election lock have no Service and must stay.
const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

pub struct Controller {
    client: Client,
    services: Informer<Service>,
    pods: Informer<Pod>,
    endpoints: Informer<Endpoints>,
    recorder: Recorder,
    written: Arc<Written>,
    queue: Queue,
}

impl Controller {
    pub fn new(
        client: Client,
        services: Informer<Service>,
        pods: Informer<Pod>,
        endpoints: Informer<Endpoints>,
        recorder: Recorder,
    ) -> Controller {
        Controller {
            client,
            services,
            pods,
            endpoints,
            recorder,
            written: Default::default(),
            queue: Queue::new("endpoints"),
        }
    }

    /// Hooks the informers to the queue; returns the queue for the workers.
    pub fn register(self: &Arc<Self>) -> Queue {
        let q = self.queue.clone();
        self.services.on_change(move |c| q.add(Key::of(c.object())));
        endpointutil::queue_services_of_pods(&self.pods, &self.services, self.queue.clone());
        // Deleted behind our back: put it back.
        let (q, written) = (self.queue.clone(), self.written.clone());
        self.endpoints.on_change(move |c| {
            if let Change::Deleted(e) = c {
                let key = Key::of(*e);
                written.observed_delete(&key, &key.name);
                q.add(key);
            }
        });
        self.queue.clone()
    }

    /// Queues every Endpoints object once (upstream's checkLeftoverEndpoints): those
    /// whose Service was deleted while no controller ran are deleted now.
    pub fn queue_leftovers(&self) {
        for e in self.endpoints.list(|_| true) {
            if !e.annotations().contains_key(LEADER_ANNOTATION) {
                self.queue.add(Key::of(&*e));
            }
        }
    }

    pub async fn reconcile(&self, key: Key) -> Outcome {
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), &key.namespace);
        let Some(svc) = self.services.get(&key) else {
            // Endpoints have no owner reference: they go with their Service here.
            self.written.forget(&key);
            return match api.delete(&key.name, &DeleteParams::default()).await {
                Ok(_) => Ok(None),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
                Err(e) => Err(e.into()),
            };
        };
        // The API server keeps the `kubernetes` Service's own Endpoints.
        if endpointutil::managed_selector(&svc).is_none()
            || (key.namespace == "default" && key.name == "kubernetes")
        {
            return Ok(None);
        }
        let current = self.endpoints.get(&key);
        let version = |_: &str| {
            current
                .as_ref()
                .map(|e| e.metadata.resource_version.clone().unwrap_or_default())
        };
        if self.written.stale(&key, version) {
            return Err(Error::Other(
                "the Endpoints cache has not seen our last write yet".into(),
            ));
        }
        let pods = endpointutil::selected_pods(&self.pods, &svc);
        let desired = desired_endpoints(&svc, current.as_deref(), subsets_for(&svc, &pods));
        if current.as_deref().is_some_and(|c| same(c, &desired)) {
            return Ok(None);
        }
        let pp = PostParams::default();
        let written = match &current {
            None => api.create(&pp, &desired).await,
            Some(_) => api.replace(&key.name, &pp, &desired).await,
        };
        match written {
            Ok(e) => {
                self.written
                    .wrote(&key, &key.name, e.metadata.resource_version.as_deref());
                Ok(None)
            }
            Err(e) if current.is_none() && endpointutil::namespace_terminating(&e) => Ok(None),
            Err(e) => {
                if !matches!(&e, kube::Error::Api(s) if s.code == 409) {
                    let (reason, what) = match current {
                        None => (
                            "FailedToCreateEndpoint",
                            "Failed to create endpoint for service",
                        ),
                        Some(_) => ("FailedToUpdateEndpoint", "Failed to update endpoint"),
                    };
                    self.recorder.warning(
                        &desired,
                        reason,
                        format!("{what} {key}: {}", crate::claim::api_message(&e)),
                    );
                }
                Err(e.into())
            }
        }
    }
}

/// An address's identity across ports: its IP and the pod behind it.
type AddrId = (String, String);
/// One Service port as the pod serves it: name, number, protocol, appProtocol.
type PortTuple = (String, i32, String, Option<String>);

/// The subsets for `pods`, packed as upstream's RepackSubsets does: every port with the
/// set of addresses serving it, ports with the same set sharing a subset. Sorted, so
/// equal inputs give equal output.
pub fn subsets_for(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let tolerate = endpointutil::publish_not_ready(svc);
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[]);
    let headless = endpointutil::is_headless(svc);
    let mut addresses: BTreeMap<AddrId, EndpointAddress> = BTreeMap::new();
    // None stands for "no ports" (a headless Service may have none).
    let mut by_port: BTreeMap<Option<PortTuple>, BTreeSet<(AddrId, bool)>> = BTreeMap::new();
    for pod in pods {
        if !endpointutil::in_endpoints(pod, tolerate) {
            continue;
        }
        let Some(ip) = endpointutil::pod_ipv4(pod) else {
            continue;
        };
        let id: AddrId = (ip.clone(), pod.metadata.uid.clone().unwrap_or_default());
        let ready = tolerate || endpointutil::is_ready(pod);
        let mut served: Vec<Option<PortTuple>> = Vec::new();
        if ports.is_empty() {
            if headless {
                served.push(None);
            }
        } else {
            for sp in ports {
                if let Some(n) = endpointutil::find_port(pod, sp) {
                    served.push(Some((
                        sp.name.clone().unwrap_or_default(),
                        n,
                        sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        sp.app_protocol.clone(),
                    )));
                }
            }
        }
        if served.is_empty() {
            continue;
        }
        for p in served {
            by_port.entry(p).or_default().insert((id.clone(), ready));
        }
        addresses.insert(id, address_for(pod, svc, ip));
    }
    let mut groups: BTreeMap<BTreeSet<(AddrId, bool)>, Vec<PortTuple>> = BTreeMap::new();
    for (port, set) in by_port {
        let ports = groups.entry(set).or_default();
        ports.extend(port);
    }
    groups
        .into_iter()
        .map(|(set, ports)| {
            let pick = |want: bool| -> Vec<EndpointAddress> {
                set.iter()
                    .filter(|(_, ready)| *ready == want)
                    .map(|(id, _)| addresses[id].clone())
                    .collect()
            };
            let ports: Vec<EndpointPort> = ports
                .into_iter()
                .map(|(name, port, protocol, app_protocol)| EndpointPort {
                    name: (!name.is_empty()).then_some(name),
                    port,
                    protocol: Some(protocol),
                    app_protocol,
                })
                .collect();
            EndpointSubset {
                addresses: non_empty(pick(true)),
                not_ready_addresses: non_empty(pick(false)),
                ports: non_empty(ports),
            }
        })
        .collect()
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn address_for(pod: &Pod, svc: &Service, ip: String) -> EndpointAddress {
    EndpointAddress {
        ip,
        hostname: endpointutil::hostname_for(pod, svc),
        node_name: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
    }
}

/// Caps the addresses at MAX_CAPACITY as upstream's truncateEndpoints: ready addresses
/// first; each subset keeps a share proportional to its size. True when it cut.
pub fn truncate(subsets: &mut [EndpointSubset]) -> bool {
    let count = |v: &Option<Vec<EndpointAddress>>| v.as_ref().map_or(0, Vec::len);
    let ready: usize = subsets.iter().map(|s| count(&s.addresses)).sum();
    let not_ready: usize = subsets.iter().map(|s| count(&s.not_ready_addresses)).sum();
    if ready + not_ready <= MAX_CAPACITY {
        return false;
    }
    let cut_ready = ready > MAX_CAPACITY;
    let (room, total) = if cut_ready {
        (MAX_CAPACITY, ready)
    } else {
        (MAX_CAPACITY - ready, not_ready)
    };
    let mut left = room;
    for s in subsets.iter_mut() {
        let here = if cut_ready {
            count(&s.addresses)
        } else {
            count(&s.not_ready_addresses)
        };
        // Rounded up, so the last subsets may get less than their share.
        let share = (here * room).div_ceil(total).min(left);
        let list = if cut_ready {
            s.not_ready_addresses = None;
            &mut s.addresses
        } else {
            &mut s.not_ready_addresses
        };
        if let Some(v) = list.as_mut() {
            v.truncate(share);
            left -= v.len();
        }
        if list.as_ref().is_some_and(Vec::is_empty) {
            *list = None;
        }
    }
    true
}

/// The Endpoints object `svc` should have: `current` (if any) with the subsets, the
/// Service's labels (plus the headless label) and the over-capacity annotation set.
pub fn desired_endpoints(
    svc: &Service,
    current: Option<&Endpoints>,
    mut subsets: Vec<EndpointSubset>,
) -> Endpoints {
    let mut ep = current.cloned().unwrap_or_else(|| Endpoints {
        metadata: ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: svc.metadata.namespace.clone(),
            ..Default::default()
        },
        ..Default::default()
    });
    let truncated = truncate(&mut subsets);
    ep.subsets = non_empty(subsets);
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if endpointutil::is_headless(svc) {
        labels.insert(LABEL_HEADLESS.into(), String::new());
    } else {
        labels.remove(LABEL_HEADLESS);
    }
    ep.metadata.labels = (!labels.is_empty()).then_some(labels);
    let mut annotations = ep.metadata.annotations.take().unwrap_or_default();
    if truncated {
        annotations.insert(OVER_CAPACITY.into(), "truncated".into());
    } else {
        annotations.remove(OVER_CAPACITY);
    }
    ep.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    ep
}

/// Equal in what this controller writes (empty and absent alike; a pod's
/// resourceVersion in a targetRef is not a change).
fn same(a: &Endpoints, b: &Endpoints) -> bool {
    let subsets = |e: &Endpoints| {
        let mut s = e.subsets.clone().unwrap_or_default();
        for sub in &mut s {
            for list in [&mut sub.addresses, &mut sub.not_ready_addresses] {
                for addr in list.iter_mut().flatten() {
                    if let Some(r) = addr.target_ref.as_mut() {
                        r.resource_version = None;
                    }
                }
                if list.as_ref().is_some_and(Vec::is_empty) {
                    *list = None;
                }
            }
            if sub.ports.as_ref().is_some_and(Vec::is_empty) {
                sub.ports = None;
            }
        }
        s
    };
    let map = |m: &Option<BTreeMap<String, String>>| m.clone().unwrap_or_default();
    subsets(a) == subsets(b)
        && map(&a.metadata.labels) == map(&b.metadata.labels)
        && map(&a.metadata.annotations) == map(&b.metadata.annotations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServicePort, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn svc(ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                labels: Some([("team".to_string(), "a".to_string())].into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "web".to_string())].into()),
                cluster_ip: Some("10.43.0.10".into()),
                ports: Some(ports),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn sport(name: &str, target: IntOrString) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            port: 80,
            target_port: Some(target),
            protocol: Some("TCP".into()),
            ..Default::default()
        }
    }

    fn pod(name: &str, ip: &str, ready: bool, ports: &[(&str, i32)]) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(
                        ports
                            .iter()
                            .map(|(n, p)| ContainerPort {
                                name: Some(n.to_string()),
                                container_port: *p,
                                protocol: Some("TCP".into()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn ips(v: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        v.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn ready_and_not_ready_addresses_terminating_left_out() {
        let s = svc(vec![sport("http", IntOrString::String("http".into()))]);
        let mut gone = (*pod("c", "10.0.0.3", true, &[("http", 8080)])).clone();
        gone.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let pods = vec![
            pod("a", "10.0.0.1", true, &[("http", 8080)]),
            pod("b", "10.0.0.2", false, &[("http", 8080)]),
            Arc::new(gone),
        ];
        let subsets = subsets_for(&s, &pods);
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), vec!["10.0.0.1"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), vec!["10.0.0.2"]);
        let port = &subsets[0].ports.as_ref().unwrap()[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("http"), 8080));
        let a = &subsets[0].addresses.as_ref().unwrap()[0];
        assert_eq!(a.node_name.as_deref(), Some("n1"));
        assert_eq!(a.target_ref.as_ref().unwrap().name.as_deref(), Some("a"));

        // With publishNotReadyAddresses every pod, terminating too, is an address.
        let mut s = s;
        s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let subsets = subsets_for(&s, &pods);
        assert_eq!(
            ips(&subsets[0].addresses),
            vec!["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        );
        assert_eq!(subsets[0].not_ready_addresses, None);
    }

    #[test]
    fn ports_with_the_same_addresses_share_a_subset() {
        let s = svc(vec![
            sport("http", IntOrString::String("http".into())),
            sport("metrics", IntOrString::String("metrics".into())),
        ]);
        let pods = vec![
            pod("a", "10.0.0.1", true, &[("http", 8080), ("metrics", 9090)]),
            pod("b", "10.0.0.2", true, &[("http", 8080)]),
            pod("c", "10.0.0.3", true, &[("http", 8081)]),
        ];
        let mut got: Vec<(Vec<&str>, Vec<i32>)> = Vec::new();
        let subsets = subsets_for(&s, &pods);
        for sub in &subsets {
            got.push((
                ips(&sub.addresses),
                sub.ports.iter().flatten().map(|p| p.port).collect(),
            ));
        }
        got.sort();
        assert_eq!(
            got,
            vec![
                (vec!["10.0.0.1"], vec![9090]),
                (vec!["10.0.0.1", "10.0.0.2"], vec![8080]),
                (vec!["10.0.0.3"], vec![8081]),
            ]
        );
    }

    #[test]
    fn unresolvable_ports_and_headless_without_ports() {
        let s = svc(vec![sport("x", IntOrString::String("nope".into()))]);
        let pods = vec![pod("a", "10.0.0.1", true, &[("http", 8080)])];
        assert!(subsets_for(&s, &pods).is_empty());
        let mut headless = svc(vec![]);
        headless.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let subsets = subsets_for(&headless, &pods);
        assert_eq!(ips(&subsets[0].addresses), vec!["10.0.0.1"]);
        assert_eq!(subsets[0].ports, None);
        let ep = desired_endpoints(&headless, None, subsets);
        assert_eq!(ep.metadata.labels.as_ref().unwrap()[LABEL_HEADLESS], "");
        assert_eq!(ep.metadata.labels.as_ref().unwrap()["team"], "a");
    }

    #[test]
    fn over_a_thousand_addresses_are_truncated_ready_first() {
        let s = svc(vec![sport("http", IntOrString::Int(8080))]);
        let pods: Vec<_> = (0..1200)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.0.{}.{}", i / 250, i % 250 + 1),
                    i < 900,
                    &[],
                )
            })
            .collect();
        let ep = desired_endpoints(&s, None, subsets_for(&s, &pods));
        let sub = &ep.subsets.as_ref().unwrap()[0];
        assert_eq!(ips(&sub.addresses).len(), 900);
        assert_eq!(ips(&sub.not_ready_addresses).len(), 100);
        assert_eq!(ep.annotations()[OVER_CAPACITY], "truncated");
        // Back under capacity: the annotation goes.
        let ep = desired_endpoints(&s, Some(&ep), subsets_for(&s, &pods[..10]));
        assert!(ep.metadata.annotations.is_none());
    }

    #[test]
    fn equal_endpoints_are_not_rewritten() {
        let s = svc(vec![sport("http", IntOrString::Int(8080))]);
        let pods = vec![
            pod("a", "10.0.0.1", true, &[]),
            pod("b", "10.0.0.2", false, &[]),
        ];
        let first = desired_endpoints(&s, None, subsets_for(&s, &pods));
        let mut stored = first.clone();
        stored.metadata.resource_version = Some("7".into());
        let again = desired_endpoints(&s, Some(&stored), subsets_for(&s, &pods));
        assert!(same(&stored, &again));
        let flipped = vec![
            pod("a", "10.0.0.1", true, &[]),
            pod("b", "10.0.0.2", true, &[]),
        ];
        let changed = desired_endpoints(&s, Some(&stored), subsets_for(&s, &flipped));
        assert!(!same(&stored, &changed));
        assert_eq!(changed.metadata.resource_version.as_deref(), Some("7"));
        // No pods: no subsets, still the object.
        let empty = desired_endpoints(&s, Some(&stored), subsets_for(&s, &[]));
        assert_eq!(empty.subsets, None);
    }
}
