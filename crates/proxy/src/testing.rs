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
            endpoints,
        },
    );
    view
}
