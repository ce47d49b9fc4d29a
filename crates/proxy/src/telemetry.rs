//! Istio's standard metrics, as the node proxy sees traffic: `istio_requests_total` and
//! `istio_request_duration_milliseconds` for HTTP, `istio_tcp_*` for TCP, labelled with
//! the source and destination workloads, the destination Service and the response code
//! and flags (Envoy's: UH no healthy upstream, NC no cluster, UF connect failure, ...).
//! Served in Prometheus text at `/stats/prometheus` (Istio's path) and `/metrics`.

use crate::view::ServiceKey;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// A pod as telemetry names it: Istio's workload (the Deployment or other owner), its
/// namespace and its app/version labels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
}

/// Workloads by pod address.
pub type Workloads = HashMap<IpAddr, Arc<Workload>>;

/// The endpoint that answered a request and the Service it belongs to (a response
/// extension telemetry reads: behind an Ingress the Service varies per route).
#[derive(Clone, Debug)]
pub struct ServedBy(pub IpAddr, pub Arc<crate::mesh::routing::Cluster>);

/// A response extension: the endpoint was reached through another node's mutual-TLS
/// tunnel (`connection_security_policy="mutual_tls"`).
#[derive(Clone, Copy, Debug)]
pub struct Tunneled;

/// Who asked whom, for one request's labels.
pub struct RequestContext<'a> {
    pub workloads: &'a Workloads,
    pub peer: IpAddr,
    pub service: &'a ServiceKey,
    pub domain: &'a str,
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Labels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_app: String,
    pub source_version: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: &'static str,
    pub response_code: String,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

impl Labels {
    pub fn new(
        source: Option<&Workload>,
        destination: Option<&Workload>,
        service: &ServiceKey,
        domain: &str,
        protocol: &'static str,
    ) -> Labels {
        let unknown = || "unknown".to_string();
        let field = |w: Option<&Workload>, f: fn(&Workload) -> &String| {
            w.map(|w| f(w).clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(unknown)
        };
        Labels {
            reporter: "destination",
            source_workload: field(source, |w| &w.name),
            source_workload_namespace: field(source, |w| &w.namespace),
            source_app: field(source, |w| &w.app),
            source_version: field(source, |w| &w.version),
            destination_workload: field(destination, |w| &w.name),
            destination_workload_namespace: field(destination, |w| &w.namespace),
            destination_app: field(destination, |w| &w.app),
            destination_version: field(destination, |w| &w.version),
            destination_service: format!("{}.{}.svc.{domain}", service.name, service.namespace),
            destination_service_name: service.name.clone(),
            destination_service_namespace: service.namespace.clone(),
            request_protocol: protocol,
            response_code: "0".into(),
            response_flags: "-",
            connection_security_policy: "none",
        }
    }
}

/// Envoy's response flag for a reply the proxy made itself (its `x-corral-reason`).
pub fn response_flag(reason: &str) -> &'static str {
    match reason {
        "no_healthy_upstream" => "UH",
        "no_cluster_found" => "NC",
        "upstream_connect_failure" => "UF",
        "upstream_overflow" => "UO",
        "fault_injected" => "FI",
        "upstream_request_timeout" => "UT",
        "route_not_found" => "NR",
        "upstream_reset" => "UR",
        "downstream_reset" => "DR",
        _ => "-",
    }
}

/// The metrics of the label sets one connection used last (see [`Telemetry::record_http`]).
#[derive(Default)]
pub struct RecentMetrics {
    entries: Vec<Recent>,
}

