//! Kubernetes strategic merge patch, ported from k8s.io/apimachinery/pkg/util/strategicpatch
//! (`StrategicMergeMapPatch`, the server side of `kubectl apply`/`edit`/`patch`/`set image`).
//!
//! Maps merge recursively and `null` deletes; lists merge by `patchMergeKey` when the field's
//! `patchStrategy` is `merge` and are replaced otherwise; the directives `$patch`
//! (`replace`/`delete`/`merge`), `$setElementOrder/<f>`, `$deleteFromPrimitiveList/<f>` and
//! `$retainKeys` are honoured and never appear in the result. Fields the schema does not know
//! (custom resources, unknown root types) get JSON-merge-patch semantics, which is what
//! Kubernetes' strategic merge degenerates to without metadata.
//!
//! List order follows Kubernetes, including where patch items land relative to live-only
//! items (checked against the strategicpatch package's own test vectors: all agree except
//! the map-delete case below). Deliberate
//! differences: `{"$patch": "delete"}` on a map field removes the field (Kubernetes leaves
//! `{}`); fields missing from the schema merge like JSON merge patch instead of failing with
//! "unable to find api field"; values copied from the patch (new fields, replaced lists)
//! have nulls dropped and nested directives applied rather than being stored raw.

mod gofmt;
mod lists;
#[cfg(test)]
mod tests;

use serde_json::{Map, Value};

use self::gofmt::{bad_arg_type, go_fmt, go_fmt_map, no_merge_key, SLICE_TYPE};
use self::lists::{
    delete_scalars, element_kind, go_aliased_view, normalize_element_order, partition_maps,
    partition_scalars, union_scalars, validate_set_order, Kind, ListTrace,
};
use super::meta::PatchSchema;
use super::PatchError;

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER_PREFIX: &str = "$setElementOrder";
const DELETE_PRIMITIVE_PREFIX: &str = "$deleteFromPrimitiveList";

/// Applies a strategic merge patch to `original`, typed as `root_type` (an OpenAPI name such as
/// `io.k8s.api.apps.v1.Deployment`, see [`super::BuiltinSchema`]). A `root_type` the schema does
/// not know gets merge-patch semantics (plus directive handling). `null` or absent originals
/// count as `{}`; the patch must be an object.
pub fn strategic_merge_patch(
    original: &Value,
    patch: &Value,
    schema: &dyn PatchSchema,
    root_type: &str,
) -> Result<Value, PatchError> {
    let bad_doc = || PatchError::BadRequest("invalid JSON document".to_string());
    let patch = patch.as_object().ok_or_else(bad_doc)?.clone();
    let original = match original {
        Value::Object(o) => o.clone(),
        Value::Null => Map::new(),
        _ => return Err(bad_doc()),
    };
    let node = if schema.has_type(root_type) {
        Node::Struct(root_type)
    } else {
        Node::Unknown
    };
    let merger = Merger { schema };
    Ok(Value::Object(
        match merger.merge_map(original, patch, node)? {
            Merged::Keep(m) => m,
            // `{"$patch": "delete"}` at the top empties the object, as in Kubernetes.
            Merged::Delete => Map::new(),
        },
    ))
}

/// Where in the schema a value sits.
#[derive(Debug, Clone, Copy)]
enum Node<'a> {
    /// A struct type with field metadata.
    Struct(&'a str),
    /// A `map[string]T` whose values are struct `T`.
    MapOf(&'a str),
    /// No metadata: plain merge semantics.
    Unknown,
}

/// What a field lookup yields: the child node plus its strategy (without `retainKeys`, which
/// only matters to patch producers) and merge key.
struct Lookup<'a> {
    node: Node<'a>,
    strategy: &'a str,
    key: &'a str,
}

enum Merged {
    Keep(Map<String, Value>),
    Delete,
}

struct Merger<'a> {
    schema: &'a dyn PatchSchema,
}

/// `extractRetainKeysPatchStrategy`: at most one strategy besides `retainKeys`.
fn main_strategy(strategies: Vec<&str>) -> Result<&str, PatchError> {
    match strategies.as_slice() {
        [] => Ok(""),
        ["retainKeys"] => Ok(""),
        [s] => Ok(s),
        ["retainKeys", s] | [s, "retainKeys"] => Ok(s),
        _ => Err(PatchError::Internal(format!(
            "unexpected patch strategy: [{}]",
            strategies.join(" ")
        ))),
    }
}

/// `extractKey`: the field name after `<prefix>/`.
fn extract_key(s: &str, prefix: &str) -> Result<String, PatchError> {
    match s.split_once('/') {
        Some((p, rest)) if p == prefix => Ok(rest.to_string()),
        _ if prefix == DELETE_PRIMITIVE_PREFIX => Err(PatchError::BadRequest(
            "invalid patch format of primitive list".to_string(),
        )),
        _ => Err(PatchError::BadRequest(
            "invalid patch format of setElementOrder list".to_string(),
        )),
    }
}

