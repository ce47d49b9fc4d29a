//! The node's HTTPS server, as the kubelet's: the API server proxies `pods/log`,
//! `pods/exec`, `pods/attach` and `pods/portforward` here, and this server terminates the
//! streaming protocols (plain chunked logs; websocket `v5`/`v4.channel.k8s.io` and SPDY/3.1
//! for exec and attach; SPDY for port-forward, raw or tunnelled in a websocket). What a pod
//! is and how to reach it comes from a [`Backend`] the node agent implements.
//!
//! Endpoints (paths as the kubelet's):
//! - `GET /containerLogs/{ns}/{pod}/{container}?follow&tailLines&sinceSeconds&sinceTime&timestamps&previous&limitBytes`
//! - `GET|POST /exec/{ns}/{pod}/{container}?command=..&stdin&stdout&stderr&tty` (upgrade)
//! - `GET|POST /attach/{ns}/{pod}/{container}?stdin&stdout&stderr&tty` (upgrade)
//! - `GET|POST /portForward/{ns}/{pod}` (upgrade)
//! - `GET /healthz`
//!
//! Every request needs a client certificate that the TLS configuration verified (the agent
//! builds it with a client verifier for the cluster CA); without one the answer is 401.

pub mod certs;
pub mod exec;
pub mod logs;
pub mod portforward;
pub mod spdy;
mod spdy_dict;
pub mod ws;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

pub type Body = BoxBody<Bytes, io::Error>;

/// A failure the backend reports; its message reaches the user as the kubelet's would.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The pod or container is not on this node.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be served in the container's state (e.g. `container "x" in pod
    /// "y" is waiting to start: ContainerCreating`).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Internal(String),
}

impl BackendError {
    fn status(&self) -> StatusCode {
        match self {
            BackendError::NotFound(_) => StatusCode::NOT_FOUND,
            BackendError::BadRequest(_) => StatusCode::BAD_REQUEST,
            BackendError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A container as the backend resolves it.
#[derive(Clone, Debug)]
pub struct ContainerInfo {
    /// The runtime's container id (`<pod uid>-<container>-<restart count>`).
    pub id: String,
    /// The current instance's CRI log file.
    pub log_path: PathBuf,
    /// The previous instance's (restart count - 1), when there was one.
    pub previous_log_path: Option<PathBuf>,
    pub running: bool,
}

/// Sets a terminal's size: (columns, rows).
pub type ResizeFn = Box<dyn Fn(u16, u16) -> io::Result<()> + Send + Sync>;

/// A process started in a container (exec) or a running container's streams (attach).
pub struct ExecSession {
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    /// With a terminal, the terminal's output (stderr is then `None`).
    pub stdout: Option<Pin<Box<dyn AsyncRead + Send>>>,
    pub stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
    /// Sets the terminal size (columns, rows); `None` without a terminal.
    pub resize: Option<ResizeFn>,
    /// Resolves to the exit code when the process ends.
    pub exit: BoxFuture<'static, io::Result<i32>>,
}

impl ExecSession {
    /// Adapts a runtime exec process: pipes as they are; a terminal is split into a reader
    /// and a writer (two descriptors, so a pending read never blocks typing).
    pub async fn from_runtime(mut p: corral_runtime::ExecProcess) -> io::Result<ExecSession> {
        let mut s = ExecSession {
            stdin: p.stdin.take().map(|w| Box::pin(w) as _),
            stdout: p.stdout.take().map(|r| Box::pin(r) as _),
            stderr: p.stderr.take().map(|r| Box::pin(r) as _),
            resize: None,
            exit: Box::pin(async { Ok(0) }),
        };
        if let Some(pty) = p.pty.take() {
            let read = pty.into_std().await;
            let write = read.try_clone()?;
            let ctl = read.try_clone()?;
            s.stdout = Some(Box::pin(tokio::fs::File::from_std(read)));
            s.stdin = Some(Box::pin(tokio::fs::File::from_std(write)));
            s.resize = Some(Box::new(move |cols, rows| set_winsize(&ctl, cols, rows)));
        }
        s.exit = Box::pin(async move {
            p.wait()
                .await
                .map(|e| e.code)
                .map_err(|e| io::Error::other(e.to_string()))
        });
        Ok(s)
    }
}

/// TIOCSWINSZ on a terminal's master side.
pub fn set_winsize(f: &std::fs::File, cols: u16, rows: u16) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer on an open descriptor.
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What the node agent provides: its pods' containers, processes in them, and their ports.
pub trait Backend: Send + Sync + 'static {
    /// Finds a container of a pod on this node (errors as the kubelet words them).
    fn container<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a str,
        container: &'a str,
    ) -> BoxFuture<'a, Result<ContainerInfo, BackendError>>;

    /// Resolves once the container has stopped (at once if it already has): ends a
    /// followed log.
    fn wait_stopped(&self, container_id: &str) -> BoxFuture<'static, ()>;

    /// Starts `argv` in a running container.
    fn exec<'a>(
        &'a self,
        container_id: &'a str,
        argv: Vec<String>,
        tty: bool,
    ) -> BoxFuture<'a, Result<ExecSession, BackendError>>;

