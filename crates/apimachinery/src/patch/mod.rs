//! The three PATCH kinds the Kubernetes API accepts, on `serde_json::Value`:
//! JSON patch (RFC 6902, `application/json-patch+json`), JSON merge patch (RFC 7386,
//! `application/merge-patch+json`) and strategic merge patch
//! (`application/strategic-merge-patch+json`, kubectl's default) driven by the real
//! `patchStrategy`/`patchMergeKey` metadata of the built-in kinds.

mod json;
mod merge;
mod meta;
mod strategic;

pub use json::json_patch;
pub use merge::merge_patch;
pub use meta::{builtin_patch_schema, BuiltinSchema, FieldMeta, PatchSchema};
pub use strategic::strategic_merge_patch;

/// Why a patch could not be applied. The message is the one the Kubernetes API server
/// returns; the variant tells which HTTP status it answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document is malformed: 400 Bad Request.
    #[error("{0}")]
    BadRequest(String),
    /// The patch is well formed but cannot be applied to this object (a JSON patch path
    /// that does not exist, a failed `test`, lists of lists...): 422 Unprocessable Entity.
    #[error("{0}")]
    Unprocessable(String),
    /// Other strategic-merge failures (a list item without its merge key, an unknown
    /// `$patch` directive...), which Kubernetes passes through as 500 Internal Server Error.
    #[error("{0}")]
    Internal(String),
}

impl PatchError {
    /// The HTTP status code Kubernetes answers this error with.
    pub fn status_code(&self) -> u16 {
        match self {
            PatchError::BadRequest(_) => 400,
            PatchError::Unprocessable(_) => 422,
            PatchError::Internal(_) => 500,
        }
    }
}
