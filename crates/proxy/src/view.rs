//! The node proxy's picture of the cluster: every Service with the endpoints its
//! EndpointSlices list, rebuilt from two watches and published as one immutable snapshot.
//! Readers (the L4 listeners, DNS) take the current snapshot per connection or query, so a
//! change never touches a connection already running.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Names a Service: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub(crate) fn parse(s: Option<&str>) -> Protocol {
        match s {
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            _ => Protocol::Tcp,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

/// One port of a Service as its spec says.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    pub app_protocol: Option<String>,
    pub target_port: Option<IntOrString>,
}

/// One port an endpoint listens on, from its EndpointSlice (already resolved from a named
/// targetPort by the endpointslice controller).
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One endpoint of a Service: an address with the conditions the proxy and DNS decide on.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    pub hostname: Option<String>,
    pub node_name: Option<String>,
    /// The pod behind it, if any (namespace/name), for telemetry and affinity.
    pub target: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub ports: Arc<Vec<EndpointPort>>,
    /// The labels of the pod behind it (DestinationRule subsets select on them).
    pub labels: Arc<BTreeMap<String, String>>,
    /// The pod's workload, for telemetry.
    pub workload: Option<Arc<crate::telemetry::Workload>>,
}

impl Endpoint {
    /// The port this endpoint serves for the Service port named `name` with `protocol`.
    pub fn port_for(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceInfo {
    pub key: ServiceKey,
    pub kind: ServiceType,
    /// Empty for a headless Service (clusterIP: None).
    pub cluster_ips: Vec<IpAddr>,
    pub headless: bool,
    pub external_name: Option<String>,
    pub ports: Vec<ServicePort>,
    /// ClientIP session affinity and its timeout.
    pub affinity: Option<Duration>,
    pub publish_not_ready: bool,
    /// Which endpoints each kind of traffic may reach.
    pub traffic: TrafficPolicies,
    pub endpoints: Vec<Endpoint>,
}

/// A Service's externalTrafficPolicy and internalTrafficPolicy: `Local` keeps traffic on
/// the node it arrived at (an external client's source address survives, no second hop);
/// false is `Cluster`, every endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficPolicies {
    /// NodePort and LoadBalancer traffic goes to this node's endpoints only.
    pub external_local: bool,
    /// Cluster IP traffic goes to this node's endpoints only.
    pub internal_local: bool,
    /// Where an outside balancer asks whether this node has endpoints (a LoadBalancer
    /// with externalTrafficPolicy Local).
    pub health_check_node_port: Option<u16>,
}

/// An Istio resource as the proxy keeps it: where it lives, when it was made (the oldest
/// wins when two claim the same host, as in Istio) and its parsed spec.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshResource<S> {
    pub namespace: String,
    pub name: String,
    pub created: String,
    pub spec: S,
}

/// TLS Secrets by (namespace, name): certificate chain and private key, PEM.
pub type TlsSecrets = std::collections::HashMap<(String, String), Arc<(Vec<u8>, Vec<u8>)>>;

pub type VirtualService = MeshResource<crate::mesh::config::VirtualServiceSpec>;
pub type DestinationRule = MeshResource<crate::mesh::config::DestinationRuleSpec>;

/// Everything the proxy and DNS answer from, at one moment.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub services: BTreeMap<ServiceKey, ServiceInfo>,
    /// Running pods by address (the source of a connection).
    pub pods_by_ip: Arc<std::collections::HashMap<IpAddr, Arc<PodMeta>>>,
    pub authorization_policies: Vec<Arc<crate::mesh::authz::AuthorizationPolicy>>,
    pub ingresses: Vec<Arc<k8s_openapi::api::networking::v1::Ingress>>,
    /// The IngressClass annotated as the cluster's default, if any.
    pub default_ingress_class: Option<String>,
    /// TLS Secrets (certificate chain and key, PEM) by namespace and name.
    pub tls_secrets: TlsSecrets,
    pub virtual_services: Vec<Arc<VirtualService>>,
    pub destination_rules: Vec<Arc<DestinationRule>>,
    /// NetworkPolicies, and the namespaces' labels their namespaceSelectors match.
    pub network_policies: Vec<Arc<NetworkPolicy>>,
    pub namespaces: Arc<std::collections::HashMap<String, Arc<BTreeMap<String, String>>>>,
    pub peer_authentications: Vec<Arc<crate::mesh::peerauth::PeerAuthentication>>,
    /// The Gateway API's objects (empty when their CRDs are not served).
    pub gateway_api: Arc<GatewayApi>,
}

