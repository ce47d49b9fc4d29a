//! Per-kind validation of the built-in kinds: the rules users hit in practice (missing
//! containers, selectors that do not match the template, bad ports, immutable selectors and
//! cluster IPs, immutable ConfigMaps), worded as Kubernetes words them.

use super::names::{is_dns1123_label, label_value_errors, qualified_name_errors};
use crate::error::Cause;
use crate::registry::Resource;
use corral_apimachinery::selectors::LabelSelector;
use serde_json::{json, Value};

pub fn validate_kind(res: &Resource, obj: &Value, old: Option<&Value>, c: &mut Vec<Cause>) {
    match (res.group.as_str(), res.kind.as_str()) {
        ("", "Pod") => {
            pod_spec(&obj["spec"], "spec", c);
            if let Some(old) = old {
                pod_update(old, obj, c);
            }
        }
        ("", "Service") => {
            service(obj, c);
            if let Some(old) = old {
                immutable_if_set(old, obj, &["spec", "clusterIP"], c);
            }
        }
        ("", "ConfigMap") | ("", "Secret") => {
            data_keys(obj, c);
            if let Some(old) = old {
                if old["immutable"] == json!(true) {
                    for f in ["data", "binaryData", "stringData"] {
                        if old[f] != obj[f] && f != "stringData" {
                            c.push(Cause::forbidden(
                                f,
                                "field is immutable when `immutable` is set",
                            ));
                        }
                    }
                    if obj["immutable"] != json!(true) {
                        c.push(Cause::forbidden(
                            "immutable",
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
                if res.kind == "Secret" {
                    immutable_if_set(old, obj, &["type"], c);
                }
            }
        }
        ("apps", "Deployment") | ("apps", "ReplicaSet") | ("apps", "StatefulSet") => {
            workload(obj, true, c);
            if let Some(old) = old {
                immutable(old, obj, &["spec", "selector"], c);
            }
        }
        ("apps", "DaemonSet") => {
            workload(obj, false, c);
            if let Some(old) = old {
                immutable(old, obj, &["spec", "selector"], c);
            }
        }
        ("batch", "Job") => {
            job_spec(&obj["spec"], "spec", c);
            if let Some(old) = old {
                immutable(old, obj, &["spec", "selector"], c);
                immutable(old, obj, &["spec", "template"], c);
                immutable(old, obj, &["spec", "completions"], c);
            }
        }
        ("batch", "CronJob") => {
            if obj["spec"]["schedule"].as_str().unwrap_or("").is_empty() {
                c.push(Cause::required("spec.schedule"));
            } else if cron_fields(obj["spec"]["schedule"].as_str().unwrap_or("")).is_err() {
                c.push(Cause::invalid(
                    "spec.schedule",
                    &obj["spec"]["schedule"],
                    "unparseable cron expression",
                ));
            }
            job_spec(
                &obj["spec"]["jobTemplate"]["spec"],
                "spec.jobTemplate.spec",
                c,
            );
        }
        ("rbac.authorization.k8s.io", "Role") | ("rbac.authorization.k8s.io", "ClusterRole") => {
            if let Some(rules) = obj["rules"].as_array() {
                for (i, r) in rules.iter().enumerate() {
                    if r["verbs"].as_array().is_none_or(|v| v.is_empty()) {
                        c.push(Cause::required(format!("rules[{i}].verbs")));
                    }
                }
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding")
        | ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            if obj["roleRef"]["name"].as_str().unwrap_or("").is_empty() {
                c.push(Cause::required("roleRef.name"));
            }
            if let Some(old) = old {
                immutable(old, obj, &["roleRef"], c);
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crate::crd::validate(obj, old, c),
        ("storage.k8s.io", "StorageClass") => {
            if obj["provisioner"].as_str().is_none_or(str::is_empty) {
                c.push(Cause::required("provisioner"));
            }
            for (field, allowed) in [
                ("reclaimPolicy", &["Delete", "Retain"][..]),
                (
                    "volumeBindingMode",
                    &["Immediate", "WaitForFirstConsumer"][..],
                ),
            ] {
                if let Some(v) = obj[field].as_str() {
                    if !allowed.contains(&v) {
                        c.push(Cause::unsupported(field, &obj[field], allowed));
                    }
                }
            }
            if let Some(old) = old {
                // Kubernetes: "updates to parameters are forbidden." (and the same for the
                // provisioner, reclaimPolicy and volumeBindingMode).
                for field in [
                    "parameters",
                    "provisioner",
                    "reclaimPolicy",
                    "volumeBindingMode",
                ] {
                    if old[field] != obj[field] {
                        c.push(Cause::forbidden(
                            field,
                            format!("updates to {field} are forbidden."),
                        ));
                    }
                }
            }
        }
        ("", "PersistentVolumeClaim") => {
            if let Some(old) = old {
                let strip = |v: &Value| {
                    let mut s = v["spec"].clone();
                    if let Some(o) = s.as_object_mut() {
                        o.remove("resources");
                        o.remove("volumeName");
                    }
                    s
                };
                if strip(old) != strip(obj) && !old["spec"].is_null() {
                    c.push(Cause::forbidden(
                        "spec",
                        "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
                    ));
                }
            }
        }
        _ => {}
    }
}

fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, p| &v[*p])
}

fn immutable(old: &Value, new: &Value, path: &[&str], c: &mut Vec<Cause>) {
    let (o, n) = (get(old, path), get(new, path));
    if o != n {
        c.push(Cause::immutable(path.join("."), n));
    }
}

fn immutable_if_set(old: &Value, new: &Value, path: &[&str], c: &mut Vec<Cause>) {
    let (o, n) = (get(old, path), get(new, path));
    if !o.is_null() && o != n && o != &json!("") {
        c.push(Cause::immutable(path.join("."), n));
    }
}

/// ConfigMaps and Secrets hold at most 1 MiB of data, as upstream.
const MAX_DATA_BYTES: usize = 1024 * 1024;

fn data_keys(obj: &Value, c: &mut Vec<Cause>) {
    let mut total = 0usize;
    for f in ["data", "binaryData"] {
        for (k, v) in obj[f].as_object().into_iter().flatten() {
            total += k.len() + v.as_str().map(str::len).unwrap_or(0);
        }
    }
    if total > MAX_DATA_BYTES {
        c.push(Cause {
            reason: "FieldValueTooLong",
            message: format!("Too long: must have at most {MAX_DATA_BYTES} bytes"),
            field: "[]".into(),
        });
    }
    for f in ["data", "binaryData", "stringData"] {
        if let Some(m) = obj[f].as_object() {
            for k in m.keys() {
                let ok = !k.is_empty()
                    && k.len() <= 253
                    && k.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
                    && k != "."
                    && k != ".."
                    && !k.starts_with("..");
                if !ok {
                    c.push(Cause::invalid(
                        f,
                        &json!(k),
                        "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                    ));
                }
            }
        }
    }
}

fn workload(obj: &Value, has_replicas: bool, c: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    if has_replicas {
        if let Some(r) = spec["replicas"].as_i64() {
            if r < 0 {
                c.push(Cause::invalid(
                    "spec.replicas",
                    &spec["replicas"],
                    "must be greater than or equal to 0",
                ));
            }
        }
    }
    let selector = &spec["selector"];
    if selector.is_null() || selector.as_object().is_some_and(|m| m.is_empty()) {
        c.push(Cause::required("spec.selector"));
    } else {
        match LabelSelector::from_label_selector_json(selector) {
            Err(e) => c.push(Cause::invalid("spec.selector", selector, e.to_string())),
            Ok(sel) => {
                if sel.is_everything() {
                    c.push(Cause::invalid(
                        "spec.selector",
                        selector,
                        "empty selector is invalid for deployment",
                    ));
                }
                let labels = spec["template"]["metadata"]["labels"].as_object();
                if !sel.matches(labels) {
                    c.push(Cause::invalid(
                        "spec.template.metadata.labels",
                        &spec["template"]["metadata"]["labels"],
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        }
        if let Some(ml) = selector["matchLabels"].as_object() {
            for (k, v) in ml {
                for e in qualified_name_errors(k) {
                    c.push(Cause::invalid("spec.selector.matchLabels", &json!(k), e));
                }
                for e in label_value_errors(v.as_str().unwrap_or("")) {
                    c.push(Cause::invalid("spec.selector.matchLabels", v, e));
                }
            }
        }
    }
    super::names::validate_labels(
        spec["template"]["metadata"].get("labels"),
        "spec.template.metadata.labels",
        c,
    );
    pod_spec(&spec["template"]["spec"], "spec.template.spec", c);
    if let Some(rp) = spec["template"]["spec"]["restartPolicy"].as_str() {
        if rp != "Always" {
            c.push(Cause::unsupported(
                "spec.template.spec.restartPolicy",
                &json!(rp),
                &["Always"],
            ));
        }
    }
}

fn job_spec(spec: &Value, at: &str, c: &mut Vec<Cause>) {
    pod_spec(&spec["template"]["spec"], &format!("{at}.template.spec"), c);
    let rp = spec["template"]["spec"]["restartPolicy"].as_str();
    if !matches!(rp, Some("OnFailure") | Some("Never")) {
        c.push(Cause::unsupported(
            format!("{at}.template.spec.restartPolicy"),
            &json!(rp.unwrap_or("")),
            &["OnFailure", "Never"],
        ));
    }
    for f in ["parallelism", "completions", "backoffLimit"] {
        if spec[f].as_i64().is_some_and(|n| n < 0) {
            c.push(Cause::invalid(
                format!("{at}.{f}"),
                &spec[f],
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// Minimal cron syntax check: five fields or a macro such as `@hourly`.
pub fn cron_fields(s: &str) -> Result<(), &'static str> {
    let s = s.trim();
    if s.starts_with('@') {
        return match s {
            "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@midnight"
            | "@hourly" => Ok(()),
            _ => Err("unknown macro"),
        };
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Err("expected exactly 5 fields");
    }
    let ok = fields.iter().all(|f| {
        f.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '*' | ',' | '-' | '/' | '?'))
    });
    if ok {
        Ok(())
    } else {
        Err("unexpected character")
    }
}

fn pod_spec(spec: &Value, at: &str, c: &mut Vec<Cause>) {
    let containers = spec["containers"].as_array();
    match containers {
        None => c.push(Cause::required(format!("{at}.containers"))),
        Some(list) if list.is_empty() => c.push(Cause::required(format!("{at}.containers"))),
        Some(_) => {}
    }
    let mut seen = std::collections::HashSet::new();
    for field in ["initContainers", "containers"] {
        for (i, ctr) in spec[field].as_array().into_iter().flatten().enumerate() {
            let p = format!("{at}.{field}[{i}]");
            let name = ctr["name"].as_str().unwrap_or("");
            if name.is_empty() {
                c.push(Cause::required(format!("{p}.name")));
            } else if !is_dns1123_label(name) {
                c.push(Cause::invalid(
                    format!("{p}.name"),
                    &ctr["name"],
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
                ));
            } else if !seen.insert(name.to_string()) {
                c.push(Cause::duplicate(format!("{p}.name"), &ctr["name"]));
            }
            if ctr["image"].as_str().unwrap_or("").trim().is_empty() {
                c.push(Cause::required(format!("{p}.image")));
            }
            for (j, port) in ctr["ports"].as_array().into_iter().flatten().enumerate() {
                let pp = format!("{p}.ports[{j}]");
                port_number(
                    &port["containerPort"],
                    &format!("{pp}.containerPort"),
                    true,
                    c,
                );
                protocol(&port["protocol"], &format!("{pp}.protocol"), c);
            }
            if let Some(pol) = ctr["imagePullPolicy"].as_str() {
                if !matches!(pol, "Always" | "IfNotPresent" | "Never") {
                    c.push(Cause::unsupported(
                        format!("{p}.imagePullPolicy"),
                        &ctr["imagePullPolicy"],
                        &["Always", "IfNotPresent", "Never"],
                    ));
                }
            }
        }
    }
    if let Some(rp) = spec["restartPolicy"].as_str() {
        if !matches!(rp, "Always" | "OnFailure" | "Never") {
            c.push(Cause::unsupported(
                format!("{at}.restartPolicy"),
                &spec["restartPolicy"],
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
    if let Some(dp) = spec["dnsPolicy"].as_str() {
        if !matches!(
            dp,
            "ClusterFirstWithHostNet" | "ClusterFirst" | "Default" | "None"
        ) {
            c.push(Cause::unsupported(
                format!("{at}.dnsPolicy"),
                &spec["dnsPolicy"],
                &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
            ));
        }
    }
    let mut vols = std::collections::HashSet::new();
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let name = v["name"].as_str().unwrap_or("");
        if name.is_empty() {
            c.push(Cause::required(format!("{at}.volumes[{i}].name")));
        } else if !vols.insert(name.to_string()) {
            c.push(Cause::duplicate(
                format!("{at}.volumes[{i}].name"),
                &v["name"],
            ));
        }
    }
}

fn port_number(v: &Value, field: &str, required: bool, c: &mut Vec<Cause>) {
    match v.as_i64() {
        None if required => c.push(Cause::required(field)),
        None => {}
        Some(n) if !(1..=65535).contains(&n) => c.push(Cause::invalid(
            field,
            v,
            "must be between 1 and 65535, inclusive",
        )),
        _ => {}
    }
}

fn protocol(v: &Value, field: &str, c: &mut Vec<Cause>) {
    if let Some(p) = v.as_str() {
        if !matches!(p, "TCP" | "UDP" | "SCTP") {
            c.push(Cause::unsupported(field, v, &["SCTP", "TCP", "UDP"]));
        }
    }
}

/// externalTrafficPolicy only where traffic comes from outside, both policies `Cluster`
/// or `Local`, allocateLoadBalancerNodePorts only on a LoadBalancer, as upstream.
fn traffic_policies(spec: &Value, ty: &str, c: &mut Vec<Cause>) {
    let external = matches!(ty, "NodePort" | "LoadBalancer")
        || (ty == "ClusterIP"
            && spec["externalIPs"]
                .as_array()
                .is_some_and(|a| !a.is_empty()));
    let etp = &spec["externalTrafficPolicy"];
    if let Some(v) = etp.as_str() {
        if !external {
            c.push(Cause::invalid(
                "spec.externalTrafficPolicy",
                etp,
                "may only be set for externally-accessible services",
            ));
        } else if !matches!(v, "Cluster" | "Local") {
            c.push(Cause::unsupported(
                "spec.externalTrafficPolicy",
                etp,
                &["Cluster", "Local"],
            ));
        }
    }
    let itp = &spec["internalTrafficPolicy"];
    if itp
        .as_str()
        .is_some_and(|v| !matches!(v, "Cluster" | "Local"))
    {
        c.push(Cause::unsupported(
            "spec.internalTrafficPolicy",
            itp,
            &["Cluster", "Local"],
        ));
    }
    if !spec["allocateLoadBalancerNodePorts"].is_null() && ty != "LoadBalancer" {
        c.push(Cause::forbidden(
            "spec.allocateLoadBalancerNodePorts",
            "may only be used when `type` is 'LoadBalancer'",
        ));
    }
}

fn service(obj: &Value, c: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        c.push(Cause::unsupported(
            "spec.type",
            &spec["type"],
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let ports = spec["ports"].as_array();
    let headless = spec["clusterIP"] == json!("None");
    if ty != "ExternalName" && !headless && ports.is_none_or(|p| p.is_empty()) {
        c.push(Cause::required("spec.ports"));
    }
    if ty == "ExternalName" && spec["externalName"].as_str().unwrap_or("").is_empty() {
        c.push(Cause::required("spec.externalName"));
    }
    traffic_policies(spec, ty, c);
    let multi = ports.is_some_and(|p| p.len() > 1);
    let mut names = std::collections::HashSet::new();
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let at = format!("spec.ports[{i}]");
        port_number(&p["port"], &format!("{at}.port"), true, c);
        protocol(&p["protocol"], &format!("{at}.protocol"), c);
        let name = p["name"].as_str().unwrap_or("");
        if multi && name.is_empty() {
            c.push(Cause::required(format!("{at}.name")));
        }
        if !name.is_empty() && !names.insert(name.to_string()) {
            c.push(Cause::duplicate(format!("{at}.name"), &p["name"]));
        }
        if let Some(np) = p["nodePort"].as_i64() {
            if ty == "ClusterIP" && np != 0 {
                c.push(Cause::forbidden(
                    format!("{at}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
        if let Some(tp) = p["targetPort"].as_i64() {
            if !(1..=65535).contains(&tp) {
                c.push(Cause::invalid(
                    format!("{at}.targetPort"),
                    &p["targetPort"],
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
    }
    if let Some(aff) = spec["sessionAffinity"].as_str() {
        if !matches!(aff, "None" | "ClientIP") {
            c.push(Cause::unsupported(
                "spec.sessionAffinity",
                &spec["sessionAffinity"],
                &["ClientIP", "None"],
            ));
        }
    }
}

/// Kubernetes lets a running pod change only images, activeDeadlineSeconds, tolerations
/// (additions) and terminationGracePeriodSeconds.
fn pod_update(old: &Value, new: &Value, c: &mut Vec<Cause>) {
    let mask = |spec: &Value| {
        let mut s = spec.clone();
        for list in ["containers", "initContainers"] {
            if let Some(arr) = s[list].as_array_mut() {
                for ctr in arr {
                    ctr["image"] = Value::Null;
                }
            }
        }
        if let Some(o) = s.as_object_mut() {
            o.remove("activeDeadlineSeconds");
            o.remove("tolerations");
            o.remove("terminationGracePeriodSeconds");
            // The scheduler binds through the binding subresource, which sets nodeName.
            o.remove("nodeName");
        }
        s
    };
    if mask(&old["spec"]) != mask(&new["spec"]) {
        c.push(Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
    let (o, n) = (&old["spec"]["nodeName"], &new["spec"]["nodeName"]);
    if o.as_str().is_some_and(|s| !s.is_empty()) && o != n {
        c.push(Cause::forbidden("spec.nodeName", "field is immutable"));
    }
}
