//! JSON patch (RFC 6902) with JSON pointers (RFC 6901). All-or-nothing: operations run on a
//! copy that replaces the document only when every one succeeded. Error texts follow
//! evanphx/json-patch, the library the Kubernetes API server uses; semantics are RFC 6902's
//! (no negative array indices, `replace`/`test` of a missing member fail, `value` required).

use serde_json::Value;

use super::PatchError;

fn unprocessable(msg: String) -> PatchError {
    PatchError::Unprocessable(msg)
}

/// Applies the RFC 6902 operation list `patch` to `doc`. On error `doc` is left unchanged.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Array(ops) = patch else {
        return Err(PatchError::BadRequest(format!(
            "json: cannot unmarshal {} into Go value of type jsonpatch.Patch",
            json_kind(patch)
        )));
    };
    for op in ops {
        if !op.is_object() {
            return Err(PatchError::BadRequest(format!(
                "json: cannot unmarshal {} into Go value of type jsonpatch.Operation",
                json_kind(op)
            )));
        }
    }
    let mut work = doc.clone();
    let mut copied = 0usize;
    for op in ops {
        apply_op(&mut work, op, &mut copied)?;
    }
    *doc = work;
    Ok(())
}

/// The JSON type word encoding/json uses in "cannot unmarshal X" errors.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// What copy operations may add in one patch, as upstream's AccumulatedCopySizeLimit:
/// without it a few dozen bytes of doubling copies exhaust memory.
pub const MAX_COPIED_BYTES: usize = 3 * 1024 * 1024;

fn apply_op(doc: &mut Value, op: &Value, copied: &mut usize) -> Result<(), PatchError> {
    let kind = op.get("op").and_then(Value::as_str).unwrap_or("unknown");
    let path = |field: &str| -> Result<&str, PatchError> {
        op.get(field).and_then(Value::as_str).ok_or_else(|| {
            unprocessable(format!(
                "{kind} operation failed to decode {field}: missing value"
            ))
        })
    };
    let value = || -> Result<Value, PatchError> {
        op.get("value").cloned().ok_or_else(|| {
            unprocessable(format!(
                "{kind} operation, missing value field: missing value"
            ))
        })
    };
    match kind {
        "add" => add(doc, path("path")?, value()?, "add"),
        "remove" => remove(doc, path("path")?),
        "replace" => replace(doc, path("path")?, value()?),
        "move" => move_op(doc, path("from")?, path("path")?),
        "copy" => copy_op(doc, path("from")?, path("path")?, copied),
        "test" => test(doc, path("path")?, &value()?),
        other => Err(unprocessable(format!("Unexpected kind: {other}"))),
    }
}

/// Splits a JSON pointer into unescaped reference tokens; `None` when it is not a pointer.
fn tokens(path: &str) -> Option<Vec<String>> {
    if path.is_empty() {
        return Some(Vec::new());
    }
    let rest = path.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

/// An RFC 6901 array index: `0` or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let ok = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    if ok {
        token.parse().ok()
    } else {
        None
    }
}

fn child_mut<'a>(v: &'a mut Value, token: &str) -> Option<&'a mut Value> {
    match v {
        Value::Object(m) => m.get_mut(token),
        Value::Array(a) => array_index(token).and_then(move |i| a.get_mut(i)),
        _ => None,
    }
}

fn child<'a>(v: &'a Value, token: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m.get(token),
        Value::Array(a) => array_index(token).and_then(|i| a.get(i)),
        _ => None,
    }
}

/// The container that holds the last token of `toks`, if it exists and is an object or array.
fn parent_mut<'a>(doc: &'a mut Value, toks: &[String]) -> Option<&'a mut Value> {
    let mut cur = doc;
    for t in &toks[..toks.len() - 1] {
        cur = child_mut(cur, t)?;
    }
    matches!(cur, Value::Object(_) | Value::Array(_)).then_some(cur)
}

fn get<'a>(doc: &'a Value, toks: &[String]) -> Option<&'a Value> {
    toks.iter().try_fold(doc, |cur, t| child(cur, t))
}

fn invalid_index(context: &str, path: &str, key: &str) -> PatchError {
    unprocessable(format!(
        "error in {context} for path: '{path}': Unable to access invalid index: {key}: invalid index referenced"
    ))
}

/// `context` names the operation in messages (`add`, or `move`/`copy` adding their value).
fn add(doc: &mut Value, path: &str, value: Value, context: &str) -> Result<(), PatchError> {
    let missing = || match context {
        "add" => unprocessable(format!(
            "add operation does not apply: doc is missing path: \"{path}\": missing value"
        )),
        op => unprocessable(format!(
            "{op} operation does not apply: doc is missing destination path: {path}: missing value"
        )),
    };
    let toks = tokens(path).ok_or_else(missing)?;
    let Some(key) = toks.last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, &toks).ok_or_else(missing)? {
        Value::Object(m) => {
            m.insert(key.clone(), value);
        }
        Value::Array(a) => {
            if key == "-" {
                a.push(value);
            } else {
                match array_index(key) {
                    Some(i) if i <= a.len() => a.insert(i, value),
                    _ => return Err(invalid_index(context, path, key)),
                }
            }
        }
        _ => return Err(missing()),
    }
    Ok(())
}

