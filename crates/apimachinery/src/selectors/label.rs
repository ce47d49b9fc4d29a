//! Label selectors: the string syntax of `?labelSelector=` (a port of the lexer and parser in
//! k8s.io/apimachinery/pkg/labels, same acceptance and error messages) and the
//! `metav1.LabelSelector` object form (`matchLabels` / `matchExpressions`).

use std::fmt;

use serde_json::{Map, Value};

use super::validation::{go_quote, invalid, is_qualified_name, is_valid_label_value};
use super::SelectorError;

/// A requirement's operator. `GreaterThan`/`LessThan` exist only in the string syntax
/// (`a>1`), as in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

impl Operator {
    /// The `selection.Operator` string Kubernetes uses for this operator.
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => "in",
            Operator::NotIn => "notin",
            Operator::Exists => "exists",
            Operator::DoesNotExist => "!",
            Operator::GreaterThan => "gt",
            Operator::LessThan => "lt",
        }
    }
}

/// One `key op values` term of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

/// Go's `%#v` of a `[]string`, which `field.Invalid` prints for a bad value set.
fn go_string_slice(vals: &[String]) -> String {
    if vals.is_empty() {
        return "[]string(nil)".to_string();
    }
    let items: Vec<String> = vals.iter().map(|v| go_quote(v)).collect();
    format!("[]string{{{}}}", items.join(", "))
}

/// `utilerrors.NewAggregate(...).Error()`: one message alone, several as `[a, b]`.
fn aggregate(mut msgs: Vec<String>) -> String {
    let mut seen = std::collections::HashSet::new();
    msgs.retain(|m| seen.insert(m.clone()));
    if msgs.len() == 1 {
        msgs.remove(0)
    } else {
        format!("[{}]", msgs.join(", "))
    }
}

impl Requirement {
    /// Validates like `labels.NewRequirement`: key a qualified name, each value a label value,
    /// and the value count fitting the operator.
    pub fn new(key: &str, operator: Operator, values: Vec<String>) -> Result<Self, SelectorError> {
        let mut errs = Vec::new();
        let key_errs = is_qualified_name(key);
        if !key_errs.is_empty() {
            errs.push(invalid("key", key, &key_errs));
        }
        let bad_set = |detail: &str| {
            format!(
                "values: Invalid value: {}: {detail}",
                go_string_slice(&values)
            )
        };
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => errs.push(bad_set(
                "for 'in', 'notin' operators, values set can't be empty",
            )),
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals
                if values.len() != 1 =>
            {
                errs.push(bad_set(
                    "exact-match compatibility requires one single value",
                ))
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => errs.push(bad_set(
                "values set must be empty for exists and does not exist",
            )),
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(bad_set(
                        "for 'Gt', 'Lt' operators, exactly one value is required",
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(format!(
                            "values[{i}]: Invalid value: {}: for 'Gt', 'Lt' operators, the value must be an integer",
                            go_quote(v)
                        ));
                    }
                }
            }
            _ => {}
        }
        for (i, v) in values.iter().enumerate() {
            let verrs = is_valid_label_value(v);
            if !verrs.is_empty() {
                errs.push(invalid(&format!("values[{i}][{key}]"), v, &verrs));
            }
        }
        if !errs.is_empty() {
            return Err(SelectorError::Label(aggregate(errs)));
        }
        Ok(Requirement {
            key: key.to_string(),
            operator,
            values,
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn operator(&self) -> Operator {
        self.operator
    }

    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Kubernetes semantics: `!=` and `notin` match objects that lack the label.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let value = labels.and_then(|l| l.get(&self.key)).map(label_text);
        let has = |v: &str| self.values.iter().any(|x| x == v);
        match self.operator {
            Operator::In | Operator::Equals | Operator::DoubleEquals => {
                value.is_some_and(|v| has(&v))
            }
            Operator::NotIn | Operator::NotEquals => value.is_none_or(|v| !has(&v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(v), [want]) = (value, self.values.as_slice()) else {
                    return false;
                };
                match (v.parse::<i64>(), want.parse::<i64>()) {
                    (Ok(have), Ok(want)) if self.operator == Operator::GreaterThan => have > want,
                    (Ok(have), Ok(want)) => have < want,
                    _ => false,
                }
            }
        }
    }
}

/// Label values are strings; anything else (never valid in a stored object) is compared by
/// its JSON text rather than silently treated as absent.
fn label_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl fmt::Display for Requirement {
    /// `Requirement.String()`: `!a`, `a`, `a=b`, `a in (x,y)` with values sorted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator == Operator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let op = match self.operator {
            Operator::Exists | Operator::DoesNotExist => return Ok(()),
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => " in (",
            Operator::NotIn => " notin (",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
        };
        f.write_str(op)?;
        let mut vals = self.values.clone();
        vals.sort();
        f.write_str(&vals.join(","))?;
        if matches!(self.operator, Operator::In | Operator::NotIn) {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// An AND of requirements. The default (no requirements) matches everything; the selector
/// made from an absent `metav1.LabelSelector` matches nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    nothing: bool,
}

impl LabelSelector {
    /// Matches every object (the empty selector string).
    pub fn everything() -> Self {
        Self::default()
    }

