//! A PATCH whose body names no resourceVersion must never fail with 409 because someone
//! else wrote the object meanwhile: the server re-reads and re-applies it (Kubernetes'
//! GuaranteedUpdate loop). Hammers one Deployment with status PATCHes while other tasks
//! PUT and PATCH it, as the deployment controller does while a client patches its status.

use axum::body::Body;
use axum::http::{Method, Request};
use corral_store::{EmbeddedOptions, Store};
use serde_json::{json, Value};
use tower::ServiceExt;

async fn call(
    router: &axum::Router,
    method: Method,
    uri: &str,
    ct: &str,
    body: Value,
) -> (u16, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", ct)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
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

const DEPLOY: &str = "/apis/apps/v1/namespaces/default/deployments/web";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn patches_without_resource_version_never_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions {
        fsync: false,
        ..Default::default()
    };
    let store = Store::open_embedded(dir.path(), opts).unwrap();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let st = corral_api::start(store, corral_api::Config::default(), stop)
        .await
        .unwrap();
    let router = corral_api::router(st);
    let deploy = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
        }
    });
    let (code, body) = call(
        &router,
        Method::POST,
        "/apis/apps/v1/namespaces/default/deployments",
        "application/json",
        deploy,
    )
    .await;
    assert_eq!(code, 201, "{body}");

    let mut tasks = Vec::new();
    // Status patchers, as the Python client's patch_namespaced_deployment_status.
    for t in 0..3 {
        let r = router.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let patch = json!({"status": {"observedGeneration": t * 1000 + i}});
                let (code, body) = call(
                    &r,
                    Method::PATCH,
                    &format!("{DEPLOY}/status"),
                    "application/merge-patch+json",
                    patch,
                )
                .await;
                assert_eq!(code, 200, "status patch {t}/{i}: {body}");
            }
        }));
    }
    // Label patchers on the main resource, with a strategic merge patch.
    for t in 0..2 {
        let r = router.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let patch = json!({"metadata": {"labels": {format!("p{t}"): format!("v{i}")}}});
                let (code, body) = call(
                    &r,
                    Method::PATCH,
                    DEPLOY,
                    "application/strategic-merge-patch+json",
                    patch,
                )
                .await;
                assert_eq!(code, 200, "patch {t}/{i}: {body}");
            }
        }));
    }
    // A controller writing the status with read-modify-PUT: its 409s are its own (it sent
    // a resourceVersion), so it re-reads, as a controller does.
    {
        let r = router.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = 0;
            while written < 40 {
                let (_, mut obj) =
                    call(&r, Method::GET, DEPLOY, "application/json", Value::Null).await;
                obj["status"]["replicas"] = json!(written);
                let (code, body) = call(
                    &r,
                    Method::PUT,
                    &format!("{DEPLOY}/status"),
                    "application/json",
                    obj,
                )
                .await;
                match code {
                    200 => written += 1,
                    409 => {}
                    _ => panic!("status put: {code} {body}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn patch_with_a_stale_resource_version_still_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions {
        fsync: false,
        ..Default::default()
    };
    let store = Store::open_embedded(dir.path(), opts).unwrap();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let st = corral_api::start(store, corral_api::Config::default(), stop)
        .await
        .unwrap();
    let router = corral_api::router(st);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    let (code, created) = call(
        &router,
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        cm,
    )
    .await;
    assert_eq!(code, 201);
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let uri = "/api/v1/namespaces/default/configmaps/c";
    let (code, _) = call(
        &router,
        Method::PATCH,
        uri,
        "application/merge-patch+json",
        json!({"data": {"a": "2"}}),
    )
    .await;
    assert_eq!(code, 200);
    let (code, body) = call(
        &router,
        Method::PATCH,
        uri,
        "application/merge-patch+json",
        json!({"metadata": {"resourceVersion": rv}, "data": {"a": "3"}}),
    )
    .await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["reason"], "Conflict");
}
