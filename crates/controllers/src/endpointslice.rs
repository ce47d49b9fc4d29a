//! The EndpointSlice controller, after kube-controller-manager's endpointslice
//! controller: every Service with a selector gets discovery.k8s.io/v1 EndpointSlices
//! (IPv4) listing the pods it selects, with ready/serving/terminating conditions, node,
//! zone, hostname and the Service ports resolved against each pod. Pods whose ports
//! resolve alike share slices of at most 100 endpoints; slices are changed in place,
//! written only when something differs, and a Service without endpoints keeps one empty
//! placeholder slice. Slices name their Service as controlling owner, so the garbage
//! collector removes them with it.

use crate::endpointutil::{
    self, Written, LABEL_HEADLESS, LABEL_MANAGED_BY, LABEL_SERVICE_NAME, LABEL_ZONE,
};
use crate::informer::{Change, Informer, Key};
use crate::podutil::owner_ref;
use crate::queue::{Outcome, Queue};
use crate::{events::Recorder, Error};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The managed-by label value of the slices this controller owns.
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// kube-controller-manager's default --max-endpoints-per-slice.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
const ADDRESS_TYPE: &str = "IPv4";
/// A change to one of our slices is looked at after this long, so a burst of our own
/// writes is reconciled once (upstream's endpointSliceChangeMinSyncDelay).
const SLICE_CHANGE_DELAY: Duration = Duration::from_secs(1);
/// A pod on a node we do not know is left out; look again after this long.
const MISSING_NODE_RETRY: Duration = Duration::from_secs(10);

pub struct Controller {
    client: Client,
    services: Informer<Service>,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    slices: Informer<EndpointSlice>,
    recorder: Recorder,
    written: Arc<Written>,
    queue: Queue,
}

