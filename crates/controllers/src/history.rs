//! ControllerRevisions, as Kubernetes' DaemonSet and StatefulSet controllers keep them:
//! one per distinct pod template, holding a patch that restores it (what `kubectl rollout
//! undo` applies), numbered so the current template always has the highest revision, and
//! pruned beyond revisionHistoryLimit.

use crate::claim::{self, ignore_gone, Owner};
use crate::informer::Informer;
use crate::podutil::owner_ref;
use crate::Error;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

pub const HASH_LABEL: &str = "controller-revision-hash";

/// JSON with object keys sorted, as Go's encoding/json writes maps, so a revision's data
/// is byte-identical to what kubectl computes when it compares templates.
pub fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, Value> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            let mut out = serde_json::Map::new();
            for (k, v) in sorted {
                out.insert(k.clone(), v);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The patch that restores `template`: {"spec":{"template":{...,"$patch":"replace"}}}.
pub fn template_patch(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_default();
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    canonical(&json!({"spec": {"template": t}}))
}

pub fn data_of(r: &ControllerRevision) -> Value {
    r.data
        .as_ref()
        .map(|d| canonical(&d.0))
        .unwrap_or(Value::Null)
}

/// Kubernetes' HashControllerRevision: FNV-32a of the data (and the collision count),
/// in the alphabet of SafeEncodeString.
pub fn hash_data(data: &Value, collisions: i32) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(serde_json::to_string(data).unwrap_or_default().as_bytes());
    if collisions > 0 {
        feed(&collisions.to_le_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

/// What the owner's revisions look like after `sync`.
pub struct Revisions {
    pub current: Arc<ControllerRevision>,
    pub all: Vec<Arc<ControllerRevision>>,
}

pub struct Spec<'a> {
    pub owner: Owner<'a>,
    pub namespace: String,
    pub selector: &'a LabelSelector,
    pub template_labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub data: Value,
    /// The hash for the name (`<owner>-<hash>`) and label, from the collision count.
    pub hash: String,
}

/// Claims the owner's revisions and makes sure the one holding `data` exists with the
/// highest revision number. A name taken by different data is a collision: the caller
/// bumps status.collisionCount (Err(Collision)).
pub async fn sync(
    client: &Client,
    informer: &Informer<ControllerRevision>,
    spec: Spec<'_>,
) -> Result<Revisions, Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &spec.namespace);
    let sel = spec.selector;
    let mut all = claim::claim(
        informer.list_namespace(&spec.namespace),
        &api,
        &spec.owner,
        |r| !crate::selector::is_empty(sel) && crate::selector::matches(sel, r.labels()),
        None,
    )
    .await?;
    all.sort_by_key(|r| r.revision);
    let max = all.iter().map(|r| r.revision).max().unwrap_or(0);
    let mut equal: Vec<Arc<ControllerRevision>> = all
        .iter()
        .filter(|r| data_of(r) == spec.data)
        .cloned()
        .collect();
    if let Some(cur) = equal.pop() {
        // Duplicates of the current one go (the highest revision stays).
        for d in &equal {
            ignore_gone(api.delete(&d.name_any(), &DeleteParams::default()).await)?;
        }
        let dup: HashSet<String> = equal.iter().map(|d| d.name_any()).collect();
        all.retain(|r| !dup.contains(&r.name_any()));
        if cur.revision < max {
            let patch = json!({"revision": max + 1});
            let updated = api
                .patch(
                    &cur.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            let updated = Arc::new(updated);
            all.retain(|r| r.name_any() != cur.name_any());
            all.push(updated.clone());
            return Ok(Revisions {
                current: updated,
                all,
            });
        }
        return Ok(Revisions { current: cur, all });
    }
    let name = format!("{}-{}", spec.owner.name, spec.hash);
    let mut labels = spec.template_labels.clone();
    labels.insert(HASH_LABEL.into(), spec.hash.clone());
    let rev = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(spec.namespace.clone()),
            labels: Some(labels),
            annotations: (!spec.annotations.is_empty()).then(|| spec.annotations.clone()),
            owner_references: Some(vec![owner_ref(
                spec.owner.api_version,
                spec.owner.kind,
                &spec.owner.name,
                &spec.owner.uid,
            )]),
            ..Default::default()
        },
        data: Some(RawExtension(spec.data.clone())),
        revision: max + 1,
    };
    match api.create(&PostParams::default(), &rev).await {
        Ok(c) => {
            let c = Arc::new(c);
            all.push(c.clone());
            Ok(Revisions { current: c, all })
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = api.get(&name).await?;
            let ours = crate::podutil::controller_of(&existing.metadata)
                .is_some_and(|r| r.uid == spec.owner.uid);
            if ours && data_of(&existing) == spec.data {
                return Err(Error::Other(
                    "new ControllerRevision not yet in the cache".into(),
                ));
            }
            Err(Error::Other(COLLISION.into()))
        }
        Err(e) => Err(e.into()),
    }
}

pub const COLLISION: &str = "ControllerRevision name collision";

/// Deletes the oldest revisions beyond `limit`, except the current one and any that a
/// live pod still runs (by its hash label value).
pub async fn truncate(
    client: &Client,
    namespace: &str,
    revs: &Revisions,
    limit: i32,
    in_use: &HashSet<String>,
    hash_of: impl Fn(&ControllerRevision) -> String,
) -> Result<(), Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), namespace);
    let mut old: Vec<&Arc<ControllerRevision>> = revs
        .all
        .iter()
        .filter(|r| r.name_any() != revs.current.name_any() && !in_use.contains(&hash_of(r)))
        .collect();
    let limit = limit.max(0) as usize;
    if old.len() <= limit {
        return Ok(());
    }
    old.sort_by_key(|r| r.revision);
    for r in &old[..old.len() - limit] {
        ignore_gone(api.delete(&r.name_any(), &DeleteParams::default()).await)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_is_canonical_and_hash_is_stable() {
        let t = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(
                    [
                        ("b".to_string(), "1".to_string()),
                        ("a".to_string(), "2".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            }),
            spec: None,
        };
        let p = template_patch(&t);
        let s = serde_json::to_string(&p).unwrap();
        assert_eq!(
            s,
            r#"{"spec":{"template":{"$patch":"replace","metadata":{"labels":{"a":"2","b":"1"}}}}}"#
        );
        assert_eq!(hash_data(&p, 0), hash_data(&p, 0));
        assert_ne!(hash_data(&p, 0), hash_data(&p, 1));
    }
}
