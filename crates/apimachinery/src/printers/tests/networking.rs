//! `networking.k8s.io` and `discovery.k8s.io` kinds.

use serde_json::json;

use super::{cells, headers};

#[test]
fn ingress() {
    assert_eq!(
        headers("networking.k8s.io", "Ingress"),
        ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]
    );
    let ing = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web", "creationTimestamp": "2024-05-03T12:00:00Z"},
        "spec": {"ingressClassName": "nginx",
                 "tls": [{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
                 "rules": [{"host": "shop.example.com"}, {"host": "api.example.com"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.168.49.2"}]}}});
    assert_eq!(
        cells("networking.k8s.io", "Ingress", &ing),
        [
            json!("web"),
            json!("nginx"),
            json!("shop.example.com,api.example.com"),
            json!("192.168.49.2"),
            json!("80, 443"),
            json!("7d"),
        ]
    );
    let bare = json!({"metadata": {"name": "default-backend"},
        "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}});
    let c = cells("networking.k8s.io", "Ingress", &bare);
    assert_eq!(
        &c[1..5],
        &[json!("<none>"), json!("*"), json!(""), json!("80")]
    );
}

#[test]
fn ingress_class() {
    assert_eq!(
        headers("networking.k8s.io", "IngressClass"),
        ["NAME", "CONTROLLER", "PARAMETERS", "AGE"]
    );
    let ic = json!({"metadata": {"name": "nginx", "creationTimestamp": "2024-05-10T11:00:00Z"},
        "spec": {"controller": "k8s.io/ingress-nginx"}});
    assert_eq!(
        cells("networking.k8s.io", "IngressClass", &ic),
        [
            json!("nginx"),
            json!("k8s.io/ingress-nginx"),
            json!("<none>"),
            json!("60m")
        ]
    );
    let with_params = json!({"metadata": {"name": "lb"},
        "spec": {"controller": "example.com/lb",
                 "parameters": {"apiGroup": "k8s.example.com", "kind": "IngressParameters",
                                "name": "external-lb", "scope": "Cluster"}}});
    assert_eq!(
        cells("networking.k8s.io", "IngressClass", &with_params)[2],
        json!("IngressParameters.k8s.example.com/external-lb")
    );
}

#[test]
fn network_policy() {
    assert_eq!(
        headers("networking.k8s.io", "NetworkPolicy"),
        ["NAME", "POD-SELECTOR", "AGE"]
    );
    let np = json!({"metadata": {"name": "db-allow", "creationTimestamp": "2024-05-10T11:59:00Z"},
        "spec": {"podSelector": {"matchLabels": {"role": "db"}}, "policyTypes": ["Ingress"]}});
    assert_eq!(
        cells("networking.k8s.io", "NetworkPolicy", &np),
        [json!("db-allow"), json!("role=db"), json!("60s")]
    );
    let deny_all = json!({"metadata": {"name": "deny-all"}, "spec": {"podSelector": {}}});
    assert_eq!(
        cells("networking.k8s.io", "NetworkPolicy", &deny_all)[1],
        json!("<none>")
    );
}

#[test]
fn endpoint_slice() {
    assert_eq!(
        headers("discovery.k8s.io", "EndpointSlice"),
        ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    );
    let eps = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc12", "creationTimestamp": "2024-05-10T09:00:00Z",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
            {"addresses": ["10.244.2.6"], "conditions": {"ready": true}},
            {"addresses": ["10.244.3.7"], "conditions": {"ready": false}},
            {"addresses": ["10.244.4.8"], "conditions": {"ready": true}}]});
    assert_eq!(
        cells("discovery.k8s.io", "EndpointSlice", &eps),
        [
            json!("web-abc12"),
            json!("IPv4"),
            json!("8080"),
            json!("10.244.1.5,10.244.2.6,10.244.3.7 + 1 more..."),
            json!("3h"),
        ]
    );
    let empty = json!({"metadata": {"name": "e"}, "addressType": "IPv6",
        "ports": [{"name": "named"}, {}], "endpoints": []});
    let c = cells("discovery.k8s.io", "EndpointSlice", &empty);
    assert_eq!(&c[2..4], &[json!("named,*"), json!("<unset>")]);
}

#[test]
fn service_cidr_and_ip_address() {
    let cidr = json!({"metadata": {"name": "kubernetes"},
        "spec": {"cidrs": ["10.96.0.0/12", "fd00:10:96::/112"]}});
    assert_eq!(
        cells("networking.k8s.io", "ServiceCIDR", &cidr),
        [
            json!("kubernetes"),
            json!("10.96.0.0/12,fd00:10:96::/112"),
            json!("<unknown>")
        ]
    );
    // Kubernetes sends an AGE cell beyond the two declared IPAddress columns.
    let ip = json!({"metadata": {"name": "10.96.0.1"},
        "spec": {"parentRef": {"group": "", "resource": "services", "namespace": "default",
                               "name": "kubernetes"}}});
    let c = super::row_cells("networking.k8s.io", "IPAddress", &ip, super::now());
    assert_eq!(
        c,
        [
            json!("10.96.0.1"),
            json!("services/default/kubernetes"),
            json!("<unknown>")
        ]
    );
}
