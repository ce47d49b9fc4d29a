//! The Kubernetes Gateway API kinds (gateway.networking.k8s.io) served out of the box as
//! ordinary CustomResourceDefinitions, as k3s and Istio users expect: GatewayClass, Gateway
//! and HTTPRoute (v1, also served as v1beta1) and ReferenceGrant (v1beta1). The schemas
//! follow upstream's standard channel (types, enums, bounds, patterns, list sizes and
//! defaults), and `validate` carries the rules upstream writes in CEL, so a bad object is
//! refused with its field path. A CRD already in the store (the upstream bundle, applied by
//! the user) is left as it is. The GatewayClass `corral` is created at start.

use crate::error::{ApiResult, Cause};
use crate::handlers::create_object;
use crate::server::Shared;
use crate::storage;
use serde_json::{json, Value};

pub const GROUP: &str = "gateway.networking.k8s.io";
const HOSTNAME: &str = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const NAME: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
const CONTROLLER: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$";
const HEADER_NAME: &str = r"^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$";

fn string() -> Value {
    json!({"type": "string"})
}

fn bounded(max: u64) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": max})
}

fn pattern(p: &str, max: u64) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": max, "pattern": p})
}

fn enumeration(values: &[&str]) -> Value {
    json!({"type": "string", "enum": values})
}

fn any_object() -> Value {
    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

fn object(props: Value, required: &[&str]) -> Value {
    let mut o = json!({"type": "object", "properties": props});
    if !required.is_empty() {
        o["required"] = json!(required);
    }
    o
}

fn list(items: Value, max: u64) -> Value {
    json!({"type": "array", "maxItems": max, "items": items})
}

fn port() -> Value {
    json!({"type": "integer", "format": "int32", "minimum": 1, "maximum": 65535})
}

fn hostname() -> Value {
    pattern(HOSTNAME, 253)
}

/// A reference to a backend (a Service unless group/kind say otherwise).
fn backend_object_ref() -> Value {
    json!({"group": {"type": "string", "maxLength": 253, "default": ""},
           "kind": {"type": "string", "maxLength": 63, "minLength": 1, "default": "Service"},
           "name": bounded(253), "namespace": bounded(63), "port": port()})
}

fn header_modifier() -> Value {
    let nv = object(
        json!({"name": pattern(HEADER_NAME, 256), "value": {"type": "string", "minLength": 1, "maxLength": 4096}}),
        &["name", "value"],
    );
    object(
        json!({"set": list(nv.clone(), 16), "add": list(nv, 16),
               "remove": list(bounded(256), 16)}),
        &[],
    )
}

fn path_modifier() -> Value {
    object(
        json!({"type": enumeration(&["ReplaceFullPath", "ReplacePrefixMatch"]),
               "replaceFullPath": {"type": "string", "maxLength": 1024},
               "replacePrefixMatch": {"type": "string", "maxLength": 1024}}),
        &["type"],
    )
}

fn http_filter() -> Value {
    object(
        json!({
            "type": enumeration(&["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror",
                                  "RequestRedirect", "URLRewrite", "ExtensionRef", "CORS"]),
            "requestHeaderModifier": header_modifier(),
            "responseHeaderModifier": header_modifier(),
            "requestMirror": object(json!({
                "backendRef": object(backend_object_ref(), &["name"]),
                "percent": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 100},
                "fraction": object(json!({"numerator": {"type": "integer", "minimum": 0},
                                          "denominator": {"type": "integer", "minimum": 1, "default": 100}}),
                                   &["numerator"]),
            }), &["backendRef"]),
            "requestRedirect": object(json!({
                "scheme": enumeration(&["http", "https"]),
                "hostname": hostname(),
                "path": path_modifier(),
                "port": port(),
                "statusCode": {"type": "integer", "enum": [301, 302, 303, 307, 308], "default": 302},
            }), &[]),
            "urlRewrite": object(json!({"hostname": hostname(), "path": path_modifier()}), &[]),
            "extensionRef": object(json!({"group": string(), "kind": bounded(63), "name": bounded(253)}),
                                   &["group", "kind", "name"]),
            "cors": any_object(),
        }),
        &["type"],
    )
}

fn value_match() -> Value {
    object(
        json!({"type": {"type": "string", "enum": ["Exact", "RegularExpression"], "default": "Exact"},
               "name": pattern(HEADER_NAME, 256),
               "value": {"type": "string", "minLength": 1, "maxLength": 4096}}),
        &["name", "value"],
    )
}

