//! Pod streaming subresources (`log`, `exec`, `attach`, `portforward`), as Kubernetes
//! serves them: the API server checks the pod and container, finds the node agent from the
//! Node object (`status.addresses` InternalIP, `status.daemonEndpoints.kubeletEndpoint.Port`)
//! and proxies to it over TLS with its own client certificate. Logs are a plain streamed GET;
//! exec/attach/port-forward are upgrades (websocket GET or SPDY POST), whose two upgraded
//! connections are spliced byte for byte: the node terminates the streaming protocols.

use crate::error::{ApiError, ApiResult};
use crate::request::Query;
use crate::server::Shared;
use crate::storage;
use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Node agents answer within these or are reported as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Request headers an upgrade needs the node to see.
const UPGRADE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];

/// Where a node's agent listens.
struct NodeTarget {
    node: String,
    host: String,
    port: u16,
}

fn containers(pod: &Value, field: &str) -> Vec<String> {
    pod["spec"][field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

/// The container a request means, with Kubernetes' messages (`validateContainer`).
fn pick_container(pod: &Value, name: &str, asked: Option<&str>) -> ApiResult<String> {
    let main = containers(pod, "containers");
    match asked.filter(|c| !c.is_empty()) {
        None => match main.len() {
            1 => Ok(main[0].clone()),
            0 => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}"
            ))),
            _ => {
                let mut msg = format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    main.join(" ")
                );
                let init = containers(pod, "initContainers");
                if !init.is_empty() {
                    msg.push_str(&format!(
                        " or one of the init containers: [{}]",
                        init.join(" ")
                    ));
                }
                Err(ApiError::bad_request(msg))
            }
        },
        Some(c) => {
            let known = main
                .iter()
                .chain(&containers(pod, "initContainers"))
                .chain(&containers(pod, "ephemeralContainers"))
                .any(|n| n == c);
            if known {
                Ok(c.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
    }
}

fn container_status<'a>(pod: &'a Value, container: &str) -> Option<&'a Value> {
    [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ]
    .iter()
    .flat_map(|f| pod["status"][*f].as_array().into_iter().flatten())
    .find(|s| s["name"].as_str() == Some(container))
}

/// Refuses, as the kubelet would, to read logs of a container that has none yet (from the
/// status the node reported; without one, the node decides).
fn check_log_state(pod: &Value, name: &str, container: &str, previous: bool) -> ApiResult<()> {
    let Some(s) = container_status(pod, container) else {
        return Ok(());
    };
    let last_terminated = !s["lastState"]["terminated"].is_null();
    if previous {
        if !last_terminated {
            return Err(ApiError::bad_request(format!(
                "previous terminated container {container:?} in pod {name:?} not found"
            )));
        }
        return Ok(());
    }
    let state = &s["state"];
    if !state["running"].is_null() || !state["terminated"].is_null() || last_terminated {
        return Ok(());
    }
    Err(ApiError::bad_request(waiting_message(
        state, name, container,
    )))
}

fn waiting_message(state: &Value, name: &str, container: &str) -> String {
    match state["waiting"]["reason"].as_str() {
        Some("ErrImagePull") => {
            format!("container {container:?} in pod {name:?} is waiting to start: image can't be pulled")
        }
        Some("ImagePullBackOff") => format!(
            "container {container:?} in pod {name:?} is waiting to start: trying and failing to pull image"
        ),
        Some(r) if !r.is_empty() => {
            format!("container {container:?} in pod {name:?} is waiting to start: {r}")
        }
        _ => format!("container {container:?} in pod {name:?} is waiting to start - no logs yet"),
    }
}

/// exec and attach need a running container.
fn check_running(pod: &Value, name: &str, container: &str) -> ApiResult<()> {
    let Some(s) = container_status(pod, container) else {
        return Ok(());
    };
    let state = &s["state"];
    if !state["running"].is_null() {
        return Ok(());
    }
    if !state["terminated"].is_null() {
        return Err(ApiError::bad_request(format!(
            "container {container:?} in pod {name:?} is terminated"
        )));
    }
    Err(ApiError::bad_request(waiting_message(
        state, name, container,
    )))
}

