//! The Gateway API (gateway.networking.k8s.io/v1) for the GatewayClasses whose controller is
//! corral's: each accepted listener of such a Gateway is bound on the node's address (and
//! loopback) at its port, HTTP or HTTPS (TLS terminated with the listener's Secrets, chosen
//! by SNI). The HTTPRoutes attached to a port become the same routes VirtualServices and
//! Ingresses compile to, so balancing, retries, outlier detection and metrics apply alike.
//!
//! Which route attaches where is decided by `corral_apimachinery::gateway`, the rule book
//! the status controller reports from. Routes are ordered as the Gateway API asks: the most
//! specific hostname, then Exact paths, regular expressions, the longest prefix, a method,
//! the most header and query matches, then the oldest route and the rule's position.
//!
//! A listener on the node's Ingress port shares the Ingress listener: Gateway routes are
//! tried first, Ingress rules after them (see `before_ingress`).

use crate::frontends::AppProtocol;
use crate::mesh::config::{self, HeaderOps, Headers, HttpMatch, StringMatch};
use crate::mesh::routing::{Action, Compiler, Match, RetryPolicy, Route, WeightedCluster};
use crate::view::{ClusterView, ServiceKey};
use corral_apimachinery::gateway::{self as gw, HttpRouteFilter, HttpRouteMatch, World};
use rustls::sign::CertifiedKey;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Certificates of HTTPS listeners by port, then by hostname ("" for a listener without
/// one: the certificate for any name on that port).
pub type PortCerts = HashMap<u16, HashMap<String, Arc<CertifiedKey>>>;

/// What the node serves for Gateways: by port, the protocol and the ordered routes.
#[derive(Default)]
pub struct Compiled {
    pub ports: BTreeMap<u16, (AppProtocol, Arc<Vec<Route>>)>,
    pub certs: PortCerts,
}

impl Compiled {
    /// The routes of a port the Ingress also serves with `app`: the Gateway's first (they
    /// name hosts and paths explicitly), then the Ingress rules. A Gateway listener of the
    /// other protocol on that port is not served: the Ingress has the port.
    pub fn before_ingress(
        &mut self,
        port: u16,
        app: AppProtocol,
        ingress: &Arc<Vec<Route>>,
    ) -> Arc<Vec<Route>> {
        match self.ports.remove(&port) {
            Some((a, routes)) if a == app => {
                let mut all: Vec<Route> = routes.iter().cloned().collect();
                all.extend(ingress.iter().cloned());
                Arc::new(all)
            }
            Some(_) => {
                tracing::warn!(
                    port,
                    "a Gateway listener's protocol differs from the Ingress port's; not served"
                );
                ingress.clone()
            }
            None => ingress.clone(),
        }
    }
}

struct Entry {
    key: (
        u8,
        std::cmp::Reverse<usize>,
        u8,
        std::cmp::Reverse<usize>,
        bool,
    ),
    rest: (
        std::cmp::Reverse<usize>,
        std::cmp::Reverse<usize>,
        String,
        String,
        String,
        usize,
        usize,
    ),
    route: Route,
}

/// Compiles every Gateway of corral's classes in the view.
pub fn compile(view: &ClusterView, compiler: &mut Compiler) -> Compiled {
    let api = &view.gateway_api;
    let mut out = Compiled::default();
    if api.gateways.is_empty() {
        return out;
    }
    let labels = |ns: &str| view.namespaces.get(ns).map(|l| (**l).clone());
    let service_exists = |ns: &str, name: &str| view.service(ns, name).is_some();
    let secret_exists = |ns: &str, name: &str| {
        view.tls_secrets
            .contains_key(&(ns.to_string(), name.to_string()))
    };
    let w = World {
        classes: &api.classes,
        gateways: &api.gateways,
        routes: &api.routes,
        grants: &api.grants,
        namespace_labels: &labels,
        service_exists: &service_exists,
        tls_secret_exists: &secret_exists,
    };
    let att = gw::attach(&w);
    // Ports and certificates of the listeners served.
    for (gi, gs) in &att.gateways {
        let g = &api.gateways[*gi];
        if !gs.accepted.ok() {
            continue;
        }
        for (li, ls) in gs.listeners.iter().enumerate() {
            let l = &g.spec.listeners[li];
            let Ok(port) = u16::try_from(l.port) else {
                continue;
            };
            if !ls.serves() {
                continue;
            }
            let app = if l.protocol == "HTTPS" {
                AppProtocol::Https
            } else {
                AppProtocol::Http1
            };
            out.ports
                .entry(port)
                .or_insert_with(|| (app, Arc::new(Vec::new())));
            if app == AppProtocol::Https {
                let host = l.hostname.clone().unwrap_or_default().to_ascii_lowercase();
                let certs = out.certs.entry(port).or_default();
                if certs.contains_key(&host) {
                    continue;
                }
                // The first certificate that parses; the rest would be for other key types.
                for c in l.tls.iter().flat_map(|t| &t.certificate_refs) {
                    let ns = c.namespace.clone().unwrap_or_else(|| g.namespace.clone());
                    if let Some(k) = crate::tls::certified_key_of(&view.tls_secrets, &ns, &c.name) {
                        certs.insert(host.clone(), k);
                        break;
                    }
                }
            }
        }
    }
    let mut by_port: BTreeMap<u16, Vec<Entry>> = BTreeMap::new();
    let mut seen: HashSet<(u16, usize, usize, usize, String)> = HashSet::new();
    for (ri, rs) in &att.routes {
        let r = &api.routes[*ri];
        // Each rule's action is compiled once, whatever listeners it reaches.
        let mut actions: Vec<Option<Route>> = vec![None; r.spec.rules.len()];
        for p in rs.parents.iter().filter(|p| p.accepted.ok()) {
            for &(gi, li) in &p.listeners {
                let g = &api.gateways[gi];
                let l = &g.spec.listeners[li];
                let Ok(port) = u16::try_from(l.port) else {
                    continue;
                };
                if !att.gateways[&gi].listeners[li].serves() {
                    continue;
                }
                let Some(hosts) = gw::effective_hostnames(l.hostname.as_deref(), &r.spec.hostnames)
                else {
                    continue;
                };
                let hosts: Vec<String> = if hosts.is_empty() {
                    vec![String::new()]
                } else {
                    hosts
                };
                for (rule_i, rule) in r.spec.rules.iter().enumerate() {
                    let template = actions[rule_i]
                        .get_or_insert_with(|| rule_route(&w, compiler, r, rule_i))
                        .clone();
                    for (mi, m) in rule.matches_or_default().iter().enumerate() {
                        for host in &hosts {
                            if !seen.insert((port, *ri, rule_i, mi, host.clone())) {
                                continue;
                            }
                            let mut route = template.clone();
                            route.matches = compile_match(m, host, rule);
                            if route.matches.is_empty() {
                                continue;
                            }
                            let (ptype, pvalue) = m.path();
                            let host_rank = if host.is_empty() {
                                2
                            } else if host.starts_with('*') {
                                1
                            } else {
                                0
                            };
                            // Regular expressions (whose order the API leaves to
                            // implementations) go between Exact and PathPrefix, as in
                            // Envoy Gateway.
                            let path_rank = match ptype.as_str() {
                                "Exact" => 0,
                                "RegularExpression" => 1,
                                _ => 2,
                            };
                            by_port.entry(port).or_default().push(Entry {
                                key: (
                                    host_rank,
                                    std::cmp::Reverse(host.len()),
                                    path_rank,
                                    std::cmp::Reverse(pvalue.trim_end_matches('/').len()),
                                    m.method.is_none(),
                                ),
                                rest: (
                                    std::cmp::Reverse(m.headers.len()),
                                    std::cmp::Reverse(m.query_params.len()),
                                    r.created.clone(),
                                    r.namespace.clone(),
                                    r.name.clone(),
                                    rule_i,
                                    mi,
                                ),
                                route,
                            });
                        }
                    }
                }
            }
        }
    }
    for (port, mut entries) in by_port {
        entries.sort_by(|a, b| a.key.cmp(&b.key).then_with(|| a.rest.cmp(&b.rest)));
        if let Some((_, routes)) = out.ports.get_mut(&port) {
            *routes = Arc::new(entries.into_iter().map(|e| e.route).collect());
        }
    }
    out
}

/// The action and filters of one rule, without matches.
fn rule_route(
    w: &World,
    compiler: &mut Compiler,
    r: &gw::Obj<gw::HttpRouteSpec>,
    rule_i: usize,
) -> Route {
    let rule = &r.spec.rules[rule_i];
    let ns = &r.namespace;
    let mut headers = Headers::default();
    let mut rewrite = None;
    let mut redirect = None;
    let mut mirror = None;
    for f in &rule.filters {
        apply_modifiers(f, &mut headers);
        match f.type_.as_str() {
            "RequestRedirect" => redirect = f.request_redirect.clone(),
            "URLRewrite" => {
                if let Some(u) = &f.url_rewrite {
                    rewrite = Some(config::Rewrite {
                        uri: u.path.as_ref().and_then(path_replacement),
                        authority: u.hostname.clone(),
                    })
                }
            }
            "RequestMirror" if mirror.is_none() => {
                if let Some(m) = &f.request_mirror {
                    let cluster = cluster_of(w, compiler, ns, &m.backend_ref);
                    mirror = Some((cluster, m.percentage()));
                }
            }
            _ => {}
        }
    }
    let action = if let Some(red) = redirect {
        let port = red
            .port
            .and_then(|p| u16::try_from(p).ok())
            .or(match red.scheme.as_deref() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            });
        Action::Redirect(config::Redirect {
            uri: red.path.as_ref().and_then(path_replacement),
            replace_prefix: red
                .path
                .as_ref()
                .is_some_and(|p| p.type_ == "ReplacePrefixMatch"),
            authority: red.hostname.clone(),
            scheme: red.scheme.clone(),
            port,
            redirect_code: Some(
                red.status_code
                    .and_then(|c| u16::try_from(c).ok())
                    .unwrap_or(302),
            ),
        })
    } else {
        let mut dests = Vec::new();
        for b in &rule.backend_refs {
            let weight = b.weight.unwrap_or(1).clamp(0, 1_000_000) as u32;
            let obj = gw::ObjectRef {
                group: b.group.clone(),
                kind: b.kind.clone(),
                name: b.name.clone(),
                namespace: b.namespace.clone(),
                port: b.port,
            };
            let mut h = Headers::default();
            for f in &b.filters {
                apply_modifiers(f, &mut h);
            }
            dests.push(WeightedCluster {
                cluster: cluster_of(w, compiler, ns, &obj),
                weight,
                headers: (h != Headers::default()).then_some(h),
                unresolved: http::StatusCode::INTERNAL_SERVER_ERROR,
            });
        }
        if dests.iter().all(|d| d.weight == 0) {
            // No backend, or none with weight: the Gateway API's 500.
            Action::Direct(500, "no backend for this route\n".into())
        } else {
            Action::Forward(dests)
        }
    };
    Route {
        name: Some(format!("{ns}.{}.{rule_i}", r.name)),
        matches: vec![],
        action,
        timeout: None,
        retry: RetryPolicy::istio_default(),
        fault: None,
        rewrite,
        headers: (headers != Headers::default()).then_some(headers),
        mirror,
    }
}

