//! Istio routing through the proxy with real sockets on 127.0.0.1: the canary split to
//! subsets, retries that hide a flaky endpoint, outlier detection that ejects and lets
//! back, fault injection, matches, redirects and the 503s of a missing subset.

use bytes::Bytes;
use corral_proxy::testing::{free_port, mesh_view, Pod, TestProxy};
use corral_proxy::view::ClusterView;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// An HTTP backend answering its id; `fail` decides per request number whether it
/// answers 500 instead; it echoes the request path and headers it got.
async fn backend(
    id: &'static str,
    fail: Arc<dyn Fn(u64) -> bool + Send + Sync>,
) -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let served = count.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let (fail, count) = (fail.clone(), count.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let failing = fail(n);
                    async move {
                        let path = req.uri().path_and_query().unwrap().to_string();
                        let extra = req
                            .headers()
                            .get("x-added")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let mut r =
                            Response::new(Full::new(Bytes::from(format!("{id} {path} {extra}"))));
                        // Trace context and the request id come back as echo-* headers.
                        for h in ["traceparent", "tracestate", "x-request-id"] {
                            if let Some(v) = req.headers().get(h) {
                                r.headers_mut().insert(
                                    hyper::header::HeaderName::from_bytes(
                                        format!("echo-{h}").as_bytes(),
                                    )
                                    .unwrap(),
                                    v.clone(),
                                );
                            }
                        }
                        if failing {
                            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, served)
}

fn never() -> Arc<dyn Fn(u64) -> bool + Send + Sync> {
    Arc::new(|_| false)
}

fn proxy(view: &ClusterView) -> TestProxy {
    let mut p = TestProxy::new();
    p.apply(view);
    p
}

type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn get(
    c: &TestClient,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, String, BTreeMap<String, String>) {
    let mut b = Request::builder().uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = c
        .request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let h = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), h)
}

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn subsets() -> serde_json::Value {
    json!({"host": "svc", "subsets": [
        {"name": "v1", "labels": {"version": "v1"}},
        {"name": "v2", "labels": {"version": "v2"}}
    ]})
}

#[tokio::test]
async fn canary_90_10_to_subsets_within_bounds() {
    let (a, _) = backend("v1", never()).await;
    let (b, _) = backend("v2", never()).await;
    let fe = free_port();
    let vs = json!({"hosts": ["svc"], "http": [{"route": [
        {"destination": {"host": "svc", "subset": "v1"}, "weight": 90},
        {"destination": {"host": "svc", "subset": "v2"}, "weight": 10}
    ]}]});
    let pods = [
        Pod {
            addr: a,
            labels: &[("version", "v1")],
        },
        Pod {
            addr: b,
            labels: &[("version", "v2")],
        },
    ];
    let _p = proxy(&mesh_view(fe, &pods, Some(vs), Some(subsets())));
    let c = client();
    let mut v2 = 0;
    for _ in 0..2000 {
        let (status, body, _) = get(&c, &format!("http://{fe}/"), &[]).await;
        assert_eq!(status, 200);
        if body.starts_with("v2") {
            v2 += 1;
        }
    }
    // 10% of 2000 is 200 with a standard deviation of about 13.4: allow 4.5 sigma.
    assert!((140..=260).contains(&v2), "v2 got {v2} of 2000");
}

