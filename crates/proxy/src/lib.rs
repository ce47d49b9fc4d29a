//! The node proxy: one per node, in user space. It answers every Service address that
//! traffic from this node's pods (or the node itself) can reach: ClusterIPs (bound as /32
//! addresses on `lo`), NodePorts and LoadBalancer ports on the node's address, and it
//! serves cluster DNS. It is a client of the Kubernetes API only: it watches Services and
//! EndpointSlices and keeps nothing it cannot rebuild from them.

pub mod dns;
pub mod frontends;
pub mod gateway;
pub mod http;
pub mod ingress;
pub mod listeners;
mod local_ips;
pub mod mesh;
pub mod mtls;
pub mod netpol;
pub mod pods;
pub mod stats;
mod tcp;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;
mod tls;
mod udp;
mod upstream;
pub mod view;

use frontends::{Frontends, NodeAddrs};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

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
    /// The node's Ingress ports (None: no Ingress on this node).
    pub ingress_http_port: Option<u16>,
    pub ingress_https_port: Option<u16>,
    /// Where the proxy serves its Istio metrics (`/stats/prometheus`); None: nowhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where names outside the cluster domain are forwarded (host:port); empty means the
    /// nameservers of the host's /etc/resolv.conf.
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// The bridge this node's pods are attached to: its address is the node as pods see
    /// it, and NetworkPolicy is enforced on its pods' veths. None: pod-to-pod traffic on
    /// the bridge is not filtered (Service traffic still is).
    pub bridge: Option<String>,
    /// Mutual TLS with other nodes' proxies (None: endpoints on other nodes are dialled
    /// directly, and no tunnel is served).
    pub mesh: Option<MeshTls>,
}

/// The cluster CA and who signs this node's mesh certificates.
#[derive(Clone)]
pub struct MeshTls {
    pub ca_pem: String,
    pub issuer: mtls::identities::Issuer,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the CA key.
        f.write_str("MeshTls")
    }
}

/// How often binds that failed are retried while nothing else changes.
const BIND_RETRY: Duration = Duration::from_secs(2);
const MAX_BIND_RETRY: Duration = Duration::from_secs(30);

/// Runs the proxy until `shutdown` resolves, then closes its listeners and removes the
/// addresses it added to `lo`. Connections in flight at shutdown are cut with the process.
pub async fn run(
    client: kube::Client,
    cfg: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (mut views, stop_watch) = view::watch_cluster(client);
    let (table_tx, table_rx) = watch::channel(Arc::new(Frontends::default()));
    let stats = Arc::new(stats::Stats::default());
    let mut ips = local_ips::LocalIps::open(cfg.state_dir.clone());
    let mut listeners = listeners::Listeners::new(table_rx, stats.clone());
    let node = NodeAddrs {
        node_name: cfg.node_name.clone(),
        node_ip: cfg.node_ip,
        skip: cfg.cluster_dns.into_iter().collect(),
        domain: cfg.cluster_domain.clone(),
        ingress_http: cfg.ingress_http_port,
        ingress_https: cfg.ingress_https_port,
    };
    let mesh = cfg.mesh.as_ref().map(|m| {
        let ids = mtls::identities::Identities::new(
            m.ca_pem.clone(),
            m.issuer.clone(),
            &cfg.cluster_domain,
            &cfg.node_name,
        );
        Arc::new(mtls::tunnel::Mesh::new(
            Arc::new(ids),
            cfg.node_name.clone(),
        ))
    });
    let mut shutdown = std::pin::pin!(shutdown);
    // The first view arrives once both lists are in; until then nothing is bound.
    tokio::select! {
        _ = &mut shutdown => { stop_watch(); return; }
        r = views.changed() => if r.is_err() { stop_watch(); return; }
    }
    tracing::info!(node = %cfg.node_name, node_ip = %cfg.node_ip, "service proxy running");
    let metrics = cfg.metrics_addr.and_then(|addr| match tcp::bind(addr) {
        Ok(l) => Some(tokio::spawn(telemetry::serve(
            l,
            listeners.telemetry.clone(),
        ))),
        Err(e) => {
            tracing::warn!(%addr, error = %e, "cannot serve the proxy's metrics");
            None
        }
    });
    let tunnel = mesh.clone().map(|m| {
        tokio::spawn(serve_tunnel(
            std::net::SocketAddr::new(cfg.node_ip, mtls::TUNNEL_PORT),
            m,
            table_tx.subscribe(),
        ))
    });
    let (desired_tx, desired_rx) = watch::channel(Arc::new(netpol::enforcer::Desired::default()));
    let enforcer = tokio::spawn(netpol::enforcer::run(desired_rx));
    let mut dns: Option<tokio::task::JoinHandle<()>> = None;
    let mut dns_error: Option<String> = None;
    // Binds that failed are retried with a growing pause, without rebuilding anything,
    // so a port that stays taken costs next to nothing.
    let mut retry_in = BIND_RETRY;
    let mut rebuild = true;
    let mut fe = table_tx.borrow().clone();
    // The packet rules guard the pod ranges of other nodes that this node routes to (the
    // agent adds those routes as Nodes come and go): a change of them rebuilds the rules.
    let mut route_changes = cfg.bridge.as_ref().and_then(|_| {
        corral_runtime::node_routes::RouteChanges::open()
            .map_err(|e| tracing::debug!(error = %e, "not watching routes"))
            .ok()
    });
    let mut routed = corral_runtime::node_routes::routed_pod_ranges().unwrap_or_default();
    loop {
        if rebuild {
            let view = views.borrow_and_update().clone();
            let started = std::time::Instant::now();
            let mut built = Frontends::build(&view, &node, &table_tx.borrow());
            let desired = enforce_policies(&cfg, &view, &mut built);
            if let Some(m) = &mesh {
                m.set_pods(view.pods_by_ip.clone());
                built.mesh = Some(m.clone());
            }
            desired_tx.send_if_modified(|d| {
                let changed = **d != desired;
                if changed {
                    *d = Arc::new(desired);
                }
                changed
            });
            fe = Arc::new(built);
            let mut want = fe.local_ips.clone();
            if let Some(std::net::IpAddr::V4(dns)) = cfg.cluster_dns {
                want.insert(dns);
            }
            ips.reconcile(&want);
            table_tx.send_replace(fe.clone());
            tracing::debug!(services = view.services.len(), frontends = fe.by_listen.len(),
                took = ?started.elapsed(), "proxy configuration applied");
        }
        let mut retry = listeners.reconcile(&fe);
        if dns.is_none() {
            if let Some(ip) = cfg.cluster_dns {
                match start_dns(&cfg, ip, views.clone()) {
                    Ok(task) => dns = Some(task),
                    Err(e) => {
                        if dns_error.as_deref() != Some(&e.to_string()) {
                            tracing::warn!(%ip, error = %e, "cannot serve cluster DNS; retrying");
                            dns_error = Some(e.to_string());
                        }
                        retry = true;
                    }
                }
            }
        }
        if !retry {
            retry_in = BIND_RETRY;
        }
        tokio::select! {
            _ = &mut shutdown => break,
            r = views.changed() => {
                if r.is_err() { break }
                rebuild = true;
            }
            r = async { route_changes.as_mut().expect("guarded").next().await }, if route_changes.is_some() => {
                match r {
                    Ok(()) => {
                        let now = corral_runtime::node_routes::routed_pod_ranges().unwrap_or_default();
                        if now != routed {
                            routed = now;
                            rebuild = true;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "watching routes failed; other nodes' pod ranges are read at the next change");
                        route_changes = None;
                    }
                }
            }
            _ = tokio::time::sleep(retry_in), if retry => {
                rebuild = false;
                retry_in = (retry_in * 2).min(MAX_BIND_RETRY);
            }
        }
    }
    listeners.stop_all();
    for task in [metrics, dns, tunnel].into_iter().flatten() {
        task.abort();
    }
    ips.reconcile(&Default::default());
    drop(desired_tx);
    let _ = enforcer.await;
    stop_watch();
}

