//! What runs in the container's first process between fork and exec: join the pod's network
//! namespace and the cgroup, make private mount/UTS/IPC namespaces, mount the rootfs, /proc,
//! /dev, /sys and the volumes, pivot_root into it, drop privileges, exec. Also used by exec
//! sessions for the privilege part. The shim is single-threaded, so ordinary Rust is fine here.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::spec::Rootfs;
use crate::state::{ContainerConfig, ROOTFS};
use crate::sys::{self, cvt, mount};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Capabilities by number, as in linux/capability.h.
const CAP_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The set Docker and containerd give a container by default.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// The capability set as a bit mask; an unknown name is an error.
pub(crate) fn cap_mask(names: Option<&[String]>) -> Result<u64, String> {
    let default: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    let names = names.unwrap_or(&default);
    let mut mask = 0u64;
    for n in names {
        let short = n.strip_prefix("CAP_").unwrap_or(n).to_ascii_uppercase();
        if short == "ALL" {
            mask |= (1u64 << CAP_NAMES.len()) - 1;
            continue;
        }
        let bit = CAP_NAMES
            .iter()
            .position(|c| *c == short)
            .ok_or_else(|| format!("unknown capability {n:?}"))?;
        mask |= 1 << bit;
    }
    Ok(mask)
}

fn err(what: impl std::fmt::Display, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The stdio the container process gets.
pub(crate) struct ChildIo {
    pub stdin: i32,
    pub stdout: i32,
    pub stderr: i32,
    /// With a terminal: the socket to send its master side to the shim over. The terminal
    /// is made inside the container (its own devpts), so `tty` and `ttyname` work there.
    pub tty_socket: Option<i32>,
}

/// Sets up the container and execs its process; returns only the error that stopped it.
pub(crate) fn start(cfg: &ContainerConfig, stdio: ChildIo) -> io::Error {
    match setup(cfg, stdio) {
        Ok(()) => exec_args(cfg),
        Err(e) => e,
    }
}

fn setup(cfg: &ContainerConfig, stdio: ChildIo) -> io::Result<()> {
    install_stdio(&stdio)?;
    if !cfg.isolated {
        if let Some(sock) = stdio.tty_socket {
            attach_tty(sock)?;
        }
        let cwd = cfg.spec.cwd.as_deref().unwrap_or("/");
        if std::env::set_current_dir(cwd).is_err() {
            std::env::set_current_dir("/")?;
        }
        return Ok(());
    }
    if let Some(cg) = &cfg.cgroup {
        cg.join_self()?;
    }
    if let Some(ns) = &cfg.netns_path {
        let fd = crate::network::open_netns(ns).map_err(|e| err("open netns", e))?;
        use std::os::fd::AsRawFd;
        cvt(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) })
            .map_err(|e| err("join netns", e))?;
    }
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) })
        .map_err(|e| err("unshare", e))?;
    // Nothing done below may propagate back to the host's mounts.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    let root = cfg.bundle.join(ROOTFS);
    mount_rootfs(cfg, &root)?;
    mount_system(&root)?;
    for m in &cfg.mounts {
        bind(&root, &m.source, &m.destination, m.readonly)?;
    }
    let host = sys::cstr(&cfg.hostname)?;
    cvt(unsafe { libc::sethostname(host.as_ptr(), cfg.hostname.len()) })
        .map_err(|e| err("sethostname", e))?;
    pivot_root(&root)?;
    if let Some(sock) = stdio.tty_socket {
        attach_tty(sock)?;
    }
    if cfg.spec.readonly_rootfs {
        mount(
            None,
            Path::new("/"),
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        )?;
    }
    drop_privileges(cfg)?;
    let cwd = cfg.spec.cwd.as_deref().unwrap_or("/");
    std::fs::create_dir_all(cwd).ok();
    std::env::set_current_dir(cwd).map_err(|e| err(format!("chdir {cwd}"), e))?;
    Ok(())
}

fn install_stdio(stdio: &ChildIo) -> io::Result<()> {
    if stdio.tty_socket.is_none() {
        for (from, to) in [(stdio.stdin, 0), (stdio.stdout, 1), (stdio.stderr, 2)] {
            if from != to {
                cvt(unsafe { libc::dup2(from, to) })?;
            }
        }
    }
    // Its own session: no signals from the shim's, and room for a controlling terminal.
    cvt(unsafe { libc::setsid() })?;
    Ok(())
}

/// Makes a terminal from the current root's /dev/ptmx, sends its master side over `sock`
/// and makes the slave side this process's stdio and controlling terminal.
pub(crate) fn attach_tty(sock: i32) -> io::Result<()> {
    let (master, slave) = crate::shim::open_pty().map_err(|e| err("open terminal", e))?;
    use std::os::fd::AsRawFd;
    sys::send_fd(sock, master.as_raw_fd()).map_err(|e| err("send terminal", e))?;
    drop(master);
    for to in 0..3 {
        cvt(unsafe { libc::dup2(slave.as_raw_fd(), to) })?;
    }
    drop(slave);
    cvt(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) }).map_err(|e| err("TIOCSCTTY", e))?;
    Ok(())
}