async fn node_target(st: &Shared, pod: &Value, name: &str) -> ApiResult<NodeTarget> {
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let res = st
        .registry
        .lookup("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let Some((obj, _)) = storage::get(&st.store, &res, None, node).await? else {
        // As Kubernetes: the node lookup's NotFound reaches the client.
        return Err(ApiError::not_found("nodes", node));
    };
    let addrs = obj["status"]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let by_type = |t: &str| {
        addrs
            .iter()
            .find(|a| a["type"] == t)
            .and_then(|a| a["address"].as_str())
            .map(String::from)
    };
    let host = by_type("InternalIP")
        .or_else(|| by_type("ExternalIP"))
        .or_else(|| by_type("Hostname"))
        .ok_or_else(|| {
            ApiError::unavailable(format!(
                "node {node:?} reports no address (status.addresses) to reach its agent at"
            ))
        })?;
    let port = obj["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .filter(|p| *p > 0 && *p <= u16::MAX as u64)
        .unwrap_or(10250) as u16;
    Ok(NodeTarget {
        node: node.to_string(),
        host,
        port,
    })
}

/// The query without the parameters the path now carries.
fn forward_query(raw: Option<&str>, drop: &[&str]) -> String {
    let kept: Vec<&str> = raw
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| !drop.contains(&p.split('=').next().unwrap_or("")))
        .collect();
    if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Body>;

/// Opens a TLS connection to a node agent, presenting the API server's client identity.
async fn connect(st: &Shared, t: &NodeTarget) -> ApiResult<Sender> {
    let unreachable = |why: String| {
        ApiError::unavailable(format!(
            "cannot reach the node agent of node {:?} at {}:{}: {why}",
            t.node, t.host, t.port
        ))
    };
    let Some(tls) = st.config.kubelet_client.clone() else {
        return Err(ApiError::unavailable(
            "this API server has no client credentials for node agents (kubelet_client is not configured)",
        ));
    };
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((t.host.as_str(), t.port)),
    )
    .await
    .map_err(|_| unreachable("connection timed out".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let server_name = rustls::pki_types::ServerName::try_from(t.host.clone())
        .map_err(|e| unreachable(format!("invalid address: {e}")))?;
    let mut cfg = (*tls).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(server_name, tcp),
    )
    .await
    .map_err(|_| unreachable("TLS handshake timed out".into()))?
    .map_err(|e| unreachable(format!("TLS: {e}")))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "node agent connection ended");
        }
    });
    Ok(sender)
}

async fn send(
    mut sender: Sender,
    t: &NodeTarget,
    req: Request<Body>,
) -> ApiResult<hyper::Response<hyper::body::Incoming>> {
    let fail = |why: String| {
        ApiError::unavailable(format!(
            "the node agent of node {:?} at {}:{} did not answer: {why}",
            t.node, t.host, t.port
        ))
    };
    tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| fail("timed out".into()))?
        .map_err(|e| fail(e.to_string()))
}

/// A node agent's refusal as the API's error: its Status message (or text), its code.
async fn upstream_error(resp: hyper::Response<hyper::body::Incoming>) -> ApiError {
    let code = resp.status().as_u16();
    let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 64 * 1024)
        .await
        .unwrap_or_default();
    let msg = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["message"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
    match code {
        400 => ApiError::bad_request(msg),
        401 | 403 => ApiError::new(
            503,
            "ServiceUnavailable",
            format!("the node agent refused the API server's credentials: {msg}"),
        ),
        404 => ApiError::new(404, "NotFound", msg),
        _ => ApiError::internal(msg),
    }
}

fn node_request(t: &NodeTarget, method: Method, path: String) -> axum::http::request::Builder {
    let host = if t.host.contains(':') {
        format!("[{}]:{}", t.host, t.port)
    } else {
        format!("{}:{}", t.host, t.port)
    };
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
}

/// `GET pods/log`: streams the node's answer chunk by chunk and ends when it does.
pub async fn log(
    st: &Shared,
    pod: &Value,
    ns: &str,
    name: &str,
    q: &Query,
    raw_query: Option<&str>,
) -> ApiResult<Response> {
    let container = pick_container(pod, name, q.get("container"))?;
    let t = node_target(st, pod, name).await?;
    check_log_state(pod, name, &container, q.flag("previous"))?;
    let sender = connect(st, &t).await?;
    let path = format!(
        "/containerLogs/{ns}/{name}/{container}{}",
        forward_query(
            raw_query,
            &["container", "insecureSkipTLSVerifyBackend", "pretty"]
        )
    );
    let req = node_request(&t, Method::GET, path)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = send(sender, &t, req).await?;
    if !resp.status().is_success() {
        return Err(upstream_error(resp).await);
    }
    let mut out = Response::new(Body::new(resp.into_body()));
    out.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(out)
}

