//! Request bodies in (JSON or YAML, size-capped) and responses out (JSON, optionally as a
//! `Table`), with the content negotiation kubectl and the Python client rely on.

use crate::error::{ApiError, ApiResult};
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// Kubernetes rejects request bodies over 3 MiB.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub async fn read_body(body: Body) -> ApiResult<Vec<u8>> {
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => Ok(b.to_vec()),
        Err(e) => {
            // axum reports the length limit as an error whose source chain names it.
            let msg = format!("{e:?}");
            if msg.contains("LengthLimit") || msg.contains("length limit") {
                Err(ApiError::too_large(MAX_BODY))
            } else {
                Err(ApiError::bad_request(format!(
                    "failed to read request body: {e}"
                )))
            }
        }
    }
}

pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Parse an object body. JSON is tried first (it is also valid YAML, but serde_json is
/// exact about numbers and faster); YAML for `application/yaml` and apply patches.
pub fn parse_object(bytes: &[u8], ct: &str) -> ApiResult<Value> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request("the body of the request was empty"));
    }
    if !(ct.is_empty()
        || ct == "application/json"
        || ct.contains("yaml")
        || corral_apimachinery::protobuf::is_protobuf_content_type(ct))
    {
        return Err(ApiError::unsupported_media_type(ct));
    }
    if corral_apimachinery::protobuf::is_protobuf_content_type(ct) {
        // kubectl's typed commands (create namespace/configmap/deployment...) send protobuf.
        return corral_apimachinery::protobuf::decode(bytes).map_err(|e| {
            ApiError::bad_request(format!("failed to decode protobuf request body: {e}"))
        });
    }
    let is_yaml = ct.contains("yaml");
    let v: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) if !is_yaml => {
            return Err(ApiError::bad_request(format!(
                "couldn't get version/kind; json parse error: {e}"
            )))
        }
        Err(_) => parse_yaml(bytes)?,
    };
    check_depth(&v)?;
    Ok(v)
}

/// No Kubernetes object nests this deep; refusing deeper ones keeps every stored object (and
/// its managedFields, a few levels deeper) readable by the JSON decoder's recursion limit.
pub const MAX_DEPTH: usize = 100;

pub fn check_depth(v: &Value) -> ApiResult<()> {
    fn depth(v: &Value, d: usize) -> usize {
        if d > MAX_DEPTH {
            return d;
        }
        match v {
            Value::Object(m) => m.values().map(|x| depth(x, d + 1)).max().unwrap_or(d),
            Value::Array(a) => a.iter().map(|x| depth(x, d + 1)).max().unwrap_or(d),
            _ => d,
        }
    }
    if depth(v, 0) > MAX_DEPTH {
        return Err(ApiError::bad_request(format!(
            "the request body nests deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(())
}

pub fn parse_yaml(bytes: &[u8]) -> ApiResult<Value> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request("the body of the request is not valid UTF-8"))?;
    let y: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))?;
    serde_json::to_value(y)
        .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))
}

/// Which representation the client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Json,
    Table { full_object: bool },
    PartialMetadata,
}

pub fn negotiate(headers: &HeaderMap, include_object: Option<&str>) -> Want {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for part in accept.split(',') {
        let p = part.replace(' ', "");
        if p.contains("as=Table") && p.contains("g=meta.k8s.io") {
            return Want::Table {
                full_object: include_object == Some("Object"),
            };
        }
        if p.contains("as=PartialObjectMetadata") {
            return Want::PartialMetadata;
        }
        if p.starts_with("application/json") || p.starts_with("*/*") || p.is_empty() {
            return Want::Json;
        }
    }
    Want::Json
}

pub fn json_response(code: u16, v: &Value, warnings: &[String]) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut resp = (
        StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    add_warnings(resp.headers_mut(), warnings);
    resp
}

/// Upstream caps warning text per response (4 KiB) so clients with header limits (Python's
/// http.client allows 100 headers) still get the response.
const MAX_WARNING_BYTES: usize = 4096;

pub fn add_warnings(h: &mut HeaderMap, warnings: &[String]) {
    let mut used = 0;
    for (i, w) in warnings.iter().enumerate() {
        if used + w.len() > MAX_WARNING_BYTES {
            let rest = format!("{} more warnings were truncated", warnings.len() - i);
            if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{rest}\"")) {
                h.append("Warning", v);
            }
            break;
        }
        used += w.len();
        let text = w.replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            h.append("Warning", v);
        }
    }
}

/// Object metadata reduced to what `PartialObjectMetadata` carries.
pub fn partial_metadata(obj: &Value) -> Value {
    let mut meta = obj["metadata"].clone();
    if let Some(m) = meta.as_object_mut() {
        m.remove("managedFields");
    }
    serde_json::json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
    })
}
