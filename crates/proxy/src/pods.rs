//! What the proxy knows of every pod: labels (DestinationRule subsets, policies select on
//! them), workload name (telemetry), service account (the identity a policy names) and
//! addresses (who a connection comes from); for NetworkPolicy also its UID and node (which
//! veth on which node is its) and container ports (named ports resolve against them).
//! Kept as small records rather than whole Pod objects, so a node's proxy does not hold
//! every pod spec of the cluster.

use crate::telemetry::Workload;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use tokio::sync::{watch, Notify};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub labels: Arc<BTreeMap<String, String>>,
    pub workload: Arc<Workload>,
    pub service_account: String,
    pub ips: Vec<IpAddr>,
    /// Succeeded or Failed: its address may already belong to another pod.
    pub finished: bool,
    pub uid: String,
    pub node_name: Option<String>,
    /// The address of the node it runs on (status.hostIP): where a tunnel to it goes.
    pub host_ip: Option<IpAddr>,
    pub ports: Arc<Vec<PodPort>>,
}

/// A port a container of the pod declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPort {
    /// Empty when the port has no name.
    pub name: String,
    pub protocol: crate::view::Protocol,
    pub port: u16,
}

impl PodMeta {
    pub fn from_pod(p: &Pod) -> PodMeta {
        let (namespace, name) = (p.namespace().unwrap_or_default(), p.name_any());
        let owners: Vec<(String, String)> = p
            .owner_references()
            .iter()
            .filter(|o| o.controller == Some(true))
            .map(|o| (o.kind.clone(), o.name.clone()))
            .collect();
        let labels = p.labels();
        let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let workload = Workload {
            name: crate::telemetry::workload_name(&name, &owners),
            namespace: namespace.clone(),
            app: labels
                .get("app.kubernetes.io/name")
                .cloned()
                .unwrap_or_else(|| label("app")),
            version: labels
                .get("app.kubernetes.io/version")
                .cloned()
                .unwrap_or_else(|| label("version")),
        };
        let status = p.status.as_ref();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.parse().ok())
            .collect();
        if ips.is_empty() {
            ips.extend(
                status
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|i| i.parse::<IpAddr>().ok()),
            );
        }
        let host_network = p
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if host_network {
            // The node's address is not this pod's identity.
            ips.clear();
        }
        let spec = p.spec.as_ref();
        let ports: Vec<PodPort> = spec
            .into_iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|cp| {
                Some(PodPort {
                    name: cp.name.clone().unwrap_or_default(),
                    protocol: crate::view::Protocol::parse(cp.protocol.as_deref()),
                    port: u16::try_from(cp.container_port).ok()?,
                })
            })
            .collect();
        PodMeta {
            uid: p.uid().unwrap_or_default(),
            node_name: spec.and_then(|s| s.node_name.clone()),
            host_ip: status
                .and_then(|s| s.host_ip.as_deref())
                .and_then(|i| i.parse().ok()),
            ports: Arc::new(ports),
            labels: Arc::new(labels.clone()),
            workload: Arc::new(workload),
            service_account: p
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            ips,
            finished: matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Succeeded") | Some("Failed")
            ),
            namespace,
            name,
        }
    }

    /// Istio's principal for the pod, as policies write it (the SPIFFE ID without its
    /// `spiffe://` scheme).
    pub fn principal(&self, domain: &str) -> String {
        format!("{domain}/ns/{}/sa/{}", self.namespace, self.service_account)
    }
}

/// Pods by "namespace/name".
pub type Pods = HashMap<String, Arc<PodMeta>>;

#[derive(Clone)]
pub struct PodStore {
    pods: Arc<RwLock<Pods>>,
    ready: watch::Receiver<bool>,
}

impl PodStore {
    pub fn snapshot(&self) -> Pods {
        self.pods.read().unwrap().clone()
    }

    pub async fn wait_until_ready(&self) {
        let mut r = self.ready.clone();
        let _ = r.wait_for(|v| *v).await;
    }
}

/// Follows every pod; `changed` is notified after each change once listed.
pub fn watch_pods(client: Client, changed: Arc<Notify>) -> (PodStore, tokio::task::JoinHandle<()>) {
    let pods: Arc<RwLock<Pods>> = Default::default();
    let (ready_tx, ready) = watch::channel(false);
    let store = PodStore {
        pods: pods.clone(),
        ready,
    };
    let task = tokio::spawn(async move {
        let api: Api<Pod> = Api::all(client);
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut staging: Option<Pods> = None;
        let key = |p: &Pod| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init) => staging = Some(Pods::new()),
                Ok(watcher::Event::InitApply(p)) => {
                    if let Some(s) = staging.as_mut() {
                        s.insert(key(&p), Arc::new(PodMeta::from_pod(&p)));
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(s) = staging.take() {
                        *pods.write().unwrap() = s;
                    }
                    let _ = ready_tx.send(true);
                    changed.notify_one();
                }
                Ok(watcher::Event::Apply(p)) => {
                    let meta = Arc::new(PodMeta::from_pod(&p));
                    let old = pods.write().unwrap().insert(key(&p), meta.clone());
                    // Status-only churn (probes, restarts) changes nothing the proxy uses.
                    if old.as_deref() != Some(&*meta) {
                        changed.notify_one();
                    }
                }
                Ok(watcher::Event::Delete(p)) => {
                    pods.write().unwrap().remove(&key(&p));
                    changed.notify_one();
                }
                Err(e) => tracing::debug!(error = %e, "proxy pod watch error; retrying"),
            }
        }
    });
    (store, task)
}
