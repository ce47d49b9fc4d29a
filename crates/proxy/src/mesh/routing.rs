//! VirtualServices and DestinationRules compiled into what an HTTP frontend runs: an
//! ordered list of routes (first match wins), each forwarding to weighted clusters (a
//! Service port, optionally narrowed to a DestinationRule subset) or answering itself
//! (redirect, direct response). A Service port with no VirtualService gets one route to
//! itself, with Istio's default retry policy.

use crate::frontends::{AppProtocol, Backend};
use crate::mesh::config::{
    self, parse_duration, DestinationRuleSpec, HeaderOps, HttpMatch, HttpRoute, StringMatch,
    TrafficPolicy,
};
use crate::mesh::outlier;
use crate::view::{ClusterView, DestinationRule, ServiceInfo, ServiceKey};
use regex::Regex;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A Service port, optionally narrowed to a subset: what Envoy calls a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterKey {
    pub service: ServiceKey,
    pub subset: Option<String>,
    pub port: u16,
    /// Only the endpoints on this node (a Service's traffic policy `Local`).
    pub node: Option<String>,
}

impl std::fmt::Display for ClusterKey {
    // Envoy's cluster name: outbound|9080|v1|reviews.default.svc.cluster.local
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "outbound|{}|{}|{}.{}.svc.cluster.local",
            self.port,
            self.subset.as_deref().unwrap_or(""),
            self.service.name,
            self.service.namespace
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lb {
    RoundRobin,
    LeastRequest,
    Random,
}

/// How a cluster's endpoints are chosen and judged.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub lb: Lb,
    /// A request property whose hash picks the endpoint (consistentHash).
    pub hash: Option<HashOn>,
    pub outlier: Option<outlier::Settings>,
    /// connectionPool limits: requests in flight to the cluster at once.
    pub max_requests: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum HashOn {
    Header(String),
    Query(String),
    Cookie(String),
    SourceIp,
}

#[derive(Debug)]
pub struct Cluster {
    pub key: ClusterKey,
    pub name: String,
    pub endpoints: Vec<Backend>,
    pub policy: Policy,
    pub app: AppProtocol,
    next: AtomicUsize,
    /// Requests in flight per endpoint (LEAST_REQUEST) and in total (connectionPool).
    active: Vec<AtomicU32>,
    pub in_flight: AtomicU32,
}

impl Cluster {
    fn new(key: ClusterKey, endpoints: Vec<Backend>, policy: Policy, app: AppProtocol) -> Self {
        Cluster {
            name: key.to_string(),
            active: endpoints.iter().map(|_| AtomicU32::new(0)).collect(),
            key,
            endpoints,
            policy,
            app,
            next: AtomicUsize::new(0),
            in_flight: AtomicU32::new(0),
        }
    }

    /// Chooses an endpoint: healthy ones only (outlier detection), avoiding `tried` when
    /// another is left, by the cluster's policy. `hash` is the consistent-hash input.
    pub fn choose(
        &self,
        health: &outlier::Registry,
        tried: &[SocketAddr],
        hash: Option<u64>,
    ) -> Option<usize> {
        let n = self.endpoints.len();
        if n > 0 && hash.is_none() && tried.is_empty() && self.policy.outlier.is_none() {
            // Every endpoint is a candidate: the common first attempt, without the lists.
            return Some(match self.policy.lb {
                Lb::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
                Lb::Random => random_below(n),
                Lb::LeastRequest => {
                    let (a, b) = (random_below(n), random_below(n));
                    if self.active[b].load(Ordering::Relaxed)
                        < self.active[a].load(Ordering::Relaxed)
                    {
                        b
                    } else {
                        a
                    }
                }
            });
        }
        let healthy: Vec<usize> = (0..n)
            .filter(|&i| {
                self.policy.outlier.is_none()
                    || !health.is_ejected(&self.name, self.endpoints[i].addr)
            })
            .collect();
        let fresh: Vec<usize> = healthy
            .iter()
            .copied()
            .filter(|&i| !tried.contains(&self.endpoints[i].addr))
            .collect();
        let pool = if fresh.is_empty() { healthy } else { fresh };
        if pool.is_empty() {
            return None;
        }
        if let Some(h) = hash {
            // Rendezvous hashing: stable while endpoints come and go.
            return pool
                .iter()
                .copied()
                .max_by_key(|&i| mix(h ^ mix(addr_bits(self.endpoints[i].addr))));
        }
        Some(match self.policy.lb {
            Lb::RoundRobin => pool[self.next.fetch_add(1, Ordering::Relaxed) % pool.len()],
            Lb::Random => pool[random_below(pool.len())],
            Lb::LeastRequest => {
                // Power of two choices, as Envoy's LEAST_REQUEST.
                let a = pool[random_below(pool.len())];
                let b = pool[random_below(pool.len())];
                if self.active[b].load(Ordering::Relaxed) < self.active[a].load(Ordering::Relaxed) {
                    b
                } else {
                    a
                }
            }
        })
    }

