//! The runtime the agent drives: pod sandboxes and containers, all recorded under `state_dir`
//! so a new `Runtime` over the same directory adopts what a previous one started.
//!
//! Layout: `sandboxes/<pod_uid>/{sandbox.json,netns,hosts,hostname,resolv.conf}`,
//! `containers/<id>/{config.json,state.json,exit.json,shim.log,rootfs/,upper/,work/,stdin}`,
//! `bridges/<name>` (bridges this runtime created, for `cleanup_all`).

use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

use crate::cgroup::{CgroupVersion, Cgroups, ContainerStats};
use crate::error::{Error, IoContext, Result};
use crate::exec::ExecProcess;
use crate::netlink::Netlink;
use crate::network;
use crate::shim::{ExecRequest, SyncMsg, SYNC_FD_ENV};
use crate::spec::{validate_id, ContainerSpec, Mount, Rootfs, Sandbox, SandboxSpec};
use crate::state::{self, ContainerConfig, ContainerState, StateRecord};
use crate::sys;

const SHIM_START_TIMEOUT: Duration = Duration::from_secs(30);

/// What an attach session gets: the container's stdin (None without `stdin: true`) and
/// the log file where its output lands, read from its current end.
pub struct Attach {
    pub stdin: Option<tokio::net::unix::pipe::Sender>,
    pub log_path: PathBuf,
    pub tty: bool,
}

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub state_dir: PathBuf,
    /// The shim binary; run as `shim_exe shim_args.. run <container dir>`.
    pub shim_exe: PathBuf,
    /// Arguments before the shim's own (`["shim"]` for `corral shim run ..`).
    pub shim_args: Vec<String>,
    /// Cgroup under each hierarchy's root that holds the containers' cgroups.
    pub cgroup_parent: String,
    /// Where the cgroup hierarchies are mounted.
    pub cgroup_root: PathBuf,
}

