//! Cluster DNS, served by the node proxy on the kube-dns Service address: the names the
//! Kubernetes DNS specification defines for Services, endpoints and pods, answered from the
//! proxy's [`ClusterView`](crate::view::ClusterView); every other name forwarded to the
//! node's resolvers.
//!
//! ```no_run
//! # async fn f(view: tokio::sync::watch::Receiver<std::sync::Arc<corral_proxy::view::ClusterView>>,
//! #            cfg: &corral_proxy::ProxyConfig) -> std::io::Result<()> {
//! let udp = tokio::net::UdpSocket::bind("10.43.0.10:53").await?;
//! let tcp = tokio::net::TcpListener::bind("10.43.0.10:53").await?;
//! let dns = corral_proxy::dns::DnsConfig::from_proxy(cfg);
//! corral_proxy::dns::serve(udp, tcp, view, dns, std::future::pending()).await
//! # }
//! ```

pub mod forward;
pub mod resolve;
pub mod server;
pub mod wire;

pub use server::{serve, DnsConfig, DnsStats};

#[cfg(test)]
mod tests;