/// GatewayClasses, Gateways, HTTPRoutes and ReferenceGrants, oldest first.
#[derive(Clone, Debug, Default)]
pub struct GatewayApi {
    pub classes: Vec<gw::Obj<gw::GatewayClassSpec>>,
    pub gateways: Vec<gw::Obj<gw::GatewaySpec>>,
    pub routes: Vec<gw::Obj<gw::HttpRouteSpec>>,
    pub grants: Vec<gw::Obj<gw::ReferenceGrantSpec>>,
}

use corral_apimachinery::gateway as gw;

pub use crate::pods::{PodMeta, Pods as PodLabels};

impl ClusterView {
    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServiceInfo> {
        self.services.get(&ServiceKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    /// Builds the view from the Services and EndpointSlices as they are now. Slices are
    /// tied to their Service by the `kubernetes.io/service-name` label, as kube-proxy does.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> ClusterView {
        Self::build_with(services, slices, &PodLabels::new())
    }

    /// As [`ClusterView::build`], with each endpoint's pod labels looked up in `pods`.
    pub fn build_with<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        pods: &PodLabels,
    ) -> ClusterView {
        let mut by_service: BTreeMap<ServiceKey, Vec<Endpoint>> = BTreeMap::new();
        for slice in slices {
            if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
                continue;
            }
            let Some(svc) = slice.labels().get("kubernetes.io/service-name") else {
                continue;
            };
            let key = ServiceKey {
                namespace: slice.namespace().unwrap_or_default(),
                name: svc.clone(),
            };
            let ports = Arc::new(
                slice
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|p| {
                        Some(EndpointPort {
                            name: p.name.clone().unwrap_or_default(),
                            protocol: Protocol::parse(p.protocol.as_deref()),
                            port: u16::try_from(p.port?).ok()?,
                        })
                    })
                    .collect::<Vec<_>>(),
            );
            let list = by_service.entry(key).or_default();
            for ep in &slice.endpoints {
                let cond = ep.conditions.as_ref();
                // Upstream: a nil ready means ready; nil serving means as ready; nil
                // terminating means not terminating.
                let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
                let addresses: Vec<IpAddr> =
                    ep.addresses.iter().filter_map(|a| a.parse().ok()).collect();
                if addresses.is_empty() {
                    continue;
                }
                let target = ep.target_ref.as_ref().and_then(|r| {
                    Some(format!(
                        "{}/{}",
                        r.namespace.clone().unwrap_or_default(),
                        r.name.clone()?
                    ))
                });
                let meta = target.as_ref().and_then(|t| pods.get(t));
                list.push(Endpoint {
                    addresses,
                    hostname: ep.hostname.clone(),
                    node_name: ep.node_name.clone(),
                    labels: meta.map(|m| m.labels.clone()).unwrap_or_default(),
                    workload: meta.map(|m| m.workload.clone()),
                    target,
                    ready,
                    serving,
                    terminating,
                    ports: ports.clone(),
                });
            }
        }
        let mut view = ClusterView::default();
        let mut by_ip = std::collections::HashMap::new();
        for p in pods.values().filter(|p| !p.finished) {
            for ip in &p.ips {
                by_ip.insert(*ip, p.clone());
            }
        }
        view.pods_by_ip = Arc::new(by_ip);
        for svc in services {
            let Some(info) = service_info(svc, &mut by_service) else {
                continue;
            };
            view.services.insert(info.key.clone(), info);
        }
        view
    }
}

