//! Probes (liveness, readiness, startup) and lifecycle hooks (postStart, preStop): exec in
//! the container through the runtime, an HTTP GET or a TCP connect to the pod's address,
//! or a sleep. One task per running container runs its probes and reports through
//! `ProbeState`, waking the pod's worker when a result changes.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_runtime::Runtime;
use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// An exec, HTTP GET, TCP connect or sleep: the actions probes and hooks share.
pub enum Action<'a> {
    Exec(&'a ExecAction),
    Http(&'a HTTPGetAction),
    Tcp(&'a TCPSocketAction),
    Sleep(i64),
    Unsupported(&'static str),
}

impl<'a> Action<'a> {
    pub fn of_probe(p: &'a Probe) -> Action<'a> {
        if let Some(e) = &p.exec {
            Action::Exec(e)
        } else if let Some(h) = &p.http_get {
            Action::Http(h)
        } else if let Some(t) = &p.tcp_socket {
            Action::Tcp(t)
        } else if p.grpc.is_some() {
            Action::Unsupported("gRPC probes are not supported by this node yet")
        } else {
            Action::Unsupported("probe has no handler")
        }
    }

    pub fn of_handler(h: &'a LifecycleHandler) -> Action<'a> {
        if let Some(e) = &h.exec {
            Action::Exec(e)
        } else if let Some(g) = &h.http_get {
            Action::Http(g)
        } else if let Some(t) = &h.tcp_socket {
            Action::Tcp(t)
        } else if let Some(s) = &h.sleep {
            Action::Sleep(s.seconds)
        } else {
            Action::Unsupported("lifecycle handler has no action")
        }
    }
}

/// Where and in what the action runs.
#[derive(Clone)]
pub struct Target {
    pub runtime: Runtime,
    pub container_id: String,
    pub pod_ip: IpAddr,
    pub container: Container,
}

fn port_of(target: &Target, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => {
            if let Ok(p) = name.parse::<u16>() {
                return Ok(p);
            }
            target
                .container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("couldn't find port {name:?} in the container"))
        }
    }
}

/// Runs the action once; Ok on success, Err with the message kubelet would report.
pub async fn run(target: &Target, action: &Action<'_>, timeout: Duration) -> Result<(), String> {
    match action {
        Action::Exec(e) => exec(target, e.command.clone().unwrap_or_default(), timeout).await,
        Action::Http(h) => http_get(target, h, timeout).await,
        Action::Tcp(t) => {
            let host = t
                .host
                .as_deref()
                .and_then(|h| h.parse().ok())
                .unwrap_or(target.pod_ip);
            let port = port_of(target, &t.port)?;
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: connect: {e}")),
                Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
            }
        }
        Action::Sleep(s) => {
            tokio::time::sleep(Duration::from_secs((*s).max(0) as u64)).await;
            Ok(())
        }
        Action::Unsupported(why) => Err(why.to_string()),
    }
}

async fn exec(target: &Target, argv: Vec<String>, timeout: Duration) -> Result<(), String> {
    let mut p = target
        .runtime
        .exec(&target.container_id, argv.clone(), false)
        .await
        .map_err(|e| e.to_string())?;
    drop(p.stdin.take());
    let mut out = p.stdout.take();
    let mut err = p.stderr.take();
    let work = async {
        let mut o = Vec::new();
        let mut e = Vec::new();
        let read_o = async {
            if let Some(s) = out.as_mut() {
                let _ = s.read_to_end(&mut o).await;
            }
        };
        let read_e = async {
            if let Some(s) = err.as_mut() {
                let _ = s.read_to_end(&mut e).await;
            }
        };
        tokio::join!(read_o, read_e);
        let code = p.wait().await.map_err(|e| e.to_string())?.code;
        o.extend_from_slice(&e);
        Ok::<_, String>((code, o))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok((0, _))) => Ok(()),
        Ok(Ok((code, output))) => {
            let text = String::from_utf8_lossy(&output).trim().to_string();
            if text.is_empty() {
                Err(format!("command {argv:?} exited with {code}"))
            } else {
                Err(text)
            }
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let _ = p.kill().await;
            Err(format!(
                "command timed out: {argv:?} timed out after {timeout:?}"
            ))
        }
    }
}

async fn http_get(target: &Target, h: &HTTPGetAction, timeout: Duration) -> Result<(), String> {
    if h.scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
    {
        return Err("HTTPS probes are not supported by this node yet".into());
    }
    let host = h
        .host
        .as_deref()
        .and_then(|h| h.parse().ok())
        .unwrap_or(target.pod_ip);
    let port = port_of(target, &h.port)?;
    let path = h
        .path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    let url = format!("http://{host}:{port}{path}");
    let work = async {
        let mut s = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("Get \"{url}\": dial tcp {host}:{port}: connect: {e}"))?;
        let mut req = format!("GET {path} HTTP/1.1\r\n");
        let mut has_host = false;
        let mut headers = String::new();
        for hd in h.http_headers.iter().flatten() {
            has_host |= hd.name.eq_ignore_ascii_case("host");
            headers.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
        }
        if !has_host {
            req.push_str(&format!("Host: {host}:{port}\r\n"));
        }
        req.push_str("User-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n");
        req.push_str(&headers);
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 8192 {
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| format!("Get \"{url}\": {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

/// What the probes found, read by the pod's worker.
#[derive(Default)]
pub struct ProbeState {
    pub started: AtomicBool,
    pub ready: AtomicBool,
    /// Set when liveness or startup failed for good: the container must be restarted.
    pub failed: Mutex<Option<String>>,
}

/// Something for the pod's worker to record as an event.
pub struct ProbeEvent {
    pub container: String,
    pub message: String,
}

struct Params {
    initial: Duration,
    period: Duration,
    timeout: Duration,
    success: u32,
    failure: u32,
}

fn params(p: &Probe) -> Params {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    Params {
        initial: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        success: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure: p.failure_threshold.unwrap_or(3).max(1) as u32,
    }
}

/// Runs the container's probes until aborted; `wake` tells the worker something changed.
pub async fn run_probes(
    target: Target,
    state: Arc<ProbeState>,
    wake: mpsc::UnboundedSender<()>,
    events: mpsc::UnboundedSender<ProbeEvent>,
) {
    let c = target.container.clone();
    let started_at = tokio::time::Instant::now();
    if let Some(p) = &c.startup_probe {
        let pr = params(p);
        tokio::time::sleep_until(started_at + pr.initial).await;
        let (mut ok, mut bad) = (0, 0);
        loop {
            match run(&target, &Action::of_probe(p), pr.timeout).await {
                Ok(()) => {
                    ok += 1;
                    bad = 0;
                    if ok >= pr.success {
                        break;
                    }
                }
                Err(msg) => {
                    ok = 0;
                    bad += 1;
                    let _ = events.send(ProbeEvent {
                        container: c.name.clone(),
                        message: format!("Startup probe failed: {msg}"),
                    });
                    if bad >= pr.failure {
                        *state.failed.lock().unwrap() = Some(format!(
                            "Container {} failed startup probe, will be restarted",
                            c.name
                        ));
                        let _ = wake.send(());
                        return;
                    }
                }
            }
            tokio::time::sleep(pr.period).await;
        }
    }
    state.started.store(true, Ordering::SeqCst);
    if c.readiness_probe.is_none() {
        state.ready.store(true, Ordering::SeqCst);
    }
    let _ = wake.send(());
    let liveness = async {
        let Some(p) = &c.liveness_probe else {
            return std::future::pending::<()>().await;
        };
        let pr = params(p);
        tokio::time::sleep_until(started_at + pr.initial).await;
        let mut bad = 0;
        loop {
            match run(&target, &Action::of_probe(p), pr.timeout).await {
                Ok(()) => bad = 0,
                Err(msg) => {
                    bad += 1;
                    let _ = events.send(ProbeEvent {
                        container: c.name.clone(),
                        message: format!("Liveness probe failed: {msg}"),
                    });
                    if bad >= pr.failure {
                        *state.failed.lock().unwrap() = Some(format!(
                            "Container {} failed liveness probe, will be restarted",
                            c.name
                        ));
                        let _ = wake.send(());
                        return std::future::pending::<()>().await;
                    }
                }
            }
            tokio::time::sleep(pr.period).await;
        }
    };
    let readiness = async {
        let Some(p) = &c.readiness_probe else {
            return std::future::pending::<()>().await;
        };
        let pr = params(p);
        tokio::time::sleep_until(started_at + pr.initial).await;
        let (mut ok, mut bad) = (0, 0);
        loop {
            let result = run(&target, &Action::of_probe(p), pr.timeout).await;
            let was = state.ready.load(Ordering::SeqCst);
            match result {
                Ok(()) => {
                    ok += 1;
                    bad = 0;
                    if ok >= pr.success && !was {
                        state.ready.store(true, Ordering::SeqCst);
                        let _ = wake.send(());
                    }
                }
                Err(msg) => {
                    ok = 0;
                    bad += 1;
                    let _ = events.send(ProbeEvent {
                        container: c.name.clone(),
                        message: format!("Readiness probe failed: {msg}"),
                    });
                    if bad >= pr.failure && was {
                        state.ready.store(false, Ordering::SeqCst);
                        let _ = wake.send(());
                    }
                }
            }
            tokio::time::sleep(pr.period).await;
        }
    };
    tokio::join!(liveness, readiness);
}
