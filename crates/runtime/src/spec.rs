//! What the agent asks for: pod sandboxes and containers, and the sandbox record it gets back.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxSpec {
    pub pod_uid: String,
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    /// None: the pod shares the host's network (hostNetwork, or no root).
    pub network: Option<PodNetwork>,
    /// Content for the pod's /etc/resolv.conf; None keeps the image's file.
    pub resolv_conf: Option<String>,
    /// Content for /etc/hosts; None writes localhost entries plus the pod's own name.
    pub hosts: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    /// The node bridge; created with `gateway/prefix_len` on it when missing.
    pub bridge: String,
    pub pod_ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

/// A pod sandbox as recorded under `state_dir/sandboxes/<pod_uid>/sandbox.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sandbox {
    pub pod_uid: String,
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub dir: PathBuf,
    /// The bind-mounted network namespace (None: host network).
    pub netns_path: Option<PathBuf>,
    /// Host end of the pod's veth pair.
    pub host_veth: Option<String>,
    pub network: Option<PodNetwork>,
    pub hosts_path: PathBuf,
    pub hostname_path: PathBuf,
    pub resolv_conf_path: Option<PathBuf>,
    pub created_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Rootfs {
    /// Image layers, lowest first; the writable upper and work dirs go in the container's
    /// state directory and are deleted with it.
    Overlay { lower_dirs: Vec<PathBuf> },
    /// An unpacked root directory used in place (writes land in it).
    Dir(PathBuf),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mount {
    /// Host path (a file or a directory) bind-mounted at `destination` in the container.
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CFS quota: millicores per 100 ms period.
    pub cpu_millis_limit: Option<u64>,
    /// Relative weight (cpu.shares on v1, cpu.weight on v2).
    pub cpu_millis_request: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub pids_limit: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Unique on the node: `[A-Za-z0-9_.-]`, not starting with '.', at most 128 bytes.
    pub id: String,
    pub rootfs: Rootfs,
    /// argv, already resolved from the image's entrypoint/cmd and the pod's command/args.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Volumes and extra files. The sandbox's /etc/hosts, /etc/hostname and /etc/resolv.conf
    /// are added unless a mount here already targets that path.
    pub mounts: Vec<Mount>,
    pub readonly_rootfs: bool,
    /// Set no_new_privs (allowPrivilegeEscalation: false): setuid binaries and file
    /// capabilities grant nothing to the process or its children.
    #[serde(default)]
    pub no_new_privileges: bool,
    pub resources: Resources,
    /// Capability names (`CAP_NET_ADMIN` or `NET_ADMIN`); None: the usual container default
    /// set (that of Docker and containerd).
    pub capabilities: Option<Vec<String>>,
    /// Where the shim writes the CRI-format log; the file belongs to the agent (not removed).
    pub log_path: PathBuf,
    /// Run on a pseudo-terminal; its output is logged as stdout.
    pub tty: bool,
    /// Give the container a stdin: a FIFO at `<container dir>/stdin` that the agent may open
    /// for writing. Without it, stdin is /dev/null.
    pub stdin: bool,
    /// Close the container's stdin when the first attach session that wrote to it ends
    /// (the pod's `stdinOnce`).
    #[serde(default)]
    pub stdin_once: bool,
}

impl ContainerSpec {
    /// A spec with the common defaults: root user, no limits, no mounts.
    pub fn new(
        id: impl Into<String>,
        rootfs: Rootfs,
        args: Vec<String>,
        log_path: PathBuf,
    ) -> Self {
        ContainerSpec {
            id: id.into(),
            rootfs,
            args,
            env: Vec::new(),
            cwd: None,
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            mounts: Vec::new(),
            readonly_rootfs: false,
            no_new_privileges: false,
            resources: Resources::default(),
            capabilities: None,
            log_path,
            tty: false,
            stdin: false,
            stdin_once: false,
        }
    }
}

pub(crate) fn validate_id(kind: &'static str, id: &str) -> crate::Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(crate::Error::invalid(
            kind,
            format!("{id:?}: use 1-128 of [A-Za-z0-9_.-], not starting with '.'"),
        ))
    }
}
