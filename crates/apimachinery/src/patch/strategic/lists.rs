//! List helpers of the strategic merge: element-kind checks, partitioning by presence in a
//! patch, and the order normalisation of k8s.io/apimachinery's strategicpatch (patch order
//! for patched items, live order for server-only items, interleaved by live order), which
//! decides where kubectl's changed or added list items end up.

use serde_json::Value;

use super::gofmt::{bad_arg_type, go_fmt, no_merge_key, MAP_TYPE};
use super::DIRECTIVE;
use crate::patch::PatchError;

/// Whether list elements are objects (merged by key) or scalars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Map,
    Scalar,
}

fn same_json_type(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// `sliceElementType`: all elements of the lists must share one JSON type, and not be lists.
pub(super) fn element_kind(lists: &[&[Value]]) -> Result<Kind, PatchError> {
    let mut first: Option<&Value> = None;
    for v in lists.iter().flat_map(|l| l.iter()).filter(|v| !v.is_null()) {
        match first {
            None => {
                if v.is_array() {
                    return Err(PatchError::Unprocessable(
                        "lists of lists are not supported".to_string(),
                    ));
                }
                first = Some(v);
            }
            Some(f) if !same_json_type(f, v) => {
                let all: Vec<String> = lists
                    .iter()
                    .map(|l| go_fmt(&Value::Array(l.to_vec())))
                    .collect();
                return Err(PatchError::Internal(format!(
                    "list element types are not identical: [{}]",
                    all.join(" ")
                )));
            }
            Some(_) => {}
        }
    }
    Ok(if first.is_some_and(Value::is_object) {
        Kind::Map
    } else {
        Kind::Scalar
    })
}

/// The merge-key value of a map item (scalar lists compare the items themselves).
fn key_of<'a>(item: &'a Value, key: &str, kind: Kind) -> Option<&'a Value> {
    match kind {
        Kind::Map => item.as_object().and_then(|m| m.get(key)),
        Kind::Scalar => Some(item),
    }
}

/// `index`: position of `val` in `list`, comparing merge keys for maps.
pub(super) fn index_of(list: &[Value], val: &Value, key: &str, kind: Kind) -> Option<usize> {
    let want = key_of(val, key, kind);
    list.iter().position(|v| key_of(v, key, kind) == want)
}

/// Splits scalars into those present in `by` and the rest, keeping order.
pub(super) fn partition_scalars(merged: Vec<Value>, by: &[Value]) -> (Vec<Value>, Vec<Value>) {
    merged.into_iter().partition(|v| by.contains(v))
}

/// Splits maps into those whose merge key appears in `by` and the rest, keeping order.
pub(super) fn partition_maps(
    merged: Vec<Value>,
    by: &[Value],
    key: &str,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut inside = Vec::new();
    let mut outside = Vec::new();
    for v in merged {
        let m = v.as_object().ok_or_else(|| bad_arg_type(MAP_TYPE, &v))?;
        let kv = m.get(key).ok_or_else(|| no_merge_key(m, key))?;
        let mut found = false;
        for (i, p) in by.iter().enumerate() {
            let pm = p
                .as_object()
                .ok_or_else(|| PatchError::Internal(format!("value for key {i} is not a map")))?;
            if pm.get(key) == Some(kv) {
                found = true;
                break;
            }
        }
        if found {
            inside.push(v);
        } else {
            outside.push(v);
        }
    }
    Ok((inside, outside))
}

fn validate_merge_keys(key: &str, lists: &[&[Value]]) -> Result<(), PatchError> {
    for v in lists.iter().flat_map(|l| l.iter()) {
        let m = v.as_object().ok_or_else(|| bad_arg_type(MAP_TYPE, v))?;
        if !m.contains_key(key) {
            return Err(no_merge_key(m, key));
        }
    }
    Ok(())
}

fn is_delete_item(v: &Value) -> bool {
    v.get(DIRECTIVE).and_then(Value::as_str) == Some("delete")
}

/// `normalizeSliceOrder`: stable sort by position in `order`; `$patch: delete` items last.
fn normalize_slice_order(
    to_sort: Vec<Value>,
    order: &[Value],
    key: &str,
    kind: Kind,
) -> Result<Vec<Value>, PatchError> {
    let (mut keep, deletes): (Vec<Value>, Vec<Value>) = if kind == Kind::Map {
        validate_merge_keys(key, &[&to_sort, order])?;
        to_sort.into_iter().partition(|v| !is_delete_item(v))
    } else {
        (to_sort, Vec::new())
    };
    keep.sort_by_key(|v| index_of(order, v, key, kind).unwrap_or(usize::MAX));
    keep.extend(deletes);
    Ok(keep)
}

