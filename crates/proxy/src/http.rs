//! HTTP frontends: Service ports that speak HTTP (by appProtocol or port name, as Istio
//! decides) are proxied per request rather than per connection. Each request is routed
//! with the configuration current when it arrives, so a change applies to keep-alive
//! connections at once, while requests in flight finish on what they started with.
//! Endpoints are chosen per request; a request without a body moves on to the next
//! endpoint when one refuses the connection. When nothing can answer, the reply is a 503
//! whose body and `x-corral-reason` header say why, as Envoy's response flags do.

use crate::frontends::{AppProtocol, Frontend, Frontends, Listen};
use crate::stats::Stats;
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
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// Why the proxy answered itself instead of an endpoint (the `x-corral-reason` header).
pub const REASON_HEADER: &str = "x-corral-reason";
/// How many endpoints one request may try when they refuse connections.
const ATTEMPTS: usize = 3;

/// The upstream side shared by every HTTP frontend of the node: connection pools to
/// endpoints, HTTP/1.1 and HTTP/2 (prior knowledge, for gRPC and h2c).
pub struct Upstreams {
    h1: Client<HttpConnector, Body>,
    h2: Client<HttpConnector, Body>,
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
        Upstreams { h1, h2 }
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
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let fe = table.borrow().by_listen.get(&listen).cloned();
                let (upstreams, stats) = (upstreams.clone(), stats.clone());
                async move { Ok::<_, Infallible>(handle(req, fe, peer, &upstreams, &stats).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    fe: Option<Arc<Frontend>>,
    peer: SocketAddr,
    upstreams: &Upstreams,
    stats: &Stats,
) -> Response<Body> {
    let Some(fe) = fe else {
        return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no_route", "no route");
    };
    let candidates: Vec<SocketAddr> = fe.pick(peer.ip()).iter().map(|b| b.addr).collect();
    if candidates.is_empty() {
        stats.refused();
        return local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_upstream",
            "no healthy upstream",
        );
    }
    let client = match fe.app {
        AppProtocol::Http2 => &upstreams.h2,
        _ => &upstreams.h1,
    };
    let mut req = req;
    // An Upgrade (WebSocket and the like) becomes a byte stream after the 101.
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .filter(|_| req.version() == http::Version::HTTP_11);
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    // Only a request without a body can be sent again: the body is streamed, not kept.
    let replayable = hyper::body::Body::is_end_stream(req.body());
    let (parts, body) = req.into_parts();
    let mut headers = forwarded_headers(&parts.headers, &parts.uri, peer);
    if let Some(u) = &upgrade {
        headers.insert(header::UPGRADE, u.clone());
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let mut client_upgrade = client_upgrade;
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let mut body = Some(body);
    let mut last_error = String::new();
    for backend in candidates.iter().take(ATTEMPTS) {
        let attempt_body: Body = if replayable {
            Empty::new().map_err(|never| match never {}).boxed()
        } else {
            match body.take() {
                Some(b) => b.boxed(),
                None => break,
            }
        };
        let Ok(uri) = Uri::try_from(format!("http://{backend}{path}")) else {
            return local_reply(StatusCode::BAD_REQUEST, "bad_request", "bad request path");
        };
        let mut up = Request::new(attempt_body);
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri;
        *up.headers_mut() = headers.clone();
        match client.request(up).await {
            Ok(mut resp) => {
                fe.used(peer.ip(), *backend);
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
                return Response::from_parts(rparts, rbody.boxed());
            }
            Err(e) => {
                last_error = error_chain(&e);
                tracing::debug!(service = %fe.service, %backend, error = %last_error, "upstream request failed");
                if !e.is_connect() {
                    break;
                }
            }
        }
    }
    stats.refused();
    local_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream_connect_failure",
        &format!(
            "upstream connect error or disconnect/reset before headers. reset reason: {last_error}"
        ),
    )
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

/// A reply made by the proxy itself.
pub fn local_reply(status: StatusCode, reason: &'static str, body: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r.headers_mut().insert(
        HeaderName::from_static(REASON_HEADER),
        HeaderValue::from_static(reason),
    );
    r
}
