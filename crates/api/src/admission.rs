//! The LimitRanger and ResourceQuota admission plugins, run on writes before they are stored.
//!
//! LimitRanger fills in container defaults from the namespace's LimitRanges and refuses
//! pods and claims outside their min/max/ratio. ResourceQuota charges the write against
//! every quota in the namespace that counts it: each quota's `status.used` is raised with
//! a compare-and-swap on the quota's revision *before* the object is stored, so two
//! concurrent writes can never both take the last unit of a quota (Kubernetes does the
//! same). The quota controller later recomputes `status.used` from the live objects,
//! which also returns what a write charged but then failed to store.

use crate::error::{ApiError, ApiResult};
use crate::registry::Resource;
use crate::server::Shared;
use crate::storage;
use corral_apimachinery::limitrange;
use corral_apimachinery::quantity::Quantity;
use corral_apimachinery::quota::{self, ResourceList};
use corral_store::Compare;
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Attempts per quota before a write gives up on a busy quota.
const MAX_CAS_RETRIES: usize = 32;

/// A forbidden write, worded as Kubernetes' admission.NewForbidden words it.
fn forbidden(res: &Resource, name: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::forbidden(&res.qualified(), name, &why.to_string())
}

fn is_core(res: &Resource, plural: &str) -> bool {
    res.group.is_empty() && res.plural == plural
}

async fn list_in(st: &Shared, plural: &str, ns: &str) -> ApiResult<Vec<(Value, i64)>> {
    let Some(r) = st.registry.lookup("", "v1", plural) else {
        return Ok(Vec::new());
    };
    let start = storage::prefix(&r, Some(ns));
    let end = storage::prefix_end(&start);
    let page = st.store.range(&start, &end, 0).await?;
    page.kvs
        .iter()
        .map(|kv| Ok((storage::decode(&r, kv)?, kv.mod_revision)))
        .collect()
}

/// DefaultStorageClass: a claim created without `storageClassName` (absent, not "") gets
/// the default class, the one annotated `storageclass.kubernetes.io/is-default-class:
/// "true"` (the newest when several are, as Kubernetes 1.28+).
pub async fn default_storage_class(st: &Shared, res: &Resource, obj: &mut Value) -> ApiResult<()> {
    if !is_core(res, "persistentvolumeclaims") || !obj["spec"]["storageClassName"].is_null() {
        return Ok(());
    }
    let annotations = [
        "storageclass.kubernetes.io/is-default-class",
        "storageclass.beta.kubernetes.io/is-default-class",
    ];
    if let Some(name) = newest_default(st, "storage.k8s.io", "storageclasses", &annotations).await?
    {
        if obj["spec"].is_object() {
            obj["spec"]["storageClassName"] = json!(name);
        }
    }
    Ok(())
}

/// DefaultIngressClass: an Ingress created naming no class (neither
/// `ingressClassName` nor the old annotation) gets the default IngressClass.
pub async fn default_ingress_class(st: &Shared, res: &Resource, obj: &mut Value) -> ApiResult<()> {
    if res.group != "networking.k8s.io"
        || res.plural != "ingresses"
        || !obj["spec"]["ingressClassName"].is_null()
        || !obj["metadata"]["annotations"]["kubernetes.io/ingress.class"].is_null()
    {
        return Ok(());
    }
    let annotations = ["ingressclass.kubernetes.io/is-default-class"];
    if let Some(name) =
        newest_default(st, "networking.k8s.io", "ingressclasses", &annotations).await?
    {
        if obj["spec"].is_object() {
            obj["spec"]["ingressClassName"] = json!(name);
        }
    }
    Ok(())
}