    pub fn started(&self, i: usize) {
        self.active[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn finished(&self, i: usize) {
        self.active[i].fetch_sub(1, Ordering::Relaxed);
    }
}

fn addr_bits(a: SocketAddr) -> u64 {
    let ip = match a.ip() {
        std::net::IpAddr::V4(v4) => u32::from(v4) as u64,
        std::net::IpAddr::V6(v6) => (u128::from(v6) as u64) ^ ((u128::from(v6) >> 64) as u64),
    };
    (ip << 16) | a.port() as u64
}

/// A 64-bit finalizer (splitmix64): spreads hash inputs evenly.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A uniformly random number below `n` (n > 0).
pub fn random_below(n: usize) -> usize {
    (((random_u64() >> 11) as u128 * n as u128) >> 53) as usize
}

/// 64 random bits from a per-thread xorshift seeded by time: cheap, and good enough for
/// load balancing and request ids (nothing here is a secret).
pub fn random_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(mix(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                ^ (&STATE as *const _ as u64),
        ) | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

pub fn chance(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && (random_below(1_000_000) as f64) < percent * 10_000.0)
}

#[derive(Clone, Debug)]
pub enum Matcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl Matcher {
    pub fn compile(m: &StringMatch, ignore_case: bool) -> Result<Matcher, String> {
        let lower = |s: &String| {
            if ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.clone()
            }
        };
        if let Some(e) = &m.exact {
            Ok(Matcher::Exact(lower(e)))
        } else if let Some(p) = &m.prefix {
            Ok(Matcher::Prefix(lower(p)))
        } else if let Some(r) = &m.regex {
            let r = if ignore_case {
                format!("(?i)^(?:{r})$")
            } else {
                format!("^(?:{r})$")
            };
            Regex::new(&r)
                .map(Matcher::Regex)
                .map_err(|e| format!("bad regex: {e}"))
        } else {
            // An empty StringMatch matches any value that is present.
            Ok(Matcher::Prefix(String::new()))
        }
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            Matcher::Exact(e) => v == e,
            Matcher::Prefix(p) => v.starts_with(p.as_str()),
            Matcher::Regex(r) => r.is_match(v),
        }
    }
}

/// What a route match looks at.
pub struct RequestInfo<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authority: &'a str,
    pub headers: &'a http::HeaderMap,
    pub port: u16,
}

#[derive(Clone, Debug, Default)]
pub struct Match {
    uri: Option<(Matcher, bool)>,
    method: Option<Matcher>,
    authority: Option<Matcher>,
    headers: Vec<(String, Matcher)>,
    without_headers: Vec<(String, Matcher)>,
    query: Vec<(String, Matcher)>,
    port: Option<u16>,
    /// The prefix a `rewrite.uri` replaces, when the uri match was a prefix.
    pub uri_prefix: Option<String>,
}

impl Match {
    /// Compiles matches made by corral itself (Ingress rules), which are valid by
    /// construction; one that is not is dropped with a log line.
    pub fn compile_all(ms: &[HttpMatch]) -> Vec<Match> {
        ms.iter()
            .filter_map(|m| {
                Match::compile(m)
                    .map_err(|e| tracing::warn!(error = %e, "dropping a route match"))
                    .ok()
            })
            .collect()
    }