fn cluster_of(
    w: &World,
    compiler: &mut Compiler,
    ns: &str,
    b: &gw::ObjectRef,
) -> Result<Arc<crate::mesh::routing::Cluster>, String> {
    let (ns, name, port) = gw::resolve_backend(w, ns, b).map_err(|(_, msg)| msg)?;
    compiler.service_port(
        &ServiceKey {
            namespace: ns,
            name,
        },
        Some(port as i32),
        None,
    )
}

/// The new path of a URLRewrite: a full path as written; a replaced prefix without its
/// trailing slash (the matched prefix is cut at an element boundary, so the rest of the
/// path starts with `/` or is empty).
fn path_replacement(p: &gw::PathModifier) -> Option<String> {
    match p.type_.as_str() {
        "ReplaceFullPath" => p.replace_full_path.clone(),
        "ReplacePrefixMatch" => p
            .replace_prefix_match
            .as_deref()
            .map(|s| s.trim_end_matches('/').to_string()),
        _ => None,
    }
}

fn apply_modifiers(f: &HttpRouteFilter, h: &mut Headers) {
    let ops = |m: &gw::HeaderModifier| HeaderOps {
        set: m
            .set
            .iter()
            .map(|nv| (nv.name.to_ascii_lowercase(), nv.value.clone()))
            .collect(),
        add: m
            .add
            .iter()
            .map(|nv| (nv.name.to_ascii_lowercase(), nv.value.clone()))
            .collect(),
        remove: m.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
    };
    match f.type_.as_str() {
        "RequestHeaderModifier" => {
            if let Some(m) = &f.request_header_modifier {
                h.request = Some(ops(m));
            }
        }
        "ResponseHeaderModifier" => {
            if let Some(m) = &f.response_header_modifier {
                h.response = Some(ops(m));
            }
        }
        _ => {}
    }
}