fn service_info(
    svc: &Service,
    endpoints: &mut BTreeMap<ServiceKey, Vec<Endpoint>>,
) -> Option<ServiceInfo> {
    let spec = svc.spec.as_ref()?;
    let key = ServiceKey {
        namespace: svc.namespace().unwrap_or_default(),
        name: svc.name_any(),
    };
    let kind = match spec.type_.as_deref() {
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        _ => ServiceType::ClusterIp,
    };
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let mut cluster_ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if cluster_ips.is_empty() {
        cluster_ips.extend(
            spec.cluster_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let secs = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .unwrap_or(10_800);
        Duration::from_secs(secs.max(1) as u64)
    });
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(ServicePort {
                name: p.name.clone().unwrap_or_default(),
                protocol: Protocol::parse(p.protocol.as_deref()),
                port: u16::try_from(p.port).ok()?,
                node_port: p.node_port.and_then(|n| u16::try_from(n).ok()),
                app_protocol: p.app_protocol.clone(),
                target_port: p.target_port.clone(),
            })
        })
        .collect();
    Some(ServiceInfo {
        endpoints: endpoints.remove(&key).unwrap_or_default(),
        key,
        kind,
        cluster_ips,
        headless,
        external_name: spec.external_name.clone(),
        ports,
        affinity,
        publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
        traffic: TrafficPolicies {
            external_local: matches!(kind, ServiceType::NodePort | ServiceType::LoadBalancer)
                && spec.external_traffic_policy.as_deref() == Some("Local"),
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            health_check_node_port: spec
                .health_check_node_port
                .filter(|_| kind == ServiceType::LoadBalancer)
                .and_then(|p| u16::try_from(p).ok()),
        },
    })
}

/// Watches Services, EndpointSlices, pod labels, NetworkPolicies, Namespaces and the
/// mesh's Istio resources and publishes a new [`ClusterView`] after every burst of
/// changes. The first view is published only once Services, slices, pods, policies and
/// namespaces have been listed, so a restart never briefly answers from an empty cluster
/// (nor opens what a policy closes). The Istio kinds are optional: without their CRDs the
/// view simply has none.
pub fn watch_cluster(client: Client) -> (watch::Receiver<Arc<ClusterView>>, impl FnOnce()) {
    let (tx, rx) = watch::channel(Arc::new(ClusterView::default()));
    let changed = Arc::new(Notify::new());
    let (services, svc_task) = reflect::<Service>(client.clone(), changed.clone());
    let (slices, slice_task) = reflect::<EndpointSlice>(client.clone(), changed.clone());
    let (pods, pod_task) = crate::pods::watch_pods(client.clone(), changed.clone());
    let (ingresses, ing_task) =
        reflect::<k8s_openapi::api::networking::v1::Ingress>(client.clone(), changed.clone());
    let (classes, class_task) =
        reflect::<k8s_openapi::api::networking::v1::IngressClass>(client.clone(), changed.clone());
    let (secrets, secret_task) = reflect_tls_secrets(client.clone(), changed.clone());
    let networking = "networking.istio.io";
    let security = "security.istio.io";
    let (vss, vs_task) = reflect_istio(
        &client,
        networking,
        "VirtualService",
        "virtualservices",
        &changed,
    );
    let (drs, dr_task) = reflect_istio(
        &client,
        networking,
        "DestinationRule",
        "destinationrules",
        &changed,
    );
    let (aps, ap_task) = reflect_istio(
        &client,
        security,
        "AuthorizationPolicy",
        "authorizationpolicies",
        &changed,
    );
    let (netpols, netpol_task) = reflect::<NetworkPolicy>(client.clone(), changed.clone());
    let (namespaces, ns_task) = reflect::<Namespace>(client.clone(), changed.clone());
    let (pas, pa_task) = reflect_istio(
        &client,
        security,
        "PeerAuthentication",
        "peerauthentications",
        &changed,
    );
    let gwapi = "gateway.networking.k8s.io";
    let (gw_classes, gwc_task) = reflect_kind(
        &client,
        gwapi,
        "v1",
        "GatewayClass",
        "gatewayclasses",
        &changed,
    );
    let (gateways, gw_task) = reflect_kind(&client, gwapi, "v1", "Gateway", "gateways", &changed);
    let (routes, route_task) =
        reflect_kind(&client, gwapi, "v1", "HTTPRoute", "httproutes", &changed);
    let (grants, grant_task) = reflect_kind(
        &client,
        gwapi,
        "v1beta1",
        "ReferenceGrant",
        "referencegrants",
        &changed,
    );
    let builder = tokio::spawn(async move {
        if services.wait_until_ready().await.is_err() || slices.wait_until_ready().await.is_err() {
            return;
        }
        if netpols.wait_until_ready().await.is_err() || namespaces.wait_until_ready().await.is_err()
        {
            return;
        }
        pods.wait_until_ready().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), ingresses.wait_until_ready()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), classes.wait_until_ready()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), secrets.wait_until_ready()).await;
        for store in [
            &vss,
            &drs,
            &aps,
            &pas,
            &gw_classes,
            &gateways,
            &routes,
            &grants,
        ] {
            let _ = tokio::time::timeout(Duration::from_secs(2), store.wait_until_ready()).await;
        }
        loop {
            let labels = pods.snapshot();
            let svcs = services.state();
            let eps = slices.state();
            let mut view = ClusterView::build_with(
                svcs.iter().map(|s| &**s),
                eps.iter().map(|s| &**s),
                &labels,
            );
            view.virtual_services = parse_istio(&vss.state());
            view.destination_rules = parse_istio(&drs.state());
            view.authorization_policies = parse_istio(&aps.state());
            view.ingresses = ingresses.state();
            view.default_ingress_class = classes
                .state()
                .iter()
                .find(|c| {
                    c.annotations()
                        .get("ingressclass.kubernetes.io/is-default-class")
                        .is_some_and(|v| v == "true")
                })
                .map(|c| c.name_any());
            view.tls_secrets = secrets
                .state()
                .iter()
                .filter_map(|s| {
                    let data = s.data.as_ref()?;
                    let cert = data.get("tls.crt")?.0.clone();
                    let key = data.get("tls.key")?.0.clone();
                    let id = (s.namespace().unwrap_or_default(), s.name_any());
                    Some((id, Arc::new((cert, key))))
                })
                .collect();
            view.peer_authentications = parse_istio(&pas.state());
            view.gateway_api = Arc::new(GatewayApi {
                classes: parse_gateway_api(&gw_classes.state()),
                gateways: parse_gateway_api(&gateways.state()),
                routes: parse_gateway_api(&routes.state()),
                grants: parse_gateway_api(&grants.state()),
            });
            view.network_policies = netpols.state();
            view.namespaces = Arc::new(
                namespaces
                    .state()
                    .iter()
                    .map(|n| (n.name_any(), Arc::new(n.labels().clone())))
                    .collect(),
            );
            if tx.send(Arc::new(view)).is_err() {
                return;
            }
            // A burst of events leaves one stored permit: the next view covers them all.
            changed.notified().await;
        }
    });
    let stop = move || {
        for t in [
            svc_task,
            slice_task,
            pod_task,
            vs_task,
            dr_task,
            ap_task,
            ing_task,
            class_task,
            secret_task,
            netpol_task,
            ns_task,
            pa_task,
            gwc_task,
            gw_task,
            route_task,
            grant_task,
        ] {
            t.abort();
        }
        builder.abort();
    };
    (rx, stop)
}

