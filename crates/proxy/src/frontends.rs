//! What the proxy listens on, derived from a [`ClusterView`]: one frontend per Service
//! address and port (cluster IP, NodePort, LoadBalancer port), each with the endpoints that
//! may take its traffic. Choosing among them (round robin, ClientIP affinity) lives here
//! too, since it is state of the frontend, not of a connection.

use crate::view::{ClusterView, Protocol, ServiceInfo, ServiceKey, ServiceType};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a frontend listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Listen {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

/// One endpoint a frontend may send to.
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    pub addr: SocketAddr,
    /// The pod behind it (namespace/name), when known.
    pub target: Option<String>,
}

/// How the proxy handles a port's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppProtocol {
    /// Bytes, per connection.
    Tcp,
    /// HTTP per request, HTTP/1.1 to the endpoints.
    Http1,
    /// HTTP per request, HTTP/2 with prior knowledge to the endpoints (gRPC, h2c).
    Http2,
    /// TLS terminated here (Ingress), then HTTP per request.
    Https,
}

impl AppProtocol {
    /// Istio's protocol selection: the port's appProtocol, else the port name's prefix
    /// (`http`, `http-web`, `grpc-api`, ...); anything else is TCP.
    pub fn of(port: &crate::view::ServicePort) -> AppProtocol {
        if port.protocol != Protocol::Tcp {
            return AppProtocol::Tcp;
        }
        let by = |p: &str| match p.to_ascii_lowercase().as_str() {
            "http" => Some(AppProtocol::Http1),
            "http2" | "grpc" | "grpc-web" | "kubernetes.io/h2c" => Some(AppProtocol::Http2),
            "" => None,
            _ => Some(AppProtocol::Tcp),
        };
        if let Some(a) = port.app_protocol.as_deref().and_then(by) {
            return a;
        }
        let prefix = port.name.split('-').next().unwrap_or("");
        by(prefix).unwrap_or(AppProtocol::Tcp)
    }
}

/// One Service port as reached at one address.
#[derive(Debug)]
pub struct Frontend {
    pub service: ServiceKey,
    pub port_name: String,
    pub app: AppProtocol,
    /// The Service's port number (routes may match on it).
    pub service_port: u16,
    /// For HTTP ports: the compiled VirtualService routes (or the default route).
    pub routes: Option<Arc<Vec<crate::mesh::routing::Route>>>,
    /// The endpoints to use: the ready ones, or when none is ready the ones still serving
    /// while they terminate (as kube-proxy does), so a rollout's last pod keeps answering.
    pub backends: Vec<Backend>,
    affinity: Option<Affinity>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Affinity {
    timeout: Duration,
    clients: Mutex<HashMap<IpAddr, (SocketAddr, Instant)>>,
}

impl Frontend {
    /// The backends to try for a connection from `client`, best first: with ClientIP
    /// affinity the one this client used last (if still an endpoint), else round robin.
    /// The rest follow so a refused connection can move on to the next endpoint.
    pub fn pick(&self, client: IpAddr) -> Vec<&Backend> {
        let n = self.backends.len();
        if n == 0 {
            return Vec::new();
        }
        let mut start = None;
        if let Some(aff) = &self.affinity {
            let clients = aff.clients.lock().unwrap();
            if let Some((addr, at)) = clients.get(&client) {
                if at.elapsed() < aff.timeout {
                    start = self.backends.iter().position(|b| b.addr == *addr);
                }
            }
        }
        let start = start.unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed) % n);
        (0..n).map(|i| &self.backends[(start + i) % n]).collect()
    }

    /// Records which backend served `client`, for ClientIP affinity.
    pub fn used(&self, client: IpAddr, backend: SocketAddr) {
        if let Some(aff) = &self.affinity {
            let mut clients = aff.clients.lock().unwrap();
            if clients.len() > 65_536 {
                clients.retain(|_, (_, at)| at.elapsed() < aff.timeout);
            }
            clients.insert(client, (backend, Instant::now()));
        }
    }
}

