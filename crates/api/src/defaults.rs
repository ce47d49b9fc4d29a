//! Defaulting of built-in kinds, as the Kubernetes API server does on every write, so that
//! what a user reads back (and what controllers act on) has the same filled-in fields:
//! restartPolicy, dnsPolicy, imagePullPolicy, protocol, strategy, revisionHistoryLimit, ...

use crate::registry::Resource;
use serde_json::{json, Value};

fn set_default(obj: &mut Value, key: &str, v: Value) {
    if let Some(m) = obj.as_object_mut() {
        let e = m.entry(key.to_string()).or_insert(Value::Null);
        if e.is_null() {
            *e = v;
        }
    }
}

pub fn apply(res: &Resource, obj: &mut Value) {
    if res.is_custom() {
        return;
    }
    match (res.group.as_str(), res.kind.as_str()) {
        ("", "Pod") => {
            pod_spec(&mut obj["spec"]);
            requests_from_limits(&mut obj["spec"]);
        }
        ("", "LimitRange") => corral_apimachinery::limitrange::set_defaults(obj),
        ("", "Service") => service(&mut obj["spec"]),
        ("", "Secret") => {
            set_default(obj, "type", json!("Opaque"));
            // stringData is write-only: it is merged into data, base64-encoded.
            if let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
                use base64::Engine;
                if let Some(sd) = sd.as_object() {
                    set_default(obj, "data", json!({}));
                    for (k, v) in sd {
                        let enc = base64::engine::general_purpose::STANDARD
                            .encode(v.as_str().unwrap_or_default());
                        obj["data"][k] = json!(enc);
                    }
                }
            }
        }
        ("", "Namespace") => {
            set_default(obj, "spec", json!({}));
            if obj["metadata"]["deletionTimestamp"].is_null() {
                obj["status"] = json!({"phase": "Active"});
            }
            let name = obj["metadata"]["name"].clone();
            set_default(&mut obj["metadata"], "labels", json!({}));
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
        }
        ("", "PersistentVolumeClaim") => {
            set_default(&mut obj["spec"], "volumeMode", json!("Filesystem"));
            set_default(obj, "status", json!({"phase": "Pending"}));
        }
        ("", "PersistentVolume") => {
            set_default(&mut obj["spec"], "volumeMode", json!("Filesystem"));
            set_default(
                &mut obj["spec"],
                "persistentVolumeReclaimPolicy",
                json!("Retain"),
            );
            set_default(obj, "status", json!({"phase": "Pending"}));
        }
        ("apps", "Deployment") => {
            let spec = &mut obj["spec"];
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            set_default(spec, "strategy", json!({"type": "RollingUpdate"}));
            if spec["strategy"]["type"].is_null() {
                spec["strategy"]["type"] = json!("RollingUpdate");
            }
            if spec["strategy"]["type"] == json!("RollingUpdate") {
                set_default(&mut spec["strategy"], "rollingUpdate", json!({}));
                let ru = &mut spec["strategy"]["rollingUpdate"];
                set_default(ru, "maxUnavailable", json!("25%"));
                set_default(ru, "maxSurge", json!("25%"));
            }
            template(spec);
        }
        ("apps", "ReplicaSet") => {
            set_default(&mut obj["spec"], "replicas", json!(1));
            template(&mut obj["spec"]);
        }
        ("apps", "StatefulSet") => {
            let spec = &mut obj["spec"];
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            set_default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            template(spec);
        }
        ("apps", "DaemonSet") => {
            let spec = &mut obj["spec"];
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
            template(spec);
        }
        ("batch", "Job") => job_spec(&mut obj["spec"]),
        ("batch", "CronJob") => {
            let spec = &mut obj["spec"];
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            job_spec(&mut spec["jobTemplate"]["spec"]);
        }
        ("storage.k8s.io", "StorageClass") => {
            set_default(obj, "reclaimPolicy", json!("Delete"));
            set_default(obj, "volumeBindingMode", json!("Immediate"));
        }
        ("autoscaling", _) => {
            set_default(&mut obj["spec"], "minReplicas", json!(1));
        }
        ("networking.k8s.io", "NetworkPolicy") if obj["spec"]["policyTypes"].is_null() => {
            let mut types = vec![json!("Ingress")];
            if obj["spec"]["egress"].is_array() {
                types.push(json!("Egress"));
            }
            obj["spec"]["policyTypes"] = json!(types);
        }
        _ => {}
    }
}

fn template(spec: &mut Value) {
    if spec["template"].is_object() {
        pod_spec(&mut spec["template"]["spec"]);
    }
}

