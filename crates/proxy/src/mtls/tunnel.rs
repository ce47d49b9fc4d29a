//! The tunnel between node proxies: HTTP/2 CONNECT over mutual TLS 1.3 (Istio's HBONE).
//! One TLS connection per (remote node, source identity) carries every tunneled
//! connection between them as its own HTTP/2 stream, so after the first handshake a new
//! connection to a remote endpoint costs one round trip, not a TLS handshake.
//!
//! The CONNECT request names the endpoint (`podIP:port`) and, in a `forwarded` header,
//! the original client's address (for ipBlocks rules). `x-corral-judged: http` says the
//! sending proxy already judged the request at L7 with AuthorizationPolicy (an HTTP
//! port): the receiver then judges nothing more, since an L4 judgement would refuse
//! every ALLOW rule with HTTP fields. Otherwise the receiver judges the connection with
//! the source identity from the certificate.

use super::certs;
use super::identities::Identities;
use super::SpiffeId;
use crate::frontends::Frontends;
use crate::mesh::authz::{Decision, SourceId};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const JUDGED_HEADER: &str = "x-corral-judged";

/// A connection to an endpoint: straight, or through another node's proxy.
pub enum Upstream {
    Direct(TcpStream),
    Tunneled(TokioIo<Upgraded>),
}

