//! Builders for tests: a view with one Service whose endpoints are given addresses.

use crate::view::{
    ClusterView, Endpoint, EndpointPort, Protocol, ServiceInfo, ServiceKey, ServicePort,
    ServiceType,
};
use std::net::SocketAddr;
use std::sync::Arc;

/// A ClusterIP Service `test/svc` at `frontend` with one port named `p` of `protocol`,
/// served by `backends` (all ready).
pub fn one_service(
    frontend: SocketAddr,
    protocol: Protocol,
    backends: &[SocketAddr],
) -> ClusterView {
    named_service(frontend, protocol, "p", backends)
}

/// As [`one_service`] with the port named `port_name` (`http` makes it an HTTP port).
pub fn named_service(
    frontend: SocketAddr,
    protocol: Protocol,
    port_name: &str,
    backends: &[SocketAddr],
) -> ClusterView {
    let key = ServiceKey {
        namespace: "test".into(),
        name: "svc".into(),
    };
    let endpoints = backends
        .iter()
        .map(|b| Endpoint {
            addresses: vec![b.ip()],
            hostname: None,
            node_name: None,
            target: None,
            ready: true,
            serving: true,
            terminating: false,
            labels: Default::default(),
            workload: None,
            ports: Arc::new(vec![EndpointPort {
                name: port_name.into(),
                protocol,
                port: b.port(),
            }]),
        })
        .collect();
    let mut view = ClusterView::default();
    view.services.insert(
        key.clone(),
        ServiceInfo {
            key,
            kind: ServiceType::ClusterIp,
            cluster_ips: vec![frontend.ip()],
            headless: false,
            external_name: None,
            ports: vec![ServicePort {
                name: port_name.into(),
                protocol,
                port: frontend.port(),
                node_port: None,
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

/// A pod behind a Service in [`mesh_view`]: its address and labels.
pub struct Pod<'a> {
    pub addr: SocketAddr,
    pub labels: &'a [(&'a str, &'a str)],
}

/// A view with Service `test/svc` (HTTP port `http` at `frontend`) over `pods`, plus the
/// given VirtualService and DestinationRule specs (as Istio YAML, in JSON).
pub fn mesh_view(
    frontend: SocketAddr,
    pods: &[Pod],
    virtual_service: Option<serde_json::Value>,
    destination_rule: Option<serde_json::Value>,
) -> ClusterView {
    let mut view = named_service(frontend, Protocol::Tcp, "http", &[]);
    let svc = view.services.values_mut().next().expect("one service");
    for p in pods {
        svc.endpoints.push(Endpoint {
            addresses: vec![p.addr.ip()],
            hostname: None,
            node_name: None,
            target: Some(format!("test/pod-{}", p.addr.port())),
            ready: true,
            serving: true,
            terminating: false,
            workload: None,
            labels: Arc::new(
                p.labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ports: Arc::new(vec![EndpointPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: p.addr.port(),
            }]),
        });
    }
    fn resource<S>(spec: S) -> crate::view::MeshResource<S> {
        crate::view::MeshResource {
            namespace: "test".into(),
            name: "r".into(),
            created: "2026-01-01T00:00:00Z".into(),
            spec,
        }
    }
    if let Some(vs) = virtual_service {
        view.virtual_services = vec![Arc::new(resource(
            serde_json::from_value(vs).expect("a VirtualService spec"),
        ))];
    }
    if let Some(dr) = destination_rule {
        view.destination_rules = vec![Arc::new(resource(
            serde_json::from_value(dr).expect("a DestinationRule spec"),
        ))];
    }
    view
}

/// A free TCP port on 127.0.0.1 (bound and released at once).
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
}

/// The proxy's data path without the API: listeners serving the frontends of the views
/// given to [`TestProxy::apply`], on 127.0.0.1.
pub struct TestProxy {
    tx: tokio::sync::watch::Sender<Arc<crate::frontends::Frontends>>,
    listeners: crate::listeners::Listeners,
}

impl Default for TestProxy {
    fn default() -> Self {
        Self::new()
    }
}

impl TestProxy {
    pub fn new() -> TestProxy {
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(Default::default()));
        TestProxy {
            tx,
            listeners: crate::listeners::Listeners::new(rx, Default::default()),
        }
    }

    /// Serves `view`; panics when a bind fails.
    pub fn apply(&mut self, view: &ClusterView) {
        let node = crate::frontends::NodeAddrs {
            node_name: "test-node".into(),
            node_ip: "127.0.0.1".parse().expect("an address"),
            skip: vec![],
            domain: "cluster.local".into(),
            ingress_http: None,
            ingress_https: None,
        };
        let fe = Arc::new(crate::frontends::Frontends::build(
            view,
            &node,
            &self.tx.borrow(),
        ));
        self.tx.send_replace(fe.clone());
        assert!(!self.listeners.reconcile(&fe), "every bind succeeds");
    }
}
