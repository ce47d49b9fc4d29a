//! The crate's error type: every bad input is a typed, readable error, never a panic.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{path}: not an image archive: {reason}")]
    NotAnArchive { path: PathBuf, reason: String },

    #[error("{0}: neither an OCI image layout (oci-layout + index.json) nor a docker save archive (manifest.json)")]
    UnknownFormat(PathBuf),

    #[error("{0} is missing from the archive")]
    MissingBlob(String),

    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },

    #[error("unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType { what: String, media_type: String },

    #[error("invalid digest {0:?}: only sha256:<64 lowercase hex> is supported")]
    InvalidDigest(String),

    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("layer {layer}: unsafe path {path:?}: {reason}")]
    UnsafePath {
        layer: String,
        path: String,
        reason: String,
    },

    #[error("layer {layer}: bad tar: {source}")]
    LayerTar {
        layer: String,
        #[source]
        source: io::Error,
    },

    #[error("invalid {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },

    #[error("{0}: no image in the archive has a name (org.opencontainers.image.ref.name, io.containerd.image.name or RepoTags)")]
    NoReference(PathBuf),

    #[error("no manifest for this platform ({0}) in the archive")]
    NoMatchingPlatform(String),

    #[error("image not found: {0}")]
    NotFound(String),
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Attaches a path to an io::Error.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| ImageError::Io {
            path: path.into(),
            source,
        })
    }
}

pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        what: what.into(),
        reason: reason.into(),
    }
}
