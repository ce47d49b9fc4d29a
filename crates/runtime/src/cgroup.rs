//! Cgroups for containers, on a pure v2 hierarchy or on v1 controller hierarchies: create a
//! container's cgroup with its limits, join it, read usage and OOM kills, and delete it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};
use crate::spec::Resources;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// The v1 controllers a container is placed in (others, like cpuset or devices, are left as
/// inherited from the shim).
const V1_CONTROLLERS: [&str; 4] = ["cpu", "cpuacct", "memory", "pids"];
const CFS_PERIOD_US: u64 = 100_000;

/// Where the cgroup hierarchies are on this host.
#[derive(Clone, Debug)]
pub(crate) struct Cgroups {
    pub version: CgroupVersion,
    /// v2: one entry (the unified root). v1: (controllers, mount point) per hierarchy.
    hierarchies: Vec<(Vec<String>, PathBuf)>,
    parent: String,
}

/// A container's cgroup directories, recorded in its config so that the shim, exec and
/// remove find them without re-detecting.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CgroupPaths {
    pub version: CgroupVersion,
    pub dirs: Vec<(Vec<String>, PathBuf)>,
}

impl Cgroups {
    /// Detects the hierarchy under `root` (normally /sys/fs/cgroup): pure v2 when
    /// `root/cgroup.controllers` exists, else the v1 hierarchies from /proc/self/mountinfo.
    pub fn detect(root: &Path, parent: &str) -> Option<Cgroups> {
        if root.join("cgroup.controllers").exists() {
            return Some(Cgroups {
                version: CgroupVersion::V2,
                hierarchies: vec![(Vec::new(), root.to_path_buf())],
                parent: parent.to_string(),
            });
        }
        let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mut hierarchies: Vec<(Vec<String>, PathBuf)> = Vec::new();
        for line in info.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mut r = right.split(' ');
            if r.next() != Some("cgroup") {
                continue;
            }
            let opts = r.nth(1).unwrap_or("");
            let controllers: Vec<String> = opts
                .split(',')
                .filter(|o| V1_CONTROLLERS.contains(o))
                .map(String::from)
                .collect();
            if controllers.is_empty() {
                continue;
            }
            let Some(mountpoint) = left.split(' ').nth(4) else {
                continue;
            };
            let mountpoint = PathBuf::from(crate::sys::unescape_mountinfo(mountpoint));
            if !mountpoint.starts_with(root) {
                continue;
            }
            if hierarchies.iter().any(|(c, _)| c == &controllers) {
                continue;
            }
            hierarchies.push((controllers, mountpoint));
        }
        let has_memory = hierarchies
            .iter()
            .any(|(c, _)| c.iter().any(|c| c == "memory"));
        has_memory.then(|| Cgroups {
            version: CgroupVersion::V1,
            hierarchies,
            parent: parent.to_string(),
        })
    }

    pub fn paths(&self, id: &str) -> CgroupPaths {
        CgroupPaths {
            version: self.version,
            dirs: self
                .hierarchies
                .iter()
                .map(|(c, m)| (c.clone(), m.join(&self.parent).join(id)))
                .collect(),
        }
    }

    /// Creates the container's cgroup and writes its limits.
    pub fn create(&self, id: &str, res: &Resources) -> Result<CgroupPaths> {
        let paths = self.paths(id);
        match self.version {
            CgroupVersion::V2 => {
                let root = &self.hierarchies[0].1;
                let parent = root.join(&self.parent);
                fs::create_dir_all(&parent).ctx(|| format!("create {}", parent.display()))?;
                enable_v2_controllers(root)?;
                enable_v2_controllers(&parent)?;
            }
            CgroupVersion::V1 => {}
        }
        for (_, dir) in &paths.dirs {
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?
                }
                Err(e) => return Err(e).ctx(|| format!("create {}", dir.display())),
            }
        }
        if let Err(e) = paths.apply(res) {
            paths.remove();
            return Err(e);
        }
        Ok(paths)
    }

    /// Removes the parent cgroup (fails quietly while it still has children).
    pub fn remove_parent(&self) {
        for (_, m) in &self.hierarchies {
            let _ = fs::remove_dir(m.join(&self.parent));
        }
    }
}

