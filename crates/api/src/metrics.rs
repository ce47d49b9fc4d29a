//! The API server's Prometheus metrics, named as upstream names them where an equivalent
//! exists (`apiserver_request_total`, `apiserver_request_duration_seconds`), served at
//! `/metrics` to authenticated callers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<VerbLabels, Histogram>,
    pub watchers: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub store_commits: Gauge<u64, AtomicU64>,
    pub store_writes: Gauge<u64, AtomicU64>,
    pub store_revision: Gauge<i64, std::sync::atomic::AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "apiserver_request",
            "Requests by verb, resource and HTTP code",
            requests.clone(),
        );
        let duration = Family::<VerbLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ])
        });
        registry.register(
            "apiserver_request_duration_seconds",
            "Time to answer a request (until headers, for watches)",
            duration.clone(),
        );
        let watchers = Gauge::default();
        registry.register("apiserver_watchers", "Open watch streams", watchers.clone());
        let store_commits = Gauge::default();
        registry.register(
            "corral_store_commits",
            "Store commits (fsyncs) since start",
            store_commits.clone(),
        );
        let store_writes = Gauge::default();
        registry.register(
            "corral_store_writes",
            "Store writes since start (several share one commit)",
            store_writes.clone(),
        );
        let store_revision = Gauge::default();
        registry.register(
            "corral_store_revision",
            "Current store revision",
            store_revision.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            watchers,
            store_commits,
            store_writes,
            store_revision,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
