//! create, update (PUT), patch (all four patch types), delete and deletecollection. Every
//! write is optimistic: read, compute, then store only if the object's revision is still
//! the one read; a conflict the client did not cause (no resourceVersion in its request)
//! is retried here, one it did cause is a 409.

use crate::admission;
use crate::alloc;
use crate::body::{self, json_response, read_body};
use crate::error::{ApiError, ApiResult};
use crate::filter::Filter;
use crate::managed;
use crate::objects::{self, now_rfc3339};
use crate::patching;
use crate::registry::Resource;
use crate::request::{FieldValidation, Query};
use crate::server::Shared;
use crate::storage;
use crate::validation;
use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use corral_store::Compare;
use serde_json::{json, Value};

/// Options every write carries.
#[derive(Clone, Debug)]
pub struct WriteCtx {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    pub field_manager: String,
    /// Server-side apply: managedFields are computed by the apply module.
    pub apply: bool,
}

impl WriteCtx {
    pub fn from_query(q: &Query, user_agent: &str) -> ApiResult<WriteCtx> {
        let manager = match q.get("fieldManager") {
            Some(m) if !m.is_empty() => {
                if m.len() > 128 {
                    return Err(ApiError::bad_request(
                        "fieldManager: Too long: may not be more than 128 bytes",
                    ));
                }
                m.to_string()
            }
            _ => user_agent
                .split('/')
                .next()
                .unwrap_or("unknown")
                .to_string(),
        };
        Ok(WriteCtx {
            dry_run: q.dry_run()?,
            field_validation: q.field_validation()?,
            field_manager: manager,
            apply: false,
        })
    }
}

/// What a write request brings: its options, the body's Content-Type and the body.
pub struct WriteInput {
    pub ctx: WriteCtx,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

impl WriteInput {
    pub async fn read(q: &Query, req: Request<Body>) -> ApiResult<WriteInput> {
        // The default field manager is the client's name, as upstream derives it.
        let agent = req
            .headers()
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_string();
        let ctx = WriteCtx::from_query(q, &agent)?;
        let content_type = body::content_type(req.headers());
        let bytes = read_body(req.into_body()).await?;
        Ok(WriteInput {
            ctx,
            content_type,
            bytes,
        })
    }

    pub fn object(&self) -> ApiResult<Value> {
        body::parse_object(&self.bytes, &self.content_type)
    }
}

/// How long a write keeps re-reading and retrying when other writers win the race for its
/// object. Kubernetes' GuaranteedUpdate retries such conflicts without a count; a time
/// budget bounds the request instead, so a busy object (a Deployment whose controller
/// writes its status) never turns a client's patch into a 409.
const RETRY_BUDGET: std::time::Duration = std::time::Duration::from_secs(30);

/// Retries of a read-modify-write that lost a race: a short, growing, jittered pause
/// before each, so contending writers do not retry in lockstep.
pub(crate) struct Retry {
    attempt: u32,
    started: std::time::Instant,
}

impl Retry {
    pub(crate) fn new() -> Retry {
        Retry {
            attempt: 0,
            started: std::time::Instant::now(),
        }
    }

