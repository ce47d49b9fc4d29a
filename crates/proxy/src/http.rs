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
use crate::stats::Stats;
use crate::telemetry::{RequestContext, ServedBy, Telemetry};
use crate::view::Protocol;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
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
            health: Registry::default(),
        }
    }
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams::new()
    }
}

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
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.headers_mut().insert(
                    HeaderName::from_static("x-forwarded-proto"),
                    HeaderValue::from_static(scheme),
                );
                let frontends = table.borrow().clone();
                let fe = frontends.by_listen.get(&listen).cloned();
                let (upstreams, stats) = (upstreams.clone(), stats.clone());
                let telemetry = telemetry.clone();
                async move {
                    let started = std::time::Instant::now();
                    let resp = handle(req, fe.clone(), &frontends, peer, &upstreams, &stats).await;
                    if let Some(fe) = &fe {
                        let ctx = RequestContext {
                            workloads: &frontends.workloads,
                            peer: peer.ip(),
                            service: &fe.service,
                            domain: &frontends.domain,
                            protocol: "http",
                        };
                        telemetry.record_http(&ctx, &resp, started.elapsed());
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
    let path = rewritten_path(&parts.uri, route.rewrite.as_ref(), matched.as_ref());
    let mut headers = forwarded_headers(&parts.headers, &parts.uri, peer);
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
    let body = match Buffered::take(body, &parts.headers).await {
        Ok(b) => b,
        Err(_) => return local_reply(StatusCode::BAD_REQUEST, "downstream_reset", "request body"),
    };
    if let (Some((Ok(mirror), pct)), Some(bytes)) = (&route.mirror, body.bytes()) {
        if chance(*pct) {
            mirror_request(
                upstreams,
                mirror.clone(),
                &parts.method,
                &path,
                &headers,
                bytes,
                |to| {
                    frontends
                        .netpol
                        .allows(peer.ip(), to.ip(), to.port(), Protocol::Tcp)
                },
            );
        }
    }
    let hash = hash_input(&cluster, &headers, parts.uri.query(), peer);
    let attempt = Attempt {
        upstreams,
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
    async fn take(body: Incoming, headers: &HeaderMap) -> Result<Buffered, hyper::Error> {
        if hyper::body::Body::is_end_stream(&body) {
            return Ok(Buffered::Empty);
        }
        let len = headers
            .get(header::CONTENT_LENGTH)
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
    frontends: &'a Frontends,
    peer: SocketAddr,
    port: u16,
    cluster: &'a Cluster,
    method: &'a http::Method,
    path: &'a str,
    headers: &'a HeaderMap,
    retry: &'a RetryPolicy,
    hash: Option<u64>,
}

impl Attempt<'_> {
    async fn run(&self, mut body: Buffered) -> Result<Response<Incoming>, Response<Body>> {
        let c = self.cluster;
        let client = match c.app {
            AppProtocol::Http2 => &self.upstreams.h2,
            _ => &self.upstreams.h1,
        };
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
                path: self.path.split('?').next().unwrap_or("/"),
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
            let Ok(uri) = Uri::try_from(format!("http://{addr}{}", self.path)) else {
                return Err(local_reply(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "bad request path",
                ));
            };
            let mut up = Request::new(attempt_body);
            *up.method_mut() = self.method.clone();
            *up.uri_mut() = uri;
            *up.headers_mut() = self.headers.clone();
            if n > 0 {
                up.headers_mut().insert(
                    HeaderName::from_static("x-envoy-attempt-count"),
                    HeaderValue::from(n + 1),
                );
            }
            c.started(i);
            c.in_flight.fetch_add(1, Ordering::Relaxed);
            let sent = client.request(up);
            let result = match self.retry.per_try_timeout {
                Some(t) => tokio::time::timeout(t, sent).await.map_err(|_| ()),
                None => Ok(sent.await),
            };
            c.finished(i);
            c.in_flight.fetch_sub(1, Ordering::Relaxed);
            let more = n < self.retry.attempts && !matches!(body, Buffered::Stream(None));
            match result {
                Ok(Ok(mut resp)) => {
                    resp.extensions_mut()
                        .insert(ServedBy(addr.ip(), c.key.service.clone()));
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
) -> String {
    let path = uri.path();
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let Some(new) = rewrite.and_then(|r| r.uri.as_deref()) else {
        return format!("{path}{query}");
    };
    let rest = matched
        .and_then(|m| m.uri_prefix.as_deref())
        .and_then(|p| path.strip_prefix(p))
        .unwrap_or("");
    let mut joined = format!("{new}{rest}");
    if joined.is_empty() {
        joined.push('/');
    }
    format!("{joined}{query}")
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
    allowed: impl Fn(SocketAddr) -> bool,
) {
    let Some(i) = cluster.choose(&upstreams.health, &[], None) else {
        return;
    };
    if !allowed(cluster.endpoints[i].addr) {
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
    let client = match cluster.app {
        AppProtocol::Http2 => upstreams.h2.clone(),
        _ => upstreams.h1.clone(),
    };
    tokio::spawn(async move {
        if let Ok(resp) = client.request(req).await {
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
fn forwarded_headers(incoming: &HeaderMap, uri: &Uri, peer: SocketAddr) -> HeaderMap {
    let mut h = incoming.clone();
    strip_hop_by_hop(&mut h);
    if !h.contains_key(header::HOST) {
        if let Some(v) = uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            h.insert(header::HOST, v);
        }
    }
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    h.entry(HeaderName::from_static("x-forwarded-proto"))
        .or_insert(HeaderValue::from_static("http"));
    h
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
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
    h.remove("keep-alive");
    h.remove("proxy-connection");
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