/// One HTTPRouteMatch on one hostname ("" for any) as the proxy's route match.
fn compile_match(m: &HttpRouteMatch, host: &str, rule: &gw::HttpRouteRule) -> Vec<Match> {
    let mut hm = HttpMatch::default();
    if !host.is_empty() {
        hm.authority = Some(host_match(host));
    }
    let (ptype, value) = m.path();
    let prefix = value.trim_end_matches('/').to_string();
    hm.uri = Some(match ptype.as_str() {
        "Exact" => StringMatch {
            exact: Some(value.clone()),
            ..Default::default()
        },
        "RegularExpression" => StringMatch {
            regex: Some(value.clone()),
            ..Default::default()
        },
        // A prefix matches whole path elements: `/foo` takes `/foo` and `/foo/bar`,
        // not `/foobar`.
        _ if prefix.is_empty() => StringMatch {
            regex: Some("/.*".into()),
            ..Default::default()
        },
        _ => StringMatch {
            regex: Some(format!("{}(/.*)?", regex::escape(&prefix))),
            ..Default::default()
        },
    });
    for h in &m.headers {
        hm.headers
            .entry(h.name.to_ascii_lowercase())
            .or_insert_with(|| value_match(h));
    }
    for q in &m.query_params {
        hm.query_params
            .entry(q.name.clone())
            .or_insert_with(|| value_match(q));
    }
    if let Some(method) = &m.method {
        hm.method = Some(StringMatch {
            exact: Some(method.clone()),
            ..Default::default()
        });
    }
    let mut out = Match::compile_all(&[hm]);
    // A rewrite of the matched prefix needs to know it (and nothing else does).
    let replaces_prefix = rule.filters.iter().any(|f| {
        let rewrite = f.url_rewrite.as_ref().and_then(|u| u.path.as_ref());
        let redirect = f.request_redirect.as_ref().and_then(|r| r.path.as_ref());
        rewrite
            .into_iter()
            .chain(redirect)
            .any(|p| p.type_ == "ReplacePrefixMatch")
    });
    for o in &mut out {
        o.uri_prefix = (replaces_prefix && ptype == "PathPrefix").then(|| prefix.clone());
    }
    out
}

