//! API errors and their wire form: every failure a client sees is a `metav1.Status` with the
//! reason, code and details a Kubernetes API server would send, because kubectl and the
//! client libraries branch on `reason` (AlreadyExists, Conflict, NotFound, Invalid, ...).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// One invalid field, as in `details.causes` of a 422 Status.
#[derive(Clone, Debug)]
pub struct Cause {
    pub reason: &'static str,
    pub message: String,
    pub field: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Self {
        Cause {
            reason: "FieldValueRequired",
            message: "Required value".into(),
            field: field.into(),
        }
    }
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl AsRef<str>) -> Self {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {shown}: {}", detail.as_ref()),
            field: field.into(),
        }
    }
    pub fn unsupported(field: impl Into<String>, value: &Value, allowed: &[&str]) -> Self {
        let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {}: supported values: {}",
                value,
                allowed.join(", ")
            ),
            field: field.into(),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Cause {
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {}", detail.into()),
            field: field.into(),
        }
    }
    pub fn immutable(field: impl Into<String>, value: &Value) -> Self {
        let mut c = Cause::invalid(field, value, "field is immutable");
        c.reason = "FieldValueInvalid";
        c
    }
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Cause {
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: {value}"),
            field: field.into(),
        }
    }
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Cause {
            reason: "FieldValueTooLong",
            message: format!("Too long: may not be more than {max} bytes"),
            field: field.into(),
        }
    }

    pub fn render(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Status {
        code: u16,
        reason: &'static str,
        message: String,
        details: Option<Value>,
    },
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError::Status {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, d: Value) -> Self {
        let ApiError::Status { details, .. } = &mut self;
        *details = Some(d);
        self
    }

    pub fn code(&self) -> u16 {
        let ApiError::Status { code, .. } = self;
        *code
    }

    pub fn reason(&self) -> &'static str {
        let ApiError::Status { reason, .. } = self;
        reason
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn not_found(qualified: &str, name: &str) -> Self {
        let (kind, group) = split_qualified(qualified);
        Self::new(404, "NotFound", format!("{qualified} \"{name}\" not found"))
            .with_details(json!({"name": name, "group": group, "kind": kind}))
    }

    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    pub fn already_exists(qualified: &str, name: &str) -> Self {
        let (kind, group) = split_qualified(qualified);
        Self::new(
            409,
            "AlreadyExists",
            format!("{qualified} \"{name}\" already exists"),
        )
        .with_details(json!({"name": name, "group": group, "kind": kind}))
    }

    pub fn conflict(qualified: &str, name: &str, why: &str) -> Self {
        let (kind, group) = split_qualified(qualified);
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {qualified} \"{name}\": {why}"),
        )
        .with_details(json!({"name": name, "group": group, "kind": kind}))
    }

    /// 403 as an admission plugin refuses a write: `pods "p" is forbidden: <why>`.
    pub fn forbidden(qualified: &str, name: &str, why: &str) -> Self {
        let (kind, group) = split_qualified(qualified);
        Self::new(
            403,
            "Forbidden",
            format!("{qualified} \"{name}\" is forbidden: {why}"),
        )
        .with_details(json!({"name": name, "group": group, "kind": kind}))
    }

    pub fn modified(qualified: &str, name: &str) -> Self {
        Self::conflict(
            qualified,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let shown: Vec<String> = causes.iter().map(Cause::render).collect();
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let message = if shown.len() == 1 {
            format!("{qualified} \"{name}\" is invalid: {}", shown[0])
        } else {
            format!("{qualified} \"{name}\" is invalid: [{}]", shown.join(", "))
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        Self::new(422, "Invalid", message)
            .with_details(json!({"name": name, "group": group, "kind": kind, "causes": causes}))
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {ct:?})"),
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// The `metav1.Status` object for this error.
    pub fn status(&self) -> Value {
        let ApiError::Status {
            code,
            reason,
            message,
            details,
        } = self;
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        });
        if let Some(d) = details {
            s["details"] = d.clone();
        }
        s
    }
}

fn split_qualified(q: &str) -> (&str, &str) {
    match q.split_once('.') {
        Some((k, g)) => (k, g),
        None => (q, ""),
    }
}

impl From<corral_store::Error> for ApiError {
    fn from(e: corral_store::Error) -> Self {
        match e {
            corral_store::Error::Compacted { .. } => ApiError::gone(format!(
                "The resourceVersion for the provided watch is too old: {e}"
            )),
            other => ApiError::internal(format!("storage error: {other}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.status()).unwrap_or_default();
        (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}