    /// Waits before the next attempt; false once the budget is spent.
    pub(crate) async fn again(&mut self) -> bool {
        if self.started.elapsed() > RETRY_BUDGET {
            return false;
        }
        self.attempt += 1;
        if self.attempt == 1 {
            tokio::task::yield_now().await;
            return true;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0) as u64;
        let cap_us = 250u64 << self.attempt.min(7);
        tokio::time::sleep(std::time::Duration::from_micros(nanos % cap_us)).await;
        true
    }
}

pub async fn create(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    q: &Query,
    req: Request<Body>,
) -> ApiResult<Response> {
    let input = WriteInput::read(q, req).await?;
    let (out, warnings) = create_object(st, res, ns, input.object()?, &input.ctx).await?;
    Ok(json_response(201, &out, &warnings))
}

/// Namespaced writes need a namespace that exists and is not terminating.
async fn check_namespace(st: &Shared, res: &Resource, ns: Option<&str>) -> ApiResult<()> {
    let Some(ns) = ns.filter(|_| res.namespaced) else {
        return Ok(());
    };
    let ns_res = st
        .registry
        .lookup("", "v1", "namespaces")
        .expect("namespaces are built in");
    match storage::get(&st.store, &ns_res, None, ns).await? {
        None => Err(ApiError::not_found("namespaces", ns)),
        Some((obj, _)) if !obj["metadata"]["deletionTimestamp"].is_null() => Err(ApiError::new(
            403,
            "Forbidden",
            format!("{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated", res.qualified(), obj_name_hint(res)),
        )),
        Some(_) => Ok(()),
    }
}

fn obj_name_hint(_res: &Resource) -> &'static str {
    ""
}

pub async fn create_object(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    mut obj: Value,
    ctx: &WriteCtx,
) -> ApiResult<(Value, Vec<String>)> {
    let operation = if ctx.apply { "Apply" } else { "Update" };
    objects::check_type_meta(res, &mut obj)?;
    let requested = crate::managed::owned_fields(&obj);
    let meta = obj["metadata"].as_object_mut().expect("checked");
    if res.namespaced {
        match (meta.get("namespace").and_then(Value::as_str), ns) {
            (Some(b), Some(u)) if !b.is_empty() && b != u => {
                return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
            }
            (_, Some(u)) => {
                meta.insert("namespace".into(), json!(u));
            }
            _ => {}
        }
    } else {
        meta.remove("namespace");
    }
    let name_empty = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty();
    if name_empty {
        if let Some(g) = meta
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|g| !g.is_empty())
        {
            let base: String = g.chars().take(58).collect();
            meta.insert(
                "name".into(),
                json!(format!("{base}{}", objects::generate_suffix())),
            );
        }
    }
    let mut warnings = objects::normalize(res, &st.openapi, &mut obj, ctx.field_validation)?;
    objects::init_meta(res, &mut obj);
    objects::reset_status_on_create(res, &mut obj);
    crate::defaults::on_create(res, &mut obj);
    if res.group.is_empty() && res.plural == "namespaces" {
        obj["spec"]["finalizers"] = json!(["kubernetes"]);
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let mut causes = admission::check_quantities(res, &obj)?;
    causes.extend(validation::validate(res, &obj, None));
    if !causes.is_empty() {
        return Err(ApiError::invalid(&res.kind, &res.group, &name, causes));
    }
    warnings.extend(crate::mesh_crds::warnings(&res.group, &res.kind, &obj));
    warnings.extend(crate::gateway_crds::warnings(&res.group, &res.kind, &obj));
    check_namespace(st, res, ns).await?;
    admission::default_storage_class(st, res, &mut obj).await?;
    admission::default_ingress_class(st, res, &mut obj).await?;
    admission::limit_ranges(st, res, ns, &mut obj, false).await?;
    if !ctx.apply {
        // A create owns what the client sent and was kept, not what defaulting filled in.
        let kept = managed::owned_fields(&obj);
        let requested = requested.intersection(&kept).cloned().collect();
        managed::store_entries(
            &mut obj,
            vec![managed::Entry {
                manager: ctx.field_manager.clone(),
                operation: operation.to_string(),
                api_version: res.api_version(),
                time: now_rfc3339(),
                subresource: None,
                fields: requested,
            }],
        );
    }
    let is_service = res.group.is_empty() && res.plural == "services";
    let claimed = if is_service && !ctx.dry_run {
        alloc::allocate_service(&st.store, &st.config.ranges, &mut obj).await?
    } else {
        Vec::new()
    };
    if res.is_custom() {
        crate::crd::check_served(st, res)?;
    }
    let charge = match admission::charge_quotas(st, res, ns, &obj, None, ctx.dry_run).await {
        Ok(c) => c,
        Err(e) => {
            alloc::release_all(&st.store, &claimed).await;
            return Err(e);
        }
    };
    if ctx.dry_run {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        if st.store.get(&storage::key(res, ns, &name)).await?.is_some() {
            return Err(ApiError::already_exists(&res.qualified(), &name));
        }
        return Ok((obj, warnings));
    }
    match storage::put(&st.store, res, ns, &name, &obj, Compare::Absent).await {
        Ok(Some(stored)) => {
            warnings.extend(crate::crd::after_write(st, res, &stored).await);
            Ok((stored, warnings))
        }
        Ok(None) => {
            charge.refund(st).await;
            alloc::release_all(&st.store, &claimed).await;
            Err(ApiError::already_exists(&res.qualified(), &name))
        }
        Err(e) => {
            charge.refund(st).await;
            Err(e)
        }
    }
}