/// Every frontend of the node and the addresses that must be local for them.
#[derive(Debug, Default)]
pub struct Frontends {
    pub by_listen: HashMap<Listen, Arc<Frontend>>,
    /// The clusters HTTP routes send to, kept for the next build.
    pub clusters: HashMap<crate::mesh::routing::ClusterKey, Arc<crate::mesh::routing::Cluster>>,
    /// Cluster IPs to put on `lo`.
    pub local_ips: BTreeSet<Ipv4Addr>,
    /// Every endpoint's workload by address, for telemetry.
    pub workloads: Arc<crate::telemetry::Workloads>,
    /// The cluster domain, for telemetry's service names.
    pub domain: String,
    /// AuthorizationPolicies, and the pods they are judged against, by address.
    pub authz: Arc<crate::mesh::authz::Authz>,
    pub pods_by_ip: Arc<HashMap<IpAddr, Arc<crate::pods::PodMeta>>>,
    /// Ingress TLS certificates by host name (`*.example.com` for wildcards).
    pub certs: Arc<HashMap<String, Arc<rustls::sign::CertifiedKey>>>,
    /// Gateway HTTPS listeners' certificates by port and hostname.
    pub gateway_certs: Arc<crate::gateway::PortCerts>,
    /// NetworkPolicies: whether a client may reach the endpoint the proxy chose for it.
    pub netpol: Arc<crate::netpol::NetPolicies>,
    /// Tunnels to other nodes' pods (None: endpoints are dialled directly, wherever).
    pub mesh: Option<Arc<crate::mtls::tunnel::Mesh>>,
}

impl Frontends {
    /// Connects to the endpoint `dst` on behalf of `client`: through the node tunnel when
    /// it is a pod of another node, straight otherwise.
    pub async fn dial(
        &self,
        client: IpAddr,
        dst: std::net::SocketAddr,
        judged_http: bool,
    ) -> std::io::Result<crate::mtls::tunnel::Upstream> {
        match &self.mesh {
            Some(m) => m.dial(self, client, dst, judged_http).await,
            None => crate::mtls::tunnel::dial_direct(dst)
                .await
                .map(crate::mtls::tunnel::Upstream::Direct),
        }
    }

    /// Judges a request or connection from `source_ip` to the endpoint at `dest_ip`;
    /// endpoints that are not pods of this cluster are not judged.
    pub fn authorize(
        &self,
        source_ip: IpAddr,
        dest_ip: IpAddr,
        port: u16,
        http: Option<crate::mesh::authz::HttpParts>,
    ) -> crate::mesh::authz::Decision {
        let source = self
            .pods_by_ip
            .get(&source_ip)
            .map(|p| crate::mesh::authz::SourceId::Pod(p));
        self.authorize_from(source, source_ip, dest_ip, port, http)
    }

    /// As [`Frontends::authorize`], with the source's identity given (from a certificate).
    pub fn authorize_from(
        &self,
        source: Option<crate::mesh::authz::SourceId>,
        source_ip: IpAddr,
        dest_ip: IpAddr,
        port: u16,
        http: Option<crate::mesh::authz::HttpParts>,
    ) -> crate::mesh::authz::Decision {
        use crate::mesh::authz::{Decision, Request};
        if self.authz.is_empty() {
            return Decision::Allow;
        }
        let Some(destination) = self.pods_by_ip.get(&dest_ip) else {
            return Decision::Allow;
        };
        self.authz.decide(&Request {
            source_ip,
            source,
            destination,
            port,
            http,
        })
    }
}

/// Where this node answers NodePorts and LoadBalancer ports.
#[derive(Clone, Debug)]
pub struct NodeAddrs {
    /// This node's name: traffic policy `Local` keeps to its endpoints.
    pub node_name: String,
    pub node_ip: IpAddr,
    /// Addresses not proxied (the cluster DNS address, answered by the DNS server).
    pub skip: Vec<IpAddr>,
    /// The cluster's DNS domain, for resolving Istio hosts.
    pub domain: String,
    /// The Ingress ports, if this node serves Ingresses.
    pub ingress_http: Option<u16>,
    pub ingress_https: Option<u16>,
}

