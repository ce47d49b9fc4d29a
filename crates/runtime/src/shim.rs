//! The per-container shim. The runtime starts it as `<shim_exe> [shim_args..] run <dir>`;
//! it detaches (new session, double fork, so the agent can die without taking it along),
//! starts the container process as its child, reports `{"pid":..}` or `{"error":..}` as one
//! JSON line on the inherited sync pipe ($CORRAL_SHIM_SYNC_FD) and closes it, copies the
//! container's output to the CRI log, and on exit writes `exit.json`.
//! `exec <dir> <json>` runs a process inside a running container (kubectl exec, probes).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cri_log::LineSplitter;
use crate::init::{self, ChildIo};
use crate::state::{self, ContainerConfig, ExitRecord, StateRecord};
use crate::sys::{self, cvt};

pub(crate) const SYNC_FD_ENV: &str = "CORRAL_SHIM_SYNC_FD";
pub(crate) const EXEC_PTY_FD_ENV: &str = "CORRAL_EXEC_PTY_FD";

/// What the shim reports on the sync pipe.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SyncMsg {
    Pid(i32),
    Error(String),
}

/// What an exec session runs.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ExecRequest {
    pub argv: Vec<String>,
    pub tty: bool,
}

/// Entry point for a binary that is (or re-execs itself as) the shim: finds `run <dir>` or
/// `exec <dir> <json>` at the end of its arguments, so any prefix (`corral shim`) works.
pub fn main() -> ! {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(run_args(&args))
}

/// Runs the shim for the trailing `run <dir>` / `exec <dir> <json>` of `args`; returns the
/// exit code for the process.
pub fn run_args(args: &[String]) -> i32 {
    let n = args.len();
    if n >= 2 && args[n - 2] == "run" {
        run(Path::new(&args[n - 1]))
    } else if n >= 3 && args[n - 3] == "exec" {
        match serde_json::from_str::<ExecRequest>(&args[n - 1]) {
            Ok(req) => exec(Path::new(&args[n - 2]), &req),
            Err(e) => {
                eprintln!("corral shim exec: bad request: {e}");
                126
            }
        }
    } else {
        eprintln!("usage: shim run <container-dir> | shim exec <container-dir> <json>");
        2
    }
}

/// Sends `msg` to the runtime waiting on the sync pipe; after the first report nobody
/// listens, so an error then goes to stderr, which is the container's `shim.log`.
fn report(sync: &mut Option<File>, msg: &SyncMsg) {
    match (sync.take(), msg) {
        (Some(mut f), _) => {
            let mut line = serde_json::to_vec(msg).expect("serializable");
            line.push(b'\n');
            let _ = f.write_all(&line);
        }
        (None, SyncMsg::Error(e)) => eprintln!("{} corral shim: {e}", state::now_rfc3339()),
        (None, SyncMsg::Pid(_)) => {}
    }
}

fn run(bundle: &Path) -> i32 {
    let mut sync: Option<File> = std::env::var(SYNC_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
        .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } != -1)
        .map(|fd| {
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            unsafe { File::from_raw_fd(fd) }
        });
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::setsid();
    }
    let _ = std::env::set_current_dir("/");
    // Fork once more and let the first process exit, so the runtime reaps it at once and the
    // shim is reparented away from the agent.
    match unsafe { libc::fork() } {
        -1 => {
            report(
                &mut sync,
                &SyncMsg::Error(format!("fork: {}", io::Error::last_os_error())),
            );
            return 1;
        }
        0 => {}
        _ => {
            drop(sync);
            return 0;
        }
    }
    match supervise(bundle, &mut sync) {
        Ok(()) => 0,
        Err(e) => {
            report(&mut sync, &SyncMsg::Error(e.to_string()));
            1
        }
    }
}

/// The container's ends and the shim's ends of its stdio.
struct Stdio {
    child: ChildIo,
    child_fds: Vec<OwnedFd>,
    out: Output,
    err: Option<OwnedFd>,
    /// With `stdin: true`: the FIFO attach sessions write to, read by the shim.
    stdin_fifo: Option<StdinFifo>,
    /// The container's stdin pipe (without a terminal; with one, input goes to the
    /// terminal's master side).
    stdin_pipe: Option<OwnedFd>,
}

/// The stdin FIFO's read side. It is opened non-blocking, so the shim never waits for a
/// writer, and never opened for writing by the shim: an attach session that closes its
/// end is then seen as a hang-up (stdinOnce closes the container's stdin on the first).
struct StdinFifo {
    path: PathBuf,
    fd: OwnedFd,
    once: bool,
}

impl StdinFifo {
    fn open(path: &Path) -> io::Result<OwnedFd> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)?;
        Ok(OwnedFd::from(f))
    }

    /// A writer came and went: a fresh read side waits for the next one.
    fn reopen(&mut self) -> io::Result<()> {
        self.fd = Self::open(&self.path)?;
        Ok(())
    }
}

