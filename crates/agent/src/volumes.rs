//! The pod's volumes on the host: emptyDir (a directory, or tmpfs for medium Memory),
//! configMap, secret, downwardAPI and projected (files written under the pod's volume
//! directory), hostPath, and persistentVolumeClaim through its bound PersistentVolume
//! (hostPath or local). Errors read as kubelet's `FailedMount` messages.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Volume,
};
use kube::{Api, Client, ResourceExt};

use crate::containers::{self, NodeAllocatable, Objects};

pub struct VolumeInputs<'a> {
    pub client: Client,
    pub pod: &'a Pod,
    pub dir: PathBuf,
    pub pod_ip: Option<IpAddr>,
    pub host_ip: IpAddr,
    pub node: NodeAllocatable,
    /// tmpfs needs root; without it a Memory emptyDir is a plain directory.
    pub can_mount: bool,
}

/// Sets up every volume of the pod; returns where each is on the host.
pub async fn prepare(
    inp: &VolumeInputs<'_>,
    objects: &mut Objects,
) -> Result<HashMap<String, PathBuf>, String> {
    let mut out = HashMap::new();
    for v in inp.pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let path = prepare_one(inp, v, objects)
            .await
            .map_err(|e| format!("MountVolume.SetUp failed for volume \"{}\" : {e}", v.name))?;
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

async fn prepare_one(
    inp: &VolumeInputs<'_>,
    v: &Volume,
    objects: &mut Objects,
) -> Result<PathBuf, String> {
    let dir = inp.dir.join(&v.name);
    if let Some(e) = &v.empty_dir {
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        set_mode(&dir, 0o777)?;
        if e.medium.as_deref() == Some("Memory") && inp.can_mount && !is_mountpoint(&dir) {
            let size = e
                .size_limit
                .as_ref()
                .and_then(|q| crate::quantity::bytes(&q.0))
                .map(|b| format!(",size={b}"))
                .unwrap_or_default();
            mount_tmpfs(&dir, &format!("mode=1777{size}"))?;
        }
        return Ok(dir);
    }
    if let Some(h) = &v.host_path {
        let p = PathBuf::from(&h.path);
        match h.type_.as_deref().unwrap_or("") {
            "" => {}
            "DirectoryOrCreate" => {
                std::fs::create_dir_all(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
            }
            "FileOrCreate" => {
                if let Some(parent) = p.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .map_err(|e| format!("create {}: {e}", p.display()))?;
            }
            "Directory" if !p.is_dir() => {
                return Err(format!(
                    "hostPath type check failed: {} is not a directory",
                    h.path
                ))
            }
            "File" if !p.is_file() => {
                return Err(format!(
                    "hostPath type check failed: {} is not a file",
                    h.path
                ))
            }
            "Socket" | "CharDevice" | "BlockDevice" if !p.exists() => {
                return Err(format!(
                    "hostPath type check failed: {} does not exist",
                    h.path
                ))
            }
            _ => {}
        }
        return Ok(p);
    }
    if let Some(cm) = &v.config_map {
        let data = match objects.config_map(&cm.name).await? {
            Some(obj) => containers::config_map_data(obj),
            None if cm.optional == Some(true) => BTreeMap::new(),
            None => return Err(format!("configmap \"{}\" not found", cm.name)),
        };
        let files = select(
            &data,
            cm.items.as_deref(),
            cm.default_mode,
            "configmap",
            &cm.name,
        )?;
        write_files(&dir, &files)?;
        return Ok(dir);
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let data = match objects.secret(&name).await? {
            Some(obj) => containers::secret_data(obj),
            None if s.optional == Some(true) => BTreeMap::new(),
            None => return Err(format!("secret \"{name}\" not found")),
        };
        let files = select(&data, s.items.as_deref(), s.default_mode, "secret", &name)?;
        write_files(&dir, &files)?;
        return Ok(dir);
    }
    if let Some(d) = &v.downward_api {
        let files = downward(inp, d.items.as_deref().unwrap_or_default(), d.default_mode)?;
        write_files(&dir, &files)?;
        return Ok(dir);
    }
    if let Some(p) = &v.projected {
        let mut files = Vec::new();
        for src in p.sources.iter().flatten() {
            if let Some(cm) = &src.config_map {
                let data = match objects.config_map(&cm.name).await? {
                    Some(obj) => containers::config_map_data(obj),
                    None if cm.optional == Some(true) => continue,
                    None => return Err(format!("configmap \"{}\" not found", cm.name)),
                };
                files.extend(select(
                    &data,
                    cm.items.as_deref(),
                    p.default_mode,
                    "configmap",
                    &cm.name,
                )?);
            } else if let Some(s) = &src.secret {
                let data = match objects.secret(&s.name).await? {
                    Some(obj) => containers::secret_data(obj),
                    None if s.optional == Some(true) => continue,
                    None => return Err(format!("secret \"{}\" not found", s.name)),
                };
                files.extend(select(
                    &data,
                    s.items.as_deref(),
                    p.default_mode,
                    "secret",
                    &s.name,
                )?);
            } else if let Some(d) = &src.downward_api {
                files.extend(downward(
                    inp,
                    d.items.as_deref().unwrap_or_default(),
                    p.default_mode,
                )?);
            } else if src.service_account_token.is_some() {
                return Err(
                    "serviceAccountToken projections are not supported by this node yet".into(),
                );
            } else if src.cluster_trust_bundle.is_some() {
                return Err(
                    "clusterTrustBundle projections are not supported by this node yet".into(),
                );
            }
        }
        write_files(&dir, &files)?;
        return Ok(dir);
    }
    if let Some(pvc) = &v.persistent_volume_claim {
        return claim_path(inp, &pvc.claim_name).await;
    }
    Err("volume type not supported by this node".into())
}

async fn claim_path(inp: &VolumeInputs<'_>, claim: &str) -> Result<PathBuf, String> {
    let ns = inp.pod.namespace().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(inp.client.clone(), &ns);
    let pvc = pvcs
        .get_opt(claim)
        .await
        .map_err(|e| format!("get persistentvolumeclaim {claim:?}: {e}"))?
        .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" not found"))?;
    let pv_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" is not bound"))?;
    let pv = Api::<PersistentVolume>::all(inp.client.clone())
        .get_opt(&pv_name)
        .await
        .map_err(|e| format!("get persistentvolume {pv_name:?}: {e}"))?
        .ok_or_else(|| format!("persistentvolume \"{pv_name}\" not found"))?;
    let spec = pv.spec.unwrap_or_default();
    let path = spec
        .host_path
        .map(|h| h.path)
        .or(spec.local.map(|l| l.path))
        .ok_or_else(|| {
            format!("persistentvolume \"{pv_name}\" is neither hostPath nor local: not supported by this node")
        })?;
    let p = PathBuf::from(path);
    std::fs::create_dir_all(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
    Ok(p)
}