    fn compile(m: &HttpMatch) -> Result<Match, String> {
        let map = |h: &BTreeMap<String, StringMatch>| -> Result<Vec<(String, Matcher)>, String> {
            h.iter()
                .map(|(k, v)| Ok((k.to_ascii_lowercase(), Matcher::compile(v, false)?)))
                .collect()
        };
        Ok(Match {
            uri: m
                .uri
                .as_ref()
                .map(|u| Matcher::compile(u, m.ignore_uri_case).map(|x| (x, m.ignore_uri_case)))
                .transpose()?,
            uri_prefix: m.uri.as_ref().and_then(|u| u.prefix.clone()),
            method: m
                .method
                .as_ref()
                .map(|x| Matcher::compile(x, false))
                .transpose()?,
            authority: m
                .authority
                .as_ref()
                .map(|x| Matcher::compile(x, false))
                .transpose()?,
            headers: map(&m.headers)?,
            without_headers: map(&m.without_headers)?,
            query: m
                .query_params
                .iter()
                .map(|(k, v)| Ok((k.clone(), Matcher::compile(v, false)?)))
                .collect::<Result<_, String>>()?,
            port: m.port,
        })
    }

    pub fn matches(&self, r: &RequestInfo) -> bool {
        if let Some((m, ignore_case)) = &self.uri {
            let ok = if *ignore_case {
                m.matches(&r.path.to_ascii_lowercase())
            } else {
                m.matches(r.path)
            };
            if !ok {
                return false;
            }
        }
        if self.method.as_ref().is_some_and(|m| !m.matches(r.method)) {
            return false;
        }
        if self
            .authority
            .as_ref()
            .is_some_and(|m| !m.matches(r.authority))
        {
            return false;
        }
        if self.port.is_some_and(|p| p != r.port) {
            return false;
        }
        let header = |name: &str| r.headers.get(name).and_then(|v| v.to_str().ok());
        if !self
            .headers
            .iter()
            .all(|(k, m)| header(k).is_some_and(|v| m.matches(v)))
        {
            return false;
        }
        if self
            .without_headers
            .iter()
            .any(|(k, m)| header(k).is_some_and(|v| m.matches(v)))
        {
            return false;
        }
        self.query
            .iter()
            .all(|(k, m)| query_param(r.query, k).is_some_and(|v| m.matches(&v)))
    }
}

pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.to_string())
    })
}

/// When a failed attempt is tried again (Istio's retryOn).
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_retriable_4xx: bool,
    pub statuses: Vec<u16>,
}