/// The watch the slice informer needs: only slices this controller manages.
pub fn slice_watch() -> kube::runtime::watcher::Config {
    kube::runtime::watcher::Config::default()
        .labels(&format!("{LABEL_MANAGED_BY}={CONTROLLER_NAME}"))
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

fn service_of(slice: &EndpointSlice) -> Option<Key> {
    let name = label(&slice.metadata, LABEL_SERVICE_NAME).filter(|n| !n.is_empty())?;
    Some(Key::new(
        slice.metadata.namespace.clone().unwrap_or_default(),
        name,
    ))
}

fn managed(slice: &EndpointSlice) -> bool {
    label(&slice.metadata, LABEL_MANAGED_BY) == Some(CONTROLLER_NAME)
}

impl Controller {
    pub fn new(
        client: Client,
        services: Informer<Service>,
        pods: Informer<Pod>,
        nodes: Informer<Node>,
        slices: Informer<EndpointSlice>,
        recorder: Recorder,
    ) -> Controller {
        Controller {
            client,
            services,
            pods,
            nodes,
            slices,
            recorder,
            written: Default::default(),
            queue: Queue::new("endpointslice"),
        }
    }

    /// Hooks the informers to the queue; returns the queue for the workers.
    pub fn register(self: &Arc<Self>) -> Queue {
        let q = self.queue.clone();
        self.services.on_change(move |c| q.add(Key::of(c.object())));
        endpointutil::queue_services_of_pods(&self.pods, &self.services, self.queue.clone());
        let (q, written) = (self.queue.clone(), self.written.clone());
        self.slices.on_change(move |c| {
            if let Change::Deleted(s) = c {
                if let Some(svc) = service_of(s) {
                    written.observed_delete(&svc, &s.name_any());
                }
            }
            // A slice moved to another Service (or away from us) concerns both.
            if let Change::Applied { old: Some(old), .. } = c {
                if let Some(prev) =
                    service_of(old).filter(|p| Some(p) != service_of(c.object()).as_ref())
                {
                    q.add_after(prev, SLICE_CHANGE_DELAY);
                }
            }
            if let Some(svc) = service_of(c.object()) {
                q.add_after(svc, SLICE_CHANGE_DELAY);
            }
        });
        // A node's zone is part of its endpoints, and pods on an unknown node wait for it.
        let (q, pods, services) = (self.queue.clone(), self.pods.clone(), self.services.clone());
        self.nodes.on_change(move |c| {
            let zone = |n: &Node| n.labels().get(LABEL_ZONE).cloned();
            let relevant = match c {
                Change::Applied { old: None, .. } | Change::Deleted(_) => true,
                Change::Applied { old: Some(o), new } => zone(o) != zone(new),
            };
            if relevant {
                for k in endpointutil::services_on_node(&pods, &services, &c.object().name_any()) {
                    q.add(k);
                }
            }
        });
        self.queue.clone()
    }

    pub async fn reconcile(&self, key: Key) -> Outcome {
        let Some(svc) = self.services.get(&key) else {
            // Deleted: its slices go with it through their owner references.
            self.written.forget(&key);
            return Ok(None);
        };
        if endpointutil::managed_selector(&svc).is_none() {
            // ExternalName and selector-less Services: slices are their users' business.
            return Ok(None);
        }
        let mine = self
            .slices
            .list(|s| managed(s) && service_of(s).as_ref() == Some(&key));
        let version_of = |name: &str| {
            mine.iter()
                .find(|s| s.metadata.name.as_deref() == Some(name))
                .map(|s| s.metadata.resource_version.clone().unwrap_or_default())
        };
        if self.written.stale(&key, version_of) {
            return Err(Error::Other(
                "the EndpointSlice cache has not seen our last writes yet".into(),
            ));
        }
        // Slices pending deletion are neither reused nor counted (upstream drops them too).
        let existing: Vec<Arc<EndpointSlice>> = mine
            .into_iter()
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .collect();
        let pods = endpointutil::selected_pods(&self.pods, &svc);
        let zone_of = |node: &str| {
            self.nodes.get(&Key::new("", node)).map(|n| {
                n.labels()
                    .get(LABEL_ZONE)
                    .filter(|z| !z.is_empty())
                    .cloned()
            })
        };
        let plan = plan(&svc, &pods, &zone_of, &existing, MAX_ENDPOINTS_PER_SLICE);
        self.apply(&key, &svc, &plan).await?;
        Ok(plan.missing_node.then_some(MISSING_NODE_RETRY))
    }

    async fn apply(&self, key: &Key, svc: &Service, plan: &Plan) -> Result<(), Error> {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &key.namespace);
        let pp = PostParams::default();
        // No new slices for a Service on its way out: the garbage collector would race us.
        if svc.metadata.deletion_timestamp.is_none() {
            for s in &plan.create {
                match api.create(&pp, s).await {
                    Ok(c) => self.written.wrote(
                        key,
                        &c.name_any(),
                        c.metadata.resource_version.as_deref(),
                    ),
                    Err(e) if endpointutil::namespace_terminating(&e) => return Ok(()),
                    Err(e) => return Err(self.failed(svc, e)),
                }
            }
        }
        for s in &plan.update {
            let name = s.name_any();
            match api.replace(&name, &pp, s).await {
                Ok(u) => self
                    .written
                    .wrote(key, &name, u.metadata.resource_version.as_deref()),
                Err(e) => return Err(self.failed(svc, e)),
            }
        }
        for name in &plan.delete {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => self.written.deleted(key, name),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(self.failed(svc, e)),
            }
        }
        Ok(())
    }

    fn failed(&self, svc: &Service, e: kube::Error) -> Error {
        // A conflict only means our cache was behind; the retry settles it quietly.
        if !matches!(&e, kube::Error::Api(s) if s.code == 409) {
            self.recorder.warning(
                svc,
                "FailedToUpdateEndpointSlices",
                format!(
                    "Error updating Endpoint Slices for Service {}/{}: {}",
                    svc.namespace().unwrap_or_default(),
                    svc.name_any(),
                    crate::claim::api_message(&e)
                ),
            );
        }
        e.into()
    }
}

