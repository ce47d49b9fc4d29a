//! The node's registration: its Node object (capacity, addresses, nodeInfo, conditions,
//! podCIDR, kubelet port), kept fresh, and its Lease in `kube-node-lease`, renewed every
//! 10 s as the kubelet does, which is how the control plane knows the node is alive.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};

use crate::AgentConfig;

pub const KUBELET_VERSION: &str = "v1.33.0";
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const LEASE_DURATION_SECONDS: i32 = 40;
const LEASE_RENEW: Duration = Duration::from_secs(10);
const STATUS_CHECK: Duration = Duration::from_secs(10);
/// Written even when nothing changed, so heartbeat times stay recent (kubelet: 5 min).
const STATUS_REPORT: Duration = Duration::from_secs(60);

/// What the host offers and is, read once at start (capacity is re-read on refresh).
#[derive(Clone, Debug, PartialEq)]
pub struct HostFacts {
    pub cpus: usize,
    pub memory_kib: u64,
    pub ephemeral_storage_bytes: u64,
    pub hostname: String,
    pub kernel: String,
    pub os_image: String,
    pub architecture: String,
    pub machine_id: String,
    pub boot_id: String,
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `MemTotal` from /proc/meminfo, in KiB.
pub fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `PRETTY_NAME` from /etc/os-release.
pub fn os_pretty_name(os_release: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').to_string())
}

/// The Go architecture name Kubernetes reports (`amd64`, `arm64`).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_blocks as u64 * st.f_frsize as u64
}

impl HostFacts {
    pub fn read(data_dir: &Path) -> HostFacts {
        let hostname = read_trim("/proc/sys/kernel/hostname");
        HostFacts {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_kib: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| mem_total_kib(&m))
                .unwrap_or(0),
            ephemeral_storage_bytes: disk_bytes(data_dir),
            hostname,
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            os_image: std::fs::read_to_string("/etc/os-release")
                .ok()
                .and_then(|s| os_pretty_name(&s))
                .unwrap_or_else(|| "Linux".into()),
            architecture: go_arch().into(),
            machine_id: read_trim("/etc/machine-id"),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
        }
    }
}

/// The node's primary address: the source address the kernel would pick for a route out.
/// Connecting a UDP socket sends nothing; it only chooses the route.
pub fn detect_node_ip() -> IpAddr {
    let probe = || -> std::io::Result<IpAddr> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect("192.0.2.1:9")?;
        Ok(s.local_addr()?.ip())
    };
    probe().unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

pub struct Registration {
    pub client: Client,
    pub cfg: AgentConfig,
    pub node_ip: IpAddr,
    pub images: std::sync::Arc<corral_images::ImageStore>,
}

