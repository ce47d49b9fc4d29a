//! The node agent: a pure Kubernetes client that registers its Node, renews its Lease, and
//! runs the pods bound to its node with `corral-runtime`, from images in the local
//! `corral-images` store, reporting their status as the kubelet does. It keeps no state it
//! cannot rebuild: after a restart it adopts the containers still running (matched to pods
//! by uid) and removes what belongs to pods that are gone.
//!
//! ```no_run
//! # async fn f(client: kube::Client) -> Result<(), corral_agent::Error> {
//! let cfg = corral_agent::AgentConfig::new("node-1", "/var/lib/corral");
//! corral_agent::run(client, cfg, std::future::pending()).await
//! # }
//! ```

mod containers;
mod dns;
mod events;
mod expand;
mod ipam;
mod kubelet;
mod node;
pub mod paths;
mod pods;
mod probes;
mod quantity;
mod routes;
mod service_env;
mod volumes;
mod worker;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_images::ImageStore;
use corral_runtime::{Runtime, RuntimeConfig};
use kube::Client;

pub use ipam::{Ipam, IpamError};
pub use node::{go_arch, KUBELET_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("image store: {0}")]
    Images(#[from] corral_images::ImageError),
    #[error("container runtime: {0}")]
    Runtime(#[from] corral_runtime::Error),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("{0}")]
    Other(String),
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The Node's name (kubelet: the hostname).
    pub node_name: String,
    /// Images under `images/`, runtime state under `runtime/`, logs and volumes under `pods/`.
    pub data_dir: PathBuf,
    /// This node's pod range (IPv4), e.g. `10.42.0.0/24`; the bridge takes the first address.
    /// None: the one the control plane assigns to the Node (its node IPAM controller).
    pub pod_cidr: Option<String>,
    /// The node bridge pods are attached to (created when missing).
    pub bridge: String,
    /// Port of the kubelet API (logs, exec, port-forward) advertised in the Node status.
    pub kubelet_port: u16,
    /// Where the kubelet API's serving certificate comes from.
    pub kubelet_tls: KubeletTls,
    /// The node's InternalIP; None: the host's primary address.
    pub node_ip: Option<IpAddr>,
    /// Extra Node labels (e.g. `node-role.kubernetes.io/control-plane`).
    pub node_labels: BTreeMap<String, String>,
    /// The shim binary and the arguments before its own (`corral shim ...`).
    pub shim_exe: PathBuf,
    pub shim_args: Vec<String>,
    /// Cgroup under each hierarchy's root for this node's containers.
    pub cgroup_parent: String,
    /// The cluster DNS Service's address (the kubelet's --cluster-dns): ClusterFirst pods
    /// get it as their only nameserver. None: every pod gets the host's resolv.conf.
    pub cluster_dns: Option<IpAddr>,
    /// The cluster's DNS domain (the kubelet's --cluster-domain), for pods' search paths
    /// and /etc/hosts.
    pub cluster_domain: String,
}

impl AgentConfig {
    /// Defaults: pod CIDR 10.42.0.0/24 on bridge `corral0`, kubelet port 10250, the current
    /// executable as shim (`<exe> shim`).
    pub fn new(node_name: impl Into<String>, data_dir: impl Into<PathBuf>) -> AgentConfig {
        let node_name = node_name.into();
        let cgroup_parent = format!(
            "corral-{}",
            node_name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                })
                .collect::<String>()
        );
        AgentConfig {
            node_name,
            data_dir: data_dir.into(),
            pod_cidr: Some("10.42.0.0/24".into()),
            bridge: "corral0".into(),
            kubelet_port: 10250,
            kubelet_tls: KubeletTls::None,
            node_ip: None,
            node_labels: BTreeMap::new(),
            shim_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("corral")),
            shim_args: vec!["shim".into()],
            cgroup_parent,
            cluster_dns: None,
            cluster_domain: "cluster.local".into(),
        }
    }
}

pub use kubelet::SERVING_CERT_PATH;
pub use node::detect_node_ip;

/// The kubelet API's serving certificate. Client certificates must chain to the cluster CA
/// in every case.
#[derive(Clone, Debug)]
pub enum KubeletTls {
    /// No kubelet API (logs, exec and port-forward then fail for this node's pods).
    None,
    /// Issued here by the cluster CA, whose key this node holds (the server's own node).
    SignWith { ca_pem: String, ca_key_pem: String },
    /// Requested from the API server, which signs the node's certificate request (a
    /// joining `corral agent`: its key never leaves the node).
    RequestFromServer { ca_pem: String },
}

/// What every pod worker shares.
pub(crate) struct Ctx {
    pub client: Client,
    pub cfg: AgentConfig,
    pub runtime: Runtime,
    pub images: Arc<ImageStore>,
    pub ipam: Mutex<Ipam>,
    pub recorder: events::Recorder,
    pub node_ip: IpAddr,
    pub node: containers::NodeAllocatable,
    /// The host's /etc/resolv.conf, the base of pods' own.
    pub resolv_conf: Option<String>,
    /// Every Service, for the containers' service environment variables.
    pub services: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Service>,
}