impl Upstream {
    pub fn is_tunneled(&self) -> bool {
        matches!(self, Upstream::Tunneled(_))
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tunneled(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tunneled(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tunneled(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Direct(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tunneled(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// This node's side of the mesh: its identities and its tunnels to other nodes.
pub struct Mesh {
    pub ids: Arc<Identities>,
    pub node_name: String,
    /// The port other nodes' tunnels listen on (always [`super::TUNNEL_PORT`] but in tests).
    tunnel_port: u16,
    /// Up to `conns_per_peer` connections per (node, identity), used in turn: one TLS
    /// connection is one task encrypting on one core, so a busy pair gets one per core.
    pool: Mutex<HashMap<(SocketAddr, SpiffeId), Vec<Sender>>>,
    conns_per_peer: usize,
    turn: std::sync::atomic::AtomicUsize,
    /// Held while dialling, so a burst of first requests makes one connection, not many.
    dialling: tokio::sync::Mutex<()>,
    /// The cluster's pods by address as last seen (where an endpoint runs), for
    /// connectors that are not handed a configuration.
    pods: Mutex<Arc<PodsByIp>>,
}

/// One HTTP/2 connection to another node's tunnel.
type Sender = SendRequest<Empty<Bytes>>;

type PodsByIp = HashMap<IpAddr, Arc<crate::pods::PodMeta>>;

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("node", &self.node_name)
            .finish()
    }
}

impl Mesh {
    pub fn new(ids: Arc<Identities>, node_name: String) -> Mesh {
        Mesh {
            ids,
            node_name,
            tunnel_port: super::TUNNEL_PORT,
            pool: Mutex::default(),
            conns_per_peer: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            turn: Default::default(),
            dialling: Default::default(),
            pods: Mutex::default(),
        }
    }

    /// Takes the pods of a new configuration, and forgets the certificates and tunnel
    /// connections of service accounts no pod of this node runs as any more.
    pub fn set_pods(&self, pods: Arc<PodsByIp>) {
        let local: std::collections::HashSet<SpiffeId> = pods
            .values()
            .filter(|p| p.node_name.as_deref() == Some(&self.node_name))
            .map(|p| SpiffeId::workload(self.ids.trust_domain(), &p.namespace, &p.service_account))
            .collect();
        let node = self.ids.node();
        let keep = |id: &SpiffeId| id == node || local.contains(id);
        self.ids.retain(keep);
        self.pool.lock().unwrap().retain(|(_, id), _| keep(id));
        *self.pods.lock().unwrap() = pods;
    }

    /// The identity traffic from `client` carries: its pod's service account when it is a
    /// pod of this node, else this node's.
    pub fn source_of(&self, fe: &Frontends, client: IpAddr) -> SpiffeId {
        match fe.pods_by_ip.get(&client) {
            Some(p) if p.node_name.as_deref() == Some(&self.node_name) => {
                SpiffeId::workload(self.ids.trust_domain(), &p.namespace, &p.service_account)
            }
            _ => self.ids.node().clone(),
        }
    }

    /// Where a connection to `dst` goes: (node name, tunnel address) when it is a pod of
    /// another node whose address is known, else None (dial it directly).
    pub fn remote(&self, fe: &Frontends, dst: IpAddr) -> Option<(String, SocketAddr)> {
        self.remote_in(&fe.pods_by_ip, dst)
    }

    fn remote_in(&self, pods: &PodsByIp, dst: IpAddr) -> Option<(String, SocketAddr)> {
        let pod = pods.get(&dst)?;
        let node = pod.node_name.as_deref()?;
        if node == self.node_name {
            return None;
        }
        Some((
            node.to_string(),
            SocketAddr::new(pod.host_ip?, self.tunnel_port),
        ))
    }

    /// Connects to `dst` for `client`: directly when it is here, through its node's
    /// tunnel when it is a pod of another node.
    pub async fn dial(
        self: &Arc<Self>,
        fe: &Frontends,
        client: IpAddr,
        dst: SocketAddr,
        judged_http: bool,
    ) -> io::Result<Upstream> {
        match self.remote(fe, dst.ip()) {
            None => dial_direct(dst).await.map(Upstream::Direct),
            Some((node, via)) => {
                let source = self.source_of(fe, client);
                self.tunnel(&node, via, &source, client, dst, judged_http)
                    .await
                    .map(Upstream::Tunneled)
            }
        }
    }

    async fn tunnel(
        &self,
        node: &str,
        via: SocketAddr,
        source: &SpiffeId,
        client: IpAddr,
        dst: SocketAddr,
        judged_http: bool,
    ) -> io::Result<TokioIo<Upgraded>> {
        let mut sender = self.sender(node, via, source).await?;
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(dst.to_string())
            .header("forwarded", format!("for=\"{client}\""));
        if judged_http {
            req = req.header(JUDGED_HEADER, "http");
        }
        let req = req.body(Empty::new()).map_err(io::Error::other)?;
        let res = sender.send_request(req).await.map_err(|e| {
            // A broken connection is not reused.
            if let Some(v) = self.pool.lock().unwrap().get_mut(&(via, source.clone())) {
                v.retain(|s| !s.is_closed());
            }
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("tunnel to {node}: {e}"),
            )
        })?;
        if res.status() != StatusCode::OK {
            let kind = match res.status() {
                StatusCode::FORBIDDEN => io::ErrorKind::PermissionDenied,
                _ => io::ErrorKind::ConnectionRefused,
            };
            let why = res
                .headers()
                .get("x-corral-reason")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            return Err(io::Error::new(
                kind,
                format!("{node} refused {dst}: {} {why}", res.status()),
            ));
        }
        let up = hyper::upgrade::on(res).await.map_err(io::Error::other)?;
        Ok(TokioIo::new(up))
    }

    /// An HTTP/2 connection to `node` that speaks for `source`: the next of those open,
    /// or a new one while there are fewer than `conns_per_peer`.
    async fn sender(&self, node: &str, via: SocketAddr, source: &SpiffeId) -> io::Result<Sender> {
        let key = (via, source.clone());
        // Wait for a dial under way only when nothing is open yet.
        let open = |want: usize| {
            let mut pool = self.pool.lock().unwrap();
            let v = pool.get_mut(&key)?;
            v.retain(|s| !s.is_closed());
            (v.len() >= want).then(|| {
                let i = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                v[i % v.len()].clone()
            })
        };
        if let Some(s) = open(self.conns_per_peer) {
            return Ok(s);
        }
        let _dialling = match self.dialling.try_lock() {
            Ok(g) => g,
            Err(_) => {
                if let Some(s) = open(1) {
                    return Ok(s);
                }
                self.dialling.lock().await
            }
        };
        if let Some(s) = open(self.conns_per_peer) {
            return Ok(s);
        }
        let cfg = self
            .ids
            .client_config(source)
            .await
            .map_err(io::Error::other)?;
        let name = certs::node_server_name(node).map_err(io::Error::other)?;
        let tcp = dial_direct(via).await?;
        let tls = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "tunnel handshake timed out"))??;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(io::Error::other)?;
        let node = node.to_string();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%node, error = %e, "tunnel connection ended");
            }
        });
        self.pool
            .lock()
            .unwrap()
            .entry(key)
            .or_default()
            .push(sender.clone());
        Ok(sender)
    }
}