fn default_match() -> Value {
    json!({"path": {"type": "PathPrefix", "value": "/"}})
}

fn http_route_spec() -> Value {
    let rule = object(
        json!({
            "name": pattern(NAME, 253),
            "matches": {"type": "array", "maxItems": 64, "default": [default_match()],
                        "items": object(json!({
                "path": {"type": "object", "default": {"type": "PathPrefix", "value": "/"},
                         "properties": {
                             "type": {"type": "string", "enum": ["Exact", "PathPrefix", "RegularExpression"], "default": "PathPrefix"},
                             "value": {"type": "string", "maxLength": 1024, "default": "/"}}},
                "headers": list(value_match(), 16),
                "queryParams": list(value_match(), 16),
                "method": enumeration(&["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]),
            }), &[])},
            "filters": list(http_filter(), 16),
            "backendRefs": list(object({
                let mut b = backend_object_ref();
                b["weight"] = json!({"type": "integer", "format": "int32", "minimum": 0, "maximum": 1000000, "default": 1});
                b["filters"] = list(http_filter(), 16);
                b
            }, &["name"]), 16),
            "timeouts": object(json!({"request": string(), "backendRequest": string()}), &[]),
            "retry": any_object(),
            "sessionPersistence": any_object(),
        }),
        &[],
    );
    json!({
        "parentRefs": list(object(json!({
            "group": {"type": "string", "maxLength": 253, "default": GROUP},
            "kind": {"type": "string", "maxLength": 63, "minLength": 1, "default": "Gateway"},
            "namespace": bounded(63), "name": bounded(253),
            "sectionName": pattern(NAME, 253), "port": port(),
        }), &["name"]), 32),
        "hostnames": list(hostname(), 16),
        "rules": {"type": "array", "maxItems": 16,
                  "default": [{"matches": [default_match()]}], "items": rule},
    })
}

fn gateway_spec() -> Value {
    let listener = object(
        json!({
            "name": pattern(NAME, 253),
            "hostname": hostname(),
            "port": port(),
            "protocol": pattern(r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9]+$", 255),
            "tls": object(json!({
                "mode": {"type": "string", "enum": ["Terminate", "Passthrough"], "default": "Terminate"},
                "certificateRefs": list(object(json!({
                    "group": {"type": "string", "maxLength": 253, "default": ""},
                    "kind": {"type": "string", "maxLength": 63, "minLength": 1, "default": "Secret"},
                    "name": bounded(253), "namespace": bounded(63),
                }), &["name"]), 64),
                "options": {"type": "object", "maxProperties": 16, "additionalProperties": {"type": "string"}},
                "frontendValidation": any_object(),
            }), &[]),
            "allowedRoutes": {"type": "object", "default": {"namespaces": {"from": "Same"}},
                "properties": {
                    "namespaces": {"type": "object", "default": {"from": "Same"}, "properties": {
                        "from": {"type": "string", "enum": ["All", "Selector", "Same"], "default": "Same"},
                        "selector": object(json!({
                            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "matchExpressions": list(object(json!({
                                "key": string(), "operator": string(), "values": {"type": "array", "items": string()}}),
                                &["key", "operator"]), 64)}), &[]),
                    }},
                    "kinds": list(object(json!({"group": string(), "kind": bounded(63)}), &["kind"]), 8),
                }},
        }),
        &["name", "port", "protocol"],
    );
    json!({
        "gatewayClassName": bounded(253),
        "listeners": {"type": "array", "minItems": 1, "maxItems": 64, "items": listener},
        "addresses": list(object(json!({"type": {"type": "string", "default": "IPAddress"},
                                        "value": bounded(253)}), &["value"]), 16),
        "infrastructure": any_object(),
        "backendTLS": any_object(),
    })
}

struct Kind {
    kind: &'static str,
    plural: &'static str,
    short: &'static [&'static str],
    cluster: bool,
    versions: &'static [&'static str],
    spec: Value,
    required: &'static [&'static str],
    columns: Vec<Value>,
}

fn column(name: &str, path: &str) -> Value {
    json!({"name": name, "type": "string", "jsonPath": path})
}