enum Output {
    Pipe(OwnedFd),
    /// The socket the container sends its terminal's master side over.
    Terminal(OwnedFd),
}

fn open_stdio(cfg: &ContainerConfig) -> io::Result<Stdio> {
    let mut child_fds = Vec::new();
    let mut stdin_pipe = None;
    let stdin_fifo = if cfg.spec.stdin {
        let path = cfg.bundle.join(state::STDIN_FIFO);
        let c = sys::cstr(&path)?;
        cvt(unsafe { libc::mkfifo(c.as_ptr(), 0o600) })?;
        let fd = StdinFifo::open(&path)?;
        Some(StdinFifo {
            path,
            fd,
            once: cfg.spec.stdin_once,
        })
    } else {
        None
    };
    // The container reads a pipe the shim feeds from the FIFO, so it sees EOF only when
    // the shim decides (stdinOnce), never between two attach sessions.
    let stdin = if stdin_fifo.is_some() && !cfg.spec.tty {
        let (r, w) = sys::pipe()?;
        stdin_pipe = Some(w);
        r
    } else {
        let null = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/null")?;
        OwnedFd::from(null)
    };
    if cfg.spec.tty {
        // The container makes the terminal itself and sends us its master side.
        let (ours, theirs) = sys::socketpair()?;
        let child = ChildIo {
            stdin: stdin.as_raw_fd(),
            stdout: -1,
            stderr: -1,
            tty_socket: Some(theirs.as_raw_fd()),
        };
        child_fds.extend([stdin, theirs]);
        Ok(Stdio {
            child,
            child_fds,
            out: Output::Terminal(ours),
            err: None,
            stdin_fifo,
            stdin_pipe,
        })
    } else {
        let (out_r, out_w) = sys::pipe()?;
        let (err_r, err_w) = sys::pipe()?;
        let child = ChildIo {
            stdin: stdin.as_raw_fd(),
            stdout: out_w.as_raw_fd(),
            stderr: err_w.as_raw_fd(),
            tty_socket: None,
        };
        child_fds.extend([stdin, out_w, err_w]);
        Ok(Stdio {
            child,
            child_fds,
            out: Output::Pipe(out_r),
            err: Some(err_r),
            stdin_fifo,
            stdin_pipe,
        })
    }
}

/// A new pseudo-terminal pair from the host's /dev/ptmx; both ends close-on-exec.
pub(crate) fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let m = cvt(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    cvt(unsafe { libc::grantpt(m) })?;
    cvt(unsafe { libc::unlockpt(m) })?;
    let mut name = [0 as libc::c_char; 128];
    let r = unsafe { libc::ptsname_r(m, name.as_mut_ptr(), name.len()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    let s = cvt(unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    Ok((master, unsafe { OwnedFd::from_raw_fd(s) }))
}

fn supervise(bundle: &Path, sync: &mut Option<File>) -> io::Result<()> {
    let cfg: ContainerConfig = state::read_json(&bundle.join(state::CONFIG))
        .map_err(|e| io::Error::other(e.to_string()))?
        .ok_or_else(|| io::Error::other("config.json missing"))?;
    if let Some(dir) = cfg.spec.log_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(&cfg.spec.log_path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("open log {}: {e}", cfg.spec.log_path.display()),
            )
        })?;
    let stdio = open_stdio(&cfg)?;
    if cfg.isolated {
        // Our next child is pid 1 of a new pid namespace; the shim itself stays outside.
        cvt(unsafe { libc::unshare(libc::CLONE_NEWPID) })?;
    }
    let (err_r, err_w) = sys::pipe()?;
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let e = init::start(&cfg, stdio.child);
        let msg = e.to_string();
        unsafe {
            libc::write(
                err_w.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
            );
            libc::_exit(127);
        }
    }
    let ticks = sys::proc_start_ticks(pid).unwrap_or(0);
    drop(err_w);
    drop(stdio.child_fds);
    let out = match stdio.out {
        Output::Pipe(fd) => Some(fd),
        // None: the child failed before making its terminal; err_r says why.
        Output::Terminal(sock) => sys::recv_fd(sock.as_raw_fd())?,
    };
    let mut failure = String::new();
    File::from(err_r).read_to_string(&mut failure)?;
    if !failure.is_empty() {
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(io::Error::other(failure));
    }
    let out = out.ok_or_else(|| io::Error::other("container sent no terminal"))?;
    let me = std::process::id() as i32;
    let record = StateRecord {
        pid,
        start_ticks: ticks,
        shim_pid: me,
        shim_start_ticks: sys::proc_start_ticks(me).unwrap_or(0),
        started_at: state::now_rfc3339(),
    };
    state::write_json(&bundle.join(state::STATE), &record)
        .map_err(|e| io::Error::other(e.to_string()))?;
    report(sync, &SyncMsg::Pid(pid));

    // Input goes to the container's stdin pipe, or with a terminal to its master side.
    let input = match (stdio.stdin_fifo, stdio.stdin_pipe) {
        (Some(fifo), Some(pipe)) => Some(Input::new(fifo, pipe, false)?),
        (Some(fifo), None) => Some(Input::new(fifo, out.try_clone()?, true)?),
        _ => None,
    };
    let status = match copy_output(pid, out, stdio.err, input, &mut log) {
        Ok(status) => status,
        Err(e) => {
            // Losing the output must not lose the exit: say why in shim.log, reap the
            // container and record how it ended all the same.
            report(sync, &SyncMsg::Error(format!("copying output: {e}")));
            wait_for(pid)?
        }
    };
    let oom_killed = cfg.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0);
    let exit = ExitRecord {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        oom_killed,
        finished_at: state::now_rfc3339(),
    };
    state::write_json(&bundle.join(state::EXIT), &exit)
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(())
}