/// (relative path, bytes, mode) for each file of a volume.
type Files = Vec<(String, Vec<u8>, u32)>;

fn select(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    kind: &str,
    name: &str,
) -> Result<Files, String> {
    let mode = default_mode.unwrap_or(0o644) as u32;
    match items {
        Some(items) if !items.is_empty() => items
            .iter()
            .map(|it| {
                let v = data.get(&it.key).ok_or_else(|| {
                    format!(
                        "configuration for {kind} \"{name}\" has no key {:?}",
                        it.key
                    )
                })?;
                Ok((
                    it.path.clone(),
                    v.clone(),
                    it.mode.map(|m| m as u32).unwrap_or(mode),
                ))
            })
            .collect(),
        _ => Ok(data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), mode))
            .collect()),
    }
}

fn downward(
    inp: &VolumeInputs<'_>,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
) -> Result<Files, String> {
    let mode = default_mode.unwrap_or(0o644) as u32;
    let mut out = Vec::new();
    for it in items {
        let value = if let Some(f) = &it.field_ref {
            containers::field_value(inp.pod, &f.field_path, inp.pod_ip, inp.host_ip)?
        } else if let Some(r) = &it.resource_field_ref {
            let c = r.container_name.clone().unwrap_or_default();
            containers::resource_value(
                inp.pod,
                &c,
                &r.resource,
                r.divisor.as_ref().map(|d| d.0.as_str()),
                inp.node,
            )?
        } else {
            continue;
        };
        out.push((
            it.path.clone(),
            value.into_bytes(),
            it.mode.map(|m| m as u32).unwrap_or(mode),
        ));
    }
    Ok(out)
}

/// Writes the files in place (a running container sees the directory it was given, so it
/// is updated rather than replaced); each file atomically by rename.
fn write_files(dir: &Path, files: &Files) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    for (rel, bytes, mode) in files {
        if Path::new(rel).is_absolute() || rel.split('/').any(|p| p == ".." || p.is_empty()) {
            return Err(format!("invalid path {rel:?}"));
        }
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("create {}: {e}", parent.display()))?;
        }
        if std::fs::read(&p).ok().as_deref() == Some(bytes.as_slice()) {
            set_mode(&p, *mode)?;
            continue;
        }
        let tmp = p.with_file_name(format!(
            ".{}.tmp",
            p.file_name().and_then(|n| n.to_str()).unwrap_or("f")
        ));
        let mut f =
            std::fs::File::create(&tmp).map_err(|e| format!("write {}: {e}", tmp.display()))?;
        f.write_all(bytes)
            .map_err(|e| format!("write {}: {e}", tmp.display()))?;
        drop(f);
        set_mode(&tmp, *mode)?;
        std::fs::rename(&tmp, &p).map_err(|e| format!("rename {}: {e}", p.display()))?;
    }
    Ok(())
}

fn set_mode(p: &Path, mode: u32) -> Result<(), String> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", p.display()))
}

fn cstr(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).expect("no NUL in paths we make")
}

fn mount_tmpfs(dir: &Path, opts: &str) -> Result<(), String> {
    let src = std::ffi::CString::new("tmpfs").expect("constant");
    let data = std::ffi::CString::new(opts).map_err(|e| e.to_string())?;
    let target = cstr(dir);
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(format!(
            "mount tmpfs on {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn is_mountpoint(dir: &Path) -> bool {
    mounts_under(dir).iter().any(|m| m == dir)
}

/// Unmounts whatever the agent mounted under `dir` (tmpfs volumes), then deletes it. Never
/// follows a mount out of the directory.
pub fn remove_dir(dir: &Path) -> Result<(), String> {
    for m in mounts_under(dir) {
        let c = cstr(&m);
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(format!(
                "unmount {}: {}",
                m.display(),
                std::io::Error::last_os_error()
            ));
        }
    }
    if !mounts_under(dir).is_empty() {
        return Err(format!("{} still has mounts", dir.display()));
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("remove {}: {e}", dir.display()))
        }
        _ => Ok(()),
    }
}