/// exec, attach and portforward: an upgrade proxied to the node, then spliced.
pub async fn stream(
    st: &Shared,
    pod: &Value,
    ns: &str,
    name: &str,
    sub: &str,
    q: &Query,
    mut req: Request<Body>,
) -> ApiResult<Response> {
    let container = match sub {
        "portforward" => None,
        _ => Some(pick_container(pod, name, q.get("container"))?),
    };
    let t = node_target(st, pod, name).await?;
    let path = match &container {
        None => format!(
            "/portForward/{ns}/{name}{}",
            forward_query(req.uri().query(), &[])
        ),
        Some(c) => {
            check_running(pod, name, c)?;
            format!(
                "/{sub}/{ns}/{name}/{c}{}",
                forward_query(req.uri().query(), &["container"])
            )
        }
    };
    let upgrade = req.headers().contains_key(header::UPGRADE);
    if !upgrade {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    let mut builder = node_request(&t, req.method().clone(), path);
    for h in UPGRADE_HEADERS {
        for v in req.headers().get_all(*h) {
            builder = builder.header(*h, v);
        }
    }
    let node_req = builder
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let sender = connect(st, &t).await?;
    let mut resp = send(sender, &t, node_req).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(upstream_error(resp).await);
    }
    let client_up = hyper::upgrade::on(&mut req);
    let node_up = hyper::upgrade::on(&mut resp);
    let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in resp.headers() {
        let k = k.as_str();
        if UPGRADE_HEADERS.contains(&k) || k == "sec-websocket-accept" {
            out = out.header(k, v);
        }
    }
    let node = t.node.clone();
    tokio::spawn(async move {
        let (client, upstream) = match tokio::join!(client_up, node_up) {
            (Ok(c), Ok(n)) => (c, n),
            (c, n) => {
                tracing::debug!(
                    node,
                    client = c.is_ok(),
                    upstream = n.is_ok(),
                    "stream proxy: upgrade failed"
                );
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(node, error = %e, "stream proxy ended");
        }
    });
    out.body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn container_choice_and_messages() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        assert_eq!(
            pick_container(&pod, "web", None).unwrap_err().to_string(),
            "a container name must be specified for pod web, choose one of: [a b] or one of the init containers: [i]"
        );
        assert_eq!(pick_container(&pod, "web", Some("i")).unwrap(), "i");
        assert_eq!(
            pick_container(&pod, "web", Some("x"))
                .unwrap_err()
                .to_string(),
            "container x is not valid for pod web"
        );
        let one = json!({"spec": {"containers": [{"name": "main"}]}});
        assert_eq!(pick_container(&one, "web", None).unwrap(), "main");
    }

    #[test]
    fn log_state_follows_the_kubelet() {
        let pod = |state: Value, last: Value| json!({"status": {"containerStatuses": [{"name": "c", "state": state, "lastState": last}]}});
        let waiting = pod(
            json!({"waiting": {"reason": "ContainerCreating"}}),
            json!({}),
        );
        assert_eq!(
            check_log_state(&waiting, "web", "c", false)
                .unwrap_err()
                .to_string(),
            "container \"c\" in pod \"web\" is waiting to start: ContainerCreating"
        );
        assert_eq!(
            check_log_state(&waiting, "web", "c", true)
                .unwrap_err()
                .to_string(),
            "previous terminated container \"c\" in pod \"web\" not found"
        );
        let crashing = pod(
            json!({"waiting": {"reason": "CrashLoopBackOff"}}),
            json!({"terminated": {"exitCode": 1}}),
        );
        assert!(check_log_state(&crashing, "web", "c", false).is_ok());
        assert!(check_log_state(&crashing, "web", "c", true).is_ok());
        assert!(check_running(&crashing, "web", "c").is_err());
        let running = pod(json!({"running": {}}), json!({}));
        assert!(check_running(&running, "web", "c").is_ok());
        // No status yet: the node decides.
        assert!(check_log_state(&json!({}), "web", "c", false).is_ok());
    }

    #[test]
    fn query_forwarding_drops_the_container() {
        assert_eq!(
            forward_query(
                Some("container=main&follow=true&tailLines=5"),
                &["container"]
            ),
            "?follow=true&tailLines=5"
        );
        assert_eq!(forward_query(Some("container=main"), &["container"]), "");
        assert_eq!(forward_query(None, &[]), "");
    }
}
