//! The non-apply patch types, chosen by Content-Type: JSON patch, JSON merge patch and
//! strategic merge patch (built-in kinds only; custom resources get a 415 for it, as
//! upstream, because they have no patch strategy metadata).

use crate::error::{ApiError, ApiResult};
use crate::registry::Resource;
use corral_apimachinery::patch;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> ApiResult<PatchKind> {
        match ct {
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(PatchKind::Apply),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// Upstream's limit on the operations of one JSON patch.
pub const MAX_JSON_PATCH_OPS: usize = 10_000;

pub fn apply_patch(
    res: &Resource,
    kind: PatchKind,
    current: &Value,
    doc: &Value,
) -> ApiResult<Value> {
    let name = current["metadata"]["name"].as_str().unwrap_or("");
    match kind {
        PatchKind::Json => {
            if let Some(ops) = doc.as_array().filter(|ops| ops.len() > MAX_JSON_PATCH_OPS) {
                return Err(ApiError::new(
                    413,
                    "RequestEntityTooLarge",
                    format!(
                        "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPS}, got {}",
                        ops.len()
                    ),
                ));
            }
            if !doc.is_array() {
                return Err(ApiError::bad_request(
                    "json: cannot unmarshal object into Go value of type jsonpatch.Patch",
                ));
            }
            let mut out = current.clone();
            patch::json_patch(&mut out, doc).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
            Ok(out)
        }
        PatchKind::Merge => {
            if !doc.is_object() {
                return Err(ApiError::bad_request(format!(
                    "error decoding patch: json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
                    json_kind(doc)
                )));
            }
            let mut out = current.clone();
            patch::merge_patch(&mut out, doc);
            Ok(out)
        }
        PatchKind::Strategic => {
            if !doc.is_object() {
                return Err(ApiError::bad_request(format!(
                    "error decoding patch: json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
                    json_kind(doc)
                )));
            }
            let Some(def) = res.definition else {
                return Err(ApiError::unsupported_media_type(
                    "application/strategic-merge-patch+json is not supported for custom resources",
                ));
            };
            patch::strategic_merge_patch(current, doc, patch::builtin_patch_schema(), def).map_err(
                |e| {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!("{} \"{name}\" is invalid: {e}", res.kind),
                    )
                },
            )
        }
        PatchKind::Apply => unreachable!("apply patches are handled by the apply module"),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Null => "null",
        Value::Object(_) => "object",
    }
}
