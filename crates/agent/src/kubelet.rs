//! This node's kubelet API (`corral-kubelet-api`): the Backend that maps a pod's container
//! to its runtime container and log files, so `kubectl logs`, `exec`, `attach` and
//! `port-forward` reach real containers through the API server. Attach writes to the
//! container's stdin FIFO and follows its output from the CRI log (line by line, as the
//! shim records it).

use crate::paths;
use crate::Ctx;
use corral_kubelet_api::{Backend, BackendError, ContainerInfo, ExecSession};
use corral_runtime::ContainerState;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub(crate) struct NodeBackend {
    pub ctx: Arc<Ctx>,
}

impl NodeBackend {
    async fn pod(&self, ns: &str, name: &str) -> Result<Pod, BackendError> {
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), ns);
        match api.get_opt(name).await {
            Ok(Some(p))
                if p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                    == Some(&self.ctx.cfg.node_name) =>
            {
                Ok(p)
            }
            Ok(_) => Err(BackendError::NotFound(format!(
                "pod {name:?} not found on this node"
            ))),
            Err(e) => Err(BackendError::Internal(e.to_string())),
        }
    }
}

impl Backend for NodeBackend {
    fn container<'a>(
        &'a self,
        ns: &'a str,
        pod: &'a str,
        container: &'a str,
    ) -> BoxFuture<'a, Result<ContainerInfo, BackendError>> {
        Box::pin(async move {
            let p = self.pod(ns, pod).await?;
            let uid = p.metadata.uid.clone().unwrap_or_default();
            let status = p.status.as_ref();
            let restart = status
                .into_iter()
                .flat_map(|s| {
                    s.container_statuses
                        .iter()
                        .flatten()
                        .chain(s.init_container_statuses.iter().flatten())
                })
                .find(|c| c.name == container)
                .map(|c| c.restart_count.max(0) as u32)
                .ok_or_else(|| {
                    BackendError::BadRequest(format!(
                        "container {container} is not valid for pod {pod}"
                    ))
                })?;
            let dir = &self.ctx.cfg.data_dir;
            let log_path = paths::container_log_path(dir, ns, pod, &uid, container, restart);
            let previous = (restart > 0)
                .then(|| paths::container_log_path(dir, ns, pod, &uid, container, restart - 1))
                .filter(|p| p.exists());
            let id = paths::container_id(&uid, container, restart);
            let running = matches!(
                self.ctx.runtime.container_state(&id),
                Ok(ContainerState::Running { .. })
            );
            Ok(ContainerInfo {
                id,
                log_path,
                previous_log_path: previous,
                running,
            })
        })
    }

    fn wait_stopped(&self, id: &str) -> BoxFuture<'static, ()> {
        let runtime = self.ctx.runtime.clone();
        let id = id.to_string();
        Box::pin(async move {
            let _ = runtime.wait_exit(&id).await;
        })
    }

    fn exec<'a>(
        &'a self,
        id: &'a str,
        argv: Vec<String>,
        tty: bool,
    ) -> BoxFuture<'a, Result<ExecSession, BackendError>> {
        Box::pin(async move {
            let p = self
                .ctx
                .runtime
                .exec(id, argv, tty)
                .await
                .map_err(|e| BackendError::Internal(e.to_string()))?;
            ExecSession::from_runtime(p)
                .await
                .map_err(|e| BackendError::Internal(e.to_string()))
        })
    }

    fn attach<'a>(
        &'a self,
        id: &'a str,
        _tty: bool,
    ) -> BoxFuture<'a, Result<ExecSession, BackendError>> {
        Box::pin(async move {
            let a = self
                .ctx
                .runtime
                .attach(id)
                .await
                .map_err(|e| BackendError::BadRequest(e.to_string()))?;
            let (out_w, out_r) = tokio::io::duplex(64 * 1024);
            let (err_w, err_r) = if a.tty {
                (None, None)
            } else {
                let (w, r) = tokio::io::duplex(64 * 1024);
                (Some(w), Some(r))
            };
            // Output from now on: the read position is fixed before any input can arrive.
            let mut log = tokio::fs::File::open(&a.log_path)
                .await
                .map_err(|e| BackendError::Internal(format!("open log: {e}")))?;
            log.seek(io::SeekFrom::End(0))
                .await
                .map_err(|e| BackendError::Internal(format!("seek log: {e}")))?;
            let stopped = self.wait_stopped(id);
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                if let Err(e) = tail_log(log, stopped, out_w, err_w).await {
                    tracing::debug!(error = %e, "attach: following the log failed");
                }
                let _ = done_tx.send(());
            });
            Ok(ExecSession {
                stdin: a
                    .stdin
                    .map(|w| Box::pin(w) as std::pin::Pin<Box<dyn AsyncWrite + Send>>),
                stdout: Some(Box::pin(out_r)),
                stderr: err_r.map(|r| Box::pin(r) as std::pin::Pin<Box<dyn AsyncRead + Send>>),
                resize: None,
                // The session ends with the container (its output read to the end).
                exit: Box::pin(async move {
                    let _ = done_rx.await;
                    Ok(0)
                }),
            })
        })
    }

    fn port_forward<'a>(
        &'a self,
        ns: &'a str,
        pod: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<TcpStream>> {
        Box::pin(async move {
            let p = self
                .pod(ns, pod)
                .await
                .map_err(|e| io::Error::other(format!("{e:?}")))?;
            let ip = p
                .status
                .and_then(|s| s.pod_ip)
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
                .ok_or_else(|| io::Error::other(format!("pod {pod} has no IP yet")))?;
            TcpStream::connect((ip, port)).await
        })
    }
}