/// The metadata every parsed object keeps: namespace, name, creation time (its order).
struct Meta {
    namespace: String,
    name: String,
    created: String,
    generation: i64,
}

/// Parses the specs of `objs` into `make`'s records, oldest first (the order Istio and the
/// Gateway API give precedence by), skipping with a log line those that do not parse
/// (the API's validation makes that rare).
fn parse_specs<S: serde::de::DeserializeOwned, T>(
    objs: &[Arc<kube::core::DynamicObject>],
    what: &str,
    make: impl Fn(Meta, S) -> T,
) -> Vec<T> {
    let mut out: Vec<(Meta, S)> = objs
        .iter()
        .filter_map(|o| {
            let spec = o.data.get("spec").cloned().unwrap_or_default();
            match serde_json::from_value::<S>(spec) {
                Ok(spec) => Some((
                    Meta {
                        namespace: o.namespace().unwrap_or_default(),
                        name: o.name_any(),
                        created: o
                            .metadata
                            .creation_timestamp
                            .as_ref()
                            .map(|t| t.0.to_string())
                            .unwrap_or_default(),
                        generation: o.metadata.generation.unwrap_or(0),
                    },
                    spec,
                )),
                Err(e) => {
                    tracing::warn!(namespace = ?o.namespace(), name = %o.name_any(), error = %e,
                        "ignoring {what} the proxy cannot read");
                    None
                }
            }
        })
        .collect();
    out.sort_by(|(a, _), (b, _)| {
        (&a.created, &a.namespace, &a.name).cmp(&(&b.created, &b.namespace, &b.name))
    });
    out.into_iter().map(|(m, s)| make(m, s)).collect()
}

fn parse_istio<S: serde::de::DeserializeOwned>(
    objs: &[Arc<kube::core::DynamicObject>],
) -> Vec<Arc<MeshResource<S>>> {
    parse_specs(objs, "an Istio resource", |m, spec| {
        Arc::new(MeshResource {
            namespace: m.namespace,
            name: m.name,
            created: m.created,
            spec,
        })
    })
}