#[tokio::test]
async fn matches_pick_routes_and_rewrite_and_headers_apply() {
    let (a, _) = backend("v1", never()).await;
    let (b, _) = backend("v2", never()).await;
    let fe = free_port();
    let vs = json!({"hosts": ["svc.test.svc.cluster.local"], "http": [
        {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
         "route": [{"destination": {"host": "svc", "subset": "v2"}}],
         "headers": {"request": {"set": {"x-added": "yes"}}, "response": {"add": {"x-route": "jason"}}}},
        {"match": [{"uri": {"prefix": "/old"}}], "rewrite": {"uri": "/new"},
         "route": [{"destination": {"host": "svc", "subset": "v1"}}]},
        {"match": [{"uri": {"exact": "/moved"}}], "redirect": {"uri": "/here", "authority": "elsewhere"}},
        {"match": [{"uri": {"regex": "/gone/[0-9]+"}}], "directResponse": {"status": 410, "body": {"string": "gone"}}},
        {"match": [{"uri": {"prefix": "/missing"}}], "route": [{"destination": {"host": "svc", "subset": "v9"}}]},
        {"route": [{"destination": {"host": "svc", "subset": "v1"}}]}
    ]});
    let pods = [
        Pod {
            addr: a,
            labels: &[("version", "v1")],
        },
        Pod {
            addr: b,
            labels: &[("version", "v2")],
        },
    ];
    let _p = proxy(&mesh_view(fe, &pods, Some(vs), Some(subsets())));
    let c = client();
    let (_, body, h) = get(&c, &format!("http://{fe}/x"), &[("end-user", "jason")]).await;
    assert_eq!(body, "v2 /x yes");
    assert_eq!(h["x-route"], "jason");
    assert!(get(&c, &format!("http://{fe}/x"), &[])
        .await
        .1
        .starts_with("v1 /x"));
    assert_eq!(
        get(&c, &format!("http://{fe}/old/a?q=1"), &[]).await.1,
        "v1 /new/a?q=1 "
    );
    let (status, _, h) = get(&c, &format!("http://{fe}/moved"), &[]).await;
    assert_eq!(
        (status, h["location"].as_str()),
        (301, "http://elsewhere/here")
    );
    assert_eq!(get(&c, &format!("http://{fe}/gone/12"), &[]).await.0, 410);
    let (status, body, h) = get(&c, &format!("http://{fe}/missing"), &[]).await;
    assert_eq!(
        (status, h["x-corral-reason"].as_str()),
        (503, "no_cluster_found")
    );
    assert!(body.contains("subset v9"), "{body}");
}