impl Frontends {
    /// Serves `routes` on the node's address and 127.0.0.1 at `port` (Ingress, Gateway
    /// listeners), as the frontend of a pseudo-Service `kube-system/corral-<kind>`. A
    /// Service's node port or LoadBalancer port already there keeps it.
    fn node_routes(
        &mut self,
        node: &NodeAddrs,
        port: u16,
        app: AppProtocol,
        routes: Arc<Vec<crate::mesh::routing::Route>>,
        kind: &str,
    ) {
        for ip in [node.node_ip, Ipv4Addr::LOCALHOST.into()] {
            let listen = Listen {
                addr: SocketAddr::new(ip, port),
                protocol: Protocol::Tcp,
            };
            self.by_listen.entry(listen).or_insert_with(|| {
                Arc::new(Frontend {
                    service: ServiceKey {
                        namespace: "kube-system".into(),
                        name: format!("corral-{kind}"),
                    },
                    port_name: kind.into(),
                    app,
                    service_port: port,
                    routes: Some(routes.clone()),
                    backends: Vec::new(),
                    affinity: None,
                    next: AtomicUsize::new(0),
                })
            });
        }
    }

    /// One Service port's frontends at `listens`, each reusing the previous one when
    /// nothing it serves changed (so ClientIP affinity and the round-robin position
    /// carry over).
    #[allow(clippy::too_many_arguments)]
    fn add_service_listens(
        &mut self,
        svc: &ServiceInfo,
        port: &crate::view::ServicePort,
        app: AppProtocol,
        listens: Vec<SocketAddr>,
        backends: Vec<Backend>,
        routes: Option<Arc<Vec<crate::mesh::routing::Route>>>,
        previous: &Frontends,
    ) {
        for addr in listens {
            let listen = Listen {
                addr,
                protocol: port.protocol,
            };
            let fe = match previous.by_listen.get(&listen) {
                Some(old)
                    if routes.is_none()
                        && old.service == svc.key
                        && old.port_name == port.name
                        && old.app == app
                        && old.backends == backends
                        && old.affinity.as_ref().map(|a| a.timeout) == svc.affinity =>
                {
                    old.clone()
                }
                _ => Arc::new(Frontend {
                    service: svc.key.clone(),
                    port_name: port.name.clone(),
                    app,
                    service_port: port.port,
                    routes: routes.clone(),
                    backends: backends.clone(),
                    affinity: svc.affinity.map(|timeout| Affinity {
                        timeout,
                        clients: Mutex::new(HashMap::new()),
                    }),
                    next: AtomicUsize::new(0),
                }),
            };
            // Two Services claiming one node port: the first (by name) keeps it.
            self.by_listen.entry(listen).or_insert(fe);
        }
    }

    /// Answers a LoadBalancer's health check node port as kube-proxy does: 200 while this
    /// node has a ready endpoint of the Service (its external traffic stays on the node),
    /// 503 otherwise, with the count in a JSON body.
    fn health_check(&mut self, svc: &ServiceInfo, node: &NodeAddrs, port: u16) {
        let local = svc
            .endpoints
            .iter()
            .filter(|e| e.ready && e.node_name.as_deref() == Some(node.node_name.as_str()))
            .count();
        let body = serde_json::json!({
            "service": {"namespace": svc.key.namespace, "name": svc.key.name},
            "localEndpoints": local,
            "serviceProxyHealthy": true,
        })
        .to_string();
        let status = if local > 0 { 200 } else { 503 };
        let routes = Arc::new(vec![crate::mesh::routing::Route::direct(status, body)]);
        for ip in [node.node_ip, Ipv4Addr::LOCALHOST.into()] {
            let listen = Listen {
                addr: SocketAddr::new(ip, port),
                protocol: Protocol::Tcp,
            };
            self.by_listen.entry(listen).or_insert_with(|| {
                Arc::new(Frontend {
                    service: svc.key.clone(),
                    port_name: "health-check".into(),
                    app: AppProtocol::Http1,
                    service_port: port,
                    routes: Some(routes.clone()),
                    backends: Vec::new(),
                    affinity: None,
                    next: AtomicUsize::new(0),
                })
            });
        }
    }

