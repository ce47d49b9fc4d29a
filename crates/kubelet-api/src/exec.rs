//! exec and attach: the remote command protocols kubectl speaks. Over a websocket
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`) every binary message starts with a channel
//! byte: 0 stdin, 1 stdout, 2 stderr, 3 error (the final `metav1.Status`), 4 resize
//! (`{"Width":..,"Height":..}`), and in v5 255 "close channel N" (stdin EOF). Over SPDY
//! (the POST fallback, `v4.channel.k8s.io`) each channel is its own stream, named by the
//! `streamType` header, and a FIN ends stdin.

use crate::spdy::{self, Session};
use crate::ws::{self, Message};
use crate::{backend_error, status_response, Backend, Body, ExecSession, Query};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;
/// After the process ends, how long its output may take to drain (a background child
/// holding the pipe open must not keep the session forever).
const DRAIN: Duration = Duration::from_secs(2);
/// How long a SPDY client has to open the streams it asked for.
const STREAM_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct Options {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Options {
    pub fn parse(q: &Query, attach: bool) -> Result<Options, String> {
        let o = Options {
            command: q.all("command"),
            stdin: q.flag("stdin"),
            stdout: q.flag("stdout"),
            stderr: q.flag("stderr"),
            tty: q.flag("tty"),
        };
        if !attach && o.command.is_empty() {
            return Err("you must specify at least 1 command".into());
        }
        if !o.stdin && !o.stdout && !o.stderr {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        Ok(o)
    }
}

fn is_spdy_upgrade(h: &hyper::HeaderMap) -> bool {
    h.get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("SPDY/3.1"))
}

/// The first protocol the client offers that we support (the client's order wins, as in
/// Kubernetes' handshake).
fn negotiate<'a>(offered: &[String], supported: &[&'a str]) -> Option<&'a str> {
    offered
        .iter()
        .find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
}

pub(crate) fn stream_versions(h: &hyper::HeaderMap) -> Vec<String> {
    h.get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .collect()
}

pub(crate) fn switching(headers: &[(&str, String)]) -> Response<Body> {
    let mut r = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(crate::full(Bytes::new()))
        .expect("static response parts")
}

pub async fn serve(
    backend: Arc<dyn Backend>,
    mut req: Request<Incoming>,
    ns: &str,
    pod: &str,
    container: &str,
    attach: bool,
) -> Response<Body> {
    let q = Query::parse(req.uri().query());
    let mut opts = match Options::parse(&q, attach) {
        Ok(o) => o,
        Err(m) => return status_response(StatusCode::BAD_REQUEST, &m),
    };
    if opts.tty {
        // A terminal merges stderr into its output.
        opts.stderr = false;
    }
    enum Proto {
        Ws(&'static str, String),
        Spdy(&'static str),
    }
    let proto = if ws::is_upgrade(req.headers()) {
        let Some(key) = req
            .headers()
            .get(hyper::header::SEC_WEBSOCKET_KEY)
            .and_then(|v| v.to_str().ok())
        else {
            return status_response(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
        };
        match negotiate(&ws::offered_protocols(req.headers()), &[V5, V4]) {
            Some(p) => Proto::Ws(p, ws::accept_key(key)),
            None => {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    &format!("unable to upgrade: none of the offered subprotocols is supported (want {V5} or {V4})"),
                )
            }
        }
    } else if is_spdy_upgrade(req.headers()) {
        match negotiate(&stream_versions(req.headers()), &[V4]) {
            Some(p) => Proto::Spdy(p),
            None => {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    &format!("unable to upgrade: unable to negotiate protocol: client supports {:?}, server supports [{V4}]", stream_versions(req.headers())),
                )
            }
        }
    } else {
        return status_response(StatusCode::BAD_REQUEST, "Upgrade request required");
    };
    let info = match backend.container(ns, pod, container).await {
        Ok(i) => i,
        Err(e) => return backend_error(&e),
    };
    if !info.running {
        return status_response(
            StatusCode::BAD_REQUEST,
            &format!("container {container:?} in pod {pod:?} is not running"),
        );
    }
    let started = if attach {
        backend.attach(&info.id, opts.tty).await
    } else {
        backend.exec(&info.id, opts.command.clone(), opts.tty).await
    };
    let session = match started {
        Ok(s) => s,
        Err(e) => return backend_error(&e),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    match proto {
        Proto::Ws(p, accept) => {
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(up) => run_websocket(TokioIo::new(up), p == V5, opts, session, attach).await,
                    Err(e) => tracing::debug!(error = %e, "exec: upgrade failed"),
                }
            });
            switching(&[
                ("connection", "Upgrade".into()),
                ("upgrade", "websocket".into()),
                ("sec-websocket-accept", accept),
                ("sec-websocket-protocol", p.into()),
            ])
        }
        Proto::Spdy(p) => {
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(up) => run_spdy(TokioIo::new(up), opts, session).await,
                    Err(e) => tracing::debug!(error = %e, "exec: upgrade failed"),
                }
            });
            switching(&[
                ("connection", "Upgrade".into()),
                ("upgrade", "SPDY/3.1".into()),
                ("x-stream-protocol-version", p.into()),
            ])
        }
    }
}

/// The final status of a session, as the kubelet writes it on the error channel.
pub fn exit_status(code: io::Result<i32>, argv: &[String]) -> Value {
    match code {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(c) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {argv:?}, exit code {c}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": c.to_string()}]},
        }),
        Err(e) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("error executing command in container: {e}"),
            "reason": "InternalError",
            "code": 500,
            "details": {"causes": [{"message": e.to_string()}]},
        }),
    }
}

/// Runs the process side of a session: stdin from `stdin_rx` (closed = EOF), terminal
/// sizes from `resize_rx`, output to `out` as (channel, bytes). Returns the final status
/// once the process has ended and its output is drained.
async fn run_process(
    mut s: ExecSession,
    argv: Vec<String>,
    out: mpsc::Sender<(u8, Bytes)>,
    mut stdin_rx: mpsc::Receiver<Bytes>,
    mut resize_rx: mpsc::Receiver<(u16, u16)>,
) -> Value {
    let stdin_task = s.stdin.take().map(|mut w| {
        tokio::spawn(async move {
            while let Some(b) = stdin_rx.recv().await {
                if w.write_all(&b).await.is_err() || w.flush().await.is_err() {
                    break;
                }
            }
            let _ = w.shutdown().await;
        })
    });
    let resize = s.resize.take();
    let resize_task = tokio::spawn(async move {
        while let Some((w, h)) = resize_rx.recv().await {
            if let Some(f) = &resize {
                if let Err(e) = f(w, h) {
                    tracing::debug!(error = %e, "exec: resize failed");
                }
            }
        }
    });
    let mut pumps = Vec::new();
    for (ch, r) in [(STDOUT, s.stdout.take()), (STDERR, s.stderr.take())] {
        let Some(mut r) = r else { continue };
        let out = out.clone();
        pumps.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf).await {
                    // A terminal whose last user is gone reads EIO: that is its end.
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if out
                            .send((ch, Bytes::copy_from_slice(&buf[..n])))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        }));
    }
    let code = s.exit.await;
    let drained = async {
        for p in pumps.iter_mut() {
            let _ = p.await;
        }
    };
    if tokio::time::timeout(DRAIN, drained).await.is_err() {
        for p in &pumps {
            p.abort();
        }
    }
    if let Some(t) = stdin_task {
        t.abort();
    }
    resize_task.abort();
    exit_status(code, &argv)
}

fn parse_resize(b: &[u8]) -> Option<(u16, u16)> {
    let v: Value = serde_json::from_slice(b).ok()?;
    Some((v["Width"].as_u64()? as u16, v["Height"].as_u64()? as u16))
}

enum WsOut {
    Chan(u8, Bytes),
    Pong(Vec<u8>),
    /// The last message: a close frame; the writer is handed back.
    Close,
}

async fn run_websocket<S>(io: S, v5: bool, opts: Options, session: ExecSession, attach: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(io);
    let mut reader = ws::Reader::new(r, true);
    let mut writer = ws::Writer::new(w, false);
    let (wtx, mut wrx) = mpsc::channel::<WsOut>(32);
    let write_task = tokio::spawn(async move {
        while let Some(m) = wrx.recv().await {
            let r = match m {
                WsOut::Chan(ch, data) => {
                    let mut msg = Vec::with_capacity(data.len() + 1);
                    msg.push(ch);
                    msg.extend_from_slice(&data);
                    writer.send(ws::OP_BINARY, &msg).await
                }
                WsOut::Pong(d) => writer.send(ws::OP_PONG, &d).await,
                WsOut::Close => {
                    let _ = writer
                        .send(ws::OP_CLOSE, &ws::close_payload(1000, ""))
                        .await;
                    return writer;
                }
            };
            if r.is_err() {
                return writer;
            }
        }
        writer
    });
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<(u16, u16)>(4);
    let read_wtx = wtx.clone();
    let want_stdin = opts.stdin;
    let mut read_task = tokio::spawn(async move {
        let mut stdin_tx = want_stdin.then_some(stdin_tx);
        while let Ok(Some(m)) = reader.next().await {
            match m {
                Message::Binary(d) if !d.is_empty() => match d[0] {
                    STDIN => {
                        if let Some(tx) = &stdin_tx {
                            if d.len() > 1
                                && tx.send(Bytes::copy_from_slice(&d[1..])).await.is_err()
                            {
                                stdin_tx = None;
                            }
                        }
                    }
                    RESIZE => {
                        if let Some(sz) = parse_resize(&d[1..]) {
                            let _ = resize_tx.send(sz).await;
                        }
                    }
                    CLOSE if v5 && d.get(1) == Some(&STDIN) => stdin_tx = None,
                    _ => {}
                },
                Message::Ping(p) => {
                    let _ = read_wtx.send(WsOut::Pong(p)).await;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        // The client is gone or done: the process sees the end of its input.
    });
    let (otx, mut orx) = mpsc::channel::<(u8, Bytes)>(32);
    let fwd_wtx = wtx.clone();
    let forward = tokio::spawn(async move {
        while let Some((ch, b)) = orx.recv().await {
            if fwd_wtx.send(WsOut::Chan(ch, b)).await.is_err() {
                break;
            }
        }
    });
    let process = run_process(session, opts.command.clone(), otx, stdin_rx, resize_rx);
    let status = if attach {
        // The container outlives an attach session: when the client leaves, it detaches.
        tokio::pin!(process);
        tokio::select! {
            s = &mut process => s,
            _ = &mut read_task => {
                forward.abort();
                drop(wtx);
                if let Ok(mut writer) = write_task.await {
                    let _ = writer.shutdown().await;
                }
                return;
            }
        }
    } else {
        process.await
    };
    let _ = forward.await;
    let _ = wtx
        .send(WsOut::Chan(ERROR, Bytes::from(status.to_string())))
        .await;
    let _ = wtx.send(WsOut::Close).await;
    drop(wtx);
    if let Ok(mut writer) = write_task.await {
        // Give the client a moment to answer the close, then end the connection.
        let _ = tokio::time::timeout(Duration::from_secs(5), read_task).await;
        let _ = writer.shutdown().await;
    }
}

async fn run_spdy<S>(io: S, opts: Options, session: ExecSession)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(io);
    let (sess, mut incoming) = Session::start(r, spdy::Transport::Raw(Box::new(w)), true);
    let expected =
        1 + opts.stdin as usize + opts.stdout as usize + opts.stderr as usize + opts.tty as usize;
    let mut streams: Vec<(String, spdy::Stream)> = Vec::new();
    let collected = tokio::time::timeout(STREAM_WAIT, async {
        while streams.len() < expected {
            match incoming.recv().await {
                Some(s) => {
                    let t = s.headers.get("streamtype").unwrap_or("").to_string();
                    streams.push((t, s));
                }
                None => return false,
            }
        }
        true
    })
    .await;
    if !matches!(collected, Ok(true)) {
        tracing::debug!("exec: SPDY client did not open its streams");
        sess.close().await;
        return;
    }
    let mut take = |t: &str| {
        streams
            .iter()
            .position(|(n, _)| n == t)
            .map(|i| streams.swap_remove(i).1)
    };
    let Some(error) = take("error") else {
        sess.close().await;
        return;
    };
    let stdin = take("stdin");
    let stdout = take("stdout");
    let stderr = take("stderr");
    let resize = take("resize");
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    if let Some(mut s) = stdin {
        tokio::spawn(async move {
            while let Some(b) = s.rx.recv().await {
                if stdin_tx.send(b).await.is_err() {
                    break;
                }
            }
        });
    }
    let (resize_tx, resize_rx) = mpsc::channel::<(u16, u16)>(4);
    if let Some(mut s) = resize {
        tokio::spawn(async move {
            // A stream of JSON objects, one per size change.
            let mut buf = Vec::new();
            while let Some(b) = s.rx.recv().await {
                buf.extend_from_slice(&b);
                let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
                let mut used = 0;
                while let Some(Ok(v)) = it.next() {
                    used = it.byte_offset();
                    if let (Some(w), Some(h)) = (v["Width"].as_u64(), v["Height"].as_u64()) {
                        let _ = resize_tx.send((w as u16, h as u16)).await;
                    }
                }
                buf.drain(..used);
            }
        });
    }
    let (otx, mut orx) = mpsc::channel::<(u8, Bytes)>(32);
    let (out_w, err_w) = (stdout.map(|s| s.tx), stderr.map(|s| s.tx));
    let writers = (out_w.clone(), err_w.clone());
    let forward = tokio::spawn(async move {
        while let Some((ch, b)) = orx.recv().await {
            let w = if ch == STDOUT { &writers.0 } else { &writers.1 };
            if let Some(w) = w {
                if w.write(&b).await.is_err() {
                    break;
                }
            }
        }
    });
    let status = run_process(session, opts.command.clone(), otx, stdin_rx, resize_rx).await;
    let _ = forward.await;
    let _ = error.tx.write(status.to_string().as_bytes()).await;
    for w in [Some(error.tx), out_w, err_w].into_iter().flatten() {
        let _ = w.close().await;
    }
    sess.close().await;
}
