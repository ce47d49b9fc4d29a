//! Thin, errno-checked wrappers over the libc calls the runtime and shim use.

use std::ffi::{CString, OsStr};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

pub(crate) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub(crate) fn cstr(s: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(s.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string contains NUL"))
}

pub(crate) fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    let r = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr() as *const libc::c_void),
        )
    };
    cvt(r).map(drop).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "mount {:?} on {}: {e}",
                fstype.as_deref().or(None),
                target.display()
            ),
        )
    })
}

pub(crate) fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let t = cstr(target)?;
    cvt(unsafe { libc::umount2(t.as_ptr(), flags) }).map(drop)
}

/// A pipe whose both ends are close-on-exec.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// The start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat):
/// with the pid it names one process for good, so a recycled pid is never signalled.
pub(crate) fn proc_start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    // Fields after comm start at field 3 (state); starttime is field 22.
    after_comm.split(' ').nth(22 - 3)?.parse().ok()
}

/// Whether `pid` is alive, not a zombie, and is the process that started at `ticks`.
pub(crate) fn process_matches(pid: i32, ticks: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let mut fields = stat[close + 2..].split(' ');
    let state = fields.next().unwrap_or("");
    if state == "Z" || state == "X" {
        return false;
    }
    fields.nth(22 - 4).and_then(|f| f.parse::<u64>().ok()) == Some(ticks)
}

pub(crate) fn kill(pid: i32, sig: libc::c_int) -> io::Result<()> {
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Writes a file so that readers see either the old or the whole new content. Not fsynced:
/// the records must survive the agent or the shim dying, not the machine (whose reboot ends
/// the containers too), and an fsync costs milliseconds on every pod start.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Mount points at or below `dir`, deepest first, from /proc/self/mountinfo.
pub(crate) fn mounts_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<std::path::PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| std::path::PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
pub(crate) fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A connected pair of Unix stream sockets, both close-on-exec.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one file descriptor over a Unix socket (SCM_RIGHTS).
pub(crate) fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
        if libc::sendmsg(sock, &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives a file descriptor sent by `send_fd`; None when the peer closed without sending.
pub(crate) fn recv_fd(sock: RawFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    loop {
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(None);
        }
        break;
    }
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Ok(None);
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const RawFd);
        Ok(Some(OwnedFd::from_raw_fd(fd)))
    }
}

/// Starts `argv` (argv[0] is the program path) with posix_spawn, its stdin and stdout on
/// /dev/null, stderr on `stderr` and each `(fd, number)` of `extra` at that number; the
/// environment is ours plus `env`. Returns the child's pid.
///
/// Why not `std::process::Command` with `pre_exec`: a pre_exec hook makes std fork() the
/// whole agent, which copies the page tables of a large multi-threaded process (and takes
/// its mmap lock) only for exec to throw them away, once per container start; posix_spawn
/// (glibc: clone with CLONE_VM|CLONE_VFORK) costs the same whatever the parent's size.
pub(crate) fn spawn(
    argv: &[CString],
    env: &[(String, String)],
    stderr: BorrowedFd<'_>,
    extra: &[(BorrowedFd<'_>, RawFd)],
) -> io::Result<libc::pid_t> {
    // Private copies above every target number, so no dup2 below clobbers a source, and
    // each dup2 clears close-on-exec on its target (a dup2 onto itself would not).
    let high = |fd: BorrowedFd<'_>| -> io::Result<OwnedFd> {
        let n = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) })?;
        Ok(unsafe { OwnedFd::from_raw_fd(n) })
    };
    let err = high(stderr)?;
    let extra: Vec<(OwnedFd, RawFd)> = extra
        .iter()
        .map(|(fd, to)| Ok((high(*fd)?, *to)))
        .collect::<io::Result<_>>()?;
    let overridden: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    let mut envs: Vec<CString> = Vec::new();
    for (k, v) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| overridden.contains(&k)) {
            continue;
        }
        let mut kv = k.into_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        if let Ok(c) = CString::new(kv) {
            envs.push(c);
        }
    }
    for (k, v) in env {
        envs.push(cstr(format!("{k}={v}"))?);
    }
    let mut argv_p: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr() as *mut _).collect();
    argv_p.push(std::ptr::null_mut());
    let mut env_p: Vec<*mut libc::c_char> = envs.iter().map(|a| a.as_ptr() as *mut _).collect();
    env_p.push(std::ptr::null_mut());
    let devnull = c"/dev/null";
    unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        spawn_check(libc::posix_spawn_file_actions_init(&mut fa))?;
        let r = (|| {
            spawn_check(libc::posix_spawnattr_init(&mut attr))?;
            // As std does: an empty signal mask and SIGPIPE back to its default.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            let mut pipe: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut pipe);
            libc::sigaddset(&mut pipe, libc::SIGPIPE);
            spawn_check(libc::posix_spawnattr_setsigmask(&mut attr, &none))?;
            spawn_check(libc::posix_spawnattr_setsigdefault(&mut attr, &pipe))?;
            spawn_check(libc::posix_spawnattr_setflags(
                &mut attr,
                (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short,
            ))?;
            spawn_check(libc::posix_spawn_file_actions_addopen(
                &mut fa,
                0,
                devnull.as_ptr(),
                libc::O_RDONLY,
                0,
            ))?;
            spawn_check(libc::posix_spawn_file_actions_addopen(
                &mut fa,
                1,
                devnull.as_ptr(),
                libc::O_WRONLY,
                0,
            ))?;
            spawn_check(libc::posix_spawn_file_actions_adddup2(
                &mut fa,
                err.as_raw_fd(),
                2,
            ))?;
            for (fd, to) in &extra {
                spawn_check(libc::posix_spawn_file_actions_adddup2(
                    &mut fa,
                    fd.as_raw_fd(),
                    *to,
                ))?;
            }
            let mut pid: libc::pid_t = 0;
            spawn_check(libc::posix_spawn(
                &mut pid,
                argv[0].as_ptr(),
                &fa,
                &attr,
                argv_p.as_ptr(),
                env_p.as_ptr(),
            ))?;
            Ok(pid)
        })();
        libc::posix_spawn_file_actions_destroy(&mut fa);
        libc::posix_spawnattr_destroy(&mut attr);
        r
    }
}

/// posix_spawn* return an error number instead of setting errno.
fn spawn_check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// Waits for a child of ours to exit; returns its wait status.
pub(crate) fn wait_pid(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
