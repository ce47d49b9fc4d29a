//! CustomResourceDefinitions: turning a stored CRD into served resources (at once, on the
//! write that creates it, and through a watch so servers sharing a store agree), its status
//! conditions, and the cleanup of its objects when it is deleted.

use crate::error::{ApiError, ApiResult, Cause};
use crate::registry::{CrdVersion, Resource, ScalePaths};
use crate::server::Shared;
use crate::storage;
use corral_store::{Compare, WatchMessage};
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;

fn is_crd(res: &Resource) -> bool {
    res.group == "apiextensions.k8s.io" && res.plural == "customresourcedefinitions"
}

/// Kubernetes' order of API versions: GA before beta before alpha, higher numbers first, then
/// anything else by name. Discovery lists a CRD's versions in this order and its first is the
/// group's preferred version (`v1beta1` over `v1alpha3` for Istio's networking group), which
/// is the version kubectl reads and explains.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    // (major, stability: 2 GA / 1 beta / 0 alpha, minor), None when not kube-like.
    fn parse(v: &str) -> Option<(u64, u8, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let major: u64 = rest[..digits].parse().ok()?;
        let tail = &rest[digits..];
        if tail.is_empty() {
            return Some((major, 2, 0));
        }
        let (stability, num) = if let Some(n) = tail.strip_prefix("beta") {
            (1, n)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (0, n)
        } else {
            return None;
        };
        if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        Some((major, stability, num.parse().ok()?))
    }
    match (parse(a), parse(b)) {
        (Some((ma, sa, na)), Some((mb, sb, nb))) => sb.cmp(&sa).then(mb.cmp(&ma)).then(nb.cmp(&na)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// The resources a CRD defines, one per served version, in Kubernetes' version order.
pub fn resources_of(crd: &Value) -> Vec<Resource> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let group = spec["group"].as_str().unwrap_or("").to_string();
    let plural = names["plural"].as_str().unwrap_or("").to_string();
    let kind = names["kind"].as_str().unwrap_or("").to_string();
    let crd_name = crd["metadata"]["name"].as_str().unwrap_or("").to_string();
    let storage_version = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["storage"] == json!(true))
        .and_then(|v| v["name"].as_str())
        .unwrap_or("")
        .to_string();
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let mut out: Vec<Resource> = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"] == json!(true))
        .map(|v| {
            let schema = v["schema"]["openAPIV3Schema"].clone();
            let scale = v["subresources"]["scale"].as_object().map(|s| ScalePaths {
                spec_replicas: s
                    .get("specReplicasPath")
                    .and_then(Value::as_str)
                    .unwrap_or(".spec.replicas")
                    .to_string(),
                status_replicas: s
                    .get("statusReplicasPath")
                    .and_then(Value::as_str)
                    .unwrap_or(".status.replicas")
                    .to_string(),
                label_selector: s
                    .get("labelSelectorPath")
                    .and_then(Value::as_str)
                    .map(String::from),
            });
            Resource {
                group: group.clone(),
                version: v["name"].as_str().unwrap_or("").to_string(),
                kind: kind.clone(),
                list_kind: names["listKind"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("{kind}List")),
                plural: plural.clone(),
                singular: names["singular"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| kind.to_lowercase()),
                short_names: strs(&names["shortNames"]),
                categories: strs(&names["categories"]),
                namespaced: spec["scope"] != json!("Cluster"),
                status: v["subresources"]["status"].is_object(),
                scale,
                definition: None,
                storage_group: group.clone(),
                storage_resource: plural.clone(),
                storage_version: storage_version.clone(),
                crd: Some(Arc::new(CrdVersion {
                    crd_name: crd_name.clone(),
                    preserve_unknown_root: schema["x-kubernetes-preserve-unknown-fields"]
                        == json!(true),
                    schema,
                    printer_columns: v["additionalPrinterColumns"].clone(),
                    served: true,
                    storage: v["storage"] == json!(true),
                })),
            }
        })
        .collect();
    out.sort_by(|a, b| compare_versions(&a.version, &b.version));
    out
}

