//! Istio's AuthorizationPolicy, evaluated by the node proxy for each request (HTTP ports)
//! or connection (TCP ports) against the destination pod: a DENY rule that matches
//! refuses; when any ALLOW policy applies to the pod, one of its rules must match. A
//! policy applies to pods of its namespace that its selector matches (all of them without
//! a selector), or to every pod when it lives in the root namespace `istio-system`.
//! Sources are known by address: the pod behind the client's IP gives its namespace and
//! principal (spiffe://<domain>/ns/<ns>/sa/<service account>).

use crate::pods::PodMeta;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

pub const ROOT_NAMESPACE: &str = "istio-system";

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthorizationPolicySpec {
    pub selector: Option<Selector>,
    pub action: Option<String>,
    /// None and an empty list differ only in documentation: both match nothing.
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Rule {
    pub from: Vec<From>,
    pub to: Vec<To>,
    pub when: Vec<Condition>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct From {
    pub source: Source,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Source {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub ip_blocks: Vec<String>,
    pub not_ip_blocks: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct To {
    pub operation: Operation,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Operation {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub ports: Vec<String>,
    pub not_ports: Vec<String>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}

impl Operation {
    fn has_http_fields(&self) -> bool {
        !(self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty())
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    pub key: String,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

pub type AuthorizationPolicy = crate::view::MeshResource<AuthorizationPolicySpec>;

/// Who sent a request or connection.
#[derive(Clone, Copy)]
pub enum SourceId<'a> {
    /// A pod, known by its address (a pod of this node, on its bridge).
    Pod(&'a PodMeta),
    /// The identity in a verified mTLS certificate (a tunnel from another node).
    Verified(&'a crate::mtls::SpiffeId),
}

impl SourceId<'_> {
    /// Istio's principal: the SPIFFE ID without its scheme.
    fn principal(&self, domain: &str) -> String {
        match self {
            SourceId::Pod(p) => p.principal(domain),
            SourceId::Verified(id) => id.to_string().trim_start_matches("spiffe://").to_string(),
        }
    }

    fn namespace(&self) -> Option<&str> {
        match self {
            SourceId::Pod(p) => Some(&p.namespace),
            SourceId::Verified(crate::mtls::SpiffeId::Workload { namespace, .. }) => {
                Some(namespace)
            }
            SourceId::Verified(_) => None,
        }
    }
}

/// The request or connection being judged.
pub struct Request<'a> {
    pub source_ip: IpAddr,
    pub source: Option<SourceId<'a>>,
    pub destination: &'a PodMeta,
    pub port: u16,
    /// None for a TCP connection.
    pub http: Option<HttpParts<'a>>,
}

pub struct HttpParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    pub headers: &'a http::HeaderMap,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused, naming the policy (namespace/name) or "no ALLOW policy matched".
    Deny(String),
}

/// Every AuthorizationPolicy of the cluster, by namespace.
#[derive(Debug, Default)]
pub struct Authz {
    by_namespace: HashMap<String, Vec<Arc<AuthorizationPolicy>>>,
    pub domain: String,
}

impl Authz {
    pub fn new(policies: &[Arc<AuthorizationPolicy>], domain: &str) -> Authz {
        let mut by_namespace: HashMap<String, Vec<Arc<AuthorizationPolicy>>> = HashMap::new();
        for p in policies {
            by_namespace
                .entry(p.namespace.clone())
                .or_default()
                .push(p.clone());
        }
        Authz {
            by_namespace,
            domain: domain.to_string(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_namespace.is_empty()
    }

    pub fn decide(&self, r: &Request) -> Decision {
        let dest = r.destination;
        let applicable = [dest.namespace.as_str(), ROOT_NAMESPACE]
            .into_iter()
            .filter_map(|ns| self.by_namespace.get(ns))
            .flatten()
            .filter(|p| p.namespace == dest.namespace || p.namespace == ROOT_NAMESPACE)
            .filter(|p| {
                p.spec.selector.as_ref().is_none_or(|s| {
                    s.match_labels
                        .iter()
                        .all(|(k, v)| dest.labels.get(k) == Some(v))
                })
            });
        let mut any_allow = false;
        let mut allowed = false;
        for p in applicable {
            let action = p.spec.action.as_deref().unwrap_or("ALLOW");
            match action {
                "DENY"
                    if p.spec
                        .rules
                        .iter()
                        .any(|rule| self.rule_matches(rule, r, true)) =>
                {
                    return Decision::Deny(format!("{}/{}", p.namespace, p.name));
                }
                "ALLOW" => {
                    any_allow = true;
                    if !allowed
                        && p.spec
                            .rules
                            .iter()
                            .any(|rule| self.rule_matches(rule, r, false))
                    {
                        allowed = true;
                    }
                }
                // AUDIT and CUSTOM (external authorizers) do not decide here.
                _ => {}
            }
        }
        if any_allow && !allowed {
            Decision::Deny("no ALLOW policy matched".into())
        } else {
            Decision::Allow
        }
    }

    /// `deny` selects Istio's rule for HTTP-only fields on TCP traffic: a DENY rule
    /// ignores them (so it refuses more), an ALLOW rule with them never matches.
    fn rule_matches(&self, rule: &Rule, r: &Request, deny: bool) -> bool {
        let principal = r.source.map(|s| s.principal(&self.domain));
        let namespace = r.source.as_ref().and_then(|s| s.namespace());
        let from_ok = rule.from.is_empty()
            || rule.from.iter().any(|f| {
                let s = &f.source;
                list(&s.principals, principal.as_deref())
                    && not_list(&s.not_principals, principal.as_deref())
                    && list(&s.namespaces, namespace)
                    && not_list(&s.not_namespaces, namespace)
                    && (s.ip_blocks.is_empty()
                        || s.ip_blocks.iter().any(|b| in_block(r.source_ip, b)))
                    && !s.not_ip_blocks.iter().any(|b| in_block(r.source_ip, b))
            });
        if !from_ok {
            return false;
        }
        let port = r.port.to_string();
        let to_ok = rule.to.is_empty()
            || rule.to.iter().any(|t| {
                let o = &t.operation;
                let ports = list(&o.ports, Some(&port)) && not_list(&o.not_ports, Some(&port));
                if !ports {
                    return false;
                }
                match &r.http {
                    Some(h) => {
                        list(&o.methods, Some(h.method))
                            && not_list(&o.not_methods, Some(h.method))
                            && list(&o.paths, Some(h.path))
                            && not_list(&o.not_paths, Some(h.path))
                            && list(&o.hosts, Some(h.host))
                            && not_list(&o.not_hosts, Some(h.host))
                    }
                    None => deny || !o.has_http_fields(),
                }
            });
        if !to_ok {
            return false;
        }
        rule.when.iter().all(|c| {
            let value = self.condition_value(&c.key, r, principal.as_deref(), namespace);
            list(&c.values, value.as_deref()) && not_list(&c.not_values, value.as_deref())
        })
    }

    fn condition_value(
        &self,
        key: &str,
        r: &Request,
        principal: Option<&str>,
        namespace: Option<&str>,
    ) -> Option<String> {
        if let Some(h) = key
            .strip_prefix("request.headers[")
            .and_then(|k| k.strip_suffix(']'))
        {
            return r
                .http
                .as_ref()?
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
        }
        match key {
            "source.ip" | "source.remote_ip" => Some(r.source_ip.to_string()),
            "source.namespace" => namespace.map(str::to_string),
            "source.principal" => principal.map(str::to_string),
            "destination.port" => Some(r.port.to_string()),
            _ => None,
        }
    }
}

/// An Istio string match: exact, `prefix*`, `*suffix` or `*` (any value present).
fn string_matches(pattern: &str, v: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(p) = pattern.strip_suffix('*') {
        return v.starts_with(p);
    }
    if let Some(s) = pattern.strip_prefix('*') {
        return v.ends_with(s);
    }
    pattern == v
}

/// An empty list matches anything; otherwise the value must be present and match one.
fn list(patterns: &[String], v: Option<&str>) -> bool {
    patterns.is_empty() || v.is_some_and(|v| patterns.iter().any(|p| string_matches(p, v)))
}

fn not_list(patterns: &[String], v: Option<&str>) -> bool {
    !v.is_some_and(|v| patterns.iter().any(|p| string_matches(p, v)))
}

fn in_block(ip: IpAddr, block: &str) -> bool {
    let (addr, len) = match block.split_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().ok()),
        None => (block, None),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let len = len.unwrap_or(32).min(32);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let len = len.unwrap_or(128).min(128);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, sa: &str, labels: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            namespace: ns.into(),
            name: "p".into(),
            service_account: sa.into(),
            labels: Arc::new(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn policy(ns: &str, name: &str, spec: serde_json::Value) -> Arc<AuthorizationPolicy> {
        Arc::new(AuthorizationPolicy {
            namespace: ns.into(),
            name: name.into(),
            created: String::new(),
            spec: serde_json::from_value(spec).unwrap(),
        })
    }

    fn http<'a>(
        method: &'a str,
        path: &'a str,
        headers: &'a http::HeaderMap,
    ) -> Option<HttpParts<'a>> {
        Some(HttpParts {
            method,
            path,
            host: "web",
            headers,
        })
    }

    #[test]
    fn deny_admin_and_allow_only_a_namespace() {
        let az = Authz::new(
            &[
                policy(
                    "shop",
                    "deny-admin",
                    json!({"action": "DENY", "selector": {"matchLabels": {"app": "web"}},
                    "rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/admin*"]}}]}]}),
                ),
                policy(
                    "shop",
                    "from-front",
                    json!({"action": "ALLOW",
                    "rules": [{"from": [{"source": {"namespaces": ["front"]}}]}]}),
                ),
            ],
            "cluster.local",
        );
        let dest = pod("shop", "web", &[("app", "web")]);
        let front = pod("front", "default", &[]);
        let other = pod("other", "default", &[]);
        let h = http::HeaderMap::new();
        let req = |src: &PodMeta, method, path| {
            az.decide(&Request {
                source_ip: "10.0.0.9".parse().unwrap(),
                source: Some(SourceId::Pod(src)),
                destination: &dest,
                port: 8080,
                http: http(method, path, &h),
            })
        };
        assert_eq!(req(&front, "GET", "/"), Decision::Allow);
        assert_eq!(
            req(&front, "GET", "/admin/x"),
            Decision::Deny("shop/deny-admin".into())
        );
        assert_eq!(req(&front, "POST", "/admin/x"), Decision::Allow);
        assert!(matches!(req(&other, "GET", "/"), Decision::Deny(_)));
        // TCP: the DENY rule's HTTP fields are ignored, so it refuses the connection.
        let tcp = az.decide(&Request {
            source_ip: "10.0.0.9".parse().unwrap(),
            source: Some(SourceId::Pod(&front)),
            destination: &dest,
            port: 8080,
            http: None,
        });
        assert!(matches!(tcp, Decision::Deny(_)));
    }

    #[test]
    fn empty_allow_denies_all_and_principals_match() {
        let dest = pod("shop", "web", &[]);
        let h = http::HeaderMap::new();
        let src = pod("shop", "client", &[]);
        let ask = |az: &Authz| {
            az.decide(&Request {
                source_ip: "10.0.0.9".parse().unwrap(),
                source: Some(SourceId::Pod(&src)),
                destination: &dest,
                port: 80,
                http: http("GET", "/", &h),
            })
        };
        let deny_all = Authz::new(&[policy("shop", "nothing", json!({}))], "cluster.local");
        assert!(matches!(ask(&deny_all), Decision::Deny(_)));
        let by_sa = Authz::new(
            &[policy(
                "shop",
                "sa",
                json!({"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client", "spiffe://cluster.local/ns/shop/sa/client"]}}]}]}),
            )],
            "cluster.local",
        );
        assert_eq!(ask(&by_sa), Decision::Allow);
        let root = Authz::new(
            &[policy(
                ROOT_NAMESPACE,
                "mesh-wide",
                json!({"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/24"]}}]}]}),
            )],
            "cluster.local",
        );
        assert!(matches!(ask(&root), Decision::Deny(_)));
    }
}
