//! Label selectors (`matchLabels` and `matchExpressions`) compiled once per policy, with
//! the API server's meaning: every requirement must hold; `NotIn` and `DoesNotExist` hold
//! for a missing label. A selector the API server would refuse (an unknown operator, `In`
//! without values) selects nothing, which is what upstream's policy code does with it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
enum Requirement {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Selector {
    requirements: Vec<Requirement>,
    /// An invalid selector: matches nothing.
    invalid: bool,
}

impl Selector {
    pub fn everything() -> Selector {
        Selector {
            requirements: Vec::new(),
            invalid: false,
        }
    }

    pub fn compile(s: &LabelSelector) -> Selector {
        let mut requirements = Vec::new();
        let mut invalid = false;
        for (k, v) in s.match_labels.iter().flatten() {
            requirements.push(Requirement::Equals(k.clone(), v.clone()));
        }
        for e in s.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let key = e.key.clone();
            requirements.push(match e.operator.as_str() {
                "In" if !values.is_empty() => Requirement::In(key, values),
                "NotIn" if !values.is_empty() => Requirement::NotIn(key, values),
                "Exists" if values.is_empty() => Requirement::Exists(key),
                "DoesNotExist" if values.is_empty() => Requirement::DoesNotExist(key),
                _ => {
                    invalid = true;
                    continue;
                }
            });
        }
        Selector {
            requirements,
            invalid,
        }
    }

    pub fn is_everything(&self) -> bool {
        !self.invalid && self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.invalid
            && self.requirements.iter().all(|r| match r {
                Requirement::Equals(k, v) => labels.get(k) == Some(v),
                Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
                Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
                Requirement::Exists(k) => labels.contains_key(k),
                Requirement::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(v: serde_json::Value) -> Selector {
        Selector::compile(&serde_json::from_value(v).unwrap())
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn match_labels_and_expressions() {
        let s = sel(json!({"matchLabels": {"role": "db"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                 {"key": "env", "operator": "NotIn", "values": ["prod"]},
                                 {"key": "team", "operator": "Exists"},
                                 {"key": "legacy", "operator": "DoesNotExist"}]}));
        assert!(s.matches(&labels(&[("role", "db"), ("tier", "a"), ("team", "x")])));
        assert!(!s.matches(&labels(&[("role", "db"), ("tier", "c"), ("team", "x")])));
        assert!(!s.matches(&labels(&[
            ("role", "db"),
            ("tier", "a"),
            ("team", "x"),
            ("env", "prod")
        ])));
        assert!(!s.matches(&labels(&[("role", "db"), ("tier", "a")])));
        assert!(!s.matches(&labels(&[
            ("role", "db"),
            ("tier", "a"),
            ("team", "x"),
            ("legacy", "")
        ])));
        assert!(sel(json!({})).matches(&labels(&[])));
        assert!(sel(json!({})).is_everything());
    }

    #[test]
    fn invalid_selects_nothing() {
        let s = sel(json!({"matchExpressions": [{"key": "a", "operator": "Near"}]}));
        assert!(!s.matches(&labels(&[("a", "b")])));
        let s = sel(json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}));
        assert!(!s.matches(&labels(&[("a", "b")])));
    }
}
