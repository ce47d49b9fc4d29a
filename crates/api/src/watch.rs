//! Watch: a stream of newline-delimited `{"type","object"}` events from a resourceVersion,
//! filtered by namespace and selectors, with bookmarks, timeouts, the synthetic ADDED events
//! a watch without a resourceVersion starts with, and a 410 Expired ERROR event when the
//! revision was compacted. Objects that move into or out of a selection are reported as
//! ADDED or DELETED, as upstream does.

use crate::body::{negotiate, Want};
use crate::error::{ApiError, ApiResult};
use crate::event_cache::Decoded;
use crate::filter::Filter;
use crate::handlers::read::list_page_all;
use crate::registry::Resource;
use crate::request::Query;
use crate::server::Shared;
use crate::storage;
use crate::table;
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use corral_store::{EventKind, WatchMessage};
use futures::{FutureExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;

enum Step {
    Send(Bytes),
    Skip,
    End(Option<Bytes>),
}

struct Encoder {
    res: Resource,
    table: Option<bool>,
}

impl Encoder {
    fn event(&self, ty: &str, obj: Value) -> Bytes {
        let object = match self.table {
            Some(full) if ty != "BOOKMARK" && ty != "ERROR" => {
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                table::render(&self.res, &[obj], &rv, None, full)
            }
            _ => obj,
        };
        let mut line =
            serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

pub async fn serve(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    q: &Query,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let filter = Filter::from_query(res, q.get("labelSelector"), q.get("fieldSelector"))?;
    let bookmarks = q.flag("allowWatchBookmarks");
    let timeout = q.u64("timeoutSeconds")?.map(Duration::from_secs);
    let rv_param = q.get("resourceVersion").unwrap_or("");
    let send_initial = q.flag("sendInitialEvents");
    let enc = Encoder {
        res: res.clone(),
        table: match negotiate(headers, q.get("includeObject")) {
            Want::Table { full_object } => Some(full_object),
            _ => None,
        },
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let mut initial = Vec::new();
    let start_rev: i64 = if rv_param.is_empty() || rv_param == "0" || send_initial {
        // "Get state and start at most recent": synthetic ADDED for what exists now.
        let page = list_page_all(st, res, ns, &filter).await?;
        for obj in page.items {
            initial.push(enc.event("ADDED", obj));
        }
        if send_initial && bookmarks {
            initial.push(enc.event(
                "BOOKMARK",
                json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": {"resourceVersion": page.revision.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}),
            ));
        }
        page.revision
    } else {
        rv_param.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "resourceVersion: Invalid value: {rv_param:?}: must be a valid resource version"
            ))
        })?
    };
    let prefix = storage::prefix(res, ns);
    let end = storage::prefix_end(&prefix);
    let watch = match st.store.watch(&prefix, &end, start_rev) {
        Ok(w) => Some(w),
        Err(corral_store::Error::Compacted { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let res = res.clone();
    let st = st.clone();
    tokio::spawn(async move {
        for b in initial {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        let Some(mut watch) = watch else {
            let status = ApiError::gone(format!("too old resource version: {start_rev}")).status();
            let _ = tx.send(enc.event("ERROR", status)).await;
            return;
        };
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        // What one store message becomes on this watch.
        let step = |msg: Option<Result<WatchMessage, corral_store::Error>>| -> Step {
            match msg {
                None | Some(Err(corral_store::Error::Closed)) => Step::End(None),
                Some(Err(corral_store::Error::Compacted { .. })) => {
                    let status = ApiError::gone("too old resource version").status();
                    Step::End(Some(enc.event("ERROR", status)))
                }
                Some(Err(_)) => Step::End(None),
                Some(Ok(WatchMessage::Progress(rev))) if bookmarks => Step::Send(enc.event(
                    "BOOKMARK",
                    json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": {"resourceVersion": rev.to_string()}}),
                )),
                Some(Ok(WatchMessage::Progress(_))) => Step::Skip,
                Some(Ok(WatchMessage::Event(ev))) => {
                    let decoded = st.events.get(&res, &ev);
                    let Some(ty) = classify(&filter, &ev, &decoded) else {
                        return Step::Skip;
                    };
                    match (enc.table, &decoded.obj) {
                        (None, _) => Step::Send(decoded.line(ty)),
                        (Some(_), Some(obj)) => Step::Send(enc.event(ty, obj.clone())),
                        (Some(_), None) => Step::Skip,
                    }
                }
            }
        };
        loop {
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, watch.next()).await.ok(),
                    None => Some(watch.next().await),
                }
            };
            let msg = tokio::select! {
                m = next => m,
                _ = tx.closed() => return,
            };
            let Some(msg) = msg else {
                return; // timeout reached
            };
            // Gather what is already waiting into one write: one TLS record and syscall
            // for a burst instead of one per event.
            let mut out = bytes::BytesMut::new();
            let mut end = false;
            let mut current = Some(msg);
            while let Some(m) = current.take() {
                match step(m) {
                    Step::Send(b) => out.extend_from_slice(&b),
                    Step::Skip => {}
                    Step::End(last) => {
                        if let Some(b) = last {
                            out.extend_from_slice(&b);
                        }
                        end = true;
                        break;
                    }
                }
                if out.len() < 64 * 1024 {
                    current = watch.next().now_or_never();
                }
            }
            if !out.is_empty() && tx.send(out.freeze()).await.is_err() {
                return;
            }
            if end {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Turn a store event into a watch event type for this filter, or None if it is not
/// visible. Objects entering or leaving a selection become ADDED or DELETED.
fn classify(filter: &Filter, ev: &corral_store::Event, d: &Decoded) -> Option<&'static str> {
    let obj = d.obj.as_ref()?;
    match ev.kind {
        EventKind::Put if filter.is_everything() => {
            // Without a selector the previous version need not be decoded at all.
            if ev.kv.create_revision == ev.kv.mod_revision {
                Some("ADDED")
            } else {
                Some("MODIFIED")
            }
        }
        EventKind::Put => {
            let now = filter.matches(obj);
            // Without a prev (compacted), an update is still an update.
            let was = match d.prev() {
                Some(p) => filter.matches(p),
                None => ev.kv.create_revision != ev.kv.mod_revision && now,
            };
            match (was, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
        EventKind::Delete => (filter.is_everything() || filter.matches(obj)).then_some("DELETED"),
    }
}
