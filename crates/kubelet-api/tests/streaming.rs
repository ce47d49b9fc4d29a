//! The kubelet server over real TLS with a fake backend: a log file written in CRI format,
//! `sh -c` children as exec sessions, a local TCP echo server as the pod's port. Clients are
//! hand-driven websocket / SPDY peers built from the crate's own framing.

use bytes::Bytes;
use corral_kubelet_api::spdy::{self, Headers, Session};
use corral_kubelet_api::ws::{self, Message};
use corral_kubelet_api::{Backend, BackendError, ContainerInfo, ExecSession};
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::Value;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

// ---------- certificates ----------

struct Pki {
    server: Arc<rustls::ServerConfig>,
    /// The API server's identity (group system:masters).
    client: Arc<rustls::ClientConfig>,
    /// Another node's identity: signed by the same CA, but not the API server.
    node: Arc<rustls::ClientConfig>,
    anonymous: Arc<rustls::ClientConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);
    let leaf = |client: Option<(&str, &str)>| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        if let Some((cn, group)) = client {
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.distinguished_name
                .push(rcgen::DnType::OrganizationName, group);
        } else {
            p.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
        }
        let cert = p.signed_by(&key, &issuer).unwrap();
        (
            CertificateDer::from(cert.der().to_vec()),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    };
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_cert.der().to_vec()))
        .unwrap();
    let roots = Arc::new(roots);
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .unwrap();
    let (scert, skey) = leaf(None);
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![scert], skey)
        .unwrap();
    let client_as = |cn: &str, group: &str| {
        let (cert, key) = leaf(Some((cn, group)));
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_client_auth_cert(vec![cert], key)
                .unwrap(),
        )
    };
    let client = client_as("kube-apiserver-kubelet-client", "system:masters");
    let node = client_as("system:node:other", "system:nodes");
    let anonymous = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Pki {
        server: Arc::new(server),
        client,
        node,
        anonymous: Arc::new(anonymous),
    }
}

// ---------- fake backend ----------

#[derive(Default)]
struct Fake {
    containers: HashMap<(String, String, String), ContainerInfo>,
    stopped: Mutex<HashMap<String, watch::Receiver<bool>>>,
    resizes: Arc<Mutex<Vec<(u16, u16)>>>,
}

impl Backend for Fake {
    fn container<'a>(
        &'a self,
        ns: &'a str,
        pod: &'a str,
        c: &'a str,
    ) -> BoxFuture<'a, Result<ContainerInfo, BackendError>> {
        Box::pin(async move {
            self.containers
                .get(&(ns.into(), pod.into(), c.into()))
                .cloned()
                .ok_or_else(|| {
                    BackendError::NotFound(format!(
                        "container {c:?} in pod {pod:?} is not available"
                    ))
                })
        })
    }

    fn wait_stopped(&self, id: &str) -> BoxFuture<'static, ()> {
        let rx = self.stopped.lock().unwrap().get(id).cloned();
        Box::pin(async move {
            if let Some(mut rx) = rx {
                let _ = rx.wait_for(|s| *s).await;
            }
        })
    }

    fn exec<'a>(
        &'a self,
        _id: &'a str,
        argv: Vec<String>,
        tty: bool,
    ) -> BoxFuture<'a, Result<ExecSession, BackendError>> {
        let resizes = self.resizes.clone();
        Box::pin(async move {
            let mut child = tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| BackendError::Internal(e.to_string()))?;
            Ok(ExecSession {
                stdin: child.stdin.take().map(|w| Box::pin(w) as _),
                stdout: child.stdout.take().map(|r| Box::pin(r) as _),
                stderr: if tty {
                    None
                } else {
                    child.stderr.take().map(|r| Box::pin(r) as _)
                },
                resize: tty.then(|| {
                    Box::new(move |w, h| {
                        resizes.lock().unwrap().push((w, h));
                        Ok(())
                    }) as _
                }),
                exit: Box::pin(async move { child.wait().await.map(|s| s.code().unwrap_or(128)) }),
            })
        })
    }

    fn port_forward<'a>(
        &'a self,
        _ns: &'a str,
        _pod: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<TcpStream>> {
        Box::pin(async move { TcpStream::connect(("127.0.0.1", port)).await })
    }
}