/// Rules a CRD must satisfy beyond its schema.
pub fn validate(crd: &Value, old: Option<&Value>, c: &mut Vec<Cause>) {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or("");
    let plural = spec["names"]["plural"].as_str().unwrap_or("");
    let name = crd["metadata"]["name"].as_str().unwrap_or("");
    if group.is_empty() {
        c.push(Cause::required("spec.group"));
    } else if !group.contains('.') {
        c.push(Cause::invalid(
            "spec.group",
            &spec["group"],
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        c.push(Cause::required("spec.names.plural"));
    }
    if spec["names"]["kind"].as_str().unwrap_or("").is_empty() {
        c.push(Cause::required("spec.names.kind"));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        c.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if !matches!(spec["scope"].as_str(), Some("Namespaced") | Some("Cluster")) {
        c.push(Cause::unsupported(
            "spec.scope",
            &spec["scope"],
            &["Cluster", "Namespaced"],
        ));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        c.push(Cause::required("spec.versions"));
    }
    let storage = versions
        .iter()
        .filter(|v| v["storage"] == json!(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        c.push(Cause::invalid(
            "spec.versions",
            &json!(versions
                .iter()
                .map(|v| v["name"].clone())
                .collect::<Vec<_>>()),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        if v["schema"]["openAPIV3Schema"].is_null() {
            c.push(Cause::required(format!(
                "spec.versions[{i}].schema.openAPIV3Schema"
            )));
        } else if v["schema"]["openAPIV3Schema"]["type"] != json!("object") {
            c.push(Cause::invalid(
                format!("spec.versions[{i}].schema.openAPIV3Schema.type"),
                &v["schema"]["openAPIV3Schema"]["type"],
                "must be object at the root",
            ));
        }
    }
    if let Some(old) = old {
        if old["spec"]["group"] != spec["group"] {
            c.push(Cause::immutable("spec.group", &spec["group"]));
        }
        if old["spec"]["names"]["plural"] != spec["names"]["plural"] {
            c.push(Cause::immutable(
                "spec.names.plural",
                &spec["names"]["plural"],
            ));
        }
    }
}

pub fn check_served(st: &Shared, res: &Resource) -> ApiResult<()> {
    if st
        .registry
        .lookup(&res.group, &res.version, &res.plural)
        .is_none()
    {
        return Err(ApiError::path_not_found());
    }
    Ok(())
}

fn desired_status(crd: &Value) -> Value {
    let now = crate::objects::now_rfc3339();
    let mut names = crd["spec"]["names"].clone();
    if names["singular"].is_null() {
        names["singular"] = json!(names["kind"].as_str().unwrap_or("").to_lowercase());
    }
    if names["listKind"].is_null() {
        names["listKind"] = json!(format!("{}List", names["kind"].as_str().unwrap_or("")));
    }
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == json!(true))
        .map(|v| v["name"].clone())
        .collect();
    let mut stored = crd["status"]["storedVersions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for s in storage {
        if !stored.contains(&s) {
            stored.push(s);
        }
    }
    let keep_time = |t: &str| -> Value {
        crd["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == json!(t))
            .map(|c| c["lastTransitionTime"].clone())
            .unwrap_or(json!(now))
    };
    json!({
        "acceptedNames": names,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": keep_time("NamesAccepted")},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": keep_time("Established")},
        ],
        "storedVersions": stored,
    })
}

/// After a write: a CRD is served at once and its status set. Returns warnings.
pub async fn after_write(st: &Shared, res: &Resource, stored: &Value) -> Vec<String> {
    if !is_crd(res) {
        return Vec::new();
    }
    register(st, stored);
    let status = desired_status(stored);
    if stored["status"] != status {
        let mut updated = stored.clone();
        updated["status"] = status;
        let name = stored["metadata"]["name"].as_str().unwrap_or("");
        let rev: i64 = stored["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let _ = storage::put(
            &st.store,
            res,
            None,
            name,
            &updated,
            Compare::ModRevision(rev),
        )
        .await;
    }
    Vec::new()
}

pub(crate) fn register(st: &Shared, crd: &Value) {
    let name = crd["metadata"]["name"].as_str().unwrap_or("");
    if !crd["metadata"]["deletionTimestamp"].is_null() {
        st.registry.set_custom(name, Vec::new());
    } else {
        st.registry.set_custom(name, resources_of(crd));
    }
}

/// After a CRD is deleted: stop serving it and delete its objects.
pub async fn after_delete(st: &Shared, res: &Resource, obj: &Value) {
    if !is_crd(res) {
        return;
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let resources = resources_of(obj);
    st.registry.set_custom(&name, Vec::new());
    if let Some(r) = resources.first() {
        let prefix = storage::prefix(r, None);
        let end = storage::prefix_end(&prefix);
        if let Ok(page) = st.store.range(&prefix, &end, 0).await {
            for kv in page.kvs {
                let _ = st.store.delete(&kv.key, Compare::Any).await;
            }
        }
    }
}

/// Serve every stored CRD, then follow changes (including ones made by other servers).
pub async fn run_sync(st: Shared, mut stop: tokio::sync::watch::Receiver<bool>) {
    let crd_res = st
        .registry
        .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .expect("CRDs are built in");
    let prefix = storage::prefix(&crd_res, None);
    let end = storage::prefix_end(&prefix);
    loop {
        let page = match st.store.range(&prefix, &end, 0).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(loop_name = "crd-sync", error = %e, "listing CRDs failed");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        for kv in &page.kvs {
            if let Ok(obj) = storage::decode(&crd_res, kv) {
                register(&st, &obj);
            }
        }
        let Ok(mut w) = st.store.watch(&prefix, &end, page.revision) else {
            continue;
        };
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                msg = w.next() => match msg {
                    Some(Ok(WatchMessage::Event(ev))) => {
                        let key_name = String::from_utf8_lossy(&ev.kv.key[prefix.len()..]).to_string();
                        match ev.kind {
                            corral_store::EventKind::Put => {
                                if let Ok(obj) = storage::decode(&crd_res, &ev.kv) {
                                    register(&st, &obj);
                                }
                            }
                            corral_store::EventKind::Delete => st.registry.set_custom(&key_name, Vec::new()),
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_in_kubernetes_order() {
        let mut vs = vec![
            "v1alpha3",
            "v1beta1",
            "foo",
            "v2",
            "v1",
            "v11alpha2",
            "v10beta3",
            "v3beta1",
            "bar",
            "v1alpha1",
        ];
        vs.sort_by(|a, b| compare_versions(a, b));
        // The order upstream documents for CRD versions.
        assert_eq!(
            vs,
            vec![
                "v2",
                "v1",
                "v10beta3",
                "v3beta1",
                "v1beta1",
                "v11alpha2",
                "v1alpha3",
                "v1alpha1",
                "bar",
                "foo"
            ]
        );
    }

    #[test]
    fn a_crd_serves_its_versions_preferred_first() {
        // Istio's DestinationRule lists v1alpha3 (storage) before v1beta1; discovery's first
        // version, the group's preferred one, must be v1beta1.
        let schema = json!({"openAPIV3Schema": {"type": "object"}});
        let crd = json!({
            "metadata": {"name": "destinationrules.networking.istio.io"},
            "spec": {
                "group": "networking.istio.io",
                "scope": "Namespaced",
                "names": {"plural": "destinationrules", "kind": "DestinationRule"},
                "versions": [
                    {"name": "v1alpha3", "served": true, "storage": true, "schema": schema},
                    {"name": "v1beta1", "served": true, "storage": false, "schema": schema},
                    {"name": "v1alpha2", "served": false, "storage": false, "schema": schema},
                ],
            },
        });
        let rs = resources_of(&crd);
        let versions: Vec<&str> = rs.iter().map(|r| r.version.as_str()).collect();
        assert_eq!(versions, vec!["v1beta1", "v1alpha3"]);
        assert!(rs.iter().all(|r| r.storage_version == "v1alpha3"));
    }
}
