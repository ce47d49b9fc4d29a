//! What the EndpointSlice and Endpoints controllers share: which Services get endpoints
//! from a controller, which pods they select, how a Service port resolves against a pod,
//! the fan-out from a pod change to the Services that select it, and a record of our own
//! writes so a reconcile never acts on a cache that has not seen them yet.

use crate::informer::{Change, Informer, Key};
use crate::podutil;
use crate::queue::Queue;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The label that ties an EndpointSlice (and a headless label) to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

/// The selector of a Service whose endpoints a controller maintains: one with a
/// non-empty selector that is not an ExternalName. Others are left to their users (an
/// empty selector is no selector: Kubernetes' JSON drops an empty map).
pub fn managed_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

/// A Service selector (a plain label map) matches these labels.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The pods of `svc`'s namespace its selector picks (none without a managed selector).
pub fn selected_pods(pods: &Informer<Pod>, svc: &Service) -> Vec<std::sync::Arc<Pod>> {
    let Some(sel) = managed_selector(svc) else {
        return Vec::new();
    };
    let ns = svc.namespace().unwrap_or_default();
    let mut out: Vec<_> = pods
        .list_namespace(&ns)
        .into_iter()
        .filter(|p| selects(sel, p.labels()))
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

/// Kubernetes' ShouldPodBeInEndpoints: not finished, has an address, and not being
/// deleted unless terminating pods are wanted.
pub fn in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded") | Some("Failed")) {
        return false;
    }
    if pod_ipv4(pod).is_none() {
        return false;
    }
    include_terminating || pod.metadata.deletion_timestamp.is_none()
}

/// The pod's IPv4 address (status.podIPs first, then status.podIP): this cluster's
/// Services are single-stack IPv4.
pub fn pod_ipv4(pod: &Pod) -> Option<String> {
    let st = pod.status.as_ref()?;
    let from_list = st.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    from_list
        .chain(st.pod_ip.as_deref())
        .find_map(|ip| ip.parse::<std::net::Ipv4Addr>().ok())
        .map(|ip| ip.to_string())
}

pub fn is_ready(pod: &Pod) -> bool {
    podutil::is_ready(pod)
}

/// The port a Service port reaches on this pod (Kubernetes' FindPort): a number as is,
/// a name looked up in the containers' ports (and restartable init containers') with the
/// same protocol. None when the pod has no such named port.
pub fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// A pod's hostname is published when its subdomain names this Service (StatefulSet
/// pods behind their headless Service), so `<hostname>.<svc>` resolves.
pub fn hostname_for(pod: &Pod, svc: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let host = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    let same = spec.subdomain.as_deref() == svc.metadata.name.as_deref()
        && pod.metadata.namespace == svc.metadata.namespace;
    same.then(|| host.to_string())
}

/// A Service without a cluster IP (`None` or unset) is headless.
pub fn is_headless(svc: &Service) -> bool {
    let ip = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
    matches!(ip, None | Some("") | Some("None"))
}

pub fn publish_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

/// Whether a pod change can alter any endpoint built from it; pods are updated often
/// (status heartbeats, annotations) and most of it is irrelevant here.
fn endpoint_fields_changed(a: &Pod, b: &Pod) -> bool {
    let view = |p: &Pod| {
        let spec = p.spec.as_ref();
        (
            p.metadata.uid.clone(),
            p.metadata.deletion_timestamp.is_some(),
            p.status.as_ref().and_then(|s| s.phase.clone()),
            pod_ipv4(p),
            is_ready(p),
            spec.and_then(|s| s.node_name.clone()),
            spec.and_then(|s| s.hostname.clone()),
            spec.and_then(|s| s.subdomain.clone()),
            spec.map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
                    .map(|c| c.ports.clone())
                    .collect::<Vec<_>>()
            }),
        )
    };
    view(a) != view(b)
}