fn value_match(v: &gw::ValueMatch) -> StringMatch {
    match v.type_.as_deref() {
        Some("RegularExpression") => StringMatch {
            regex: Some(v.value.clone()),
            ..Default::default()
        },
        _ => StringMatch {
            exact: Some(v.value.clone()),
            ..Default::default()
        },
    }
}

/// A Host header match, any port: `*.example.com` stands for one or more labels.
fn host_match(host: &str) -> StringMatch {
    let re = match host.strip_prefix("*.") {
        Some(rest) => format!(".+\\.{}(:[0-9]+)?", regex::escape(rest)),
        None => format!("{}(:[0-9]+)?", regex::escape(host)),
    };
    StringMatch {
        regex: Some(format!("(?i){re}")),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use crate::frontends::{Frontends, Listen, NodeAddrs};
    use crate::mesh::routing::{Action, RequestInfo, Route};
    use crate::view::{
        ClusterView, Endpoint, EndpointPort, GatewayApi, Protocol, ServiceInfo, ServiceKey,
        ServicePort, ServiceType,
    };
    use corral_apimachinery::gateway::Obj;
    use serde_json::json;
    use std::sync::Arc;

    fn obj<S: serde::de::DeserializeOwned>(
        ns: &str,
        name: &str,
        spec: serde_json::Value,
    ) -> Obj<S> {
        Obj::from_json(ns, name, spec).unwrap()
    }

    fn service(view: &mut ClusterView, name: &str, ip: &str) {
        let key = ServiceKey {
            namespace: "shop".into(),
            name: name.into(),
        };
        view.services.insert(
            key.clone(),
            ServiceInfo {
                key,
                kind: ServiceType::ClusterIp,
                cluster_ips: vec![],
                headless: false,
                external_name: None,
                ports: vec![ServicePort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: None,
                    app_protocol: None,
                    target_port: None,
                }],
                affinity: None,
                publish_not_ready: false,
                traffic: Default::default(),
                endpoints: vec![Endpoint {
                    addresses: vec![ip.parse().unwrap()],
                    hostname: None,
                    node_name: None,
                    target: None,
                    ready: true,
                    serving: true,
                    terminating: false,
                    labels: Default::default(),
                    workload: None,
                    ports: Arc::new(vec![EndpointPort {
                        name: "http".into(),
                        protocol: Protocol::Tcp,
                        port: 8080,
                    }]),
                }],
            },
        );
    }

    fn view() -> ClusterView {
        let mut view = ClusterView::default();
        service(&mut view, "web", "10.42.0.7");
        service(&mut view, "who", "10.42.0.8");
        view.gateway_api = Arc::new(GatewayApi {
            classes: vec![obj(
                "",
                "corral",
                json!({"controllerName": "corral.dev/gateway-controller"}),
            )],
            gateways: vec![obj(
                "shop",
                "gw",
                json!({"gatewayClassName": "corral", "listeners": [
                    {"name": "http", "port": 8080, "protocol": "HTTP", "hostname": "*.example.com"}]}),
            )],
            routes: vec![obj(
                "shop",
                "r",
                json!({"parentRefs": [{"name": "gw"}], "hostnames": ["a.example.com"], "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api/"}}],
                     "filters": [{"type": "URLRewrite", "urlRewrite": {"path":
                        {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2/"}}}],
                     "backendRefs": [{"name": "web", "port": 80, "weight": 3},
                                     {"name": "who", "port": 80, "weight": 1}]},
                    {"matches": [{"path": {"type": "Exact", "value": "/x"}}],
                     "backendRefs": [{"name": "ghost", "port": 80}]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/"}, "method": "POST"}],
                     "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}]},
                    {"backendRefs": [{"name": "who", "port": 80}]}
                ]}),
            )],
            grants: vec![],
        });
        view
    }

    fn routes(view: &ClusterView) -> Arc<Vec<Route>> {
        let node = NodeAddrs {
            node_name: "node-a".into(),
            node_ip: "192.0.2.10".parse().unwrap(),
            skip: vec![],
            domain: "cluster.local".into(),
            ingress_http: None,
            ingress_https: None,
        };
        let fe = Frontends::build(view, &node, &Frontends::default());
        let listen = Listen {
            addr: "192.0.2.10:8080".parse().unwrap(),
            protocol: Protocol::Tcp,
        };
        fe.by_listen[&listen].routes.clone().unwrap()
    }

    fn pick<'a>(routes: &'a [Route], method: &str, path: &str, host: &str) -> Option<&'a Route> {
        let headers = http::HeaderMap::new();
        let info = RequestInfo {
            method,
            path,
            query: None,
            authority: host,
            headers: &headers,
            port: 8080,
        };
        routes.iter().find(|r| r.accepts(&info).is_some())
    }

    #[test]
    fn routes_compile_in_precedence_order() {
        let view = view();
        let routes = routes(&view);
        let api = pick(&routes, "GET", "/api/items", "A.example.com:8080").unwrap();
        let Action::Forward(dests) = &api.action else {
            panic!("{:?}", api.action)
        };
        let names: Vec<(String, u32)> = dests
            .iter()
            .map(|d| {
                (
                    d.cluster.as_ref().unwrap().key.service.name.clone(),
                    d.weight,
                )
            })
            .collect();
        assert_eq!(names, vec![("web".into(), 3), ("who".into(), 1)]);
        assert_eq!(api.rewrite.as_ref().unwrap().uri.as_deref(), Some("/v2"));
        assert_eq!(api.matches[0].uri_prefix.as_deref(), Some("/api"));
        assert!(pick(&routes, "GET", "/apix", "a.example.com")
            .is_some_and(|r| r.name.as_deref() == Some("shop.r.3")));
        // The missing Service's share answers 500.
        let x = pick(&routes, "GET", "/x", "a.example.com").unwrap();
        let Action::Forward(dests) = &x.action else {
            panic!()
        };
        assert!(dests[0].cluster.is_err());
        assert_eq!(dests[0].unresolved, http::StatusCode::INTERNAL_SERVER_ERROR);
        // A method match beats a plain prefix of the same length.
        let post = pick(&routes, "POST", "/y", "a.example.com").unwrap();
        let Action::Redirect(red) = &post.action else {
            panic!()
        };
        assert_eq!((red.redirect_code, red.port), (Some(302), Some(443)));
        // Another host under the listener's wildcard: no route of this HTTPRoute.
        assert!(pick(&routes, "GET", "/", "b.example.com").is_none());
    }

    #[test]
    fn a_route_to_a_gateway_of_another_class_is_not_served() {
        let mut view = view();
        let mut api = (*view.gateway_api).clone();
        api.gateways[0].spec.gateway_class_name = "istio".into();
        view.gateway_api = Arc::new(api);
        let node = NodeAddrs {
            node_name: "node-a".into(),
            node_ip: "192.0.2.10".parse().unwrap(),
            skip: vec![],
            domain: "cluster.local".into(),
            ingress_http: None,
            ingress_https: None,
        };
        let fe = Frontends::build(&view, &node, &Frontends::default());
        assert!(fe.by_listen.keys().all(|l| l.addr.port() != 8080));
    }
}