/// What one reconcile writes.
#[derive(Debug, Default)]
pub struct Plan {
    pub create: Vec<EndpointSlice>,
    /// Whole slices to replace, each with the resourceVersion it was read at.
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<String>,
    /// Some pod was left out because its node is not (yet) known.
    pub missing_node: bool,
}

/// A set of ports, order aside: slices hold endpoints that share one.
type PortKey = Vec<(String, i32, String, Option<String>)>;

fn port_key(ports: &[EndpointPort]) -> PortKey {
    let mut k: PortKey = ports
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port.unwrap_or(0),
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.app_protocol.clone(),
            )
        })
        .collect();
    k.sort();
    k
}

/// What makes an endpoint the same one across syncs (upstream's endpoint hash):
/// addresses, hostname and the pod it stands for.
type EndpointId = (Vec<String>, Option<String>, Option<(String, String)>);

fn endpoint_id(ep: &Endpoint) -> EndpointId {
    (
        ep.addresses.clone(),
        ep.hostname.clone(),
        ep.target_ref.as_ref().map(|r| {
            (
                r.namespace.clone().unwrap_or_default(),
                r.name.clone().unwrap_or_default(),
            )
        }),
    )
}

/// Equal for our purposes: a pod's resourceVersion in targetRef is not a change.
fn same_endpoint(a: &Endpoint, b: &Endpoint) -> bool {
    let strip = |e: &Endpoint| {
        let mut e = e.clone();
        if let Some(r) = e.target_ref.as_mut() {
            r.resource_version = None;
        }
        e
    };
    strip(a) == strip(b)
}

