//! The Istio resource kinds corral's mesh implements, served out of the box as ordinary
//! CustomResourceDefinitions so that `kubectl apply` of VirtualServices, DestinationRules,
//! PeerAuthentications and AuthorizationPolicies works without installing Istio.
//!
//! The schemas are corral's own: the top-level fields are typed (so a wrong type is
//! refused with its path) and everything below them is preserved as written, so Istio
//! YAML is stored unchanged even where corral does not act on a field. A CRD already in
//! the store (Istio's own, applied by the user) is left as it is.

use crate::error::ApiResult;
use crate::handlers::create_object;
use crate::server::Shared;
use crate::storage;
use serde_json::{json, Value};

/// A field kept as written, of the given JSON type.
fn any(ty: &str) -> Value {
    json!({"type": ty, "x-kubernetes-preserve-unknown-fields": true})
}

fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}

fn objects() -> Value {
    json!({"type": "array", "items": any("object")})
}

fn string_map() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}})
}

fn selector() -> Value {
    json!({"type": "object", "properties": {"matchLabels": string_map()}})
}

fn enumeration(values: &[&str]) -> Value {
    json!({"type": "string", "enum": values})
}

struct Kind {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    short: &'static [&'static str],
    versions: &'static [&'static str],
    spec: Value,
    /// (name, type, jsonPath) for `kubectl get`, before Age.
    columns: Vec<(&'static str, &'static str, &'static str)>,
}

fn kinds() -> Vec<Kind> {
    // The last version of each list is stored: the oldest one every Istio release serves,
    // so a user may apply Istio's own CRDs over these, of an old release (1.18 serves no
    // v1) or a new one, without dropping a stored version.
    const NETWORKING: &[&str] = &["v1", "v1beta1", "v1alpha3"];
    const SECURITY: &[&str] = &["v1", "v1beta1"];
    vec![
        Kind {
            group: "networking.istio.io",
            kind: "VirtualService",
            plural: "virtualservices",
            short: &["vs"],
            versions: NETWORKING,
            spec: json!({"hosts": strings(), "gateways": strings(), "http": objects(),
                         "tcp": objects(), "tls": objects(), "exportTo": strings()}),
            columns: vec![
                ("Gateways", "string", ".spec.gateways"),
                ("Hosts", "string", ".spec.hosts"),
            ],
        },
        Kind {
            group: "networking.istio.io",
            kind: "DestinationRule",
            plural: "destinationrules",
            short: &["dr"],
            versions: NETWORKING,
            spec: json!({"host": {"type": "string"}, "trafficPolicy": any("object"),
                         "subsets": {"type": "array", "items": {"type": "object",
                             "x-kubernetes-preserve-unknown-fields": true,
                             "properties": {"name": {"type": "string"}, "labels": string_map(),
                                            "trafficPolicy": any("object")}}},
                         "exportTo": strings(), "workloadSelector": any("object")}),
            columns: vec![("Host", "string", ".spec.host")],
        },
        Kind {
            group: "networking.istio.io",
            kind: "Gateway",
            plural: "gateways",
            short: &["gw"],
            versions: NETWORKING,
            spec: json!({"selector": string_map(), "servers": objects()}),
            columns: vec![],
        },
        Kind {
            group: "networking.istio.io",
            kind: "ServiceEntry",
            plural: "serviceentries",
            short: &["se"],
            versions: NETWORKING,
            spec: json!({"hosts": strings(), "addresses": strings(), "ports": objects(),
                         "location": enumeration(&["MESH_EXTERNAL", "MESH_INTERNAL"]),
                         "resolution": enumeration(&["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"]),
                         "endpoints": objects(), "exportTo": strings()}),
            columns: vec![
                ("Hosts", "string", ".spec.hosts"),
                ("Location", "string", ".spec.location"),
                ("Resolution", "string", ".spec.resolution"),
            ],
        },
        Kind {
            group: "security.istio.io",
            kind: "PeerAuthentication",
            plural: "peerauthentications",
            short: &["pa"],
            versions: SECURITY,
            spec: json!({"selector": selector(),
                         "mtls": {"type": "object", "properties": {"mode":
                             enumeration(&["UNSET", "DISABLE", "PERMISSIVE", "STRICT"])}},
                         "portLevelMtls": {"type": "object", "additionalProperties": any("object")}}),
            columns: vec![("Mode", "string", ".spec.mtls.mode")],
        },
        Kind {
            group: "security.istio.io",
            kind: "AuthorizationPolicy",
            plural: "authorizationpolicies",
            short: &["ap"],
            versions: SECURITY,
            spec: json!({"selector": selector(), "targetRef": any("object"),
                         "action": enumeration(&["ALLOW", "DENY", "AUDIT", "CUSTOM"]),
                         "rules": objects(), "provider": any("object")}),
            columns: vec![("Action", "string", ".spec.action")],
        },
    ]
}

