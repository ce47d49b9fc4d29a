//! Field selectors (`?fieldSelector=`): a port of k8s.io/apimachinery/pkg/fields parsing —
//! comma-separated `field=value`, `field==value`, `field!=value` terms whose values may escape
//! `\,` `\=` `\\` — with Kubernetes' matching rule that a missing field is the empty string.

use std::fmt;

use super::SelectorError;

/// A field requirement's operator (`=` and `==` are the same operator in Kubernetes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldOperator {
    Equals,
    NotEquals,
}

impl FieldOperator {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldOperator::Equals => "=",
            FieldOperator::NotEquals => "!=",
        }
    }
}

/// One `field op value` term, with the value unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub operator: FieldOperator,
    pub value: String,
}

impl FieldRequirement {
    pub fn matches(&self, actual: &str) -> bool {
        match self.operator {
            FieldOperator::Equals => actual == self.value,
            FieldOperator::NotEquals => actual != self.value,
        }
    }
}

impl fmt::Display for FieldRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}{}",
            self.field,
            self.operator.as_str(),
            escape_value(&self.value)
        )
    }
}

/// An AND of field requirements; the default (empty) selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

/// Escapes `\`, `,` and `=` so a literal value survives a round trip (`fields.EscapeValue`).
pub fn escape_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `fields.UnescapeValue`: only `\\`, `\,` and `\=` are escapes; a bare `,` or `=` is an error.
pub fn unescape_value(s: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            if !matches!(c, '\\' | ',' | '=') {
                return Err(SelectorError::Field(format!(
                    "invalid field selector: invalid escape sequence: \\{c}"
                )));
            }
            out.push(c);
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            // Go prints the rune with %v, i.e. as its code point number.
            ',' | '=' => {
                return Err(SelectorError::Field(format!(
                    "invalid field selector: unescaped character in value: {}",
                    c as u32
                )))
            }
            c => out.push(c),
        }
    }
    if in_slash {
        return Err(SelectorError::Field(
            "invalid field selector: invalid escape sequence: \\".to_string(),
        ));
    }
    Ok(out)
}

/// Splits on commas that are not escaped; escapes stay in the terms.
fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// Splits at the first operator occurrence, trying `!=`, `==`, `=` at each position.
fn split_term(term: &str) -> Option<(&str, FieldOperator, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for (op, kind) in [
            ("!=", FieldOperator::NotEquals),
            ("==", FieldOperator::Equals),
            ("=", FieldOperator::Equals),
        ] {
            if let Some(rhs) = rest.strip_prefix(op) {
                return Some((&term[..i], kind, rhs));
            }
        }
    }
    None
}

