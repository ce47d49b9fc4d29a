//! The node proxy: one per node, in user space. It answers every Service address that
//! traffic from this node's pods (or the node itself) can reach: ClusterIPs (bound as /32
//! addresses on `lo`), NodePorts and LoadBalancer ports on the node's address, and it
//! serves cluster DNS. It is a client of the Kubernetes API only: it watches Services and
//! EndpointSlices and keeps nothing it cannot rebuild from them.

pub mod dns;
pub mod view;

use std::net::IpAddr;
use std::path::PathBuf;

/// What the proxy needs to know that the API does not tell it.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub node_name: String,
    /// Where NodePorts and LoadBalancer ports are bound (besides 127.0.0.1).
    pub node_ip: IpAddr,
    /// Where the proxy records the addresses it added to `lo`, so a restart removes the
    /// ones whose Service is gone.
    pub state_dir: PathBuf,
    /// The cluster DNS Service's address, answered by the DNS server rather than proxied.
    pub cluster_dns: Option<IpAddr>,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// Where names outside the cluster domain are forwarded (host:port); empty means the
    /// nameservers of the host's /etc/resolv.conf.
    pub dns_upstreams: Vec<std::net::SocketAddr>,
}