fn parse_gateway_api<S: serde::de::DeserializeOwned>(
    objs: &[Arc<kube::core::DynamicObject>],
) -> Vec<gw::Obj<S>> {
    parse_specs(objs, "a Gateway API object", |m, spec| gw::Obj {
        namespace: m.namespace,
        name: m.name,
        created: m.created,
        generation: m.generation,
        spec,
    })
}

fn reflect_istio(
    client: &Client,
    group: &str,
    kind: &str,
    plural: &str,
    changed: &Arc<Notify>,
) -> (
    Store<kube::core::DynamicObject>,
    tokio::task::JoinHandle<()>,
) {
    reflect_kind(client, group, "v1", kind, plural, changed)
}

fn reflect_kind(
    client: &Client,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    changed: &Arc<Notify>,
) -> (
    Store<kube::core::DynamicObject>,
    tokio::task::JoinHandle<()>,
) {
    let (client, changed) = (client.clone(), changed.clone());
    let gvk = kube::core::GroupVersionKind::gvk(group, version, kind);
    let ar = kube::core::ApiResource::from_gvk_with_plural(&gvk, plural);
    let writer = reflector::store::Writer::new(ar.clone());
    let reader = writer.as_reader();
    let api: Api<kube::core::DynamicObject> = Api::all_with(client, &ar);
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    (reader, spawn_drain(stream, changed))
}

/// TLS Secrets only (the proxy has no business with the others), asked of the server by
/// field selector.
fn reflect_tls_secrets(
    client: Client,
    changed: Arc<Notify>,
) -> (
    Store<k8s_openapi::api::core::v1::Secret>,
    tokio::task::JoinHandle<()>,
) {
    let (reader, writer) = reflector::store();
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::all(client);
    let cfg = watcher::Config::default().fields("type=kubernetes.io/tls");
    let stream = reflector::reflector(writer, watcher(api, cfg).default_backoff());
    (reader, spawn_drain(stream, changed))
}

fn spawn_drain<K, S>(stream: S, changed: Arc<Notify>) -> tokio::task::JoinHandle<()>
where
    K: Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::debug!(error = %e, "proxy watch error; retrying"),
            }
        }
    })
}

fn reflect<K>(client: Client, changed: Arc<Notify>) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let api: Api<K> = Api::all(client);
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    (reader, spawn_drain(stream, changed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn slices_join_their_service_by_label() {
        let s = svc(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.43.0.5", "clusterIPs": ["10.43.0.5"],
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                     "sessionAffinity": "ClientIP"}
        }));
        let a = slice(json!({
            "metadata": {"name": "web-abc", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.7"], "conditions": {"ready": true}},
                {"addresses": ["10.42.0.8"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.42.0.9"]}
            ]
        }));
        let other = slice(json!({
            "metadata": {"name": "web-x", "namespace": "other",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.0.99"]}]
        }));
        let view = ClusterView::build([&s], [&a, &other]);
        let info = view.service("shop", "web").unwrap();
        assert_eq!(
            info.cluster_ips,
            vec!["10.43.0.5".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(info.affinity, Some(Duration::from_secs(10_800)));
        assert_eq!(info.endpoints.len(), 3);
        assert!(info.endpoints[0].ready);
        assert!(!info.endpoints[1].ready && info.endpoints[1].serving);
        assert!(
            info.endpoints[2].ready,
            "a missing ready condition means ready"
        );
        assert_eq!(
            info.endpoints[0].port_for("http", Protocol::Tcp),
            Some(8080)
        );
        assert_eq!(info.endpoints[0].port_for("http", Protocol::Udp), None);
        assert!(view.service("other", "web").is_none());
    }

    #[test]
    fn headless_and_external_name() {
        let h = svc(json!({
            "metadata": {"name": "db", "namespace": "a"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}
        }));
        let e = svc(json!({
            "metadata": {"name": "ext", "namespace": "a"},
            "spec": {"type": "ExternalName", "externalName": "example.org"}
        }));
        let view = ClusterView::build([&h, &e], []);
        let db = view.service("a", "db").unwrap();
        assert!(db.headless && db.cluster_ips.is_empty());
        let ext = view.service("a", "ext").unwrap();
        assert_eq!(ext.kind, ServiceType::ExternalName);
        assert_eq!(ext.external_name.as_deref(), Some("example.org"));
    }
}