/// The newest class object annotated as the default by one of `annotations`.
async fn newest_default(
    st: &Shared,
    group: &str,
    resource: &str,
    annotations: &[&str],
) -> ApiResult<Option<String>> {
    let Some(r) = st.registry.lookup(group, "v1", resource) else {
        return Ok(None);
    };
    let start = storage::prefix(&r, None);
    let end = storage::prefix_end(&start);
    let page = st.store.range(&start, &end, 0).await?;
    let mut best: Option<(String, String)> = None;
    for kv in &page.kvs {
        let c = storage::decode(&r, kv)?;
        if !annotations
            .iter()
            .any(|a| c["metadata"]["annotations"][*a] == "true")
        {
            continue;
        }
        let created = c["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = c["metadata"]["name"].as_str().unwrap_or("").to_string();
        if best
            .as_ref()
            .is_none_or(|(t, n)| (&created, &name) > (t, n))
        {
            best = Some((created, name));
        }
    }
    Ok(best.map(|(_, name)| name))
}

/// LimitRanger: defaults on pod create, then min/max/ratio for pods (create) and claims
/// (create and update).
pub async fn limit_ranges(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    obj: &mut Value,
    updating: bool,
) -> ApiResult<()> {
    let pod = is_core(res, "pods") && !updating;
    let pvc = is_core(res, "persistentvolumeclaims");
    let Some(ns) = ns.filter(|_| pod || pvc) else {
        return Ok(());
    };
    let ranges = list_in(st, "limitranges", ns).await?;
    if ranges.is_empty() {
        return Ok(());
    }
    let mut errs = Vec::new();
    if pod {
        for (lr, _) in &ranges {
            limitrange::default_pod(lr, obj);
        }
        // The QoS class follows from the resources the pod now has.
        if obj["status"].is_object() {
            obj["status"]["qosClass"] = json!(crate::objects::qos_class(&obj["spec"]));
        }
    }
    for (lr, _) in &ranges {
        if pod {
            errs.extend(limitrange::validate_pod(lr, obj));
        } else {
            errs.extend(limitrange::validate_pvc(lr, obj));
        }
    }
    if errs.is_empty() {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    Err(forbidden(res, &name, limitrange::aggregate(&errs)))
}

/// What one write charged to which quotas, to give back if the write does not happen.
#[derive(Default, Debug)]
pub struct Charge {
    namespace: String,
    charged: Vec<(String, ResourceList)>,
}

impl Charge {
    /// Returns what was charged (the write was not stored). Best effort: the quota
    /// controller's recount corrects anything this misses.
    pub async fn refund(self, st: &Shared) {
        for (name, delta) in &self.charged {
            if let Err(e) = adjust(st, &self.namespace, name, |used| {
                let mut out = used.clone();
                for (k, v) in delta {
                    if let Some(u) = out.get_mut(k) {
                        let d = u.sub(v);
                        *u = if d.is_negative() { Quantity::zero() } else { d };
                    }
                }
                Some(out)
            })
            .await
            {
                tracing::warn!(quota = %name, error = %e, "returning a quota charge failed");
            }
        }
    }
}

/// Rewrites one quota's `status.used` with `f` under compare-and-swap, retrying on conflict.
/// `f` returning None leaves the quota alone.
async fn adjust(
    st: &Shared,
    ns: &str,
    name: &str,
    f: impl Fn(&ResourceList) -> Option<ResourceList>,
) -> ApiResult<()> {
    let rq = quota_resource(st);
    for _ in 0..MAX_CAS_RETRIES {
        let Some((mut q, kv)) = storage::get(&st.store, &rq, Some(ns), name).await? else {
            return Ok(());
        };
        let Some(used) = f(&quota::parse_list(&q["status"]["used"])) else {
            return Ok(());
        };
        q["status"]["used"] = quota::to_json(&used);
        let cmp = Compare::ModRevision(kv.mod_revision);
        if storage::put(&st.store, &rq, Some(ns), name, &q, cmp)
            .await?
            .is_some()
        {
            return Ok(());
        }
    }
    Err(ApiError::conflict(
        "resourcequotas",
        name,
        "too many concurrent changes to the quota",
    ))
}

fn quota_resource(st: &Shared) -> Resource {
    st.registry
        .lookup("", "v1", "resourcequotas")
        .expect("resourcequotas are built in")
}

/// ResourceQuota: checks the write against every quota in the namespace and charges
/// what it adds (for an update, what it adds beyond `old`). Dry runs are checked, not
/// charged.
pub async fn charge_quotas(
    st: &Shared,
    res: &Resource,
    ns: Option<&str>,
    obj: &Value,
    old: Option<&Value>,
    dry_run: bool,
) -> ApiResult<Charge> {
    let Some(ns) = ns.filter(|_| res.namespaced) else {
        return Ok(Charge::default());
    };
    if old.is_some() && !quota::charges_updates(&res.group, &res.plural) {
        return Ok(Charge::default());
    }
    let mut charge = Charge {
        namespace: ns.to_string(),
        charged: Vec::new(),
    };
    let mut quotas = list_in(st, "resourcequotas", ns).await?;
    if quotas.is_empty() {
        return Ok(charge);
    }
    quotas.sort_by(|a, b| {
        a.0["metadata"]["name"]
            .as_str()
            .cmp(&b.0["metadata"]["name"].as_str())
    });
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let now = chrono::Utc::now();
    let mut delta = quota::usage(&res.group, &res.plural, obj, now);
    let negative = quota::negative(&delta);
    if !negative.is_empty() {
        return Err(forbidden(
            res,
            &name,
            format!(
                "quota usage is negative for resource(s): {}",
                negative.join(",")
            ),
        ));
    }
    if let Some(old) = old {
        let before = quota::usage(&res.group, &res.plural, old, now);
        delta = quota::subtract_non_negative(&delta, &before);
    }
    let delta = quota::remove_zeros(&delta);

    // First every quota's preconditions, so that nothing is charged for a write that a
    // later quota refuses outright.
    let mut pertinent = Vec::new();
    for (q, _) in &quotas {
        let qname = q["metadata"]["name"].as_str().unwrap_or("").to_string();
        let Some(restricted) = restricted_resources(q, res, obj) else {
            continue;
        };
        if is_core(res, "pods") {
            if let Err(why) = quota::pod_constraints(&restricted, obj) {
                return Err(forbidden(
                    res,
                    &name,
                    format!("failed quota: {qname}: {why}"),
                ));
            }
        }
        let used = q["status"]["used"].as_object();
        let unknown: Vec<&String> = restricted
            .iter()
            .filter(|r| used.is_none_or(|u| !u.contains_key(*r)))
            .collect();
        if !unknown.is_empty() {
            let names: Vec<&str> = unknown.iter().map(|s| s.as_str()).collect();
            return Err(forbidden(
                res,
                &name,
                format!(
                    "status unknown for quota: {qname}, resources: {}",
                    names.join(",")
                ),
            ));
        }
        pertinent.push(qname);
    }
    if pertinent.is_empty() || delta.is_empty() {
        return Ok(charge);
    }
    // A create of an object that exists already is refused before anything is charged.
    if old.is_none()
        && st
            .store
            .get(&storage::key(res, Some(ns), &name))
            .await?
            .is_some()
    {
        return Err(ApiError::already_exists(&res.qualified(), &name));
    }

    let rq = quota_resource(st);
    for qname in pertinent {
        let mut done = false;
        for _ in 0..MAX_CAS_RETRIES {
            let Some((mut q, kv)) = storage::get(&st.store, &rq, Some(ns), &qname).await? else {
                done = true;
                break;
            };
            // The quota may have changed since it was listed.
            if restricted_resources(&q, res, obj).is_none() {
                done = true;
                break;
            }
            let hard = quota::parse_list(&q["status"]["hard"]);
            let used = quota::parse_list(&q["status"]["used"]);
            let requested = quota::mask(&delta, &quota::names(&hard));
            if requested.is_empty() {
                done = true;
                break;
            }
            let new_used = quota::add(&used, &requested);
            let checked = quota::mask(&new_used, &quota::names(&requested));
            let (ok, exceeded) = quota::less_than_or_equal(&checked, &hard);
            if !ok {
                let ex: BTreeSet<String> = exceeded.into_iter().collect();
                let msg = format!(
                    "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                    quota::pretty_print(&quota::mask(&requested, &ex)),
                    quota::pretty_print(&quota::mask(&used, &ex)),
                    quota::pretty_print(&quota::mask(&hard, &ex)),
                );
                charge.refund(st).await;
                return Err(forbidden(res, &name, msg));
            }
            if dry_run {
                done = true;
                break;
            }
            q["status"]["used"] = quota::to_json(&new_used);
            let cmp = Compare::ModRevision(kv.mod_revision);
            match storage::put(&st.store, &rq, Some(ns), &qname, &q, cmp).await {
                Ok(Some(_)) => {
                    charge.charged.push((qname.clone(), requested));
                    done = true;
                    break;
                }
                Ok(None) => continue,
                Err(e) => {
                    charge.refund(st).await;
                    return Err(e);
                }
            }
        }
        if !done {
            charge.refund(st).await;
            return Err(ApiError::conflict(
                "resourcequotas",
                &qname,
                "too many concurrent changes to the quota",
            ));
        }
    }
    Ok(charge)
}

/// The quota's hard resources that count this object, or None when the quota does not
/// apply to it (no such resource, or its scopes leave it out). Like Kubernetes, only
/// quotas whose `status.hard` the controller has filled in apply.
fn restricted_resources(q: &Value, res: &Resource, obj: &Value) -> Option<BTreeSet<String>> {
    let hard = quota::names(&quota::parse_list(&q["status"]["hard"]));
    let restricted = quota::matching_resources(&res.group, &res.plural, &hard);
    if restricted.is_empty() || !quota::matches_scopes(q, &res.group, &res.plural, obj) {
        return None;
    }
    Some(restricted)
}

/// Quantities Kubernetes would fail to decode: refused like its decoder refuses them
/// (400, "... cannot be handled as a <Kind>: quantities must match ..."). Negative
/// amounts in a quota are a 422 with the field's path.
pub fn check_quantities(res: &Resource, obj: &Value) -> ApiResult<Vec<crate::error::Cause>> {
    let mut lists: Vec<(String, &Value)> = Vec::new();
    if res.group.is_empty() {
        match res.plural.as_str() {
            "pods" => {
                for list in ["containers", "initContainers", "ephemeralContainers"] {
                    for (i, c) in obj["spec"][list]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        for f in ["limits", "requests"] {
                            lists.push((
                                format!("spec.{list}[{i}].resources.{f}"),
                                &c["resources"][f],
                            ));
                        }
                    }
                }
                lists.push(("spec.overhead".into(), &obj["spec"]["overhead"]));
            }
            "resourcequotas" => {
                lists.push(("spec.hard".into(), &obj["spec"]["hard"]));
                lists.push(("status.hard".into(), &obj["status"]["hard"]));
                lists.push(("status.used".into(), &obj["status"]["used"]));
            }
            "limitranges" => {
                for (i, item) in obj["spec"]["limits"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    for f in [
                        "max",
                        "min",
                        "default",
                        "defaultRequest",
                        "maxLimitRequestRatio",
                    ] {
                        lists.push((format!("spec.limits[{i}].{f}"), &item[f]));
                    }
                }
            }
            "persistentvolumeclaims" => {
                for f in ["limits", "requests"] {
                    lists.push((format!("spec.resources.{f}"), &obj["spec"]["resources"][f]));
                }
            }
            _ => {}
        }
    }
    let mut causes = Vec::new();
    for (path, list) in lists {
        for (k, v) in list.as_object().into_iter().flatten() {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                // Go decodes null as a zero quantity.
                Value::Null => continue,
                _ => String::new(),
            };
            match Quantity::parse(&text) {
                Err(e) => {
                    return Err(ApiError::bad_request(format!(
                        "{} in version \"{}\" cannot be handled as a {}: {e}",
                        res.kind, res.version, res.kind
                    )))
                }
                Ok(q) if q.is_negative() && res.plural == "resourcequotas" => {
                    causes.push(crate::error::Cause::invalid(
                        format!("{path}[{k}]"),
                        &json!(text),
                        "must be greater than or equal to 0",
                    ));
                }
                Ok(_) => {}
            }
        }
    }
    Ok(causes)
}
