//! Server-side apply (`kubectl apply --server-side`): the applier owns exactly the fields of
//! its configuration. Fields it owned before and no longer sets are removed (unless someone
//! else also owns them); changing a field another manager owns is a conflict unless forced,
//! and forcing takes the field over.

use crate::body::json_response;
use crate::error::{ApiError, ApiResult};
use crate::fieldpath::{self, Path, Set};
use crate::handlers::{create_object, update_object, WriteCtx};
use crate::managed::{self, Entry};
use crate::objects::{self, now_rfc3339};
use crate::registry::Resource;
use crate::server::Shared;
use crate::storage;
use axum::response::Response;
use serde_json::{json, Value};

#[allow(clippy::too_many_arguments)]
pub async fn apply(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    ctx: &WriteCtx,
    mut applied: Value,
    force: bool,
) -> ApiResult<Response> {
    if !applied.is_object() {
        return Err(ApiError::bad_request("apply patch must be an object"));
    }
    objects::check_type_meta(res, &mut applied)?;
    let body_name = applied["metadata"]["name"].as_str().unwrap_or("");
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    applied["metadata"]["name"] = json!(name);
    if let Some(m) = applied["metadata"].as_object_mut() {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    let mut ctx = ctx.clone();
    ctx.apply = true;
    let config_set = managed::owned_fields(&applied);
    let existing = storage::get(&st.store, res, ns, name).await?;
    if existing.is_none() && sub.is_none() {
        let mut obj = applied.clone();
        managed::store_entries(&mut obj, vec![entry(&ctx.field_manager, res, config_set)]);
        let (out, warnings) = create_object(st, res, ns, obj, &ctx).await?;
        return Ok(json_response(201, &out, &warnings));
    }
    let (out, warnings, code) = update_object(st, res, ns, name, sub, &ctx, |current| {
        merge_applied(
            current,
            &applied,
            &config_set,
            &ctx.field_manager,
            res,
            force,
        )
    })
    .await?;
    Ok(json_response(code, &out, &warnings))
}

fn entry(manager: &str, res: &Resource, fields: Set) -> Entry {
    Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version: res.api_version(),
        time: now_rfc3339(),
        subresource: None,
        fields,
    }
}

fn merge_applied(
    current: &Value,
    applied: &Value,
    config_set: &Set,
    manager: &str,
    res: &Resource,
    force: bool,
) -> ApiResult<Value> {
    let mut list = managed::entries(current);
    let is_me = |e: &Entry| e.manager == manager && e.operation == "Apply";
    // Conflicts: fields others own whose value this configuration changes.
    let mut conflicts: Vec<(String, Path)> = Vec::new();
    for e in list.iter().filter(|e| !is_me(e)) {
        for p in e.fields.intersection(config_set) {
            if fieldpath::get(current, p) != fieldpath::get(applied, p) {
                conflicts.push((e.manager.clone(), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(&conflicts, &res.version));
    }
    if force {
        for e in list.iter_mut().filter(|e| !is_me(e)) {
            e.fields.retain(|p| !conflicts.iter().any(|(_, c)| c == p));
        }
    }
    // Fields this manager applied before but no longer sets, and nobody else owns, go.
    let previous: Set = list
        .iter()
        .filter(|e| is_me(e))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let others: Set = list
        .iter()
        .filter(|e| !is_me(e))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mut out = current.clone();
    for p in previous.difference(config_set) {
        if !others.contains(p) {
            fieldpath::remove(&mut out, p);
        }
    }
    let mut config = applied.clone();
    if let Some(m) = config.as_object_mut() {
        m.remove("status");
    }
    fieldpath::merge(&mut out, &config);
    list.retain(|e| !is_me(e));
    list.push(entry(manager, res, config_set.clone()));
    managed::store_entries(&mut out, list);
    // No resourceVersion precondition unless the configuration carries one.
    if let Some(m) = out["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    Ok(out)
}

fn conflict_error(conflicts: &[(String, Path)], version: &str) -> ApiError {
    let n = conflicts.len();
    let message = if n == 1 {
        let (m, p) = &conflicts[0];
        format!(
            "Apply failed with 1 conflict: conflict with \"{m}\" using {version}: {}",
            fieldpath::render(p)
        )
    } else {
        let lines: Vec<String> = conflicts
            .iter()
            .map(|(m, p)| {
                format!(
                    "conflict with \"{m}\" using {version}: {}",
                    fieldpath::render(p)
                )
            })
            .collect();
        format!("Apply failed with {n} conflicts: {}", lines.join("\n"))
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\" using {version}"), "field": fieldpath::render(p)})
        })
        .collect();
    let mut e = ApiError::new(409, "Conflict", message);
    let ApiError::Status { details, .. } = &mut e;
    *details = Some(json!({"causes": causes}));
    e
}
