//! List and watch filters: label selectors for every kind, and the field selectors each kind
//! supports upstream (metadata.name/namespace everywhere, spec.nodeName and status.phase on
//! pods, involvedObject.* on events, ...). An unsupported field is a 400, as upstream.

use crate::error::{ApiError, ApiResult};
use crate::registry::Resource;
use corral_apimachinery::selectors::{FieldSelector, LabelSelector};
use serde_json::Value;

pub struct Filter {
    labels: Option<LabelSelector>,
    fields: Option<FieldSelector>,
}

fn supported(res: &Resource) -> &'static [&'static str] {
    match (res.storage_group.as_str(), res.storage_resource.as_str()) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "secrets") => &["type"],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "namespaces") => &["status.phase"],
        ("", "replicationcontrollers") => &["status.replicas"],
        ("apps", "replicasets") => &["status.replicas"],
        ("batch", "jobs") => &["status.successful"],
        ("certificates.k8s.io", _) => &["spec.signerName"],
        _ => &[],
    }
}

/// Read a dotted field path as the string Kubernetes compares field selectors against.
pub fn field_value(obj: &Value, path: &str) -> Option<String> {
    if path == "source" {
        return obj["source"]["component"].as_str().map(String::from);
    }
    let mut cur = obj;
    for p in path.split('.') {
        cur = cur.get(p)?;
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

impl Filter {
    pub fn from_query(
        res: &Resource,
        label: Option<&str>,
        field: Option<&str>,
    ) -> ApiResult<Filter> {
        let labels =
            match label {
                Some(s) if !s.trim().is_empty() => Some(LabelSelector::parse(s).map_err(|e| {
                    ApiError::bad_request(format!("unable to parse requirement: {e}"))
                })?),
                _ => None,
            };
        let fields = match field {
            Some(s) if !s.trim().is_empty() => {
                let sel = FieldSelector::parse(s)
                    .map_err(|e| ApiError::bad_request(format!("invalid field selector: {e}")))?;
                let ok = supported(res);
                for req in sel.requirements() {
                    let f = &req.field;
                    if f != "metadata.name"
                        && f != "metadata.namespace"
                        && !ok.contains(&f.as_str())
                    {
                        return Err(ApiError::bad_request(format!(
                            "field label not supported: {f}"
                        )));
                    }
                }
                Some(sel)
            }
            _ => None,
        };
        Ok(Filter { labels, fields })
    }

    pub fn is_everything(&self) -> bool {
        self.labels.is_none() && self.fields.is_none()
    }

    /// The single name a `metadata.name=x` field selector pins, if any (lets a watch or
    /// list read one key instead of a range).
    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(l) = &self.labels {
            if !l.matches(obj["metadata"]["labels"].as_object()) {
                return false;
            }
        }
        if let Some(f) = &self.fields {
            let get = |path: &str| -> Option<String> {
                match path {
                    "metadata.name" => obj["metadata"]["name"].as_str().map(String::from),
                    "metadata.namespace" => obj["metadata"]["namespace"].as_str().map(String::from),
                    other => field_value(obj, other),
                }
            };
            if !f.matches(get) {
                return false;
            }
        }
        true
    }
}