impl RetryPolicy {
    /// Istio's default for routes that set none: 2 more attempts on connection failures,
    /// refused streams and 503.
    pub fn istio_default() -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            on_5xx: false,
            on_gateway_error: false,
            on_connect_failure: true,
            on_reset: false,
            on_retriable_4xx: false,
            statuses: vec![503],
        }
    }

    fn from_spec(r: &config::Retries) -> RetryPolicy {
        let mut p = RetryPolicy {
            attempts: r.attempts.unwrap_or(2),
            per_try_timeout: r.per_try_timeout.as_deref().and_then(parse_duration),
            on_5xx: false,
            on_gateway_error: false,
            on_connect_failure: false,
            on_reset: false,
            on_retriable_4xx: false,
            statuses: vec![],
        };
        let on = r
            .retry_on
            .clone()
            .unwrap_or_else(|| "connect-failure,refused-stream,unavailable,cancelled,503".into());
        for c in on.split(',').map(str::trim) {
            match c {
                "5xx" => p.on_5xx = true,
                "gateway-error" => p.on_gateway_error = true,
                "connect-failure" | "refused-stream" => p.on_connect_failure = true,
                "reset" => p.on_reset = true,
                "retriable-4xx" => p.on_retriable_4xx = true,
                "retriable-status-codes" => {}
                other => {
                    if let Ok(code) = other.parse() {
                        p.statuses.push(code);
                    }
                }
            }
        }
        p
    }

    /// Whether an attempt that ended in `status` (None: no response) should be retried.
    pub fn retries(&self, status: Option<u16>, connected: bool) -> bool {
        match status {
            None if !connected => self.on_connect_failure || self.on_5xx || self.on_reset,
            None => self.on_5xx || self.on_reset,
            Some(s) => {
                (self.on_5xx && s >= 500)
                    || (self.on_gateway_error && matches!(s, 502..=504))
                    || (self.on_retriable_4xx && s == 409)
                    || self.statuses.contains(&s)
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct WeightedCluster {
    /// None when the destination does not exist; the reason says which part.
    pub cluster: Result<Arc<Cluster>, String>,
    pub weight: u32,
    pub headers: Option<config::Headers>,
    /// The answer when `cluster` does not exist: Istio's 503, the Gateway API's 500.
    pub unresolved: http::StatusCode,
}

#[derive(Clone, Debug)]
pub enum Action {
    Forward(Vec<WeightedCluster>),
    Redirect(config::Redirect),
    Direct(u16, String),
}

#[derive(Clone, Debug)]
pub struct Route {
    pub name: Option<String>,
    pub matches: Vec<Match>,
    pub action: Action,
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub fault: Option<config::Fault>,
    pub rewrite: Option<config::Rewrite>,
    pub headers: Option<config::Headers>,
    pub mirror: Option<(Result<Arc<Cluster>, String>, f64)>,
}

impl Route {
    /// A route sending what `matches` accepts (everything, when empty) to one cluster,
    /// with Istio's default retry policy: a Service port without a VirtualService, or an
    /// Ingress rule.
    pub fn forward_to(cluster: Result<Arc<Cluster>, String>, matches: Vec<Match>) -> Route {
        Route {
            name: None,
            matches,
            action: Action::Forward(vec![WeightedCluster {
                cluster,
                weight: 100,
                headers: None,
                unresolved: http::StatusCode::SERVICE_UNAVAILABLE,
            }]),
            timeout: None,
            retry: RetryPolicy::istio_default(),
            fault: None,
            rewrite: None,
            headers: None,
            mirror: None,
        }
    }

    /// A route that answers every request itself with `status` and `body`.
    pub fn direct(status: u16, body: String) -> Route {
        Route {
            action: Action::Direct(status, body),
            ..Route::forward_to(Err(String::new()), vec![])
        }
    }

    /// The first match that accepts the request (a route without matches takes all).
    pub fn accepts(&self, r: &RequestInfo) -> Option<Option<&Match>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches.iter().find(|m| m.matches(r)).map(Some)
    }

    /// A weighted pick among the route's destinations.
    pub fn pick(&self) -> Option<&WeightedCluster> {
        let Action::Forward(dests) = &self.action else {
            return None;
        };
        let total: u64 = dests.iter().map(|d| d.weight as u64).sum();
        if total == 0 {
            return dests.first();
        }
        let mut x = random_below(total as usize) as u64;
        for d in dests {
            if x < d.weight as u64 {
                return Some(d);
            }
            x -= d.weight as u64;
        }
        dests.last()
    }
}

/// Resolves an Istio host written in `namespace` to a Service: `reviews`,
/// `reviews.shop`, `reviews.shop.svc`, `reviews.shop.svc.cluster.local`.
pub fn resolve_host(host: &str, namespace: &str, domain: &str) -> Option<ServiceKey> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let host = host
        .strip_suffix(&format!(".svc.{domain}"))
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(&host);
    let mut parts = host.split('.');
    let name = parts.next()?.to_string();
    let ns = parts.next().map(str::to_string);
    if parts.next().is_some() || name.is_empty() || name == "*" {
        return None;
    }
    Some(ServiceKey {
        namespace: ns.unwrap_or_else(|| namespace.to_string()),
        name,
    })
}

/// Builds the clusters and routes of every HTTP frontend from one view, reusing the
/// clusters of `previous` that did not change (their balancing state carries over).
pub struct Compiler<'a> {
    view: &'a ClusterView,
    domain: &'a str,
    previous: &'a HashMap<ClusterKey, Arc<Cluster>>,
    pub clusters: HashMap<ClusterKey, Arc<Cluster>>,
    rules: HashMap<ServiceKey, Arc<DestinationRule>>,
    /// While compiling for traffic that must stay on this node: its name.
    only_node: Option<String>,
}

impl<'a> Compiler<'a> {
    pub fn new(
        view: &'a ClusterView,
        domain: &'a str,
        previous: &'a HashMap<ClusterKey, Arc<Cluster>>,
    ) -> Self {
        let mut rules = HashMap::new();
        // Oldest first: the first DestinationRule for a host wins, as in Istio.
        for dr in &view.destination_rules {
            if let Some(key) = resolve_host(&dr.spec.host, &dr.namespace, domain) {
                rules.entry(key).or_insert_with(|| dr.clone());
            }
        }
        Compiler {
            view,
            domain,
            previous,
            clusters: HashMap::new(),
            rules,
            only_node: None,
        }
    }

