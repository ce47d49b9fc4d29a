//! Ingress (networking.k8s.io/v1) for the IngressClass `corral`: every node answers the
//! cluster's Ingresses on its HTTP and HTTPS ports. Rules become the same routes the mesh
//! uses (so retries, outlier detection and metrics apply alike), ordered as Kubernetes
//! asks: exact hosts before wildcards, then Exact paths before Prefix, longer prefixes
//! first, older Ingresses first; the default backend, if any, takes what is left. TLS
//! certificates come from the Secrets an Ingress's `tls` section names, chosen by SNI.

use crate::mesh::config::{HttpMatch, StringMatch};
use crate::mesh::routing::{Compiler, Match, Route};
use crate::view::{ClusterView, ServiceKey};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use kube::ResourceExt;
use std::collections::HashMap;
use std::sync::Arc;

/// The IngressClass this proxy serves, and its controller name.
pub const CLASS: &str = "corral";
pub const CONTROLLER: &str = "corral.dev/ingress";

/// Whether `ing` is ours: its class is `corral`, or it names none and `corral` is the
/// default class (or there is no class at all, as older manifests assume).
pub fn is_ours(ing: &Ingress, default_class: Option<&str>) -> bool {
    let named = ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.clone())
        .or_else(|| {
            ing.annotations()
                .get("kubernetes.io/ingress.class")
                .cloned()
        });
    match named {
        Some(c) => c == CLASS,
        None => default_class.is_none_or(|d| d == CLASS),
    }
}

/// Certificates by TLS host (`*.example.com` for wildcards): secret namespace and name.
pub type TlsHosts = HashMap<String, (String, String)>;

/// Routes for the ingress ports and the TLS hosts they serve.
pub fn compile(view: &ClusterView, compiler: &mut Compiler) -> (Arc<Vec<Route>>, TlsHosts) {
    struct Entry {
        exact_host: bool,
        exact_path: bool,
        path_len: usize,
        order: usize,
        route: Route,
    }
    let mut entries = Vec::new();
    let mut tls = TlsHosts::new();
    let mut default = None;
    let default_class = view.default_ingress_class.as_deref();
    let mut ingresses: Vec<&Arc<Ingress>> = view
        .ingresses
        .iter()
        .filter(|i| is_ours(i, default_class))
        .collect();
    ingresses.sort_by_key(|i| {
        (
            i.metadata.creation_timestamp.as_ref().map(|t| t.0),
            i.name_any(),
        )
    });
    for (order, ing) in ingresses.into_iter().enumerate() {
        let ns = ing.namespace().unwrap_or_default();
        let Some(spec) = &ing.spec else { continue };
        for t in spec.tls.iter().flatten() {
            if let Some(secret) = &t.secret_name {
                for h in t.hosts.iter().flatten() {
                    tls.entry(h.to_ascii_lowercase())
                        .or_insert_with(|| (ns.clone(), secret.clone()));
                }
            }
        }
        if default.is_none() {
            if let Some(b) = &spec.default_backend {
                default = Some(route(compiler, &ns, b, HttpMatch::default()));
            }
        }
        for rule in spec.rules.iter().flatten() {
            let host = rule.host.clone().unwrap_or_default().to_ascii_lowercase();
            for p in rule.http.iter().flat_map(|h| &h.paths) {
                let path = p.path.clone().unwrap_or_else(|| "/".into());
                let exact = p.path_type == "Exact";
                let mut m = HttpMatch::default();
                if !host.is_empty() {
                    m.authority = Some(host_match(&host));
                }
                m.uri = Some(path_match(&path, exact));
                entries.push(Entry {
                    exact_host: !host.is_empty() && !host.starts_with("*."),
                    exact_path: exact,
                    path_len: path.trim_end_matches('/').len(),
                    order,
                    route: route(compiler, &ns, &p.backend, m),
                });
            }
        }
    }
    // Host-specific before catch-all hosts, then the longest, most exact path.
    entries.sort_by(|a, b| {
        b.exact_host
            .cmp(&a.exact_host)
            .then(b.exact_path.cmp(&a.exact_path))
            .then(b.path_len.cmp(&a.path_len))
            .then(a.order.cmp(&b.order))
    });
    let mut routes: Vec<Route> = entries.into_iter().map(|e| e.route).collect();
    routes.extend(default);
    (Arc::new(routes), tls)
}

fn route(compiler: &mut Compiler, ns: &str, backend: &IngressBackend, m: HttpMatch) -> Route {
    let cluster = match &backend.service {
        Some(svc) => {
            let key = ServiceKey {
                namespace: ns.to_string(),
                name: svc.name.clone(),
            };
            let port = svc.port.as_ref();
            compiler.service_port(
                &key,
                port.and_then(|p| p.number),
                port.and_then(|p| p.name.as_deref()),
            )
        }
        None => Err("backend is not a Service".to_string()),
    };
    Route::forward_to(cluster, Match::compile_all(&[m]))
}

/// A Host header match: the name, any port; `*.example.com` stands for one label.
fn host_match(host: &str) -> StringMatch {
    let re = match host.strip_prefix("*.") {
        Some(rest) => format!("[^.]+\\.{}(:[0-9]+)?", regex::escape(rest)),
        None => format!("{}(:[0-9]+)?", regex::escape(host)),
    };
    StringMatch {
        regex: Some(format!("(?i){re}")),
        ..Default::default()
    }
}

/// Exact paths match as written; Prefix (and ImplementationSpecific) paths match whole
/// path elements: `/foo` takes `/foo`, `/foo/` and `/foo/bar`, not `/foobar`.
fn path_match(path: &str, exact: bool) -> StringMatch {
    if exact {
        return StringMatch {
            exact: Some(path.to_string()),
            ..Default::default()
        };
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return StringMatch {
            prefix: Some("/".into()),
            ..Default::default()
        };
    }
    StringMatch {
        regex: Some(format!("{}(/.*)?", regex::escape(trimmed))),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_elements() {
        let m = crate::mesh::routing::Matcher::compile(&path_match("/foo/", false), false).unwrap();
        assert!(m.matches("/foo") && m.matches("/foo/") && m.matches("/foo/bar"));
        assert!(!m.matches("/foobar"));
        let h =
            crate::mesh::routing::Matcher::compile(&host_match("*.example.com"), false).unwrap();
        assert!(h.matches("a.example.com") && h.matches("A.Example.com:8080"));
        assert!(!h.matches("a.b.example.com") && !h.matches("example.com"));
    }
}