/// Runs the agent until `shutdown` resolves. Containers keep running when it returns; the
/// next agent over the same data directory adopts them.
pub async fn run(
    client: Client,
    mut cfg: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let pod_cidr = match cfg.pod_cidr.clone() {
        Some(c) => c,
        None => match node::assigned_pod_cidr(&client, &cfg.node_name, stop_rx.clone()).await {
            Some(c) => c,
            None => return Ok(()),
        },
    };
    cfg.pod_cidr = Some(pod_cidr.clone());
    let mut ipam = Ipam::new(&pod_cidr)?;
    let images_dir = cfg.data_dir.join("images");
    let images = Arc::new(
        tokio::task::spawn_blocking(move || ImageStore::open(images_dir))
            .await
            .map_err(|e| Error::Other(e.to_string()))??,
    );
    let mut rcfg = RuntimeConfig::new(cfg.data_dir.join("runtime"), &cfg.shim_exe);
    rcfg.shim_args = cfg.shim_args.clone();
    rcfg.cgroup_parent = cfg.cgroup_parent.clone();
    let runtime = Runtime::new(rcfg)?;
    std::fs::create_dir_all(cfg.data_dir.join("pods")).map_err(|e| {
        Error::Other(format!(
            "create {}: {e}",
            cfg.data_dir.join("pods").display()
        ))
    })?;
    let caps = runtime.capabilities();
    if !caps.root {
        tracing::warn!(
            node = %cfg.node_name,
            "not running as root: pods run as plain host processes (no namespaces, no cgroup limits, \
             no private root filesystem, no pod network; pods get the node's address)"
        );
    }
    for sb in runtime.list_sandboxes()? {
        if let Some(n) = &sb.network {
            ipam.reserve(n.pod_ip, &sb.pod_uid);
        }
    }
    let node_ip = cfg.node_ip.unwrap_or_else(node::detect_node_ip);
    let facts = node::HostFacts::read(&cfg.data_dir);
    let (services, services_task) = watch_services(client.clone());
    let ctx = Arc::new(Ctx {
        services,
        recorder: events::Recorder::new(client.clone(), cfg.node_name.clone()),
        client: client.clone(),
        runtime,
        images: images.clone(),
        ipam: Mutex::new(ipam),
        node_ip,
        node: containers::NodeAllocatable {
            cpus: facts.cpus as u64,
            memory_bytes: facts.memory_kib * 1024,
            ephemeral_bytes: facts.ephemeral_storage_bytes,
        },
        resolv_conf: std::fs::read_to_string("/etc/resolv.conf").ok(),
        cfg: cfg.clone(),
    });
    let reg = || node::Registration {
        client: client.clone(),
        cfg: cfg.clone(),
        node_ip,
        images: images.clone(),
    };
    // Register before running pods, retrying while the API is not ready.
    let mut wait = Duration::from_millis(100);
    let status = loop {
        match reg().register().await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "node registration failed; retrying");
                let mut stop = stop_rx.clone();
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    };
    tracing::info!(
        node = %cfg.node_name, %pod_cidr, bridge = %cfg.bridge, %node_ip,
        isolated = ctx.runtime.capabilities().namespaces,
        "node agent running"
    );
    let kubelet_api = match kubelet::tls(&client, &cfg, node_ip).await {
        Ok(Some(tls)) => Some(tokio::spawn(kubelet::serve(
            ctx.clone(),
            tls,
            stop_rx.clone(),
        ))),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "kubelet API not served: no serving certificate");
            None
        }
    };
    // Pods of other nodes by their IPs: only where pods have a network of their own.
    let routes = ctx.runtime.capabilities().namespaces.then(|| {
        tokio::spawn(
            routes::NodeRoutes {
                client: client.clone(),
                node_name: cfg.node_name.clone(),
                pod_cidr: pod_cidr.clone(),
                node_ip,
                bridge: cfg.bridge.clone(),
            }
            .run(stop_rx.clone()),
        )
    });
    let lease = tokio::spawn(reg().lease_loop(stop_rx.clone()));
    let status = tokio::spawn(reg().status_loop(status, stop_rx.clone()));
    pods::run(ctx, stop_rx).await;
    let _ = lease.await;
    if let Some(k) = kubelet_api {
        let _ = k.await;
    }
    let _ = status.await;
    if let Some(r) = routes {
        let _ = r.await;
    }
    services_task.abort();
    Ok(())
}

/// A cache of every Service, kept by a watch (the kubelet's service informer).
fn watch_services(
    client: Client,
) -> (
    kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Service>,
    tokio::task::JoinHandle<()>,
) {
    use futures::StreamExt;
    use kube::runtime::{reflector, watcher, WatchStreamExt};
    let (reader, writer) = reflector::store();
    let api = kube::Api::<k8s_openapi::api::core::v1::Service>::all(client);
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    let task = tokio::spawn(stream.for_each(|_| futures::future::ready(())));
    (reader, task)
}
