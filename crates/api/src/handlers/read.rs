//! get and list, with selectors, limit/continue pagination and Table output.

use crate::body::{json_response, negotiate, partial_metadata, Want};
use crate::error::{ApiError, ApiResult};
use crate::filter::Filter;
use crate::registry::Resource;
use crate::request::Query;
use crate::server::Shared;
use crate::storage;
use crate::table;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};

pub async fn get(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    q: &Query,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let (obj, _) = storage::get_or_404(&st.store, res, ns, name).await?;
    Ok(render_one(res, obj, q, headers))
}

pub fn render_one(res: &Resource, obj: Value, q: &Query, headers: &HeaderMap) -> Response {
    match negotiate(headers, q.get("includeObject")) {
        Want::Table { full_object } => {
            let rv = obj["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let t = table::render(res, &[obj], &rv, None, full_object);
            json_response(200, &t, &[])
        }
        Want::PartialMetadata => json_response(200, &partial_metadata(&obj), &[]),
        Want::Json => json_response(200, &obj, &[]),
    }
}

/// What a continue token carries: the revision of the first page and where to resume.
fn encode_continue(rev: i64, start: &[u8]) -> String {
    let v = json!({"v": "meta.k8s.io/v1", "rv": rev, "start": String::from_utf8_lossy(start)});
    base64::engine::general_purpose::URL_SAFE.encode(v.to_string())
}

fn decode_continue(tok: &str) -> ApiResult<(i64, Vec<u8>)> {
    let bad =
        || ApiError::bad_request("continue key is not valid: illegal base64 data at input byte 0");
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(tok)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(tok))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rev = v["rv"].as_i64().ok_or_else(bad)?;
    let start = v["start"].as_str().ok_or_else(bad)?.as_bytes().to_vec();
    Ok((rev, start))
}

fn continue_too_old() -> ApiError {
    ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.")
}

/// The objects of a resource (optionally one namespace) matching a filter, one page.
pub struct Page {
    pub items: Vec<Value>,
    pub revision: i64,
    pub continue_token: Option<String>,
    pub remaining: Option<u64>,
}

pub async fn list_page(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    filter: &Filter,
    limit: usize,
    cont: Option<&str>,
) -> ApiResult<Page> {
    let mut items = Vec::new();
    let (revision, continue_token) = list_each(st, res, ns, filter, limit, cont, &mut |obj| {
        items.push(obj);
        Ok(())
    })
    .await?;
    Ok(Page {
        items,
        revision,
        continue_token,
        remaining: None,
    })
}

/// Visit the matching objects of one page in key order, one at a time, so a caller that
/// encodes as it goes never holds the whole list decoded. Returns the list's revision and
/// the continue token, if more remain.
pub async fn list_each(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    filter: &Filter,
    limit: usize,
    cont: Option<&str>,
    sink: &mut (dyn FnMut(Value) -> ApiResult<()> + Send),
) -> ApiResult<(i64, Option<String>)> {
    let prefix = storage::prefix(res, ns);
    let end = storage::prefix_end(&prefix);
    let (mut start, first_rev) = match cont {
        Some(tok) if !tok.is_empty() => {
            let (rev, start) = decode_continue(tok)?;
            if !start.starts_with(&prefix) {
                return Err(ApiError::bad_request(
                    "continue key is not valid: key does not match the request",
                ));
            }
            if rev < st.store.compacted_revision() {
                return Err(continue_too_old());
            }
            (start, Some(rev))
        }
        _ => (prefix.clone(), None),
    };
    let mut count = 0usize;
    let mut revision = 0;
    // An unlimited list is one snapshot read (consistent with its resourceVersion); a
    // limited one reads in chunks until the page is full, as selectors may filter most out.
    let chunk = if limit == 0 { 0 } else { (limit + 1).max(64) };
    // Every chunk of every page reads the state at the first page's revision, so a
    // paginated list is as consistent as an unpaginated one (Kubernetes gets this from
    // etcd's reads at a revision; the embedded store undoes later changes from its log).
    let mut snapshot = first_rev;
    loop {
        let r = match snapshot {
            Some(rev) => {
                st.store
                    .range_at(&start, &end, chunk, rev)
                    .await
                    .map_err(|e| match e {
                        corral_store::Error::Compacted { .. } => continue_too_old(),
                        e => e.into(),
                    })?
            }
            None => st.store.range(&start, &end, chunk).await?,
        };
        if revision == 0 {
            revision = r.revision;
        }
        snapshot = Some(revision);
        let n = r.kvs.len();
        for kv in r.kvs.iter() {
            let obj = storage::decode(res, kv)?;
            if !filter.matches(&obj) {
                continue;
            }
            if limit > 0 && count == limit {
                // There is at least one more match: hand out a token starting here.
                let rev = first_rev.unwrap_or(revision);
                return Ok((rev, Some(encode_continue(rev, &kv.key))));
            }
            count += 1;
            sink(obj)?;
        }
        if !r.more || n == 0 || chunk == 0 {
            break;
        }
        let mut next = r.kvs.last().unwrap().key.clone();
        next.push(0);
        start = next;
    }
    Ok((first_rev.unwrap_or(revision), None))
}

pub async fn list_page_all(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    filter: &Filter,
) -> ApiResult<Page> {
    list_page(st, res, ns, filter, 0, None).await
}

