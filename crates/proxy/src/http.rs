//! HTTP frontends: Service ports that speak HTTP (by appProtocol or port name, as Istio
//! decides) are proxied per request rather than per connection. Each request is routed
//! with the configuration current when it arrives, so a change applies to keep-alive
//! connections at once, while requests in flight finish on what they started with.
//! Endpoints are chosen per request; a request without a body moves on to the next
//! endpoint when one refuses the connection. When nothing can answer, the reply is a 503
//! whose body and `x-corral-reason` header say why, as Envoy's response flags do
//! (`network_policy` when a NetworkPolicy forbids the client to reach the endpoint).

use crate::frontends::{AppProtocol, Frontend, Frontends, Listen};
use crate::mesh::authz::{Decision, HttpParts};
use crate::mesh::outlier::{Outcome, Registry};
use crate::mesh::routing::{
    apply_header_ops, chance, Action, Cluster, HashOn, RequestInfo, RetryPolicy, Route,
};
use crate::mtls::tunnel::TunnelConnector;
use crate::mtls::SpiffeId;
use crate::stats::Stats;
use crate::telemetry::{RecentMetrics, RequestContext, ServedBy, Telemetry, Tunneled};
use crate::upstream::{self, Affine};
use crate::view::Protocol;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// Why the proxy answered itself instead of an endpoint (the `x-corral-reason` header).
pub const REASON_HEADER: &str = "x-corral-reason";

/// The upstream side shared by every HTTP frontend of the node: connection pools to
/// endpoints, HTTP/1.1 and HTTP/2 (prior knowledge, for gRPC and h2c).
pub struct Upstreams {
    h1: Client<HttpConnector, Body>,
    h2: Client<HttpConnector, Body>,
    /// Pools to other nodes' endpoints through their tunnels, one per source identity
    /// and protocol.
    tunneled: std::sync::Mutex<HashMap<(bool, SpiffeId), Client<TunnelConnector, Body>>>,
    /// Outlier detection's view of every endpoint.
    pub health: Registry,
}

impl Upstreams {
    pub fn new() -> Upstreams {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(3)));
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(conn.clone());
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(conn);
        Upstreams {
            h1,
            h2,
            tunneled: Default::default(),
            health: Registry::default(),
        }
    }

    /// Sends `req` to the endpoint `addr` for a client at `peer`: through the endpoint's
    /// node tunnel when it is a pod of another node, straight otherwise.
    fn send(
        &self,
        app: AppProtocol,
        frontends: &Frontends,
        peer: IpAddr,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        let h2 = app == AppProtocol::Http2;
        if let Some(mesh) = &frontends.mesh {
            if mesh.remote(frontends, addr.ip()).is_some() {
                let source = mesh.source_of(frontends, peer);
                let client = self
                    .tunneled
                    .lock()
                    .unwrap()
                    .entry((h2, source.clone()))
                    .or_insert_with(|| {
                        let mut b = Client::builder(TokioExecutor::new());
                        b.pool_idle_timeout(Duration::from_secs(60)).http2_only(h2);
                        b.build(TunnelConnector {
                            mesh: mesh.clone(),
                            source,
                        })
                    })
                    .clone();
                return client.request(req);
            }
        }
        if h2 { &self.h2 } else { &self.h1 }.request(req)
    }
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams::new()
    }
}