/// The path where the API server signs a joining node's serving-certificate request.
pub const SERVING_CERT_PATH: &str = "/corral/v1/node-serving-certificate";

/// The kubelet API's TLS config for this node (None: configured without one).
pub(crate) async fn tls(
    client: &kube::Client,
    cfg: &crate::AgentConfig,
    node_ip: std::net::IpAddr,
) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    use corral_kubelet_api::certs;
    let ips = [node_ip, std::net::IpAddr::from([127, 0, 0, 1])];
    match &cfg.kubelet_tls {
        crate::KubeletTls::None => Ok(None),
        crate::KubeletTls::SignWith { ca_pem, ca_key_pem } => {
            certs::node_server_config(ca_pem, ca_key_pem, &cfg.node_name, &ips).map(Some)
        }
        crate::KubeletTls::RequestFromServer { ca_pem } => {
            let (key_pem, csr_pem) = certs::node_csr(&cfg.node_name, &ips)?;
            let req = http::Request::post(SERVING_CERT_PATH)
                .header(http::header::CONTENT_TYPE, "application/pkcs10")
                .body(csr_pem.into_bytes())
                .map_err(|e| e.to_string())?;
            let cert_pem = client
                .request_text(req)
                .await
                .map_err(|e| format!("requesting the serving certificate: {e}"))?;
            certs::server_config(ca_pem, &cert_pem, &key_pem).map(Some)
        }
    }
}

/// How often an attach session looks for new output in the container's log.
const TAIL_INTERVAL: Duration = Duration::from_millis(50);

/// Streams what the container writes from now on, as its CRI log records it, to `out`
/// (and `err`: stderr records; with a terminal everything is stdout), until the container
/// stops and the log is read to its end, or the session's reader goes away.
async fn tail_log(
    mut f: tokio::fs::File,
    stopped: impl std::future::Future<Output = ()>,
    mut out: tokio::io::DuplexStream,
    mut err: Option<tokio::io::DuplexStream>,
) -> io::Result<()> {
    tokio::pin!(stopped);
    let mut done = false;
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        let n = f.read(&mut chunk).await?;
        if n == 0 {
            if done {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(TAIL_INTERVAL) => {}
                _ = &mut stopped => {
                    // The shim writes the last output after the process is gone.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    done = true;
                }
            }
            continue;
        }
        pending.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(nl) = pending[start..].iter().position(|b| *b == b'\n') {
            let line = &pending[start..start + nl];
            start += nl + 1;
            let Some(rec) = corral_kubelet_api::logs::parse_record(line) else {
                continue;
            };
            let to = match (&mut err, rec.stream) {
                (Some(e), "stderr") => e,
                _ => &mut out,
            };
            if to.write_all(&rec.text).await.is_err() {
                return Ok(()); // the session is gone
            }
        }
        pending.drain(..start);
    }
}

/// Serves the kubelet API on the node's address until `stop`; a port already in use is
/// reported and the agent goes on without it.
pub(crate) async fn serve(
    ctx: Arc<Ctx>,
    tls: Arc<rustls::ServerConfig>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let addr = std::net::SocketAddr::new(ctx.node_ip, ctx.cfg.kubelet_port);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "kubelet API not served (logs/exec/port-forward will fail)");
            return;
        }
    };
    tracing::info!(%addr, "kubelet API serving");
    let backend = Arc::new(NodeBackend { ctx });
    corral_kubelet_api::serve(listener, tls, backend, async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await;
}