impl RecentMetrics {
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// A connection rarely sees more label sets than this (endpoints × response codes).
const RECENT_MAX: usize = 8;

struct Recent {
    peer: IpAddr,
    endpoint: Option<IpAddr>,
    service: ServiceKey,
    code: u16,
    flags: &'static str,
    tunneled: bool,
    requests: Counter,
    duration: Histogram,
}

pub struct Telemetry {
    registry: Registry,
    pub requests: Family<Labels, Counter>,
    pub duration: Family<Labels, Histogram>,
    pub tcp_opened: Family<Labels, Counter>,
    pub tcp_closed: Family<Labels, Counter>,
    pub tcp_sent: Family<Labels, Counter>,
    pub tcp_received: Family<Labels, Counter>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        // prometheus-client adds `_total` to counters.
        registry.register(
            "istio_requests",
            "Requests handled by the mesh",
            requests.clone(),
        );
        let duration = Family::<Labels, Histogram>::new_with_constructor(|| {
            // Istio's default buckets, in milliseconds.
            Histogram::new([
                0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                10000.0, 30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
            ])
        });
        registry.register(
            "istio_request_duration_milliseconds",
            "Time from a request's arrival to its response headers",
            duration.clone(),
        );
        let tcp_opened = Family::<Labels, Counter>::default();
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        let tcp_closed = Family::<Labels, Counter>::default();
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        let tcp_sent = Family::<Labels, Counter>::default();
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the destination",
            tcp_sent.clone(),
        );
        let tcp_received = Family::<Labels, Counter>::default();
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the destination",
            tcp_received.clone(),
        );
        Telemetry {
            registry,
            requests,
            duration,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
        }
    }

    /// Counts one HTTP request to `service` from `peer`, answered by `resp`. `recent`
    /// keeps the metrics of the label sets a connection used, so its next requests skip
    /// making and hashing the labels; the caller clears it when the workloads change.
    pub fn record_http(
        &self,
        ctx: &RequestContext,
        resp: &http::Response<crate::http::Body>,
        elapsed: std::time::Duration,
        recent: &mut RecentMetrics,
    ) {
        let served_by = resp.extensions().get::<ServedBy>();
        let code = resp.status().as_u16();
        let flags = resp
            .headers()
            .get(crate::http::REASON_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(response_flag)
            .unwrap_or("-");
        let endpoint = served_by.map(|s| s.0);
        let tunneled = resp.extensions().get::<Tunneled>().is_some();
        let service = served_by.map(|s| &s.1.key.service).unwrap_or(ctx.service);
        let found = recent.entries.iter().position(|e| {
            e.code == code
                && e.endpoint == endpoint
                && e.flags == flags
                && e.peer == ctx.peer
                && e.service == *service
                && e.tunneled == tunneled
        });
        let i = match found {
            Some(i) => i,
            None => {
                let (requests, duration) = self.http_metrics(ctx, served_by, code, flags, tunneled);
                if recent.entries.len() >= RECENT_MAX {
                    recent.entries.remove(0);
                }
                recent.entries.push(Recent {
                    peer: ctx.peer,
                    endpoint,
                    service: service.clone(),
                    code,
                    flags,
                    tunneled,
                    requests,
                    duration,
                });
                recent.entries.len() - 1
            }
        };
        let e = &recent.entries[i];
        e.requests.inc();
        e.duration.observe(elapsed.as_secs_f64() * 1000.0);
    }

    fn http_metrics(
        &self,
        ctx: &RequestContext,
        served_by: Option<&ServedBy>,
        code: u16,
        flags: &'static str,
        tunneled: bool,
    ) -> (Counter, Histogram) {
        let mut l = Labels::new(
            ctx.workloads.get(&ctx.peer).map(|w| &**w),
            served_by
                .and_then(|s| ctx.workloads.get(&s.0))
                .map(|w| &**w),
            served_by.map(|s| &s.1.key.service).unwrap_or(ctx.service),
            ctx.domain,
            ctx.protocol,
        );
        l.response_code = code.to_string();
        l.response_flags = flags;
        if tunneled {
            l.connection_security_policy = "mutual_tls";
        }
        (
            self.requests.get_or_create_owned(&l),
            self.duration.get_or_create_owned(&l),
        )
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves the metrics on `addr` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, telemetry: Arc<Telemetry>) {
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let t = telemetry.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let t = t.clone();
                    async move {
                        let mut resp = match req.uri().path() {
                            "/stats/prometheus" | "/metrics" => {
                                hyper::Response::new(Full::new(bytes::Bytes::from(t.encode())))
                            }
                            _ => {
                                let mut r = hyper::Response::new(Full::new(
                                    bytes::Bytes::from_static(b"not found\n"),
                                ));
                                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                                r
                            }
                        };
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
                        );
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The workload of a pod, as Istio derives it: the owner of its ReplicaSet (a Deployment,
/// by the ReplicaSet name minus its template hash) or its direct owner, else the pod.
pub fn workload_name(pod: &str, owners: &[(String, String)]) -> String {
    match owners.first() {
        Some((kind, name)) if kind == "ReplicaSet" => match name.rsplit_once('-') {
            Some((deploy, hash)) if !deploy.is_empty() && hash.len() >= 5 => deploy.to_string(),
            _ => name.clone(),
        },
        Some((_, name)) => name.clone(),
        None => pod.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names() {
        let rs = |n: &str| vec![("ReplicaSet".to_string(), n.to_string())];
        assert_eq!(
            workload_name("web-c48fd5994-hs7lk", &rs("web-c48fd5994")),
            "web"
        );
        assert_eq!(
            workload_name("db-0", &[("StatefulSet".into(), "db".into())]),
            "db"
        );
        assert_eq!(workload_name("client", &[]), "client");
    }

    #[test]
    fn encodes_istio_names() {
        let t = Telemetry::new();
        let key = ServiceKey {
            namespace: "shop".into(),
            name: "web".into(),
        };
        let mut l = Labels::new(None, None, &key, "cluster.local", "http");
        l.response_code = "200".into();
        t.requests.get_or_create(&l).inc();
        let text = t.encode();
        assert!(text.contains("istio_requests_total{"), "{text}");
        assert!(text.contains("destination_service=\"web.shop.svc.cluster.local\""));
        assert!(text.contains("response_code=\"200\""));
    }
}