    /// The routes for requests to `svc` on `port` that may reach only the endpoints on
    /// node `node` (None: all): a traffic policy `Local`.
    pub fn routes_on(
        &mut self,
        svc: &ServiceInfo,
        port: u16,
        node: Option<&str>,
    ) -> Arc<Vec<Route>> {
        self.only_node = node.map(str::to_string);
        let routes = self.routes(svc, port);
        self.only_node = None;
        routes
    }

    /// The routes for requests to `svc` on service port `port`.
    pub fn routes(&mut self, svc: &ServiceInfo, port: u16) -> Arc<Vec<Route>> {
        let vs =
            self.view.virtual_services.iter().find(|vs| {
                (vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh"))
                    && vs.spec.hosts.iter().any(|h| {
                        resolve_host(h, &vs.namespace, self.domain).as_ref() == Some(&svc.key)
                    })
            });
        let Some(vs) = vs.cloned() else {
            let cluster = self.cluster(&svc.key, None, Some(port), port);
            return Arc::new(vec![Route::forward_to(cluster, vec![])]);
        };
        let mut routes = Vec::new();
        for r in &vs.spec.http {
            match self.route(r, &vs.namespace, port) {
                Ok(route) => routes.push(route),
                Err(e) => tracing::warn!(virtualservice = %format!("{}/{}", vs.namespace, vs.name),
                    error = %e, "skipping a route the proxy cannot use"),
            }
        }
        Arc::new(routes)
    }

    fn route(&mut self, r: &HttpRoute, ns: &str, port: u16) -> Result<Route, String> {
        let matches = r
            .matches
            .iter()
            .map(Match::compile)
            .collect::<Result<Vec<_>, _>>()?;
        let action = if let Some(d) = &r.direct_response {
            Action::Direct(
                d.status,
                d.body
                    .as_ref()
                    .and_then(|b| b.string.clone())
                    .unwrap_or_default(),
            )
        } else if let Some(red) = &r.redirect {
            Action::Redirect(red.clone())
        } else {
            let single = r.route.len() == 1;
            Action::Forward(
                r.route
                    .iter()
                    .map(|d| WeightedCluster {
                        cluster: self.destination(&d.destination, ns, port),
                        weight: if single {
                            100
                        } else {
                            d.weight.unwrap_or(0).clamp(0, 100) as u32
                        },
                        headers: d.headers.clone(),
                        unresolved: http::StatusCode::SERVICE_UNAVAILABLE,
                    })
                    .collect(),
            )
        };
        Ok(Route {
            name: r.name.clone(),
            matches,
            action,
            timeout: r
                .timeout
                .as_deref()
                .and_then(parse_duration)
                .filter(|d| !d.is_zero()),
            retry: r
                .retries
                .as_ref()
                .map(RetryPolicy::from_spec)
                .unwrap_or_else(RetryPolicy::istio_default),
            fault: r.fault.clone(),
            rewrite: r.rewrite.clone(),
            headers: r.headers.clone(),
            mirror: r.mirror.as_ref().map(|m| {
                let pct = r
                    .mirror_percentage
                    .as_ref()
                    .map(|p| p.value)
                    .unwrap_or(100.0);
                (self.destination(m, ns, port), pct)
            }),
        })
    }

    fn destination(
        &mut self,
        d: &config::Destination,
        ns: &str,
        port: u16,
    ) -> Result<Arc<Cluster>, String> {
        let Some(key) = resolve_host(&d.host, ns, self.domain) else {
            return Err(format!("host {} is not a Service of this cluster", d.host));
        };
        self.cluster(
            &key,
            d.subset.as_deref(),
            d.port.as_ref().and_then(|p| p.number),
            port,
        )
    }

    /// The cluster for a Service port given by number or by name (an Ingress backend).
    pub fn service_port(
        &mut self,
        key: &ServiceKey,
        number: Option<i32>,
        name: Option<&str>,
    ) -> Result<Arc<Cluster>, String> {
        let svc = self
            .view
            .services
            .get(key)
            .ok_or_else(|| format!("service {}.{} not found", key.name, key.namespace))?;
        let port = match (number, name) {
            (Some(n), _) => u16::try_from(n).ok(),
            (None, Some(name)) => svc.ports.iter().find(|p| p.name == name).map(|p| p.port),
            (None, None) => None,
        }
        .ok_or_else(|| format!("service {}.{} has no such port", key.name, key.namespace))?;
        self.cluster(key, None, Some(port), port)
    }

    /// The cluster for a Service port (the one asked for, the only one, or the one with
    /// the same number as the request's), optionally narrowed to a subset.
    fn cluster(
        &mut self,
        key: &ServiceKey,
        subset: Option<&str>,
        port: Option<u16>,
        request_port: u16,
    ) -> Result<Arc<Cluster>, String> {
        let svc = self
            .view
            .services
            .get(key)
            .ok_or_else(|| format!("service {}.{} not found", key.name, key.namespace))?;
        let sport = match port {
            Some(p) => svc.ports.iter().find(|sp| sp.port == p),
            None if svc.ports.len() == 1 => svc.ports.first(),
            None => svc.ports.iter().find(|sp| sp.port == request_port),
        }
        .ok_or_else(|| {
            format!(
                "service {}.{} has no port {}",
                key.name,
                key.namespace,
                port.unwrap_or(request_port)
            )
        })?;
        let rule = self.rules.get(key).cloned();
        let (labels, policy_spec) = match subset {
            None => (
                None,
                rule.as_ref().and_then(|r| r.spec.traffic_policy.clone()),
            ),
            Some(name) => {
                let spec: &DestinationRuleSpec =
                    rule.as_ref().map(|r| &r.spec).ok_or_else(|| {
                        format!(
                            "subset {name} of {}.{}: no DestinationRule",
                            key.name, key.namespace
                        )
                    })?;
                let s = spec
                    .subsets
                    .iter()
                    .find(|s| s.name == name)
                    .ok_or_else(|| {
                        format!("subset {name} of {}.{} not found", key.name, key.namespace)
                    })?;
                (
                    Some(s.labels.clone()),
                    s.traffic_policy
                        .clone()
                        .or_else(|| spec.traffic_policy.clone()),
                )
            }
        };
        let ckey = ClusterKey {
            service: key.clone(),
            subset: subset.map(str::to_string),
            port: sport.port,
            node: self.only_node.clone(),
        };
        if let Some(c) = self.clusters.get(&ckey) {
            return Ok(c.clone());
        }
        let mut policy = policy(policy_spec.as_ref());
        // A Service's ClientIP session affinity is a hash on the source address, as Istio
        // maps it, unless a DestinationRule chose another hash.
        if policy.hash.is_none() && svc.affinity.is_some() {
            policy.hash = Some(HashOn::SourceIp);
        }
        let endpoints = endpoints(
            svc,
            &sport.name,
            sport.protocol,
            labels.as_ref(),
            self.only_node.as_deref(),
        );
        let app = crate::frontends::AppProtocol::of(sport);
        let cluster = match self.previous.get(&ckey) {
            Some(old) if old.endpoints == endpoints && old.policy == policy && old.app == app => {
                old.clone()
            }
            _ => Arc::new(Cluster::new(ckey.clone(), endpoints, policy, app)),
        };
        self.clusters.insert(ckey, cluster.clone());
        Ok(cluster)
    }
}

fn policy(p: Option<&TrafficPolicy>) -> Policy {
    let lb = p.and_then(|p| p.load_balancer.as_ref());
    let hash = lb.and_then(|l| l.consistent_hash.as_ref()).and_then(|h| {
        if let Some(n) = &h.http_header_name {
            Some(HashOn::Header(n.to_ascii_lowercase()))
        } else if let Some(q) = &h.http_query_parameter_name {
            Some(HashOn::Query(q.clone()))
        } else if let Some(c) = &h.http_cookie {
            Some(HashOn::Cookie(c.name.clone()))
        } else if h.use_source_ip == Some(true) {
            Some(HashOn::SourceIp)
        } else {
            None
        }
    });
    Policy {
        lb: match lb.and_then(|l| l.simple.as_deref()) {
            Some("ROUND_ROBIN") => Lb::RoundRobin,
            Some("RANDOM") => Lb::Random,
            // Istio's default is LEAST_REQUEST.
            _ => Lb::LeastRequest,
        },
        hash,
        outlier: p
            .and_then(|p| p.outlier_detection.as_ref())
            .and_then(outlier::Settings::from_spec),
        max_requests: p.and_then(|p| p.connection_pool.as_ref()).and_then(|c| {
            let h = c.http.as_ref();
            let limits = [
                h.and_then(|h| h.http1_max_pending_requests),
                h.and_then(|h| h.http2_max_requests),
                c.tcp.as_ref().and_then(|t| t.max_connections),
            ];
            limits.into_iter().flatten().min()
        }),
    }
}

/// Endpoints of a Service port, ready ones (serving terminating ones when none is ready),
/// narrowed to the pods carrying `labels`.
pub(crate) fn endpoints(
    svc: &ServiceInfo,
    port_name: &str,
    protocol: crate::view::Protocol,
    labels: Option<&BTreeMap<String, String>>,
    node: Option<&str>,
) -> Vec<Backend> {
    let selected = |e: &&crate::view::Endpoint| {
        labels.is_none_or(|l| l.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            && node.is_none_or(|n| e.node_name.as_deref() == Some(n))
    };
    let collect = |ready: bool| -> Vec<Backend> {
        let mut v: Vec<Backend> = svc
            .endpoints
            .iter()
            .filter(selected)
            .filter(|e| {
                if ready {
                    e.ready
                } else {
                    e.serving && e.terminating
                }
            })
            .filter_map(|e| {
                Some(Backend {
                    addr: SocketAddr::new(e.addresses[0], e.port_for(port_name, protocol)?),
                    target: e.target.clone(),
                })
            })
            .collect();
        v.sort_by_key(|b| b.addr);
        v.dedup_by_key(|b| b.addr);
        v
    };
    let ready = collect(true);
    if ready.is_empty() {
        collect(false)
    } else {
        ready
    }
}

/// Applies Istio header operations (set, add, remove) to a header map.
pub fn apply_header_ops(h: &mut http::HeaderMap, ops: Option<&HeaderOps>) {
    let Some(ops) = ops else { return };
    for (k, v) in &ops.set {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            h.insert(n, v);
        }
    }
    for (k, v) in &ops.add {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            h.append(n, v);
        }
    }
    for k in &ops.remove {
        h.remove(k.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_resolve_like_istio() {
        let k = |ns: &str, n: &str| {
            Some(ServiceKey {
                namespace: ns.into(),
                name: n.into(),
            })
        };
        assert_eq!(
            resolve_host("reviews", "shop", "cluster.local"),
            k("shop", "reviews")
        );
        assert_eq!(
            resolve_host("reviews.other", "shop", "cluster.local"),
            k("other", "reviews")
        );
        assert_eq!(
            resolve_host("Reviews.other.svc.cluster.local", "shop", "cluster.local"),
            k("other", "reviews")
        );
        assert_eq!(
            resolve_host("www.example.com", "shop", "cluster.local"),
            None
        );
    }

    #[test]
    fn matches_and_weights() {
        let m = Match::compile(
            &serde_json::from_value(serde_json::json!({
                "uri": {"prefix": "/api"}, "method": {"exact": "GET"},
                "headers": {"end-user": {"regex": "j.*n"}}, "queryParams": {"v": {"exact": "2"}}
            }))
            .unwrap(),
        )
        .unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("end-user", "jason".parse().unwrap());
        let req = |path, method, query| RequestInfo {
            method,
            path,
            query,
            authority: "reviews",
            headers: &headers,
            port: 80,
        };
        assert!(m.matches(&req("/api/x", "GET", Some("a=1&v=2"))));
        assert!(!m.matches(&req("/other", "GET", Some("v=2"))));
        assert!(!m.matches(&req("/api", "POST", Some("v=2"))));
        assert!(!m.matches(&req("/api", "GET", None)));
        let mut hits = 0;
        for _ in 0..10_000 {
            if chance(10.0) {
                hits += 1;
            }
        }
        assert!((800..1200).contains(&hits), "{hits}");
    }

    #[test]
    fn retry_on() {
        let p = RetryPolicy::from_spec(&config::Retries {
            attempts: Some(3),
            per_try_timeout: Some("2s".into()),
            retry_on: Some("gateway-error,connect-failure,418".into()),
        });
        assert!(p.retries(Some(503), true));
        assert!(!p.retries(Some(500), true));
        assert!(p.retries(Some(418), true));
        assert!(p.retries(None, false));
        assert_eq!(p.per_try_timeout, Some(Duration::from_secs(2)));
    }
}
