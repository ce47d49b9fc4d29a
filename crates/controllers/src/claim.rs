//! Claiming dependents by ownerReferences, as Kubernetes' ControllerRefManager: an object
//! that the owner's selector matches and that has no controller is adopted; one the owner
//! controls but no longer matches is released; one another controller owns is left alone.

use crate::podutil::{controller_of, owner_ref};
use crate::Error;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::fmt::Debug;
use std::sync::Arc;

/// The owner doing the claiming.
pub struct Owner<'a> {
    pub api_version: &'a str,
    pub kind: &'a str,
    pub name: String,
    pub uid: String,
    /// An owner being deleted adopts nothing and releases nothing.
    pub deleting: bool,
}

impl<'a> Owner<'a> {
    pub fn of<K: Resource<DynamicType = ()>>(
        obj: &K,
        api_version: &'a str,
        kind: &'a str,
    ) -> Owner<'a> {
        Owner {
            api_version,
            kind,
            name: obj.name_any(),
            uid: obj.meta().uid.clone().unwrap_or_default(),
            deleting: obj.meta().deletion_timestamp.is_some(),
        }
    }
}

/// Claims `candidates` (all objects of the owner's namespace): returns those the owner
/// now controls. `finalizer`, if given, is added to adopted objects (the Job controller's
/// tracking finalizer).
pub async fn claim<K>(
    candidates: Vec<Arc<K>>,
    api: &Api<K>,
    owner: &Owner<'_>,
    selects: impl Fn(&K) -> bool,
    finalizer: Option<&str>,
) -> Result<Vec<Arc<K>>, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let mut owned = Vec::new();
    for obj in candidates {
        let matches = selects(&obj);
        match controller_of(obj.meta()) {
            Some(r) if r.uid == owner.uid => {
                if matches {
                    owned.push(obj);
                } else if !owner.deleting {
                    let refs: Vec<_> = obj
                        .owner_references()
                        .iter()
                        .filter(|r| r.uid != owner.uid)
                        .cloned()
                        .collect();
                    let patch =
                        json!({"metadata": {"ownerReferences": refs, "uid": obj.meta().uid}});
                    ignore_gone(
                        api.patch(
                            &obj.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await,
                    )?;
                }
            }
            Some(_) => {}
            None if matches && !owner.deleting && obj.meta().deletion_timestamp.is_none() => {
                let mut refs = obj.owner_references().to_vec();
                refs.push(owner_ref(
                    owner.api_version,
                    owner.kind,
                    &owner.name,
                    &owner.uid,
                ));
                let mut meta = json!({"ownerReferences": refs, "uid": obj.meta().uid});
                if let Some(f) = finalizer {
                    let mut fins = obj.finalizers().to_vec();
                    if !fins.iter().any(|x| x == f) {
                        fins.push(f.to_string());
                    }
                    meta["finalizers"] = json!(fins);
                    // The whole list is replaced: only against the version we read.
                    meta["resourceVersion"] = json!(obj.meta().resource_version);
                }
                // The uid makes the patch fail if the object was replaced meanwhile.
                match api
                    .patch(
                        &obj.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&json!({ "metadata": meta })),
                    )
                    .await
                {
                    Ok(p) => owned.push(Arc::new(p)),
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            None => {}
        }
    }
    Ok(owned)
}

/// Not found or conflicting (the object changed or went away): nothing to do now.
pub fn ignore_gone<T>(r: Result<T, kube::Error>) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The message of an API error, as an event shows it.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}