/// `normalizeElementOrder`: sorts patched items by the patch (or `$setElementOrder`) order and
/// server-only items by the live order, then interleaves them by live order.
pub(super) fn normalize_element_order(
    patch_items: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    key: &str,
    kind: Kind,
) -> Result<Vec<Value>, PatchError> {
    let patch_items = normalize_slice_order(patch_items, patch_order, key, kind)?;
    let server_only = normalize_slice_order(server_only, server_order, key, kind)?;
    Ok(merge_sorted(
        server_only,
        patch_items,
        server_order,
        key,
        kind,
    ))
}

/// `mergeSortedSlice`: inserts each `left` item before the first `right` item that comes
/// after it in the live order; items absent from the live order keep their relative place.
fn merge_sorted(
    left: Vec<Value>,
    right: Vec<Value>,
    server_order: &[Value],
    key: &str,
    kind: Kind,
) -> Vec<Value> {
    let less = |l: &Value, r: &Value| -> bool {
        match (
            index_of(server_order, l, key, kind),
            index_of(server_order, r, key, kind),
        ) {
            (Some(li), Some(ri)) => li < ri,
            _ => false,
        }
    };
    let mut out = Vec::with_capacity(left.len() + right.len());
    let mut left = left.into_iter().peekable();
    let mut right = right.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => less(l, r),
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    out
}

/// `validatePatchWithSetOrderList`: the patch list must follow the `$setElementOrder` order
/// and be a subset of it (deletions and directive items aside).
pub(super) fn validate_set_order(
    patch_list: &[Value],
    set_order: &[Value],
    key: &str,
) -> Result<(), PatchError> {
    if set_order.is_empty() || patch_list.is_empty() {
        return Ok(());
    }
    let mut items = Vec::with_capacity(patch_list.len());
    for v in patch_list {
        if !key.is_empty() {
            if !v.is_object() {
                return Err(bad_arg_type(MAP_TYPE, v));
            }
            if is_delete_item(v) {
                continue;
            }
        }
        items.push(v);
    }
    let (mut pi, mut si) = (0, 0);
    while pi < items.len() && si < set_order.len() {
        if items[pi].get(DIRECTIVE).is_some() {
            pi += 1;
            continue;
        }
        if key_value_equal(items[pi], &set_order[si], key)? {
            pi += 1;
        }
        si += 1;
    }
    if pi < items.len() && si >= set_order.len() {
        return Err(PatchError::Internal(format!(
            "The order in patch list:\n{}\n doesn't match $setElementOrder list:\n{}\n",
            go_fmt(&Value::Array(patch_list.to_vec())),
            go_fmt(&Value::Array(set_order.to_vec()))
        )));
    }
    Ok(())
}

/// `mergeKeyValueEqual`.
fn key_value_equal(left: &Value, right: &Value, key: &str) -> Result<bool, PatchError> {
    if key.is_empty() {
        return Ok(left == right);
    }
    let l = left
        .as_object()
        .ok_or_else(|| bad_arg_type(MAP_TYPE, left))?;
    let r = right
        .as_object()
        .ok_or_else(|| bad_arg_type(MAP_TYPE, right))?;
    let lv = l.get(key).ok_or_else(|| no_merge_key(l, key))?;
    let rv = r.get(key).ok_or_else(|| no_merge_key(r, key))?;
    Ok(lv == rv)
}