struct Env {
    addr: SocketAddr,
    pki: Pki,
    stop: watch::Sender<bool>,
    resizes: Arc<Mutex<Vec<(u16, u16)>>>,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

const LOG: &str = "\
2024-01-02T03:04:05.000000001Z stdout F first line
2024-01-02T03:04:06.000000000Z stderr F an error
2024-01-02T03:04:07.5Z stdout P partial 
2024-01-02T03:04:08Z stdout F and the rest
2024-01-02T03:04:09Z stdout F last line
";

async fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("1.log");
    let prev = dir.path().join("0.log");
    std::fs::write(&log, LOG).unwrap();
    std::fs::write(&prev, "2024-01-01T00:00:00Z stdout F before the restart\n").unwrap();
    let mut fake = Fake::default();
    let key = |c: &str| ("default".to_string(), "web".to_string(), c.to_string());
    fake.containers.insert(
        key("main"),
        ContainerInfo {
            id: "uid-main-1".into(),
            log_path: log.clone(),
            previous_log_path: Some(prev),
            running: true,
        },
    );
    fake.containers.insert(
        key("fresh"),
        ContainerInfo {
            id: "uid-fresh-0".into(),
            log_path: dir.path().join("fresh.log"),
            previous_log_path: None,
            running: false,
        },
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    fake.stopped
        .lock()
        .unwrap()
        .insert("uid-main-1".into(), stop_rx);
    let resizes = fake.resizes.clone();
    let pki = pki();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(fake);
    let server_cfg = pki.server.clone();
    tokio::spawn(corral_kubelet_api::serve(
        listener,
        server_cfg,
        backend,
        std::future::pending(),
    ));
    Env {
        addr,
        pki,
        stop: stop_tx,
        resizes,
        _dir: dir,
        log,
    }
}

// ---------- clients ----------

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Tls {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(
            ServerName::IpAddress("127.0.0.1".parse::<std::net::IpAddr>().unwrap().into()),
            tcp,
        )
        .await
        .unwrap()
}

async fn send(
    env: &Env,
    cfg: Arc<rustls::ClientConfig>,
    req: Request<Empty<Bytes>>,
) -> hyper::Response<hyper::body::Incoming> {
    let io = TokioIo::new(tls(env.addr, cfg).await);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn.with_upgrades());
    sender.send_request(req).await.unwrap()
}

async fn get_text(env: &Env, path: &str) -> (StatusCode, String) {
    let req = Request::get(path)
        .header("host", "node")
        .body(Empty::new())
        .unwrap();
    let resp = send(env, env.pki.client.clone(), req).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

async fn upgrade(env: &Env, req: Request<Empty<Bytes>>) -> (hyper::Response<()>, Option<Upgraded>) {
    let resp = send(env, env.pki.client.clone(), req).await;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, _) = resp.into_parts();
        return (hyper::Response::from_parts(parts, ()), None);
    }
    let (parts, body) = resp.into_parts();
    let up = hyper::upgrade::on(hyper::Response::from_parts(parts.clone(), body))
        .await
        .unwrap();
    (
        hyper::Response::from_parts(parts, ()),
        Some(TokioIo::new(up)),
    )
}

fn ws_request(path: &str, protocol: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", "node")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", protocol)
        .body(Empty::new())
        .unwrap()
}

/// Reads channel messages until the close frame: (stdout, stderr, status).
async fn collect_channels(
    r: &mut ws::Reader<tokio::io::ReadHalf<Upgraded>>,
) -> (String, String, Value) {
    let (mut out, mut err, mut status) = (String::new(), String::new(), Value::Null);
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), r.next())
            .await
            .expect("exec session ended in time")
            .unwrap();
        match m {
            Some(Message::Binary(d)) => match d[0] {
                1 => out.push_str(&String::from_utf8_lossy(&d[1..])),
                2 => err.push_str(&String::from_utf8_lossy(&d[1..])),
                3 => status = serde_json::from_slice(&d[1..]).unwrap(),
                c => panic!("unexpected channel {c}"),
            },
            Some(Message::Close(_)) | None => break,
            Some(other) => panic!("unexpected message {other:?}"),
        }
    }
    (out, err, status)
}

// ---------- tests ----------

#[tokio::test]
async fn without_client_certificate_is_401() {
    let env = start().await;
    let req = Request::get("/containerLogs/default/web/main")
        .header("host", "node")
        .body(Empty::new())
        .unwrap();
    let resp = send(&env, env.pki.anonymous.clone(), req).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // A certificate from the cluster CA that is not the API server's is refused too.
    let req = Request::get("/containerLogs/default/web/main")
        .header("host", "node")
        .body(Empty::new())
        .unwrap();
    let resp = send(&env, env.pki.node.clone(), req).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["reason"], "Unauthorized");
    assert_eq!(
        get_text(&env, "/healthz").await,
        (StatusCode::OK, "ok".into())
    );
}

