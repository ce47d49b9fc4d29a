//! Subresources with their own shapes: `scale` (an autoscaling/v1 Scale view of any
//! resource that declares one, CRDs included), pod `binding` (how the scheduler assigns a
//! node) and the pod streams `log`, `exec`, `attach`, `portforward` (checked here, served by
//! the pod's node agent through `crate::proxy`).

use super::write::{update_object, WriteInput};
use crate::body::{self, json_response};
use crate::error::{ApiError, ApiResult};
use crate::patching::{self, PatchKind};
use crate::registry::Resource;
use crate::request::Query;
use crate::server::Shared;
use crate::storage;
use axum::body::Body;
use axum::http::{Method, Request};
use axum::response::Response;
use serde_json::{json, Value};

fn path_get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
        .fold(v, |v, p| &v[p])
}

fn path_set(v: &mut Value, path: &str, new: Value) {
    let parts: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    let mut cur = v;
    for p in &parts[..parts.len() - 1] {
        if !cur[*p].is_object() {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
    cur[parts[parts.len() - 1]] = new;
}

fn to_scale(res: &Resource, obj: &Value) -> Value {
    let paths = res.scale.as_ref().expect("scale declared");
    let mut selector = paths
        .label_selector
        .as_deref()
        .map(|p| path_get(obj, p).clone())
        .unwrap_or(Value::Null);
    if !res.is_custom() {
        // Built-in workloads keep the selector as a LabelSelector in spec.
        selector = json!(selector_string(&obj["spec"]["selector"]));
    }
    let mut status =
        json!({"replicas": path_get(obj, &paths.status_replicas).as_i64().unwrap_or(0)});
    if selector.as_str().is_some_and(|s| !s.is_empty()) {
        status["selector"] = selector;
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"]["namespace"],
            "uid": obj["metadata"]["uid"],
            "resourceVersion": obj["metadata"]["resourceVersion"],
            "creationTimestamp": obj["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": path_get(obj, &paths.spec_replicas).as_i64().unwrap_or(0)},
        "status": status,
    })
}

/// metav1.LabelSelector -> its string form, as `kubectl get --selector` takes.
pub fn selector_string(sel: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(ml) = sel["matchLabels"].as_object() {
        for (k, v) in ml {
            parts.push(format!("{k}={}", v.as_str().unwrap_or("")));
        }
    }
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or("");
        let vals: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match e["operator"].as_str().unwrap_or("") {
            "In" => parts.push(format!("{key} in ({})", vals.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", vals.join(","))),
            "Exists" => parts.push(key.to_string()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.join(",")
}

pub async fn scale(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    q: &Query,
    req: Request<Body>,
) -> ApiResult<Response> {
    let method = req.method().clone();
    if method == Method::GET {
        let (obj, _) = storage::get_or_404(&st.store, res, ns, name).await?;
        return Ok(json_response(200, &to_scale(res, &obj), &[]));
    }
    if method != Method::PUT && method != Method::PATCH {
        return Err(ApiError::method_not_allowed("method not allowed on scale"));
    }
    let WriteInput {
        ctx,
        content_type: ct,
        bytes,
    } = WriteInput::read(q, req).await?;
    let doc: Value = if method == Method::PUT {
        body::parse_object(&bytes, &ct)?
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
    };
    let kind = if method == Method::PATCH {
        Some(PatchKind::from_content_type(&ct)?)
    } else {
        None
    };
    let paths = res.scale.clone().expect("scale declared");
    let scale_res = Resource {
        definition: Some("io.k8s.api.autoscaling.v1.Scale"),
        crd: None,
        ..res.clone()
    };
    let (out, warnings, code) = update_object(st, res, ns, name, None, &ctx, |current| {
        let cur_scale = to_scale(res, current);
        let new_scale = match kind {
            None => doc.clone(),
            Some(PatchKind::Apply) => {
                let mut s = cur_scale.clone();
                corral_apimachinery::patch::merge_patch(&mut s, &doc);
                s
            }
            Some(k) => {
                let k = if k == PatchKind::Strategic {
                    PatchKind::Merge
                } else {
                    k
                };
                patching::apply_patch(&scale_res, k, &cur_scale, &doc)?
            }
        };
        let replicas = new_scale["spec"]["replicas"].as_i64().ok_or_else(|| {
            ApiError::invalid(
                "Scale",
                "autoscaling",
                name,
                vec![crate::error::Cause::required("spec.replicas")],
            )
        })?;
        if replicas < 0 {
            return Err(ApiError::invalid(
                "Scale",
                "autoscaling",
                name,
                vec![crate::error::Cause::invalid(
                    "spec.replicas",
                    &json!(replicas),
                    "must be greater than or equal to 0",
                )],
            ));
        }
        let mut obj = current.clone();
        path_set(&mut obj, &paths.spec_replicas, json!(replicas));
        // A resourceVersion in the Scale is a precondition on the object.
        match new_scale["metadata"]["resourceVersion"].as_str() {
            Some(rv)
                if !rv.is_empty()
                    && Some(rv) != current["metadata"]["resourceVersion"].as_str() =>
            {
                obj["metadata"]["resourceVersion"] = json!(rv);
            }
            _ => {
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
            }
        }
        Ok(obj)
    })
    .await?;
    Ok(json_response(code, &to_scale(res, &out), &warnings))
}

pub async fn binding(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    q: &Query,
    req: Request<Body>,
) -> ApiResult<Response> {
    let input = WriteInput::read(q, req).await?;
    let ctx = input.ctx.clone();
    let b = input.object()?;
    let node = b["target"]["name"].as_str().unwrap_or("").to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "Binding",
            "",
            name,
            vec![crate::error::Cause::required("target.name")],
        ));
    }
    // As Kubernetes' BindingREST: a guaranteed update of the stored pod, not a user write
    // (no field manager entry, no re-validation of the pod). The Binding's uid and
    // resourceVersion, when set, are preconditions on the pod.
    let want_uid = b["metadata"]["uid"].as_str().filter(|u| !u.is_empty());
    let want_rv = b["metadata"]["resourceVersion"]
        .as_str()
        .filter(|r| !r.is_empty());
    let annotations = b["metadata"]["annotations"].as_object().cloned();
    let mut retry = super::write::Retry::new();
    loop {
        let (current, kv) = storage::get_or_404(&st.store, res, ns, name).await?;
        if let Some(u) = want_uid {
            let have = current["metadata"]["uid"].as_str().unwrap_or("");
            if u != have {
                return Err(ApiError::conflict(
                    "pods",
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {u}, UID in object meta: {have}"
                    ),
                ));
            }
        }
        if let Some(rv) = want_rv {
            if rv != kv.mod_revision.to_string() {
                return Err(ApiError::modified("pods", name));
            }
        }
        let have = current["spec"]["nodeName"].as_str().unwrap_or("");
        if !have.is_empty() {
            return Err(ApiError::conflict(
                "pods",
                name,
                &format!("pod {name} is already assigned to node \"{have}\""),
            ));
        }
        if !current["metadata"]["deletionTimestamp"].is_null() {
            return Err(ApiError::conflict("pods", name, "pod is being deleted"));
        }
        let mut obj = current;
        obj["spec"]["nodeName"] = json!(node);
        if let Some(a) = &annotations {
            if !obj["metadata"]["annotations"].is_object() {
                obj["metadata"]["annotations"] = json!({});
            }
            for (k, v) in a {
                obj["metadata"]["annotations"][k] = v.clone();
            }
        }
        let mut conds: Vec<Value> = obj["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conds.retain(|c| c["type"] != json!("PodScheduled"));
        conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": crate::objects::now_rfc3339()}));
        obj["status"]["conditions"] = json!(conds);
        if ctx.dry_run {
            break;
        }
        let cmp = corral_store::Compare::ModRevision(kv.mod_revision);
        if storage::put(&st.store, res, ns, name, &obj, cmp)
            .await?
            .is_some()
        {
            break;
        }
        if !retry.again().await {
            return Err(ApiError::modified("pods", name));
        }
    }
    Ok(json_response(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        &[],
    ))
}

/// `pods/log`: checked here, served by the pod's node agent (see `crate::proxy`).
pub async fn log(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    q: &Query,
    raw_query: Option<&str>,
) -> ApiResult<Response> {
    let (pod, _) = storage::get_or_404(&st.store, res, ns, name).await?;
    crate::proxy::log(st, &pod, ns.unwrap_or("default"), name, q, raw_query).await
}

/// `pods/exec`, `pods/attach`, `pods/portforward`: upgrades proxied to the node agent.
pub async fn stream(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    sub: &str,
    q: &Query,
    req: Request<Body>,
) -> ApiResult<Response> {
    let (pod, _) = storage::get_or_404(&st.store, res, ns, name).await?;
    crate::proxy::stream(st, &pod, ns.unwrap_or("default"), name, sub, q, req).await
}
