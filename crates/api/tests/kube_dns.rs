//! The API server creates the cluster DNS Service (`kube-system/kube-dns`) at start-up, on
//! the range's tenth address as k3s does, and keeps that address for it: no other Service
//! is given it, and a store from before the reservation still starts.

use axum::body::Body;
use axum::http::{Method, Request};
use corral_store::{Compare, EmbeddedOptions, Store};
use serde_json::{json, Value};
use tower::ServiceExt;

async fn call(
    router: &axum::Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(match body {
            Some(b) => Body::from(serde_json::to_vec(&b).unwrap()),
            None => Body::empty(),
        })
        .unwrap();
    req.extensions_mut().insert(corral_api::Identity {
        user: "test".into(),
        groups: vec!["system:masters".into(), "system:authenticated".into()],
    });
    let resp = router.clone().oneshot(req).await.unwrap();
    let code = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn store(dir: &std::path::Path) -> Store {
    let opts = EmbeddedOptions {
        fsync: false,
        ..Default::default()
    };
    Store::open_embedded(dir, opts).unwrap()
}

async fn start(
    store: &Store,
    config: corral_api::Config,
) -> (axum::Router, tokio::sync::watch::Sender<bool>) {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let st = corral_api::start(store.clone(), config, stop)
        .await
        .unwrap();
    (corral_api::router(st), stop_tx)
}

const KUBE_DNS: &str = "/api/v1/namespaces/kube-system/services/kube-dns";

fn service(name: &str, cluster_ip: Option<&str>) -> Value {
    let mut spec = json!({"ports": [{"port": 80}]});
    if let Some(ip) = cluster_ip {
        spec["clusterIP"] = json!(ip);
    }
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn kube_dns_is_created_on_the_tenth_address() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let (router, _stop) = start(&store, corral_api::Config::default()).await;
    let (code, svc) = call(&router, Method::GET, KUBE_DNS, None).await;
    assert_eq!(code, 200, "{svc}");
    assert_eq!(svc["spec"]["clusterIP"], "10.43.0.10");
    assert_eq!(svc["spec"]["clusterIPs"], json!(["10.43.0.10"]));
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert!(
        svc["spec"]["selector"].is_null(),
        "answered by the node proxies: {svc}"
    );
    assert_eq!(svc["metadata"]["labels"]["k8s-app"], "kube-dns");
    assert_eq!(
        svc["metadata"]["labels"]["kubernetes.io/cluster-service"],
        "true"
    );
    let ports: Vec<(String, i64, String)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["port"].as_i64().unwrap(),
                p["protocol"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("dns".to_string(), 53, "UDP".to_string()),
            ("dns-tcp".to_string(), 53, "TCP".to_string()),
            ("metrics".to_string(), 9153, "TCP".to_string()),
        ]
    );
    assert_eq!(
        corral_api::alloc::Ranges::default().cluster_dns(),
        std::net::Ipv4Addr::new(10, 43, 0, 10)
    );

    // Nobody else gets that address, asked for or not.
    let (code, body) = call(
        &router,
        Method::POST,
        "/api/v1/namespaces/default/services",
        Some(service("squatter", Some("10.43.0.10"))),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("provided IP is already allocated"),
        "{body}"
    );

    // A restart leaves it as it is.
    let uid = svc["metadata"]["uid"].clone();
    let (router, _stop2) = start(&store, corral_api::Config::default()).await;
    let (_, again) = call(&router, Method::GET, KUBE_DNS, None).await;
    assert_eq!(again["metadata"]["uid"], uid);
}

#[tokio::test]
async fn the_allocator_never_hands_out_the_dns_address() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    // 16 addresses: network, kubernetes (.1), broadcast (.15) and DNS (.10) leave 12.
    let config = corral_api::Config {
        ranges: corral_api::alloc::Ranges {
            service_net: std::net::Ipv4Addr::new(10, 96, 0, 0),
            service_prefix: 28,
            node_ports: (30000, 32767),
        },
        ..Default::default()
    };
    assert_eq!(
        config.ranges.cluster_dns(),
        std::net::Ipv4Addr::new(10, 96, 0, 10)
    );
    let (router, _stop) = start(&store, config).await;
    let (_, dns) = call(&router, Method::GET, KUBE_DNS, None).await;
    assert_eq!(dns["spec"]["clusterIP"], "10.96.0.10");
    let mut ips = Vec::new();
    for i in 0..12 {
        let (code, body) = call(
            &router,
            Method::POST,
            "/api/v1/namespaces/default/services",
            Some(service(&format!("s{i}"), None)),
        )
        .await;
        assert_eq!(code, 201, "{body}");
        ips.push(body["spec"]["clusterIP"].as_str().unwrap().to_string());
    }
    assert!(!ips.contains(&"10.96.0.10".to_string()), "{ips:?}");
    let (code, body) = call(
        &router,
        Method::POST,
        "/api/v1/namespaces/default/services",
        Some(service("one-too-many", None)),
    )
    .await;
    assert!(code >= 400, "the range is full: {body}");
}

#[tokio::test]
async fn stores_from_before_the_reservation_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let (router, stop) = start(&store, corral_api::Config::default()).await;
    let (code, _) = call(&router, Method::DELETE, KUBE_DNS, None).await;
    assert_eq!(code, 200);
    let _ = stop.send(true);
    // As the old allocator may have done: a Service of the user's holds 10.43.0.10.
    store
        .put(
            b"/registry/ranges/serviceips/10.43.0.10",
            bytes::Bytes::from_static(b"default/old"),
            Compare::Absent,
        )
        .await
        .unwrap();
    let (router, stop) = start(&store, corral_api::Config::default()).await;
    let (code, _) = call(&router, Method::GET, KUBE_DNS, None).await;
    assert_eq!(code, 404, "the address is not taken from its holder");
    let (code, _) = call(
        &router,
        Method::GET,
        "/api/v1/namespaces/default/services/kubernetes",
        None,
    )
    .await;
    assert_eq!(code, 200, "the server started all the same");
    let _ = stop.send(true);

    // A claim left by a kube-dns whose write never landed is taken over.
    store
        .put(
            b"/registry/ranges/serviceips/10.43.0.10",
            bytes::Bytes::from_static(b"kube-system/kube-dns"),
            Compare::Any,
        )
        .await
        .unwrap();
    let (router, _stop) = start(&store, corral_api::Config::default()).await;
    let (code, svc) = call(&router, Method::GET, KUBE_DNS, None).await;
    assert_eq!(code, 200);
    assert_eq!(svc["spec"]["clusterIP"], "10.43.0.10");
}
