//! Unpacks one layer tar into its own directory, safely: no `..`, never writing through a
//! symlink, whiteouts kept (OCI `.wh.` files) or converted to overlayfs form (root only).

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{ImageError, IoContext, Result};
use crate::sys;

pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// How whiteouts are written into an unpacked layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutFormat {
    /// Kept as in the tar: an empty `.wh.<name>` file, `.wh..wh..opq` for an opaque
    /// directory. Needs no privilege; `flatten` understands it.
    Oci,
    /// overlayfs form: a 0:0 character device for a deleted entry, the xattr
    /// `trusted.overlay.opaque=y` on an opaque directory. Needs root; the layer
    /// directories can then be overlayfs lowerdirs as they are.
    Overlay,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct UnpackOptions {
    pub whiteouts: WhiteoutFormat,
    /// Root: keep uid/gid, create device nodes, keep xattrs.
    pub privileged: bool,
}

struct PendingDir {
    path: PathBuf,
    mode: u32,
    mtime: i64,
}

/// Unpacks a (decompressed) layer tar into `dest`, which must exist and be empty.
pub(crate) fn unpack<R: Read>(
    reader: R,
    dest: &Path,
    opts: UnpackOptions,
    layer: &str,
) -> Result<()> {
    let tar_err = |source: io::Error| ImageError::LayerTar {
        layer: layer.to_string(),
        source,
    };
    fs::set_permissions(dest, fs::Permissions::from_mode(0o755)).at(dest)?;
    // Directory modes and times are applied last: adding children changes a directory's
    // mtime, and a read-only directory would stop us adding them.
    let mut dirs: Vec<PendingDir> = Vec::new();
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw = entry.path().map_err(tar_err)?.into_owned();
        let rel = clean_path(&raw, layer)?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().map_err(tar_err)? & 0o7777;
        let mtime = header.mtime().map_err(tar_err)? as i64;
        let uid = id_u32(header.uid().map_err(tar_err)?, &raw, layer)?;
        let gid = id_u32(header.gid().map_err(tar_err)?, &raw, layer)?;
        let xattrs = if opts.privileged {
            pax_xattrs(&mut entry).map_err(tar_err)?
        } else {
            Vec::new()
        };

        if rel.as_os_str().is_empty() {
            // The layer's own root ("./").
            if kind.is_dir() {
                chown(dest, uid, gid, opts)?;
                dirs.push(PendingDir {
                    path: dest.to_path_buf(),
                    mode,
                    mtime,
                });
            }
            continue;
        }
        let parent = prepare_parent(dest, &rel, layer)?;
        let name = rel.file_name().unwrap_or_default();
        if let Some(victim) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            whiteout(&parent, name, victim, opts, layer, &raw)?;
            continue;
        }
        let target = dest.join(&rel);
        match fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() && kind.is_dir() => {}
            Ok(_) => sys::remove_any(&target).at(&target)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).at(&target),
        }
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .at(&target)?;
                io::copy(&mut entry, &mut f).map_err(tar_err)?;
                drop(f);
                chown(&target, uid, gid, opts)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode)).at(&target)?;
            }
            T::Directory => {
                if !target.is_dir() {
                    fs::create_dir(&target).at(&target)?;
                }
                chown(&target, uid, gid, opts)?;
                dirs.push(PendingDir {
                    path: target.clone(),
                    mode,
                    mtime,
                });
            }
            T::Symlink => {
                // Any target, even absolute, is fine to store: it is resolved inside the
                // container's root. Writing *through* it is what prepare_parent forbids.
                let link = entry
                    .link_name()
                    .map_err(tar_err)?
                    .ok_or_else(|| unsafe_path(layer, &raw, "symlink without a target"))?;
                std::os::unix::fs::symlink(&link, &target).at(&target)?;
                chown(&target, uid, gid, opts)?;
            }
            T::Link => {
                let link = entry
                    .link_name()
                    .map_err(tar_err)?
                    .ok_or_else(|| unsafe_path(layer, &raw, "hard link without a target"))?;
                let link_rel = clean_path(&link, layer)?;
                check_no_symlink_parents(dest, &link_rel, layer)?;
                let source = dest.join(&link_rel);
                match fs::symlink_metadata(&source) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(unsafe_path(
                            layer,
                            &raw,
                            &format!(
                                "hard link to {:?}, which is not a file earlier in the layer",
                                link_rel
                            ),
                        ))
                    }
                }
                fs::hard_link(&source, &target).at(&target)?;
                continue; // shares the inode, and with it mode, owner and times
            }
            T::Char | T::Block => {
                if !opts.privileged {
                    tracing::debug!(layer, path = ?rel, "skipping device node (not root)");
                    continue;
                }
                let major = header.device_major().map_err(tar_err)?.unwrap_or(0);
                let minor = header.device_minor().map_err(tar_err)?.unwrap_or(0);
                let fmt = if kind == T::Char {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                match sys::mknod(&target, fmt, mode, major, minor) {
                    Ok(()) => {}
                    // Root in a user namespace may not create devices; like rootless
                    // docker, go on without the node (the runtime mounts /dev anyway).
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        tracing::warn!(layer, path = ?rel, "cannot create device node: {e}");
                        continue;
                    }
                    Err(e) => return Err(e).at(&target),
                }
                chown(&target, uid, gid, opts)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode)).at(&target)?;
            }
            T::Fifo => {
                sys::mknod(&target, libc::S_IFIFO, mode, 0, 0).at(&target)?;
                chown(&target, uid, gid, opts)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode)).at(&target)?;
            }
            other => {
                tracing::debug!(layer, path = ?rel, kind = ?other, "skipping tar entry");
                continue;
            }
        }
        for (name, value) in &xattrs {
            sys::lsetxattr(&target, name, value).at(&target)?;
        }
        sys::set_mtime_nofollow(&target, mtime).at(&target)?;
    }
    for d in dirs.iter().rev() {
        fs::set_permissions(&d.path, fs::Permissions::from_mode(d.mode)).at(&d.path)?;
        sys::set_mtime_nofollow(&d.path, d.mtime).at(&d.path)?;
    }
    Ok(())
}