/// Turns on cpu, memory and pids for the children of `dir`, as far as the kernel offers them.
fn enable_v2_controllers(dir: &Path) -> Result<()> {
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in ["cpu", "memory", "pids"] {
        let has = |s: &str| s.split_whitespace().any(|x| x == c);
        if has(&available) && !has(&enabled) {
            let path = dir.join("cgroup.subtree_control");
            fs::write(&path, format!("+{c}"))
                .ctx(|| format!("enable {c} in {}", path.display()))?;
        }
    }
    Ok(())
}

/// cpu.shares as Kubernetes computes it from a request in millicores.
fn cpu_shares(millis: u64) -> u64 {
    (millis * 1024 / 1000).clamp(2, 262_144)
}

/// The v2 weight for the same request (the formula runc and kubelet use).
fn cpu_weight(millis: u64) -> u64 {
    1 + ((cpu_shares(millis) - 2) * 9999) / 262_142
}

impl CgroupPaths {
    fn dir(&self, controller: &str) -> Option<&Path> {
        match self.version {
            CgroupVersion::V2 => self.dirs.first().map(|(_, d)| d.as_path()),
            CgroupVersion::V1 => self
                .dirs
                .iter()
                .find(|(c, _)| c.iter().any(|c| c == controller))
                .map(|(_, d)| d.as_path()),
        }
    }

    fn write(&self, controller: &str, file: &str, value: &str) -> Result<()> {
        let Some(dir) = self.dir(controller) else {
            return Ok(());
        };
        let path = dir.join(file);
        fs::write(&path, value).ctx(|| format!("write {value:?} to {}", path.display()))
    }

    fn read(&self, controller: &str, file: &str) -> Option<String> {
        fs::read_to_string(self.dir(controller)?.join(file)).ok()
    }

