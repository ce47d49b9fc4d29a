//! Where the agent keeps each pod's files under the data directory. The kubelet API server
//! (logs, exec, port-forward) finds containers and logs through these same helpers, so the
//! layout is a contract:
//!
//! ```text
//! <data-dir>/pods/<namespace>_<pod name>_<pod uid>/<container>/<restart count>.log
//! <data-dir>/pods/<pod uid>/volumes/<volume name>/
//! ```
//!
//! Container ids in the runtime are `<pod uid>-<container name>-<restart count>`.

use std::path::{Path, PathBuf};

/// The directory holding one pod's container logs.
pub fn pod_log_dir(data_dir: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    data_dir
        .join("pods")
        .join(format!("{namespace}_{name}_{uid}"))
}

/// The CRI-format log of one run (`restart` = its restart count) of a container.
pub fn container_log_path(
    data_dir: &Path,
    namespace: &str,
    name: &str,
    uid: &str,
    container: &str,
    restart: u32,
) -> PathBuf {
    pod_log_dir(data_dir, namespace, name, uid)
        .join(container)
        .join(format!("{restart}.log"))
}

/// The runtime's id for one run of a container.
pub fn container_id(uid: &str, container: &str, restart: u32) -> String {
    format!("{uid}-{container}-{restart}")
}

/// Splits a runtime container id of pod `uid` back into container name and restart count.
pub fn parse_container_id<'a>(uid: &str, id: &'a str) -> Option<(&'a str, u32)> {
    let rest = id.strip_prefix(uid)?.strip_prefix('-')?;
    let (name, restart) = rest.rsplit_once('-')?;
    if name.is_empty() {
        return None;
    }
    Some((name, restart.parse().ok()?))
}

/// Where a pod's volumes (emptyDir, configMap, secret, downwardAPI, projected) live.
pub fn pod_volumes_dir(data_dir: &Path, uid: &str) -> PathBuf {
    data_dir.join("pods").join(uid).join("volumes")
}

/// The per-pod directory that holds `volumes/`.
pub fn pod_dir(data_dir: &Path, uid: &str) -> PathBuf {
    data_dir.join("pods").join(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let uid = "0f1c2d3e-aaaa-bbbb-cccc-0123456789ab";
        let id = container_id(uid, "web-server", 12);
        assert_eq!(id, format!("{uid}-web-server-12"));
        assert_eq!(parse_container_id(uid, &id), Some(("web-server", 12)));
        assert_eq!(parse_container_id(uid, "other-web-1"), None);
        assert_eq!(parse_container_id(uid, &format!("{uid}-web")), None);
    }

    #[test]
    fn log_layout() {
        let p = container_log_path(Path::new("/d"), "ns", "web-1", "u1", "c", 3);
        assert_eq!(p, Path::new("/d/pods/ns_web-1_u1/c/3.log"));
        assert_eq!(
            pod_volumes_dir(Path::new("/d"), "u1"),
            Path::new("/d/pods/u1/volumes")
        );
    }
}
