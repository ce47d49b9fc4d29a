//! Kubernetes name, label and annotation rules with the messages the real API server
//! gives, so a user sees the same explanation whichever server they talk to.

use crate::error::Cause;
use serde_json::Value;

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// Which rule a resource's names follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    Subdomain,
    Label,
    Dns1035,
    PathSegment,
}

pub fn name_rule(group: &str, plural: &str) -> NameRule {
    match (group, plural) {
        ("", "namespaces") => NameRule::Label,
        ("", "services") => NameRule::Dns1035,
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

fn is_alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| is_alnum_lower(c) || c == '-')
        && s.starts_with(is_alnum_lower)
        && s.ends_with(is_alnum_lower)
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// Problems with a name under a rule, as Kubernetes words them (empty = valid).
pub fn name_errors(rule: NameRule, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    match rule {
        NameRule::Subdomain => {
            if name.len() > 253 {
                out.push("must be no more than 253 characters".into());
            }
            if !is_dns1123_subdomain(name) {
                out.push(DNS1123_SUBDOMAIN_MSG.into());
            }
        }
        NameRule::Label => {
            if name.len() > 63 {
                out.push("must be no more than 63 characters".into());
            }
            if !is_dns1123_label(&name[..name.len().min(63)]) || name.is_empty() {
                out.push(DNS1123_LABEL_MSG.into());
            }
        }
        NameRule::Dns1035 => {
            if name.len() > 63 {
                out.push("must be no more than 63 characters".into());
            }
            if !is_dns1035_label(&name[..name.len().min(63)]) || name.is_empty() {
                out.push(DNS1035_LABEL_MSG.into());
            }
        }
        NameRule::PathSegment => {
            if name == "." || name == ".." {
                out.push(format!("may not be '{name}'"));
            }
            for bad in ["/", "%"] {
                if name.contains(bad) {
                    out.push(format!("may not contain '{bad}'"));
                }
            }
        }
    }
    out
}

fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Label and annotation keys: optional DNS subdomain prefix, '/', qualified name.
pub fn qualified_name_errors(key: &str) -> Vec<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let mut out = Vec::new();
    if let Some(p) = prefix {
        if p.is_empty() {
            out.push("prefix part must be non-empty".into());
        } else if !is_dns1123_subdomain(p) {
            out.push(format!("prefix part {DNS1123_SUBDOMAIN_MSG}"));
        }
    }
    if name.is_empty() {
        out.push("name part must be non-empty".into());
    } else {
        if name.len() > 63 {
            out.push("name part must be no more than 63 characters".into());
        }
        if !is_qualified_name_part(&name[..name.len().min(63)]) {
            out.push(QUALIFIED_NAME_MSG.into());
        }
    }
    out
}

pub fn label_value_errors(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    if v.len() > 63 {
        out.push("must be no more than 63 characters".into());
    }
    if !v.is_empty() && !is_qualified_name_part(&v[..v.len().min(63)]) {
        out.push(LABEL_VALUE_MSG.into());
    }
    out
}

pub fn validate_labels(labels: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    let Some(Value::Object(map)) = labels else {
        return;
    };
    for (k, v) in map {
        for e in qualified_name_errors(k) {
            causes.push(Cause::invalid(field, &Value::String(k.clone()), e));
        }
        match v.as_str() {
            Some(s) => {
                for e in label_value_errors(s) {
                    causes.push(Cause::invalid(field, v, e));
                }
            }
            None => causes.push(Cause::invalid(
                format!("{field}.{k}"),
                v,
                "must be a string",
            )),
        }
    }
}

pub fn validate_annotations(ann: Option<&Value>, causes: &mut Vec<Cause>) {
    let Some(Value::Object(map)) = ann else {
        return;
    };
    let mut total = 0usize;
    for (k, v) in map {
        for e in qualified_name_errors(k) {
            causes.push(Cause::invalid(
                "metadata.annotations",
                &Value::String(k.clone()),
                e,
            ));
        }
        total += k.len() + v.as_str().map(str::len).unwrap_or(0);
    }
    if total > 256 * 1024 {
        causes.push(Cause::too_long("metadata.annotations", 256 * 1024));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name_errors(NameRule::Subdomain, "web.example-1").is_empty());
        assert!(!name_errors(NameRule::Subdomain, "Bad_Name").is_empty());
        assert!(!name_errors(NameRule::Label, "a.b").is_empty());
        assert!(!name_errors(NameRule::Dns1035, "1abc").is_empty());
        assert!(name_errors(NameRule::PathSegment, "system:controller").is_empty());
        assert!(!name_errors(NameRule::PathSegment, "a/b").is_empty());
        assert!(!name_errors(NameRule::Subdomain, &"a".repeat(254)).is_empty());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(qualified_name_errors("app.kubernetes.io/name").is_empty());
        assert!(!qualified_name_errors("-bad").is_empty());
        assert!(!qualified_name_errors("Bad_Prefix/x").is_empty());
        assert!(label_value_errors("").is_empty());
        assert!(!label_value_errors("a b").is_empty());
    }
}
