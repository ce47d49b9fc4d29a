//! Parsing of a request path and query into what is asked for: which group, version,
//! resource, namespace, name and subresource, following the rules of Kubernetes'
//! `RequestInfoFactory` (so `/api/v1/namespaces/x/status` is the namespace's status, while
//! `/api/v1/namespaces/x/pods` is the pods in x).

use crate::error::{ApiError, ApiResult};
use std::collections::HashMap;

#[derive(Debug, Clone, Default)]
pub struct Target {
    pub group: String,
    pub version: String,
    /// None for a group-version discovery request.
    pub resource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

pub fn parse_path(path: &str) -> ApiResult<Target> {
    let parts: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let (group, version, rest) = match parts.first().map(String::as_str) {
        Some("api") if parts.len() >= 2 => (String::new(), parts[1].clone(), &parts[2..]),
        Some("apis") if parts.len() >= 3 => (parts[1].clone(), parts[2].clone(), &parts[3..]),
        _ => return Err(ApiError::path_not_found()),
    };
    let mut t = Target {
        group,
        version,
        ..Default::default()
    };
    let mut rest: &[String] = rest;
    if rest.first().map(String::as_str) == Some("namespaces") && rest.len() > 1 {
        let is_ns_sub = rest.len() > 2 && matches!(rest[2].as_str(), "status" | "finalize");
        if rest.len() > 2 && !is_ns_sub {
            t.namespace = Some(rest[1].clone());
            rest = &rest[2..];
        }
    }
    if let Some(r) = rest.first() {
        t.resource = Some(r.clone());
    }
    if let Some(n) = rest.get(1) {
        t.name = Some(n.clone());
    }
    if let Some(s) = rest.get(2) {
        t.subresource = Some(s.clone());
    }
    if rest.len() > 3 {
        return Err(ApiError::path_not_found());
    }
    if t.name.as_deref() == Some("") || t.resource.as_deref() == Some("") {
        return Err(ApiError::path_not_found());
    }
    Ok(t)
}

/// Query parameters, with repeated keys kept (exec's `command=` repeats).
#[derive(Debug, Default, Clone)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        let mut pairs = Vec::new();
        if let Some(q) = q {
            for part in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = part.split_once('=').unwrap_or((part, ""));
                let dec = |s: &str| {
                    percent_encoding::percent_decode_str(&s.replace('+', " "))
                        .decode_utf8_lossy()
                        .into_owned()
                };
                pairs.push((dec(k), dec(v)));
            }
        }
        Query { pairs }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true") | Some("1") | Some(""))
    }

    pub fn to_map(&self) -> HashMap<String, String> {
        self.pairs.iter().cloned().collect()
    }

    pub fn dry_run(&self) -> ApiResult<bool> {
        let vals = self.all("dryRun");
        for v in &vals {
            if *v != "All" {
                return Err(ApiError::bad_request(format!(
                    "Invalid dry run value: {v:?}: supported values: \"All\""
                )));
            }
        }
        Ok(!vals.is_empty())
    }

    pub fn u64(&self, key: &str) -> ApiResult<Option<u64>> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value {v:?} for query parameter {key}"))
            }),
        }
    }

    /// `fieldValidation`: Strict, Warn (the default) or Ignore.
    pub fn field_validation(&self) -> ApiResult<FieldValidation> {
        match self.get("fieldValidation") {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other}"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_and_namespace_subresources() {
        let t = parse_path("/api/v1/namespaces/x/status").unwrap();
        assert_eq!(t.resource.as_deref(), Some("namespaces"));
        assert_eq!(t.name.as_deref(), Some("x"));
        assert_eq!(t.subresource.as_deref(), Some("status"));
        let t = parse_path("/api/v1/namespaces/x/pods/p/log").unwrap();
        assert_eq!(t.namespace.as_deref(), Some("x"));
        assert_eq!(t.resource.as_deref(), Some("pods"));
        assert_eq!(t.name.as_deref(), Some("p"));
        assert_eq!(t.subresource.as_deref(), Some("log"));
        let t = parse_path("/apis/apps/v1/deployments").unwrap();
        assert_eq!(t.group, "apps");
        assert_eq!(t.namespace, None);
        let t = parse_path("/api/v1/namespaces/x").unwrap();
        assert_eq!(t.resource.as_deref(), Some("namespaces"));
        assert_eq!(t.name.as_deref(), Some("x"));
        assert!(parse_path("/foo").is_err());
    }

    #[test]
    fn query_repeats_and_decoding() {
        let q = Query::parse(Some("command=ls&command=%2Ftmp&labelSelector=app%3Dweb"));
        assert_eq!(q.all("command"), vec!["ls", "/tmp"]);
        assert_eq!(q.get("labelSelector"), Some("app=web"));
    }
}