impl Registration {
    fn labels(&self, facts: &HostFacts) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert("kubernetes.io/hostname".into(), self.cfg.node_name.clone());
        l.insert("kubernetes.io/os".into(), "linux".into());
        l.insert("kubernetes.io/arch".into(), facts.architecture.clone());
        l.insert("beta.kubernetes.io/os".into(), "linux".into());
        l.insert("beta.kubernetes.io/arch".into(), facts.architecture.clone());
        l.extend(self.cfg.node_labels.clone());
        l
    }

    async fn image_list(&self) -> Value {
        let store = self.images.clone();
        let images = tokio::task::spawn_blocking(move || store.images())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        Value::Array(
            images
                .into_iter()
                .map(|img| {
                    let mut names: Vec<String> = img
                        .references
                        .iter()
                        .map(|r| {
                            let repo = r.rsplit_once(':').map(|x| x.0).unwrap_or(r);
                            format!("{repo}@{}", img.digest.as_str())
                        })
                        .collect();
                    names.dedup();
                    names.extend(img.references.iter().cloned());
                    json!({"names": names, "sizeBytes": img.size})
                })
                .collect(),
        )
    }

    /// The status the agent reports; `prev` keeps transition times of unchanged conditions.
    async fn status(&self, facts: &HostFacts, prev: Option<&Value>) -> Value {
        let now = Timestamp::now().to_string();
        let transition = |ty: &str, status: &str| -> String {
            prev.and_then(|p| p["conditions"].as_array())
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c["type"] == ty && c["status"] == status)
                        .and_then(|c| c["lastTransitionTime"].as_str())
                })
                .map(str::to_string)
                .unwrap_or_else(|| now.clone())
        };
        let cond = |ty: &str, status: &str, reason: &str, message: &str| {
            json!({
                "type": ty, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": transition(ty, status),
            })
        };
        let capacity = json!({
            "cpu": facts.cpus.to_string(),
            "memory": format!("{}Ki", facts.memory_kib),
            "pods": "110",
            "ephemeral-storage": format!("{}Ki", facts.ephemeral_storage_bytes / 1024),
            "hugepages-1Gi": "0",
            "hugepages-2Mi": "0",
        });
        json!({
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.node_ip.to_string()},
                {"type": "Hostname", "address": facts.hostname},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.cfg.kubelet_port}},
            "nodeInfo": {
                "machineID": facts.machine_id,
                "systemUUID": facts.machine_id,
                "bootID": facts.boot_id,
                "kernelVersion": facts.kernel,
                "osImage": facts.os_image,
                "containerRuntimeVersion": format!("corral://{}", env!("CARGO_PKG_VERSION")),
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": facts.architecture,
            },
            "images": self.image_list().await,
        })
    }

    fn cidr_spec(cidr: &Option<String>) -> Value {
        match cidr {
            Some(c) => json!({"podCIDR": c, "podCIDRs": [c]}),
            None => json!({}),
        }
    }

    /// Creates or updates the Node (labels, podCIDR), then writes its status.
    pub async fn register(&self) -> Result<Value, kube::Error> {
        let facts = HostFacts::read(&self.cfg.data_dir);
        let api: Api<Node> = Api::all(self.client.clone());
        let labels = self.labels(&facts);
        let existing = api.get_opt(&self.cfg.node_name).await?;
        match &existing {
            None => {
                let node: Node = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": self.cfg.node_name, "labels": labels},
                    "spec": Self::cidr_spec(&self.cfg.pod_cidr),
                }))
                .expect("valid node");
                match api.create(&PostParams::default(), &node).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
                tracing::info!(node = %self.cfg.node_name, "registered node");
            }
            Some(n) => {
                let mut spec = json!({});
                if n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_none() {
                    spec = Self::cidr_spec(&self.cfg.pod_cidr);
                }
                let have = n.labels();
                if labels.iter().any(|(k, v)| have.get(k) != Some(v)) || spec != json!({}) {
                    let patch = json!({"metadata": {"labels": labels}, "spec": spec});
                    api.patch(
                        &self.cfg.node_name,
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
                }
            }
        }
        let prev = existing
            .as_ref()
            .and_then(|n| serde_json::to_value(&n.status).ok());
        self.write_status(&facts, prev.as_ref()).await
    }

    async fn write_status(
        &self,
        facts: &HostFacts,
        prev: Option<&Value>,
    ) -> Result<Value, kube::Error> {
        let status = self.status(facts, prev).await;
        let api: Api<Node> = Api::all(self.client.clone());
        api.patch_status(
            &self.cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await?;
        Ok(status)
    }

    /// Keeps the node status fresh until `stop` fires: re-reads the host every 10 s and
    /// writes when something other than heartbeat times changed, or once a minute.
    pub async fn status_loop(self, mut last: Value, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut written = Instant::now();
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(STATUS_CHECK) => {}
            }
            let facts = HostFacts::read(&self.cfg.data_dir);
            let next = self.status(&facts, Some(&last)).await;
            let due = written.elapsed() >= STATUS_REPORT;
            if !due && strip_heartbeats(&next) == strip_heartbeats(&last) {
                continue;
            }
            // The node may have been deleted (by a user, or node lifecycle): register again.
            let result = match Api::<Node>::all(self.client.clone())
                .get_opt(&self.cfg.node_name)
                .await
            {
                Ok(Some(_)) => self.write_status(&facts, Some(&last)).await,
                Ok(None) => self.register().await,
                Err(e) => Err(e),
            };
            match result {
                Ok(s) => {
                    last = s;
                    written = Instant::now();
                }
                Err(e) => tracing::warn!(error = %e, "node status update failed"),
            }
        }
    }

    /// Renews the node's Lease every 10 s until `stop` fires.
    pub async fn lease_loop(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.renew_lease().await {
                tracing::warn!(error = %e, "node lease renewal failed");
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(LEASE_RENEW) => {}
            }
        }
    }

    async fn renew_lease(&self) -> Result<(), kube::Error> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let now = MicroTime(Timestamp::now());
        let name = &self.cfg.node_name;
        match api.get_opt(name).await? {
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                spec.renew_time = Some(now);
                spec.holder_identity = Some(name.clone());
                spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
                api.replace(name, &PostParams::default(), &lease).await?;
            }
            None => {
                let node_uid = Api::<Node>::all(self.client.clone())
                    .get_opt(name)
                    .await?
                    .and_then(|n| n.uid());
                let owners = node_uid
                    .map(|uid| {
                        json!([{"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}])
                    })
                    .unwrap_or(json!([]));
                let lease: Lease = serde_json::from_value(json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": LEASE_NAMESPACE, "ownerReferences": owners},
                    "spec": {
                        "holderIdentity": name,
                        "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                        "renewTime": now,
                    },
                }))
                .expect("valid lease");
                match api.create(&PostParams::default(), &lease).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

fn strip_heartbeats(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(cs) = s["conditions"].as_array_mut() {
        for c in cs {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastHeartbeatTime");
            }
        }
    }
    s
}

/// The pod range the control plane assigns to `node` (kube's node IPAM): creates the Node if
/// it does not exist yet, then waits for its spec.podCIDR. None: stopped while waiting.
pub async fn assigned_pod_cidr(
    client: &Client,
    node: &str,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Option<String> {
    let api: Api<Node> = Api::all(client.clone());
    let mut logged = false;
    loop {
        match api.get_opt(node).await {
            Ok(Some(n)) => {
                if let Some(c) = n.spec.and_then(|s| s.pod_cidr) {
                    return Some(c);
                }
                if !logged {
                    tracing::info!(%node, "waiting for the control plane to assign this node's pod range");
                    logged = true;
                }
            }
            Ok(None) => {
                let n: Node = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
                }))
                .expect("valid node");
                if let Err(e) = api.create(&PostParams::default(), &n).await {
                    tracing::warn!(%node, error = %e, "registering the node failed; retrying");
                }
                continue;
            }
            Err(e) => tracing::warn!(%node, error = %e, "reading the node failed; retrying"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return None,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_files() {
        let meminfo = "MemTotal:        8023104 kB\nMemFree:          123 kB\n";
        assert_eq!(mem_total_kib(meminfo), Some(8023104));
        assert_eq!(mem_total_kib("nothing"), None);
        let os = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n";
        assert_eq!(
            os_pretty_name(os).as_deref(),
            Some("Debian GNU/Linux 13 (trixie)")
        );
    }

    #[test]
    fn host_facts_are_real() {
        let f = HostFacts::read(Path::new("/"));
        assert!(f.cpus >= 1);
        assert!(f.memory_kib > 0);
        assert!(f.ephemeral_storage_bytes > 0);
        assert!(!f.kernel.is_empty());
    }
}
