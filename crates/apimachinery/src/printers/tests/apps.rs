//! `apps` kinds: Deployment, ReplicaSet, StatefulSet, DaemonSet, ControllerRevision.

use serde_json::{json, Value};

use super::{cells, headers, wide_headers};

fn template(containers: Value) -> Value {
    json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}})
}

#[test]
fn deployment() {
    assert_eq!(
        headers("apps", "Deployment"),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert_eq!(
        wide_headers("apps", "Deployment"),
        ["CONTAINERS", "IMAGES", "SELECTOR"]
    );
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2024-05-08T12:00:00Z"},
        "spec": {"replicas": 3,
                 "selector": {"matchLabels": {"app": "web"}},
                 "template": template(json!([
                     {"name": "nginx", "image": "nginx:1.27"},
                     {"name": "exporter", "image": "nginx/nginx-prometheus-exporter:1.3"}]))},
        "status": {"replicas": 3, "updatedReplicas": 3, "readyReplicas": 2, "availableReplicas": 2}});
    assert_eq!(
        cells("apps", "Deployment", &deploy),
        [
            json!("web"),
            json!("2/3"),
            json!(3),
            json!(2),
            json!("2d"),
            json!("nginx,exporter"),
            json!("nginx:1.27,nginx/nginx-prometheus-exporter:1.3"),
            json!("app=web"),
        ]
    );
    // A freshly created deployment without status; replicas defaults to 1.
    let fresh = json!({"metadata": {"name": "new"},
        "spec": {"selector": {"matchLabels": {"app": "new"}}, "template": template(json!([]))}});
    let c = cells("apps", "Deployment", &fresh);
    assert_eq!(&c[1..4], &[json!("0/1"), json!(0), json!(0)]);
    // The legacy group prints the same way.
    assert_eq!(cells("extensions", "Deployment", &deploy)[1], json!("2/3"));
}

#[test]
fn replica_set() {
    assert_eq!(
        headers("apps", "ReplicaSet"),
        ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    );
    let rs = json!({"metadata": {"name": "web-7d4b9c8f5", "creationTimestamp": "2024-05-10T11:58:30Z"},
        "spec": {"replicas": 3,
                 "selector": {"matchLabels": {"app": "web", "pod-template-hash": "7d4b9c8f5"}},
                 "template": template(json!([{"name": "nginx", "image": "nginx:1.27"}]))},
        "status": {"replicas": 3, "readyReplicas": 1}});
    assert_eq!(
        cells("apps", "ReplicaSet", &rs),
        [
            json!("web-7d4b9c8f5"),
            json!(3),
            json!(3),
            json!(1),
            json!("90s"),
            json!("nginx"),
            json!("nginx:1.27"),
            json!("app=web,pod-template-hash=7d4b9c8f5"),
        ]
    );
}

#[test]
fn stateful_set() {
    assert_eq!(headers("apps", "StatefulSet"), ["NAME", "READY", "AGE"]);
    assert_eq!(
        wide_headers("apps", "StatefulSet"),
        ["CONTAINERS", "IMAGES"]
    );
    let sts = json!({"metadata": {"name": "pg", "creationTimestamp": "2024-05-10T08:30:00Z"},
        "spec": {"replicas": 3, "serviceName": "pg", "selector": {"matchLabels": {"app": "pg"}},
                 "template": template(json!([{"name": "postgres", "image": "postgres:16"}]))},
        "status": {"replicas": 3, "readyReplicas": 3}});
    assert_eq!(
        cells("apps", "StatefulSet", &sts),
        [
            json!("pg"),
            json!("3/3"),
            json!("3h30m"),
            json!("postgres"),
            json!("postgres:16")
        ]
    );
}

#[test]
fn daemon_set() {
    assert_eq!(
        headers("apps", "DaemonSet"),
        [
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE SELECTOR",
            "AGE"
        ]
    );
    let ds = json!({"metadata": {"name": "kube-proxy", "namespace": "kube-system",
                                 "creationTimestamp": "2024-04-30T12:00:00Z"},
        "spec": {"selector": {"matchLabels": {"k8s-app": "kube-proxy"}},
                 "template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"},
                              "containers": [{"name": "kube-proxy",
                                              "image": "registry.k8s.io/kube-proxy:v1.32.3"}]}}},
        "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 3,
                   "updatedNumberScheduled": 3, "numberAvailable": 3}});
    assert_eq!(
        cells("apps", "DaemonSet", &ds),
        [
            json!("kube-proxy"),
            json!(3),
            json!(3),
            json!(3),
            json!(3),
            json!(3),
            json!("kubernetes.io/os=linux"),
            json!("10d"),
            json!("kube-proxy"),
            json!("registry.k8s.io/kube-proxy:v1.32.3"),
            json!("k8s-app=kube-proxy"),
        ]
    );
    let no_selector = json!({"metadata": {"name": "x"}, "spec": {"template": {"spec": {}}}});
    assert_eq!(cells("apps", "DaemonSet", &no_selector)[6], json!("<none>"));
}

#[test]
fn controller_revision() {
    assert_eq!(
        headers("apps", "ControllerRevision"),
        ["NAME", "CONTROLLER", "REVISION", "AGE"]
    );
    let rev = json!({"metadata": {"name": "kube-proxy-6d4f8b7c9", "creationTimestamp": "2024-04-30T12:00:00Z",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "kube-proxy",
                             "uid": "1", "controller": true, "blockOwnerDeletion": true}]},
        "revision": 2, "data": {}});
    assert_eq!(
        cells("apps", "ControllerRevision", &rev),
        [
            json!("kube-proxy-6d4f8b7c9"),
            json!("daemonset.apps/kube-proxy"),
            json!(2),
            json!("10d")
        ]
    );
    let orphan = json!({"metadata": {"name": "orphan"}, "revision": 1});
    assert_eq!(
        cells("apps", "ControllerRevision", &orphan)[1],
        json!("<none>")
    );
}
