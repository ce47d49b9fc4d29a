//! Shared by the integration tests: a busybox rootfs, a runtime over a private state dir and
//! cgroup parent, and a guard that removes everything a test made even when it fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_runtime::{
    ContainerSpec, ContainerState, PodNetwork, Rootfs, Runtime, RuntimeConfig, Sandbox, SandboxSpec,
};

pub fn skip_unless_root(test: &str) -> bool {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping {test}: needs root (namespaces, cgroups, netns)");
        return true;
    }
    if !Path::new("/bin/busybox").exists() {
        panic!("{test}: /bin/busybox missing (apt-get install -y busybox-static)");
    }
    false
}

/// A directory with /bin/busybox and a symlink per applet.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("busybox-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["etc", "tmp", "proc", "dev", "sys", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let out = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    root
}

pub struct Env {
    pub rt: Runtime,
    pub tmp: tempfile::TempDir,
    pub rootfs: PathBuf,
    pub cgroup_parent: String,
    bridges: Vec<String>,
}

impl Env {
    pub fn new(name: &str) -> Env {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("corral-rt-{name}-"))
            .tempdir()
            .unwrap();
        let rootfs = busybox_rootfs(tmp.path());
        let cgroup_parent = format!("corral-test-{name}-{}", std::process::id());
        let rt = runtime(tmp.path(), &cgroup_parent);
        Env {
            rt,
            tmp,
            rootfs,
            cgroup_parent,
            bridges: Vec::new(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    /// Deletes `bridge` when the test ends (even if it existed before, from a crashed run).
    pub fn own_bridge(&mut self, bridge: &str) {
        let _ = corral_runtime::delete_bridge(bridge);
        self.bridges.push(bridge.to_string());
    }

    pub async fn pod(&self, uid: &str, net: Option<(&str, u8, u8)>) -> Sandbox {
        let network = net.map(|(bridge, subnet, host)| PodNetwork {
            bridge: bridge.to_string(),
            pod_ip: format!("10.244.{subnet}.{host}").parse().unwrap(),
            prefix_len: 24,
            gateway: format!("10.244.{subnet}.1").parse().unwrap(),
        });
        self.rt
            .create_sandbox(SandboxSpec {
                pod_uid: uid.to_string(),
                name: format!("name-{uid}"),
                namespace: "default".into(),
                hostname: uid.to_string(),
                network,
                resolv_conf: Some(
                    "nameserver 10.96.0.10\nsearch default.svc.cluster.local\n".into(),
                ),
                hosts: None,
            })
            .await
            .unwrap()
    }

    pub fn spec(&self, id: &str, script: &str) -> ContainerSpec {
        ContainerSpec::new(
            id,
            Rootfs::Overlay {
                lower_dirs: vec![self.rootfs.clone()],
            },
            vec!["/bin/sh".into(), "-c".into(), script.into()],
            self.tmp.path().join("logs").join(format!("{id}.log")),
        )
    }

    pub fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.tmp.path().join("logs").join(format!("{id}.log")))
            .unwrap_or_default()
    }

    /// The text of the log's lines from `stream`, CRI prefix stripped.
    pub fn log_lines(&self, id: &str, stream: &str) -> Vec<String> {
        self.log(id)
            .lines()
            .filter_map(|l| {
                let mut p = l.splitn(4, ' ');
                let _ts = p.next()?;
                (p.next()? == stream).then_some(())?;
                let _tag = p.next()?;
                Some(p.next().unwrap_or("").to_string())
            })
            .collect()
    }

    pub async fn wait_for_log(&self, id: &str, needle: &str) {
        for _ in 0..500 {
            if self.log(id).contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("log of {id} never contained {needle:?}: {}", self.log(id));
    }

    pub async fn exited(&self, id: &str) -> ContainerState {
        match tokio::time::timeout(Duration::from_secs(30), self.rt.wait_exit(id)).await {
            Ok(state) => state.unwrap(),
            Err(_) => panic!("{id} did not exit in 30s; its log:\n{}", self.log(id)),
        }
    }
}

pub fn runtime(tmp: &Path, cgroup_parent: &str) -> Runtime {
    let mut cfg = RuntimeConfig::new(tmp.join("state"), env!("CARGO_BIN_EXE_corral-shim"));
    cfg.cgroup_parent = cgroup_parent.to_string();
    Runtime::new(cfg).unwrap()
}

impl Drop for Env {
    fn drop(&mut self) {
        // Cleanup is async; run it on a runtime of its own, off the test's runtime thread.
        let rt = self.rt.clone();
        let bridges = std::mem::take(&mut self.bridges);
        std::thread::spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            if let Err(e) = r.block_on(rt.cleanup_all()) {
                eprintln!("cleanup_all: {e}");
            }
            for b in bridges {
                let _ = corral_runtime::delete_bridge(&b);
            }
        })
        .join()
        .unwrap();
    }
}
