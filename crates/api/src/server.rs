//! The API server's shared state and its single entry point: an axum `Router` whose fallback
//! parses every path the Kubernetes way and hands the request to discovery, OpenAPI or the
//! generic resource handlers. The same router serves sockets and the in-process client.

use crate::alloc::Ranges;
use crate::body::{self, json_response};
use crate::discovery;
use crate::error::{ApiError, ApiResult};
use crate::handlers;
use crate::openapi::OpenApi;
use crate::registry::Registry;
use crate::request::{parse_path, Query};
use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use corral_store::Store;
use futures::FutureExt;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Who is calling: set by the transport (client certificate, token) or by the in-process
/// client's layer. Requests without one are refused with 401.
#[derive(Clone, Debug)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

pub struct Config {
    pub ranges: Ranges,
    /// Address clients reach the server at, for the `kubernetes` Endpoints.
    pub advertise: std::net::SocketAddr,
    /// TLS client settings for reaching node agents (pods/log, exec, attach, portforward):
    /// the cluster CA as roots and the API server's client certificate.
    pub kubelet_client: Option<Arc<rustls::ClientConfig>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ranges: Ranges::default(),
            advertise: "127.0.0.1:6443".parse().unwrap(),
            kubelet_client: None,
        }
    }
}

pub struct State {
    pub store: Store,
    pub registry: Registry,
    pub openapi: OpenApi,
    pub config: Config,
    pub ready: AtomicBool,
    pub metrics: crate::metrics::Metrics,
    pub events: crate::event_cache::EventCache,
}

pub type Shared = Arc<State>;

impl State {
    pub fn new(store: Store, config: Config) -> Shared {
        let registry = Registry::new();
        let openapi = OpenApi::new(registry.clone());
        Arc::new(State {
            store,
            registry,
            openapi,
            config,
            ready: AtomicBool::new(false),
            metrics: crate::metrics::Metrics::new(),
            events: Default::default(),
        })
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }
}

pub fn router(state: Shared) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

async fn dispatch(AxState(st): AxState<Shared>, req: Request<Body>) -> Response {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/healthz" | "/livez" => return text(200, "ok"),
        "/readyz" => {
            return if st.ready.load(Ordering::SeqCst) {
                text(200, "ok")
            } else {
                text(503, "not ready")
            }
        }
        "/version" => return json_response(200, &version(), &[]),
        _ => {}
    }
    // Read the whole body before answering, even an early error: a response sent with
    // the body unread makes the server drop a keep-alive connection the client reuses.
    let req = {
        let (parts, body) = req.into_parts();
        match body::read_body(body).await {
            Ok(bytes) => Request::from_parts(parts, Body::from(bytes)),
            Err(e) => {
                // The rest of an oversized body is not read, so this connection cannot be
                // reused: say so, as Go's server does.
                let mut r = e.into_response();
                if parts.version <= axum::http::Version::HTTP_11 {
                    r.headers_mut().insert(
                        header::CONNECTION,
                        header::HeaderValue::from_static("close"),
                    );
                }
                return r;
            }
        }
    };
    if req.extensions().get::<Identity>().is_none() {
        return ApiError::unauthorized().into_response();
    }
    // A bug must cost one request a 500, never the connection or the server.
    if path == "/metrics" {
        let stats = st.store.stats();
        st.metrics.store_commits.set(stats.commits);
        st.metrics.store_writes.set(stats.writes);
        st.metrics.watchers.set(stats.watchers as i64);
        st.metrics.store_revision.set(st.store.current_revision());
        return (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            st.metrics.encode(),
        )
            .into_response();
    }
    let started = std::time::Instant::now();
    let (verb, resource) = verb_and_resource(&req);
    let method = req.method().clone();
    let gzip_ok = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let resp = match std::panic::AssertUnwindSafe(route(&st, req, &path))
        .catch_unwind()
        .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => e.into_response(),
        Err(_) => {
            tracing::error!(%method, %path, "request handler panicked");
            ApiError::internal("internal error while handling the request").into_response()
        }
    };
    st.metrics
        .requests
        .get_or_create(&crate::metrics::RequestLabels {
            verb: verb.to_string(),
            resource,
            code: resp.status().as_u16(),
        })
        .inc();
    st.metrics
        .duration
        .get_or_create(&crate::metrics::VerbLabels {
            verb: verb.to_string(),
        })
        .observe(started.elapsed().as_secs_f64());
    if gzip_ok {
        compress(resp).await
    } else {
        resp
    }
}

/// The Kubernetes verb and resource of a request, for metrics.
fn verb_and_resource(req: &Request<Body>) -> (&'static str, String) {
    let t = parse_path(req.uri().path()).unwrap_or_default();
    let named = t.name.is_some();
    let watch = req
        .uri()
        .query()
        .is_some_and(|q| q.contains("watch=true") || q.contains("watch=1"));
    let verb = match (req.method().as_str(), named) {
        ("GET", true) => "GET",
        ("GET", false) if watch => "WATCH",
        ("GET", false) => "LIST",
        ("POST", _) => "POST",
        ("PUT", _) => "PUT",
        ("PATCH", _) => "PATCH",
        ("DELETE", true) => "DELETE",
        ("DELETE", false) => "DELETECOLLECTION",
        _ => "OTHER",
    };
    let resource = match (t.resource, t.subresource) {
        (Some(r), Some(s)) => format!("{r}/{s}"),
        (Some(r), None) => r,
        _ => String::new(),
    };
    (verb, resource)
}