impl<'a> Merger<'a> {
    /// Metadata of `field` under `node`; `slice` picks the element type of list fields.
    fn lookup(&self, node: Node<'a>, field: &str, slice: bool) -> Result<Lookup<'a>, PatchError> {
        let unknown = Lookup {
            node: Node::Unknown,
            strategy: "",
            key: "",
        };
        match node {
            Node::Unknown => Ok(unknown),
            Node::MapOf(t) if !slice => Ok(Lookup {
                node: Node::Struct(t),
                ..unknown
            }),
            Node::MapOf(_) => Ok(unknown),
            Node::Struct(t) => {
                let Some(meta) = self.schema.field(t, field) else {
                    return Ok(unknown);
                };
                let child = match (meta.type_name.as_deref(), meta.map, meta.list) {
                    (Some(tn), true, _) if !slice => Node::MapOf(tn),
                    // A struct field may also carry a list of that struct (Go
                    // LookupPatchMetadataForSlice dereferences pointers).
                    (Some(tn), false, _) if slice => Node::Struct(tn),
                    (Some(tn), false, false) if !slice => Node::Struct(tn),
                    _ => Node::Unknown,
                };
                Ok(Lookup {
                    node: child,
                    strategy: main_strategy(meta.strategies().collect())?,
                    key: meta.key.as_deref().unwrap_or(""),
                })
            }
        }
    }

    /// `mergeMap`.
    fn merge_map(
        &self,
        mut original: Map<String, Value>,
        mut patch: Map<String, Value>,
        node: Node<'a>,
    ) -> Result<Merged, PatchError> {
        if let Some(directive) = patch.get(DIRECTIVE) {
            match directive.as_str() {
                Some("replace") => {
                    patch.shift_remove(DIRECTIVE);
                    return self.merge_map(Map::new(), patch, node);
                }
                Some("delete") => return Ok(Merged::Delete),
                _ => {
                    return Err(PatchError::Internal(format!(
                        "unknown patch type: {} in map: {}",
                        go_fmt(directive),
                        go_fmt_map(&patch)
                    )))
                }
            }
        }
        apply_retain_keys(&mut original, &mut patch)?;
        self.apply_set_element_order(&mut original, &mut patch, node)?;

        for (k, patch_v) in patch {
            let (k, delete_list) = if k.starts_with(DELETE_PRIMITIVE_PREFIX) {
                (extract_key(&k, DELETE_PRIMITIVE_PREFIX)?, true)
            } else {
                (k, false)
            };
            if patch_v.is_null() {
                original.shift_remove(&k);
                continue;
            }
            // Take the live value out, leaving a placeholder so the key keeps its position.
            let Some(orig_v) = original.get_mut(&k).map(std::mem::take) else {
                if !delete_list {
                    if let Some(v) = self.materialize_field(node, &k, patch_v)? {
                        original.insert(k, v);
                    }
                }
                continue;
            };
            let merged = match (orig_v, patch_v) {
                (Value::Object(o), Value::Object(p)) => {
                    let lk = self.lookup(node, &k, false)?;
                    let merged = if lk.strategy == "replace" {
                        self.merge_map(Map::new(), p, lk.node)?
                    } else {
                        self.merge_map(o, p, lk.node)?
                    };
                    match merged {
                        Merged::Keep(m) => Some(Value::Object(m)),
                        Merged::Delete => None,
                    }
                }
                (Value::Array(o), Value::Array(p)) => {
                    let lk = self.lookup(node, &k, true)?;
                    Some(Value::Array(self.merge_list_field(
                        o,
                        p,
                        &lk,
                        delete_list,
                        &mut ListTrace::default(),
                    )?))
                }
                // A deletion list only ever removes from a live list.
                (orig_v, _) if delete_list => Some(orig_v),
                // Scalars, or a value whose JSON type changed: the patch value wins.
                (_, p) => self.materialize_field(node, &k, p)?,
            };
            match merged {
                Some(v) => {
                    original.insert(k, v);
                }
                None => {
                    original.shift_remove(&k);
                }
            }
        }
        Ok(Merged::Keep(original))
    }

    /// `mergeSliceHandler`: merge by strategy (deletion lists always merge), else replace.
    fn merge_list_field(
        &self,
        o: Vec<Value>,
        p: Vec<Value>,
        lk: &Lookup<'a>,
        delete_list: bool,
        trace: &mut ListTrace,
    ) -> Result<Vec<Value>, PatchError> {
        if lk.strategy == "merge" || delete_list {
            self.merge_list(o, p, lk, delete_list, trace)
        } else {
            self.materialize_list(p, lk.node)
        }
    }

    /// `mergeSlice`.
    fn merge_list(
        &self,
        original: Vec<Value>,
        patch: Vec<Value>,
        lk: &Lookup<'a>,
        delete_list: bool,
        trace: &mut ListTrace,
    ) -> Result<Vec<Value>, PatchError> {
        if original.is_empty() && patch.is_empty() {
            return Ok(original);
        }
        let kind = element_kind(&[&original, &patch])?;
        let key = lk.key;
        let (merged, order, live) = if kind == Kind::Scalar {
            if delete_list {
                return Ok(delete_scalars(original, &patch));
            }
            (union_scalars(original.clone(), &patch), patch, original)
        } else {
            if key.is_empty() {
                let name = match lk.node {
                    Node::Struct(t) => t,
                    _ => "unknown type",
                };
                return Err(PatchError::Internal(format!(
                    "cannot merge lists without merge key for {name}"
                )));
            }
            let (live, patch) = self.apply_list_directives(original, patch, key, lk.node, trace)?;
            let merged = self.merge_by_key(live.clone(), &patch, key, lk.node, trace)?;
            (merged, patch, live)
        };
        let (patched, server_only) = if key.is_empty() {
            partition_scalars(merged, &order)
        } else {
            partition_maps(merged, &order, key)?
        };
        normalize_element_order(patched, server_only, &order, &live, key, kind)
    }

    /// `mergeSliceWithSpecialElements`: applies `$patch: delete` items to the live list and
    /// `{"$patch": "replace"}` (the patch items become the list); returns (live, plain patch).
    fn apply_list_directives(
        &self,
        mut live: Vec<Value>,
        patch: Vec<Value>,
        key: &str,
        elem: Node<'a>,
        trace: &mut ListTrace,
    ) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
        let mut plain = Vec::with_capacity(patch.len());
        let mut replace = false;
        for v in patch {
            let m = v
                .as_object()
                .ok_or_else(|| bad_arg_type(gofmt::MAP_TYPE, &v))?;
            let Some(directive) = m.get(DIRECTIVE) else {
                plain.push(v);
                continue;
            };
            match directive.as_str() {
                Some("delete") => {
                    let kv = m.get(key).ok_or_else(|| no_merge_key(m, key))?;
                    for (i, item) in live.iter().enumerate() {
                        if !item.is_object() {
                            return Err(PatchError::Internal(format!(
                                "value for key {i} is not a map"
                            )));
                        }
                    }
                    // One match at a time, like Go's deleteMatchingEntries; the trace
                    // records each in-place removal.
                    while let Some(i) = live.iter().position(|item| item.get(key) == Some(kv)) {
                        live.remove(i);
                        trace.deleted.push(i);
                    }
                }
                Some("replace") => replace = true,
                Some("merge") => {
                    return Err(PatchError::Internal(
                        "merging lists cannot yet be specified in the patch".to_string(),
                    ))
                }
                _ => {
                    return Err(PatchError::Internal(format!(
                        "unknown patch type: {} in map: {}",
                        go_fmt(directive),
                        go_fmt_map(m)
                    )))
                }
            }
        }
        if replace {
            trace.replaced = true;
            return Ok((self.materialize_list(plain, elem)?, Vec::new()));
        }
        Ok((live, plain))
    }

