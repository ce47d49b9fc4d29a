//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) decoded into the
//! JSON object a JSON client would have sent for the same Go object.
//!
//! kubectl's typed commands (`kubectl create namespace|deployment|...`, `create token`) send
//! protobuf. The body is the magic `k8s\0` followed by a `runtime.Unknown` envelope whose
//! `typeMeta` names the kind and whose `raw` holds the object's own message. The message
//! layouts come from `data/proto_meta.json`, generated from the Go struct tags of
//! kubernetes/api by `tools/gen_proto_meta.py` and cross-checked there against the
//! `generated.proto` files of the same tag.
//!
//! Go's zero values are reproduced the way `encoding/json` writes them: gogo-protobuf always
//! emits non-pointer scalars (`""`, `0`, `false`), which the JSON form drops when the json
//! tag says `omitempty`; absent pointers, slices and maps become `null` unless `omitempty`;
//! absent non-pointer structs become their zero JSON (`{}`, a zero `Time` is `null`).

mod decode;
mod schema;
mod wire;

#[cfg(test)]
mod tests;

use serde_json::{Map, Value};

use self::schema::Schema;
use self::wire::{FieldReader, WireValue};

/// The four bytes that start every Kubernetes protobuf body.
pub const MAGIC: &[u8] = b"k8s\0";

/// The media type of Kubernetes protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// What was wrong with a protobuf body. `path` names the field, starting at the kind
/// (`Deployment.spec.template.spec.containers[0].ports`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtoError {
    #[error("protobuf body does not start with the magic bytes \"k8s\\x00\"")]
    MissingMagic,
    #[error("malformed protobuf at {}: {reason}", show_path(path))]
    Malformed { path: String, reason: String },
    #[error("invalid value at {}: {reason}", show_path(path))]
    Invalid { path: String, reason: String },
    #[error("no protobuf schema for apiVersion {api_version:?}, kind {kind:?}")]
    UnknownKind { api_version: String, kind: String },
    #[error("unsupported protobuf envelope: {0}")]
    Unsupported(String),
}

fn show_path(path: &str) -> &str {
    if path.is_empty() {
        "the top level"
    } else {
        path
    }
}

impl ProtoError {
    /// Prefixes the field path with the segment of the enclosing message, as the error
    /// travels up; paths are only built for errors, never on the success path.
    pub(crate) fn at(mut self, segment: &str) -> ProtoError {
        if let ProtoError::Malformed { path, .. } | ProtoError::Invalid { path, .. } = &mut self {
            *path = if path.is_empty() {
                segment.to_string()
            } else if path.starts_with('[') {
                format!("{segment}{path}")
            } else {
                format!("{segment}.{path}")
            };
        }
        self
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> ProtoError {
        ProtoError::Invalid {
            path: String::new(),
            reason: reason.into(),
        }
    }
}

/// True for `application/vnd.kubernetes.protobuf`, with or without parameters.
pub fn is_protobuf_content_type(ct: &str) -> bool {
    ct.split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(CONTENT_TYPE))
}

/// Decode a Kubernetes protobuf request body into the same JSON object a JSON client would
/// send (apiVersion and kind filled from the envelope). Errors name what was wrong.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    decode_nested(body, 0)
}

/// The envelope of a body, or of a RawExtension holding a protobuf object (`depth` bounds
/// that recursion so a crafted body cannot exhaust the stack).
fn decode_nested(body: &[u8], depth: usize) -> Result<Value, ProtoError> {
    let envelope = body.strip_prefix(MAGIC).ok_or(ProtoError::MissingMagic)?;
    let unknown = Unknown::parse(envelope)?;
    if !unknown.content_encoding.is_empty() {
        return Err(ProtoError::Unsupported(format!(
            "contentEncoding {:?}",
            unknown.content_encoding
        )));
    }
    let mut out = Map::new();
    // TypeMeta's field order (kind, then apiVersion) is the order Go writes them in.
    out.insert("kind".into(), Value::String(unknown.kind.clone()));
    out.insert(
        "apiVersion".into(),
        Value::String(unknown.api_version.clone()),
    );

    let ct = unknown.content_type.as_str();
    if !ct.is_empty() && !is_protobuf_content_type(ct) {
        // The envelope may wrap another encoding; JSON is the only other one Kubernetes uses.
        let media = ct.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/json") {
            return Err(ProtoError::Unsupported(format!("contentType {ct:?}")));
        }
        let inner: Value = serde_json::from_slice(unknown.raw)
            .map_err(|e| ProtoError::invalid(format!("raw JSON: {e}")))?;
        let Value::Object(fields) = inner else {
            return Err(ProtoError::invalid("raw JSON is not an object"));
        };
        for (k, v) in fields {
            if !(k == "kind" || k == "apiVersion") {
                out.insert(k, v);
            }
        }
        return Ok(Value::Object(out));
    }

    let schema = Schema::get();
    let root = schema
        .root(&unknown.api_version, &unknown.kind)
        .ok_or_else(|| ProtoError::UnknownKind {
            api_version: unknown.api_version.clone(),
            kind: unknown.kind.clone(),
        })?;
    let fields = decode::Decoder { schema, depth }
        .message(root, unknown.raw)
        .map_err(|e| e.at(&unknown.kind))?;
    out.extend(fields);
    Ok(Value::Object(out))
}

/// `runtime.Unknown`: 1 typeMeta {1 apiVersion, 2 kind}, 2 raw, 3 contentEncoding,
/// 4 contentType.
struct Unknown<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
    content_type: String,
}

impl<'a> Unknown<'a> {
    fn parse(buf: &'a [u8]) -> Result<Unknown<'a>, ProtoError> {
        let mut out = Unknown {
            api_version: String::new(),
            kind: String::new(),
            raw: &[],
            content_encoding: String::new(),
            content_type: String::new(),
        };
        let mut reader = FieldReader::new(buf);
        while let Some((number, value)) = reader.next_field().map_err(|e| e.at("envelope"))? {
            let bytes = match value {
                WireValue::Bytes(b) => b,
                // Unknown fields are skipped; known ones must be length-delimited.
                _ if number > 4 => continue,
                other => {
                    return Err(ProtoError::Malformed {
                        path: "envelope".into(),
                        reason: format!("field {number} is {}", other.wire_name()),
                    })
                }
            };
            match number {
                1 => {
                    let mut tm = FieldReader::new(bytes);
                    while let Some((n, v)) =
                        tm.next_field().map_err(|e| e.at("envelope.typeMeta"))?
                    {
                        match (n, v) {
                            (1, WireValue::Bytes(b)) => out.api_version = lossy(b),
                            (2, WireValue::Bytes(b)) => out.kind = lossy(b),
                            _ => {}
                        }
                    }
                }
                2 => out.raw = bytes,
                3 => out.content_encoding = lossy(bytes),
                4 => out.content_type = lossy(bytes),
                _ => {}
            }
        }
        Ok(out)
    }
}

/// Go converts bytes to string without validation and encoding/json then writes U+FFFD for
/// invalid UTF-8, so a lossy conversion gives the same JSON.
pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
