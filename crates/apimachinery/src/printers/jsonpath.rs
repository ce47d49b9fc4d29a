//! The JSONPath subset CRD printer columns use (client-go `jsonpath` with missing keys allowed):
//! `.a.b`, `['a.b']`, `[0]`, `[-1]`, `[1:3]`, `[*]`, `..name` and filters like
//! `[?(@.type=="Ready")]`, `[?(@.count>1)]` or `[?(@.ready)]`.

use std::cmp::Ordering;

use serde_json::Value;

/// One step of a parsed path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    /// `[start:end:step]`; `[n]` is `[n:n+1]` with a derived end, `[*]` is all unknown.
    Slice {
        start: Option<i64>,
        end: Option<i64>,
        end_derived: bool,
        step: Option<i64>,
    },
    Wildcard,
    Recursive,
    Filter(Filter),
}

#[derive(Debug, Clone, PartialEq)]
struct Filter {
    left: Operand,
    /// `None` for an existence test (`[?(@.x)]`).
    op: Option<(Op, Operand)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Path(Vec<Step>),
    Literal(Value),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A parsed JSONPath expression.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath {
    steps: Vec<Step>,
}

/// Why a path could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSONPath: {0}")]
pub struct ParseError(pub String);

/// Evaluation failed (an index out of range, filtering a non-array, comparing mismatched types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("JSONPath evaluation failed")]
pub struct EvalError;

impl JsonPath {
    /// Parses a CRD column path such as `.status.conditions[?(@.type=="Ready")].status`. The
    /// template braces client-go wraps it in (`{...}`) are accepted but not required.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let t = text.trim();
        let t = t
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .unwrap_or(t);
        let mut p = Parser {
            chars: t.chars().collect(),
            pos: 0,
        };
        let steps = p.steps(false)?;
        if p.pos != p.chars.len() {
            return Err(p.error("unexpected character"));
        }
        Ok(JsonPath { steps })
    }