    /// `mergeSliceWithoutSpecialElements`: patch items merge into the live item with the same
    /// merge key, or are appended.
    fn merge_by_key(
        &self,
        mut live: Vec<Value>,
        patch: &[Value],
        key: &str,
        elem: Node<'a>,
        trace: &mut ListTrace,
    ) -> Result<Vec<Value>, PatchError> {
        for v in patch {
            let m = v
                .as_object()
                .ok_or_else(|| bad_arg_type(gofmt::MAP_TYPE, v))?;
            let kv = m.get(key).ok_or_else(|| no_merge_key(m, key))?;
            let mut found = None;
            for (i, item) in live.iter().enumerate() {
                let im = item.as_object().ok_or_else(|| {
                    PatchError::Internal(format!("value for key {i} is not a map"))
                })?;
                if im.get(key) == Some(kv) {
                    found = Some(i);
                    break;
                }
            }
            match found {
                Some(i) => {
                    let Value::Object(o) = std::mem::take(&mut live[i]) else {
                        unreachable!("checked above")
                    };
                    match self.merge_map(o, m.clone(), elem)? {
                        Merged::Keep(merged) => live[i] = Value::Object(merged),
                        Merged::Delete => {
                            live.remove(i);
                        }
                    }
                }
                None => {
                    if let Merged::Keep(new) = self.merge_map(Map::new(), m.clone(), elem)? {
                        trace.appended.push(Value::Object(new.clone()));
                        live.push(Value::Object(new));
                    }
                }
            }
        }
        Ok(live)
    }

