//! Port-forward, as the kubelet serves it: one SPDY session per `kubectl port-forward`,
//! either a raw `SPDY/3.1` upgrade (`X-Stream-Protocol-Version: portforward.k8s.io`) or
//! SPDY tunnelled in binary websocket messages (`SPDY/3.1+portforward.k8s.io`, kubectl
//! 1.30+). Each forwarded connection is a pair of streams with the same `requestID`: `data`
//! (the bytes) and `error` (a message when forwarding fails). Both are closed when the
//! connection ends.

use crate::spdy::{self, Session, Stream};
use crate::ws::{self, Message};
use crate::{status_response, Backend, Body};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

pub const PROTOCOL: &str = "portforward.k8s.io";
pub const WS_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

pub async fn serve(
    backend: Arc<dyn Backend>,
    mut req: Request<Incoming>,
    ns: &str,
    pod: &str,
) -> Response<Body> {
    let h = req.headers();
    let websocket = ws::is_upgrade(h);
    let raw = !websocket
        && h.get(hyper::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("SPDY/3.1"));
    if !websocket && !raw {
        return status_response(StatusCode::BAD_REQUEST, "Upgrade request required");
    }
    if websocket && !ws::offered_protocols(h).iter().any(|p| p == WS_PROTOCOL) {
        return status_response(
            StatusCode::BAD_REQUEST,
            &format!("unable to upgrade: the websocket subprotocol must be {WS_PROTOCOL}"),
        );
    }
    if raw
        && !crate::exec::stream_versions(h)
            .iter()
            .any(|p| p == PROTOCOL)
    {
        return status_response(
            StatusCode::BAD_REQUEST,
            &format!("unable to upgrade: unable to negotiate protocol: client supports {:?}, server supports [{PROTOCOL}]", crate::exec::stream_versions(h)),
        );
    }
    let key = h
        .get(hyper::header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(ws::accept_key);
    if websocket && key.is_none() {
        return status_response(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let target = Target {
        backend,
        namespace: ns.to_string(),
        pod: pod.to_string(),
    };
    tokio::spawn(async move {
        let up = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "port-forward: upgrade failed");
                return;
            }
        };
        let (r, w) = tokio::io::split(up);
        let (sess, incoming) = if websocket {
            let w: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = Box::new(w);
            let (sess, incoming, feed) = {
                // The SPDY bytes arrive as websocket messages: unwrap them into a pipe the
                // session reads as one byte stream.
                let (pipe_r, pipe_w) = tokio::io::duplex(64 * 1024);
                let (sess, incoming) = Session::start(
                    pipe_r,
                    spdy::Transport::Websocket(ws::Writer::new(w, false)),
                    true,
                );
                (sess, incoming, pipe_w)
            };
            tokio::spawn(unwrap_websocket(r, feed, sess.sender()));
            (sess, incoming)
        } else {
            Session::start(r, spdy::Transport::Raw(Box::new(w)), true)
        };
        run(target, incoming).await;
        sess.close().await;
    });
    if websocket {
        crate::exec::switching(&[
            ("connection", "Upgrade".into()),
            ("upgrade", "websocket".into()),
            ("sec-websocket-accept", key.unwrap_or_default()),
            ("sec-websocket-protocol", WS_PROTOCOL.into()),
        ])
    } else {
        crate::exec::switching(&[
            ("connection", "Upgrade".into()),
            ("upgrade", "SPDY/3.1".into()),
            ("x-stream-protocol-version", PROTOCOL.into()),
        ])
    }
}

/// Websocket messages in, SPDY bytes out (pings answered through the session's writer).
async fn unwrap_websocket<R>(r: R, mut feed: tokio::io::DuplexStream, out: mpsc::Sender<spdy::Out>)
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut reader = ws::Reader::new(r, true);
    while let Ok(Some(m)) = reader.next().await {
        match m {
            Message::Binary(d) if feed.write_all(&d).await.is_err() => break,
            Message::Ping(p) => {
                let _ = out.send(spdy::Out::WsPong(p)).await;
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    let _ = feed.shutdown().await;
}

#[derive(Clone)]
struct Target {
    backend: Arc<dyn Backend>,
    namespace: String,
    pod: String,
}

/// Pairs streams by request id and forwards each pair; returns when the client is gone.
async fn run(target: Target, mut incoming: mpsc::Receiver<Stream>) {
    #[derive(Default)]
    struct Pair {
        data: Option<Stream>,
        error: Option<Stream>,
    }
    let mut pending: HashMap<String, Pair> = HashMap::new();
    while let Some(s) = incoming.recv().await {
        let Some(id) = s.headers.get("requestid").map(str::to_string) else {
            // Kubernetes requires the header since 1.6: a stream without one is refused.
            let _ = s.tx.reset(spdy::RST_PROTOCOL_ERROR).await;
            continue;
        };
        let kind = s.headers.get("streamtype").unwrap_or("").to_string();
        let pair = pending.entry(id.clone()).or_default();
        match kind.as_str() {
            "data" => pair.data = Some(s),
            "error" => pair.error = Some(s),
            _ => {
                let _ = s.tx.reset(spdy::RST_PROTOCOL_ERROR).await;
                continue;
            }
        }
        if pair.data.is_some() && pair.error.is_some() {
            let p = pending.remove(&id).unwrap();
            tokio::spawn(forward(target.clone(), p.data.unwrap(), p.error.unwrap()));
        }
    }
}

async fn forward(t: Target, mut data: Stream, error: Stream) {
    let port_header = data.headers.get("port").unwrap_or("").to_string();
    let result = match port_header.parse::<u16>() {
        Ok(p) if p > 0 => match t.backend.port_forward(&t.namespace, &t.pod, p).await {
            Ok(conn) => {
                splice(conn, &mut data).await;
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
        _ => Err(format!("invalid port {port_header:?}")),
    };
    if let Err(e) = result {
        // The kubelet's wording; kubectl shows it as "an error occurred forwarding ...".
        let msg = format!(
            "error forwarding port {port_header} to pod {}_{}: {e}",
            t.pod, t.namespace
        );
        let _ = error.tx.write(msg.as_bytes()).await;
    }
    let _ = data.tx.close().await;
    let _ = error.tx.close().await;
}

/// Copies both ways; when one direction ends the other gets a second to finish (as
/// containerd's port-forward does).
async fn splice(conn: tokio::net::TcpStream, data: &mut Stream) {
    let (mut cr, mut cw) = conn.into_split();
    let tx = data.tx.clone();
    let mut to_client = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.write(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let to_pod = async {
        while let Some(b) = data.rx.recv().await {
            if cw.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::select! {
        _ = &mut to_client => {
            // The pod closed: what the client still sends has nowhere to go.
        }
        _ = to_pod => {
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut to_client).await;
        }
    }
    to_client.abort();
}