#[tokio::test]
async fn logs_with_options() {
    let env = start().await;
    let base = "/containerLogs/default/web/main";
    let (code, all) = get_text(&env, base).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        all,
        "first line\nan error\npartial and the rest\nlast line\n"
    );
    // tailLines counts records, as the kubelet does.
    let (_, tail) = get_text(&env, &format!("{base}?tailLines=2")).await;
    assert_eq!(tail, "and the rest\nlast line\n");
    let (_, zero) = get_text(&env, &format!("{base}?tailLines=0")).await;
    assert_eq!(zero, "");
    let (_, ts) = get_text(&env, &format!("{base}?timestamps=true&tailLines=3")).await;
    assert_eq!(
        ts,
        "2024-01-02T03:04:07.500000000Z partial and the rest\n2024-01-02T03:04:09.000000000Z last line\n"
    );
    let (_, since) = get_text(&env, &format!("{base}?sinceTime=2024-01-02T03:04:06Z")).await;
    assert_eq!(since, "an error\npartial and the rest\nlast line\n");
    let (_, limited) = get_text(&env, &format!("{base}?limitBytes=5")).await;
    assert_eq!(limited, "first");
    let (_, prev) = get_text(&env, &format!("{base}?previous=true")).await;
    assert_eq!(prev, "before the restart\n");
    let (code, body) = get_text(&env, "/containerLogs/default/web/fresh?previous=true").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("previous terminated container \\\"fresh\\\" in pod \\\"web\\\" not found"),
        "{body}"
    );
    let (code, body) = get_text(&env, "/containerLogs/default/web/nope").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(body.contains("is not available"), "{body}");
    let (code, _) = get_text(
        &env,
        &format!("{base}?sinceSeconds=5&sinceTime=2024-01-02T03:04:06Z"),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    // A container that has not written anything yet has empty logs.
    let (code, body) = get_text(&env, "/containerLogs/default/web/fresh").await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, ""));
}

#[tokio::test]
async fn follow_streams_appended_lines_and_ends_when_the_container_stops() {
    let env = start().await;
    let req = Request::get("/containerLogs/default/web/main?follow=true&tailLines=1")
        .header("host", "node")
        .body(Empty::new())
        .unwrap();
    let resp = send(&env, env.pki.client.clone(), req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut seen = String::new();
    let mut next = async |seen: &mut String| {
        let f = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a chunk in time");
        match f {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    seen.push_str(&String::from_utf8_lossy(d));
                }
                true
            }
            _ => false,
        }
    };
    while !seen.contains("last line\n") {
        assert!(next(&mut seen).await);
    }
    assert_eq!(seen, "last line\n");
    // A record written in two steps arrives whole.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&env.log)
        .unwrap();
    use std::io::Write;
    f.write_all(b"2024-01-02T03:05:00Z stdout F appe").unwrap();
    f.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.write_all(b"nded\n").unwrap();
    while !seen.contains("appended\n") {
        assert!(next(&mut seen).await);
    }
    assert_eq!(seen, "last line\nappended\n");
    // Lines written just before the container stops are still sent, then the body ends.
    f.write_all(b"2024-01-02T03:05:01Z stderr F goodbye\n")
        .unwrap();
    env.stop.send(true).unwrap();
    while next(&mut seen).await {}
    assert_eq!(seen, "last line\nappended\ngoodbye\n");
}

