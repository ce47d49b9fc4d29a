//! The Kubernetes Gateway API (gateway.networking.k8s.io/v1) as corral reads it, and the
//! one rule book for which HTTPRoutes attach to which Gateway listeners. The node proxy
//! (which routes) and the status controller (which reports) both ask this module, so what
//! `kubectl get httproute -o yaml` says is what the proxy does.
//!
//! The types keep the fields corral acts on; unknown ones are ignored (the API stores them).

use serde::Deserialize;
use std::collections::BTreeMap;

pub const GROUP: &str = "gateway.networking.k8s.io";
/// The GatewayClass created at server start, served by every node's proxy.
pub const CLASS: &str = "corral";
pub const CONTROLLER: &str = "corral.dev/gateway-controller";

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayClassSpec {
    pub controller_name: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    pub listeners: Vec<Listener>,
    pub addresses: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Listener {
    pub name: String,
    pub hostname: Option<String>,
    pub port: i64,
    pub protocol: String,
    pub tls: Option<ListenerTls>,
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ListenerTls {
    pub mode: Option<String>,
    pub certificate_refs: Vec<ObjectRef>,
}

/// A reference to another object: group ("" is core), kind, name, optional namespace.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct AllowedRoutes {
    pub namespaces: Option<RouteNamespaces>,
    pub kinds: Vec<RouteGroupKind>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteNamespaces {
    pub from: Option<String>,
    pub selector: Option<LabelSelector>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<LabelExpression>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct LabelExpression {
    pub key: String,
    pub operator: String,
    pub values: Vec<String>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let v = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => v.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => v.is_none_or(|v| !e.values.contains(v)),
                    "Exists" => v.is_some(),
                    "DoesNotExist" => v.is_none(),
                    _ => false,
                }
            })
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteGroupKind {
    pub group: Option<String>,
    pub kind: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteSpec {
    pub parent_refs: Vec<ParentRef>,
    pub hostnames: Vec<String>,
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ParentRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

impl ParentRef {
    /// Whether the reference names a Gateway (the defaults are group and kind Gateway).
    pub fn is_gateway(&self) -> bool {
        self.group.as_deref().unwrap_or(GROUP) == GROUP
            && self.kind.as_deref().unwrap_or("Gateway") == "Gateway"
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteRule {
    pub name: Option<String>,
    pub matches: Vec<HttpRouteMatch>,
    pub filters: Vec<HttpRouteFilter>,
    pub backend_refs: Vec<HttpBackendRef>,
}

impl HttpRouteRule {
    /// The rule's matches; none means every request (a `/` prefix), as the API defaults.
    pub fn matches_or_default(&self) -> Vec<HttpRouteMatch> {
        if self.matches.is_empty() {
            vec![HttpRouteMatch::default()]
        } else {
            self.matches.clone()
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteMatch {
    pub path: Option<PathMatch>,
    pub headers: Vec<ValueMatch>,
    pub query_params: Vec<ValueMatch>,
    pub method: Option<String>,
}

impl HttpRouteMatch {
    /// The path match with the API's defaults filled in: (type, value).
    pub fn path(&self) -> (String, String) {
        let p = self.path.clone().unwrap_or_default();
        (
            p.type_.unwrap_or_else(|| "PathPrefix".into()),
            p.value.unwrap_or_else(|| "/".into()),
        )
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PathMatch {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ValueMatch {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub type_: String,
    pub request_header_modifier: Option<HeaderModifier>,
    pub response_header_modifier: Option<HeaderModifier>,
    pub request_redirect: Option<RequestRedirect>,
    pub url_rewrite: Option<UrlRewrite>,
    pub request_mirror: Option<RequestMirror>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderModifier {
    pub set: Vec<NameValue>,
    pub add: Vec<NameValue>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct RequestRedirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<i64>,
    pub status_code: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub type_: String,
    pub replace_full_path: Option<String>,
    pub replace_prefix_match: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct RequestMirror {
    pub backend_ref: ObjectRef,
    pub percent: Option<i64>,
    pub fraction: Option<Fraction>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Fraction {
    pub numerator: i64,
    pub denominator: Option<i64>,
}

impl RequestMirror {
    /// The share of requests mirrored, in percent.
    pub fn percentage(&self) -> f64 {
        if let Some(p) = self.percent {
            return p.clamp(0, 100) as f64;
        }
        if let Some(f) = &self.fraction {
            let d = f.denominator.unwrap_or(100).max(1);
            return (f.numerator as f64 * 100.0 / d as f64).clamp(0.0, 100.0);
        }
        100.0
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpBackendRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i64>,
    pub weight: Option<i64>,
    pub filters: Vec<HttpRouteFilter>,
}

/// A ReferenceGrant (v1beta1): who in other namespaces may refer to what in its own.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ReferenceGrantSpec {
    pub from: Vec<GrantFrom>,
    pub to: Vec<GrantTo>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct GrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct GrantTo {
    pub group: String,
    pub kind: String,
    pub name: Option<String>,
}

/// One object of a Gateway API kind: where it lives, its age (older wins ties) and spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Obj<S> {
    pub namespace: String,
    pub name: String,
    pub created: String,
    pub generation: i64,
    pub spec: S,
}

impl<S: serde::de::DeserializeOwned> Obj<S> {
    /// A new object (generation 1, no creation time) with `spec` read from JSON, as tests
    /// and tools write them.
    pub fn from_json(
        namespace: &str,
        name: &str,
        spec: serde_json::Value,
    ) -> serde_json::Result<Self> {
        Ok(Obj {
            namespace: namespace.into(),
            name: name.into(),
            created: String::new(),
            generation: 1,
            spec: serde_json::from_value(spec)?,
        })
    }
}

/// Everything the attachment rules look at.
pub struct World<'a> {
    pub classes: &'a [Obj<GatewayClassSpec>],
    pub gateways: &'a [Obj<GatewaySpec>],
    pub routes: &'a [Obj<HttpRouteSpec>],
    pub grants: &'a [Obj<ReferenceGrantSpec>],
    /// Namespace labels by name (allowedRoutes selectors).
    pub namespace_labels: &'a dyn Fn(&str) -> Option<BTreeMap<String, String>>,
    /// Whether a Service exists.
    pub service_exists: &'a dyn Fn(&str, &str) -> bool,
    /// Whether a Secret of type kubernetes.io/tls exists.
    pub tls_secret_exists: &'a dyn Fn(&str, &str) -> bool,
}

/// A condition's outcome: True, or False with a reason and a message.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Yes(&'static str),
    No(&'static str, String),
}

impl Verdict {
    pub fn ok(&self) -> bool {
        matches!(self, Verdict::Yes(_))
    }
}

/// What corral makes of one listener of one Gateway.
#[derive(Clone, Debug)]
pub struct ListenerState {
    pub accepted: Verdict,
    pub resolved_refs: Verdict,
    /// Conflicted with another listener on the same port (reason), if so.
    pub conflicted: Option<(&'static str, String)>,
    pub attached_routes: i32,
}

impl ListenerState {
    /// Whether the node proxy serves it.
    pub fn serves(&self) -> bool {
        self.accepted.ok() && self.resolved_refs.ok() && self.conflicted.is_none()
    }
}

#[derive(Clone, Debug)]
pub struct GatewayState {
    pub namespace: String,
    pub name: String,
    pub accepted: Verdict,
    pub listeners: Vec<ListenerState>,
}

/// One parentRef of a route, as corral judges it.
#[derive(Clone, Debug)]
pub struct ParentState {
    pub parent: ParentRef,
    pub accepted: Verdict,
    pub resolved_refs: Verdict,
    /// The (gateway index, listener index) pairs the route attaches to.
    pub listeners: Vec<(usize, usize)>,
}

#[derive(Clone, Debug)]
pub struct RouteState {
    pub namespace: String,
    pub name: String,
    /// Only the parentRefs that name Gateways of corral's classes (or missing Gateways).
    pub parents: Vec<ParentState>,
}

pub struct Attachments {
    /// Indexes into `World::gateways`, for the Gateways of a class corral controls.
    pub gateways: BTreeMap<usize, GatewayState>,
    /// Indexes into `World::routes`.
    pub routes: BTreeMap<usize, RouteState>,
}

/// The classes whose controllerName is corral's.
pub fn our_classes(classes: &[Obj<GatewayClassSpec>]) -> Vec<String> {
    classes
        .iter()
        .filter(|c| c.spec.controller_name == CONTROLLER)
        .map(|c| c.name.clone())
        .collect()
}

/// Whether `name` matches the host pattern `pattern` (`*.example.com`: any name with one
/// or more labels before `.example.com`). Both are compared without case.
pub fn host_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    match p.strip_prefix("*") {
        Some(suffix) => n.len() > suffix.len() && n.ends_with(suffix),
        None => p == n,
    }
}

/// The hostnames a route serves on a listener: None when they do not overlap; an empty
/// list means any host.
pub fn effective_hostnames(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let l = listener.filter(|h| !h.is_empty());
    match (l, route.is_empty()) {
        (None, true) => Some(vec![]),
        (None, false) => Some(route.iter().map(|h| h.to_ascii_lowercase()).collect()),
        (Some(l), true) => Some(vec![l.to_ascii_lowercase()]),
        (Some(l), false) => {
            let mut out = Vec::new();
            for r in route {
                if host_matches(l, r) || r == l {
                    out.push(r.to_ascii_lowercase());
                } else if host_matches(r, l) {
                    out.push(l.to_ascii_lowercase());
                }
            }
            out.dedup();
            (!out.is_empty()).then_some(out)
        }
    }
}

fn listener_allows(
    l: &Listener,
    gw_ns: &str,
    route_ns: &str,
    labels: &dyn Fn(&str) -> Option<BTreeMap<String, String>>,
) -> bool {
    let kinds = l.allowed_routes.as_ref().map(|a| &a.kinds);
    let kind_ok = match kinds {
        Some(k) if !k.is_empty() => k
            .iter()
            .any(|k| k.kind == "HTTPRoute" && k.group.as_deref().unwrap_or(GROUP) == GROUP),
        _ => true,
    };
    if !kind_ok {
        return false;
    }
    let ns = l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match ns.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
        "All" => true,
        "Selector" => {
            let sel = ns.and_then(|n| n.selector.clone()).unwrap_or_default();
            labels(route_ns).is_some_and(|l| sel.matches(&l))
        }
        _ => gw_ns == route_ns,
    }
}

/// Whether a ReferenceGrant in `to_ns` lets a `from_kind` in `from_ns` refer to the
/// core `to_kind` named `to_name`.
pub fn granted(
    grants: &[Obj<ReferenceGrantSpec>],
    from_kind: &str,
    from_ns: &str,
    to_group: &str,
    to_kind: &str,
    to_ns: &str,
    to_name: &str,
) -> bool {
    grants.iter().filter(|g| g.namespace == to_ns).any(|g| {
        g.spec
            .from
            .iter()
            .any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_ns)
            && g.spec.to.iter().any(|t| {
                t.group == to_group
                    && t.kind == to_kind
                    && t.name.as_deref().is_none_or(|n| n == to_name)
            })
    })
}

/// Judges one backendRef (or mirror target) of a route in `ns`: Ok(service namespace,
/// name, port) or the ResolvedRefs reason and message.
pub fn resolve_backend(
    w: &World,
    ns: &str,
    r: &ObjectRef,
) -> Result<(String, String, u16), (&'static str, String)> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        return Err((
            "InvalidKind",
            format!(
                "backendRef {:?}: only Services are supported, not {group}/{kind}",
                r.name
            ),
        ));
    }
    let target_ns = r.namespace.clone().unwrap_or_else(|| ns.to_string());
    if target_ns != ns
        && !granted(
            w.grants,
            "HTTPRoute",
            ns,
            "",
            "Service",
            &target_ns,
            &r.name,
        )
    {
        return Err((
            "RefNotPermitted",
            format!(
                "backendRef {target_ns}/{}: no ReferenceGrant in {target_ns} allows it",
                r.name
            ),
        ));
    }
    if !(w.service_exists)(&target_ns, &r.name) {
        return Err((
            "BackendNotFound",
            format!("Service {target_ns}/{} not found", r.name),
        ));
    }
    let port = r.port.and_then(|p| u16::try_from(p).ok()).ok_or((
        "UnsupportedValue",
        format!("backendRef {:?} needs a port", r.name),
    ))?;
    Ok((target_ns, r.name.clone(), port))
}

/// Decides, for every Gateway of corral's classes and every HTTPRoute naming one, what is
/// accepted, what conflicts and what attaches where.
pub fn attach(w: &World) -> Attachments {
    let ours = our_classes(w.classes);
    let mut gateways = BTreeMap::new();
    // Listeners on one port share the node's socket: HTTP and HTTPS cannot both have it.
    // The oldest Gateway's first listener decides the port's protocol.
    let mut order: Vec<usize> = (0..w.gateways.len())
        .filter(|&i| ours.contains(&w.gateways[i].spec.gateway_class_name))
        .collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&w.gateways[a], &w.gateways[b]);
        (&x.created, &x.namespace, &x.name).cmp(&(&y.created, &y.namespace, &y.name))
    });
    let mut port_protocol: BTreeMap<i64, String> = BTreeMap::new();
    let mut port_hosts: BTreeMap<(i64, String), (usize, usize)> = BTreeMap::new();
    for &gi in &order {
        let gw = &w.gateways[gi];
        let mut listeners = Vec::new();
        for (li, l) in gw.spec.listeners.iter().enumerate() {
            let mut st = ListenerState {
                accepted: Verdict::Yes("Accepted"),
                resolved_refs: Verdict::Yes("ResolvedRefs"),
                conflicted: None,
                attached_routes: 0,
            };
            match l.protocol.as_str() {
                "HTTP" | "HTTPS" => {}
                p => {
                    st.accepted = Verdict::No(
                        "UnsupportedProtocol",
                        format!("protocol {p} is not supported by corral (HTTP and HTTPS are)"),
                    )
                }
            }
            if l.protocol == "HTTPS" {
                let tls = l.tls.clone().unwrap_or_default();
                if tls.mode.as_deref().unwrap_or("Terminate") != "Terminate" {
                    st.accepted = Verdict::No(
                        "UnsupportedValue",
                        "tls.mode Passthrough is not supported by corral".into(),
                    );
                }
                if tls.certificate_refs.is_empty() {
                    st.resolved_refs = Verdict::No(
                        "InvalidCertificateRef",
                        "an HTTPS listener needs tls.certificateRefs".into(),
                    );
                }
                for c in &tls.certificate_refs {
                    let group = c.group.as_deref().unwrap_or("");
                    let kind = c.kind.as_deref().unwrap_or("Secret");
                    let ns = c.namespace.clone().unwrap_or_else(|| gw.namespace.clone());
                    if !group.is_empty() || kind != "Secret" {
                        st.resolved_refs = Verdict::No(
                            "InvalidCertificateRef",
                            format!("certificateRef {}: only Secrets are supported", c.name),
                        );
                    } else if ns != gw.namespace
                        && !granted(
                            w.grants,
                            "Gateway",
                            &gw.namespace,
                            "",
                            "Secret",
                            &ns,
                            &c.name,
                        )
                    {
                        st.resolved_refs = Verdict::No(
                            "RefNotPermitted",
                            format!(
                                "certificateRef {ns}/{}: no ReferenceGrant allows it",
                                c.name
                            ),
                        );
                    } else if !(w.tls_secret_exists)(&ns, &c.name) {
                        st.resolved_refs = Verdict::No(
                            "InvalidCertificateRef",
                            format!("Secret {ns}/{} of type kubernetes.io/tls not found", c.name),
                        );
                    }
                }
            }
            if st.accepted.ok() {
                let proto = port_protocol
                    .entry(l.port)
                    .or_insert_with(|| l.protocol.clone());
                let host = l.hostname.clone().unwrap_or_default().to_ascii_lowercase();
                if *proto != l.protocol {
                    st.conflicted = Some((
                        "ProtocolConflict",
                        format!("port {} is already served as {proto}", l.port),
                    ));
                } else if let Some((og, _)) = port_hosts.get(&(l.port, host.clone())) {
                    // The same port and hostname twice in one Gateway is ambiguous;
                    // across Gateways the routes of both are merged, as Istio does.
                    if *og == gi {
                        st.conflicted = Some((
                            "HostnameConflict",
                            format!("another listener has port {} and hostname {host:?}", l.port),
                        ));
                    }
                } else {
                    port_hosts.insert((l.port, host), (gi, li));
                }
            }
            listeners.push(st);
        }
        let accepted = if !gw.spec.addresses.is_empty() {
            Verdict::No(
                "UnsupportedAddress",
                "spec.addresses is not supported: every node's address serves the Gateway".into(),
            )
        } else if !listeners.is_empty() && listeners.iter().all(|l| !l.accepted.ok()) {
            Verdict::No("ListenersNotValid", "no listener is valid".into())
        } else {
            Verdict::Yes("Accepted")
        };
        gateways.insert(
            gi,
            GatewayState {
                namespace: gw.namespace.clone(),
                name: gw.name.clone(),
                accepted,
                listeners,
            },
        );
    }
    let mut routes = BTreeMap::new();
    for (ri, r) in w.routes.iter().enumerate() {
        let resolved = route_refs(w, r);
        let mut parents = Vec::new();
        for p in r.spec.parent_refs.iter().filter(|p| p.is_gateway()) {
            let ns = p.namespace.clone().unwrap_or_else(|| r.namespace.clone());
            let gi = w
                .gateways
                .iter()
                .position(|g| g.namespace == ns && g.name == p.name);
            let gw_state = gi.and_then(|gi| gateways.get(&gi).map(|s| (gi, s)));
            let Some((gi, gs)) = gw_state else {
                if gi.is_none() {
                    parents.push(ParentState {
                        parent: p.clone(),
                        accepted: Verdict::No(
                            "NoMatchingParent",
                            format!("Gateway {ns}/{} not found", p.name),
                        ),
                        resolved_refs: resolved.clone(),
                        listeners: vec![],
                    });
                }
                // A Gateway of another implementation's class is not ours to judge.
                continue;
            };
            let gw = &w.gateways[gi];
            let mut listeners = Vec::new();
            let accepted = if !gs.accepted.ok() {
                Verdict::No(
                    "NoMatchingParent",
                    format!("Gateway {ns}/{} is not accepted", p.name),
                )
            } else {
                let candidates: Vec<usize> = gw
                    .spec
                    .listeners
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| p.section_name.as_ref().is_none_or(|s| *s == l.name))
                    .filter(|(_, l)| p.port.is_none_or(|port| port == l.port))
                    .map(|(i, _)| i)
                    .collect();
                let valid: Vec<usize> = candidates
                    .iter()
                    .copied()
                    .filter(|&i| gs.listeners[i].accepted.ok())
                    .collect();
                let allowed: Vec<usize> = valid
                    .iter()
                    .copied()
                    .filter(|&i| {
                        listener_allows(
                            &gw.spec.listeners[i],
                            &gw.namespace,
                            &r.namespace,
                            w.namespace_labels,
                        )
                    })
                    .collect();
                let hosts: Vec<usize> = allowed
                    .iter()
                    .copied()
                    .filter(|&i| {
                        effective_hostnames(
                            gw.spec.listeners[i].hostname.as_deref(),
                            &r.spec.hostnames,
                        )
                        .is_some()
                    })
                    .collect();
                if valid.is_empty() {
                    Verdict::No(
                        "NoMatchingParent",
                        match (&p.section_name, p.port) {
                            (Some(s), _) => {
                                format!("Gateway {ns}/{} has no valid listener {s:?}", p.name)
                            }
                            (None, Some(port)) => format!(
                                "Gateway {ns}/{} has no valid listener on port {port}",
                                p.name
                            ),
                            _ => format!("Gateway {ns}/{} has no valid listener", p.name),
                        },
                    )
                } else if allowed.is_empty() {
                    Verdict::No(
                        "NotAllowedByListeners",
                        format!(
                            "no listener of Gateway {ns}/{} allows HTTPRoutes from namespace {}",
                            p.name, r.namespace
                        ),
                    )
                } else if hosts.is_empty() {
                    Verdict::No(
                        "NoMatchingListenerHostname",
                        "no hostname of the route matches a listener's hostname".into(),
                    )
                } else {
                    listeners = hosts.iter().map(|&li| (gi, li)).collect();
                    Verdict::Yes("Accepted")
                }
            };
            parents.push(ParentState {
                parent: p.clone(),
                accepted,
                resolved_refs: resolved.clone(),
                listeners,
            });
        }
        if parents.is_empty() {
            continue;
        }
        // A route counts once per listener however many of its parentRefs reach it.
        let mut counted: Vec<(usize, usize)> = parents
            .iter()
            .flat_map(|p| p.listeners.iter().copied())
            .collect();
        counted.sort();
        counted.dedup();
        for (gi, li) in counted {
            if let Some(g) = gateways.get_mut(&gi) {
                g.listeners[li].attached_routes += 1;
            }
        }
        routes.insert(
            ri,
            RouteState {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                parents,
            },
        );
    }
    Attachments { gateways, routes }
}

/// ResolvedRefs of a route: the first backend that cannot be used, if any.
fn route_refs(w: &World, r: &Obj<HttpRouteSpec>) -> Verdict {
    for rule in &r.spec.rules {
        let mirrors = rule
            .filters
            .iter()
            .chain(rule.backend_refs.iter().flat_map(|b| &b.filters))
            .filter_map(|f| f.request_mirror.as_ref().map(|m| m.backend_ref.clone()));
        let backends = rule.backend_refs.iter().map(|b| ObjectRef {
            group: b.group.clone(),
            kind: b.kind.clone(),
            name: b.name.clone(),
            namespace: b.namespace.clone(),
            port: b.port,
        });
        for b in backends.chain(mirrors) {
            if let Err((reason, msg)) = resolve_backend(w, &r.namespace, &b) {
                return Verdict::No(reason, msg);
            }
        }
    }
    Verdict::Yes("ResolvedRefs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj<S: serde::de::DeserializeOwned>(
        ns: &str,
        name: &str,
        spec: serde_json::Value,
    ) -> Obj<S> {
        Obj::from_json(ns, name, spec).unwrap()
    }

    fn labels(ns: &str) -> Option<BTreeMap<String, String>> {
        let mut m = BTreeMap::new();
        m.insert("kubernetes.io/metadata.name".to_string(), ns.to_string());
        if ns == "team" {
            m.insert("shared".to_string(), "yes".to_string());
        }
        Some(m)
    }

    #[test]
    fn hostnames_intersect_as_the_spec_says() {
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert_eq!(effective_hostnames(None, &[]), Some(vec![]));
        assert_eq!(
            effective_hostnames(
                Some("*.example.com"),
                &["foo.example.com".into(), "other.org".into()]
            ),
            Some(vec!["foo.example.com".into()])
        );
        assert_eq!(
            effective_hostnames(Some("foo.example.com"), &["*.example.com".into()]),
            Some(vec!["foo.example.com".into()])
        );
        assert_eq!(effective_hostnames(Some("a.org"), &["b.org".into()]), None);
    }

    #[test]
    fn routes_attach_by_section_namespace_and_host() {
        let classes = vec![obj("", "corral", json!({"controllerName": CONTROLLER}))];
        let gateways = vec![obj(
            "infra",
            "gw",
            json!({"gatewayClassName": "corral", "listeners": [
                {"name": "same", "port": 80, "protocol": "HTTP"},
                {"name": "all", "port": 8080, "protocol": "HTTP", "hostname": "*.example.com",
                 "allowedRoutes": {"namespaces": {"from": "All"}}},
                {"name": "sel", "port": 8081, "protocol": "HTTP",
                 "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"shared": "yes"}}}}},
                {"name": "tcp", "port": 9000, "protocol": "TCP"},
                {"name": "clash", "port": 8080, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "c"}]}}
            ]}),
        )];
        let routes = vec![
            obj(
                "team",
                "r",
                json!({"parentRefs": [{"name": "gw", "namespace": "infra"}],
                "hostnames": ["a.example.com"],
                "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}),
            ),
            obj(
                "infra",
                "same",
                json!({"parentRefs": [{"name": "gw", "sectionName": "same"}]}),
            ),
            obj(
                "other",
                "far",
                json!({"parentRefs": [{"name": "gw", "namespace": "infra", "sectionName": "same"}]}),
            ),
            obj(
                "team",
                "missing",
                json!({"parentRefs": [{"name": "nope"}],
                "rules": [{"backendRefs": [{"name": "gone", "port": 80}]}]}),
            ),
        ];
        let w = World {
            classes: &classes,
            gateways: &gateways,
            routes: &routes,
            grants: &[],
            namespace_labels: &labels,
            service_exists: &|_, n| n == "web",
            tls_secret_exists: &|_, _| true,
        };
        let a = attach(&w);
        let gs = &a.gateways[&0];
        assert!(gs.accepted.ok());
        assert!(!gs.listeners[3].accepted.ok(), "TCP is not served");
        assert_eq!(
            gs.listeners[4].conflicted.as_ref().unwrap().0,
            "ProtocolConflict"
        );
        // Route r: All (hostname matches) and Selector (team is shared).
        let r = &a.routes[&0].parents[0];
        assert!(r.accepted.ok());
        assert_eq!(r.listeners, vec![(0, 1), (0, 2)]);
        assert_eq!(r.resolved_refs, Verdict::Yes("ResolvedRefs"));
        assert_eq!(gs.listeners[0].attached_routes, 1);
        assert_eq!(gs.listeners[1].attached_routes, 1);
        let far = &a.routes[&2].parents[0];
        assert!(matches!(
            far.accepted,
            Verdict::No("NotAllowedByListeners", _)
        ));
        let missing = &a.routes[&3].parents[0];
        assert!(matches!(
            missing.accepted,
            Verdict::No("NoMatchingParent", _)
        ));
        assert!(matches!(
            missing.resolved_refs,
            Verdict::No("BackendNotFound", _)
        ));
    }

    #[test]
    fn cross_namespace_backends_need_a_grant() {
        let routes = vec![obj::<HttpRouteSpec>("a", "r", json!({}))];
        let grants = vec![obj(
            "b",
            "g",
            json!({"from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": "a"}],
                   "to": [{"group": "", "kind": "Service"}]}),
        )];
        let mut w = World {
            classes: &[],
            gateways: &[],
            routes: &routes,
            grants: &[],
            namespace_labels: &labels,
            service_exists: &|_, _| true,
            tls_secret_exists: &|_, _| true,
        };
        let r = ObjectRef {
            name: "svc".into(),
            namespace: Some("b".into()),
            port: Some(80),
            ..Default::default()
        };
        assert_eq!(
            resolve_backend(&w, "a", &r).unwrap_err().0,
            "RefNotPermitted"
        );
        w.grants = &grants;
        assert_eq!(
            resolve_backend(&w, "a", &r).unwrap(),
            ("b".into(), "svc".into(), 80)
        );
    }
}