    /// Matches no object (what Kubernetes makes of a nil `*metav1.LabelSelector`).
    pub fn nothing() -> Self {
        LabelSelector {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// Builds a selector from requirements, sorted by key like `Selector.Add`.
    pub fn from_requirements(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        LabelSelector {
            requirements,
            nothing: false,
        }
    }

    /// Parses the string syntax: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`,
    /// `a>1`, `a<1`, joined by commas; whitespace between tokens is ignored, `""` matches
    /// everything.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let requirements = Parser::new(s).parse().map_err(SelectorError::Label)?;
        Ok(Self::from_requirements(requirements))
    }

    /// Exact-match selector from a label map (a Service or ReplicationController selector),
    /// validated like `ValidatedSelectorFromSet`.
    pub fn from_map(labels: &Map<String, Value>) -> Result<Self, SelectorError> {
        let mut reqs = Vec::with_capacity(labels.len());
        for (k, v) in labels {
            let Some(v) = v.as_str() else {
                return Err(SelectorError::Label(format!(
                    "label {} must have a string value",
                    go_quote(k)
                )));
            };
            reqs.push(Requirement::new(k, Operator::Equals, vec![v.to_string()])?);
        }
        Ok(Self::from_requirements(reqs))
    }

    /// Converts a `metav1.LabelSelector` object like `metav1.LabelSelectorAsSelector`: `null`
    /// matches nothing, `{}` everything; operators In, NotIn, Exists, DoesNotExist.
    pub fn from_label_selector_json(v: &Value) -> Result<Self, SelectorError> {
        let obj = match v {
            Value::Null => return Ok(Self::nothing()),
            Value::Object(o) => o,
            other => {
                return Err(SelectorError::Label(format!(
                    "label selector must be an object, got {other}"
                )))
            }
        };
        let mut reqs = Vec::new();
        match obj.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => reqs.extend(Self::from_map(m)?.requirements),
            Some(_) => {
                return Err(SelectorError::Label(
                    "matchLabels must be an object".to_string(),
                ))
            }
        }
        match obj.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(exprs)) => {
                for expr in exprs {
                    reqs.push(expression_requirement(expr)?);
                }
            }
            Some(_) => {
                return Err(SelectorError::Label(
                    "matchExpressions must be a list".to_string(),
                ))
            }
        }
        Ok(Self::from_requirements(reqs))
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// True when the selector matches everything.
    pub fn is_everything(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    /// True for the selector that matches nothing.
    pub fn is_nothing(&self) -> bool {
        self.nothing
    }

    /// Whether an object with these labels (`metadata.labels`, `None` when absent) matches.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// The single value `key` must have, if the selector pins it (`a=b`, `a in (b)`).
    pub fn requires_exact_match(&self, key: &str) -> Option<&str> {
        let r = self.requirements.iter().find(|r| r.key == key)?;
        match (r.operator, r.values.as_slice()) {
            (Operator::Equals | Operator::DoubleEquals | Operator::In, [v]) => Some(v),
            _ => None,
        }
    }
}

fn expression_requirement(expr: &Value) -> Result<Requirement, SelectorError> {
    let bad = |m: &str| SelectorError::Label(m.to_string());
    let e = expr
        .as_object()
        .ok_or_else(|| bad("matchExpressions items must be objects"))?;
    let key = e.get("key").and_then(Value::as_str).unwrap_or("");
    let op_str = e.get("operator").and_then(Value::as_str).unwrap_or("");
    let op = match op_str {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        other => {
            return Err(SelectorError::Label(format!(
                "{} is not a valid label selector operator",
                go_quote(other)
            )))
        }
    };
    let values = match e.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(vs)) => vs
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad("matchExpressions values must be strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("matchExpressions values must be a list")),
    };
    Requirement::new(key, op, values)
}

