//! Label selectors (metav1.LabelSelector) and node selector terms (v1.NodeSelectorTerm),
//! compiled once per pod and matched against label maps, with the upstream semantics: a nil
//! label selector matches nothing, an empty one everything; node selector terms are ORed,
//! requirements inside a term ANDed, and an empty term matches nothing.

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    /// Node selectors only: the label parses as an integer greater/less than the value.
    Gt(i64),
    Lt(i64),
    /// An operator or value that cannot match (unknown operator, Gt with a non-integer).
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.key);
        match &self.op {
            Op::In(vals) => v.is_some_and(|v| vals.contains(v)),
            Op::NotIn(vals) => v.is_none_or(|v| !vals.contains(v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
            Op::Gt(n) => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Op::Lt(n) => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
            Op::Never => false,
        }
    }
}

/// A compiled label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// A nil selector: matches nothing.
    Nothing,
    /// All requirements must hold; no requirements = everything.
    All(Vec<Requirement>),
}

impl Selector {
    pub fn everything() -> Selector {
        Selector::All(Vec::new())
    }

    pub fn from_label_selector(sel: Option<&LabelSelector>) -> Selector {
        let Some(sel) = sel else {
            return Selector::Nothing;
        };
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(Requirement {
                key: k.clone(),
                op: Op::In(vec![v.clone()]),
            });
        }
        for e in sel.match_expressions.iter().flatten() {
            let vals = e.values.clone().unwrap_or_default();
            let op = match e.operator.as_str() {
                "In" => Op::In(vals),
                "NotIn" => Op::NotIn(vals),
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                _ => Op::Never,
            };
            reqs.push(Requirement {
                key: e.key.clone(),
                op,
            });
        }
        Selector::All(reqs)
    }

    /// `labels.Selector.Empty()`: true for a selector without requirements.
    pub fn is_empty(&self) -> bool {
        matches!(self, Selector::All(r) if r.is_empty())
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Selector::Nothing => false,
            Selector::All(reqs) => reqs.iter().all(|r| r.matches(labels)),
        }
    }

    /// Add `key In (value)` (matchLabelKeys of topology spread constraints).
    pub fn and_equals(&mut self, key: &str, value: &str) {
        if let Selector::All(reqs) = self {
            reqs.push(Requirement {
                key: key.to_string(),
                op: Op::In(vec![value.to_string()]),
            });
        }
    }
}

fn node_requirement(r: &NodeSelectorRequirement) -> Requirement {
    let vals = r.values.clone().unwrap_or_default();
    let int = || -> Op {
        if vals.len() == 1 {
            vals[0].parse::<i64>().map(Op::Gt).unwrap_or(Op::Never)
        } else {
            Op::Never
        }
    };
    let op = match r.operator.as_str() {
        "In" => Op::In(vals.clone()),
        "NotIn" => Op::NotIn(vals.clone()),
        "Exists" => Op::Exists,
        "DoesNotExist" => Op::DoesNotExist,
        "Gt" => int(),
        "Lt" => match int() {
            Op::Gt(n) => Op::Lt(n),
            other => other,
        },
        _ => Op::Never,
    };
    Requirement {
        key: r.key.clone(),
        op,
    }
}

/// A compiled node selector term: label requirements and `metadata.name` field requirements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTerm {
    pub labels: Vec<Requirement>,
    /// Requirements on fields; only `metadata.name` is a supported field (others never match).
    pub fields: Vec<Requirement>,
}

impl NodeTerm {
    pub fn from_term(t: &NodeSelectorTerm) -> NodeTerm {
        NodeTerm {
            labels: t
                .match_expressions
                .iter()
                .flatten()
                .map(node_requirement)
                .collect(),
            fields: t
                .match_fields
                .iter()
                .flatten()
                .map(|r| {
                    let mut req = node_requirement(r);
                    let supported =
                        r.key == "metadata.name" && matches!(req.op, Op::In(_) | Op::NotIn(_));
                    if !supported {
                        req.op = Op::Never;
                    }
                    req
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, node_name: &str, labels: &Labels) -> bool {
        if self.is_empty() {
            return false;
        }
        if !self.labels.iter().all(|r| r.matches(labels)) {
            return false;
        }
        if self.fields.is_empty() {
            return true;
        }
        let fields: Labels = [("metadata.name".to_string(), node_name.to_string())].into();
        self.fields.iter().all(|r| r.matches(&fields))
    }
}

/// Terms ORed: a node matches if any term matches.
pub fn any_term_matches(terms: &[NodeTerm], node_name: &str, labels: &Labels) -> bool {
    terms.iter().any(|t| t.matches(node_name, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn nreq(key: &str, op: &str, vals: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(vals.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn label_selector_semantics() {
        assert!(!Selector::from_label_selector(None).matches(&labels(&[])));
        let empty = Selector::from_label_selector(Some(&LabelSelector::default()));
        assert!(empty.matches(&labels(&[("a", "b")])) && empty.is_empty());
        let sel = Selector::from_label_selector(Some(&LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["db".into()]),
                },
                LabelSelectorRequirement {
                    key: "env".into(),
                    operator: "Exists".into(),
                    values: None,
                },
            ]),
        }));
        assert!(sel.matches(&labels(&[("app", "web"), ("env", "x")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("env", "x"), ("tier", "db")])));
        assert!(!sel.matches(&labels(&[("app", "web")])));
        assert!(!sel.matches(&labels(&[("app", "api"), ("env", "x")])));
    }

    #[test]
    fn node_terms_operators() {
        let l = labels(&[("zone", "a"), ("cores", "16")]);
        let t = |reqs: Vec<NodeSelectorRequirement>| {
            NodeTerm::from_term(&NodeSelectorTerm {
                match_expressions: Some(reqs),
                match_fields: None,
            })
        };
        assert!(t(vec![nreq("zone", "In", &["a", "b"])]).matches("n", &l));
        assert!(!t(vec![nreq("zone", "NotIn", &["a"])]).matches("n", &l));
        assert!(t(vec![nreq("gpu", "DoesNotExist", &[])]).matches("n", &l));
        assert!(t(vec![nreq("cores", "Gt", &["8"])]).matches("n", &l));
        assert!(!t(vec![nreq("cores", "Lt", &["8"])]).matches("n", &l));
        assert!(!t(vec![nreq("zone", "Gt", &["8"])]).matches("n", &l)); // non-integer label
        assert!(!t(vec![nreq("cores", "Gt", &["x"])]).matches("n", &l)); // non-integer value
        assert!(!t(vec![nreq("zone", "Bogus", &["a"])]).matches("n", &l));
        // Empty term matches nothing.
        assert!(!NodeTerm::from_term(&NodeSelectorTerm::default()).matches("n", &l));
        // matchFields on metadata.name.
        let f = NodeTerm::from_term(&NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![nreq("metadata.name", "In", &["n1"])]),
        });
        assert!(f.matches("n1", &l) && !f.matches("n2", &l));
        let bad = NodeTerm::from_term(&NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![nreq("metadata.uid", "In", &["n1"])]),
        });
        assert!(!bad.matches("n1", &l));
        // Terms are ORed.
        let terms = vec![t(vec![nreq("zone", "In", &["b"])]), f];
        assert!(any_term_matches(&terms, "n1", &l));
        assert!(!any_term_matches(&terms, "n2", &l));
    }
}
