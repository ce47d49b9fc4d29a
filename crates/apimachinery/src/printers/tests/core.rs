//! Core (`v1`) kinds: headers and cells as `kubectl get` shows them.

use serde_json::json;

use super::{cells, headers, wide_headers};

#[test]
fn pod_headers() {
    assert_eq!(
        headers("", "Pod"),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );
    assert_eq!(
        wide_headers("", "Pod"),
        ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]
    );
    let cols = super::columns_for("", "Pod");
    assert_eq!(cols[0].format, "name");
    assert_eq!(cols[3].type_, "string");
}

#[test]
fn namespace() {
    assert_eq!(headers("", "Namespace"), ["NAME", "STATUS", "AGE"]);
    let ns = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "kube-system", "creationTimestamp": "2024-04-10T12:00:00Z"},
        "status": {"phase": "Active"}});
    assert_eq!(
        cells("", "Namespace", &ns),
        [json!("kube-system"), json!("Active"), json!("30d")]
    );
    let mut terminating = ns.clone();
    terminating["status"]["phase"] = json!("Terminating");
    assert_eq!(
        cells("", "Namespace", &terminating)[1],
        json!("Terminating")
    );
}

#[test]
fn service_cluster_ip() {
    assert_eq!(
        headers("", "Service"),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    assert_eq!(wide_headers("", "Service"), ["SELECTOR"]);
    let svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default",
                     "creationTimestamp": "2024-05-10T11:55:00Z"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.12.34", "clusterIPs": ["10.96.12.34"],
                 "selector": {"app": "web", "tier": "frontend"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                           {"name": "dns", "port": 53, "protocol": "UDP"}]}});
    assert_eq!(
        cells("", "Service", &svc),
        [
            json!("web"),
            json!("ClusterIP"),
            json!("10.96.12.34"),
            json!("<none>"),
            json!("80/TCP,53/UDP"),
            json!("5m"),
            json!("app=web,tier=frontend"),
        ]
    );
}

#[test]
fn service_node_port_and_load_balancer() {
    let node_port = json!({"metadata": {"name": "np", "creationTimestamp": "2024-05-10T11:00:00Z"},
        "spec": {"type": "NodePort", "clusterIPs": ["10.96.0.20"],
                 "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"},
                           {"port": 443, "nodePort": 30443}]}});
    let c = cells("", "Service", &node_port);
    assert_eq!(c[3], json!("<none>"));
    assert_eq!(c[4], json!("80:30080/TCP,443:30443/TCP"));
    assert_eq!(c[6], json!("<none>"));

    let pending = json!({"metadata": {"name": "lb"},
        "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.21"],
                 "ports": [{"port": 443, "nodePort": 31443, "protocol": "TCP"}]}});
    let c = cells("", "Service", &pending);
    assert_eq!(c[3], json!("<pending>"));
    assert_eq!(c[5], json!("<unknown>"));

    let mut ready = pending.clone();
    ready["status"] = json!({"loadBalancer": {"ingress": [
        {"ip": "203.0.113.10"}, {"hostname": "lb.example.com"}, {"ip": "203.0.113.10"}]}});
    ready["spec"]["externalIPs"] = json!(["198.51.100.7"]);
    assert_eq!(
        cells("", "Service", &ready)[3],
        json!("203.0.113.10,lb.example.com,198.51.100.7")
    );

    let external_name = json!({"metadata": {"name": "db"},
        "spec": {"type": "ExternalName", "externalName": "db.example.com"}});
    let c = cells("", "Service", &external_name);
    assert_eq!(
        &c[1..5],
        &[
            json!("ExternalName"),
            json!("<none>"),
            json!("db.example.com"),
            json!("<none>")
        ]
    );

    let headless = json!({"metadata": {"name": "pg"},
        "spec": {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 5432}]}});
    let c = cells("", "Service", &headless);
    // Type and protocol fall back to the API defaults.
    assert_eq!(
        &c[1..5],
        &[
            json!("ClusterIP"),
            json!("None"),
            json!("<none>"),
            json!("5432/TCP")
        ]
    );
}