/// Compiles the view's NetworkPolicies for the proxy's own connections (into `fe`) and
/// returns the packet rules this node's pods need (NetworkPolicy and PeerAuthentication).
fn enforce_policies(
    cfg: &ProxyConfig,
    view: &view::ClusterView,
    fe: &mut Frontends,
) -> netpol::enforcer::Desired {
    let local = netpol::enforcer::local_net(cfg.bridge.as_deref(), cfg.node_ip, cfg.cluster_dns);
    let mut host: Vec<IpAddr> = local.host.iter().map(|a| IpAddr::V4(*a)).collect();
    host.push(cfg.node_ip);
    let np = Arc::new(netpol::NetPolicies::compile(view, &host, cfg.cluster_dns));
    fe.netpol = np.clone();
    let pa = mesh::peerauth::PeerAuthn::new(&view.peer_authentications);
    netpol::packet::node_rules(&np, &pa, &local, &cfg.node_name)
}

/// Serves the mesh tunnel on `addr`, retrying the bind while the port is taken.
async fn serve_tunnel(
    addr: std::net::SocketAddr,
    mesh: Arc<mtls::tunnel::Mesh>,
    table: watch::Receiver<Arc<Frontends>>,
) {
    let mut logged = false;
    let listener = loop {
        match tcp::bind(addr) {
            Ok(l) => break l,
            Err(e) => {
                if !logged {
                    tracing::warn!(%addr, error = %e, "cannot serve the mesh tunnel; retrying");
                    logged = true;
                }
                tokio::time::sleep(MAX_BIND_RETRY).await;
            }
        }
    };
    tracing::info!(%addr, "mesh tunnel serving (mTLS, HTTP/2 CONNECT)");
    mtls::tunnel::serve(listener, mesh, table).await
}

/// Serves cluster DNS on the cluster DNS address, port 53, UDP and TCP.
fn start_dns(
    cfg: &ProxyConfig,
    ip: std::net::IpAddr,
    views: watch::Receiver<Arc<view::ClusterView>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let addr = std::net::SocketAddr::new(ip, 53);
    let udp = udp::bind(addr)?;
    let tcp = tcp::bind(addr)?;
    let dns_cfg = dns::DnsConfig::from_proxy(cfg);
    Ok(tokio::spawn(async move {
        if let Err(e) = dns::serve(udp, tcp, views, dns_cfg, std::future::pending()).await {
            tracing::error!(error = %e, "cluster DNS stopped");
        }
    }))
}