/// Queues, for every pod change, each Service that selects the pod now or selected it
/// before (a relabelled pod leaves one Service and joins another); a deleted pod queues
/// the Services that selected it.
pub fn queue_services_of_pods(pods: &Informer<Pod>, services: &Informer<Service>, q: Queue) {
    let services = services.clone();
    pods.on_change(move |c| {
        let (old, new) = match c {
            Change::Applied { old, new } => (*old, *new),
            Change::Deleted(p) => (None, *p),
        };
        if let Some(old) = old {
            if old.labels() == new.labels() && !endpoint_fields_changed(old, new) {
                return;
            }
        }
        let ns = new.namespace().unwrap_or_default();
        for svc in services.list_namespace(&ns) {
            let Some(sel) = managed_selector(&svc) else {
                continue;
            };
            if selects(sel, new.labels()) || old.is_some_and(|o| selects(sel, o.labels())) {
                q.add(Key::of(&*svc));
            }
        }
    });
}

/// The Services that select pods bound to `node` (a node's zone feeds their endpoints).
pub fn services_on_node(
    pods: &Informer<Pod>,
    services: &Informer<Service>,
    node: &str,
) -> HashSet<Key> {
    let mut keys = HashSet::new();
    // Nodes come and go by the thousand in benchmarks: scan pods only when it can matter.
    if services.list(|s| managed_selector(s).is_some()).is_empty() {
        return keys;
    }
    let on_node = pods.list(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node));
    for pod in on_node {
        for svc in services.list_namespace(&pod.namespace().unwrap_or_default()) {
            if managed_selector(&svc).is_some_and(|sel| selects(sel, pod.labels())) {
                keys.insert(Key::of(&*svc));
            }
        }
    }
    keys
}

/// A create refused because the namespace is being deleted: nothing to do there.
pub fn namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403 && s.message.contains("because it is being terminated"))
}

/// How long a write of ours may go unseen by the informer before we stop waiting for it
/// (someone else may have replaced the object meanwhile).
const WRITE_PATIENCE: Duration = Duration::from_secs(30);

/// Objects this controller wrote per Service, until its informer shows them: a reconcile
/// that read a cache without them would create duplicates or skip a needed write (a
/// pod that flips back and forth compares equal to a cache that missed the first flip).
#[derive(Default)]
pub struct Written {
    pending: Mutex<HashMap<Key, Pending>>,
}

struct Pending {
    /// Object name -> the resourceVersion our write returned.
    versions: HashMap<String, String>,
    deleted: HashSet<String>,
    since: Instant,
}

impl Written {
    fn entry<'a>(map: &'a mut HashMap<Key, Pending>, svc: &Key) -> &'a mut Pending {
        let p = map.entry(svc.clone()).or_insert_with(|| Pending {
            versions: HashMap::new(),
            deleted: HashSet::new(),
            since: Instant::now(),
        });
        p.since = Instant::now();
        p
    }

    pub fn wrote(&self, svc: &Key, name: &str, resource_version: Option<&str>) {
        let mut map = self.pending.lock().unwrap();
        let p = Self::entry(&mut map, svc);
        p.deleted.remove(name);
        p.versions
            .insert(name.to_string(), resource_version.unwrap_or("").to_string());
    }

    pub fn deleted(&self, svc: &Key, name: &str) {
        let mut map = self.pending.lock().unwrap();
        let p = Self::entry(&mut map, svc);
        p.versions.remove(name);
        p.deleted.insert(name.to_string());
    }

    /// The informer saw the object go: a write of ours to it is moot.
    pub fn observed_delete(&self, svc: &Key, name: &str) {
        if let Some(p) = self.pending.lock().unwrap().get_mut(svc) {
            p.versions.remove(name);
        }
    }

    pub fn forget(&self, svc: &Key) {
        self.pending.lock().unwrap().remove(svc);
    }

    /// True while the cache (`cached`: name -> resourceVersion) lags behind our writes.
    pub fn stale(&self, svc: &Key, cached: impl Fn(&str) -> Option<String>) -> bool {
        let mut map = self.pending.lock().unwrap();
        let Some(p) = map.get(svc) else {
            return false;
        };
        if p.since.elapsed() > WRITE_PATIENCE {
            map.remove(svc);
            return false;
        }
        let writes_seen = p
            .versions
            .iter()
            .all(|(name, rv)| cached(name).is_some_and(|have| version_at_least(&have, rv)));
        let deletes_seen = p.deleted.iter().all(|name| cached(name).is_none());
        if writes_seen && deletes_seen {
            map.remove(svc);
            return false;
        }
        true
    }
}