fn whiteout(
    parent: &Path,
    name: &OsStr,
    victim: &[u8],
    opts: UnpackOptions,
    layer: &str,
    raw: &Path,
) -> Result<()> {
    if name == OPAQUE_WHITEOUT {
        return match opts.whiteouts {
            WhiteoutFormat::Overlay => {
                sys::lsetxattr(parent, sys::OVERLAY_OPAQUE_XATTR, b"y").at(parent)
            }
            WhiteoutFormat::Oci => create_marker(&parent.join(name)),
        };
    }
    if victim.starts_with(WHITEOUT_PREFIX.as_bytes()) {
        // Other `.wh..wh.` names are aufs bookkeeping (e.g. `.wh..wh.plnk`), not content.
        return Ok(());
    }
    if victim.is_empty() || victim == b"." || victim == b".." {
        return Err(unsafe_path(layer, raw, "whiteout of no entry"));
    }
    match opts.whiteouts {
        WhiteoutFormat::Overlay => {
            let target = parent.join(OsStr::from_bytes(victim));
            sys::remove_any(&target).at(&target)?;
            sys::mknod(&target, libc::S_IFCHR, 0, 0, 0).at(&target)
        }
        WhiteoutFormat::Oci => create_marker(&parent.join(name)),
    }
}

fn create_marker(path: &Path) -> Result<()> {
    sys::remove_any(path).at(path)?;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .at(path)?;
    Ok(())
}

/// A tar path made relative, with `.` dropped; `..` anywhere is refused.
pub(crate) fn clean_path(raw: &Path, layer: &str) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(unsafe_path(layer, raw, "contains '..'")),
        }
    }
    Ok(out)
}

/// Makes sure every ancestor of `rel` inside `dest` is a real directory, creating missing
/// ones; an ancestor that is a symlink would let the entry land outside the layer.
fn prepare_parent(dest: &Path, rel: &Path, layer: &str) -> Result<PathBuf> {
    let mut cur = dest.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(cur);
    };
    for c in parent.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(unsafe_path(
                    layer,
                    rel,
                    &format!(
                        "would be written through the symlink {:?}",
                        relative(dest, &cur)
                    ),
                ))
            }
            Ok(_) => {
                return Err(unsafe_path(
                    layer,
                    rel,
                    &format!("parent {:?} is not a directory", relative(dest, &cur)),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).at(&cur)?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755)).at(&cur)?;
            }
            Err(e) => return Err(e).at(&cur),
        }
    }
    Ok(cur)
}

fn check_no_symlink_parents(dest: &Path, rel: &Path, layer: &str) -> Result<()> {
    let mut cur = dest.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            cur.push(c);
            if let Ok(m) = fs::symlink_metadata(&cur) {
                if !m.is_dir() {
                    return Err(unsafe_path(
                        layer,
                        rel,
                        "hard link target is reached through a symlink or a file",
                    ));
                }
            }
        }
    }
    Ok(())
}

fn relative(dest: &Path, p: &Path) -> PathBuf {
    p.strip_prefix(dest).unwrap_or(p).to_path_buf()
}

fn unsafe_path(layer: &str, path: &Path, reason: &str) -> ImageError {
    ImageError::UnsafePath {
        layer: layer.to_string(),
        path: path.to_string_lossy().into_owned(),
        reason: reason.to_string(),
    }
}

fn id_u32(id: u64, raw: &Path, layer: &str) -> Result<u32> {
    u32::try_from(id).map_err(|_| ImageError::LayerTar {
        layer: layer.to_string(),
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: uid/gid {id} out of range", raw.display()),
        ),
    })
}

fn chown(path: &Path, uid: u32, gid: u32, opts: UnpackOptions) -> Result<()> {
    if opts.privileged {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).at(path)?;
    }
    Ok(())
}

/// `SCHILY.xattr.*` PAX records, minus overlayfs' own: an image must not be able to
/// plant redirects or opaque markers of its own.
fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                if !name.starts_with("trusted.overlay.") {
                    out.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
    }
    Ok(out)
}