/// The ports a pod serves for `svc`: one per Service port whose target resolves on it.
fn endpoint_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[]);
    ports
        .iter()
        .filter_map(|sp| {
            let port = endpointutil::find_port(pod, sp)?;
            Some(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(port),
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

/// The endpoint for a pod that belongs in the slices (see `endpointutil::in_endpoints`).
fn pod_endpoint(pod: &Pod, svc: &Service, zone: Option<String>) -> Option<Endpoint> {
    let ip = endpointutil::pod_ipv4(pod)?;
    let serving = endpointutil::is_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    // A terminating pod is never ready, unless the Service publishes not-ready addresses.
    let ready = endpointutil::publish_not_ready(svc) || (serving && !terminating);
    Some(Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
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
        zone,
        ..Default::default()
    })
}

/// A slice's labels: the Service's, then ours (service name, managed-by, headless).
/// The flag says whether the Service's own labels differ from the slice's.
fn slice_labels(
    current: Option<&BTreeMap<String, String>>,
    svc: &Service,
) -> (BTreeMap<String, String>, bool) {
    let reserved =
        |k: &str| k == LABEL_SERVICE_NAME || k == LABEL_MANAGED_BY || k == LABEL_HEADLESS;
    let theirs = |m: Option<&BTreeMap<String, String>>| -> BTreeMap<String, String> {
        m.into_iter()
            .flatten()
            .filter(|(k, _)| !reserved(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let mut labels = theirs(svc.metadata.labels.as_ref());
    let changed = theirs(current) != labels;
    if endpointutil::is_headless(svc) {
        labels.insert(LABEL_HEADLESS.into(), String::new());
    }
    labels.insert(LABEL_SERVICE_NAME.into(), svc.name_any());
    labels.insert(LABEL_MANAGED_BY.into(), CONTROLLER_NAME.into());
    (labels, changed)
}

fn new_slice(svc: &Service, ports: Vec<EndpointPort>) -> EndpointSlice {
    let name = svc.name_any();
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(slice_labels(None, svc).0),
            owner_references: Some(vec![owner_ref(
                "v1",
                "Service",
                &name,
                svc.metadata.uid.as_deref().unwrap_or(""),
            )]),
            ..Default::default()
        },
        address_type: ADDRESS_TYPE.into(),
        endpoints: Vec::new(),
        ports: Some(ports),
    }
}

fn owned_by(slice: &EndpointSlice, svc: &Service) -> bool {
    slice.owner_references().iter().any(|r| {
        Some(&r.uid) == svc.metadata.uid.as_ref() && r.kind == "Service" && r.api_version == "v1"
    })
}

/// The placeholder already there is as good as a new one (upstream's
/// placeholderSliceCompare: namespace, labels, owners, address type, nothing in it).
fn same_placeholder(a: &EndpointSlice, b: &EndpointSlice) -> bool {
    let ports = |s: &EndpointSlice| s.ports.clone().unwrap_or_default();
    a.metadata.namespace == b.metadata.namespace
        && a.metadata.labels.clone().unwrap_or_default()
            == b.metadata.labels.clone().unwrap_or_default()
        && a.owner_references() == b.owner_references()
        && a.address_type == b.address_type
        && a.endpoints.is_empty()
        && b.endpoints.is_empty()
        && ports(a) == ports(b)
}

/// Decides the writes that bring `existing` (this controller's slices of `svc`, none
/// pending deletion) to the endpoints of `pods`. `zone_of` gives a node's zone, or
/// None for a node it does not know.
pub fn plan(
    svc: &Service,
    pods: &[Arc<Pod>],
    zone_of: &dyn Fn(&str) -> Option<Option<String>>,
    existing: &[Arc<EndpointSlice>],
    max: usize,
) -> Plan {
    let mut out = Plan::default();
    let mut sorted: Vec<&EndpointSlice> = existing.iter().map(|s| &**s).collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut to_delete: Vec<&EndpointSlice> = Vec::new();
    let mut by_ports: BTreeMap<PortKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for s in sorted {
        // Another address family, or left by an earlier Service of the same name.
        if s.address_type != ADDRESS_TYPE || !owned_by(s, svc) {
            to_delete.push(s);
        } else {
            let key = port_key(s.ports.as_deref().unwrap_or(&[]));
            by_ports.entry(key).or_default().push(s);
        }
    }

    type Wanted = (Vec<EndpointPort>, BTreeMap<EndpointId, Endpoint>);
    let mut desired: BTreeMap<PortKey, Wanted> = BTreeMap::new();
    for pod in pods {
        if !endpointutil::in_endpoints(pod, true) {
            continue;
        }
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("");
        let zone = match zone_of(node) {
            Some(z) => z,
            // The user asked for every address: publish it anyway.
            None if endpointutil::publish_not_ready(svc) => None,
            None => {
                out.missing_node = true;
                continue;
            }
        };
        let Some(ep) = pod_endpoint(pod, svc, zone) else {
            continue;
        };
        let ports = endpoint_ports(svc, pod);
        let (_, eps) = desired
            .entry(port_key(&ports))
            .or_insert_with(|| (ports, BTreeMap::new()));
        eps.insert(endpoint_id(&ep), ep);
    }

    let mut creates: Vec<EndpointSlice> = Vec::new();
    let mut updates: Vec<EndpointSlice> = Vec::new();
    for (key, (ports, mut want)) in desired {
        let group = by_ports.remove(&key).unwrap_or_default();
        fill_group(
            svc,
            &group,
            &ports,
            &mut want,
            max,
            &mut creates,
            &mut updates,
            &mut to_delete,
        );
    }
    // Port sets no pod resolves to any more.
    for (_, group) in by_ports {
        to_delete.extend(group);
    }

    // A Service without endpoints keeps one empty slice, so clients can tell "no
    // endpoints" from "not processed yet".
    if existing.len() == to_delete.len() && creates.is_empty() {
        let placeholder = new_slice(svc, Vec::new());
        if to_delete.len() == 1 && same_placeholder(to_delete[0], &placeholder) {
            to_delete.clear();
        } else {
            creates.push(placeholder);
        }
    }

    // Rather than delete one slice and create another, rewrite the first in place.
    let mut i = 0;
    while i < to_delete.len() && !creates.is_empty() {
        let old = to_delete[i];
        if old.address_type == ADDRESS_TYPE && owned_by(old, svc) {
            let new = creates.pop().expect("not empty");
            let mut s = old.clone();
            s.metadata.labels = new.metadata.labels;
            s.metadata.owner_references = new.metadata.owner_references;
            s.ports = new.ports;
            s.endpoints = new.endpoints;
            updates.push(s);
            to_delete.remove(i);
        } else {
            i += 1;
        }
    }

    out.create = creates;
    out.update = updates;
    out.delete = to_delete.iter().map(|s| s.name_any()).collect();
    out
}

/// Upstream's reconcileByPortMapping for one set of ports: keep wanted endpoints where
/// they are (updating those that changed), drop the rest, then place the newcomers in
/// slices being written anyway, then in the one unchanged slice they fit best, and only
/// then in new slices.
#[allow(clippy::too_many_arguments)]
fn fill_group<'a>(
    svc: &Service,
    group: &[&'a EndpointSlice],
    ports: &[EndpointPort],
    want: &mut BTreeMap<EndpointId, Endpoint>,
    max: usize,
    creates: &mut Vec<EndpointSlice>,
    updates: &mut Vec<EndpointSlice>,
    to_delete: &mut Vec<&'a EndpointSlice>,
) {
    let mut changed: Vec<EndpointSlice> = Vec::new();
    let mut unchanged: Vec<&EndpointSlice> = Vec::new();
    for &s in group {
        let mut kept = Vec::new();
        let mut differs = false;
        for ep in &s.endpoints {
            if let Some(d) = want.remove(&endpoint_id(ep)) {
                differs |= !same_endpoint(&d, ep);
                kept.push(d);
            }
        }
        let (labels, labels_changed) = slice_labels(s.metadata.labels.as_ref(), svc);
        if differs || kept.len() != s.endpoints.len() {
            if kept.is_empty() {
                to_delete.push(s);
            } else {
                let mut c = s.clone();
                c.endpoints = kept;
                c.metadata.labels = Some(labels);
                changed.push(c);
            }
        } else if labels_changed {
            let mut c = s.clone();
            c.metadata.labels = Some(labels);
            changed.push(c);
        } else {
            unchanged.push(s);
        }
    }

    if !want.is_empty() {
        // Fullest first, so slices fill up rather than all grow a little.
        changed.sort_by_key(|s| std::cmp::Reverse(s.endpoints.len()));
        for s in changed.iter_mut() {
            while s.endpoints.len() < max {
                let Some((_, ep)) = want.pop_first() else {
                    break;
                };
                s.endpoints.push(ep);
            }
        }
    }

    while !want.is_empty() {
        let mut slice = None;
        if want.len() < max {
            if let Some(i) = slice_to_fill(&unchanged, want.len(), max) {
                slice = Some(unchanged.remove(i).clone());
            }
        }
        let mut s = slice.unwrap_or_else(|| new_slice(svc, ports.to_vec()));
        while s.endpoints.len() < max {
            let Some((_, ep)) = want.pop_first() else {
                break;
            };
            s.endpoints.push(ep);
        }
        if s.metadata.name.is_some() {
            changed.push(s);
        } else {
            creates.push(s);
        }
    }
    updates.extend(changed);
}

/// The unchanged slice that ends up closest to full with `n` more endpoints.
fn slice_to_fill(slices: &[&EndpointSlice], n: usize, max: usize) -> Option<usize> {
    slices
        .iter()
        .enumerate()
        .filter(|(_, s)| s.endpoints.len() + n <= max)
        .min_by_key(|(_, s)| max - (s.endpoints.len() + n))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodIP, PodSpec, PodStatus, ServicePort, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn svc(ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("svc-uid".into()),
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

    fn sport(name: &str, port: i32, target: IntOrString) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            port,
            target_port: Some(target),
            protocol: Some("TCP".into()),
            ..Default::default()
        }
    }

    fn pod(name: &str, ip: &str, ready: bool, http_port: i32) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: http_port,
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip.into()),
                pod_ips: Some(vec![PodIP { ip: ip.into() }]),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn terminating(p: &Arc<Pod>) -> Arc<Pod> {
        let mut p = (**p).clone();
        p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        Arc::new(p)
    }

    fn zone(_: &str) -> Option<Option<String>> {
        Some(Some("z1".into()))
    }

    /// Stands in for the API server: created slices get names and a version.
    fn store(plan: &Plan, existing: &[Arc<EndpointSlice>]) -> Vec<Arc<EndpointSlice>> {
        let mut out: Vec<Arc<EndpointSlice>> = existing
            .iter()
            .filter(|s| !plan.delete.contains(&s.name_any()))
            .filter(|s| !plan.update.iter().any(|u| u.name_any() == s.name_any()))
            .cloned()
            .collect();
        out.extend(plan.update.iter().cloned().map(Arc::new));
        for (i, s) in plan.create.iter().enumerate() {
            let mut s = s.clone();
            s.metadata.name = Some(format!("web-{}{i}", out.len()));
            out.push(Arc::new(s));
        }
        out
    }

    fn conds(ep: &Endpoint) -> (bool, bool, bool) {
        let c = ep.conditions.as_ref().unwrap();
        (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
    }

    fn find<'a>(slices: &'a [Arc<EndpointSlice>], pod: &str) -> &'a Endpoint {
        slices
            .iter()
            .flat_map(|s| &s.endpoints)
            .find(|e| e.target_ref.as_ref().unwrap().name.as_deref() == Some(pod))
            .unwrap()
    }

    #[test]
    fn ready_not_ready_and_terminating_pods() {
        let s = svc(vec![sport("http", 80, IntOrString::String("http".into()))]);
        let a = pod("a", "10.0.0.1", true, 8080);
        let b = pod("b", "10.0.0.2", false, 8080);
        let c = terminating(&pod("c", "10.0.0.3", true, 8080));
        let p = plan(&s, &[a, b, c], &zone, &[], 100);
        assert_eq!(p.create.len(), 1);
        assert!(p.update.is_empty() && p.delete.is_empty());
        let slice = &p.create[0];
        assert_eq!(slice.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(slice.address_type, "IPv4");
        let labels = slice.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_SERVICE_NAME], "web");
        assert_eq!(labels[LABEL_MANAGED_BY], CONTROLLER_NAME);
        assert_eq!(labels["team"], "a");
        assert!(!labels.contains_key(LABEL_HEADLESS));
        let owner = &slice.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Service", "svc-uid")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
        let port = &slice.ports.as_ref().unwrap()[0];
        assert_eq!(port.port, Some(8080));
        assert_eq!(port.name.as_deref(), Some("http"));
        let all = vec![Arc::new(slice.clone())];
        assert_eq!(conds(find(&all, "a")), (true, true, false));
        assert_eq!(conds(find(&all, "b")), (false, false, false));
        assert_eq!(conds(find(&all, "c")), (false, true, true));
        let a = find(&all, "a");
        assert_eq!(a.addresses, vec!["10.0.0.1"]);
        assert_eq!(a.node_name.as_deref(), Some("n1"));
        assert_eq!(a.zone.as_deref(), Some("z1"));
        assert_eq!(a.target_ref.as_ref().unwrap().uid.as_deref(), Some("uid-a"));
    }

    #[test]
    fn publish_not_ready_makes_every_pod_ready() {
        let mut s = svc(vec![sport("http", 80, IntOrString::Int(8080))]);
        s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let c = terminating(&pod("c", "10.0.0.3", false, 8080));
        let p = plan(&s, &[pod("b", "10.0.0.2", false, 8080), c], &zone, &[], 100);
        let all = store(&p, &[]);
        assert_eq!(conds(find(&all, "b")), (true, false, false));
        assert_eq!(conds(find(&all, "c")), (true, false, true));
    }

    #[test]
    fn finished_unaddressed_and_nodeless_pods_are_left_out() {
        let s = svc(vec![sport("http", 80, IntOrString::Int(8080))]);
        let mut done = (*pod("done", "10.0.0.4", false, 8080)).clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut pending = (*pod("pending", "", false, 8080)).clone();
        pending.status.as_mut().unwrap().pod_ip = None;
        pending.status.as_mut().unwrap().pod_ips = None;
        let pods = [
            Arc::new(done),
            Arc::new(pending),
            pod("ok", "10.0.0.5", true, 8080),
        ];
        let p = plan(&s, &pods, &zone, &[], 100);
        let all = store(&p, &[]);
        assert_eq!(all.iter().map(|s| s.endpoints.len()).sum::<usize>(), 1);
        let unknown = |_: &str| None;
        let p = plan(&s, &pods, &unknown, &[], 100);
        assert!(p.missing_node);
        assert_eq!(p.create.len(), 1, "a placeholder");
        assert!(p.create[0].endpoints.is_empty());
    }

    #[test]
    fn named_ports_group_pods_by_resolution() {
        let s = svc(vec![
            sport("http", 80, IntOrString::String("http".into())),
            sport("missing", 81, IntOrString::String("nope".into())),
        ]);
        let pods = [
            pod("a", "10.0.0.1", true, 8080),
            pod("b", "10.0.0.2", true, 8080),
            pod("c", "10.0.0.3", true, 9090),
        ];
        let p = plan(&s, &pods, &zone, &[], 100);
        assert_eq!(p.create.len(), 2);
        let mut got: Vec<(Vec<i32>, Vec<String>)> = p
            .create
            .iter()
            .map(|s| {
                (
                    s.ports.iter().flatten().map(|p| p.port.unwrap()).collect(),
                    s.endpoints.iter().map(|e| e.addresses[0].clone()).collect(),
                )
            })
            .collect();
        got.sort();
        // The port no container names is dropped; the other resolves per pod.
        assert_eq!(
            got,
            vec![
                (
                    vec![8080],
                    vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()]
                ),
                (vec![9090], vec!["10.0.0.3".to_string()]),
            ]
        );
    }

    #[test]
    fn a_hundred_endpoints_per_slice() {
        let s = svc(vec![sport("http", 80, IntOrString::Int(8080))]);
        let pods: Vec<_> = (0..250)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    &format!("10.0.{}.{}", i / 200, i % 200 + 1),
                    true,
                    8080,
                )
            })
            .collect();
        let p = plan(&s, &pods, &zone, &[], 100);
        let mut sizes: Vec<usize> = p.create.iter().map(|s| s.endpoints.len()).collect();
        sizes.sort();
        assert_eq!(sizes, vec![50, 100, 100]);
        // Thirty more fit in the slice with room instead of a new one.
        let stored = store(&p, &[]);
        let more: Vec<_> = (250..280)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    &format!("10.0.{}.{}", i / 200, i % 200 + 1),
                    true,
                    8080,
                )
            })
            .chain(pods.iter().cloned())
            .collect();
        let p = plan(&s, &more, &zone, &stored, 100);
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].endpoints.len(), 80);
    }

    #[test]
    fn unchanged_pods_write_nothing_and_changes_update_in_place() {
        let s = svc(vec![sport("http", 80, IntOrString::String("http".into()))]);
        let pods = vec![
            pod("a", "10.0.0.1", true, 8080),
            pod("b", "10.0.0.2", true, 8080),
        ];
        let stored = store(&plan(&s, &pods, &zone, &[], 100), &[]);
        let again = plan(&s, &pods, &zone, &stored, 100);
        assert!(again.create.is_empty() && again.update.is_empty() && again.delete.is_empty());

        // b turns unready: the same slice is rewritten.
        let flipped = vec![pods[0].clone(), pod("b", "10.0.0.2", false, 8080)];
        let p = plan(&s, &flipped, &zone, &stored, 100);
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].name_any(), stored[0].name_any());
        assert!(!conds(find(&[Arc::new(p.update[0].clone())], "b")).0);

        // Every pod moves to another port: the slice is reused, not deleted and recreated.
        let moved = vec![
            pod("a", "10.0.0.1", true, 9090),
            pod("b", "10.0.0.2", true, 9090),
        ];
        let p = plan(&s, &moved, &zone, &stored, 100);
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert_eq!(p.update[0].name_any(), stored[0].name_any());
        assert_eq!(p.update[0].ports.as_ref().unwrap()[0].port, Some(9090));

        // A changed Service label is copied onto the slice.
        let mut relabelled = s.clone();
        relabelled.metadata.labels = Some([("team".to_string(), "b".to_string())].into());
        let p = plan(&relabelled, &pods, &zone, &stored, 100);
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].metadata.labels.as_ref().unwrap()["team"], "b");
    }

    #[test]
    fn no_pods_keep_one_empty_placeholder() {
        let s = svc(vec![sport("http", 80, IntOrString::Int(8080))]);
        let p = plan(&s, &[], &zone, &[], 100);
        assert_eq!(p.create.len(), 1);
        assert!(p.create[0].endpoints.is_empty());
        assert_eq!(p.create[0].ports.as_deref(), Some(&[][..]));
        let stored = store(&p, &[]);
        let again = plan(&s, &[], &zone, &stored, 100);
        assert!(again.create.is_empty() && again.update.is_empty() && again.delete.is_empty());

        // Scaling to zero turns the last slice into the placeholder in place.
        let pods = vec![pod("a", "10.0.0.1", true, 8080)];
        let full = store(&plan(&s, &pods, &zone, &[], 100), &[]);
        let p = plan(&s, &[], &zone, &full, 100);
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert_eq!(p.update.len(), 1);
        assert!(p.update[0].endpoints.is_empty());
        // And pods coming back reuse the placeholder.
        let empty = store(&p, &full);
        let p = plan(&s, &pods, &zone, &empty, 100);
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].endpoints.len(), 1);
    }

    #[test]
    fn slices_of_another_owner_are_replaced() {
        let s = svc(vec![sport("http", 80, IntOrString::Int(8080))]);
        let pods = vec![pod("a", "10.0.0.1", true, 8080)];
        let mut stale = (*store(&plan(&s, &pods, &zone, &[], 100), &[])[0]).clone();
        stale.metadata.owner_references.as_mut().unwrap()[0].uid = "old-uid".into();
        let p = plan(&s, &pods, &zone, &[Arc::new(stale.clone())], 100);
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.delete, vec![stale.name_any()]);
    }

    #[test]
    fn headless_pods_get_their_hostname() {
        let mut s = svc(vec![]);
        s.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let mut with_host = (*pod("db-0", "10.0.0.7", true, 8080)).clone();
        let spec = with_host.spec.as_mut().unwrap();
        spec.hostname = Some("db-0".into());
        spec.subdomain = Some("web".into());
        let mut other_sub = (*pod("db-1", "10.0.0.8", true, 8080)).clone();
        let spec = other_sub.spec.as_mut().unwrap();
        spec.hostname = Some("db-1".into());
        spec.subdomain = Some("elsewhere".into());
        let p = plan(
            &s,
            &[Arc::new(with_host), Arc::new(other_sub)],
            &zone,
            &[],
            100,
        );
        let all = store(&p, &[]);
        assert_eq!(find(&all, "db-0").hostname.as_deref(), Some("db-0"));
        assert_eq!(find(&all, "db-1").hostname, None);
        assert_eq!(all[0].metadata.labels.as_ref().unwrap()[LABEL_HEADLESS], "");
        assert_eq!(all[0].ports.as_deref(), Some(&[][..]));
    }
}