/// resourceVersions are opaque, but every server we talk to uses increasing integers;
/// anything else counts as seen only when equal.
fn version_at_least(have: &str, want: &str) -> bool {
    match (have.parse::<u64>(), want.parse::<u64>()) {
        (Ok(h), Ok(w)) => h >= w,
        _ => have == want,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, PodStatus, ServiceSpec};

    fn pod_with_ports(ports: Vec<ContainerPort>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(ports),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some("10.1.0.5".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn cport(name: &str, port: i32, proto: &str) -> ContainerPort {
        ContainerPort {
            name: Some(name.into()),
            container_port: port,
            protocol: Some(proto.into()),
            ..Default::default()
        }
    }

    #[test]
    fn named_target_ports_resolve_by_name_and_protocol() {
        let pod = pod_with_ports(vec![cport("dns", 5353, "UDP"), cport("http", 8080, "TCP")]);
        let sp = |target: IntOrString, proto: &str| ServicePort {
            port: 80,
            target_port: Some(target),
            protocol: Some(proto.into()),
            ..Default::default()
        };
        assert_eq!(
            find_port(&pod, &sp(IntOrString::String("http".into()), "TCP")),
            Some(8080)
        );
        assert_eq!(
            find_port(&pod, &sp(IntOrString::String("dns".into()), "TCP")),
            None
        );
        assert_eq!(
            find_port(&pod, &sp(IntOrString::String("dns".into()), "UDP")),
            Some(5353)
        );
        assert_eq!(
            find_port(&pod, &sp(IntOrString::String("nope".into()), "TCP")),
            None
        );
        assert_eq!(
            find_port(&pod, &sp(IntOrString::Int(9000), "TCP")),
            Some(9000)
        );
    }

    #[test]
    fn external_name_and_empty_selectors_are_not_managed() {
        let svc = |ty: &str, sel: Option<&[(&str, &str)]>| Service {
            spec: Some(ServiceSpec {
                type_: Some(ty.into()),
                selector: sel.map(|s| {
                    s.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(managed_selector(&svc("ClusterIP", Some(&[("app", "web")]))).is_some());
        assert!(managed_selector(&svc("ClusterIP", Some(&[]))).is_none());
        assert!(managed_selector(&svc("ClusterIP", None)).is_none());
        assert!(managed_selector(&svc("ExternalName", Some(&[("app", "web")]))).is_none());
    }

    #[test]
    fn written_objects_are_awaited_until_the_cache_has_them() {
        let w = Written::default();
        let k = Key::new("ns", "web");
        assert!(!w.stale(&k, |_| None));
        w.wrote(&k, "web-abcde", Some("10"));
        assert!(w.stale(&k, |_| None));
        assert!(w.stale(&k, |_| Some("9".into())));
        assert!(!w.stale(&k, |_| Some("11".into())));
        // Seen once: forgotten.
        assert!(!w.stale(&k, |_| None));
        w.deleted(&k, "web-abcde");
        assert!(w.stale(&k, |_| Some("11".into())));
        assert!(!w.stale(&k, |_| None));
        w.wrote(&k, "web-x", Some("12"));
        w.observed_delete(&k, "web-x");
        assert!(!w.stale(&k, |_| None));
    }
}