pub async fn update(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    q: &Query,
    req: Request<Body>,
) -> ApiResult<Response> {
    let input = WriteInput::read(q, req).await?;
    let ctx = input.ctx.clone();
    let mut body_obj = input.object()?;
    objects::check_type_meta(res, &mut body_obj)?;
    let body_name = body_obj["metadata"]["name"].as_str().unwrap_or("");
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if let (Some(b), Some(u)) = (body_obj["metadata"]["namespace"].as_str(), ns) {
        if !b.is_empty() && b != u {
            return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
        }
    }
    let (out, warnings, code) =
        update_object(
            st,
            res,
            ns,
            name,
            sub,
            &ctx,
            |_current| Ok(body_obj.clone()),
        )
        .await?;
    Ok(json_response(code, &out, &warnings))
}

/// Read-modify-write with retries. `make` computes the new object from the current one;
/// a resourceVersion in its result is a precondition.
pub async fn update_object<F>(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    ctx: &WriteCtx,
    make: F,
) -> ApiResult<(Value, Vec<String>, u16)>
where
    F: Fn(&Value) -> ApiResult<Value>,
{
    let mut retry = Retry::new();
    loop {
        let Some((current, kv)) = storage::get(&st.store, res, ns, name).await? else {
            return Err(ApiError::not_found(&res.qualified(), name));
        };
        let mut new = make(&current)?;
        objects::check_type_meta(res, &mut new)?;
        let precondition = new["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from);
        if let Some(rv) = &precondition {
            if rv.parse::<i64>().ok() != Some(kv.mod_revision) {
                if rv.parse::<i64>().is_err() {
                    return Err(ApiError::bad_request(format!(
                        "metadata.resourceVersion: Invalid value: {rv:?}: must be a valid resource version"
                    )));
                }
                return Err(ApiError::modified(&res.qualified(), name));
            }
        }
        let mut new_meta_ns = new["metadata"].clone();
        if let Some(m) = new_meta_ns.as_object_mut() {
            m.insert("name".into(), json!(name));
            if let Some(n) = ns {
                m.insert("namespace".into(), json!(n));
            }
        }
        new["metadata"] = new_meta_ns;
        let mut warnings = objects::normalize(res, &st.openapi, &mut new, ctx.field_validation)?;
        // Main resource and status are written through different doors.
        match sub {
            Some("status") => {
                let status = new.get("status").cloned();
                let mut merged = current.clone();
                match status {
                    Some(s) => merged["status"] = s,
                    None => {
                        if let Some(m) = merged.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                // Status writers may still change labels and annotations, as upstream.
                for f in ["labels", "annotations"] {
                    merged["metadata"][f] = new["metadata"][f].clone();
                }
                new = merged;
            }
            Some("finalize") => {
                let mut merged = current.clone();
                merged["spec"]["finalizers"] = new["spec"]["finalizers"].clone();
                new = merged;
            }
            _ => {
                if res.status {
                    match current.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            if let Some(m) = new.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                if res.group.is_empty() && res.plural == "namespaces" {
                    new["spec"]["finalizers"] = current["spec"]["finalizers"].clone();
                }
            }
        }
        // A uid in the body is a precondition (Kubernetes: 409 when it names another
        // incarnation of the object), never a change.
        if let (Some(want), Some(have)) = (
            new["metadata"]["uid"].as_str().filter(|u| !u.is_empty()),
            current["metadata"]["uid"].as_str(),
        ) {
            if want != have {
                return Err(ApiError::conflict(
                    &res.qualified(),
                    name,
                    &format!("Precondition failed: UID in precondition: {want}, UID in object meta: {have}"),
                ));
            }
        }
        objects::carry_meta(res, &current, &mut new);
        if res.group.is_empty() && res.plural == "services" {
            carry_service_allocations(&current, &mut new);
        }
        let mut causes = admission::check_quantities(res, &new)?;
        causes.extend(validation::validate(res, &new, Some(&current)));
        if !causes.is_empty() {
            return Err(ApiError::invalid(&res.kind, &res.group, name, causes));
        }
        if sub.is_none() {
            warnings.extend(crate::mesh_crds::warnings(&res.group, &res.kind, &new));
            warnings.extend(crate::gateway_crds::warnings(&res.group, &res.kind, &new));
        }
        if sub.is_none() {
            admission::limit_ranges(st, res, ns, &mut new, true).await?;
        }
        let op = if ctx.apply { "Apply" } else { "Update" };
        managed::record(
            &mut new,
            Some(&current),
            &ctx.field_manager,
            op,
            &res.api_version(),
        );
        if objects::same_object(&current, &new) {
            return Ok((current, warnings, 200));
        }
        // The last finalizer removed from an object being deleted: it goes now.
        let deleting = !new["metadata"]["deletionTimestamp"].is_null();
        if deleting && finalizers_empty(res, &new) {
            if ctx.dry_run {
                return Ok((new, warnings, 200));
            }
            match delete_at(st, res, ns, name, kv.mod_revision).await? {
                Some((_, rev)) => {
                    storage::set_resource_version(&mut new, rev);
                    return Ok((new, warnings, 200));
                }
                // Changed meanwhile: read again. A precondition the client set is
                // checked against that fresh read (a real conflict is a 409 there).
                None if retry.again().await => continue,
                None => break,
            }
        }
        let charge = match sub {
            None => {
                admission::charge_quotas(st, res, ns, &new, Some(&current), ctx.dry_run).await?
            }
            Some(_) => admission::Charge::default(),
        };
        if ctx.dry_run {
            storage::set_resource_version(&mut new, kv.mod_revision);
            return Ok((new, warnings, 200));
        }
        let ports = if sub.is_none() && res.group.is_empty() && res.plural == "services" {
            match alloc::update_service(&st.store, &st.config.ranges, &current, &mut new).await {
                Ok(p) => p,
                Err(e) => {
                    charge.refund(st).await;
                    return Err(e);
                }
            }
        } else {
            alloc::ServiceUpdate::default()
        };
        let stored = storage::put(
            &st.store,
            res,
            ns,
            name,
            &new,
            Compare::ModRevision(kv.mod_revision),
        )
        .await;
        if !matches!(stored, Ok(Some(_))) {
            alloc::release_all(&st.store, &ports.claimed).await;
        }
        match stored {
            Ok(Some(stored)) => {
                alloc::release_all(&st.store, &ports.released).await;
                warnings.extend(crate::crd::after_write(st, res, &stored).await);
                return Ok((stored, warnings, 200));
            }
            // Someone else wrote the object since we read it. Like Kubernetes'
            // GuaranteedUpdate, read it again and recompute: a patch is re-applied to the
            // new object, and a resourceVersion the client sent fails its check above on
            // the fresh read (the only way this write answers 409). The revision we read
            // is never itself a precondition: a patch's result carries it. What the write
            // charged to quotas is given back first.
            Ok(None) => {
                charge.refund(st).await;
                if !retry.again().await {
                    break;
                }
            }
            Err(e) => {
                charge.refund(st).await;
                return Err(e);
            }
        }
    }
    Err(ApiError::modified(&res.qualified(), name))
}

fn finalizers_empty(res: &Resource, obj: &Value) -> bool {
    let meta_empty = obj["metadata"]["finalizers"]
        .as_array()
        .is_none_or(|a| a.is_empty());
    let spec_empty = !(res.group.is_empty() && res.plural == "namespaces")
        || obj["spec"]["finalizers"]
            .as_array()
            .is_none_or(|a| a.is_empty());
    meta_empty && spec_empty
}

/// A PUT without clusterIP/nodePort keeps the allocated ones (what kubectl replace relies
/// on); and as upstream drops type-dependent fields, node ports and the health check node
/// port the server allocated go when the new type or traffic policy has no use for them
/// (one the user changed stays, for validation to refuse).
fn carry_service_allocations(current: &Value, new: &mut Value) {
    for f in ["clusterIP", "clusterIPs"] {
        if new["spec"][f].is_null() || new["spec"][f] == json!("") {
            new["spec"][f] = current["spec"][f].clone();
        }
    }
    let needs_node_ports = matches!(
        new["spec"]["type"].as_str(),
        Some("NodePort") | Some("LoadBalancer")
    );
    if let (Some(old), Some(ports)) = (
        current["spec"]["ports"].as_array(),
        new["spec"]["ports"].as_array_mut(),
    ) {
        for p in ports.iter_mut() {
            let Some(o) = old.iter().find(|o| o["port"] == p["port"]) else {
                continue;
            };
            if needs_node_ports && p["nodePort"].is_null() && !o["nodePort"].is_null() {
                p["nodePort"] = o["nodePort"].clone();
            }
            if !needs_node_ports && !p["nodePort"].is_null() && p["nodePort"] == o["nodePort"] {
                if let Some(m) = p.as_object_mut() {
                    m.remove("nodePort");
                }
            }
        }
    }
    // Fields of a type the Service no longer has, unchanged from before, go with it.
    let external = needs_node_ports
        || (new["spec"]["type"] == "ClusterIP"
            && new["spec"]["externalIPs"]
                .as_array()
                .is_some_and(|a| !a.is_empty()));
    let load_balancer = new["spec"]["type"] == "LoadBalancer";
    for (field, keep) in [
        ("externalTrafficPolicy", external),
        ("allocateLoadBalancerNodePorts", load_balancer),
    ] {
        if !keep && !new["spec"][field].is_null() && new["spec"][field] == current["spec"][field] {
            if let Some(spec) = new["spec"].as_object_mut() {
                spec.remove(field);
            }
        }
    }
    let wants_health_check =
        new["spec"]["type"] == "LoadBalancer" && new["spec"]["externalTrafficPolicy"] == "Local";
    let held = &current["spec"]["healthCheckNodePort"];
    let asked = &new["spec"]["healthCheckNodePort"];
    if wants_health_check && asked.is_null() && !held.is_null() {
        new["spec"]["healthCheckNodePort"] = held.clone();
    } else if !wants_health_check && !asked.is_null() && asked == held {
        if let Some(spec) = new["spec"].as_object_mut() {
            spec.remove("healthCheckNodePort");
        }
    }
}

pub async fn patch(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    q: &Query,
    req: Request<Body>,
) -> ApiResult<Response> {
    let WriteInput {
        mut ctx,
        content_type: ct,
        bytes,
    } = WriteInput::read(q, req).await?;
    let kind = patching::PatchKind::from_content_type(&ct)?;
    if kind == patching::PatchKind::Strategic && res.definition.is_none() {
        return Err(ApiError::unsupported_media_type(&ct));
    }
    let force = q.flag("force");
    if kind == patching::PatchKind::Apply {
        if q.get("fieldManager").is_none_or(|m| m.is_empty()) {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        ctx.field_manager = q.get("fieldManager").unwrap_or_default().to_string();
        let applied = body::parse_object(&bytes, "application/yaml")?;
        return crate::apply::apply(st, res, ns, name, sub, &ctx, applied, force).await;
    } else if force {
        return Err(ApiError::bad_request(
            "force: Invalid value: true: may not be specified for non-apply patch",
        ));
    }
    let patch_doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let (out, warnings, code) = update_object(st, res, ns, name, sub, &ctx, |current| {
        patching::apply_patch(res, kind, current, &patch_doc)
    })
    .await?;
    Ok(json_response(code, &out, &warnings))
}

/// What `DELETE` may carry.
#[derive(Default, Debug)]
struct DeleteOptions {
    propagation: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    grace: Option<i64>,
    dry_run: bool,
}

fn delete_options(bytes: &[u8], q: &Query) -> ApiResult<DeleteOptions> {
    let mut o = DeleteOptions {
        dry_run: q.dry_run()?,
        propagation: q.get("propagationPolicy").map(String::from),
        grace: q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()),
        ..Default::default()
    };
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?;
        if let Some(p) = v["propagationPolicy"].as_str() {
            o.propagation = Some(p.to_string());
        }
        if let Some(u) = v["preconditions"]["uid"].as_str() {
            o.uid = Some(u.to_string());
        }
        if let Some(r) = v["preconditions"]["resourceVersion"].as_str() {
            o.resource_version = Some(r.to_string());
        }
        if let Some(g) = v["gracePeriodSeconds"].as_i64() {
            o.grace = Some(g);
        }
        if v["dryRun"].as_array().is_some_and(|a| !a.is_empty()) {
            o.dry_run = true;
        }
    }
    if let Some(p) = &o.propagation {
        if !matches!(p.as_str(), "Orphan" | "Background" | "Foreground") {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            )));
        }
    }
    Ok(o)
}