/// Marks a streamed response that may be gzipped as it goes (a big list); other streams
/// (watch) pass through untouched, as upstream.
#[derive(Clone, Copy, Debug)]
pub struct CompressibleStream;

/// Like upstream, gzip complete responses over 128 KiB for clients that accept it (big
/// lists), and streamed lists as they are written.
async fn compress(resp: Response) -> Response {
    use axum::body::HttpBody;
    const MIN: u64 = 128 * 1024;
    if resp.headers().contains_key(header::CONTENT_ENCODING) {
        return resp;
    }
    if resp.extensions().get::<CompressibleStream>().is_some() {
        return compress_stream(resp);
    }
    let big = resp.body().size_hint().exact().is_some_and(|n| n >= MIN);
    if !big {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::internal("failed to read response body").into_response();
    };
    let compressed = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes).and_then(|_| enc.finish())
    })
    .await;
    match compressed {
        Ok(Ok(gz)) => {
            parts.headers.insert(
                header::CONTENT_ENCODING,
                header::HeaderValue::from_static("gzip"),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(gz))
        }
        _ => ApiError::internal("failed to compress response").into_response(),
    }
}

/// Gzips a streamed body chunk by chunk: what the encoder has produced goes out once it
/// holds 64 KiB, the rest at the end; an error in the source cuts the stream.
fn compress_stream(resp: Response) -> Response {
    use futures::StreamExt;
    use std::io::Write;
    let (mut parts, body) = resp.into_parts();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        let mut source = body.into_data_stream();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        while let Some(chunk) = source.next().await {
            let written = chunk
                .map_err(std::io::Error::other)
                .and_then(|c| enc.write_all(&c));
            if let Err(e) = written {
                let _ = tx.send(Err(e)).await;
                return;
            }
            if enc.get_ref().len() >= 64 * 1024 {
                let out = std::mem::take(enc.get_mut());
                if tx.send(Ok(out.into())).await.is_err() {
                    return;
                }
            }
        }
        let _ = match enc.finish() {
            Ok(rest) => tx.send(Ok(rest.into())).await,
            Err(e) => tx.send(Err(e)).await,
        };
    });
    parts.headers.insert(
        header::CONTENT_ENCODING,
        header::HeaderValue::from_static("gzip"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(
        parts,
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
}

fn text(code: u16, s: &'static str) -> Response {
    (
        StatusCode::from_u16(code).unwrap(),
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        s,
    )
        .into_response()
}

pub fn version() -> serde_json::Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": format!("v1.33.0+corral-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "corral",
        "gitTreeState": "clean",
        "buildDate": "2026-11-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }),
    })
}

async fn route(st: &Shared, req: Request<Body>, path: &str) -> ApiResult<Response> {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let get = req.method() == Method::GET;
    match path.trim_end_matches('/') {
        "/api" if get => {
            return Ok(match discovery::wants_aggregated(&accept) {
                Some(v) => aggregated(discovery::aggregated(&st.registry, true, v), v),
                None => json_response(200, &discovery::api_versions(), &[]),
            })
        }
        "/apis" if get => {
            return Ok(match discovery::wants_aggregated(&accept) {
                Some(v) => aggregated(discovery::aggregated(&st.registry, false, v), v),
                None => json_response(200, &discovery::api_group_list(&st.registry), &[]),
            })
        }
        "/openapi/v3" if get => return Ok(json_response(200, &st.openapi.index(), &[])),
        "/openapi/v2" if get => {
            // kubectl asks for protobuf here and copes with a 404; JSON readers get JSON.
            if accept.contains("protobuf")
                || !(accept.is_empty() || accept.contains("json") || accept.contains("*/*"))
            {
                return Err(ApiError::path_not_found());
            }
            return Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                st.openapi.v2().as_ref().clone(),
            )
                .into_response());
        }
        _ => {}
    }
    if let Some(gv) = path.strip_prefix("/openapi/v3/") {
        let doc = st.openapi.document(gv.trim_end_matches('/'));
        return match doc {
            Some(bytes) => Ok((
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CACHE_CONTROL, "public, immutable"),
                ],
                bytes.as_ref().clone(),
            )
                .into_response()),
            None => Err(ApiError::path_not_found()),
        };
    }
    // `/apis/<group>`: the group's versions.
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segs.len() == 2 && segs[0] == "apis" && get {
        return discovery::api_group_doc(&st.registry, segs[1])
            .map(|d| json_response(200, &d, &[]))
            .ok_or_else(ApiError::path_not_found);
    }
    let target = parse_path(path)?;
    let Some(resource) = target.resource.clone() else {
        if !get {
            return Err(ApiError::method_not_allowed("method not allowed"));
        }
        return discovery::resource_list(&st.registry, &target.group, &target.version)
            .map(|d| json_response(200, &d, &[]))
            .ok_or_else(ApiError::path_not_found);
    };
    let Some(res) = st
        .registry
        .lookup(&target.group, &target.version, &resource)
    else {
        return Err(ApiError::path_not_found());
    };
    if !res.namespaced && target.namespace.is_some() {
        return Err(ApiError::path_not_found());
    }
    let query = Query::parse(req.uri().query());
    handlers::resource(st, &res, &target, query, req).await
}

fn aggregated(doc: serde_json::Value, version: &str) -> Response {
    let ct = if version == "v2beta1" {
        discovery::AGGREGATED_V2BETA1
    } else {
        discovery::AGGREGATED_V2
    };
    let mut r = json_response(200, &doc, &[]);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
    r
}

pub use body::MAX_BODY;