/// An HTTP client connector that reaches endpoints of other nodes through their tunnels,
/// speaking for one source identity (so pooled connections never mix identities).
#[derive(Clone)]
pub struct TunnelConnector {
    pub mesh: Arc<Mesh>,
    pub source: SpiffeId,
}

impl tower::Service<http::Uri> for TunnelConnector {
    type Response = TokioIo<Upstream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let dst: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| io::Error::other(format!("{uri}: not ip:port")))?;
            let remote = {
                let pods = this.mesh.pods.lock().unwrap().clone();
                this.mesh.remote_in(&pods, dst.ip())
            };
            let up = match remote {
                // The pod moved here (or went) since the request was routed.
                None => Upstream::Direct(dial_direct(dst).await?),
                Some((node, via)) => Upstream::Tunneled(
                    this.mesh
                        .tunnel(
                            &node,
                            via,
                            &this.source,
                            IpAddr::from([0, 0, 0, 0]),
                            dst,
                            true,
                        )
                        .await?,
                ),
            };
            Ok(TokioIo::new(up))
        })
    }
}

impl hyper_util::client::legacy::connect::Connection for Upstream {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

pub async fn dial_direct(dst: SocketAddr) -> io::Result<TcpStream> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {dst} timed out"),
            )
        })??;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Accepts tunnels from other nodes' proxies until the task is aborted.
pub async fn serve(listener: TcpListener, mesh: Arc<Mesh>, table: watch::Receiver<Arc<Frontends>>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "tunnel accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mesh = mesh.clone();
        let table = table.clone();
        tokio::spawn(async move {
            if let Err(e) = inbound(tcp, mesh, table).await {
                tracing::debug!(%peer, error = %e, "tunnel connection refused");
            }
        });
    }
}

async fn inbound(
    tcp: TcpStream,
    mesh: Arc<Mesh>,
    table: watch::Receiver<Arc<Frontends>>,
) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let cfg = mesh.ids.server_config().await?;
    let tls = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsAcceptor::from(cfg).accept(tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| format!("handshake: {e}"))?;
    // The verifier has checked the chain; the identity is the certificate's SPIFFE URI.
    let source = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(certs::peer_identity)
        .filter(|id| id.trust_domain() == mesh.ids.trust_domain())
        .ok_or("the client certificate names no identity of this mesh")?;
    let source = Arc::new(source);
    let svc = hyper::service::service_fn(move |req| {
        let (mesh, table, source) = (mesh.clone(), table.clone(), source.clone());
        async move {
            let fe = table.borrow().clone();
            Ok::<_, std::convert::Infallible>(open(req, &mesh, &fe, &source).await)
        }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), svc)
        .await
        .map_err(|e| e.to_string())
}

fn reply(code: StatusCode, reason: &str) -> Response<Empty<Bytes>> {
    let mut r = Response::new(Empty::new());
    *r.status_mut() = code;
    if let Ok(v) = reason.parse() {
        r.headers_mut().insert("x-corral-reason", v);
    }
    r
}

