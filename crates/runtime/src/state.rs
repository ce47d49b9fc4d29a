//! The on-disk records that make the runtime restartable: the container's config (written by
//! the runtime, read by the shim), its state once started and its exit record (both written by
//! the shim), and the public view built from them.

use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupPaths;
use crate::error::{Error, IoContext, Result};
use crate::spec::{ContainerSpec, Mount};

pub(crate) const CONFIG: &str = "config.json";
pub(crate) const STATE: &str = "state.json";
pub(crate) const EXIT: &str = "exit.json";
/// The shim's stderr: why it failed once nobody is listening on the sync pipe any more.
pub(crate) const SHIM_LOG: &str = "shim.log";
pub(crate) const ROOTFS: &str = "rootfs";
pub(crate) const STDIN_FIFO: &str = "stdin";

/// Everything the shim needs to start the container, so it never talks to the agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ContainerConfig {
    pub spec: ContainerSpec,
    pub pod_uid: String,
    pub hostname: String,
    /// Namespaces, cgroups and a private root; false when not running as root.
    pub isolated: bool,
    pub netns_path: Option<PathBuf>,
    pub cgroup: Option<CgroupPaths>,
    /// The spec's mounts plus the sandbox's /etc files.
    pub mounts: Vec<Mount>,
    pub bundle: PathBuf,
    pub created_at: String,
}

/// Written by the shim once the container process has exec'd.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StateRecord {
    pub pid: i32,
    pub start_ticks: u64,
    pub shim_pid: i32,
    pub shim_start_ticks: u64,
    pub started_at: String,
}

/// Written by the shim after the container process is reaped.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ExitRecord {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_at: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    Completed,
    Error,
    OOMKilled,
}

impl ExitReason {
    /// The string Kubernetes puts in `containerStatuses[].state.terminated.reason`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::OOMKilled => "OOMKilled",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// The container's directory exists but its shim has not reported a start (yet).
    Created,
    Running {
        pid: i32,
        started_at: DateTime<Utc>,
    },
    Exited {
        /// The exit code, or 128 + signal when killed by a signal (as kubelet reports it).
        code: i32,
        signal: Option<i32>,
        reason: ExitReason,
        started_at: Option<DateTime<Utc>>,
        finished_at: DateTime<Utc>,
    },
    /// The process is gone and no exit record was written (the shim was killed).
    Unknown {
        reason: String,
    },
}

impl ContainerState {
    pub fn is_running(&self) -> bool {
        matches!(self, ContainerState::Running { .. })
    }
}

pub(crate) fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true)
}

pub(crate) fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).ctx(|| format!("read {}", path.display())),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::CorruptState {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).expect("records serialize");
    crate::sys::write_atomic(path, &bytes).ctx(|| format!("write {}", path.display()))
}

impl ExitRecord {
    pub(crate) fn to_state(&self, started_at: Option<DateTime<Utc>>) -> ContainerState {
        let code = match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => -1,
        };
        let reason = if self.oom_killed {
            ExitReason::OOMKilled
        } else if code == 0 {
            ExitReason::Completed
        } else {
            ExitReason::Error
        };
        ContainerState::Exited {
            code,
            signal: self.signal,
            reason,
            started_at,
            finished_at: parse_time(&self.finished_at).unwrap_or_else(Utc::now),
        }
    }
}

/// The state of the container whose directory is `bundle`, from its records and /proc.
pub(crate) fn read_state(bundle: &Path) -> Result<ContainerState> {
    let state: Option<StateRecord> = read_json(&bundle.join(STATE))?;
    let started_at = state.as_ref().and_then(|s| parse_time(&s.started_at));
    if let Some(exit) = read_json::<ExitRecord>(&bundle.join(EXIT))? {
        return Ok(exit.to_state(started_at));
    }
    let Some(state) = state else {
        return Ok(ContainerState::Created);
    };
    if crate::sys::process_matches(state.pid, state.start_ticks) {
        return Ok(ContainerState::Running {
            pid: state.pid,
            started_at: started_at.unwrap_or_else(Utc::now),
        });
    }
    // The process is gone; its shim may be writing the exit record right now. On a busy
    // node that takes a while (reaping, reading the OOM counters, a log write held up by
    // dirty-page throttling while builds write gigabytes: 2 s was not always enough in CI):
    // wait up to 10 s while the shim lives, or an exit is reported as a lost container.
    if crate::sys::process_matches(state.shim_pid, state.shim_start_ticks) {
        for _ in 0..5000 {
            if let Some(exit) = read_json::<ExitRecord>(&bundle.join(EXIT))? {
                return Ok(exit.to_state(started_at));
            }
            if !crate::sys::process_matches(state.shim_pid, state.shim_start_ticks) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if let Some(exit) = read_json::<ExitRecord>(&bundle.join(EXIT))? {
            return Ok(exit.to_state(started_at));
        }
    }
    let mut reason = "container process is gone and its shim left no exit record".to_string();
    if let Some(last) = std::fs::read_to_string(bundle.join(SHIM_LOG))
        .ok()
        .and_then(|log| {
            log.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
    {
        reason.push_str(" (shim: ");
        reason.push_str(last.trim());
        reason.push(')');
    }
    Ok(ContainerState::Unknown { reason })
}