    /// `mergePatchIntoOriginal`: merges each list named by a `$setElementOrder/<f>` directive
    /// and orders it: directive order for listed items, live order for the others.
    fn apply_set_element_order(
        &self,
        original: &mut Map<String, Value>,
        patch: &mut Map<String, Value>,
        node: Node<'a>,
    ) -> Result<(), PatchError> {
        let keys: Vec<String> = patch
            .keys()
            .filter(|k| k.starts_with(SET_ORDER_PREFIX))
            .cloned()
            .collect();
        for directive_key in keys {
            let order_v = patch
                .shift_remove(&directive_key)
                .expect("key listed above");
            let Value::Array(order) = order_v else {
                return Err(bad_arg_type(SLICE_TYPE, &order_v));
            };
            let field = extract_key(&directive_key, SET_ORDER_PREFIX)?;
            let as_list = |v: Option<&Value>| -> Result<Option<Vec<Value>>, PatchError> {
                match v {
                    None => Ok(None),
                    Some(Value::Array(a)) => Ok(Some(a.clone())),
                    Some(other) => Err(bad_arg_type(SLICE_TYPE, other)),
                }
            };
            let live = as_list(original.get(&field))?;
            let patch_list = as_list(patch.get(&field))?;
            let lk = self.lookup(node, &field, true)?;
            validate_set_order(patch_list.as_deref().unwrap_or(&[]), &order, lk.key)?;
            let mut trace = ListTrace::default();
            let merged = match (live.clone(), patch_list.clone()) {
                (Some(o), None) => o,
                (None, Some(p)) => self.materialize_list(p, lk.node)?,
                (Some(o), Some(p)) => self.merge_list_field(o, p, &lk, false, &mut trace)?,
                (None, None) => continue,
            };
            let live = go_aliased_view(live.unwrap_or_default(), &trace);
            let ordered = if merged.is_empty() {
                merged
            } else {
                let kind = element_kind(&[&live, patch_list.as_deref().unwrap_or(&[])])?;
                let (listed, others) = if lk.key.is_empty() {
                    partition_scalars(merged, &order)
                } else {
                    partition_maps(merged, &order, lk.key)?
                };
                normalize_element_order(listed, others, &order, &live, lk.key, kind)?
            };
            original.insert(field.clone(), Value::Array(ordered));
            patch.shift_remove(&field);
        }
        Ok(())
    }

    /// A patch value with nothing live to merge into (a new field, a replaced value): nulls
    /// dropped, directives applied against nothing and removed. `None` means "no value".
    fn materialize_field(
        &self,
        parent: Node<'a>,
        key: &str,
        v: Value,
    ) -> Result<Option<Value>, PatchError> {
        Ok(match v {
            Value::Null => None,
            Value::Object(m) => {
                let lk = self.lookup(parent, key, false)?;
                match self.merge_map(Map::new(), m, lk.node)? {
                    Merged::Keep(m) => Some(Value::Object(m)),
                    Merged::Delete => None,
                }
            }
            Value::Array(items) => {
                let lk = self.lookup(parent, key, true)?;
                Some(Value::Array(self.materialize_list(items, lk.node)?))
            }
            scalar => Some(scalar),
        })
    }

    /// A list taken from the patch as is: items carrying `$patch` are dropped (as
    /// `removeDirectives` does) and object items are materialized.
    fn materialize_list(
        &self,
        items: Vec<Value>,
        elem: Node<'a>,
    ) -> Result<Vec<Value>, PatchError> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::Object(m) if m.contains_key(DIRECTIVE) => {}
                Value::Object(m) => {
                    if let Merged::Keep(m) = self.merge_map(Map::new(), m, elem)? {
                        out.push(Value::Object(m));
                    }
                }
                Value::Array(inner) => {
                    out.push(Value::Array(self.materialize_list(inner, Node::Unknown)?))
                }
                other => out.push(other),
            }
        }
        Ok(out)
    }
}

/// `applyRetainKeysDirective`: drops live keys not listed in `$retainKeys`; every key the
/// patch sets must be listed.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<(), PatchError> {
    let Some(retain) = patch.shift_remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let bad = || PatchError::BadRequest("invalid patch format of retainKeys".to_string());
    let Value::Array(list) = retain else {
        return Err(bad());
    };
    let listed = |k: &str| list.iter().any(|v| v.as_str() == Some(k));
    for (k, v) in patch.iter() {
        if v.is_null() || k.starts_with(DELETE_PRIMITIVE_PREFIX) || k.starts_with(SET_ORDER_PREFIX)
        {
            continue;
        }
        if !listed(k) {
            return Err(bad());
        }
    }
    original.retain(|k, _| listed(k));
    Ok(())
}