/// A connection's recent metrics and the configuration whose workloads labelled them.
type RecentHttp = (Option<Arc<Frontends>>, RecentMetrics);

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge) on `listener` until aborted.
pub async fn serve(
    listener: TcpListener,
    listen: Listen,
    table: watch::Receiver<Arc<Frontends>>,
    upstreams: Arc<Upstreams>,
    stats: Arc<Stats>,
    telemetry: Arc<Telemetry>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%listen.addr, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (table, upstreams, stats) = (table.clone(), upstreams.clone(), stats.clone());
        let telemetry = telemetry.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let affine = Arc::new(Affine::default());
            let recent = Arc::new(std::sync::Mutex::new(RecentHttp::default()));
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.headers_mut().insert(
                    HeaderName::from_static("x-forwarded-proto"),
                    HeaderValue::from_static(scheme),
                );
                let frontends = table.borrow().clone();
                let fe = frontends.by_listen.get(&listen).cloned();
                let (upstreams, stats) = (upstreams.clone(), stats.clone());
                let telemetry = telemetry.clone();
                // An HTTP/2 client's requests run at once: they share the node's pool.
                let affine = (req.version() <= http::Version::HTTP_11).then(|| affine.clone());
                let recent = recent.clone();
                async move {
                    let started = std::time::Instant::now();
                    let resp = handle(
                        req,
                        fe.clone(),
                        &frontends,
                        peer,
                        &upstreams,
                        affine.as_deref(),
                        &stats,
                    )
                    .await;
                    if let Some(fe) = &fe {
                        let ctx = RequestContext {
                            workloads: &frontends.workloads,
                            peer: peer.ip(),
                            service: &fe.service,
                            domain: &frontends.domain,
                            protocol: "http",
                        };
                        let mut recent = recent.lock().unwrap_or_else(|e| e.into_inner());
                        // Labels name workloads: a new configuration starts afresh.
                        if !recent
                            .0
                            .as_ref()
                            .is_some_and(|f| Arc::ptr_eq(f, &frontends))
                        {
                            recent.1.clear();
                            recent.0 = Some(frontends.clone());
                        }
                        telemetry.record_http(&ctx, &resp, started.elapsed(), &mut recent.1);
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                    else {
                        return;
                    };
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                }
                None => {
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                }
            }
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    fe: Option<Arc<Frontend>>,
    frontends: &Frontends,
    peer: SocketAddr,
    upstreams: &Upstreams,
    affine: Option<&Affine>,
    stats: &Stats,
) -> Response<Body> {
    let Some(fe) = fe else {
        return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no_route", "no route");
    };
    let Some(routes) = fe.routes.clone() else {
        return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no_route", "no route");
    };
    let mut req = req;
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let info = RequestInfo {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query(),
        authority: &authority,
        headers: req.headers(),
        port: fe.service_port,
    };
    let Some((route, matched)) = routes
        .iter()
        .find_map(|r| r.accepts(&info).map(|m| (r, m.cloned())))
    else {
        return local_reply(StatusCode::NOT_FOUND, "route_not_found", "");
    };
    if let Some(reply) = inject_fault(route).await {
        return reply;
    }
    let dest = match &route.action {
        Action::Direct(status, body) => {
            let mut r = Response::new(full(body.clone()));
            *r.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            return r;
        }
        Action::Redirect(red) => return redirect(red, req.uri(), &authority, matched.as_ref()),
        Action::Forward(_) => match route.pick() {
            Some(d) => d,
            None => {
                return local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_cluster_found",
                    "no destination",
                )
            }
        },
    };
    let cluster = match &dest.cluster {
        Ok(c) => c.clone(),
        Err(why) => {
            stats.refused();
            return local_reply(dest.unresolved, "no_cluster_found", why);
        }
    };
    // An Upgrade (WebSocket and the like) becomes a byte stream after the 101.
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .filter(|_| req.version() == http::Version::HTTP_11);
    let mut client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let Some(path) = rewritten_path(&parts.uri, route.rewrite.as_ref(), matched.as_ref()) else {
        return local_reply(StatusCode::BAD_REQUEST, "bad_request", "bad request path");
    };
    let content_length = parts.headers.get(header::CONTENT_LENGTH).cloned();
    let mut headers = parts.headers;
    forwarded_headers(&mut headers, &parts.uri, peer);
    if let Some(a) = route.rewrite.as_ref().and_then(|r| r.authority.as_deref()) {
        if let Ok(v) = HeaderValue::from_str(a) {
            headers.insert(header::HOST, v);
        }
    }
    if let Some(u) = &upgrade {
        headers.insert(header::UPGRADE, u.clone());
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    apply_header_ops(
        &mut headers,
        route.headers.as_ref().and_then(|h| h.request.as_ref()),
    );
    apply_header_ops(
        &mut headers,
        dest.headers.as_ref().and_then(|h| h.request.as_ref()),
    );
    // A small body is kept so the request can be sent again (retries, mirroring); a
    // large or unsized one is streamed once.
    let body = match Buffered::take(body, content_length.as_ref()).await {
        Ok(b) => b,
        Err(_) => return local_reply(StatusCode::BAD_REQUEST, "downstream_reset", "request body"),
    };
    if let (Some((Ok(mirror), pct)), Some(bytes)) = (&route.mirror, body.bytes()) {
        if chance(*pct) {
            mirror_request(
                upstreams,
                mirror.clone(),
                &parts.method,
                path.as_str(),
                &headers,
                bytes,
                (frontends, peer.ip()),
            );
        }
    }
    let hash = hash_input(&cluster, &headers, parts.uri.query(), peer);
    let attempt = Attempt {
        upstreams,
        affine,
        frontends,
        peer,
        port: fe.service_port,
        cluster: &cluster,
        method: &parts.method,
        path: &path,
        headers: &headers,
        retry: &route.retry,
        hash,
    };
    let result = match route.timeout {
        Some(t) => match tokio::time::timeout(t, attempt.run(body)).await {
            Ok(r) => r,
            Err(_) => Err(local_reply(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_request_timeout",
                "upstream request timeout",
            )),
        },
        None => attempt.run(body).await,
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(reply) => {
            stats.refused();
            return reply;
        }
    };
    stats.opened();
    stats.closed(0, 0);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = client_upgrade.take() {
            let upstream_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(splice_upgraded(client_side, upstream_side));
            return resp.map(|b| b.boxed());
        }
    }
    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers);
    apply_header_ops(
        &mut rparts.headers,
        route.headers.as_ref().and_then(|h| h.response.as_ref()),
    );
    apply_header_ops(
        &mut rparts.headers,
        dest.headers.as_ref().and_then(|h| h.response.as_ref()),
    );
    Response::from_parts(rparts, rbody.boxed())
}

