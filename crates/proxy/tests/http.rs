//! HTTP Service ports through the proxy with real sockets on 127.0.0.1: per-request
//! balancing on keep-alive connections, retries past a dead endpoint, bodies both ways,
//! and the 503s the proxy gives when no endpoint can answer.

use bytes::Bytes;
use corral_proxy::testing::{free_port, named_service, TestProxy};
use corral_proxy::view::Protocol;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// An HTTP backend answering `<id> <method> <body>`.
async fn backend(id: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| async move {
                        let method = req.method().to_string();
                        let host = req
                            .headers()
                            .get("host")
                            .map(|h| h.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let text =
                            format!("{id} {method} {host} {}", String::from_utf8_lossy(&body));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn proxy(frontend: SocketAddr, backends: &[SocketAddr]) -> TestProxy {
    let mut p = TestProxy::new();
    p.apply(&named_service(
        frontend,
        Protocol::Tcp,
        "http-web",
        backends,
    ));
    p
}

type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn call(
    c: &TestClient,
    method: &str,
    url: &str,
    body: &str,
) -> (u16, String, Option<String>) {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let reason = resp
        .headers()
        .get("x-corral-reason")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), reason)
}

#[tokio::test]
async fn requests_on_one_connection_spread_and_skip_a_dead_endpoint() {
    let a = backend("a").await;
    let b = backend("b").await;
    let dead = free_port();
    let fe = free_port();
    let _p = proxy(fe, &[a, b, dead]);
    let c = client();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..9 {
        let (status, body, _) = call(&c, "GET", &format!("http://{fe}/x"), "").await;
        assert_eq!(status, 200, "{body}");
        *seen
            .entry(body.split(' ').next().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // The Host header is the one the client sent, not the endpoint's address.
    let (_, body, _) = call(&c, "GET", &format!("http://{fe}/"), "").await;
    assert!(body.ends_with(&format!("{fe} ")), "{body}");
}

#[tokio::test]
async fn bodies_reach_the_endpoint() {
    let a = backend("a").await;
    let fe = free_port();
    let _p = proxy(fe, &[a]);
    let (status, body, _) = call(&client(), "POST", &format!("http://{fe}/"), "payload").await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("a POST") && body.ends_with("payload"),
        "{body}"
    );
}

#[tokio::test]
async fn no_endpoint_is_a_503_with_a_reason() {
    let fe = free_port();
    let _p = proxy(fe, &[]);
    let (status, body, reason) = call(&client(), "GET", &format!("http://{fe}/"), "").await;
    assert_eq!(status, 503);
    assert_eq!(body, "no healthy upstream");
    assert_eq!(reason.as_deref(), Some("no_healthy_upstream"));
    let dead = free_port();
    let fe2 = free_port();
    let _q = proxy(fe2, &[dead]);
    let (status, body, reason) = call(&client(), "GET", &format!("http://{fe2}/"), "").await;
    assert_eq!(status, 503);
    assert!(body.starts_with("upstream connect error"), "{body}");
    assert_eq!(reason.as_deref(), Some("upstream_connect_failure"));
}

#[tokio::test]
async fn an_upgrade_becomes_a_byte_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn read_head(s: &mut tokio::net::TcpStream) -> String {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        String::from_utf8(head).unwrap()
    }
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let head = read_head(&mut s).await;
        assert!(
            head.to_ascii_lowercase().contains("upgrade: echo"),
            "{head}"
        );
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = [0u8; 64];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            s.write_all(&buf[..n]).await.unwrap();
        }
    });
    let fe = free_port();
    let _p = proxy(fe, &[backend_addr]);
    let mut c = tokio::net::TcpStream::connect(fe).await.unwrap();
    c.write_all(b"GET /ws HTTP/1.1\r\nHost: svc\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}