#[tokio::test]
async fn trace_context_passes_along_and_each_request_gets_an_id() {
    let (a, _) = backend("v1", never()).await;
    let fe = free_port();
    let pods = [Pod {
        addr: a,
        labels: &[],
    }];
    let _p = proxy(&mesh_view(fe, &pods, None, None));
    let c = client();
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, _, h) = get(
        &c,
        &format!("http://{fe}/"),
        &[("traceparent", parent), ("tracestate", "congo=t61rcWkgMzE")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(h["echo-traceparent"], parent);
    assert_eq!(h["echo-tracestate"], "congo=t61rcWkgMzE");
    // A request without an id gets a fresh version-4 UUID, a different one each time.
    let id = |h: &BTreeMap<String, String>| h["echo-x-request-id"].clone();
    let first = id(&get(&c, &format!("http://{fe}/"), &[]).await.2);
    let second = id(&get(&c, &format!("http://{fe}/"), &[]).await.2);
    assert_ne!(first, second);
    for u in [&first, &second] {
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{u}"
        );
        assert!(
            parts[2].starts_with('4') && "89ab".contains(&parts[3][..1]),
            "{u}"
        );
        assert!(u.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{u}");
    }
    // One the client sent is kept, and no traceparent is invented.
    let (_, _, h) = get(&c, &format!("http://{fe}/"), &[("x-request-id", "abc-123")]).await;
    assert_eq!(h["echo-x-request-id"], "abc-123");
    assert!(!h.contains_key("echo-traceparent"));
}

#[tokio::test]
async fn retries_hide_an_endpoint_that_fails_half_its_requests() {
    let (a, _) = backend("flaky", Arc::new(|n| n % 2 == 0)).await;
    let (b, _) = backend("good", never()).await;
    let fe = free_port();
    let vs = json!({"hosts": ["svc"], "http": [{
        "route": [{"destination": {"host": "svc"}}],
        "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx"}
    }]});
    let pods = [
        Pod {
            addr: a,
            labels: &[],
        },
        Pod {
            addr: b,
            labels: &[],
        },
    ];
    let _p = proxy(&mesh_view(fe, &pods, Some(vs), None));
    let c = client();
    for _ in 0..200 {
        let (status, body, _) = get(&c, &format!("http://{fe}/"), &[]).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_endpoint_and_lets_it_back() {
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let (a, served_a) = backend("bad", Arc::new(move |_| f.load(Ordering::SeqCst))).await;
    let (b, _) = backend("good", never()).await;
    let fe = free_port();
    let dr = json!({"host": "svc", "trafficPolicy": {
        "loadBalancer": {"simple": "ROUND_ROBIN"},
        "outlierDetection": {"consecutive5xxErrors": 2, "interval": "1s",
                             "baseEjectionTime": "1s", "maxEjectionPercent": 100}}});
    // No retries, so the client sees what the endpoints answer.
    let vs = json!({"hosts": ["svc"], "http": [{"route": [{"destination": {"host": "svc"}}],
                                                 "retries": {"attempts": 0}}]});
    let pods = [
        Pod {
            addr: a,
            labels: &[],
        },
        Pod {
            addr: b,
            labels: &[],
        },
    ];
    let _p = proxy(&mesh_view(fe, &pods, Some(vs), Some(dr)));
    let c = client();
    let mut errors = 0;
    for _ in 0..20 {
        if get(&c, &format!("http://{fe}/"), &[]).await.0 == 500 {
            errors += 1;
        }
    }
    assert_eq!(errors, 2, "two 5xx in a row open the circuit");
    let before = served_a.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(get(&c, &format!("http://{fe}/"), &[]).await.0, 200);
    }
    assert_eq!(
        served_a.load(Ordering::SeqCst),
        before,
        "ejected: no traffic"
    );
    // The endpoint recovers; after the ejection time it gets traffic again and stays.
    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..10 {
        assert_eq!(get(&c, &format!("http://{fe}/"), &[]).await.0, 200);
    }
    assert!(
        served_a.load(Ordering::SeqCst) >= before + 4,
        "half-open, then closed"
    );
}

#[tokio::test]
async fn faults_abort_and_delay_a_share_of_requests() {
    let (a, _) = backend("v1", never()).await;
    let fe = free_port();
    let vs = json!({"hosts": ["svc"], "http": [{
        "route": [{"destination": {"host": "svc"}}],
        "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 50}},
                  "delay": {"fixedDelay": "20ms", "percentage": {"value": 100}}}
    }]});
    let _p = proxy(&mesh_view(
        fe,
        &[Pod {
            addr: a,
            labels: &[],
        }],
        Some(vs),
        None,
    ));
    let c = client();
    let started = std::time::Instant::now();
    let mut aborted = 0;
    for _ in 0..100 {
        let (status, _, h) = get(&c, &format!("http://{fe}/"), &[]).await;
        if status == 418 {
            assert_eq!(h["x-corral-reason"], "fault_injected");
            aborted += 1;
        }
    }
    assert!((25..=75).contains(&aborted), "{aborted}");
    assert!(
        started.elapsed() >= Duration::from_millis(2000),
        "every request delayed 20ms"
    );
}

#[tokio::test]
async fn a_route_change_applies_to_an_open_keepalive_connection() {
    let (a, _) = backend("v1", never()).await;
    let (b, _) = backend("v2", never()).await;
    let fe = free_port();
    let pods = [
        Pod {
            addr: a,
            labels: &[("version", "v1")],
        },
        Pod {
            addr: b,
            labels: &[("version", "v2")],
        },
    ];
    let to = |subset: &str| json!({"hosts": ["svc"], "http": [{"route": [{"destination": {"host": "svc", "subset": subset}}]}]});
    let mut p = proxy(&mesh_view(fe, &pods, Some(to("v1")), Some(subsets())));
    let c = client();
    assert!(get(&c, &format!("http://{fe}/"), &[])
        .await
        .1
        .starts_with("v1"));
    p.apply(&mesh_view(fe, &pods, Some(to("v2")), Some(subsets())));
    assert!(get(&c, &format!("http://{fe}/"), &[])
        .await
        .1
        .starts_with("v2"));
}