/// A request body as the proxy holds it.
enum Buffered {
    Empty,
    Bytes(Bytes),
    Stream(Option<Incoming>),
}

/// Bodies up to this size are kept for retries (Envoy's per-request buffer is similar).
const RETRY_BUFFER: u64 = 64 * 1024;

impl Buffered {
    async fn take(
        body: Incoming,
        content_length: Option<&HeaderValue>,
    ) -> Result<Buffered, hyper::Error> {
        if hyper::body::Body::is_end_stream(&body) {
            return Ok(Buffered::Empty);
        }
        let len = content_length
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match len {
            Some(n) if n <= RETRY_BUFFER => Ok(Buffered::Bytes(body.collect().await?.to_bytes())),
            _ => Ok(Buffered::Stream(Some(body))),
        }
    }

    fn bytes(&self) -> Option<Bytes> {
        match self {
            Buffered::Empty => Some(Bytes::new()),
            Buffered::Bytes(b) => Some(b.clone()),
            Buffered::Stream(_) => None,
        }
    }

    /// The body for one attempt; None once a streamed body has been sent.
    fn for_attempt(&mut self) -> Option<Body> {
        match self {
            Buffered::Empty => Some(Empty::new().map_err(|never| match never {}).boxed()),
            Buffered::Bytes(b) => Some(full_bytes(b.clone())),
            Buffered::Stream(s) => s.take().map(|b| b.boxed()),
        }
    }
}

/// One request's attempts at a cluster.
struct Attempt<'a> {
    upstreams: &'a Upstreams,
    /// The client connection's own upstream connections (HTTP/1.1 clients).
    affine: Option<&'a Affine>,
    frontends: &'a Frontends,
    peer: SocketAddr,
    port: u16,
    cluster: &'a Arc<Cluster>,
    method: &'a http::Method,
    path: &'a PathAndQuery,
    headers: &'a HeaderMap,
    retry: &'a RetryPolicy,
    hash: Option<u64>,
}