fn kinds() -> Vec<Kind> {
    // v1 is stored, as upstream's bundle stores it, so the bundle can be applied over these.
    const V1: &[&str] = &["v1", "v1beta1"];
    let age = json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"});
    vec![
        Kind {
            kind: "GatewayClass",
            plural: "gatewayclasses",
            short: &["gc"],
            cluster: true,
            versions: V1,
            spec: json!({"controllerName": pattern(CONTROLLER, 253),
                         "description": {"type": "string", "maxLength": 64},
                         "parametersRef": any_object()}),
            required: &["controllerName"],
            columns: vec![
                column("Controller", ".spec.controllerName"),
                column(
                    "Accepted",
                    ".status.conditions[?(@.type==\"Accepted\")].status",
                ),
                age.clone(),
                json!({"name": "Description", "type": "string", "jsonPath": ".spec.description", "priority": 1}),
            ],
        },
        Kind {
            kind: "Gateway",
            plural: "gateways",
            short: &["gtw"],
            cluster: false,
            versions: V1,
            spec: gateway_spec(),
            required: &["gatewayClassName", "listeners"],
            columns: vec![
                column("Class", ".spec.gatewayClassName"),
                column("Address", ".status.addresses[*].value"),
                column(
                    "Programmed",
                    ".status.conditions[?(@.type==\"Programmed\")].status",
                ),
                age.clone(),
            ],
        },
        Kind {
            kind: "HTTPRoute",
            plural: "httproutes",
            short: &[],
            cluster: false,
            versions: V1,
            spec: http_route_spec(),
            required: &[],
            columns: vec![
                json!({"name": "Hostnames", "type": "string", "jsonPath": ".spec.hostnames"}),
                age.clone(),
            ],
        },
        Kind {
            kind: "ReferenceGrant",
            plural: "referencegrants",
            short: &["refgrant"],
            cluster: false,
            versions: &["v1beta1"],
            spec: json!({
                "from": {"type": "array", "minItems": 1, "maxItems": 16, "items": object(json!({
                    "group": {"type": "string", "maxLength": 253}, "kind": bounded(63), "namespace": bounded(63)}),
                    &["group", "kind", "namespace"])},
                "to": {"type": "array", "minItems": 1, "maxItems": 16, "items": object(json!({
                    "group": {"type": "string", "maxLength": 253}, "kind": bounded(63), "name": bounded(253)}),
                    &["group", "kind"])},
            }),
            required: &["from", "to"],
            columns: vec![age],
        },
    ]
}

fn definition(k: &Kind) -> Value {
    let mut spec = json!({"type": "object", "properties": k.spec});
    if !k.required.is_empty() {
        spec["required"] = json!(k.required);
    }
    let schema = json!({"openAPIV3Schema": {
        "type": "object",
        "properties": {"spec": spec, "status": any_object()},
        "required": ["spec"],
    }});
    let versions: Vec<Value> = k
        .versions
        .iter()
        .map(|v| {
            json!({"name": v, "served": true, "storage": *v == k.versions[0], "schema": schema,
                   "subresources": {"status": {}}, "additionalPrinterColumns": k.columns})
        })
        .collect();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{GROUP}", k.plural),
            "labels": {"app.kubernetes.io/managed-by": "corral"},
            "annotations": {"gateway.networking.k8s.io/bundle-version": "v1.2.1",
                            "gateway.networking.k8s.io/channel": "standard"},
        },
        "spec": {
            "group": GROUP,
            "scope": if k.cluster { "Cluster" } else { "Namespaced" },
            "names": {"kind": k.kind, "listKind": format!("{}List", k.kind), "plural": k.plural,
                      "singular": k.kind.to_ascii_lowercase(), "shortNames": k.short,
                      "categories": ["gateway-api"]},
            "versions": versions,
        },
    })
}