/// Attach input on its way into the container: bytes read from the stdin FIFO wait in
/// `pending` until the container's side takes them (its side is non-blocking, so a
/// container that does not read its stdin never stalls the copying of its output).
struct Input {
    fifo: StdinFifo,
    /// None once the container's stdin is closed (stdinOnce).
    to: Option<OwnedFd>,
    terminal: bool,
    pending: Vec<u8>,
}

impl Input {
    fn new(fifo: StdinFifo, to: OwnedFd, terminal: bool) -> io::Result<Input> {
        let flags = cvt(unsafe { libc::fcntl(to.as_raw_fd(), libc::F_GETFL) })?;
        cvt(unsafe { libc::fcntl(to.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
        Ok(Input {
            fifo,
            to: Some(to),
            terminal,
            pending: Vec::new(),
        })
    }

    /// The FIFO to poll for input: only while nothing waits to be delivered.
    fn fifo_fd(&self) -> RawFd {
        if self.to.is_some() && self.pending.is_empty() {
            self.fifo.fd.as_raw_fd()
        } else {
            -1
        }
    }

    /// The container's side, when input waits for room there.
    fn to_fd(&self) -> RawFd {
        match &self.to {
            Some(fd) if !self.pending.is_empty() => fd.as_raw_fd(),
            _ => -1,
        }
    }

    fn read_fifo(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let n = unsafe {
            libc::read(
                self.fifo.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        if n > 0 {
            self.pending.extend_from_slice(&buf[..n as usize]);
            return self.flush();
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
                return Ok(());
            }
        }
        // The attach session closed its end.
        if self.fifo.once {
            if self.terminal {
                // A terminal has no separate input to close: end-of-file is ^D.
                self.pending.push(0x04);
                self.flush()?;
            }
            self.to = None;
            Ok(())
        } else {
            self.fifo.reopen()
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let Some(to) = &self.to else {
            self.pending.clear();
            return Ok(());
        };
        while !self.pending.is_empty() {
            let n = unsafe {
                libc::write(
                    to.as_raw_fd(),
                    self.pending.as_ptr() as *const libc::c_void,
                    self.pending.len(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(()),
                    Some(libc::EINTR) => continue,
                    // The container closed its stdin: drop what it will never read.
                    _ => {
                        self.pending.clear();
                        self.to = None;
                        return Ok(());
                    }
                }
            }
            self.pending.drain(..n as usize);
        }
        Ok(())
    }
}

/// Copies the container's stdout/stderr (or its terminal) into the CRI log until the process
/// exits, and attach input into its stdin; returns its wait status.
fn copy_output(
    pid: i32,
    out: OwnedFd,
    err: Option<OwnedFd>,
    mut input: Option<Input>,
    log: &mut File,
) -> io::Result<i32> {
    let pidfd = sys::pidfd_open(pid)?;
    let mut streams: Vec<(OwnedFd, LineSplitter, bool)> =
        vec![(out, LineSplitter::new("stdout"), true)];
    if let Some(e) = err {
        streams.push((e, LineSplitter::new("stderr"), true));
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    let mut exited = false;
    loop {
        let mut fds: Vec<libc::pollfd> = streams
            .iter()
            .map(|(fd, _, open)| libc::pollfd {
                fd: if *open { fd.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let input_at = fds.len();
        if let Some(i) = &input {
            fds.push(libc::pollfd {
                fd: i.fifo_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            fds.push(libc::pollfd {
                fd: i.to_fd(),
                events: libc::POLLOUT,
                revents: 0,
            });
        }
        fds.push(libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let timeout = if exited { 0 } else { -1 };
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds.last().unwrap().revents != 0 {
            exited = true;
        }
        if let Some(i) = input.as_mut().filter(|_| !exited) {
            if fds[input_at].revents != 0 {
                i.read_fifo(&mut buf)?;
            }
            if fds[input_at + 1].revents != 0 {
                i.flush()?;
            }
        }
        let mut progressed = false;
        for (i, (fd, splitter, open)) in streams.iter_mut().enumerate() {
            if !*open || fds[i].revents == 0 {
                continue;
            }
            let n = unsafe {
                libc::read(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            };
            // (A terminal's master side is non-blocking when it also takes attach input.)
            let again =
                |e: io::Error| matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN));
            if n > 0 {
                splitter.push(&buf[..n as usize], &mut out);
                progressed = true;
            } else if n == 0 || !again(io::Error::last_os_error()) {
                // EOF, or EIO from a terminal whose other side is gone.
                *open = false;
            }
        }
        if !out.is_empty() {
            log.write_all(&out)?;
            out.clear();
        }
        // Once the process is gone, read what is buffered and stop: a background process
        // outside a pid namespace may hold the pipe open forever.
        if exited && (!progressed || streams.iter().all(|s| !s.2)) {
            break;
        }
    }
    for (_, splitter, _) in streams.iter_mut() {
        splitter.finish(&mut out);
    }
    log.write_all(&out)?;
    wait_for(pid)
}

/// Reaps `pid` and returns its wait status.
fn wait_for(pid: i32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(io::Error::new(e.kind(), format!("waitpid {pid}: {e}")));
        }
    }
}

/// `exec <dir> <json>`: joins the running container (cgroup, namespaces, root) and runs
/// `argv` there as its child; exits with the child's code (128 + signal when killed).
fn exec(bundle: &Path, req: &ExecRequest) -> i32 {
    match exec_inner(bundle, req) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("corral exec: {e}");
            126
        }
    }
}

fn exec_inner(bundle: &Path, req: &ExecRequest) -> io::Result<i32> {
    let other = |e: crate::Error| io::Error::other(e.to_string());
    let cfg: ContainerConfig = state::read_json(&bundle.join(state::CONFIG))
        .map_err(other)?
        .ok_or_else(|| io::Error::other("container config missing"))?;
    let st: StateRecord = state::read_json(&bundle.join(state::STATE))
        .map_err(other)?
        .ok_or_else(|| io::Error::other("container not started"))?;
    if !sys::process_matches(st.pid, st.start_ticks) {
        return Err(io::Error::other("container is not running"));
    }
    if cfg.isolated {
        if let Some(cg) = &cfg.cgroup {
            cg.join_self()?;
        }
        let ns: Vec<(OwnedFd, &str)> = ["ipc", "uts", "net", "pid", "mnt"]
            .iter()
            .map(|n| {
                let p = PathBuf::from(format!("/proc/{}/ns/{n}", st.pid));
                crate::network::open_netns(&p).map(|fd| (fd, *n))
            })
            .collect::<io::Result<_>>()?;
        // The namespaces are open, so a pid reused since the check cannot be joined by mistake.
        if !sys::process_matches(st.pid, st.start_ticks) {
            return Err(io::Error::other("container is not running"));
        }
        for (fd, name) in &ns {
            cvt(unsafe { libc::setns(fd.as_raw_fd(), 0) })
                .map_err(|e| io::Error::new(e.kind(), format!("setns {name}: {e}")))?;
        }
    }
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let e = exec_child(&cfg, req);
        eprintln!("corral exec: {e}");
        unsafe {
            libc::_exit(if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            })
        };
    }
    let mut status = 0;
    loop {
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            break;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    })
}

fn exec_child(cfg: &ContainerConfig, req: &ExecRequest) -> io::Error {
    if req.tty {
        // The terminal comes from the container's devpts (we are in its mount namespace);
        // its master side goes back to the agent over the socket it gave us.
        let Some(sock) = std::env::var(EXEC_PTY_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<RawFd>().ok())
        else {
            return io::Error::other("tty requested without a terminal socket");
        };
        unsafe { libc::setsid() };
        if let Err(e) = init::attach_tty(sock) {
            return e;
        }
        unsafe { libc::close(sock) };
    }
    if cfg.isolated {
        let cwd = cfg.spec.cwd.as_deref().unwrap_or("/");
        if std::env::set_current_dir(cwd).is_err() {
            let _ = std::env::set_current_dir("/");
        }
        if let Err(e) = init::drop_privileges(cfg) {
            return e;
        }
    } else if let Some(cwd) = &cfg.spec.cwd {
        let _ = std::env::set_current_dir(cwd);
    }
    // The session dies with its helper, which the agent kills to end it. (Set after the
    // credential change, which would clear it.)
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    init::exec(&req.argv, &init::environment(cfg))
}