    /// Attaches to a running container's own streams. Nodes that cannot answer
    /// "not supported".
    fn attach<'a>(
        &'a self,
        container_id: &'a str,
        tty: bool,
    ) -> BoxFuture<'a, Result<ExecSession, BackendError>> {
        let _ = (container_id, tty);
        Box::pin(async {
            Err(BackendError::BadRequest(
                "attach is not supported by this node".into(),
            ))
        })
    }

    /// Connects to `port` of the pod (its IP, or inside its network namespace).
    fn port_forward<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<TcpStream>>;
}

/// A parsed query string (repeated keys kept in order).
#[derive(Clone, Debug, Default)]
pub struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        Query(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect(),
        )
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
    pub fn all(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect()
    }
    /// A boolean parameter as Go's strconv.ParseBool reads it (a bare key is true).
    pub fn flag(&self, k: &str) -> bool {
        matches!(
            self.get(k),
            Some("" | "1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }
}

/// A `metav1.Status` failure response.
pub fn status_response(code: StatusCode, message: &str) -> Response<Body> {
    let reason = match code.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        _ => "InternalError",
    };
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    Response::builder()
        .status(code)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(full(body.to_string()))
        .expect("static response parts")
}

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub(crate) fn backend_error(e: &BackendError) -> Response<Body> {
    status_response(e.status(), &e.to_string())
}

/// Serves until `shutdown` resolves. `tls` must verify client certificates against the
/// cluster CA (optional or required); HTTP/1.1 is used whatever ALPN it lists, since the
/// streaming upgrades need it.
pub async fn serve<F>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    backend: Arc<dyn Backend>,
    shutdown: F,
) where
    F: Future<Output = ()> + Send,
{
    let mut cfg = (*tls).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    tokio::pin!(shutdown);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet-api: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let backend = backend.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "kubelet-api: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let authenticated = is_api_server(tls.get_ref().1.peer_certificates());
            let svc = hyper::service::service_fn(move |req| {
                let backend = backend.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(if authenticated {
                        handle(backend, req).await
                    } else {
                        status_response(StatusCode::UNAUTHORIZED, "Unauthorized")
                    })
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "kubelet-api: connection error");
                    }
                }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
}

/// Routes one request (authentication already done).
pub async fn handle(backend: Arc<dyn Backend>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let seg: Vec<&str> = segs.iter().map(String::as_str).collect();
    let get = req.method() == hyper::Method::GET;
    let post = req.method() == hyper::Method::POST;
    match seg.as_slice() {
        ["healthz"] if get => Response::new(full("ok")),
        ["containerLogs", ns, pod, container] if get => {
            container_logs(backend, ns, pod, container, req.uri().query()).await
        }
        ["exec", ns, pod, container] if get || post => {
            exec::serve(backend, req, ns, pod, container, false).await
        }
        ["attach", ns, pod, container] if get || post => {
            exec::serve(backend, req, ns, pod, container, true).await
        }
        ["portForward", ns, pod] if get || post => portforward::serve(backend, req, ns, pod).await,
        ["containerLogs" | "exec" | "attach" | "portForward", ..] => status_response(
            StatusCode::NOT_FOUND,
            &format!("the server could not find the requested resource ({path})"),
        ),
        _ => status_response(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

async fn container_logs(
    backend: Arc<dyn Backend>,
    ns: &str,
    pod: &str,
    container: &str,
    query: Option<&str>,
) -> Response<Body> {
    let q = Query::parse(query);
    let opts = match logs::parse_options(&q) {
        Ok(o) => o,
        Err(m) => return status_response(StatusCode::BAD_REQUEST, &m),
    };
    let info = match backend.container(ns, pod, container).await {
        Ok(i) => i,
        Err(e) => return backend_error(&e),
    };
    let (path, stopped) = if opts.previous {
        match &info.previous_log_path {
            Some(p) => (p.clone(), None),
            None => {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "previous terminated container {container:?} in pod {pod:?} not found"
                    ),
                )
            }
        }
    } else {
        let stopped = (opts.follow && info.running).then(|| backend.wait_stopped(&info.id));
        (info.log_path.clone(), stopped)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(16);
    tokio::spawn(logs::stream(path, opts, stopped, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    Response::builder()
        .header(hyper::header::CONTENT_TYPE, "text/plain")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("static response parts")
}

/// Only the API server may use a node's API: its client certificate carries the group
/// `system:masters` (as kubeadm's apiserver-kubelet-client does). Other certificates the
/// cluster CA issued, such as other nodes' own, are refused.
fn is_api_server(chain: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> bool {
    let Some(leaf) = chain.and_then(|c| c.first()) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return false;
    };
    let masters = cert
        .subject()
        .iter_organization()
        .any(|o| o.as_str() == Ok("system:masters"));
    masters
}

#[cfg(test)]
mod tests {
    use super::Query;

    #[test]
    fn query_keeps_repeats_and_decodes() {
        let q = Query::parse(Some(
            "command=sh&command=-c&command=echo+a%20b&stdin=true&tty",
        ));
        assert_eq!(q.all("command"), vec!["sh", "-c", "echo a b"]);
        assert!(q.flag("stdin"));
        assert!(q.flag("tty"));
        assert!(!q.flag("stdout"));
    }
}