/// Creates the Gateway API CRDs that are not in the store yet, and the GatewayClass
/// `corral` (served by every node's proxy) when it is missing.
pub async fn install(st: &Shared) -> ApiResult<()> {
    let res = st
        .registry
        .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .expect("built in");
    for k in kinds() {
        let crd = definition(&k);
        let name = crd["metadata"]["name"].as_str().unwrap_or("").to_string();
        if let Some(stored) = storage::get(&st.store, &res, None, &name).await? {
            // Served now, so the default class below can be created before the CRD sync
            // loop starts.
            crate::crd::register(st, &stored.0);
            continue;
        }
        match create_object(st, &res, None, crd, &crate::namespaces::system_ctx()).await {
            Ok(_) => {}
            Err(e) if e.code() == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let Some(class_res) = st.registry.lookup(GROUP, "v1", "gatewayclasses") else {
        return Ok(());
    };
    if storage::get(&st.store, &class_res, None, "corral")
        .await?
        .is_none()
    {
        let class = json!({
            "apiVersion": format!("{GROUP}/v1"), "kind": "GatewayClass",
            "metadata": {"name": "corral"},
            "spec": {"controllerName": "corral.dev/gateway-controller",
                     "description": "Served by every corral node's proxy"}
        });
        match create_object(
            st,
            &class_res,
            None,
            class,
            &crate::namespaces::system_ctx(),
        )
        .await
        {
            Ok(_) => {}
            Err(e) if e.code() == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Upstream's CEL rules for the kinds above (and a few of its webhook's), as causes with
/// field paths.
pub fn validate(group: &str, kind: &str, obj: &Value, causes: &mut Vec<Cause>) {
    if group != GROUP {
        return;
    }
    let spec = &obj["spec"];
    match kind {
        "Gateway" => validate_gateway(spec, causes),
        "HTTPRoute" => validate_http_route(spec, causes),
        _ => {}
    }
}

fn validate_gateway(spec: &Value, causes: &mut Vec<Cause>) {
    let listeners = spec["listeners"].as_array().cloned().unwrap_or_default();
    let mut names = std::collections::BTreeSet::new();
    let mut combos = std::collections::BTreeSet::new();
    for (i, l) in listeners.iter().enumerate() {
        let path = format!("spec.listeners[{i}]");
        if let Some(n) = l["name"].as_str() {
            if !names.insert(n.to_string()) {
                causes.push(Cause {
                    reason: "FieldValueDuplicate",
                    message: format!("Duplicate value: {n:?}: listener names must be unique"),
                    field: format!("{path}.name"),
                });
            }
        }
        let protocol = l["protocol"].as_str().unwrap_or("");
        let has_tls = l["tls"].is_object();
        if matches!(protocol, "HTTP" | "TCP" | "UDP") && has_tls {
            causes.push(Cause::invalid(
                format!("{path}.tls"),
                &Value::Null,
                "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']",
            ));
        }
        if matches!(protocol, "HTTPS" | "TLS") && !has_tls {
            causes.push(Cause::required(format!("{path}.tls")));
        }
        if matches!(protocol, "TCP" | "UDP") && !l["hostname"].is_null() {
            causes.push(Cause::invalid(
                format!("{path}.hostname"),
                &l["hostname"],
                "hostname must not be specified for protocols ['TCP', 'UDP']",
            ));
        }
        let tls = &l["tls"];
        if has_tls
            && tls["mode"].as_str().unwrap_or("Terminate") == "Terminate"
            && tls["certificateRefs"]
                .as_array()
                .is_none_or(|a| a.is_empty())
            && tls["options"].as_object().is_none_or(|o| o.is_empty())
        {
            causes.push(Cause::invalid(
                format!("{path}.tls.certificateRefs"),
                &Value::Null,
                "certificateRefs or options must be specified when mode is Terminate",
            ));
        }
        let combo = (
            l["port"].to_string(),
            protocol.to_string(),
            l["hostname"].as_str().unwrap_or("").to_string(),
        );
        if !combos.insert(combo) {
            causes.push(Cause::invalid(
                path,
                &Value::Null,
                "Combination of port, protocol and hostname must be unique for each listener",
            ));
        }
    }
}

fn validate_http_route(spec: &Value, causes: &mut Vec<Cause>) {
    let rules = spec["rules"].as_array().cloned().unwrap_or_default();
    let total: usize = rules
        .iter()
        .map(|r| r["matches"].as_array().map_or(1, |m| m.len().max(1)))
        .sum();
    if total > 128 {
        causes.push(Cause::invalid(
            "spec.rules",
            &Value::Null,
            "While 16 rules and 64 matches per rule are allowed, the total number of matches across all rules in a route must be less than 128",
        ));
    }
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        let matches = rule["matches"].as_array().cloned().unwrap_or_default();
        for (j, m) in matches.iter().enumerate() {
            let mpath = format!("{path}.matches[{j}]");
            check_path_match(&m["path"], &format!("{mpath}.path"), causes);
            for section in ["headers", "queryParams"] {
                let mut seen = std::collections::BTreeSet::new();
                for (k, h) in m[section].as_array().into_iter().flatten().enumerate() {
                    let name = h["name"].as_str().unwrap_or("");
                    let key = if section == "headers" {
                        name.to_ascii_lowercase()
                    } else {
                        name.to_string()
                    };
                    if !seen.insert(key) {
                        causes.push(Cause {
                            reason: "FieldValueDuplicate",
                            message: format!("Duplicate value: {name:?}"),
                            field: format!("{mpath}.{section}[{k}].name"),
                        });
                    }
                    if h["type"] == "RegularExpression" {
                        check_regex(
                            &h["value"],
                            &format!("{mpath}.{section}[{k}].value"),
                            causes,
                        );
                    }
                }
            }
        }
        let filters = rule["filters"].as_array().cloned().unwrap_or_default();
        check_filters(&filters, &format!("{path}.filters"), causes);
        let types: Vec<&str> = filters.iter().filter_map(|f| f["type"].as_str()).collect();
        if types.contains(&"RequestRedirect") && types.contains(&"URLRewrite") {
            causes.push(Cause::invalid(
                format!("{path}.filters"),
                &Value::Null,
                "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both",
            ));
        }
        let replaces_prefix = filters.iter().any(|f| {
            ["requestRedirect", "urlRewrite"]
                .iter()
                .any(|k| f[*k]["path"]["type"] == "ReplacePrefixMatch")
        });
        if replaces_prefix {
            let one_prefix = matches.len() == 1
                && matches[0]["path"]["type"].as_str().unwrap_or("PathPrefix") == "PathPrefix";
            if !one_prefix {
                causes.push(Cause::invalid(
                    format!("{path}.filters"),
                    &Value::Null,
                    "When using URLRewrite or RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified",
                ));
            }
        }
        for (j, b) in rule["backendRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let bpath = format!("{path}.backendRefs[{j}]");
            check_backend_port(b, &bpath, causes);
            let bf = b["filters"].as_array().cloned().unwrap_or_default();
            check_filters(&bf, &format!("{bpath}.filters"), causes);
        }
    }
}

fn required(field: String, message: impl Into<String>) -> Cause {
    Cause {
        reason: "FieldValueRequired",
        message: message.into(),
        field,
    }
}

fn check_backend_port(b: &Value, path: &str, causes: &mut Vec<Cause>) {
    let group = b["group"].as_str().unwrap_or("");
    let kind = b["kind"].as_str().unwrap_or("Service");
    if group.is_empty() && kind == "Service" && b["port"].is_null() {
        causes.push(required(
            format!("{path}.port"),
            "Must have port for Service reference",
        ));
    }
}

fn check_filters(filters: &[Value], path: &str, causes: &mut Vec<Cause>) {
    let fields = [
        ("RequestHeaderModifier", "requestHeaderModifier"),
        ("ResponseHeaderModifier", "responseHeaderModifier"),
        ("RequestMirror", "requestMirror"),
        ("RequestRedirect", "requestRedirect"),
        ("URLRewrite", "urlRewrite"),
        ("ExtensionRef", "extensionRef"),
        ("CORS", "cors"),
    ];
    let mut once = std::collections::BTreeSet::new();
    for (i, f) in filters.iter().enumerate() {
        let fpath = format!("{path}[{i}]");
        let ty = f["type"].as_str().unwrap_or("");
        for (t, field) in fields {
            let set = !f[field].is_null();
            if t == ty && !set {
                causes.push(required(
                    format!("{fpath}.{field}"),
                    format!("filter.{field} must be specified for {t} filter.type"),
                ));
            } else if t != ty && set {
                causes.push(Cause::invalid(
                    format!("{fpath}.{field}"),
                    &Value::Null,
                    format!("filter.{field} must be nil if the filter.type is not {t}"),
                ));
            }
        }
        if ty != "RequestMirror" && ty != "ExtensionRef" && !once.insert(ty.to_string()) {
            causes.push(Cause::invalid(
                format!("{fpath}.type"),
                &f["type"],
                "RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect and URLRewrite filters may be used at most once per rule",
            ));
        }
        for field in ["requestHeaderModifier", "responseHeaderModifier"] {
            let m = &f[field];
            let mut names = std::collections::BTreeSet::new();
            for section in ["set", "add"] {
                for (k, nv) in m[section].as_array().into_iter().flatten().enumerate() {
                    let n = nv["name"].as_str().unwrap_or("").to_ascii_lowercase();
                    if !names.insert((section, n.clone())) {
                        causes.push(Cause {
                            reason: "FieldValueDuplicate",
                            message: format!("Duplicate value: {n:?}"),
                            field: format!("{fpath}.{field}.{section}[{k}].name"),
                        });
                    }
                }
            }
        }
        for field in ["requestRedirect", "urlRewrite"] {
            let p = &f[field]["path"];
            let ty = p["type"].as_str().unwrap_or("");
            let pp = format!("{fpath}.{field}.path");
            for (t, k) in [
                ("ReplaceFullPath", "replaceFullPath"),
                ("ReplacePrefixMatch", "replacePrefixMatch"),
            ] {
                if p.is_object() && t == ty && p[k].is_null() {
                    causes.push(required(
                        format!("{pp}.{k}"),
                        format!("{k} must be specified when type is set to '{t}'"),
                    ));
                }
                if p.is_object() && t != ty && !p[k].is_null() {
                    causes.push(Cause::invalid(
                        format!("{pp}.{k}"),
                        &p[k],
                        format!("{k} must be nil when type is not '{t}'"),
                    ));
                }
            }
            if let Some(v) = p["replaceFullPath"]
                .as_str()
                .or(p["replacePrefixMatch"].as_str())
            {
                if !v.starts_with('/') {
                    causes.push(Cause::invalid(
                        pp,
                        &Value::String(v.into()),
                        "the path must start with '/'",
                    ));
                }
            }
        }
        let m = &f["requestMirror"]["backendRef"];
        if m.is_object() {
            check_backend_port(m, &format!("{fpath}.requestMirror.backendRef"), causes);
        }
        if !f["requestMirror"]["percent"].is_null() && !f["requestMirror"]["fraction"].is_null() {
            causes.push(Cause::invalid(
                format!("{fpath}.requestMirror"),
                &Value::Null,
                "Only one of percent or fraction may be specified in HTTPRequestMirrorFilter",
            ));
        }
    }
}

fn check_path_match(p: &Value, path: &str, causes: &mut Vec<Cause>) {
    let ty = p["type"].as_str().unwrap_or("PathPrefix");
    let Some(v) = p["value"].as_str() else { return };
    let value = Value::String(v.into());
    match ty {
        "Exact" | "PathPrefix" => {
            if !v.starts_with('/') {
                causes.push(Cause::invalid(
                    format!("{path}.value"),
                    &value,
                    "value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']",
                ));
            }
            let bad = ["//", "/./", "/../", "%2f", "%2F", "#"]
                .iter()
                .any(|s| v.contains(s))
                || v.ends_with("/..")
                || v.ends_with("/.");
            if bad {
                causes.push(Cause::invalid(
                    format!("{path}.value"),
                    &value,
                    "must not contain '//', '/./', '/../', '%2f', '%2F' or '#', nor end with '/..' or '/.'",
                ));
            }
        }
        "RegularExpression" => check_regex(&p["value"], &format!("{path}.value"), causes),
        _ => {}
    }
}

fn check_regex(v: &Value, field: &str, causes: &mut Vec<Cause>) {
    if let Some(r) = v.as_str() {
        if let Err(e) = regex::Regex::new(r) {
            causes.push(Cause::invalid(field, v, format!("invalid regex: {e}")));
        }
    }
}

/// What a user should hear about an accepted object: the parts corral does not act on.
pub fn warnings(group: &str, kind: &str, obj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if group != GROUP {
        return out;
    }
    let spec = &obj["spec"];
    let ignored = |out: &mut Vec<String>, path: String| {
        out.push(format!(
            "{path} is not implemented by corral's Gateway and is ignored"
        ));
    };
    match kind {
        "Gateway" => {
            for (i, l) in spec["listeners"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let p = l["protocol"].as_str().unwrap_or("");
                if !matches!(p, "HTTP" | "HTTPS") {
                    out.push(format!(
                        "spec.listeners[{i}].protocol: {p} listeners are not served by corral (HTTP and HTTPS are)"
                    ));
                }
                if l["tls"]["mode"] == "Passthrough" {
                    ignored(
                        &mut out,
                        format!("spec.listeners[{i}].tls.mode Passthrough"),
                    );
                }
            }
            if spec["addresses"].as_array().is_some_and(|a| !a.is_empty()) {
                out.push("spec.addresses: corral serves Gateways on every node's address; a Gateway asking for addresses is not accepted".into());
            }
        }
        "HTTPRoute" => {
            for (i, rule) in spec["rules"].as_array().into_iter().flatten().enumerate() {
                for field in ["timeouts", "retry", "sessionPersistence"] {
                    if !rule[field].is_null() {
                        ignored(&mut out, format!("spec.rules[{i}].{field}"));
                    }
                }
                for (j, f) in rule["filters"].as_array().into_iter().flatten().enumerate() {
                    if matches!(f["type"].as_str(), Some("ExtensionRef" | "CORS")) {
                        ignored(&mut out, format!("spec.rules[{i}].filters[{j}]"));
                    }
                }
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(kind: &str, spec: Value) -> Vec<Cause> {
        let mut c = Vec::new();
        validate(GROUP, kind, &json!({"spec": spec}), &mut c);
        c
    }

    #[test]
    fn route_rules_are_checked_with_field_paths() {
        let c = causes(
            "HTTPRoute",
            json!({"rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "api"}},
                            {"path": {"type": "RegularExpression", "value": "(["}}],
                "filters": [{"type": "RequestHeaderModifier"},
                            {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
                            {"type": "RequestRedirect", "requestRedirect": {}}],
                "backendRefs": [{"name": "web"}]
            }]}),
        );
        let fields: Vec<&str> = c.iter().map(|c| c.field.as_str()).collect();
        assert!(
            fields.contains(&"spec.rules[0].matches[0].path.value"),
            "{fields:?}"
        );
        assert!(fields.contains(&"spec.rules[0].matches[1].path.value"));
        assert!(fields.contains(&"spec.rules[0].filters[0].requestHeaderModifier"));
        assert!(fields.contains(&"spec.rules[0].backendRefs[0].port"));
        assert!(c.iter().any(|c| c.message.contains("not both")));
        assert!(c
            .iter()
            .any(|c| c.message.contains("exactly one PathPrefix")));
    }

    #[test]
    fn listeners_are_checked() {
        let c = causes(
            "Gateway",
            json!({"gatewayClassName": "corral", "listeners": [
                {"name": "a", "port": 80, "protocol": "HTTP"},
                {"name": "a", "port": 80, "protocol": "HTTP"},
                {"name": "b", "port": 443, "protocol": "HTTPS"}
            ]}),
        );
        let fields: Vec<&str> = c.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.listeners[1].name"), "{fields:?}");
        assert!(fields.contains(&"spec.listeners[1]"));
        assert!(fields.contains(&"spec.listeners[2].tls"));
        assert!(causes(
            "Gateway",
            json!({"listeners": [{"name": "a", "port": 80, "protocol": "HTTP"}]})
        )
        .is_empty());
    }

    #[test]
    fn schemas_refuse_bad_values() {
        use crate::validation::schema::{walk, Defs, Options};
        let crd = definition(&kinds()[2]);
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut obj = json!({"spec": {
            "hostnames": ["Bad_Host"],
            "rules": [{"matches": [{"path": {"type": "Glob", "value": "/"}}],
                       "backendRefs": [{"name": "web", "port": 80, "weight": -1}]}]
        }});
        let opts = Options {
            check_values: true,
            prune: false,
            defaults: true,
        };
        let f = walk(&mut obj, schema, &Defs(None), &opts);
        let fields: Vec<&str> = f.causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.hostnames[0]"), "{fields:?}");
        assert!(fields.contains(&"spec.rules[0].matches[0].path.type"));
        assert!(fields.contains(&"spec.rules[0].backendRefs[0].weight"));
        let mut ok = json!({"spec": {"parentRefs": [{"name": "gw"}], "rules": [{}]}});
        let f = walk(&mut ok, schema, &Defs(None), &opts);
        assert!(f.causes.is_empty(), "{:?}", f.causes);
        assert_eq!(ok["spec"]["parentRefs"][0]["kind"], "Gateway");
        assert_eq!(ok["spec"]["rules"][0]["matches"][0]["path"]["value"], "/");
    }
}