    /// Derives the frontends from a view. `previous` carries ClientIP affinity and the
    /// round-robin position over for frontends whose backends did not change.
    pub fn build(view: &ClusterView, node: &NodeAddrs, previous: &Frontends) -> Frontends {
        let mut out = Frontends::default();
        let mut compiler =
            crate::mesh::routing::Compiler::new(view, &node.domain, &previous.clusters);
        for svc in view.services.values() {
            if svc.kind == ServiceType::ExternalName || svc.headless {
                continue;
            }
            if svc.cluster_ips.iter().any(|ip| node.skip.contains(ip)) {
                continue;
            }
            for port in &svc.ports {
                if port.protocol == Protocol::Sctp {
                    continue;
                }
                let app = AppProtocol::of(port);
                let mut internal = Vec::new();
                for ip in &svc.cluster_ips {
                    if let IpAddr::V4(v4) = ip {
                        out.local_ips.insert(*v4);
                        internal.push(SocketAddr::new(*ip, port.port));
                    }
                }
                let mut external = Vec::new();
                if matches!(svc.kind, ServiceType::NodePort | ServiceType::LoadBalancer) {
                    if let Some(np) = port.node_port {
                        external.push(SocketAddr::new(node.node_ip, np));
                        external.push(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), np));
                    }
                }
                if svc.kind == ServiceType::LoadBalancer {
                    // As k3s' ServiceLB: the Service's own port on the node's address.
                    external.push(SocketAddr::new(node.node_ip, port.port));
                }
                // Cluster IP traffic and traffic from outside follow their own policies.
                let local = |yes: bool| yes.then_some(node.node_name.as_str());
                let groups = [
                    (internal, local(svc.traffic.internal_local)),
                    (external, local(svc.traffic.external_local)),
                ];
                for (listens, only) in groups {
                    if listens.is_empty() {
                        continue;
                    }
                    let backends = backends(svc, &port.name, port.protocol, only);
                    let routes =
                        (app != AppProtocol::Tcp).then(|| compiler.routes_on(svc, port.port, only));
                    out.add_service_listens(svc, port, app, listens, backends, routes, previous);
                }
            }
            if let (true, Some(hc)) = (
                svc.traffic.external_local,
                svc.traffic.health_check_node_port,
            ) {
                out.health_check(svc, node, hc);
            }
        }
        let mut gateways = crate::gateway::compile(view, &mut compiler);
        if node.ingress_http.is_some() || node.ingress_https.is_some() {
            let (ingress_routes, tls) = crate::ingress::compile(view, &mut compiler);
            for (port, app) in [
                (node.ingress_http, AppProtocol::Http1),
                (node.ingress_https, AppProtocol::Https),
            ] {
                let Some(port) = port else { continue };
                let routes = gateways.before_ingress(port, app, &ingress_routes);
                out.node_routes(node, port, app, routes, "ingress");
            }
            out.certs = Arc::new(crate::tls::certified_keys(&tls, &view.tls_secrets));
        }
        for (port, (app, routes)) in std::mem::take(&mut gateways.ports) {
            out.node_routes(node, port, app, routes, "gateway");
        }
        out.gateway_certs = Arc::new(gateways.certs);
        out.clusters = compiler.clusters;
        let mut workloads = crate::telemetry::Workloads::new();
        for svc in view.services.values() {
            for e in &svc.endpoints {
                if let Some(w) = &e.workload {
                    for a in &e.addresses {
                        workloads.insert(*a, w.clone());
                    }
                }
            }
        }
        for (ip, pod) in view.pods_by_ip.iter() {
            workloads.entry(*ip).or_insert_with(|| pod.workload.clone());
        }
        out.workloads = Arc::new(workloads);
        out.domain = node.domain.clone();
        out.authz = Arc::new(crate::mesh::authz::Authz::new(
            &view.authorization_policies,
            &node.domain,
        ));
        out.pods_by_ip = view.pods_by_ip.clone();
        out
    }
}