/// Removes and returns the value at `path`; `context` picks the error wording.
fn take(doc: &mut Value, path: &str, context: &str) -> Result<Value, PatchError> {
    let missing = || match context {
        "remove" => unprocessable(format!(
            "remove operation does not apply: doc is missing path: \"{path}\": missing value"
        )),
        op => unprocessable(format!(
            "{op} operation does not apply: doc is missing from path: {path}: missing value"
        )),
    };
    let toks = tokens(path).ok_or_else(missing)?;
    if toks.is_empty() {
        return Err(missing());
    }
    let key = toks.last().expect("non-empty");
    match parent_mut(doc, &toks).ok_or_else(missing)? {
        Value::Object(m) => m.shift_remove(key).ok_or_else(|| {
            unprocessable(format!(
                "error in {context} for path: '{path}': Unable to remove nonexistent key: {key}: missing value"
            ))
        }),
        Value::Array(a) => match array_index(key) {
            Some(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(invalid_index(context, path, key)),
        },
        _ => Err(missing()),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<(), PatchError> {
    take(doc, path, "remove").map(|_| ())
}

fn replace(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    let toks = tokens(path).ok_or_else(|| {
        unprocessable(format!(
            "replace operation does not apply: doc is missing path: {path}: missing value"
        ))
    })?;
    if toks.is_empty() {
        *doc = value;
        return Ok(());
    }
    let key = toks.last().expect("non-empty");
    let parent = parent_mut(doc, &toks).ok_or_else(|| {
        unprocessable(format!(
            "replace operation does not apply: doc is missing path: {path}: missing value"
        ))
    })?;
    let slot = child_mut(parent, key).ok_or_else(|| {
        unprocessable(format!(
            "replace operation does not apply: doc is missing key: {path}: missing value"
        ))
    })?;
    *slot = value;
    Ok(())
}

fn move_op(doc: &mut Value, from: &str, path: &str) -> Result<(), PatchError> {
    if path.starts_with(from) && path[from.len()..].starts_with('/') {
        return Err(unprocessable(format!(
            "move operation does not apply: cannot move {from} into its own child {path}"
        )));
    }
    let value = take(doc, from, "move")?;
    add(doc, path, value, "move")
}

fn copy_op(doc: &mut Value, from: &str, path: &str, copied: &mut usize) -> Result<(), PatchError> {
    let source = tokens(from).and_then(|t| get(doc, &t)).ok_or_else(|| {
        unprocessable(format!(
            "copy operation does not apply: doc is missing from path: {from}: missing value"
        ))
    })?;
    *copied += encoded_len(source, MAX_COPIED_BYTES.saturating_sub(*copied) + 1);
    if *copied > MAX_COPIED_BYTES {
        return Err(unprocessable(format!(
            "Unable to copy: the accumulated size of copied values exceeds the limit of {MAX_COPIED_BYTES} bytes"
        )));
    }
    let value = source.clone();
    add(doc, path, value, "copy")
}

/// The JSON-encoded size of `v`, counting no further than `cap` (so measuring a huge value
/// costs no more than the limit it is checked against).
fn encoded_len(v: &Value, cap: usize) -> usize {
    fn walk(v: &Value, n: &mut usize, cap: usize) {
        if *n > cap {
            return;
        }
        match v {
            Value::Null | Value::Bool(_) => *n += 5,
            Value::Number(x) => *n += x.to_string().len(),
            Value::String(s) => *n += s.len() + 2,
            Value::Array(a) => {
                *n += 2;
                for x in a {
                    walk(x, n, cap);
                    *n += 1;
                }
            }
            Value::Object(m) => {
                *n += 2;
                for (k, x) in m {
                    *n += k.len() + 4;
                    walk(x, n, cap);
                }
            }
        }
    }
    let mut n = 0;
    walk(v, &mut n, cap);
    n
}

fn test(doc: &Value, path: &str, expected: &Value) -> Result<(), PatchError> {
    let toks = tokens(path).ok_or_else(|| {
        unprocessable(format!(
            "test operation does not apply: is missing path: {path}: missing value"
        ))
    })?;
    match get(doc, &toks) {
        Some(actual) if json_equal(actual, expected) => Ok(()),
        _ => Err(unprocessable(format!(
            "testing value {path} failed: test failed"
        ))),
    }
}

/// RFC 6902 equality: numbers compare by value (`1` equals `1.0`), objects ignore order.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(p), Some(q)) if p == q)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(doc: Value, patch: Value) -> Result<Value, PatchError> {
        let mut d = doc;
        json_patch(&mut d, &patch).map(|_| d)
    }

    fn ok(doc: Value, patch: Value) -> Value {
        apply(doc, patch.clone()).unwrap_or_else(|e| panic!("{patch}: {e}"))
    }

    fn err(doc: Value, patch: Value) -> String {
        apply(doc, patch.clone())
            .expect_err(&patch.to_string())
            .to_string()
    }

    #[test]
    fn add_operations() {
        assert_eq!(
            ok(
                json!({"foo":"bar"}),
                json!([{"op":"add","path":"/baz","value":"qux"}])
            ),
            json!({"foo":"bar","baz":"qux"})
        );
        assert_eq!(
            ok(
                json!({"foo":["bar","baz"]}),
                json!([{"op":"add","path":"/foo/1","value":"qux"}])
            ),
            json!({"foo":["bar","qux","baz"]})
        );
        assert_eq!(
            ok(
                json!({"foo":["bar"]}),
                json!([{"op":"add","path":"/foo/-","value":"x"}])
            ),
            json!({"foo":["bar","x"]})
        );
        assert_eq!(
            ok(
                json!({"foo":["bar"]}),
                json!([{"op":"add","path":"/foo/1","value":"x"}])
            ),
            json!({"foo":["bar","x"]})
        );
        assert_eq!(
            ok(
                json!({"foo":1}),
                json!([{"op":"add","path":"/foo","value":2}])
            ),
            json!({"foo":2})
        );
        assert_eq!(
            ok(json!({"a":1}), json!([{"op":"add","path":"","value":[1]}])),
            json!([1])
        );
        assert_eq!(
            ok(
                json!({}),
                json!([{"op":"add","path":"/a~1b","value":1},{"op":"add","path":"/m~0n","value":2}])
            ),
            json!({"a/b":1,"m~n":2})
        );
        assert_eq!(
            ok(json!({}), json!([{"op":"add","path":"/","value":1}])),
            json!({"":1})
        );
        assert_eq!(
            ok(
                json!({"a":1}),
                json!([{"op":"add","path":"/n","value":null}])
            ),
            json!({"a":1,"n":null})
        );
        // Kubernetes-style: add a label whose key has a slash.
        assert_eq!(
            ok(
                json!({"metadata":{"labels":{}}}),
                json!([{"op":"add","path":"/metadata/labels/app.kubernetes.io~1name","value":"web"}])
            ),
            json!({"metadata":{"labels":{"app.kubernetes.io/name":"web"}}})
        );
    }

    #[test]
    fn remove_replace_move_copy() {
        assert_eq!(
            ok(json!({"a":1,"b":2}), json!([{"op":"remove","path":"/a"}])),
            json!({"b":2})
        );
        assert_eq!(
            ok(json!({"a":[1,2,3]}), json!([{"op":"remove","path":"/a/1"}])),
            json!({"a":[1,3]})
        );
        assert_eq!(
            ok(
                json!({"a":1}),
                json!([{"op":"replace","path":"/a","value":[2]}])
            ),
            json!({"a":[2]})
        );
        assert_eq!(
            ok(
                json!({"a":[1,2]}),
                json!([{"op":"replace","path":"/a/0","value":9}])
            ),
            json!({"a":[9,2]})
        );
        assert_eq!(
            ok(
                json!({"a":1}),
                json!([{"op":"replace","path":"","value":{"b":2}}])
            ),
            json!({"b":2})
        );
        assert_eq!(
            ok(
                json!({"a":{"b":1},"c":{}}),
                json!([{"op":"move","from":"/a/b","path":"/c/d"}])
            ),
            json!({"a":{},"c":{"d":1}})
        );
        assert_eq!(
            ok(
                json!({"a":[1,2,3]}),
                json!([{"op":"move","from":"/a/0","path":"/a/-"}])
            ),
            json!({"a":[2,3,1]})
        );
        assert_eq!(
            ok(
                json!({"a":1}),
                json!([{"op":"move","from":"/a","path":"/a"}])
            ),
            json!({"a":1})
        );
        assert_eq!(
            ok(
                json!({"a":{"b":[1]}}),
                json!([{"op":"copy","from":"/a/b","path":"/c"}])
            ),
            json!({"a":{"b":[1]},"c":[1]})
        );
        assert_eq!(
            ok(
                json!({"a":[1]}),
                json!([{"op":"copy","from":"/a/0","path":"/a/0"}])
            ),
            json!({"a":[1,1]})
        );
    }

    #[test]
    fn test_operation() {
        let doc = json!({"a":{"b":[1,"x",{"c":null}]},"n":1});
        for (path, value) in [
            ("/a/b/0", json!(1)),
            ("/a/b/0", json!(1.0)),
            ("/n", json!(1.0)),
            ("/a/b/1", json!("x")),
            ("/a/b/2", json!({"c":null})),
            ("", doc.clone()),
        ] {
            ok(
                doc.clone(),
                json!([{"op":"test","path":path,"value":value}]),
            );
        }
        assert_eq!(
            err(
                doc.clone(),
                json!([{"op":"test","path":"/a/b/1","value":"y"}])
            ),
            "testing value /a/b/1 failed: test failed"
        );
        assert_eq!(
            err(
                doc.clone(),
                json!([{"op":"test","path":"/missing","value":null}])
            ),
            "testing value /missing failed: test failed"
        );
        assert_eq!(
            err(doc, json!([{"op":"test","path":"/n","value":"1"}])),
            "testing value /n failed: test failed"
        );
    }

    #[test]
    fn errors_and_atomicity() {
        let doc = json!({"a":{"b":1},"l":[1,2]});
        let cases = [
            (json!([{"op":"add","path":"/x/y","value":1}]), "add operation does not apply: doc is missing path: \"/x/y\": missing value"),
            (json!([{"op":"add","path":"/l/5","value":1}]), "error in add for path: '/l/5': Unable to access invalid index: 5: invalid index referenced"),
            (json!([{"op":"add","path":"/l/01","value":1}]), "error in add for path: '/l/01': Unable to access invalid index: 01: invalid index referenced"),
            (json!([{"op":"add","path":"/l/-1","value":1}]), "error in add for path: '/l/-1': Unable to access invalid index: -1: invalid index referenced"),
            (json!([{"op":"add","path":"a","value":1}]), "add operation does not apply: doc is missing path: \"a\": missing value"),
            (json!([{"op":"add","path":"/a/b/c","value":1}]), "add operation does not apply: doc is missing path: \"/a/b/c\": missing value"),
            (json!([{"op":"remove","path":"/nope"}]), "error in remove for path: '/nope': Unable to remove nonexistent key: nope: missing value"),
            (json!([{"op":"remove","path":"/l/2"}]), "error in remove for path: '/l/2': Unable to access invalid index: 2: invalid index referenced"),
            (json!([{"op":"remove","path":"/x/y"}]), "remove operation does not apply: doc is missing path: \"/x/y\": missing value"),
            (json!([{"op":"replace","path":"/nope","value":1}]), "replace operation does not apply: doc is missing key: /nope: missing value"),
            (json!([{"op":"replace","path":"/x/y","value":1}]), "replace operation does not apply: doc is missing path: /x/y: missing value"),
            (json!([{"op":"move","from":"/nope","path":"/x"}]), "error in move for path: '/nope': Unable to remove nonexistent key: nope: missing value"),
            (json!([{"op":"move","from":"/a","path":"/a/c"}]), "move operation does not apply: cannot move /a into its own child /a/c"),
            (json!([{"op":"copy","from":"/nope","path":"/x"}]), "copy operation does not apply: doc is missing from path: /nope: missing value"),
            (json!([{"op":"copy","from":"/a","path":"/x/y"}]), "copy operation does not apply: doc is missing destination path: /x/y: missing value"),
            (json!([{"op":"frob","path":"/a"}]), "Unexpected kind: frob"),
            (json!([{"path":"/a"}]), "Unexpected kind: unknown"),
            (json!([{"op":"add","value":1}]), "add operation failed to decode path: missing value"),
            (json!([{"op":"add","path":"/z"}]), "add operation, missing value field: missing value"),
            (json!([{"op":"move","path":"/z"}]), "move operation failed to decode from: missing value"),
        ];
        for (patch, want) in cases {
            assert_eq!(err(doc.clone(), patch.clone()), want, "{patch}");
        }
        // A failing later op leaves the document untouched.
        let mut d = doc.clone();
        let e = json_patch(
            &mut d,
            &json!([{"op":"add","path":"/new","value":1},{"op":"remove","path":"/nope"}]),
        );
        assert!(e.is_err());
        assert_eq!(d, doc);
    }

    #[test]
    fn malformed_patch_is_bad_request() {
        let mut d = json!({});
        let e = json_patch(&mut d, &json!({"op":"add"})).unwrap_err();
        assert_eq!(e.status_code(), 400);
        assert_eq!(
            e.to_string(),
            "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
        );
        let e = json_patch(&mut d, &json!(["x"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "json: cannot unmarshal string into Go value of type jsonpatch.Operation"
        );
        let e = json_patch(&mut d, &json!([{"op":"remove","path":"/x"}])).unwrap_err();
        assert_eq!(e.status_code(), 422);
        // An empty patch is a no-op.
        json_patch(&mut d, &json!([])).unwrap();
        assert_eq!(d, json!({}));
    }
}