impl FieldSelector {
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses like `fields.ParseSelector`. Field names are taken verbatim (no trimming, as in
    /// Kubernetes); terms are sorted, empty terms skipped; `""` matches everything.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        if s.is_empty() {
            return Ok(Self::default());
        }
        let mut parts = split_terms(s);
        parts.sort_unstable();
        let mut requirements = Vec::with_capacity(parts.len());
        for part in parts {
            if part.is_empty() {
                continue;
            }
            let Some((field, operator, rhs)) = split_term(part) else {
                return Err(SelectorError::Field(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            requirements.push(FieldRequirement {
                field: field.to_string(),
                operator,
                value: unescape_value(rhs)?,
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// The terms, so a server can reject fields it does not support with
    /// `field label not supported: <field>`.
    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object matches; `get` returns a field's value, and a missing field compares
    /// as the empty string (so `spec.nodeName=` selects unscheduled pods).
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches(&get(&r.field).unwrap_or_default()))
    }

    /// The value a field must equal, if the selector pins it (`metadata.name=foo`).
    pub fn requires_exact_match(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && r.operator == FieldOperator::Equals)
            .map(|r| r.value.as_str())
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn reqs(s: &str) -> Vec<(String, &'static str, String)> {
        FieldSelector::parse(s)
            .unwrap_or_else(|e| panic!("{s:?}: {e}"))
            .requirements()
            .iter()
            .map(|r| (r.field.clone(), r.operator.as_str(), r.value.clone()))
            .collect()
    }

    fn t(f: &str, op: &'static str, v: &str) -> (String, &'static str, String) {
        (f.to_string(), op, v.to_string())
    }

    #[test]
    fn parses_terms() {
        assert!(reqs("").is_empty());
        assert!(reqs(",").is_empty());
        assert_eq!(
            reqs("metadata.name=foo"),
            vec![t("metadata.name", "=", "foo")]
        );
        assert_eq!(
            reqs("metadata.name==foo"),
            vec![t("metadata.name", "=", "foo")]
        );
        assert_eq!(
            reqs("status.phase!=Running"),
            vec![t("status.phase", "!=", "Running")]
        );
        assert_eq!(reqs("spec.nodeName="), vec![t("spec.nodeName", "=", "")]);
        // Sorted like Go's sort.StringSlice.
        assert_eq!(
            reqs("status.phase=Running,metadata.name=a"),
            vec![
                t("metadata.name", "=", "a"),
                t("status.phase", "=", "Running")
            ]
        );
        assert_eq!(reqs("a=b\\,c"), vec![t("a", "=", "b,c")]);
        assert_eq!(reqs("a=b\\=c"), vec![t("a", "=", "b=c")]);
        assert_eq!(reqs("a=b\\\\c"), vec![t("a", "=", "b\\c")]);
        assert_eq!(reqs("a=x!\\=y"), vec![t("a", "=", "x!=y")]);
        // No trimming: whitespace is part of the field name, as in Kubernetes.
        assert_eq!(reqs("a = b"), vec![t("a ", "=", " b")]);
        assert_eq!(reqs("a!=\\=b"), vec![t("a", "!=", "=b")]);
    }

    #[test]
    fn rejects_invalid() {
        let e = |s: &str| FieldSelector::parse(s).expect_err(s).to_string();
        assert_eq!(e("abc"), "invalid selector: 'abc'; can't understand 'abc'");
        assert_eq!(
            e("a=b,c"),
            "invalid selector: 'a=b,c'; can't understand 'c'"
        );
        assert_eq!(
            e("a=b=c"),
            "invalid field selector: unescaped character in value: 61"
        );
        assert_eq!(
            e("a==b,c=d\\"),
            "invalid field selector: invalid escape sequence: \\"
        );
        assert_eq!(
            e("a=b\\x"),
            "invalid field selector: invalid escape sequence: \\x"
        );
        assert_eq!(
            e("a!=b=c"),
            "invalid field selector: unescaped character in value: 61"
        );
        assert_eq!(
            e("a!==b"),
            "invalid field selector: unescaped character in value: 61"
        );
    }

    #[test]
    fn matching() {
        let obj: HashMap<&str, &str> =
            [("metadata.name", "web"), ("status.phase", "Running")].into();
        let get = |f: &str| obj.get(f).map(|v| v.to_string());
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(get);
        assert!(m(""));
        assert!(m("metadata.name=web"));
        assert!(m("metadata.name==web,status.phase=Running"));
        assert!(m("status.phase!=Pending"));
        assert!(!m("status.phase!=Running"));
        assert!(!m("metadata.name=db"));
        // Missing fields compare as "".
        assert!(m("spec.nodeName="));
        assert!(!m("spec.nodeName!="));
        assert!(m("spec.nodeName!=node-1"));
        assert!(!m("spec.nodeName=node-1"));
    }

    #[test]
    fn display_round_trips() {
        let s = FieldSelector::parse("b!=x\\,y,a=p\\=q\\\\").unwrap();
        assert_eq!(s.to_string(), "a=p\\=q\\\\,b!=x\\,y");
        assert_eq!(FieldSelector::parse(&s.to_string()).unwrap(), s);
        assert_eq!(s.requires_exact_match("a"), Some("p=q\\"));
        assert_eq!(s.requires_exact_match("b"), None);
    }
}