fn backends(
    svc: &ServiceInfo,
    port_name: &str,
    protocol: Protocol,
    node: Option<&str>,
) -> Vec<Backend> {
    crate::mesh::routing::endpoints(svc, port_name, protocol, None, node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{Endpoint, EndpointPort, ServicePort};

    fn ep(ip: &str, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addresses: vec![ip.parse().unwrap()],
            hostname: None,
            node_name: None,
            target: None,
            ready,
            serving,
            terminating,
            labels: Default::default(),
            workload: None,
            ports: Arc::new(vec![EndpointPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            }]),
        }
    }

    fn service(kind: ServiceType, endpoints: Vec<Endpoint>) -> ClusterView {
        let key = ServiceKey {
            namespace: "shop".into(),
            name: "web".into(),
        };
        let mut view = ClusterView::default();
        view.services.insert(
            key.clone(),
            ServiceInfo {
                key,
                kind,
                cluster_ips: vec!["10.43.0.5".parse().unwrap()],
                headless: false,
                external_name: None,
                ports: vec![ServicePort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: Some(30080),
                    app_protocol: None,
                    target_port: None,
                }],
                affinity: None,
                publish_not_ready: false,
                traffic: Default::default(),
                endpoints,
            },
        );
        view
    }

    fn node() -> NodeAddrs {
        NodeAddrs {
            node_name: "node-a".into(),
            node_ip: "192.0.2.10".parse().unwrap(),
            skip: vec![],
            domain: "cluster.local".into(),
            ingress_http: None,
            ingress_https: None,
        }
    }

    fn listen(addr: &str) -> Listen {
        Listen {
            addr: addr.parse().unwrap(),
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn ready_endpoints_round_robin() {
        let view = service(
            ServiceType::ClusterIp,
            vec![
                ep("10.42.0.8", true, true, false),
                ep("10.42.0.7", true, true, false),
                ep("10.42.0.9", false, false, false),
            ],
        );
        let fe = Frontends::build(&view, &node(), &Frontends::default());
        assert_eq!(fe.local_ips.len(), 1);
        assert_eq!(
            fe.by_listen.len(),
            1,
            "a ClusterIP Service has no node port"
        );
        let f = &fe.by_listen[&listen("10.43.0.5:80")];
        let client: IpAddr = "10.42.0.20".parse().unwrap();
        let a = f.pick(client)[0].addr;
        let b = f.pick(client)[0].addr;
        assert_ne!(a, b);
        assert_eq!(
            f.pick(client).len(),
            2,
            "the unready endpoint is never picked"
        );
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let view = service(
            ServiceType::NodePort,
            vec![
                ep("10.42.0.7", false, true, true),
                ep("10.42.0.8", false, false, true),
            ],
        );
        let fe = Frontends::build(&view, &node(), &Frontends::default());
        assert_eq!(fe.by_listen.len(), 3, "cluster IP, node IP and localhost");
        let f = &fe.by_listen[&listen("192.0.2.10:30080")];
        assert_eq!(f.backends.len(), 1);
        assert_eq!(f.backends[0].addr, "10.42.0.7:8080".parse().unwrap());
    }

    #[test]
    fn traffic_policy_local_keeps_to_this_nodes_endpoints() {
        let on = |ip: &str, node: &str| Endpoint {
            node_name: Some(node.into()),
            ..ep(ip, true, true, false)
        };
        let mut view = service(
            ServiceType::LoadBalancer,
            vec![on("10.42.0.7", "node-a"), on("10.42.1.7", "node-b")],
        );
        let svc = view.services.values_mut().next().unwrap();
        svc.traffic.external_local = true;
        // The TCP backends and the HTTP routes' cluster, as the frontend serves them.
        let served = |fe: &Frontends, at: &str| -> (Vec<String>, Vec<String>) {
            let f = &fe.by_listen[&listen(at)];
            let cluster = f.routes.as_ref().and_then(|r| match &r[0].action {
                crate::mesh::routing::Action::Forward(w) => w[0].cluster.clone().ok(),
                _ => None,
            });
            let addrs = |b: &[Backend]| b.iter().map(|b| b.addr.ip().to_string()).collect();
            (addrs(&f.backends), addrs(&cluster.unwrap().endpoints))
        };
        let both = vec!["10.42.0.7".to_string(), "10.42.1.7".to_string()];
        let local = vec!["10.42.0.7".to_string()];
        let fe = Frontends::build(&view, &node(), &Frontends::default());
        for external in ["192.0.2.10:30080", "127.0.0.1:30080", "192.0.2.10:80"] {
            assert_eq!(
                served(&fe, external),
                (local.clone(), local.clone()),
                "{external}"
            );
        }
        assert_eq!(served(&fe, "10.43.0.5:80"), (both.clone(), both.clone()));

        // internalTrafficPolicy: Local narrows the cluster IP; no local endpoint, none.
        let svc = view.services.values_mut().next().unwrap();
        svc.traffic = crate::view::TrafficPolicies {
            internal_local: true,
            ..Default::default()
        };
        let fe = Frontends::build(&view, &node(), &fe);
        assert_eq!(served(&fe, "10.43.0.5:80"), (local.clone(), local));
        assert_eq!(served(&fe, "192.0.2.10:30080"), (both.clone(), both));
        let other = NodeAddrs {
            node_name: "node-c".into(),
            ..node()
        };
        let fe = Frontends::build(&view, &other, &fe);
        assert_eq!(served(&fe, "10.43.0.5:80"), (vec![], vec![]));
    }

    #[test]
    fn affinity_sticks_and_survives_an_unrelated_rebuild() {
        let mut view = service(
            ServiceType::ClusterIp,
            vec![
                ep("10.42.0.7", true, true, false),
                ep("10.42.0.8", true, true, false),
            ],
        );
        view.services.values_mut().next().unwrap().affinity = Some(Duration::from_secs(60));
        let fe = Frontends::build(&view, &node(), &Frontends::default());
        let f = &fe.by_listen[&listen("10.43.0.5:80")];
        let client: IpAddr = "10.42.0.20".parse().unwrap();
        let first = f.pick(client)[0].addr;
        f.used(client, first);
        for _ in 0..5 {
            assert_eq!(f.pick(client)[0].addr, first);
        }
        let again = Frontends::build(&view, &node(), &fe);
        assert_eq!(
            again.by_listen[&listen("10.43.0.5:80")].pick(client)[0].addr,
            first
        );
    }

    #[test]
    fn dns_address_and_headless_services_are_not_proxied() {
        let mut view = service(ServiceType::ClusterIp, vec![]);
        let n = NodeAddrs {
            node_name: "node-a".into(),
            node_ip: "192.0.2.10".parse().unwrap(),
            skip: vec!["10.43.0.5".parse().unwrap()],
            domain: "cluster.local".into(),
            ingress_http: None,
            ingress_https: None,
        };
        assert!(Frontends::build(&view, &n, &Frontends::default())
            .by_listen
            .is_empty());
        let svc = view.services.values_mut().next().unwrap();
        svc.headless = true;
        svc.cluster_ips.clear();
        assert!(Frontends::build(&view, &node(), &Frontends::default())
            .local_ips
            .is_empty());
    }
}