    /// All matches in document order. `Err` when evaluation fails the way client-go's
    /// `FindResults` does (an index out of range, filtering a non-array, comparing mismatched
    /// types); a missing key is not an error, it just yields nothing.
    pub fn find<'a>(&self, root: &'a Value) -> Result<Vec<&'a Value>, EvalError> {
        eval(&self.steps, vec![root]).map_err(|()| EvalError)
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn error(&self, what: &str) -> ParseError {
        ParseError(format!("{what} at position {}", self.pos))
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    /// Steps until the end, or (inside a filter) until an operator or `)`.
    fn steps(&mut self, in_filter: bool) -> Result<Vec<Step>, ParseError> {
        let mut steps = Vec::new();
        // A leading `$` names the root, which is where evaluation starts anyway.
        self.eat('$');
        loop {
            match self.peek() {
                None => break,
                Some('.') => {
                    self.pos += 1;
                    if self.eat('.') {
                        steps.push(Step::Recursive);
                    }
                    if self.eat('*') {
                        steps.push(Step::Wildcard);
                        continue;
                    }
                    let name = self.identifier();
                    if name.is_empty() {
                        // `.` alone refers to the current object; `..[0]` is recursion + index.
                        continue;
                    }
                    steps.push(Step::Field(name));
                }
                Some('[') => {
                    self.pos += 1;
                    steps.push(self.bracket()?);
                }
                Some(c) if in_filter && (c.is_whitespace() || "=!<>)".contains(c)) => break,
                Some(_) => return Err(self.error("unexpected character")),
            }
        }
        Ok(steps)
    }

    fn identifier(&mut self) -> String {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '/')
        {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn bracket(&mut self) -> Result<Step, ParseError> {
        self.skip_spaces();
        let step = match self.peek() {
            Some('\'') | Some('"') => Step::Field(self.quoted()?),
            Some('*') => {
                // client-go reads `[*]` as the slice `[:]`, so it applies to arrays only.
                self.pos += 1;
                Step::Slice {
                    start: None,
                    end: None,
                    end_derived: false,
                    step: None,
                }
            }
            Some('?') => {
                self.pos += 1;
                if !self.eat('(') {
                    return Err(self.error("expected ( after ?"));
                }
                let f = self.filter()?;
                if !self.eat(')') {
                    return Err(self.error("expected ) to close filter"));
                }
                Step::Filter(f)
            }
            _ => self.slice()?,
        };
        self.skip_spaces();
        if !self.eat(']') {
            return Err(self.error("expected ]"));
        }
        Ok(step)
    }

    fn quoted(&mut self) -> Result<String, ParseError> {
        let quote = self.peek().ok_or_else(|| self.error("expected quote"))?;
        self.pos += 1;
        let mut s = String::new();
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some('\\') => {
                    self.pos += 1;
                    if let Some(c) = self.peek() {
                        s.push(c);
                        self.pos += 1;
                    }
                }
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(s);
                }
                Some(c) => {
                    s.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn int(&mut self) -> Result<Option<i64>, ParseError> {
        self.skip_spaces();
        let start = self.pos;
        if self.peek() == Some('-') {
            self.pos += 1;
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        self.skip_spaces();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse()
            .map(Some)
            .map_err(|_| self.error("invalid array index"))
    }

    fn slice(&mut self) -> Result<Step, ParseError> {
        let start = self.int()?;
        if !self.eat(':') {
            let n = start.ok_or_else(|| self.error("expected index"))?;
            return Ok(Step::Slice {
                start: Some(n),
                end: Some(n + 1),
                end_derived: true,
                step: None,
            });
        }
        let end = self.int()?;
        let step = if self.eat(':') { self.int()? } else { None };
        Ok(Step::Slice {
            start,
            end,
            end_derived: false,
            step,
        })
    }

    fn filter(&mut self) -> Result<Filter, ParseError> {
        self.skip_spaces();
        let left = self.operand()?;
        self.skip_spaces();
        let op = match (self.peek(), self.chars.get(self.pos + 1).copied()) {
            (Some('='), Some('=')) => Some((Op::Eq, 2)),
            (Some('!'), Some('=')) => Some((Op::Ne, 2)),
            (Some('<'), Some('=')) => Some((Op::Le, 2)),
            (Some('>'), Some('=')) => Some((Op::Ge, 2)),
            (Some('<'), _) => Some((Op::Lt, 1)),
            (Some('>'), _) => Some((Op::Gt, 1)),
            _ => None,
        };
        let Some((op, len)) = op else {
            return Ok(Filter { left, op: None });
        };
        self.pos += len;
        self.skip_spaces();
        let right = self.operand()?;
        self.skip_spaces();
        Ok(Filter {
            left,
            op: Some((op, right)),
        })
    }

    fn operand(&mut self) -> Result<Operand, ParseError> {
        match self.peek() {
            Some('@') => {
                self.pos += 1;
                Ok(Operand::Path(self.steps(true)?))
            }
            Some('\'') | Some('"') => Ok(Operand::Literal(Value::String(self.quoted()?))),
            _ => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|c| c.is_alphanumeric() || c == '.' || c == '-' || c == '+')
                {
                    self.pos += 1;
                }
                let text: String = self.chars[start..self.pos].iter().collect();
                literal(&text).ok_or_else(|| self.error("invalid filter literal"))
            }
        }
    }
}

fn literal(text: &str) -> Option<Operand> {
    let v = match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => {
            if let Ok(i) = text.parse::<i64>() {
                Value::from(i)
            } else {
                Value::from(text.parse::<f64>().ok()?)
            }
        }
    };
    Some(Operand::Literal(v))
}