impl Attempt<'_> {
    async fn run(&self, mut body: Buffered) -> Result<Response<Incoming>, Response<Body>> {
        let c = self.cluster;
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut last = local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_upstream",
            "no healthy upstream",
        );
        for n in 0..=self.retry.attempts {
            if let Some(max) = c.policy.max_requests {
                if c.in_flight.load(Ordering::Relaxed) >= max {
                    return Err(local_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "upstream_overflow",
                        "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                    ));
                }
            }
            let Some(i) = c.choose(&self.upstreams.health, &tried, self.hash) else {
                return Err(last);
            };
            let addr = c.endpoints[i].addr;
            tried.push(addr);
            let host = self
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            let parts = HttpParts {
                method: self.method.as_str(),
                path: self.path.path(),
                host,
                headers: self.headers,
            };
            if let Decision::Deny(why) =
                self.frontends
                    .authorize(self.peer.ip(), addr.ip(), self.port, Some(parts))
            {
                tracing::debug!(cluster = %c.name, endpoint = %addr, client = %self.peer, policy = %why, "request denied");
                return Err(local_reply(
                    StatusCode::FORBIDDEN,
                    "rbac_access_denied",
                    "RBAC: access denied",
                ));
            }
            let netpol = &self.frontends.netpol;
            if !netpol.allows(self.peer.ip(), addr.ip(), addr.port(), Protocol::Tcp) {
                tracing::debug!(cluster = %c.name, endpoint = %addr, client = %self.peer, "request refused by NetworkPolicy");
                return Err(local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "network_policy",
                    "connection refused by network policy",
                ));
            }
            let Some(attempt_body) = body.for_attempt() else {
                return Err(last);
            };
            // Another node's pod is reached through its node's tunnel, in the node's pool.
            let remote = self
                .frontends
                .mesh
                .as_ref()
                .is_some_and(|m| m.remote(self.frontends, addr.ip()).is_some());
            // The node's pool takes an absolute URI; a connection of our own, the path.
            let own = self
                .affine
                .filter(|_| c.app != AppProtocol::Http2 && !remote);
            let uri = match own {
                Some(_) => Uri::from(self.path.clone()),
                _ => match Uri::builder()
                    .scheme("http")
                    .authority(addr.to_string())
                    .path_and_query(self.path.clone())
                    .build()
                {
                    Ok(u) => u,
                    Err(_) => {
                        return Err(local_reply(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            "bad request path",
                        ))
                    }
                },
            };
            let mut up = Request::new(attempt_body);
            *up.method_mut() = self.method.clone();
            *up.uri_mut() = uri;
            *up.headers_mut() = self.headers.clone();
            if own.is_some() && !self.headers.contains_key(header::HOST) {
                // What the pooled client would have set from the URI.
                if let Ok(v) = HeaderValue::from_str(&addr.to_string()) {
                    up.headers_mut().insert(header::HOST, v);
                }
            }
            if n > 0 {
                up.headers_mut().insert(
                    HeaderName::from_static("x-envoy-attempt-count"),
                    HeaderValue::from(n + 1),
                );
            }
            c.started(i);
            c.in_flight.fetch_add(1, Ordering::Relaxed);
            let sent = async {
                match own {
                    Some(affine) => affine.send(addr, up).await,
                    None => self
                        .upstreams
                        .send(c.app, self.frontends, self.peer.ip(), addr, up)
                        .await
                        .map_err(upstream::Error::Pool),
                }
            };
            let result = match self.retry.per_try_timeout {
                Some(t) => tokio::time::timeout(t, sent).await.map_err(|_| ()),
                None => Ok(sent.await),
            };
            c.finished(i);
            c.in_flight.fetch_sub(1, Ordering::Relaxed);
            let more = n < self.retry.attempts && !matches!(body, Buffered::Stream(None));
            match result {
                Ok(Ok(mut resp)) => {
                    resp.extensions_mut().insert(ServedBy(addr.ip(), c.clone()));
                    if remote {
                        resp.extensions_mut().insert(Tunneled);
                    }
                    let status = resp.status().as_u16();
                    self.judge(
                        addr,
                        match status {
                            502..=504 => Outcome::GatewayError,
                            500..=599 => Outcome::ServerError,
                            _ => Outcome::Success,
                        },
                    );
                    if more && self.retry.retries(Some(status), true) {
                        tracing::debug!(cluster = %c.name, endpoint = %addr, status, "retrying");
                        continue;
                    }
                    return Ok(resp);
                }
                Ok(Err(e)) => {
                    let connected = !e.is_connect();
                    self.judge(addr, Outcome::GatewayError);
                    let why = error_chain(&e);
                    tracing::debug!(cluster = %c.name, endpoint = %addr, error = %why, "upstream request failed");
                    last = local_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        if connected { "upstream_reset" } else { "upstream_connect_failure" },
                        &format!("upstream connect error or disconnect/reset before headers. reset reason: {why}"),
                    );
                    if !(more && self.retry.retries(None, connected)) {
                        return Err(last);
                    }
                }
                Err(()) => {
                    self.judge(addr, Outcome::GatewayError);
                    last = local_reply(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream_request_timeout",
                        "upstream request timeout",
                    );
                    if !(more
                        && (self.retry.on_5xx
                            || self.retry.on_gateway_error
                            || self.retry.on_reset))
                    {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn judge(&self, addr: SocketAddr, outcome: Outcome) {
        if let Some(settings) = &self.cluster.policy.outlier {
            self.upstreams.health.record(
                &self.cluster.name,
                self.cluster.endpoints.len(),
                addr,
                outcome,
                settings,
            );
        }
    }
}

/// Delays or aborts a share of requests, as the route's fault asks.
async fn inject_fault(route: &Route) -> Option<Response<Body>> {
    let fault = route.fault.as_ref()?;
    if let Some(d) = &fault.delay {
        let pct = d
            .percentage
            .as_ref()
            .map(|p| p.value)
            .or(d.percent)
            .unwrap_or(100.0);
        if let Some(t) = d
            .fixed_delay
            .as_deref()
            .and_then(crate::mesh::config::parse_duration)
        {
            if chance(pct) {
                tokio::time::sleep(t).await;
            }
        }
    }
    if let Some(a) = &fault.abort {
        let pct = a.percentage.as_ref().map(|p| p.value).unwrap_or(100.0);
        if let Some(status) = a.http_status.and_then(|s| StatusCode::from_u16(s).ok()) {
            if chance(pct) {
                return Some(local_reply(status, "fault_injected", "fault filter abort"));
            }
        }
    }
    None
}

fn redirect(
    r: &crate::mesh::config::Redirect,
    uri: &Uri,
    authority: &str,
    matched: Option<&crate::mesh::routing::Match>,
) -> Response<Body> {
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let host = r.authority.as_deref().unwrap_or(authority);
    let host = match r.port {
        // The scheme's own port is left out, as Envoy does.
        Some(p) if (scheme, p) == ("http", 80) || (scheme, p) == ("https", 443) => {
            host.split(':').next().unwrap_or(host).to_string()
        }
        Some(p) => format!("{}:{p}", host.split(':').next().unwrap_or(host)),
        None => host.to_string(),
    };
    let prefix_rewrite = crate::mesh::config::Rewrite {
        uri: r.uri.clone(),
        authority: None,
    };
    let path = if r.replace_prefix {
        rewritten_path(uri, Some(&prefix_rewrite), matched)
            .map(|p| p.to_string())
            .unwrap_or_else(|| {
                uri.path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "/".into())
            })
    } else {
        r.uri.clone().unwrap_or_else(|| {
            uri.path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "/".into())
        })
    };
    let mut resp = Response::new(full(String::new()));
    *resp.status_mut() = StatusCode::from_u16(r.redirect_code.unwrap_or(301))
        .unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&format!("{scheme}://{host}{path}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The path sent upstream: a `rewrite.uri` replaces the matched prefix (or the whole
/// path when the match was not a prefix); the query is kept.
fn rewritten_path(
    uri: &Uri,
    rewrite: Option<&crate::mesh::config::Rewrite>,
    matched: Option<&crate::mesh::routing::Match>,
) -> Option<PathAndQuery> {
    let Some(new) = rewrite.and_then(|r| r.uri.as_deref()) else {
        return Some(match uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => pq.clone(),
            Some(pq) => PathAndQuery::try_from(format!("/{}", pq.as_str()).as_str()).ok()?,
            None => PathAndQuery::from_static("/"),
        });
    };
    let path = uri.path();
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let rest = matched
        .and_then(|m| m.uri_prefix.as_deref())
        .and_then(|p| path.strip_prefix(p))
        .unwrap_or("");
    let mut joined = format!("{new}{rest}");
    if joined.is_empty() {
        joined.push('/');
    }
    PathAndQuery::try_from(format!("{joined}{query}")).ok()
}

/// Sends a copy of the request to the mirror cluster and forgets it, as Envoy's shadowing
/// does (its Host gets a `-shadow` suffix).
fn mirror_request(
    upstreams: &Upstreams,
    cluster: Arc<Cluster>,
    method: &http::Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
    (frontends, peer): (&Frontends, IpAddr),
) {
    let Some(i) = cluster.choose(&upstreams.health, &[], None) else {
        return;
    };
    let to = cluster.endpoints[i].addr;
    if !frontends
        .netpol
        .allows(peer, to.ip(), to.port(), Protocol::Tcp)
    {
        // NetworkPolicy: the copy goes nowhere the client may not go.
        return;
    }
    let Ok(uri) = Uri::try_from(format!("http://{}{path}", cluster.endpoints[i].addr)) else {
        return;
    };
    let mut req = Request::new(full_bytes(body));
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers.clone();
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        let shadow = match host.split_once(':') {
            Some((h, p)) => format!("{h}-shadow:{p}"),
            None => format!("{host}-shadow"),
        };
        if let Ok(v) = HeaderValue::from_str(&shadow) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let sent = upstreams.send(cluster.app, frontends, peer, cluster.endpoints[i].addr, req);
    tokio::spawn(async move {
        if let Ok(resp) = sent.await {
            let _ = resp.into_body().collect().await;
        }
    });
}

/// The consistent-hash input of a request, when the cluster hashes.
fn hash_input(
    c: &Cluster,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: SocketAddr,
) -> Option<u64> {
    let key: String = match c.policy.hash.as_ref()? {
        HashOn::Header(h) => headers.get(h.as_str())?.to_str().ok()?.to_string(),
        HashOn::Query(q) => crate::mesh::routing::query_param(query, q)?,
        HashOn::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| v.to_string())
            })?,
        HashOn::SourceIp => peer.ip().to_string(),
    };
    Some(key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    }))
}