    fn apply(&self, res: &Resources) -> Result<()> {
        match self.version {
            CgroupVersion::V1 => {
                if let Some(m) = res.memory_limit_bytes {
                    self.write("memory", "memory.limit_in_bytes", &m.to_string())?;
                    // No swapping past the limit either (when swap accounting exists).
                    let _ = self.write("memory", "memory.memsw.limit_in_bytes", &m.to_string());
                }
                if let Some(r) = res.cpu_millis_request {
                    self.write("cpu", "cpu.shares", &cpu_shares(r).to_string())?;
                }
                if let Some(l) = res.cpu_millis_limit {
                    self.write("cpu", "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
                    let quota = (l * CFS_PERIOD_US / 1000).max(1000);
                    self.write("cpu", "cpu.cfs_quota_us", &quota.to_string())?;
                }
                if let Some(p) = res.pids_limit {
                    self.write("pids", "pids.max", &p.to_string())?;
                }
            }
            CgroupVersion::V2 => {
                if let Some(m) = res.memory_limit_bytes {
                    self.write("memory", "memory.max", &m.to_string())?;
                    let _ = self.write("memory", "memory.swap.max", "0");
                }
                if let Some(r) = res.cpu_millis_request {
                    self.write("cpu", "cpu.weight", &cpu_weight(r).to_string())?;
                }
                if let Some(l) = res.cpu_millis_limit {
                    let quota = (l * CFS_PERIOD_US / 1000).max(1000);
                    self.write("cpu", "cpu.max", &format!("{quota} {CFS_PERIOD_US}"))?;
                }
                if let Some(p) = res.pids_limit {
                    self.write("pids", "pids.max", &p.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Moves the calling process into every directory of this cgroup.
    pub fn join_self(&self) -> io::Result<()> {
        for (_, d) in &self.dirs {
            fs::write(d.join("cgroup.procs"), "0")
                .map_err(|e| io::Error::new(e.kind(), format!("join {}: {e}", d.display())))?;
        }
        Ok(())
    }

    /// How many processes the kernel OOM-killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            CgroupVersion::V1 => "memory.oom_control",
            CgroupVersion::V2 => "memory.events",
        };
        self.read("memory", file)
            .as_deref()
            .and_then(|s| stat_value(s, "oom_kill"))
            .unwrap_or(0)
    }

    pub fn stats(&self) -> ContainerStats {
        let (cpu, usage, inactive_key) = match self.version {
            CgroupVersion::V1 => (
                self.read("cpuacct", "cpuacct.usage")
                    .and_then(|s| s.trim().parse().ok()),
                "memory.usage_in_bytes",
                "total_inactive_file",
            ),
            CgroupVersion::V2 => (
                self.read("cpu", "cpu.stat")
                    .as_deref()
                    .and_then(|s| stat_value(s, "usage_usec"))
                    .map(|u| u * 1000),
                "memory.current",
                "inactive_file",
            ),
        };
        let memory: Option<u64> = self
            .read("memory", usage)
            .and_then(|s| s.trim().parse().ok());
        let inactive = self
            .read("memory", "memory.stat")
            .as_deref()
            .and_then(|s| stat_value(s, inactive_key))
            .unwrap_or(0);
        ContainerStats {
            cpu_usage_nanos: cpu,
            memory_usage_bytes: memory,
            memory_working_set_bytes: memory.map(|m| m.saturating_sub(inactive)),
            pids: self
                .read("pids", "pids.current")
                .and_then(|s| s.trim().parse().ok()),
        }
    }

    /// Kills whatever is left in the cgroup and deletes its directories.
    pub fn remove(&self) {
        for (_, d) in &self.dirs {
            if !d.exists() {
                continue;
            }
            for attempt in 0..200 {
                let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = crate::sys::kill(pid, libc::SIGKILL);
                }
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) => {
                        if attempt == 199 {
                            tracing::warn!(dir = %d.display(), error = %e, "cgroup not removed");
                        }
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            }
        }
    }
}

/// The value of `key` in a `key value` per line file (memory.stat, cpu.stat, memory.events).
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Usage of one container, read from its cgroup (None where the controller is missing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerStats {
    pub cpu_usage_nanos: Option<u64>,
    pub memory_usage_bytes: Option<u64>,
    /// Usage less inactive file cache: what kubelet reports and evicts on.
    pub memory_working_set_bytes: Option<u64>,
    pub pids: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_conversions_match_kubelet() {
        assert_eq!(cpu_shares(1000), 1024);
        assert_eq!(cpu_shares(1), 2);
        assert_eq!(cpu_weight(1000), 39);
        assert_eq!(cpu_weight(1), 1);
    }

    #[test]
    fn stat_values() {
        let s = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(stat_value(s, "oom_kill"), Some(3));
        assert_eq!(stat_value(s, "missing"), None);
    }

    #[test]
    fn v2_limits_and_stats_use_v2_files() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CgroupPaths {
            version: CgroupVersion::V2,
            dirs: vec![(Vec::new(), dir.path().to_path_buf())],
        };
        paths
            .apply(&Resources {
                cpu_millis_limit: Some(250),
                cpu_millis_request: Some(1000),
                memory_limit_bytes: Some(1 << 20),
                pids_limit: Some(10),
            })
            .unwrap();
        let read = |f: &str| fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("cpu.max"), "25000 100000");
        assert_eq!(read("cpu.weight"), "39");
        assert_eq!(read("memory.max"), "1048576");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "10");
        fs::write(dir.path().join("memory.current"), "1000\n").unwrap();
        fs::write(
            dir.path().join("memory.stat"),
            "anon 10\ninactive_file 400\n",
        )
        .unwrap();
        fs::write(dir.path().join("cpu.stat"), "usage_usec 7\nuser_usec 5\n").unwrap();
        fs::write(dir.path().join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        let s = paths.stats();
        assert_eq!(s.cpu_usage_nanos, Some(7000));
        assert_eq!(s.memory_working_set_bytes, Some(600));
        assert_eq!(paths.oom_kills(), 1);
    }
}