fn eval<'a>(steps: &[Step], mut input: Vec<&'a Value>) -> Result<Vec<&'a Value>, ()> {
    for step in steps {
        input = match step {
            Step::Field(name) => input
                .iter()
                .filter_map(|v| v.as_object()?.get(name))
                .collect(),
            Step::Wildcard => input
                .iter()
                .flat_map(|v| match v {
                    Value::Array(a) => a.iter().collect::<Vec<_>>(),
                    Value::Object(m) => m.values().collect(),
                    _ => Vec::new(),
                })
                .collect(),
            Step::Recursive => {
                let mut out = Vec::new();
                for v in &input {
                    descend(v, &mut out);
                }
                out
            }
            Step::Slice {
                start,
                end,
                end_derived,
                step,
            } => {
                let mut out = Vec::new();
                for v in input.iter().filter(|v| !v.is_null()) {
                    let arr = v.as_array().ok_or(())?;
                    slice(arr, *start, *end, *end_derived, *step, &mut out)?;
                }
                out
            }
            Step::Filter(f) => {
                let mut out = Vec::new();
                for v in input.iter().filter(|v| !v.is_null()) {
                    let arr = v.as_array().ok_or(())?;
                    for item in arr {
                        if passes(f, item)? {
                            out.push(item);
                        }
                    }
                }
                out
            }
        };
    }
    Ok(input)
}

fn descend<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    out.push(v);
    match v {
        Value::Array(a) => a.iter().for_each(|c| descend(c, out)),
        Value::Object(m) => m.values().for_each(|c| descend(c, out)),
        _ => {}
    }
}

/// client-go's `evalArray`: negative bounds count from the end, out-of-range bounds are errors.
fn slice<'a>(
    arr: &'a [Value],
    start: Option<i64>,
    end: Option<i64>,
    end_derived: bool,
    step: Option<i64>,
    out: &mut Vec<&'a Value>,
) -> Result<(), ()> {
    let len = arr.len() as i64;
    let mut s = start.unwrap_or(0);
    if s < 0 {
        s += len;
    }
    let mut e = end.unwrap_or(len);
    if end.is_some() && (e < 0 || (e == 0 && end_derived)) {
        e += len;
    }
    if s == e {
        return Ok(());
    }
    if s >= len || s < 0 || e > len || e < 0 || s > e {
        return Err(());
    }
    let step = step.unwrap_or(1);
    if step <= 0 {
        return Err(());
    }
    out.extend(arr[s as usize..e as usize].iter().step_by(step as usize));
    Ok(())
}

fn operand_values<'a>(o: &'a Operand, item: &'a Value) -> Result<Vec<&'a Value>, ()> {
    match o {
        Operand::Path(steps) => eval(steps, vec![item]),
        Operand::Literal(v) => Ok(vec![v]),
    }
}

fn passes(f: &Filter, item: &Value) -> Result<bool, ()> {
    let lefts = operand_values(&f.left, item);
    let Some((op, right)) = &f.op else {
        return Ok(lefts.is_ok_and(|l| !l.is_empty()));
    };
    let lefts = lefts?;
    let left = match lefts.as_slice() {
        [] => return Ok(false),
        [one] => *one,
        _ => return Err(()),
    };
    let rights = operand_values(right, item)?;
    let right = match rights.as_slice() {
        [] => return Ok(false),
        [one] => *one,
        _ => return Err(()),
    };
    let ord = compare(left, right, *op)?;
    Ok(match op {
        Op::Eq => ord == Ordering::Equal,
        Op::Ne => ord != Ordering::Equal,
        Op::Lt => ord == Ordering::Less,
        Op::Le => ord != Ordering::Greater,
        Op::Gt => ord == Ordering::Greater,
        Op::Ge => ord != Ordering::Less,
    })
}