impl fmt::Display for LabelSelector {
    /// The canonical string form (`Selector.String()`), which parses back to the same selector.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    EndOfString,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

fn keyword(s: &[u8]) -> Option<Tok> {
    Some(match s {
        b")" => Tok::ClosedPar,
        b"," => Tok::Comma,
        b"!" => Tok::DoesNotExist,
        b"==" => Tok::DoubleEquals,
        b"=" => Tok::Equals,
        b">" => Tok::GreaterThan,
        b"in" => Tok::In,
        b"<" => Tok::LessThan,
        b"!=" => Tok::NotEquals,
        b"notin" => Tok::NotIn,
        b"(" => Tok::OpenPar,
        _ => return None,
    })
}

fn is_whitespace(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(c: u8) -> bool {
    matches!(c, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// Splits the input into tokens exactly like the Go lexer (longest operator match, keywords
/// `in`/`notin` recognised only as whole words).
fn lex(s: &str) -> Vec<(Tok, String)> {
    let b = s.as_bytes();
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        while pos < b.len() && is_whitespace(b[pos]) {
            pos += 1;
        }
        if pos >= b.len() {
            out.push((Tok::EndOfString, String::new()));
            return out;
        }
        let start = pos;
        if is_special(b[pos]) {
            let mut last: Option<(Tok, usize)> = None;
            while pos < b.len() && is_special(b[pos]) {
                match keyword(&b[start..=pos]) {
                    Some(t) => last = Some((t, pos + 1)),
                    None if last.is_some() => break,
                    None => {}
                }
                pos += 1;
            }
            // Every special byte is a token by itself, so `last` is always set.
            let (tok, end) = last.expect("special symbol is a token");
            pos = end;
            out.push((tok, String::from_utf8_lossy(&b[start..end]).into_owned()));
        } else {
            while pos < b.len() && !is_special(b[pos]) && !is_whitespace(b[pos]) {
                pos += 1;
            }
            let lit = &b[start..pos];
            let tok = keyword(lit).unwrap_or(Tok::Identifier);
            out.push((tok, String::from_utf8_lossy(lit).into_owned()));
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    KeyAndOperator,
    Values,
}

struct Parser {
    items: Vec<(Tok, String)>,
    pos: usize,
}

const BINARY_OPERATORS: &str = "in, notin, =, ==, !=, gt, lt";

impl Parser {
    fn new(s: &str) -> Self {
        Parser {
            items: lex(s),
            pos: 0,
        }
    }

    /// In value position `in`/`notin` are plain identifiers (`a in (in)`).
    fn adjust(tok: Tok, ctx: Ctx) -> Tok {
        match tok {
            Tok::In | Tok::NotIn if ctx == Ctx::Values => Tok::Identifier,
            t => t,
        }
    }

    fn lookahead(&self, ctx: Ctx) -> (Tok, String) {
        let (t, l) = &self.items[self.pos.min(self.items.len() - 1)];
        (Self::adjust(*t, ctx), l.clone())
    }

    fn consume(&mut self, ctx: Ctx) -> (Tok, String) {
        let item = self.lookahead(ctx);
        self.pos += 1;
        item
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut reqs = Vec::new();
        loop {
            let (tok, lit) = self.lookahead(Ctx::Values);
            match tok {
                Tok::Identifier | Tok::DoesNotExist => {
                    let r = self
                        .parse_requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    reqs.push(r);
                    let (t, l) = self.consume(Ctx::Values);
                    match t {
                        Tok::EndOfString => return Ok(reqs),
                        Tok::Comma => {
                            let (t2, l2) = self.lookahead(Ctx::Values);
                            if t2 != Tok::Identifier && t2 != Tok::DoesNotExist {
                                return Err(format!(
                                    "found '{l2}', expected: identifier after ','"
                                ));
                            }
                        }
                        _ => return Err(format!("found '{l}', expected: ',' or 'end of string'")),
                    }
                }
                Tok::EndOfString => return Ok(reqs),
                _ => {
                    return Err(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    ))
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, String> {
        let (key, op) = self.parse_key_and_infer_operator()?;
        if let Some(op) = op {
            return Requirement::new(&key, op, Vec::new()).map_err(|e| e.to_string());
        }
        let op = self.parse_operator()?;
        let mut values = match op {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        // Go collects values in a string set and hands over its sorted list.
        values.sort();
        values.dedup();
        Requirement::new(&key, op, values).map_err(|e| e.to_string())
    }

    /// Returns the key and, for `a` / `!a`, the unary operator.
    fn parse_key_and_infer_operator(&mut self) -> Result<(String, Option<Operator>), String> {
        let mut op = None;
        let (mut tok, mut lit) = self.consume(Ctx::Values);
        if tok == Tok::DoesNotExist {
            op = Some(Operator::DoesNotExist);
            (tok, lit) = self.consume(Ctx::Values);
        }
        if tok != Tok::Identifier {
            return Err(format!("found '{lit}', expected: identifier"));
        }
        let errs = is_qualified_name(&lit);
        if !errs.is_empty() {
            // The parser validates with a nil field path, which Go prints as "<nil>".
            return Err(invalid("<nil>", &lit, &errs));
        }
        let (next, _) = self.lookahead(Ctx::Values);
        if (next == Tok::EndOfString || next == Tok::Comma) && op.is_none() {
            op = Some(Operator::Exists);
        }
        Ok((lit, op))
    }

    fn parse_operator(&mut self) -> Result<Operator, String> {
        let (tok, lit) = self.consume(Ctx::KeyAndOperator);
        Ok(match tok {
            Tok::In => Operator::In,
            Tok::Equals => Operator::Equals,
            Tok::DoubleEquals => Operator::DoubleEquals,
            Tok::GreaterThan => Operator::GreaterThan,
            Tok::LessThan => Operator::LessThan,
            Tok::NotIn => Operator::NotIn,
            Tok::NotEquals => Operator::NotEquals,
            _ => return Err(format!("found '{lit}', expected: {BINARY_OPERATORS}")),
        })
    }

    fn parse_values(&mut self) -> Result<Vec<String>, String> {
        let (tok, lit) = self.consume(Ctx::Values);
        if tok != Tok::OpenPar {
            return Err(format!("found '{lit}' expected: '('"));
        }
        let (tok, lit) = self.lookahead(Ctx::Values);
        match tok {
            Tok::Identifier | Tok::Comma => {
                let s = self.parse_identifiers_list()?;
                let (t, _) = self.consume(Ctx::Values);
                if t != Tok::ClosedPar {
                    return Err(format!("found '{lit}', expected: ')'"));
                }
                Ok(s)
            }
            Tok::ClosedPar => {
                self.consume(Ctx::Values);
                Ok(vec![String::new()])
            }
            _ => Err(format!("found '{lit}', expected: ',', ')' or identifier")),
        }
    }

    /// A possibly empty comma-separated list of possibly empty identifiers: `(a,,b)`, `(,a)`.
    fn parse_identifiers_list(&mut self) -> Result<Vec<String>, String> {
        let mut s: Vec<String> = Vec::new();
        loop {
            let (tok, lit) = self.consume(Ctx::Values);
            match tok {
                Tok::Identifier => {
                    s.push(lit);
                    let (t2, l2) = self.lookahead(Ctx::Values);
                    match t2 {
                        Tok::Comma => continue,
                        Tok::ClosedPar => return Ok(s),
                        _ => return Err(format!("found '{l2}', expected: ',' or ')'")),
                    }
                }
                Tok::Comma => {
                    if s.is_empty() {
                        s.push(String::new());
                    }
                    let (t2, _) = self.lookahead(Ctx::Values);
                    if t2 == Tok::ClosedPar {
                        s.push(String::new());
                        return Ok(s);
                    }
                    if t2 == Tok::Comma {
                        self.consume(Ctx::Values);
                        s.push(String::new());
                    }
                }
                _ => return Err(format!("found '{lit}', expected: ',', or identifier")),
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<Vec<String>, String> {
        let (tok, _) = self.lookahead(Ctx::Values);
        if tok == Tok::EndOfString || tok == Tok::Comma {
            return Ok(vec![String::new()]);
        }
        let (tok, lit) = self.consume(Ctx::Values);
        if tok == Tok::Identifier {
            return Ok(vec![lit]);
        }
        Err(format!("found '{lit}', expected: identifier"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn err(s: &str) -> String {
        LabelSelector::parse(s).expect_err(s).to_string()
    }

    #[test]
    fn parses_and_canonicalises() {
        let cases = [
            ("", ""),
            ("   ", ""),
            ("x=a", "x=a"),
            ("x==a", "x==a"),
            ("x!=a", "x!=a"),
            ("x = a", "x=a"),
            ("x=a,y=b", "x=a,y=b"),
            ("y=b,x=a", "x=a,y=b"),
            ("x in (b,a)", "x in (a,b)"),
            ("x notin (a)", "x notin (a)"),
            ("x  in  ( a , b )", "x in (a,b)"),
            ("x", "x"),
            ("!x", "!x"),
            ("! x", "!x"),
            ("x,!y", "x,!y"),
            ("!y,x", "x,!y"),
            ("x=", "x="),
            ("x=,y=b", "x=,y=b"),
            ("x in ()", "x in ()"),
            ("x in (,a)", "x in (,a)"),
            ("x in (a,,b)", "x in (,a,b)"),
            ("x in (a,)", "x in (,a)"),
            ("x in (in)", "x in (in)"),
            ("x=in", "x=in"),
            ("x>1", "x>1"),
            ("x<10", "x<10"),
            ("example.com/app=web", "example.com/app=web"),
            ("a.b-c_d=e.f-g_h", "a.b-c_d=e.f-g_h"),
            (
                "environment in (production,qa),tier notin (frontend)",
                "environment in (production,qa),tier notin (frontend)",
            ),
            ("x\t=\na", "x=a"),
            ("  a  =  b  ,  c  ,  ! d  ", "a=b,c,!d"),
        ];
        for (input, want) in cases {
            assert_eq!(sel(input).to_string(), want, "input {input:?}");
            // The canonical form parses back to itself.
            assert_eq!(sel(want).to_string(), want);
        }
    }

    #[test]
    fn rejects_invalid() {
        let cases = [
            ("x=a||y=b", "unable to parse requirement"),
            ("x==a==b", "found '==', expected: ',' or 'end of string'"),
            ("!x=a", "found '=', expected: ',' or 'end of string'"),
            ("x in a", "found 'a' expected: '('"),
            ("x in (a", "found '', expected: ',' or ')'"),
            ("x in (", "found '', expected: ',', ')' or identifier"),
            ("x,", "found '', expected: identifier after ','"),
            (
                ",x",
                "found ',', expected: !, identifier, or 'end of string'",
            ),
            (
                "=a",
                "found '=', expected: !, identifier, or 'end of string'",
            ),
            ("x=(", "found '(', expected: identifier"),
            ("!", "found '', expected: identifier"),
            ("x y", "found 'y', expected: in, notin, =, ==, !=, gt, lt"),
            (
                "x>a",
                "for 'Gt', 'Lt' operators, the value must be an integer",
            ),
            (
                "-x=a",
                "<nil>: Invalid value: \"-x\": name part must consist of",
            ),
            ("a/b/c=d", "a qualified name must consist of"),
            (
                "Bad.Prefix/x=a",
                "prefix part a lowercase RFC 1123 subdomain",
            ),
            ("x=a b", "found 'b', expected: ',' or 'end of string'"),
            (
                "x=-a",
                "values[0][x]: Invalid value: \"-a\": a valid label must be an empty string",
            ),
            ("x<-1", "values[0][x]: Invalid value: \"-1\""),
        ];
        for (input, want) in cases {
            let e = err(input);
            assert!(
                e.contains(want),
                "input {input:?}: error {e:?} lacks {want:?}"
            );
        }
        assert_eq!(err("x=a)"), "found ')', expected: ',' or 'end of string'");
        assert_eq!(
            err(&format!("x={}", "v".repeat(64))),
            format!(
                "unable to parse requirement: values[0][x]: Invalid value: \"{}\": must be no more than 63 characters",
                "v".repeat(64)
            )
        );
        assert_eq!(
            err("x y"),
            "unable to parse requirement: found 'y', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert!(err(&format!("{}=a", "k".repeat(64)))
            .starts_with("unable to parse requirement: <nil>: Invalid value: \"kkkk"));
    }

    #[test]
    fn matching_semantics() {
        let l = labels(json!({"app": "web", "tier": "frontend", "n": "5"}));
        let yes = [
            "",
            "app=web",
            "app==web",
            "app",
            "!missing",
            "app in (web,db)",
            "app notin (db)",
            "missing notin (x)",
            "missing!=x",
            "app!=db",
            "n>4",
            "n<6",
            "app=web,tier=frontend",
        ];
        let no = [
            "app=db",
            "!app",
            "missing",
            "app in (db)",
            "app notin (web)",
            "app!=web",
            "n>5",
            "n<5",
            "missing>1",
            "app>1",
            "missing=x",
            "app=web,tier=backend",
            "missing in (x)",
        ];
        for s in yes {
            assert!(sel(s).matches(Some(&l)), "{s} should match");
        }
        for s in no {
            assert!(!sel(s).matches(Some(&l)), "{s} should not match");
        }
        // No labels at all.
        assert!(sel("a!=b").matches(None));
        assert!(sel("a notin (b)").matches(None));
        assert!(sel("!a").matches(None));
        assert!(!sel("a").matches(None));
        assert!(sel("").matches(None));
        // `x=` matches an empty value but not a missing label.
        assert!(sel("x=").matches(Some(&labels(json!({"x": ""})))));
        assert!(!sel("x=").matches(Some(&labels(json!({})))));
    }

    #[test]
    fn exact_match_and_flags() {
        let s = sel("a=b,c in (d),e in (f,g),h!=i");
        assert_eq!(s.requires_exact_match("a"), Some("b"));
        assert_eq!(s.requires_exact_match("c"), Some("d"));
        assert_eq!(s.requires_exact_match("e"), None);
        assert_eq!(s.requires_exact_match("h"), None);
        assert_eq!(s.requires_exact_match("z"), None);
        assert!(sel("").is_everything());
        assert!(!s.is_everything());
        assert_eq!(s.requirements().len(), 4);
        assert_eq!(s.requirements()[2].operator(), Operator::In);
        assert_eq!(s.requirements()[2].values(), ["f", "g"]);
    }

    #[test]
    fn from_label_selector_object() {
        let s = LabelSelector::from_label_selector_json(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["frontend", "edge"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "zone", "operator": "NotIn", "values": ["a"]},
                {"key": "team", "operator": "Exists"}
            ]
        }))
        .unwrap();
        assert_eq!(
            s.to_string(),
            "app=web,!canary,team,tier in (edge,frontend),zone notin (a)"
        );
        assert!(s.matches(Some(&labels(
            json!({"app": "web", "tier": "edge", "team": "x"})
        ))));
        assert!(!s.matches(Some(&labels(
            json!({"app": "web", "tier": "edge", "team": "x", "canary": "1"})
        ))));
        assert!(!s.matches(Some(&labels(
            json!({"app": "web", "tier": "edge", "team": "x", "zone": "a"})
        ))));
        assert!(!s.matches(Some(&labels(
            json!({"app": "web", "tier": "core", "team": "x"})
        ))));

        let everything = LabelSelector::from_label_selector_json(&json!({})).unwrap();
        assert!(everything.is_everything() && everything.matches(None));
        let nothing = LabelSelector::from_label_selector_json(&Value::Null).unwrap();
        assert!(nothing.is_nothing() && !nothing.matches(Some(&labels(json!({"a": "b"})))));
    }

    #[test]
    fn label_selector_object_errors() {
        let e = |v: Value| {
            LabelSelector::from_label_selector_json(&v)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e(json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]})),
            "\"Gt\" is not a valid label selector operator"
        );
        assert_eq!(
            e(json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]})),
            "values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty"
        );
        assert_eq!(
            e(json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})),
            "values: Invalid value: []string{\"x\"}: values set must be empty for exists and does not exist"
        );
        assert!(e(json!({"matchLabels": {"bad key": "v"}}))
            .starts_with("key: Invalid value: \"bad key\""));
        assert!(e(json!({"matchLabels": {"k": "bad value"}}))
            .starts_with("values[0][k]: Invalid value: \"bad value\""));
        assert!(e(json!({"matchLabels": {"k": 1}})).contains("string value"));
        assert!(e(json!([])).contains("must be an object"));
        // Several problems are aggregated like utilerrors.Aggregate.
        let multi = e(json!({"matchExpressions": [{"key": "-a", "operator": "In", "values": []}]}));
        assert!(
            multi.starts_with("[key: Invalid value: \"-a\"")
                && multi.ends_with("values set can't be empty]")
        );
    }

    #[test]
    fn from_map_matches_exactly() {
        let s = LabelSelector::from_map(&labels(json!({"b": "2", "a": "1"}))).unwrap();
        assert_eq!(s.to_string(), "a=1,b=2");
        assert!(s.matches(Some(&labels(json!({"a": "1", "b": "2", "c": "3"})))));
        assert!(!s.matches(Some(&labels(json!({"a": "1"})))));
    }
}