#[tokio::test]
async fn exec_v5_round_trip_with_exit_code() {
    let env = start().await;
    let cmd = "read x; echo out:$x; echo err >&2; exit 3";
    let path = format!(
        "/exec/default/web/main?command=sh&command=-c&command={}&stdin=true&stdout=true&stderr=true",
        cmd.replace(' ', "%20").replace(';', "%3B").replace('$', "%24").replace('>', "%3E").replace('&', "%26")
    );
    let (resp, up) = upgrade(&env, ws_request(&path, "v5.channel.k8s.io")).await;
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "v5.channel.k8s.io"
    );
    assert_eq!(
        resp.headers()["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    let (r, w) = tokio::io::split(up.unwrap());
    let mut reader = ws::Reader::new(r, false);
    let mut writer = ws::Writer::new(w, true);
    writer.send(ws::OP_BINARY, b"\x00hello\n").await.unwrap();
    writer.send(ws::OP_BINARY, &[255, 0]).await.unwrap();
    let (out, err, status) = collect_channels(&mut reader).await;
    assert_eq!(out, "out:hello\n");
    assert_eq!(err, "err\n");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
}

#[tokio::test]
async fn exec_v5_stdin_close_signal_ends_cat_and_resize_reaches_the_session() {
    let env = start().await;
    let path = "/exec/default/web/main?command=cat&stdin=true&stdout=true&tty=true";
    let (_, up) = upgrade(&env, ws_request(path, "v5.channel.k8s.io")).await;
    let (r, w) = tokio::io::split(up.unwrap());
    let mut reader = ws::Reader::new(r, false);
    let mut writer = ws::Writer::new(w, true);
    writer
        .send(ws::OP_BINARY, b"\x04{\"Width\":120,\"Height\":40}")
        .await
        .unwrap();
    writer.send(ws::OP_BINARY, b"\x00abc").await.unwrap();
    writer.send(ws::OP_BINARY, b"\x00def").await.unwrap();
    writer.send(ws::OP_BINARY, &[255, 0]).await.unwrap();
    let (out, err, status) = collect_channels(&mut reader).await;
    assert_eq!(out, "abcdef");
    assert_eq!(err, "");
    assert_eq!(
        status,
        serde_json::json!({"metadata": {}, "status": "Success"})
    );
    assert_eq!(*env.resizes.lock().unwrap(), vec![(120, 40)]);
}

#[tokio::test]
async fn exec_v4_is_accepted_and_bad_requests_are_refused_before_upgrading() {
    let env = start().await;
    let path = "/exec/default/web/main?command=echo&command=v4&stdout=true";
    let (resp, up) = upgrade(&env, ws_request(path, "v4.channel.k8s.io")).await;
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "v4.channel.k8s.io"
    );
    let (r, _w) = tokio::io::split(up.unwrap());
    let (out, _, status) = collect_channels(&mut ws::Reader::new(r, false)).await;
    assert_eq!(out, "v4\n");
    assert_eq!(status["status"], "Success");

    let (resp, up) = upgrade(&env, ws_request(path, "channel.k8s.io")).await;
    assert!(up.is_none());
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (resp, _) = upgrade(
        &env,
        ws_request("/exec/default/web/main?command=ls", "v5.channel.k8s.io"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (resp, _) = upgrade(
        &env,
        ws_request(
            "/exec/default/web/fresh?command=ls&stdout=1",
            "v5.channel.k8s.io",
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (resp, _) = upgrade(
        &env,
        ws_request(
            "/exec/default/nope/main?command=ls&stdout=1",
            "v5.channel.k8s.io",
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // attach is the backend's to offer; this one does not.
    let (resp, _) = upgrade(
        &env,
        ws_request("/attach/default/web/main?stdout=1", "v5.channel.k8s.io"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn exec_over_spdy_fallback() {
    let env = start().await;
    let req = Request::post("/exec/default/web/main?command=sh&command=-c&command=cat%3Becho%20e%3E%262%3Bexit%205&stdin=true&stdout=true&stderr=true")
        .header("host", "node")
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .header("x-stream-protocol-version", "v5.channel.k8s.io")
        .header("x-stream-protocol-version", "v4.channel.k8s.io")
        .header("x-stream-protocol-version", "channel.k8s.io")
        .body(Empty::new())
        .unwrap();
    let (resp, up) = upgrade(&env, req).await;
    assert_eq!(
        resp.headers()["x-stream-protocol-version"],
        "v4.channel.k8s.io"
    );
    let (r, w) = tokio::io::split(up.unwrap());
    let (sess, _incoming) = Session::start(r, spdy::Transport::Raw(Box::new(w)), false);
    let open = |t: &str| Headers::default().with("streamType", t);
    let mut error = sess.open(open("error")).await.unwrap();
    let stdin = sess.open(open("stdin")).await.unwrap();
    let mut stdout = sess.open(open("stdout")).await.unwrap();
    let mut stderr = sess.open(open("stderr")).await.unwrap();
    stdin.tx.write(b"through spdy\n").await.unwrap();
    stdin.tx.close().await.unwrap();
    let read_all = async |s: &mut spdy::Stream| {
        let mut v = Vec::new();
        while let Some(b) = tokio::time::timeout(Duration::from_secs(20), s.rx.recv())
            .await
            .unwrap()
        {
            v.extend_from_slice(&b);
        }
        String::from_utf8(v).unwrap()
    };
    assert_eq!(read_all(&mut stdout).await, "through spdy\n");
    assert_eq!(read_all(&mut stderr).await, "e\n");
    let status: Value = serde_json::from_str(&read_all(&mut error).await).unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "5");
}

/// A client's side of the websocket tunnel: SPDY bytes out as masked binary messages, in
/// from unmasked ones.
fn tunnel(up: Upgraded) -> (Session, mpsc::Receiver<spdy::Stream>) {
    let (r, w) = tokio::io::split(up);
    let (pipe_r, mut pipe_w) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut reader = ws::Reader::new(r, false);
        while let Ok(Some(Message::Binary(d))) = reader.next().await {
            if pipe_w.write_all(&d).await.is_err() {
                break;
            }
        }
        let _ = pipe_w.shutdown().await;
    });
    let w: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = Box::new(w);
    Session::start(
        pipe_r,
        spdy::Transport::Websocket(ws::Writer::new(w, true)),
        false,
    )
}

async fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn port_forward_over_websocket_both_ways_and_errors() {
    let env = start().await;
    let port = echo_server().await;
    let (resp, up) = upgrade(
        &env,
        ws_request("/portForward/default/web", "SPDY/3.1+portforward.k8s.io"),
    )
    .await;
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "SPDY/3.1+portforward.k8s.io"
    );
    let (sess, _incoming) = tunnel(up.unwrap());
    let hdr = |t: &str, p: u16, id: &str| {
        Headers::default()
            .with("streamType", t)
            .with("port", &p.to_string())
            .with("requestID", id)
    };
    // Two connections at once over one session.
    let mut e0 = sess.open(hdr("error", port, "0")).await.unwrap();
    e0.tx.close().await.unwrap();
    let mut d0 = sess.open(hdr("data", port, "0")).await.unwrap();
    let mut e1 = sess.open(hdr("error", port, "1")).await.unwrap();
    let mut d1 = sess.open(hdr("data", port, "1")).await.unwrap();
    d0.tx.write(b"ping 0").await.unwrap();
    d1.tx.write(&vec![b'x'; 200_000]).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 6 {
        got.extend_from_slice(
            &tokio::time::timeout(Duration::from_secs(10), d0.rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(got, b"ping 0");
    let mut n = 0;
    while n < 200_000 {
        n += tokio::time::timeout(Duration::from_secs(10), d1.rx.recv())
            .await
            .unwrap()
            .unwrap()
            .len();
    }
    assert_eq!(n, 200_000);
    // Closing our side ends the pod connection; the server closes both streams, no error.
    d0.tx.close().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(10), d0.rx.recv())
        .await
        .unwrap()
        .is_none());
    assert!(tokio::time::timeout(Duration::from_secs(10), e0.rx.recv())
        .await
        .unwrap()
        .is_none());
    d1.tx.close().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(10), e1.rx.recv())
        .await
        .unwrap()
        .is_none());

    // A port nothing listens on: the error stream says so.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut e2 = sess.open(hdr("error", closed, "2")).await.unwrap();
    let mut d2 = sess.open(hdr("data", closed, "2")).await.unwrap();
    let mut msg = Vec::new();
    while let Some(b) = tokio::time::timeout(Duration::from_secs(10), e2.rx.recv())
        .await
        .unwrap()
    {
        msg.extend_from_slice(&b);
    }
    let msg = String::from_utf8(msg).unwrap();
    assert!(
        msg.starts_with(&format!(
            "error forwarding port {closed} to pod web_default: "
        )),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
    assert!(tokio::time::timeout(Duration::from_secs(10), d2.rx.recv())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn port_forward_over_raw_spdy() {
    let env = start().await;
    let port = echo_server().await;
    let req = Request::post("/portForward/default/web")
        .header("host", "node")
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .header("x-stream-protocol-version", "portforward.k8s.io")
        .body(Empty::new())
        .unwrap();
    let (resp, up) = upgrade(&env, req).await;
    assert_eq!(
        resp.headers()["x-stream-protocol-version"],
        "portforward.k8s.io"
    );
    let (r, w) = tokio::io::split(up.unwrap());
    let (sess, _incoming) = Session::start(r, spdy::Transport::Raw(Box::new(w)), false);
    let hdr = |t: &str| {
        Headers::default()
            .with("streamType", t)
            .with("port", &port.to_string())
            .with("requestID", "7")
    };
    let _e = sess.open(hdr("error")).await.unwrap();
    let mut d = sess.open(hdr("data")).await.unwrap();
    d.tx.write(b"raw").await.unwrap();
    d.tx.close().await.unwrap();
    let mut got = Vec::new();
    while let Some(b) = tokio::time::timeout(Duration::from_secs(10), d.rx.recv())
        .await
        .unwrap()
    {
        got.extend_from_slice(&b);
    }
    assert_eq!(got, b"raw");
}
