//! A structural OpenAPI v3 schema walker: type checks, unknown-field detection and pruning,
//! defaults, and the value constraints CRDs declare (required, enum, bounds, pattern,
//! format, items). Built-in kinds use it only for unknown fields (their types are checked
//! by decoding into the typed structs); custom resources use all of it.

use crate::error::Cause;
use serde_json::{Map, Value};

/// Where `$ref`s point: the `components.schemas` map of an OpenAPI document.
pub struct Defs<'a>(pub Option<&'a Map<String, Value>>);

impl<'a> Defs<'a> {
    fn resolve(&self, mut s: &'a Value) -> &'a Value {
        for _ in 0..16 {
            if let Some(r) = s.get("$ref").and_then(Value::as_str) {
                let name = r.rsplit('/').next().unwrap_or(r);
                match self.0.and_then(|d| d.get(name)) {
                    Some(t) => s = t,
                    None => return s,
                }
            } else if let Some(first) = s
                .get("allOf")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .filter(|f| f.get("$ref").is_some())
            {
                // k8s-openapi wraps a described `$ref` as `allOf: [{$ref}]`. Any other allOf
                // (a CRD's) holds value validations beside the schema's own properties.
                s = first;
            } else {
                return s;
            }
        }
        s
    }
}

#[derive(Default)]
pub struct Findings {
    pub unknown: Vec<String>,
    pub causes: Vec<Cause>,
}

pub struct Options {
    /// Check types and value constraints (custom resources); built-ins leave this to serde.
    pub check_values: bool,
    /// Remove unknown fields while walking.
    pub prune: bool,
    /// Fill in `default`s.
    pub defaults: bool,
}

pub fn walk(value: &mut Value, schema: &Value, defs: &Defs, opts: &Options) -> Findings {
    let mut f = Findings::default();
    walk_inner(value, schema, defs, opts, "", &mut f);
    f
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn walk_inner(
    value: &mut Value,
    schema: &Value,
    defs: &Defs,
    opts: &Options,
    path: &str,
    f: &mut Findings,
) {
    let schema = defs.resolve(schema);
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let nullable = schema
        .get("nullable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if value.is_null() {
        if opts.check_values && !nullable && schema.get("type").is_some() && !path.is_empty() {
            // Kubernetes drops nulls for non-nullable fields rather than failing.
        }
        return;
    }
    if opts.check_values {
        if int_or_string {
            if !(value.is_string() || value.is_i64() || value.is_u64()) {
                f.causes.push(Cause::invalid(
                    path,
                    value,
                    "must be an integer or a string",
                ));
                return;
            }
        } else if let Some(t) = schema.get("type").and_then(Value::as_str) {
            let actual = type_name(value);
            let ok = actual == t || (t == "number" && actual == "integer");
            if !ok {
                f.causes.push(Cause {
                    reason: "FieldValueTypeInvalid",
                    message: format!("Invalid value: \"{actual}\": {path} in body must be of type {t}: \"{actual}\""),
                    field: path.to_string(),
                });
                return;
            }
        }
        constraints(value, schema, path, f);
        composition(value, schema, defs, path, f);
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            if opts.defaults {
                if let Some(props) = props {
                    for (k, ps) in props {
                        if map.contains_key(k) {
                            continue;
                        }
                        if let Some(d) = defs.resolve(ps).get("default") {
                            map.insert(k.clone(), d.clone());
                        }
                    }
                }
            }
            if opts.check_values {
                if let Some(req) = schema.get("required").and_then(Value::as_array) {
                    for r in req.iter().filter_map(Value::as_str) {
                        // The caller holds these aside at the root and checks them itself
                        // (Argo CD's Application requires `metadata`).
                        if path.is_empty() && matches!(r, "apiVersion" | "kind" | "metadata") {
                            continue;
                        }
                        if !map.contains_key(r) || map[r].is_null() {
                            f.causes.push(Cause::required(join(path, r)));
                        }
                    }
                }
            }
            let mut drop = Vec::new();
            for (k, v) in map.iter_mut() {
                let child = join(path, k);
                if let Some(ps) = props.and_then(|p| p.get(k)) {
                    walk_inner(v, ps, defs, opts, &child, f);
                } else if let Some(a) = additional.filter(|a| a.is_object()) {
                    walk_inner(v, a, defs, opts, &child, f);
                } else if additional == Some(&Value::Bool(true)) || preserve {
                    // Any content is allowed here.
                } else if props.is_some()
                    || schema.get("type").and_then(Value::as_str) == Some("object")
                {
                    f.unknown.push(child);
                    drop.push(k.clone());
                }
            }
            if opts.prune {
                for k in drop {
                    map.remove(&k);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for (i, v) in items.iter_mut().enumerate() {
                    walk_inner(v, is, defs, opts, &format!("{path}[{i}]"), f);
                }
            }
        }
        _ => {}
    }
}

/// Whether `value` satisfies `schema`'s value validations (no pruning, defaults or
/// unknown-field findings: a branch of oneOf/anyOf/not names only the fields it is about).
fn satisfies(value: &Value, schema: &Value, defs: &Defs, path: &str) -> bool {
    let mut v = value.clone();
    let mut f = Findings::default();
    let opts = Options {
        check_values: true,
        prune: false,
        defaults: false,
    };
    walk_inner(&mut v, schema, defs, &opts, path, &mut f);
    f.causes.is_empty()
}

/// allOf, oneOf, anyOf and not: in a structural schema they carry value validations only
/// (Istio says with them that a load balancer is `simple` or `consistentHash`, not both).
fn composition(value: &Value, schema: &Value, defs: &Defs, path: &str, f: &mut Findings) {
    let shown = Value::String(type_name(value).to_string());
    let branches = |key: &str| schema.get(key).and_then(Value::as_array);
    if let Some(all) = branches("allOf") {
        for s in all.iter().filter(|s| s.get("$ref").is_none()) {
            if !satisfies(value, s, defs, path) {
                f.causes.push(Cause::invalid(
                    path,
                    &shown,
                    format!("{path} in body must validate all the schemas (allOf)"),
                ));
                break;
            }
        }
    }
    if let Some(one) = branches("oneOf") {
        let n = one
            .iter()
            .filter(|s| satisfies(value, s, defs, path))
            .count();
        if n != 1 {
            f.causes.push(Cause::invalid(
                path,
                &shown,
                format!("{path} in body must validate one and only one schema (oneOf)"),
            ));
        }
    }
    if let Some(any) = branches("anyOf") {
        if !any.iter().any(|s| satisfies(value, s, defs, path)) {
            f.causes.push(Cause::invalid(
                path,
                &shown,
                format!("{path} in body must validate at least one schema (anyOf)"),
            ));
        }
    }
    if let Some(not) = schema.get("not") {
        if satisfies(value, not, defs, path) {
            f.causes.push(Cause::invalid(
                path,
                &shown,
                format!("{path} in body must not validate the schema (not)"),
            ));
        }
    }
}

fn constraints(value: &Value, schema: &Value, path: &str, f: &mut Findings) {
    if let Some(en) = schema.get("enum").and_then(Value::as_array) {
        if !en.contains(value) {
            let allowed: Vec<String> = en.iter().map(|e| e.to_string()).collect();
            f.causes.push(Cause {
                reason: "FieldValueNotSupported",
                message: format!(
                    "Unsupported value: {value}: supported values: {}",
                    allowed.join(", ")
                ),
                field: path.to_string(),
            });
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            let excl = schema["exclusiveMinimum"].as_bool().unwrap_or(false);
            if n < min || (excl && n == min) {
                let word = if excl {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                f.causes.push(Cause::invalid(
                    path,
                    value,
                    format!("{path} in body should be {word} {min}"),
                ));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            let excl = schema["exclusiveMaximum"].as_bool().unwrap_or(false);
            if n > max || (excl && n == max) {
                let word = if excl {
                    "less than"
                } else {
                    "less than or equal to"
                };
                f.causes.push(Cause::invalid(
                    path,
                    value,
                    format!("{path} in body should be {word} {max}"),
                ));
            }
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(m) = schema.get("minLength").and_then(Value::as_u64) {
            if len < m {
                f.causes.push(Cause::invalid(
                    path,
                    value,
                    format!("{path} in body should be at least {m} chars long"),
                ));
            }
        }
        if let Some(m) = schema.get("maxLength").and_then(Value::as_u64) {
            if len > m {
                f.causes.push(Cause::too_long(path, m as usize));
            }
        }
        if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
            match regex_lite::Regex::new(p) {
                Ok(re) if !re.is_match(s) => f.causes.push(Cause::invalid(
                    path,
                    value,
                    format!("{path} in body should match '{p}'"),
                )),
                _ => {}
            }
        }
        if let Some(fmt) = schema.get("format").and_then(Value::as_str) {
            if !format_ok(fmt, s) {
                f.causes.push(Cause::invalid(
                    path,
                    value,
                    format!("{path} in body must be of type {fmt}: {s:?}"),
                ));
            }
        }
    }
    if let Some(a) = value.as_array() {
        if let Some(m) = schema.get("minItems").and_then(Value::as_u64) {
            if (a.len() as u64) < m {
                f.causes.push(Cause::invalid(
                    path,
                    value,
                    format!("{path} in body should have at least {m} items"),
                ));
            }
        }
        if let Some(m) = schema.get("maxItems").and_then(Value::as_u64) {
            if (a.len() as u64) > m {
                f.causes.push(Cause {
                    reason: "FieldValueTooMany",
                    message: format!("Too many: {}: must have at most {m} items", a.len()),
                    field: path.to_string(),
                });
            }
        }
    }
    if let Some(o) = value.as_object() {
        if let Some(m) = schema.get("maxProperties").and_then(Value::as_u64) {
            if (o.len() as u64) > m {
                f.causes.push(Cause {
                    reason: "FieldValueTooMany",
                    message: format!("Too many: {}: must have at most {m} items", o.len()),
                    field: path.to_string(),
                });
            }
        }
    }
}

fn format_ok(fmt: &str, s: &str) -> bool {
    match fmt {
        "date-time" | "datetime" => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        "date" => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok(),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "uuid" => uuid::Uuid::parse_str(s).is_ok(),
        "byte" => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(mut v: Value, schema: &Value) -> Findings {
        let opts = Options {
            check_values: true,
            prune: true,
            defaults: true,
        };
        walk(&mut v, schema, &Defs(None), &opts)
    }

    fn fields(f: &Findings) -> Vec<(&str, &str)> {
        f.causes
            .iter()
            .map(|c| (c.field.as_str(), c.message.as_str()))
            .collect()
    }

    /// Istio's DestinationRule load balancer, as its CRD declares it.
    fn load_balancer() -> Value {
        json!({"type": "object", "properties": {"lb": {
            "type": "object",
            "oneOf": [
                {"not": {"anyOf": [{"required": ["simple"]}, {"required": ["consistentHash"]}]}},
                {"required": ["simple"]},
                {"required": ["consistentHash"]}
            ],
            "properties": {
                "simple": {"type": "string", "enum": ["ROUND_ROBIN", "LEAST_REQUEST"]},
                "consistentHash": {
                    "type": "object",
                    "allOf": [{"oneOf": [
                        {"not": {"anyOf": [{"required": ["httpHeaderName"]}, {"required": ["useSourceIp"]}]}},
                        {"required": ["httpHeaderName"]},
                        {"required": ["useSourceIp"]}
                    ]}],
                    "properties": {
                        "httpHeaderName": {"type": "string"},
                        "useSourceIp": {"type": "boolean"},
                        "minimumRingSize": {"type": "integer", "default": 1024}
                    }
                }
            }
        }}})
    }

    #[test]
    fn one_of_allows_exactly_one_branch() {
        let s = load_balancer();
        assert!(check(json!({"lb": {}}), &s).causes.is_empty());
        assert!(check(json!({"lb": {"simple": "ROUND_ROBIN"}}), &s)
            .causes
            .is_empty());
        let f = check(
            json!({"lb": {"simple": "ROUND_ROBIN", "consistentHash": {"useSourceIp": true}}}),
            &s,
        );
        assert_eq!(
            fields(&f),
            vec![(
                "lb",
                "Invalid value: \"object\": lb in body must validate one and only one schema (oneOf)"
            )]
        );
    }

    #[test]
    fn all_of_beside_properties_keeps_the_properties() {
        let s = load_balancer();
        // Before, the walker replaced the schema by allOf[0] and saw no properties here:
        // no type check, no default, no unknown field.
        let mut v = json!({"lb": {"consistentHash": {"httpHeaderName": "x-user", "extra": 1}}});
        let opts = Options {
            check_values: true,
            prune: true,
            defaults: true,
        };
        let f = walk(&mut v, &s, &Defs(None), &opts);
        assert!(f.causes.is_empty(), "{:?}", fields(&f));
        assert_eq!(f.unknown, vec!["lb.consistentHash.extra"]);
        assert_eq!(
            v,
            json!({"lb": {"consistentHash": {"httpHeaderName": "x-user", "minimumRingSize": 1024}}})
        );
        let f = check(json!({"lb": {"consistentHash": {"httpHeaderName": 7}}}), &s);
        assert!(fields(&f)
            .iter()
            .any(|(p, m)| *p == "lb.consistentHash.httpHeaderName" && m.contains("string")));
        let f = check(
            json!({"lb": {"consistentHash": {"httpHeaderName": "a", "useSourceIp": true}}}),
            &s,
        );
        assert!(fields(&f)
            .iter()
            .any(|(p, m)| *p == "lb.consistentHash" && m.contains("allOf")));
    }

    #[test]
    fn any_of_and_not() {
        let s = json!({"type": "object", "properties": {"x": {
            "type": "object",
            "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
            "not": {"required": ["c"]},
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}, "c": {"type": "string"}}
        }}});
        assert!(check(json!({"x": {"a": "1"}}), &s).causes.is_empty());
        let f = check(json!({"x": {}}), &s);
        assert!(f.causes[0].message.contains("at least one schema (anyOf)"));
        let f = check(json!({"x": {"b": "1", "c": "2"}}), &s);
        assert_eq!(f.causes.len(), 1);
        assert!(f.causes[0]
            .message
            .contains("must not validate the schema (not)"));
    }

    #[test]
    fn root_required_metadata_is_left_to_the_caller() {
        // Argo CD's Application: `required: [metadata, spec]` at the root, while the caller
        // walks the object with apiVersion, kind and metadata held aside.
        let s = json!({"type": "object", "required": ["metadata", "spec"], "properties": {
            "metadata": {"type": "object"},
            "spec": {"type": "object", "required": ["project"], "properties": {"project": {"type": "string"}}}
        }});
        assert!(check(json!({"spec": {"project": "default"}}), &s)
            .causes
            .is_empty());
        let f = check(json!({}), &s);
        assert_eq!(f.causes.len(), 1);
        assert_eq!(f.causes[0].field, "spec");
        let f = check(json!({"spec": {}}), &s);
        assert_eq!(f.causes[0].field, "spec.project");
    }
}
