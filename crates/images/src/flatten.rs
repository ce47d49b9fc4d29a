//! Merges an image's layers into one plain directory, applying whiteouts: the rootfs for
//! when overlayfs cannot be used (no root, or a file system that refuses it).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::layer::{OPAQUE_WHITEOUT, WHITEOUT_PREFIX};
use crate::store::Image;
use crate::sys;

/// Copies `image`'s layers, lowest first, into `target` (created if missing), applying
/// whiteouts in either form (`.wh.` files, or overlayfs' 0:0 devices and opaque xattr).
/// Keeps modes, symlinks, hard links within a layer and times; owners, xattrs and device
/// nodes when root. Never follows a symlink in `target`.
pub fn flatten(image: &Image, target: &Path) -> Result<()> {
    fs::create_dir_all(target).at(target)?;
    let privileged = sys::is_root();
    for layer in &image.layers {
        // Hard links are per layer: a link set cannot span layers.
        let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
        merge_dir(layer, target, privileged, &mut links)?;
        copy_meta(
            layer,
            target,
            &fs::symlink_metadata(layer).at(layer)?,
            privileged,
        )?;
    }
    Ok(())
}

fn is_opaque(dir: &Path) -> Result<bool> {
    if fs::symlink_metadata(dir.join(OPAQUE_WHITEOUT)).is_ok() {
        return Ok(true);
    }
    Ok(sys::lgetxattr(dir, sys::OVERLAY_OPAQUE_XATTR)
        .at(dir)?
        .is_some_and(|v| v == b"y"))
}

fn merge_dir(
    src: &Path,
    dst: &Path,
    privileged: bool,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    if is_opaque(src)? {
        for e in fs::read_dir(dst).at(dst)? {
            let p = e.at(dst)?.path();
            sys::remove_any(&p).at(&p)?;
        }
    }
    let mut entries: Vec<_> = fs::read_dir(src)
        .at(src)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .at(src)?;
    entries.sort();
    for name in entries {
        let s = src.join(&name);
        if let Some(victim) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if !victim.starts_with(WHITEOUT_PREFIX.as_bytes()) && !victim.is_empty() {
                let d = dst.join(std::ffi::OsStr::from_bytes(victim));
                sys::remove_any(&d).at(&d)?;
            }
            continue;
        }
        let d = dst.join(&name);
        let meta = fs::symlink_metadata(&s).at(&s)?;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            sys::remove_any(&d).at(&d)?; // overlayfs whiteout
            continue;
        }
        if ft.is_dir() {
            match fs::symlink_metadata(&d) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    sys::remove_any(&d).at(&d)?;
                    fs::create_dir(&d).at(&d)?;
                }
                Err(_) => fs::create_dir(&d).at(&d)?,
            }
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).at(&d)?;
            merge_dir(&s, &d, privileged, links)?;
            copy_meta(&s, &d, &meta, privileged)?;
            continue;
        }
        sys::remove_any(&d).at(&d)?;
        if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = links.get(&key) {
                    fs::hard_link(first, &d).at(&d)?;
                    continue;
                }
                links.insert(key, d.clone());
            }
            fs::copy(&s, &d).at(&d)?;
        } else if ft.is_symlink() {
            let t = fs::read_link(&s).at(&s)?;
            std::os::unix::fs::symlink(&t, &d).at(&d)?;
        } else if ft.is_fifo() {
            sys::mknod(&d, libc::S_IFIFO, meta.mode(), 0, 0).at(&d)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            if !privileged {
                continue;
            }
            let kind = if ft.is_char_device() {
                libc::S_IFCHR
            } else {
                libc::S_IFBLK
            };
            let rdev = meta.rdev() as libc::dev_t;
            sys::mknod(&d, kind, meta.mode(), libc::major(rdev), libc::minor(rdev)).at(&d)?;
        } else {
            continue; // sockets
        }
        copy_meta(&s, &d, &meta, privileged)?;
    }
    Ok(())
}

fn copy_meta(src: &Path, dst: &Path, meta: &fs::Metadata, privileged: bool) -> Result<()> {
    let is_link = meta.file_type().is_symlink();
    if privileged {
        std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid())).at(dst)?;
        for name in sys::llistxattr(src).at(src)? {
            if name.starts_with("trusted.overlay.") {
                continue;
            }
            if let Some(v) = sys::lgetxattr(src, &name).at(src)? {
                sys::lsetxattr(dst, &name, &v).at(dst)?;
            }
        }
    }
    if !is_link {
        // After chown, which clears set-id bits.
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777)).at(dst)?;
    }
    sys::set_mtime_nofollow(dst, meta.mtime()).at(dst)
}