/// Appends `patch` to `original` and drops duplicates, keeping first occurrences.
pub(super) fn union_scalars(original: Vec<Value>, patch: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
    for v in original.into_iter().chain(patch.iter().cloned()) {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// What merging a keyed list did in place, for [`go_aliased_view`].
#[derive(Debug, Default)]
pub(super) struct ListTrace {
    /// Indices removed, in order, each relative to the list at that moment.
    pub deleted: Vec<usize>,
    /// Items appended (after the deletions).
    pub appended: Vec<Value>,
    /// `$patch: replace` made the patch items the list (appends went to a new array).
    pub replaced: bool,
}

/// The live list as Go's `$setElementOrder` code sees it after merging. In
/// `mergePatchIntoOriginal` the live order reference is the original slice header, while
/// the merge deleted entries by shifting that backing array in place and appended new
/// items into the slots the deletions freed. Kubernetes' expected results (and so kubectl
/// users' container orders) depend on this, so it is replayed here: after a deletion the
/// first `len` slots hold the shortened list and later slots keep their old values; appends
/// fill freed slots until the original length is reached (then Go reallocates).
pub(super) fn go_aliased_view(original: Vec<Value>, trace: &ListTrace) -> Vec<Value> {
    let mut view = original;
    let mut len = view.len();
    for &i in &trace.deleted {
        if i < len {
            // `append(s[:i], s[i+1:]...)`: shift left; slot len-1 keeps its old value.
            for j in i..len - 1 {
                view[j] = view[j + 1].clone();
            }
            len -= 1;
        }
    }
    if !trace.replaced {
        for item in &trace.appended {
            if len >= view.len() {
                break;
            }
            view[len] = item.clone();
            len += 1;
        }
    }
    view
}

/// `deleteFromSlice`: the `$deleteFromPrimitiveList` semantics.
pub(super) fn delete_scalars(original: Vec<Value>, to_delete: &[Value]) -> Vec<Value> {
    original
        .into_iter()
        .filter(|v| !to_delete.contains(v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn arr(v: Value) -> Vec<Value> {
        v.as_array().unwrap().clone()
    }

    #[test]
    fn element_kinds() {
        assert_eq!(
            element_kind(&[&arr(json!([{"a": 1}])), &arr(json!([]))]).unwrap(),
            Kind::Map
        );
        assert_eq!(
            element_kind(&[&arr(json!(["a"])), &arr(json!(["b"]))]).unwrap(),
            Kind::Scalar
        );
        assert_eq!(
            element_kind(&[&arr(json!([[1]]))]).unwrap_err().to_string(),
            "lists of lists are not supported"
        );
        assert!(element_kind(&[&arr(json!(["a"])), &arr(json!([{"b": 1}]))])
            .unwrap_err()
            .to_string()
            .starts_with("list element types are not identical"));
    }

    #[test]
    fn ordering_interleaves_by_live_order() {
        // Live [a b c d]; patch touched [d b]; server-only [a c].
        let server = arr(json!([{"n": "a"}, {"n": "b"}, {"n": "c"}, {"n": "d"}]));
        let patch_order = arr(json!([{"n": "d"}, {"n": "b"}]));
        let out = normalize_element_order(
            arr(json!([{"n": "b"}, {"n": "d"}])),
            arr(json!([{"n": "a"}, {"n": "c"}])),
            &patch_order,
            &server,
            "n",
            Kind::Map,
        )
        .unwrap();
        assert_eq!(
            Value::Array(out),
            json!([{"n": "a"}, {"n": "c"}, {"n": "d"}, {"n": "b"}])
        );
    }

    #[test]
    fn set_order_validation() {
        let set = arr(json!([{"name": "a"}, {"name": "b"}]));
        validate_set_order(&arr(json!([{"name": "b"}])), &set, "name").unwrap();
        validate_set_order(
            &arr(json!([{"name": "a"}, {"name": "z", "$patch": "delete"}])),
            &set,
            "name",
        )
        .unwrap();
        assert!(
            validate_set_order(&arr(json!([{"name": "b"}, {"name": "a"}])), &set, "name")
                .unwrap_err()
                .to_string()
                .starts_with("The order in patch list:")
        );
        assert!(validate_set_order(&arr(json!([{"name": "c"}])), &set, "name").is_err());
        validate_set_order(&arr(json!(["x"])), &arr(json!(["x", "y"])), "").unwrap();
    }

    #[test]
    fn aliased_view_replays_go_slices() {
        let orig = arr(json!(["1", "2", "4"]));
        let trace = ListTrace {
            deleted: vec![0],
            appended: arr(json!(["3"])),
            replaced: false,
        };
        assert_eq!(
            go_aliased_view(orig.clone(), &trace),
            arr(json!(["2", "4", "3"]))
        );
        let trace = ListTrace {
            deleted: vec![0],
            appended: vec![],
            replaced: false,
        };
        assert_eq!(
            go_aliased_view(orig.clone(), &trace),
            arr(json!(["2", "4", "4"]))
        );
        let trace = ListTrace {
            deleted: vec![1, 0],
            appended: arr(json!(["x", "y", "z"])),
            replaced: false,
        };
        assert_eq!(go_aliased_view(orig, &trace), arr(json!(["4", "x", "y"])));
    }

    #[test]
    fn scalar_helpers() {
        assert_eq!(
            union_scalars(arr(json!(["a", "b", "a"])), &arr(json!(["c", "b"]))),
            arr(json!(["a", "b", "c"]))
        );
        assert_eq!(
            delete_scalars(arr(json!(["a", "b", "c"])), &arr(json!(["b", "x"]))),
            arr(json!(["a", "c"]))
        );
        let (i, o) = partition_scalars(arr(json!(["a", "b", "c"])), &arr(json!(["c", "a"])));
        assert_eq!((i, o), (arr(json!(["a", "c"])), arr(json!(["b"]))));
    }
}