#[test]
fn endpoints() {
    assert_eq!(headers("", "Endpoints"), ["NAME", "ENDPOINTS", "AGE"]);
    let ep = json!({"metadata": {"name": "web", "creationTimestamp": "2024-05-10T10:00:00Z"},
        "subsets": [{"addresses": [{"ip": "10.244.1.5"}, {"ip": "10.244.2.6"}],
                     "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}]}]});
    assert_eq!(
        cells("", "Endpoints", &ep),
        [
            json!("web"),
            json!("10.244.1.5:8080,10.244.2.6:8080,10.244.1.5:9090 + 1 more..."),
            json!("120m")
        ]
    );
    let empty = json!({"metadata": {"name": "none"}});
    assert_eq!(cells("", "Endpoints", &empty)[1], json!("<none>"));
    let headless = json!({"metadata": {"name": "h"},
        "subsets": [{"addresses": [{"ip": "fd00::5"}]}]});
    assert_eq!(cells("", "Endpoints", &headless)[1], json!("fd00::5"));
    let v6 = json!({"metadata": {"name": "v6"},
        "subsets": [{"addresses": [{"ip": "fd00::5"}], "ports": [{"port": 80}]}]});
    assert_eq!(cells("", "Endpoints", &v6)[1], json!("[fd00::5]:80"));
}

#[test]
fn config_map_secret_service_account() {
    assert_eq!(headers("", "ConfigMap"), ["NAME", "DATA", "AGE"]);
    let cm = json!({"metadata": {"name": "kube-root-ca.crt", "creationTimestamp": "2024-05-07T09:00:00Z"},
        "data": {"ca.crt": "..."}, "binaryData": {"logo.png": "iVBOR..."}});
    assert_eq!(
        cells("", "ConfigMap", &cm),
        [json!("kube-root-ca.crt"), json!(2), json!("3d3h")]
    );

    assert_eq!(headers("", "Secret"), ["NAME", "TYPE", "DATA", "AGE"]);
    let tls = json!({"metadata": {"name": "web-tls", "creationTimestamp": "2024-05-10T11:59:50Z"},
        "type": "kubernetes.io/tls", "data": {"tls.crt": "LS0t", "tls.key": "LS0t"}});
    assert_eq!(
        cells("", "Secret", &tls),
        [
            json!("web-tls"),
            json!("kubernetes.io/tls"),
            json!(2),
            json!("10s")
        ]
    );
    let opaque = json!({"metadata": {"name": "empty"}});
    assert_eq!(
        &cells("", "Secret", &opaque)[1..3],
        &[json!("Opaque"), json!(0)]
    );

    assert_eq!(headers("", "ServiceAccount"), ["NAME", "SECRETS", "AGE"]);
    let sa = json!({"metadata": {"name": "default", "creationTimestamp": "2024-01-01T00:00:00Z"}});
    assert_eq!(
        cells("", "ServiceAccount", &sa),
        [json!("default"), json!(0), json!("130d")]
    );
}

#[test]
fn node() {
    assert_eq!(
        headers("", "Node"),
        ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    );
    assert_eq!(
        wide_headers("", "Node"),
        [
            "INTERNAL-IP",
            "EXTERNAL-IP",
            "OS-IMAGE",
            "KERNEL-VERSION",
            "CONTAINER-RUNTIME"
        ]
    );
    let node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "cp-1", "creationTimestamp": "2024-03-01T08:00:00Z",
            "labels": {"node-role.kubernetes.io/control-plane": "",
                       "node-role.kubernetes.io/etcd": "", "kubernetes.io/hostname": "cp-1"}},
        "spec": {"unschedulable": true},
        "status": {
            "conditions": [{"type": "MemoryPressure", "status": "False"},
                           {"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": "192.168.1.10"},
                          {"type": "Hostname", "address": "cp-1"}],
            "nodeInfo": {"kubeletVersion": "v1.32.3", "osImage": "Ubuntu 24.04.1 LTS",
                         "kernelVersion": "6.8.0-45-generic",
                         "containerRuntimeVersion": "containerd://1.7.22"}}});
    assert_eq!(
        cells("", "Node", &node),
        [
            json!("cp-1"),
            json!("Ready,SchedulingDisabled"),
            json!("control-plane,etcd"),
            json!("70d"),
            json!("v1.32.3"),
            json!("192.168.1.10"),
            json!("<none>"),
            json!("Ubuntu 24.04.1 LTS"),
            json!("6.8.0-45-generic"),
            json!("containerd://1.7.22"),
        ]
    );
    let worker = json!({"metadata": {"name": "w", "labels": {"kubernetes.io/role": "worker"}},
        "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}});
    let c = cells("", "Node", &worker);
    assert_eq!(&c[1..3], &[json!("NotReady"), json!("worker")]);
    assert_eq!(c[7], json!("<unknown>"));
    let fresh = json!({"metadata": {"name": "new"}});
    assert_eq!(
        &cells("", "Node", &fresh)[1..3],
        &[json!("Unknown"), json!("<none>")]
    );
}

#[test]
fn persistent_volume() {
    assert_eq!(
        headers("", "PersistentVolume"),
        [
            "NAME",
            "CAPACITY",
            "ACCESS MODES",
            "RECLAIM POLICY",
            "STATUS",
            "CLAIM",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "REASON",
            "AGE"
        ]
    );
    assert_eq!(wide_headers("", "PersistentVolume"), ["VOLUMEMODE"]);
    let pv = json!({"metadata": {"name": "pvc-3f1c", "creationTimestamp": "2024-05-09T12:00:00Z"},
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "standard",
                 "volumeMode": "Filesystem",
                 "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "db", "name": "data-pg-0"}},
        "status": {"phase": "Bound"}});
    assert_eq!(
        cells("", "PersistentVolume", &pv),
        [
            json!("pvc-3f1c"),
            json!("10Gi"),
            json!("RWO"),
            json!("Delete"),
            json!("Bound"),
            json!("db/data-pg-0"),
            json!("standard"),
            json!("<unset>"),
            json!(""),
            json!("24h"),
            json!("Filesystem"),
        ]
    );
    let mut deleting = pv.clone();
    deleting["metadata"]["deletionTimestamp"] = json!("2024-05-10T11:00:00Z");
    deleting["spec"]["capacity"]["storage"] = json!("1024Mi");
    let c = cells("", "PersistentVolume", &deleting);
    assert_eq!(c[1], json!("1Gi"));
    assert_eq!(c[4], json!("Terminating"));
}

#[test]
fn persistent_volume_claim() {
    assert_eq!(
        headers("", "PersistentVolumeClaim"),
        [
            "NAME",
            "STATUS",
            "VOLUME",
            "CAPACITY",
            "ACCESS MODES",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "AGE"
        ]
    );
    let bound = json!({"metadata": {"name": "data-pg-0", "creationTimestamp": "2024-05-09T12:00:00Z"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}},
                 "storageClassName": "standard", "volumeName": "pvc-3f1c", "volumeMode": "Filesystem"},
        "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                   "capacity": {"storage": "10Gi"}}});
    assert_eq!(
        cells("", "PersistentVolumeClaim", &bound),
        [
            json!("data-pg-0"),
            json!("Bound"),
            json!("pvc-3f1c"),
            json!("10Gi"),
            json!("RWO,ROX"),
            json!("standard"),
            json!("<unset>"),
            json!("24h"),
            json!("Filesystem"),
        ]
    );
    let pending = json!({"metadata": {"name": "claim",
            "annotations": {"volume.beta.kubernetes.io/storage-class": "legacy"}},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "fast",
                 "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": "Pending"}});
    let c = cells("", "PersistentVolumeClaim", &pending);
    // Capacity and modes stay empty until bound; the beta annotation wins over the field.
    assert_eq!(
        &c[1..6],
        &[
            json!("Pending"),
            json!(""),
            json!(""),
            json!(""),
            json!("legacy")
        ]
    );
}

#[test]
fn resource_quota() {
    assert_eq!(
        headers("", "ResourceQuota"),
        ["NAME", "REQUEST", "LIMIT", "AGE"]
    );
    let rq = json!({"metadata": {"name": "compute", "creationTimestamp": "2024-05-10T06:00:00Z"},
        "spec": {"hard": {"pods": "10"}},
        "status": {
            "hard": {"requests.cpu": "4", "requests.memory": "8Gi", "limits.cpu": "8",
                     "limits.memory": "16Gi", "pods": "10"},
            "used": {"requests.cpu": "1500m", "requests.memory": "1024Mi", "limits.cpu": "3",
                     "pods": "4"}}});
    assert_eq!(
        cells("", "ResourceQuota", &rq),
        [
            json!("compute"),
            json!("pods: 4/10, requests.cpu: 1500m/4, requests.memory: 1Gi/8Gi"),
            json!("limits.cpu: 3/8, limits.memory: 0/16Gi"),
            json!("6h"),
        ]
    );
}

#[test]
fn limit_range_uses_the_generic_table() {
    assert_eq!(headers("", "LimitRange"), ["NAME", "CREATED AT"]);
    let lr = json!({"metadata": {"name": "limits", "creationTimestamp": "2024-05-01T08:30:00Z"},
        "spec": {"limits": [{"type": "Container", "default": {"cpu": "500m"}}]}});
    assert_eq!(
        cells("", "LimitRange", &lr),
        [json!("limits"), json!("2024-05-01T08:30:00Z")]
    );
    assert_eq!(super::columns_for("", "LimitRange")[1].type_, "date");
}

#[test]
fn replication_controller_and_pod_template() {
    assert_eq!(
        headers("", "ReplicationController"),
        ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    );
    let rc = json!({"metadata": {"name": "legacy", "creationTimestamp": "2024-05-10T11:00:00Z"},
        "spec": {"replicas": 3, "selector": {"app": "legacy"},
                 "template": {"spec": {"containers": [{"name": "app", "image": "legacy:2"}]}}},
        "status": {"replicas": 3, "readyReplicas": 2}});
    assert_eq!(
        cells("", "ReplicationController", &rc),
        [
            json!("legacy"),
            json!(3),
            json!(3),
            json!(2),
            json!("60m"),
            json!("app"),
            json!("legacy:2"),
            json!("app=legacy")
        ]
    );

    assert_eq!(
        headers("", "PodTemplate"),
        ["NAME", "CONTAINERS", "IMAGES", "POD LABELS"]
    );
    let pt = json!({"metadata": {"name": "tmpl"},
        "template": {"metadata": {"labels": {"app": "x"}},
                     "spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}}});
    assert_eq!(
        cells("", "PodTemplate", &pt),
        [
            json!("tmpl"),
            json!("a,b"),
            json!("a:1,b:1"),
            json!("app=x")
        ]
    );
}

#[test]
fn component_status() {
    let cs = json!({"metadata": {"name": "etcd-0"},
        "conditions": [{"type": "Healthy", "status": "True", "message": "ok"}]});
    assert_eq!(
        cells("", "ComponentStatus", &cs),
        [json!("etcd-0"), json!("Healthy"), json!("ok"), json!("")]
    );
}