pub async fn list(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    q: &Query,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let filter = Filter::from_query(res, q.get("labelSelector"), q.get("fieldSelector"))?;
    let limit = q.u64("limit")?.unwrap_or(0) as usize;
    match negotiate(headers, q.get("includeObject")) {
        Want::Table { full_object } => {
            let page = list_page(st, res, ns, &filter, limit, q.get("continue")).await?;
            let rv = page.revision.to_string();
            let t = table::render(
                res,
                &page.items,
                &rv,
                page.continue_token.as_deref(),
                full_object,
            );
            Ok(json_response(200, &t, &[]))
        }
        want => {
            let partial = want == Want::PartialMetadata;
            let (kind, av) = if partial {
                (
                    "PartialObjectMetadataList".to_string(),
                    "meta.k8s.io/v1".to_string(),
                )
            } else {
                (res.list_kind.clone(), res.api_version())
            };
            let cont = q.get("continue").filter(|c| !c.is_empty());
            if limit == 0 && cont.is_none() {
                return stream_list(st, res, ns, filter, partial, &kind, &av).await;
            }
            let mut out = Vec::with_capacity(4096);
            // Items are encoded as they are read; the list's metadata goes last in the text
            // because its resourceVersion and continue token are known only at the end.
            out.extend_from_slice(
                format!(
                    "{{\"kind\":{},\"apiVersion\":{},\"items\":[",
                    json!(kind),
                    json!(av)
                )
                .as_bytes(),
            );
            let mut first = true;
            let (rev, token) = list_each(st, res, ns, &filter, limit, cont, &mut |obj| {
                encode_item(&mut out, &mut first, obj, partial)
            })
            .await?;
            let mut meta = json!({"resourceVersion": rev.to_string()});
            if let Some(c) = token {
                meta["continue"] = json!(c);
            }
            out.extend_from_slice(format!("],\"metadata\":{meta}}}").as_bytes());
            Ok((
                axum::http::StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                out,
            )
                .into_response())
        }
    }
}

/// Objects per chunk of an unpaginated list read from the store.
const LIST_CHUNK: usize = 500;
/// Bytes of encoded items gathered before they are handed to the connection.
const LIST_FLUSH: usize = 64 * 1024;

/// Appends one list item (or its metadata only) to `out`, after a comma unless first.
fn encode_item(out: &mut Vec<u8>, first: &mut bool, obj: Value, partial: bool) -> ApiResult<()> {
    if !*first {
        out.push(b',');
    }
    *first = false;
    let v = if partial { partial_metadata(&obj) } else { obj };
    serde_json::to_writer(out, &v).map_err(|e| ApiError::internal(format!("encoding list: {e}")))
}

/// Encodes the matching objects of one chunk of key-values into `out`.
fn encode_chunk(
    out: &mut Vec<u8>,
    first: &mut bool,
    res: &Resource,
    filter: &Filter,
    kvs: &[corral_store::KeyValue],
    partial: bool,
) -> ApiResult<()> {
    for kv in kvs {
        let obj = storage::decode(res, kv)?;
        if filter.matches(&obj) {
            encode_item(out, first, obj, partial)?;
        }
    }
    Ok(())
}

/// An unpaginated list, streamed: the store hands out one snapshot in chunks and the
/// response body is written as they are encoded, so listing 100,000 objects holds a few
/// chunks in memory, not the whole list twice (decoded and encoded). The first chunk is
/// done before the answer starts, so a small list (and any error in its first chunk)
/// answers exactly as before; an error later can only cut the body short, which the
/// client sees as a broken response.
async fn stream_list(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    filter: Filter,
    partial: bool,
    kind: &str,
    api_version: &str,
) -> ApiResult<Response> {
    let prefix = storage::prefix(res, ns);
    let end = storage::prefix_end(&prefix);
    let mut chunks = st.store.range_chunks(&prefix, &end, LIST_CHUNK).await?;
    // The revision is known up front here, so the list's metadata leads, as in Kubernetes.
    let mut out = format!(
        "{{\"kind\":{},\"apiVersion\":{},\"metadata\":{{\"resourceVersion\":\"{}\"}},\"items\":[",
        json!(kind),
        json!(api_version),
        chunks.revision
    )
    .into_bytes();
    let mut first = true;
    if let Some(kvs) = chunks.next().await {
        encode_chunk(&mut out, &mut first, res, &filter, &kvs?, partial)?;
    }
    let more = match chunks.next().await {
        Some(kvs) => Some(kvs?),
        None => None,
    };
    let Some(second) = more else {
        out.extend_from_slice(b"]}");
        return Ok((
            axum::http::StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            out,
        )
            .into_response());
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
    let res = res.clone();
    tokio::spawn(async move {
        let mut next = Some(Ok(second));
        while let Some(kvs) = next {
            let encoded = kvs
                .map_err(crate::error::ApiError::from)
                .and_then(|kvs| encode_chunk(&mut out, &mut first, &res, &filter, &kvs, partial));
            if let Err(e) = encoded {
                tracing::warn!(error = %e, "list cut short");
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                return;
            }
            if out.len() >= LIST_FLUSH {
                let ready = std::mem::replace(&mut out, Vec::with_capacity(LIST_FLUSH * 2));
                if tx.send(Ok(ready.into())).await.is_err() {
                    return; // the client went away: dropping `chunks` ends the read
                }
            }
            next = chunks.next().await;
        }
        out.extend_from_slice(b"]}");
        let _ = tx.send(Ok(out.into())).await;
    });
    let mut resp = (
        axum::http::StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response();
    resp.extensions_mut()
        .insert(crate::server::CompressibleStream);
    Ok(resp)
}