fn definition(k: &Kind) -> Value {
    let mut columns: Vec<Value> = k
        .columns
        .iter()
        .map(|(name, ty, path)| json!({"name": name, "type": ty, "jsonPath": path}))
        .collect();
    columns.push(json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}));
    let schema = json!({"openAPIV3Schema": {
        "type": "object",
        "properties": {
            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                     "properties": k.spec},
            "status": any("object"),
        },
    }});
    let versions: Vec<Value> = k
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"name": v, "served": true, "storage": i + 1 == k.versions.len(), "schema": schema,
                   "subresources": {"status": {}}, "additionalPrinterColumns": columns})
        })
        .collect();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{}", k.plural, k.group),
            "labels": {"app.kubernetes.io/managed-by": "corral"},
        },
        "spec": {
            "group": k.group,
            "scope": "Namespaced",
            "names": {"kind": k.kind, "listKind": format!("{}List", k.kind), "plural": k.plural,
                      "singular": k.kind.to_ascii_lowercase(), "shortNames": k.short,
                      "categories": ["istio-io", format!("{}-istio-io", k.group.split('.').next().unwrap_or(""))]},
            "versions": versions,
        },
    })
}

/// Creates the mesh CRDs that are not in the store yet.
pub async fn install(st: &Shared) -> ApiResult<()> {
    let res = st
        .registry
        .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .expect("built in");
    for k in kinds() {
        let crd = definition(&k);
        let name = crd["metadata"]["name"].as_str().unwrap_or("").to_string();
        if storage::get(&st.store, &res, None, &name).await?.is_some() {
            continue;
        }
        match create_object(st, &res, None, crd, &crate::namespaces::system_ctx()).await {
            Ok(_) => {}
            Err(e) if e.code() == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Istio's own validation of the kinds above (what its admission webhook refuses), so a
/// resource the mesh could not use is refused with its field path instead of being
/// skipped by the proxies.
pub fn validate(group: &str, kind: &str, obj: &Value, causes: &mut Vec<crate::error::Cause>) {
    use crate::error::Cause;
    let spec = &obj["spec"];
    match (group, kind) {
        ("networking.istio.io", "VirtualService") => {
            let gateways = spec["gateways"].as_array();
            let mesh_only = gateways.is_none_or(|g| g.is_empty() || g.iter().any(|g| g == "mesh"));
            if spec["hosts"].as_array().is_none_or(|h| h.is_empty()) {
                causes.push(Cause::required("spec.hosts"));
            }
            for (i, route) in spec["http"].as_array().into_iter().flatten().enumerate() {
                let path = format!("spec.http[{i}]");
                validate_http_route(route, &path, mesh_only, causes);
            }
        }
        ("networking.istio.io", "DestinationRule") => {
            if spec["host"].as_str().is_none_or(str::is_empty) {
                causes.push(Cause::required("spec.host"));
            }
            let mut names = std::collections::BTreeSet::new();
            for (i, s) in spec["subsets"].as_array().into_iter().flatten().enumerate() {
                let name = s["name"].as_str().unwrap_or("");
                if name.is_empty() {
                    causes.push(Cause::required(format!("spec.subsets[{i}].name")));
                } else if !names.insert(name.to_string()) {
                    causes.push(Cause::invalid(
                        format!("spec.subsets[{i}].name"),
                        &s["name"],
                        "duplicate subset name",
                    ));
                }
                validate_traffic_policy(
                    &s["trafficPolicy"],
                    &format!("spec.subsets[{i}].trafficPolicy"),
                    causes,
                );
            }
            validate_traffic_policy(&spec["trafficPolicy"], "spec.trafficPolicy", causes);
        }
        _ => {}
    }
}

fn validate_http_route(
    route: &Value,
    path: &str,
    mesh: bool,
    causes: &mut Vec<crate::error::Cause>,
) {
    use crate::error::Cause;
    let actions = ["route", "redirect", "directResponse"]
        .iter()
        .filter(|a| !route[**a].is_null())
        .count();
    if actions == 0 && mesh {
        causes.push(Cause::required(format!("{path}.route")));
    } else if actions > 1 {
        causes.push(Cause::invalid(
            path,
            &Value::Null,
            "only one of route, redirect and directResponse may be set",
        ));
    }
    let dests = route["route"].as_array().cloned().unwrap_or_default();
    let mut total = 0i64;
    for (j, d) in dests.iter().enumerate() {
        let weight = d["weight"].as_i64().unwrap_or(0);
        if weight < 0 {
            causes.push(Cause::invalid(
                format!("{path}.route[{j}].weight"),
                &d["weight"],
                "weight must be between 0 and 100",
            ));
        }
        total += weight.max(0);
        if d["destination"]["host"].as_str().is_none_or(str::is_empty) {
            causes.push(Cause::required(format!(
                "{path}.route[{j}].destination.host"
            )));
        }
    }
    if dests.len() > 1 && total == 0 {
        causes.push(Cause::invalid(
            format!("{path}.route"),
            &Value::Null,
            "total destination weight = 0",
        ));
    }
    check_duration(&route["timeout"], &format!("{path}.timeout"), causes);
    check_duration(
        &route["retries"]["perTryTimeout"],
        &format!("{path}.retries.perTryTimeout"),
        causes,
    );
    if route["retries"]["attempts"].as_i64().is_some_and(|a| a < 0) {
        causes.push(Cause::invalid(
            format!("{path}.retries.attempts"),
            &route["retries"]["attempts"],
            "attempts cannot be negative",
        ));
    }
    let fault = &route["fault"];
    check_duration(
        &fault["delay"]["fixedDelay"],
        &format!("{path}.fault.delay.fixedDelay"),
        causes,
    );
    for (kind, pct) in [
        ("delay", &fault["delay"]["percentage"]["value"]),
        ("abort", &fault["abort"]["percentage"]["value"]),
    ] {
        if pct.as_f64().is_some_and(|p| !(0.0..=100.0).contains(&p)) {
            causes.push(Cause::invalid(
                format!("{path}.fault.{kind}.percentage.value"),
                pct,
                "percentage must be in range [0.0, 100.0]",
            ));
        }
    }
    if let Some(s) = fault["abort"]["httpStatus"].as_i64() {
        if !(200..=599).contains(&s) {
            causes.push(Cause::invalid(
                format!("{path}.fault.abort.httpStatus"),
                &fault["abort"]["httpStatus"],
                "invalid abort http status",
            ));
        }
    }
    for (k, m) in route["match"].as_array().into_iter().flatten().enumerate() {
        let mut regexes: Vec<(String, &Value)> =
            vec![(format!("{path}.match[{k}].uri.regex"), &m["uri"]["regex"])];
        for section in ["headers", "queryParams", "withoutHeaders"] {
            for (name, v) in m[section].as_object().into_iter().flatten() {
                regexes.push((
                    format!("{path}.match[{k}].{section}.{name}.regex"),
                    &v["regex"],
                ));
            }
        }
        for (field, r) in regexes {
            if let Some(r) = r.as_str() {
                if let Err(e) = regex::Regex::new(r) {
                    causes.push(Cause::invalid(
                        field,
                        &Value::String(r.to_string()),
                        format!("invalid regex: {e}"),
                    ));
                }
            }
        }
    }
}

fn validate_traffic_policy(tp: &Value, path: &str, causes: &mut Vec<crate::error::Cause>) {
    use crate::error::Cause;
    let od = &tp["outlierDetection"];
    check_duration(
        &od["interval"],
        &format!("{path}.outlierDetection.interval"),
        causes,
    );
    check_duration(
        &od["baseEjectionTime"],
        &format!("{path}.outlierDetection.baseEjectionTime"),
        causes,
    );
    if od["maxEjectionPercent"]
        .as_i64()
        .is_some_and(|p| !(0..=100).contains(&p))
    {
        causes.push(Cause::invalid(
            format!("{path}.outlierDetection.maxEjectionPercent"),
            &od["maxEjectionPercent"],
            "must be in range [0, 100]",
        ));
    }
    let simple = &tp["loadBalancer"]["simple"];
    if let Some(s) = simple.as_str() {
        if ![
            "UNSPECIFIED",
            "LEAST_CONN",
            "RANDOM",
            "PASSTHROUGH",
            "ROUND_ROBIN",
            "LEAST_REQUEST",
        ]
        .contains(&s)
        {
            causes.push(Cause::invalid(
                format!("{path}.loadBalancer.simple"),
                simple,
                "unknown load balancer",
            ));
        }
    }
}

/// Istio durations are Go durations ("1.5s", "100ms", "1m30s").
fn check_duration(v: &Value, field: &str, causes: &mut Vec<crate::error::Cause>) {
    let Some(s) = v.as_str() else { return };
    let mut rest = s.trim();
    let mut ok = !rest.is_empty();
    while ok && !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let u = rest[n..]
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .map(|i| i + n)
            .unwrap_or(rest.len());
        ok = n > 0
            && rest[..n].parse::<f64>().is_ok()
            && ["h", "m", "s", "ms", "us", "µs", "ns"].contains(&&rest[n..u]);
        rest = &rest[u..];
    }
    if !ok {
        causes.push(crate::error::Cause::invalid(
            field,
            v,
            "invalid duration (e.g. \"1.5s\", \"100ms\")",
        ));
    }
}

/// What a user should hear about an accepted Istio resource: parts the mesh does not act
/// on, and weights that are used as relative ones (returned as `Warning:` lines, which
/// kubectl prints).
pub fn warnings(group: &str, kind: &str, obj: &Value) -> Vec<String> {
    let spec = &obj["spec"];
    let mut out = Vec::new();
    let ignored = |out: &mut Vec<String>, path: String| {
        out.push(format!(
            "{path} is not implemented by corral's mesh and is ignored"
        ));
    };
    match (group, kind) {
        ("networking.istio.io", "VirtualService") => {
            for field in ["tcp", "tls"] {
                if spec[field].as_array().is_some_and(|a| !a.is_empty()) {
                    ignored(&mut out, format!("spec.{field}"));
                }
            }
            if spec["gateways"]
                .as_array()
                .is_some_and(|g| !g.is_empty() && !g.iter().any(|g| g == "mesh"))
            {
                out.push("spec.gateways: Istio Gateways are not served by corral; this VirtualService applies to no traffic (use an Ingress)".into());
            }
            for (i, route) in spec["http"].as_array().into_iter().flatten().enumerate() {
                for field in ["corsPolicy", "mirrors", "delegate"] {
                    if !route[field].is_null() {
                        ignored(&mut out, format!("spec.http[{i}].{field}"));
                    }
                }
                let dests = route["route"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let total: i64 = dests
                    .iter()
                    .map(|d| d["weight"].as_i64().unwrap_or(0))
                    .sum();
                if dests.len() > 1 && total != 100 && total > 0 {
                    out.push(format!(
                        "spec.http[{i}].route: the destination weights add up to {total}, not 100; they are used as relative weights"
                    ));
                }
            }
        }
        ("networking.istio.io", "DestinationRule") => {
            let policies =
                std::iter::once(("spec.trafficPolicy".to_string(), &spec["trafficPolicy"])).chain(
                    spec["subsets"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .enumerate()
                        .map(|(i, s)| {
                            (
                                format!("spec.subsets[{i}].trafficPolicy"),
                                &s["trafficPolicy"],
                            )
                        }),
                );
            for (path, tp) in policies {
                for field in ["tls", "portLevelSettings", "tunnel", "proxyProtocol"] {
                    if !tp[field].is_null() {
                        ignored(&mut out, format!("{path}.{field}"));
                    }
                }
                if !tp["loadBalancer"]["localityLbSetting"].is_null() {
                    ignored(&mut out, format!("{path}.loadBalancer.localityLbSetting"));
                }
            }
        }
        _ => {}
    }
    out
}