/// Copies bytes both ways between an upgraded client connection and its endpoint.
async fn splice_upgraded(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
        return;
    };
    let (mut c, mut u) = (TokioIo::new(client), TokioIo::new(upstream));
    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
}

/// The request headers sent upstream: hop-by-hop ones removed, Host kept (HTTP/2 carries
/// it as :authority), the client recorded in X-Forwarded-For.
fn forwarded_headers(h: &mut HeaderMap, uri: &Uri, peer: SocketAddr) {
    strip_hop_by_hop(h);
    if !h.contains_key(header::HOST) {
        if let Some(v) = uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            h.insert(header::HOST, v);
        }
    }
    let xff = match h.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.entry(HeaderName::from_static("x-forwarded-proto"))
        .or_insert(HeaderValue::from_static("http"));
    // As Envoy does for Istio: every request carries an id the hops' logs can share; one
    // that came with the request is kept. Trace context (traceparent, tracestate, b3) is
    // passed along untouched: the proxy records no spans, so it must not claim a span
    // (a new parent-id would point at one no collector ever receives) nor start a trace
    // (an unsampled traceparent would stop the application's own tracer from sampling).
    h.entry(X_REQUEST_ID).or_insert_with(request_id);
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A random (version 4) UUID, as Envoy's x-request-id.
fn request_id() -> HeaderValue {
    use crate::mesh::routing::random_u64;
    let (hi, lo) = (random_u64(), random_u64());
    let hi = (hi & !0xf000) | 0x4000; // version 4
    let lo = (lo & !(0xc << 60)) | (0x8 << 60); // RFC 4122 variant
    let s = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    );
    HeaderValue::from_str(&s).expect("hex and dashes")
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHORIZATION,
    ] {
        h.remove(n);
    }
    h.remove(KEEP_ALIVE);
    h.remove(PROXY_CONNECTION);
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn full(body: String) -> Body {
    full_bytes(Bytes::from(body))
}

fn full_bytes(body: Bytes) -> Body {
    Full::new(body).map_err(|never| match never {}).boxed()
}

/// A reply made by the proxy itself.
pub fn local_reply(status: StatusCode, reason: &'static str, body: &str) -> Response<Body> {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r.headers_mut().insert(
        HeaderName::from_static(REASON_HEADER),
        HeaderValue::from_static(reason),
    );
    r
}