/// One tunneled connection: checks, then connects to the local pod and splices.
async fn open(
    mut req: Request<Incoming>,
    mesh: &Mesh,
    fe: &Frontends,
    source: &SpiffeId,
) -> Response<Empty<Bytes>> {
    if req.method() != Method::CONNECT {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "only CONNECT");
    }
    let Some(dst) = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        return reply(StatusCode::BAD_REQUEST, "CONNECT needs ip:port");
    };
    // Only this node's pods are reached through its tunnel: it is no open relay.
    let local = fe
        .pods_by_ip
        .get(&dst.ip())
        .is_some_and(|p| p.node_name.as_deref() == Some(&mesh.node_name) && !p.finished);
    if !local {
        return reply(StatusCode::NOT_FOUND, "no_such_pod_on_this_node");
    }
    let client = req
        .headers()
        .get("forwarded")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("for=\"")?.strip_suffix('"')?.parse().ok())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let judged = req
        .headers()
        .get(JUDGED_HEADER)
        .is_some_and(|v| v == "http");
    if !judged {
        if let Decision::Deny(why) = fe.authorize_from(
            Some(SourceId::Verified(source)),
            client,
            dst.ip(),
            dst.port(),
            None,
        ) {
            tracing::debug!(%source, %dst, policy = %why, "tunneled connection denied");
            return reply(StatusCode::FORBIDDEN, "rbac_access_denied");
        }
    }
    let upstream = match dial_direct(dst).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%dst, error = %e, "tunneled endpoint refused");
            return reply(StatusCode::SERVICE_UNAVAILABLE, "upstream_connect_failure");
        }
    };
    tokio::spawn(async move {
        match hyper::upgrade::on(&mut req).await {
            Ok(up) => {
                let mut up = TokioIo::new(up);
                let mut upstream = upstream;
                let _ = tokio::io::copy_bidirectional(&mut up, &mut upstream).await;
            }
            Err(e) => tracing::debug!(error = %e, "tunnel stream not opened"),
        }
    });
    Response::new(Empty::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mtls::identities::Issuer;
    use crate::pods::PodMeta;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::mtls::certs::tests::test_ca as ca;

    fn mesh(ca: &(String, String), node: &str, port: u16) -> Arc<Mesh> {
        let issuer = Issuer::SignWith {
            ca_key_pem: ca.1.clone(),
        };
        let ids = Identities::new(ca.0.clone(), issuer, "cluster.local", node);
        let mut m = Mesh::new(Arc::new(ids), node.into());
        m.tunnel_port = port;
        Arc::new(m)
    }

    fn pod(ip: &str, node: &str, sa: &str) -> (IpAddr, Arc<PodMeta>) {
        let ip: IpAddr = ip.parse().unwrap();
        let meta = PodMeta {
            namespace: "shop".into(),
            name: format!("pod-{ip}"),
            service_account: sa.into(),
            node_name: Some(node.into()),
            host_ip: Some("127.0.0.1".parse().unwrap()),
            ips: vec![ip],
            ..Default::default()
        };
        (ip, Arc::new(meta))
    }

    fn frontends(pods: &[(IpAddr, Arc<PodMeta>)], allow_only: Option<&str>) -> Arc<Frontends> {
        let mut fe = Frontends {
            pods_by_ip: Arc::new(pods.iter().cloned().collect()),
            ..Default::default()
        };
        if let Some(principal) = allow_only {
            let policy = Arc::new(crate::mesh::authz::AuthorizationPolicy {
                namespace: "shop".into(),
                name: "only".into(),
                created: String::new(),
                spec: serde_json::from_value(serde_json::json!(
                    {"rules": [{"from": [{"source": {"principals": [principal]}}]}]}
                ))
                .unwrap(),
            });
            fe.authz = Arc::new(crate::mesh::authz::Authz::new(&[policy], "cluster.local"));
        }
        Arc::new(fe)
    }

    /// An echo server standing in for a pod of node B.
    async fn echo(ip: &str) -> SocketAddr {
        let l = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_tunnel_carries_the_source_identity_and_reaches_only_its_own_pods() {
        let ca = ca();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (a, b) = (mesh(&ca, "node-a", port), mesh(&ca, "node-b", port));
        let web = echo("127.0.0.2").await;
        let client = pod("127.0.0.3", "node-a", "client");
        let server_pod = pod("127.0.0.2", "node-b", "web");
        let ghost = pod("127.0.0.4", "node-b", "web");
        let view_a = frontends(&[client.clone(), server_pod.clone(), ghost.clone()], None);
        let (tx, rx) = watch::channel(frontends(&[client.clone(), server_pod.clone()], None));
        tokio::spawn(serve(listener, b.clone(), rx));

        // Through the tunnel, and the bytes come back.
        let mut up = a.dial(&view_a, client.0, web, false).await.unwrap();
        assert!(up.is_tunneled());
        up.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        up.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");

        // A pod node B does not run: refused, the tunnel is no open relay.
        let e = a
            .dial(
                &view_a,
                client.0,
                SocketAddr::new(ghost.0, web.port()),
                false,
            )
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("no_such_pod_on_this_node"), "{e}");

        // B judges with the identity in A's certificate: the client's account is allowed
        // only when the policy names it.
        tx.send_replace(frontends(
            &[client.clone(), server_pod.clone()],
            Some("cluster.local/ns/shop/sa/someone-else"),
        ));
        let e = a.dial(&view_a, client.0, web, false).await.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        tx.send_replace(frontends(
            &[client.clone(), server_pod.clone()],
            Some("cluster.local/ns/shop/sa/client"),
        ));
        assert!(a.dial(&view_a, client.0, web, false).await.is_ok());
        // Not from a pod: the node's identity, which that policy does not name.
        let e = a
            .dial(&view_a, "127.0.0.9".parse().unwrap(), web, false)
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        // A request the sending proxy judged at L7 is not judged again at L4.
        assert!(a
            .dial(&view_a, "127.0.0.9".parse().unwrap(), web, true)
            .await
            .is_ok());

        // The tunnel speaks CONNECT to ip:port only.
        let via = SocketAddr::from(([127, 0, 0, 1], port));
        let sender = a.sender("node-b", via, a.ids.node()).await.unwrap();
        let status = |method: http::Method, uri: &str| {
            let mut sender = sender.clone();
            let req = http::Request::builder()
                .method(method)
                .uri(uri)
                .body(Empty::new())
                .unwrap();
            async move { sender.send_request(req).await.unwrap().status() }
        };
        assert_eq!(
            status(http::Method::GET, "https://127.0.0.2/").await,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(http::Method::CONNECT, "web.shop:80").await,
            StatusCode::BAD_REQUEST
        );

        // Once no pod of node A runs as `client`, its certificate and tunnel connections
        // are forgotten (the node's own stay); a new such pod gets them again.
        assert_eq!(a.ids.held(), 2);
        a.set_pods(Arc::new([server_pod.clone()].into_iter().collect()));
        assert_eq!(a.ids.held(), 1);
        assert!(a
            .pool
            .lock()
            .unwrap()
            .keys()
            .all(|(_, id)| id == a.ids.node()));
        a.set_pods(Arc::new(
            [client.clone(), server_pod.clone()].into_iter().collect(),
        ));
        assert!(a.dial(&view_a, client.0, web, true).await.is_ok());
        assert_eq!(a.ids.held(), 2);
    }

    #[tokio::test]
    async fn a_client_of_another_ca_or_none_is_refused_at_the_handshake() {
        let ca_b = ca();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let b = mesh(&ca_b, "node-b", port);
        let web = echo("127.0.0.2").await;
        let server_pod = pod("127.0.0.2", "node-b", "web");
        let (_tx, rx) = watch::channel(frontends(std::slice::from_ref(&server_pod), None));
        tokio::spawn(serve(listener, b, rx));
        // Same node names, another CA: node B's certificate is not trusted, nor the client's.
        let other = mesh(&ca(), "node-a", port);
        let view = frontends(&[server_pod], None);
        assert!(other
            .dial(&view, "127.0.0.9".parse().unwrap(), web, false)
            .await
            .is_err());
    }
}