/// Go template comparison: integers with integers, floats with floats, strings with strings;
/// booleans only for (in)equality. Anything else is an "incompatible types" error.
fn compare(a: &Value, b: &Value, op: Op) -> Result<Ordering, ()> {
    let equality_only = matches!(op, Op::Eq | Op::Ne);
    match (a, b) {
        (Value::String(x), Value::String(y)) => Ok(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) if equality_only => Ok(x.cmp(y)),
        (Value::Number(x), Value::Number(y)) => {
            let (xi, yi) = (x.is_i64() || x.is_u64(), y.is_i64() || y.is_u64());
            if xi && yi {
                let (x, y) = (x.as_i64().ok_or(())?, y.as_i64().ok_or(())?);
                Ok(x.cmp(&y))
            } else if !xi && !yi {
                let (x, y) = (x.as_f64().ok_or(())?, y.as_f64().ok_or(())?);
                x.partial_cmp(&y).ok_or(())
            } else {
                Err(())
            }
        }
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn find(path: &str, doc: &Value) -> Result<Vec<Value>, EvalError> {
        JsonPath::parse(path)
            .unwrap()
            .find(doc)
            .map(|v| v.into_iter().cloned().collect())
    }

    fn doc() -> Value {
        json!({
            "metadata": {"name": "db", "labels": {"app.kubernetes.io/name": "pg"}},
            "spec": {"replicas": 3, "ratio": 0.5},
            "status": {
                "conditions": [
                    {"type": "Synced", "status": "True", "count": 1},
                    {"type": "Ready", "status": "False", "count": 4},
                ],
                "nodes": ["a", "b", "c"]
            }
        })
    }

    #[test]
    fn fields_and_indexes() {
        let d = doc();
        assert_eq!(find(".spec.replicas", &d), Ok(vec![json!(3)]));
        assert_eq!(find("{.spec.replicas}", &d), Ok(vec![json!(3)]));
        assert_eq!(find(".spec.missing", &d), Ok(vec![]));
        assert_eq!(find(".status.nodes[0]", &d), Ok(vec![json!("a")]));
        assert_eq!(find(".status.nodes[-1]", &d), Ok(vec![json!("c")]));
        assert_eq!(
            find(".status.nodes[1:]", &d),
            Ok(vec![json!("b"), json!("c")])
        );
        assert_eq!(find(".status.nodes[*]", &d).unwrap().len(), 3);
        assert_eq!(find(".status.nodes[5]", &d), Err(EvalError));
        assert_eq!(
            find(".metadata.labels['app.kubernetes.io/name']", &d),
            Ok(vec![json!("pg")])
        );
        assert_eq!(find(".status.conditions[*].type", &d).unwrap().len(), 2);
        assert_eq!(find("..replicas", &d), Ok(vec![json!(3)]));
    }

    #[test]
    fn filters() {
        let d = doc();
        assert_eq!(
            find(r#".status.conditions[?(@.type=="Ready")].status"#, &d),
            Ok(vec![json!("False")])
        );
        assert_eq!(
            find(".status.conditions[?(@.type == 'Synced')].status", &d),
            Ok(vec![json!("True")])
        );
        assert_eq!(
            find(r#".status.conditions[?(@.type!="Ready")].type"#, &d),
            Ok(vec![json!("Synced")])
        );
        assert_eq!(
            find(".status.conditions[?(@.count>2)].type", &d),
            Ok(vec![json!("Ready")])
        );
        assert_eq!(
            find(".status.conditions[?(@.count)].type", &d)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(find(".status.conditions[?(@.nope)].type", &d), Ok(vec![]));
        // Comparing a string field with a number is an error in client-go.
        assert_eq!(
            find(".status.conditions[?(@.type>2)].type", &d),
            Err(EvalError)
        );
        assert_eq!(find(".spec[?(@.x==1)]", &d), Err(EvalError));
    }

    #[test]
    fn parse_errors() {
        assert!(JsonPath::parse(".a[").is_err());
        assert!(JsonPath::parse(".a[?(@.b==)]").is_err());
        assert!(JsonPath::parse(".a]").is_err());
    }
}
