//! This node's kubelet API (`corral-kubelet-api`): the Backend that maps a pod's container
//! to its runtime container and log files, so `kubectl logs`, `exec` and `port-forward`
//! reach real containers through the API server.

use crate::paths;
use crate::Ctx;
use corral_kubelet_api::{Backend, BackendError, ContainerInfo, ExecSession};
use corral_runtime::ContainerState;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use std::io;
use std::sync::Arc;
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
