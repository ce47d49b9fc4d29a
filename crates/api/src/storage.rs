//! How API objects sit in the store: one key per object under
//! `/registry/<group>/<resource>/[<namespace>/]<name>`, the JSON body without its
//! resourceVersion (the store's mod revision is the resourceVersion, stamped on read).

use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::registry::Resource;
use bytes::Bytes;
use corral_store::{Compare, KeyValue, Revision, Store, TxnOutcome};
use serde_json::Value;

pub fn group_segment(group: &str) -> &str {
    if group.is_empty() {
        "core"
    } else {
        group
    }
}

pub fn key(res: &Resource, namespace: Option<&str>, name: &str) -> Vec<u8> {
    let mut k = prefix(res, namespace);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Key prefix for all objects of a resource, or those of one namespace.
pub fn prefix(res: &Resource, namespace: Option<&str>) -> Vec<u8> {
    let mut k = format!(
        "/registry/{}/{}/",
        group_segment(&res.storage_group),
        res.storage_resource
    );
    if res.namespaced {
        if let Some(ns) = namespace {
            k.push_str(ns);
            k.push('/');
        }
    }
    k.into_bytes()
}

pub use corral_store::prefix_end;

/// Namespace and name from a key, for namespaced resources.
pub fn split_key(res: &Resource, key: &[u8]) -> (Option<String>, String) {
    let base = prefix(res, None);
    let rest = String::from_utf8_lossy(&key[base.len().min(key.len())..]).into_owned();
    if res.namespaced {
        match rest.split_once('/') {
            Some((ns, name)) => (Some(ns.to_string()), name.to_string()),
            None => (None, rest),
        }
    } else {
        (None, rest)
    }
}

/// Decode a stored object as the resource's version sees it, with its resourceVersion.
pub fn decode(res: &Resource, kv: &KeyValue) -> ApiResult<Value> {
    let mut obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("corrupt object in storage: {e}")))?;
    set_resource_version(&mut obj, kv.mod_revision);
    Ok(convert::from_storage(res, obj))
}

pub fn set_resource_version(obj: &mut Value, rev: Revision) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
}

pub fn encode(res: &Resource, obj: &Value) -> Bytes {
    let mut obj = convert::to_storage(res, obj.clone());
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    Bytes::from(serde_json::to_vec(&obj).unwrap_or_default())
}

pub async fn get(
    store: &Store,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
) -> ApiResult<Option<(Value, KeyValue)>> {
    let kv = store.get(&key(res, ns, name)).await?;
    match kv {
        Some(kv) => Ok(Some((decode(res, &kv)?, kv))),
        None => Ok(None),
    }
}

pub async fn get_or_404(
    store: &Store,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
) -> ApiResult<(Value, KeyValue)> {
    get(store, res, ns, name)
        .await?
        .ok_or_else(|| ApiError::not_found(&res.qualified(), name))
}

/// Write an object if the key is still at `cmp`; returns the stored object with its new
/// resourceVersion, or None on a precondition conflict.
pub async fn put(
    store: &Store,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    obj: &Value,
    cmp: Compare,
) -> ApiResult<Option<Value>> {
    let body = encode(res, obj);
    match store.put(&key(res, ns, name), body, cmp).await? {
        TxnOutcome::Committed { revision, .. } => {
            let mut out = obj.clone();
            set_resource_version(&mut out, revision);
            Ok(Some(out))
        }
        TxnOutcome::Conflict { .. } => Ok(None),
    }
}

pub async fn delete(
    store: &Store,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    cmp: Compare,
) -> ApiResult<Option<(Value, Revision)>> {
    match store.delete(&key(res, ns, name), cmp).await? {
        TxnOutcome::Committed { revision, prev } => {
            let prev = prev.ok_or_else(|| ApiError::internal("delete returned no object"))?;
            let obj = decode(res, &prev)?;
            Ok(Some((obj, revision)))
        }
        TxnOutcome::Conflict { .. } => Ok(None),
    }
}