pub async fn delete(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    q: &Query,
    req: Request<Body>,
) -> ApiResult<Response> {
    let bytes = read_body(req.into_body()).await?;
    let opts = delete_options(&bytes, q)?;
    let (obj, code) = delete_object(st, res, ns, name, &opts_view(&opts)).await?;
    Ok(json_response(code, &obj, &[]))
}

/// The parts of DeleteOptions the core delete needs (shared with namespace cleanup).
pub struct DeleteView {
    pub propagation: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub grace: Option<i64>,
    pub dry_run: bool,
}

fn opts_view(o: &DeleteOptions) -> DeleteView {
    DeleteView {
        propagation: o.propagation.clone(),
        uid: o.uid.clone(),
        resource_version: o.resource_version.clone(),
        grace: o.grace,
        dry_run: o.dry_run,
    }
}

pub async fn delete_object(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteView,
) -> ApiResult<(Value, u16)> {
    let mut retry = Retry::new();
    loop {
        let Some((current, kv)) = storage::get(&st.store, res, ns, name).await? else {
            return Err(ApiError::not_found(&res.qualified(), name));
        };
        if let Some(uid) = &opts.uid {
            let have = current["metadata"]["uid"].as_str().unwrap_or("");
            if have != uid {
                return Err(ApiError::conflict(
                    &res.qualified(),
                    name,
                    &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
                ),
                ));
            }
        }
        if let Some(rv) = &opts.resource_version {
            if rv.parse::<i64>().ok() != Some(kv.mod_revision) {
                return Err(ApiError::conflict(&res.qualified(), name, &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    kv.mod_revision
                )));
            }
        }
        let is_ns = res.group.is_empty() && res.plural == "namespaces";
        // Orphan and Foreground are carried out by the garbage collector, which the
        // finalizer tells what to do before the object may go (as in Kubernetes).
        let gc_finalizer = match opts.propagation.as_deref() {
            Some("Orphan") if !is_ns => Some("orphan"),
            Some("Foreground") if !is_ns => Some("foregroundDeletion"),
            _ => None,
        };
        let add_finalizer = gc_finalizer.filter(|f| {
            !current["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == f))
        });
        let has_finalizers = !finalizers_empty(res, &current) || add_finalizer.is_some();
        let graceful_pod = res.group.is_empty()
            && res.plural == "pods"
            && current["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
            && opts.grace != Some(0)
            && current["status"]["phase"]
                .as_str()
                .is_none_or(|p| p != "Succeeded" && p != "Failed");
        if has_finalizers || is_ns || graceful_pod {
            let already = !current["metadata"]["deletionTimestamp"].is_null();
            if already && add_finalizer.is_none() {
                return Ok((current, 202));
            }
            let mut new = current.clone();
            if let Some(f) = add_finalizer {
                let mut list = new["metadata"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                list.push(json!(f));
                new["metadata"]["finalizers"] = Value::Array(list);
            }
            if !already {
                new["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                let grace = if graceful_pod {
                    opts.grace
                        .or_else(|| current["spec"]["terminationGracePeriodSeconds"].as_i64())
                        .unwrap_or(30)
                } else {
                    0
                };
                new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                if objects::tracks_generation(res) {
                    let g = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
                    new["metadata"]["generation"] = json!(g);
                }
            }
            if is_ns {
                new["status"]["phase"] = json!("Terminating");
            }
            if opts.dry_run {
                return Ok((new, 202));
            }
            match storage::put(
                &st.store,
                res,
                ns,
                name,
                &new,
                Compare::ModRevision(kv.mod_revision),
            )
            .await?
            {
                Some(stored) => return Ok((stored, 202)),
                None if retry.again().await => continue,
                None => break,
            }
        }
        if opts.dry_run {
            return Ok((current, 200));
        }
        match delete_at(st, res, ns, name, kv.mod_revision).await? {
            Some((obj, _)) => return Ok((obj, 200)),
            None if retry.again().await => continue,
            None => break,
        }
    }
    Err(ApiError::modified(&res.qualified(), name))
}

/// Deletes the object if it is still at `revision` (None: it changed meanwhile) and
/// releases what it held (service addresses, a CRD's objects).
async fn delete_at(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    revision: i64,
) -> ApiResult<Option<(Value, i64)>> {
    let deleted = storage::delete(&st.store, res, ns, name, Compare::ModRevision(revision)).await?;
    if let Some((obj, _)) = &deleted {
        after_delete(st, res, obj).await;
    }
    Ok(deleted)
}

async fn after_delete(st: &Shared, res: &Resource, obj: &Value) {
    if res.group.is_empty() && res.plural == "services" {
        alloc::release_service(&st.store, obj).await;
    }
    crate::crd::after_delete(st, res, obj).await;
}

pub async fn delete_collection(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    q: &Query,
    req: Request<Body>,
) -> ApiResult<Response> {
    let bytes = read_body(req.into_body()).await?;
    let opts = delete_options(&bytes, q)?;
    let view = opts_view(&opts);
    let filter = Filter::from_query(res, q.get("labelSelector"), q.get("fieldSelector"))?;
    let page = super::read::list_page(st, res, ns, &filter, 0, None).await?;
    let mut deleted = Vec::new();
    for obj in page.items {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let ons = obj["metadata"]["namespace"].as_str().map(String::from);
        match delete_object(st, res, ons.as_deref(), &name, &view).await {
            Ok((o, _)) => deleted.push(o),
            Err(e) if e.code() == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let body = json!({
        "kind": res.list_kind,
        "apiVersion": res.api_version(),
        "metadata": {"resourceVersion": st.store.current_revision().to_string()},
        "items": deleted,
    });
    Ok(json_response(200, &body, &[]))
}