/// Defaults that exist only when an object is created (they need its uid, or are admission
/// plugins in Kubernetes): a Job's generated selector and labels, and a Pod's
/// DefaultTolerationSeconds.
pub fn on_create(res: &Resource, obj: &mut Value) {
    match (res.group.as_str(), res.kind.as_str()) {
        ("batch", "Job") => job_selector(obj),
        ("", "Pod") => default_tolerations(&mut obj["spec"]),
        _ => {}
    }
}

/// Kubernetes' Job strategy: unless `manualSelector`, the selector is the Job's uid and
/// the template gets the labels that select it.
fn job_selector(obj: &mut Value) {
    if obj["spec"]["manualSelector"] == json!(true) || !obj["spec"].is_object() {
        return;
    }
    let uid = obj["metadata"]["uid"].clone();
    let name = obj["metadata"]["name"].clone();
    let labels = json!({
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    });
    if obj["spec"]["selector"].is_null() {
        obj["spec"]["selector"] =
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    }
    if !obj["spec"]["template"]["metadata"].is_object() {
        obj["spec"]["template"]["metadata"] = json!({});
    }
    let tl = &mut obj["spec"]["template"]["metadata"]["labels"];
    if !tl.is_object() {
        *tl = json!({});
    }
    if let (Some(m), Some(add)) = (tl.as_object_mut(), labels.as_object()) {
        for (k, v) in add {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// The DefaultTolerationSeconds admission plugin: a pod tolerates its node being
/// not-ready or unreachable for 300 s before it is evicted, unless it says otherwise.
fn default_tolerations(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    let list = spec["tolerations"].as_array().cloned().unwrap_or_default();
    let mut out = list.clone();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let covered = list.iter().any(|t| {
            (t["key"] == json!(key) || (t["key"].is_null() && t["operator"] == json!("Exists")))
                && (t["effect"].is_null()
                    || t["effect"] == json!("NoExecute")
                    || t["effect"] == json!(""))
        });
        if !covered {
            out.push(json!({
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }));
        }
    }
    spec["tolerations"] = Value::Array(out);
}

fn job_spec(spec: &mut Value) {
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    if spec["completions"].is_null() && spec["parallelism"] == json!(1) {
        spec["completions"] = json!(1);
    }
    template(spec);
}

pub fn pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers"] {
        if let Some(arr) = spec[list].as_array_mut() {
            for c in arr {
                container(c);
            }
        }
    }
    if let Some(vols) = spec["volumes"].as_array_mut() {
        for v in vols {
            for (src, mode) in [
                ("configMap", 420),
                ("secret", 420),
                ("downwardAPI", 420),
                ("projected", 420),
            ] {
                if v[src].is_object() {
                    set_default(&mut v[src], "defaultMode", json!(mode));
                }
            }
            if v["hostPath"].is_object() {
                set_default(&mut v["hostPath"], "type", json!(""));
            }
        }
    }
}

/// A pod's container that sets a limit but no request for a resource requests its limit
/// (SetDefaults_Pod; templates are left as written).
fn requests_from_limits(spec: &mut Value) {
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            let Some(limits) = c["resources"]["limits"].as_object().cloned() else {
                continue;
            };
            if limits.is_empty() {
                continue;
            }
            if !c["resources"]["requests"].is_object() {
                c["resources"]["requests"] = json!({});
            }
            for (k, v) in limits {
                if c["resources"]["requests"].get(&k).is_none() {
                    c["resources"]["requests"][k] = v;
                }
            }
        }
    }
}

fn container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or("").to_string();
    let tag_latest = {
        let last = image.rsplit('/').next().unwrap_or("");
        !last.contains('@') && (!last.contains(':') || last.ends_with(":latest"))
    };
    set_default(
        c,
        "imagePullPolicy",
        json!(if tag_latest { "Always" } else { "IfNotPresent" }),
    );
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    if let Some(ports) = c["ports"].as_array_mut() {
        for p in ports {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if c[probe].is_object() {
            let p = &mut c[probe];
            set_default(p, "timeoutSeconds", json!(1));
            set_default(p, "periodSeconds", json!(10));
            set_default(p, "successThreshold", json!(1));
            set_default(p, "failureThreshold", json!(3));
            if p["httpGet"].is_object() {
                set_default(&mut p["httpGet"], "path", json!("/"));
                set_default(&mut p["httpGet"], "scheme", json!("HTTP"));
            }
        }
    }
}

fn service(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "type", json!("ClusterIP"));
    let ty = spec["type"].as_str().unwrap_or("").to_string();
    if ty != "ExternalName" {
        set_default(spec, "sessionAffinity", json!("None"));
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
        set_default(spec, "ipFamilies", json!(["IPv4"]));
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if let Some(ports) = spec["ports"].as_array_mut() {
        for p in ports {
            set_default(p, "protocol", json!("TCP"));
            if p["targetPort"].is_null() {
                p["targetPort"] = p["port"].clone();
            }
        }
    }
}