fn mount_rootfs(cfg: &ContainerConfig, root: &Path) -> io::Result<()> {
    match &cfg.spec.rootfs {
        Rootfs::Dir(dir) => mount(Some(dir), root, None, libc::MS_BIND | libc::MS_REC, None),
        Rootfs::Overlay { lower_dirs } => {
            // overlayfs lists the top layer first.
            let lower: Vec<String> = lower_dirs
                .iter()
                .rev()
                .map(|d| d.display().to_string())
                .collect();
            let data = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.join(":"),
                cfg.bundle.join("upper").display(),
                cfg.bundle.join("work").display()
            );
            mount(
                Some(Path::new("overlay")),
                root,
                Some("overlay"),
                0,
                Some(&data),
            )
        }
    }
}

fn mount_system(root: &Path) -> io::Result<()> {
    let nosuid_dev_exec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let proc_dir = secure_join(root, "/proc");
    std::fs::create_dir_all(&proc_dir)?;
    mount(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        nosuid_dev_exec,
        None,
    )?;

    let dev = secure_join(root, "/dev");
    std::fs::create_dir_all(&dev)?;
    mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = sys::cstr(dev.join(name))?;
        cvt(unsafe {
            libc::mknod(
                p.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            )
        })
        .map_err(|e| err(format!("mknod /dev/{name}"), e))?;
        // mknod honours the umask; the nodes must be usable by any user.
        std::fs::set_permissions(dev.join(name), std::fs::Permissions::from_mode(0o666))?;
    }
    std::fs::create_dir(dev.join("pts"))?;
    mount(
        Some(Path::new("devpts")),
        &dev.join("pts"),
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    symlink("pts/ptmx", dev.join("ptmx"))?;
    std::fs::create_dir(dev.join("shm"))?;
    mount(
        Some(Path::new("shm")),
        &dev.join("shm"),
        Some("tmpfs"),
        nosuid_dev_exec,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(link))?;
    }

    let sys_dir = secure_join(root, "/sys");
    std::fs::create_dir_all(&sys_dir)?;
    // A fresh sysfs shows the pod's own network devices; fall back to the host's read-only.
    if mount(
        Some(Path::new("sysfs")),
        &sys_dir,
        Some("sysfs"),
        nosuid_dev_exec | libc::MS_RDONLY,
        None,
    )
    .is_err()
    {
        mount(
            Some(Path::new("/sys")),
            &sys_dir,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
        mount(
            None,
            &sys_dir,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

/// Bind-mounts `source` at `destination` inside `root`, creating the target as a file or a
/// directory like the source.
fn bind(root: &Path, source: &Path, destination: &str, readonly: bool) -> io::Result<()> {
    let target = secure_join(root, destination);
    let meta = std::fs::metadata(source)
        .map_err(|e| err(format!("mount source {}", source.display()), e))?;
    if meta.is_dir() {
        std::fs::create_dir_all(&target)?;
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if std::fs::symlink_metadata(&target).is_err() {
            std::fs::File::create(&target)?;
        }
    }
    mount(
        Some(source),
        &target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    if readonly {
        mount(
            None,
            &target,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

/// `root` joined with `path`, resolving symlinks as if `root` were `/`, so an image cannot
/// point a mount target outside its rootfs.
pub(crate) fn secure_join(root: &Path, path: &str) -> PathBuf {
    let mut parts: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: Vec<std::ffi::OsString> = Path::new(path)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            parts.pop();
            continue;
        }
        let candidate: PathBuf = root.join(parts.iter().collect::<PathBuf>()).join(&part);
        match std::fs::read_link(&candidate) {
            Ok(target) if links < 40 => {
                links += 1;
                if target.is_absolute() {
                    parts.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => parts.push(part),
        }
    }
    root.join(parts.iter().collect::<PathBuf>())
}

fn pivot_root(root: &Path) -> io::Result<()> {
    std::env::set_current_dir(root)?;
    let dot = sys::cstr(".")?;
    // pivot_root(".", "."): the old root ends up stacked on "/" and is detached right away.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    if r != 0 {
        return Err(err("pivot_root", io::Error::last_os_error()));
    }
    sys::umount(Path::new("."), libc::MNT_DETACH).map_err(|e| err("detach old root", e))?;
    std::env::set_current_dir("/")
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Bounding set to the allowed capabilities, then the user and groups, then (for root) the
/// effective set; a non-root user keeps none (as with Docker). Last, no_new_privs when the
/// spec asks for it (exec sessions get it too, as runc gives them).
pub(crate) fn drop_privileges(cfg: &ContainerConfig) -> io::Result<()> {
    let wanted = cap_mask(cfg.spec.capabilities.as_deref())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // Only what we hold can be kept: a name this kernel does not know (privileged asks for
    // every capability there is) must not make capset fail.
    let mask = wanted & permitted_caps()?;
    for cap in 0..64u64 {
        if mask & (1 << cap) != 0 {
            continue;
        }
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break; // past the kernel's last capability
            }
            return Err(err("drop capability", e));
        }
    }
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let groups: Vec<libc::gid_t> = cfg.spec.additional_gids.clone();
    cvt(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })
        .map_err(|e| err("setgroups", e))?;
    cvt(unsafe { libc::setresgid(cfg.spec.gid, cfg.spec.gid, cfg.spec.gid) })
        .map_err(|e| err("setgid", e))?;
    cvt(unsafe { libc::setresuid(cfg.spec.uid, cfg.spec.uid, cfg.spec.uid) })
        .map_err(|e| err("setuid", e))?;
    if cfg.spec.uid == 0 {
        let hdr = CapHeader {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let lo = mask as u32;
        let hi = (mask >> 32) as u32;
        let data = [
            CapData {
                effective: lo,
                permitted: lo,
                inheritable: 0,
            },
            CapData {
                effective: hi,
                permitted: hi,
                inheritable: 0,
            },
        ];
        let r = unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) };
        if r != 0 {
            return Err(err("capset", io::Error::last_os_error()));
        }
    }
    if cfg.spec.no_new_privileges {
        cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
            .map_err(|e| err("no_new_privs", e))?;
    }
    Ok(())
}

/// This process's permitted capability set.
fn permitted_caps() -> io::Result<u64> {
    let hdr = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    let r = unsafe { libc::syscall(libc::SYS_capget, &hdr, data.as_mut_ptr()) };
    if r != 0 {
        return Err(err("capget", io::Error::last_os_error()));
    }
    Ok(data[0].permitted as u64 | ((data[1].permitted as u64) << 32))
}

/// The container's environment, with PATH, HOSTNAME and HOME filled in when the spec has none.
pub(crate) fn environment(cfg: &ContainerConfig) -> Vec<String> {
    let mut env = cfg.spec.env.clone();
    let has = |env: &[String], k: &str| env.iter().any(|e| e.split('=').next() == Some(k));
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={}", cfg.hostname));
    }
    if !has(&env, "HOME") {
        env.push(
            if cfg.spec.uid == 0 {
                "HOME=/root"
            } else {
                "HOME=/"
            }
            .to_string(),
        );
    }
    env
}

/// Finds `argv[0]` on the PATH of `env` (in the current root) and execs it.
pub(crate) fn exec(argv: &[String], env: &[String]) -> io::Error {
    let Some(prog) = argv.first() else {
        return io::Error::new(io::ErrorKind::InvalidInput, "no command given");
    };
    let path = if prog.contains('/') {
        PathBuf::from(prog)
    } else {
        let search = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        let found = search
            .split(':')
            .map(|d| Path::new(d).join(prog))
            .find(|p| {
                std::fs::metadata(p)
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            });
        match found {
            Some(p) => p,
            None => {
                return io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{prog:?}: executable file not found in $PATH"),
                )
            }
        }
    };
    let to_c = |v: &[String]| -> io::Result<Vec<CString>> { v.iter().map(sys::cstr).collect() };
    let (argv_c, env_c, path_c) = match (to_c(argv), to_c(env), sys::cstr(&path)) {
        (Ok(a), Ok(e), Ok(p)) => (a, e, p),
        _ => return io::Error::new(io::ErrorKind::InvalidInput, "argument contains NUL"),
    };
    let mut argv_p: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
    env_p.push(std::ptr::null());
    unsafe { libc::execve(path_c.as_ptr(), argv_p.as_ptr(), env_p.as_ptr()) };
    err(
        format!("exec {}", path.display()),
        io::Error::last_os_error(),
    )
}

fn exec_args(cfg: &ContainerConfig) -> io::Error {
    exec(&cfg.spec.args, &environment(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_stays_inside_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        symlink("/etc", r.join("link-abs")).unwrap();
        symlink("../../../../tmp", r.join("etc/escape")).unwrap();
        assert_eq!(secure_join(r, "/etc/hosts"), r.join("etc/hosts"));
        assert_eq!(secure_join(r, "/link-abs/hosts"), r.join("etc/hosts"));
        assert_eq!(secure_join(r, "/etc/escape/x"), r.join("tmp/x"));
        assert_eq!(secure_join(r, "/../../x"), r.join("x"));
    }

    #[test]
    fn capability_names() {
        assert_eq!(cap_mask(Some(&["CAP_CHOWN".into()])), Ok(1));
        assert_eq!(cap_mask(Some(&["net_admin".into()])), Ok(1 << 12));
        assert!(cap_mask(Some(&["CAP_BOGUS".into()])).is_err());
        let d = cap_mask(None).unwrap();
        assert_ne!(d & (1 << 13), 0); // NET_RAW, for ping
        assert_eq!(d & (1 << 21), 0); // no SYS_ADMIN
    }
}