impl RuntimeConfig {
    pub fn new(state_dir: impl Into<PathBuf>, shim_exe: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            state_dir: state_dir.into(),
            shim_exe: shim_exe.into(),
            shim_args: Vec::new(),
            cgroup_parent: "corral".into(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

/// What isolation this host gives, found once at `Runtime::new`.
#[derive(Clone, Debug)]
pub struct Capabilities {
    pub root: bool,
    /// Namespaces, pivot_root and pod network namespaces (needs root).
    pub namespaces: bool,
    pub cgroup: Option<CgroupVersion>,
    pub overlay: bool,
    pub pidfd: bool,
    /// Plain sentences about what is missing and what that means.
    pub notes: Vec<String>,
}

/// One container as listed from the state directory.
#[derive(Clone, Debug)]
pub struct ContainerInfo {
    pub id: String,
    pub pod_uid: String,
    pub log_path: PathBuf,
    pub created_at: String,
    pub state: ContainerState,
}

#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RuntimeConfig,
    caps: Capabilities,
    cgroups: Option<Cgroups>,
    /// Bridges already set up by this runtime (name -> index), so a sandbox does not redo
    /// the lookups and address check under the kernel's global rtnl lock each time.
    bridges: std::sync::Mutex<std::collections::HashMap<String, i32>>,
}

fn detect(cfg: &RuntimeConfig) -> (Capabilities, Option<Cgroups>) {
    let root = sys::is_root();
    let mut notes = Vec::new();
    let cgroups = if root {
        Cgroups::detect(&cfg.cgroup_root, &cfg.cgroup_parent)
    } else {
        None
    };
    if !root {
        notes.push(
            "not running as root: containers run as plain host processes, without namespaces, \
             cgroup limits, a private rootfs or pod network namespaces"
                .to_string(),
        );
    } else if cgroups.is_none() {
        notes.push(format!(
            "no usable cgroup hierarchy under {}: resource limits are not enforced",
            cfg.cgroup_root.display()
        ));
    }
    let overlay = fs::read_to_string("/proc/filesystems")
        .map(|f| f.lines().any(|l| l.ends_with("\toverlay")))
        .unwrap_or(false);
    if root && !overlay {
        notes.push("overlayfs is not available: only Rootfs::Dir works".to_string());
    }
    let pidfd = sys::pidfd_open(std::process::id() as i32).is_ok();
    if !pidfd {
        notes.push("no pidfd_open (Linux < 5.3): exits are noticed by polling".to_string());
    }
    let caps = Capabilities {
        root,
        namespaces: root,
        cgroup: cgroups.as_ref().map(|c| c.version),
        overlay,
        pidfd,
        notes,
    };
    (caps, cgroups)
}

impl Runtime {
    pub fn new(cfg: RuntimeConfig) -> Result<Runtime> {
        for sub in ["containers", "sandboxes", "bridges"] {
            let d = cfg.state_dir.join(sub);
            fs::create_dir_all(&d).ctx(|| format!("create {}", d.display()))?;
        }
        let (caps, cgroups) = detect(&cfg);
        for note in &caps.notes {
            tracing::warn!("{note}");
        }
        Ok(Runtime {
            inner: Arc::new(Inner {
                cfg,
                caps,
                cgroups,
                bridges: Default::default(),
            }),
        })
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    pub fn state_dir(&self) -> &Path {
        &self.inner.cfg.state_dir
    }

    fn sandbox_dir(&self, pod_uid: &str) -> PathBuf {
        self.inner.cfg.state_dir.join("sandboxes").join(pod_uid)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.inner.cfg.state_dir.join("containers").join(id)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| Error::Io {
                context: "runtime task".into(),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    /// Creates the pod's sandbox: its /etc files and, as root with `spec.network`, a network
    /// namespace wired to the node bridge.
    pub async fn create_sandbox(&self, spec: SandboxSpec) -> Result<Sandbox> {
        validate_id("pod uid", &spec.pod_uid)?;
        let dir = self.sandbox_dir(&spec.pod_uid);
        self.blocking(move |inner| inner.create_sandbox(spec, dir))
            .await
    }

    pub fn sandbox(&self, pod_uid: &str) -> Result<Option<Sandbox>> {
        validate_id("pod uid", pod_uid)?;
        state::read_json(&self.sandbox_dir(pod_uid).join("sandbox.json"))
    }

    pub fn list_sandboxes(&self) -> Result<Vec<Sandbox>> {
        let mut out = Vec::new();
        for name in list_dir(&self.inner.cfg.state_dir.join("sandboxes"))? {
            if let Some(sb) = self.sandbox(&name)? {
                out.push(sb);
            }
        }
        Ok(out)
    }

    /// Deletes the pod's veth pair, network namespace and files. Containers should be removed
    /// first; any still running keep the namespace alive until they exit.
    pub async fn remove_sandbox(&self, pod_uid: &str) -> Result<()> {
        validate_id("pod uid", pod_uid)?;
        let dir = self.sandbox_dir(pod_uid);
        self.blocking(move |_| remove_sandbox_dir(&dir)).await
    }

    /// Starts a container in `sandbox` through a new shim; returns once the process runs.
    pub async fn start_container(
        &self,
        sandbox: &Sandbox,
        spec: ContainerSpec,
    ) -> Result<ContainerInfo> {
        validate_id("container id", &spec.id)?;
        let sandbox = sandbox.clone();
        let dir = self.container_dir(&spec.id);
        self.blocking(move |inner| inner.start_container(&sandbox, spec, dir))
            .await
    }

    pub fn container_state(&self, id: &str) -> Result<ContainerState> {
        validate_id("container id", id)?;
        let dir = self.container_dir(id);
        if !dir.join(state::CONFIG).exists() {
            return Err(Error::NotFound {
                kind: "container",
                id: id.into(),
            });
        }
        state::read_state(&dir)
    }

    /// Every container recorded in the state directory, running or not.
    pub fn list_containers(&self) -> Result<Vec<ContainerInfo>> {
        self.list_containers_with_prefix("")
    }

    /// The containers whose id starts with `prefix`; only their records are read, so a
    /// caller that knows the ids' shape (the agent's start with the pod uid) does not pay
    /// for every container on the node.
    pub fn list_containers_with_prefix(&self, prefix: &str) -> Result<Vec<ContainerInfo>> {
        let mut out = Vec::new();
        for id in list_dir(&self.inner.cfg.state_dir.join("containers"))? {
            if !id.starts_with(prefix) {
                continue;
            }
            let dir = self.container_dir(&id);
            let Some(cfg) = state::read_json::<ContainerConfig>(&dir.join(state::CONFIG))? else {
                continue;
            };
            out.push(ContainerInfo {
                id,
                pod_uid: cfg.pod_uid,
                log_path: cfg.spec.log_path,
                created_at: cfg.created_at,
                state: state::read_state(&dir)?,
            });
        }
        Ok(out)
    }

    fn config(&self, id: &str) -> Result<ContainerConfig> {
        validate_id("container id", id)?;
        state::read_json(&self.container_dir(id).join(state::CONFIG))?.ok_or_else(|| {
            Error::NotFound {
                kind: "container",
                id: id.into(),
            }
        })
    }

    /// Resolves when the container has exited (at once if it has), with its final state.
    pub async fn wait_exit(&self, id: &str) -> Result<ContainerState> {
        let dir = self.container_dir(id);
        self.config(id)?;
        loop {
            let st = state::read_state(&dir)?;
            let record: Option<StateRecord> = match st {
                ContainerState::Exited { .. } | ContainerState::Unknown { .. } => return Ok(st),
                ContainerState::Created => None,
                ContainerState::Running { .. } => state::read_json(&dir.join(state::STATE))?,
            };
            // Watch the shim (it exits right after writing the exit record); if it is gone,
            // the container process itself.
            let watch = record.and_then(|r| {
                [(r.shim_pid, r.shim_start_ticks), (r.pid, r.start_ticks)]
                    .into_iter()
                    .find_map(|(pid, ticks)| {
                        let fd = sys::pidfd_open(pid).ok()?;
                        sys::process_matches(pid, ticks).then_some(fd)
                    })
            });
            // SAFETY: the OwnedFd moves into the AsyncFd and stays open for its whole life.
            let watch = watch.map(|fd| unsafe {
                AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            });
            match watch {
                Some(Ok(fd)) => {
                    let _ = fd.readable().await;
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Sends SIGTERM, then SIGKILL if the container is still running after `grace`; returns
    /// the final state.
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<ContainerState> {
        let cfg = self.config(id)?;
        let dir = self.container_dir(id);
        if !grace.is_zero() && signal_container(&dir, &cfg, libc::SIGTERM)? {
            if let Ok(r) = tokio::time::timeout(grace, self.wait_exit(id)).await {
                return r;
            }
        }
        signal_container(&dir, &cfg, libc::SIGKILL)?;
        match tokio::time::timeout(Duration::from_secs(10), self.wait_exit(id)).await {
            Ok(r) => r,
            Err(_) => self.container_state(id),
        }
    }

    /// Kills the container if it still runs, then deletes its cgroup and directory (the log
    /// file at `log_path` stays: it belongs to the agent).
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let cfg = self.config(id)?;
        let dir = self.container_dir(id);
        let st = state::read_state(&dir)?;
        if matches!(st, ContainerState::Running { .. } | ContainerState::Created) {
            self.stop_container(id, Duration::ZERO).await?;
        }
        // The shim may still be finishing its records.
        if let Some(r) = state::read_json::<StateRecord>(&dir.join(state::STATE))? {
            let deadline = Instant::now() + Duration::from_secs(5);
            while sys::process_matches(r.shim_pid, r.shim_start_ticks) && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        self.blocking(move |_| {
            if let Some(cg) = &cfg.cgroup {
                cg.remove();
            }
            remove_container_dir(&dir)
        })
        .await
    }

    /// Runs `argv` inside the running container `id`, joined to its namespaces, cgroup and
    /// root, as the container's user. With `tty`, stdio is a terminal (`ExecProcess::pty`).
    pub async fn exec(&self, id: &str, argv: Vec<String>, tty: bool) -> Result<ExecProcess> {
        self.config(id)?;
        if argv.is_empty() {
            return Err(Error::invalid("exec", "no command given"));
        }
        let dir = self.container_dir(id);
        if !state::read_state(&dir)?.is_running() {
            return Err(Error::invalid(
                "exec",
                format!("container {id} is not running"),
            ));
        }
        let req = serde_json::to_string(&ExecRequest { argv, tty }).expect("serializable");
        let mut cmd = tokio::process::Command::new(&self.inner.cfg.shim_exe);
        cmd.args(&self.inner.cfg.shim_args)
            .arg("exec")
            .arg(&dir)
            .arg(req)
            .kill_on_drop(true);
        let mut pty_socket = None;
        if tty {
            // The helper makes the terminal inside the container and sends us its master side.
            let (ours, theirs) = sys::socketpair().ctx(|| "socketpair".into())?;
            let fd = theirs.as_raw_fd();
            cmd.env(crate::shim::EXEC_PTY_FD_ENV, "3")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            unsafe {
                cmd.pre_exec(move || {
                    if fd == 3 {
                        sys::cvt(libc::fcntl(3, libc::F_SETFD, 0))?;
                    } else {
                        sys::cvt(libc::dup2(fd, 3))?;
                    }
                    Ok(())
                });
            }
            pty_socket = Some((ours, theirs));
        } else {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        let mut child = cmd
            .spawn()
            .ctx(|| format!("spawn {}", self.inner.cfg.shim_exe.display()))?;
        drop(cmd);
        let (pty_file, pty_fd) = match pty_socket {
            Some((ours, theirs)) => {
                drop(theirs);
                let master =
                    tokio::task::spawn_blocking(move || recv_fd_timeout(&ours, SHIM_START_TIMEOUT))
                        .await
                        .map_err(|e| Error::Io {
                            context: "exec terminal".into(),
                            source: std::io::Error::other(e.to_string()),
                        })??;
                let Some(master) = master else {
                    let mut msg = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use tokio::io::AsyncReadExt;
                        let _ = e.read_to_string(&mut msg).await;
                    }
                    return Err(Error::invalid(
                        "exec",
                        format!("no terminal from exec helper: {}", msg.trim()),
                    ));
                };
                let io = master.try_clone().ctx(|| "dup pty".into())?;
                (
                    Some(tokio::fs::File::from_std(fs::File::from(io))),
                    Some(master),
                )
            }
            None => (None, None),
        };
        Ok(ExecProcess {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
            pty: pty_file,
            pty_fd,
        })
    }

    /// A running container's own streams for an attach session: its stdin FIFO opened for
    /// writing (when the container has one), and the CRI log its output goes to.
    pub async fn attach(&self, id: &str) -> Result<Attach> {
        let cfg = self.config(id)?;
        let dir = self.container_dir(id);
        if !state::read_state(&dir)?.is_running() {
            return Err(Error::invalid(
                "attach",
                format!("container {id} is not running"),
            ));
        }
        let stdin = if cfg.spec.stdin {
            let path = dir.join(state::STDIN_FIFO);
            // The shim holds the read side open (non-blocking), so this does not wait.
            let tx = tokio::net::unix::pipe::OpenOptions::new()
                .open_sender(&path)
                .ctx(|| format!("open {}", path.display()))?;
            Some(tx)
        } else {
            None
        };
        Ok(Attach {
            stdin,
            log_path: cfg.spec.log_path.clone(),
            tty: cfg.spec.tty,
        })
    }

    /// CPU and memory usage from the container's cgroup.
    pub fn stats(&self, id: &str) -> Result<ContainerStats> {
        Ok(self
            .config(id)?
            .cgroup
            .map(|c| c.stats())
            .unwrap_or_default())
    }

    /// Removes every container, sandbox and bridge this runtime's state directory records.
    pub async fn cleanup_all(&self) -> Result<()> {
        for c in self.list_containers()? {
            self.remove_container(&c.id).await?;
        }
        for s in self.list_sandboxes()? {
            self.remove_sandbox(&s.pod_uid).await?;
        }
        let bridges = self.inner.cfg.state_dir.join("bridges");
        for b in list_dir(&bridges)? {
            network::delete_bridge(&b).ctx(|| format!("delete bridge {b}"))?;
            fs::remove_file(bridges.join(&b)).ctx(|| format!("forget bridge {b}"))?;
        }
        if let Some(cg) = &self.inner.cgroups {
            cg.remove_parent();
        }
        Ok(())
    }
}

fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e).ctx(|| format!("list {}", dir.display())),
    };
    for e in rd {
        let e = e.ctx(|| format!("list {}", dir.display()))?;
        if let Some(n) = e.file_name().to_str() {
            if !n.starts_with('.') && !n.ends_with(".tmp") {
                names.push(n.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Signals the container's process (its process group when not in a pid namespace); false
/// when it is not running.
fn signal_container(dir: &Path, cfg: &ContainerConfig, sig: libc::c_int) -> Result<bool> {
    let Some(r) = state::read_json::<StateRecord>(&dir.join(state::STATE))? else {
        return Ok(false);
    };
    // A pidfd pins the process, so the check and the signal hit the same one.
    let Ok(pidfd) = sys::pidfd_open(r.pid) else {
        return Ok(false);
    };
    if !sys::process_matches(r.pid, r.start_ticks) {
        return Ok(false);
    }
    let res = if cfg.isolated {
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<u8>(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    } else {
        sys::kill(-r.pid, sig)
    };
    match res {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(e) => Err(e).ctx(|| format!("signal container process {}", r.pid)),
    }
}

fn remove_sandbox_dir(dir: &Path) -> Result<()> {
    let sb: Option<Sandbox> = state::read_json(&dir.join("sandbox.json"))?;
    let netns = dir.join("netns");
    let veth = sb.as_ref().and_then(|s| s.host_veth.clone());
    network::remove_pod(veth.as_deref(), Some(&netns))
        .ctx(|| format!("remove network of {}", dir.display()))?;
    remove_dir_safely(dir)
}

fn remove_container_dir(dir: &Path) -> Result<()> {
    remove_dir_safely(dir)
}

/// Deletes a directory tree, first detaching anything mounted inside it so that nothing
/// outside (an image layer, a volume) is ever deleted through a mount.
fn remove_dir_safely(dir: &Path) -> Result<()> {
    for m in sys::mounts_under(dir) {
        sys::umount(&m, libc::MNT_DETACH).ctx(|| format!("unmount {}", m.display()))?;
    }
    if !sys::mounts_under(dir).is_empty() {
        return Err(Error::Io {
            context: format!("remove {}", dir.display()),
            source: std::io::Error::other("still has mounts"),
        });
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).ctx(|| format!("remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn default_hosts(spec: &SandboxSpec) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(n) = &spec.network {
        s.push_str(&format!("{}\t{}\n", n.pod_ip, spec.hostname));
    }
    s
}

impl Inner {
    fn create_sandbox(&self, spec: SandboxSpec, dir: PathBuf) -> Result<Sandbox> {
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::AlreadyExists {
                    kind: "sandbox",
                    id: spec.pod_uid,
                })
            }
            Err(e) => return Err(e).ctx(|| format!("create {}", dir.display())),
        }
        let result = self.create_sandbox_in(&spec, &dir);
        if result.is_err() {
            let _ = remove_sandbox_dir(&dir);
        }
        result
    }

    fn create_sandbox_in(&self, spec: &SandboxSpec, dir: &Path) -> Result<Sandbox> {
        let t0 = Instant::now();
        let write = |name: &str, content: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            fs::write(&p, content).ctx(|| format!("write {}", p.display()))?;
            Ok(p)
        };
        let hosts_path = write(
            "hosts",
            spec.hosts.as_deref().unwrap_or(&default_hosts(spec)),
        )?;
        let hostname_path = write("hostname", &format!("{}\n", spec.hostname))?;
        let resolv_conf_path = spec
            .resolv_conf
            .as_deref()
            .map(|c| write("resolv.conf", c))
            .transpose()?;
        let mut sandbox = Sandbox {
            pod_uid: spec.pod_uid.clone(),
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            hostname: spec.hostname.clone(),
            dir: dir.to_path_buf(),
            netns_path: None,
            host_veth: None,
            network: None,
            hosts_path,
            hostname_path,
            resolv_conf_path,
            created_at: state::now_rfc3339(),
        };
        if let (Some(net), true) = (&spec.network, self.caps.namespaces) {
            if net.prefix_len == 0 || net.prefix_len > 30 {
                return Err(Error::invalid(
                    "pod network",
                    format!("prefix length {}", net.prefix_len),
                ));
            }
            let ns_path = dir.join("netns");
            let (ns, mut pod_nl) =
                network::create_netns(&ns_path).ctx(|| "create network namespace".into())?;
            let t_netns = Instant::now();
            sandbox.netns_path = Some(ns_path);
            let veth = network::host_veth_name(&spec.pod_uid);
            // Recorded before it exists, so a failure part-way still cleans it up.
            sandbox.host_veth = Some(veth.clone());
            state::write_json(&dir.join("sandbox.json"), &sandbox)?;
            let mut host = Netlink::open().ctx(|| "open netlink".into())?;
            let known = self.bridges.lock().unwrap().get(&net.bridge).copied();
            let attached = match known {
                Some(bridge) => {
                    network::attach_pod(&mut host, &mut pod_nl, &ns, bridge, &veth, net)
                }
                None => Err(std::io::Error::other("bridge not set up yet")),
            };
            if attached.is_err() {
                // First pod on this bridge, or the bridge changed under us: set it up again.
                self.bridges.lock().unwrap().remove(&net.bridge);
                let (bridge, created) = network::ensure_bridge(&mut host, net)
                    .ctx(|| format!("set up bridge {}", net.bridge))?;
                if created {
                    let mark = self.cfg.state_dir.join("bridges").join(&net.bridge);
                    fs::write(&mark, "").ctx(|| format!("write {}", mark.display()))?;
                }
                network::attach_pod(&mut host, &mut pod_nl, &ns, bridge, &veth, net)
                    .ctx(|| format!("attach pod {} to {}", spec.pod_uid, net.bridge))?;
                self.bridges
                    .lock()
                    .unwrap()
                    .insert(net.bridge.clone(), bridge);
            }
            tracing::debug!(
                pod_uid = %spec.pod_uid,
                files_and_netns_ms = (t_netns - t0).as_secs_f64() * 1000.0,
                veth_ms = t_netns.elapsed().as_secs_f64() * 1000.0,
                "pod network"
            );
            sandbox.network = Some(net.clone());
        }
        state::write_json(&dir.join("sandbox.json"), &sandbox)?;
        Ok(sandbox)
    }

    fn start_container(
        &self,
        sandbox: &Sandbox,
        spec: ContainerSpec,
        dir: PathBuf,
    ) -> Result<ContainerInfo> {
        if spec.args.is_empty() {
            return Err(Error::invalid("container args", "no command to run"));
        }
        crate::init::cap_mask(spec.capabilities.as_deref())
            .map_err(|e| Error::invalid("capabilities", e))?;
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::AlreadyExists {
                    kind: "container",
                    id: spec.id,
                })
            }
            Err(e) => return Err(e).ctx(|| format!("create {}", dir.display())),
        }
        let mut cgroup = None;
        let result = self.start_container_in(sandbox, spec.clone(), &dir, &mut cgroup);
        if result.is_err() {
            if let Some(cg) = &cgroup {
                cg.remove();
            }
            let _ = remove_container_dir(&dir);
        }
        result
    }

    fn start_container_in(
        &self,
        sandbox: &Sandbox,
        spec: ContainerSpec,
        dir: &Path,
        cgroup_out: &mut Option<crate::cgroup::CgroupPaths>,
    ) -> Result<ContainerInfo> {
        let t0 = Instant::now();
        let isolated = self.caps.namespaces;
        if isolated {
            match &spec.rootfs {
                Rootfs::Overlay { lower_dirs } => {
                    if !self.caps.overlay {
                        return Err(Error::invalid(
                            "rootfs",
                            "overlayfs is not available on this host",
                        ));
                    }
                    if lower_dirs.is_empty() {
                        return Err(Error::invalid("rootfs", "overlay without layers"));
                    }
                    for d in lower_dirs {
                        if !d.is_dir() {
                            return Err(Error::invalid(
                                "rootfs",
                                format!("layer {} is not a directory", d.display()),
                            ));
                        }
                    }
                    for sub in ["upper", "work"] {
                        fs::create_dir(dir.join(sub)).ctx(|| format!("create {sub} dir"))?;
                    }
                }
                Rootfs::Dir(d) => {
                    if !d.is_dir() {
                        return Err(Error::invalid(
                            "rootfs",
                            format!("{} is not a directory", d.display()),
                        ));
                    }
                }
            }
            fs::create_dir(dir.join(state::ROOTFS)).ctx(|| "create rootfs dir".into())?;
        }
        let mut mounts = spec.mounts.clone();
        let mut add = |dest: &str, src: Option<&PathBuf>| {
            if let Some(src) = src {
                if !mounts
                    .iter()
                    .any(|m| m.destination.trim_end_matches('/') == dest)
                {
                    mounts.push(Mount {
                        source: src.clone(),
                        destination: dest.into(),
                        readonly: false,
                    });
                }
            }
        };
        add("/etc/hosts", Some(&sandbox.hosts_path));
        add("/etc/hostname", Some(&sandbox.hostname_path));
        add("/etc/resolv.conf", sandbox.resolv_conf_path.as_ref());
        if isolated {
            if let Some(cg) = &self.cgroups {
                *cgroup_out = Some(cg.create(&spec.id, &spec.resources)?);
            }
        }
        let cfg = ContainerConfig {
            pod_uid: sandbox.pod_uid.clone(),
            hostname: sandbox.hostname.clone(),
            isolated,
            netns_path: if isolated {
                sandbox.netns_path.clone()
            } else {
                None
            },
            cgroup: cgroup_out.clone(),
            mounts,
            bundle: dir.to_path_buf(),
            created_at: state::now_rfc3339(),
            spec,
        };
        state::write_json(&dir.join(state::CONFIG), &cfg)?;
        let t1 = Instant::now();
        self.spawn_shim(dir, &cfg.spec.id)?;
        tracing::debug!(
            id = %cfg.spec.id,
            prepare_ms = (t1 - t0).as_secs_f64() * 1000.0,
            shim_ms = t1.elapsed().as_secs_f64() * 1000.0,
            "container started"
        );
        Ok(ContainerInfo {
            id: cfg.spec.id.clone(),
            pod_uid: cfg.pod_uid.clone(),
            log_path: cfg.spec.log_path.clone(),
            created_at: cfg.created_at.clone(),
            state: state::read_state(dir)?,
        })
    }

    /// Starts the shim detached from us and waits for its report on the sync pipe.
    fn spawn_shim(&self, dir: &Path, id: &str) -> Result<()> {
        let (sync_r, sync_w) = sys::pipe().ctx(|| "sync pipe".into())?;
        let shim_log =
            fs::File::create(dir.join(state::SHIM_LOG)).ctx(|| "create shim.log".into())?;
        let mut argv = vec![sys::cstr(&self.cfg.shim_exe).ctx(|| "shim path".into())?];
        for a in self.cfg.shim_args.iter().map(String::as_str).chain(["run"]) {
            argv.push(sys::cstr(a).ctx(|| "shim argument".into())?);
        }
        argv.push(sys::cstr(dir).ctx(|| "container dir".into())?);
        // The shim makes its own session (setsid) first thing, so the spawn needs no hook.
        let pid = sys::spawn(
            &argv,
            &[(SYNC_FD_ENV.to_string(), "3".to_string())],
            shim_log.as_fd(),
            &[(sync_w.as_fd(), 3)],
        )
        .ctx(|| format!("spawn shim {}", self.cfg.shim_exe.display()))?;
        drop(sync_w);
        drop(shim_log);
        // The first shim process forks the real one and exits at once.
        let _ = sys::wait_pid(pid);
        let msg = read_sync(sync_r, SHIM_START_TIMEOUT).map_err(|reason| Error::StartFailed {
            id: id.into(),
            reason,
        })?;
        match msg {
            SyncMsg::Pid(_) => Ok(()),
            SyncMsg::Error(reason) => Err(Error::StartFailed {
                id: id.into(),
                reason,
            }),
        }
    }
}

/// Waits (bounded) for a file descriptor on `sock`; None when the peer closed without one.
fn recv_fd_timeout(sock: &OwnedFd, timeout: Duration) -> Result<Option<OwnedFd>> {
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let r = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    if r == 0 {
        return Err(Error::invalid(
            "exec",
            "exec helper sent no terminal in time",
        ));
    }
    sys::recv_fd(sock.as_raw_fd()).ctx(|| "receive terminal".into())
}

fn read_sync(fd: OwnedFd, timeout: Duration) -> std::result::Result<SyncMsg, String> {
    let deadline = Instant::now() + timeout;
    let mut file = fs::File::from(fd);
    let mut buf = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let r = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r == 0 {
            return Err("shim did not report within 30s".into());
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("wait for shim: {e}"));
        }
        let mut chunk = [0u8; 4096];
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read shim report: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err("shim exited without reporting (see shim.log)".into());
    }
    serde_json::from_str(line).map_err(|e| format!("bad shim report {line:?}: {e}"))
}
