//! The local-path provisioner and binder: a PersistentVolumeClaim of the `local-path`
//! StorageClass (also the default class, which this controller creates) gets a hostPath
//! PersistentVolume under the configured volumes directory, pinned by node affinity to
//! the node of the first pod that uses it (WaitForFirstConsumer) and bound both ways
//! (pv.spec.claimRef, pvc.spec.volumeName, both phases Bound). When the claim goes, a
//! volume with reclaimPolicy Delete is deleted with its directory; Retain leaves it
//! Released. It plays the parts of Kubernetes' PV controller and of Rancher's
//! local-path-provisioner for this one class.

use crate::informer::{Change, Informer, Key};
use crate::queue::{Outcome, Queue};
use crate::{events::Recorder, Error};
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, Pod, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const CLASS: &str = "local-path";
pub const PROVISIONER: &str = "corral.dev/local-path";
const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const HOSTNAME: &str = "kubernetes.io/hostname";

pub struct Controller {
    client: Client,
    pvcs: Informer<PersistentVolumeClaim>,
    pvs: Informer<PersistentVolume>,
    classes: Informer<StorageClass>,
    pods: Informer<Pod>,
    recorder: Recorder,
    dir: PathBuf,
    /// Keys: ("", pv name) for volumes; (namespace, claim) for claims.
    queue: Queue,
}

fn pv_key(name: &str) -> Key {
    Key::new("\0pv", name)
}

impl Controller {
    pub fn new(
        client: Client,
        pvcs: Informer<PersistentVolumeClaim>,
        pvs: Informer<PersistentVolume>,
        classes: Informer<StorageClass>,
        pods: Informer<Pod>,
        recorder: Recorder,
        dir: PathBuf,
    ) -> Controller {
        Controller {
            client,
            pvcs,
            pvs,
            classes,
            pods,
            recorder,
            dir,
            queue: Queue::new("local-path"),
        }
    }

    pub fn register(self: &Arc<Self>) -> Queue {
        let (q, pvs) = (self.queue.clone(), self.pvs.clone());
        self.pvcs.on_change(move |c| {
            q.add(Key::of(c.object()));
            // A claim gone releases its volume.
            if let Change::Deleted(claim) = c {
                for pv in pvs.list(|pv| {
                    pv.spec
                        .as_ref()
                        .and_then(|s| s.claim_ref.as_ref())
                        .is_some_and(|r| r.uid == claim.metadata.uid)
                }) {
                    q.add(pv_key(&pv.name_any()));
                }
            }
        });
        let q = self.queue.clone();
        self.pvs.on_change(move |c| {
            let pv = c.object();
            q.add(pv_key(&pv.name_any()));
            if let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
                q.add(Key::new(
                    r.namespace.clone().unwrap_or_default(),
                    r.name.clone().unwrap_or_default(),
                ));
            }
        });
        // A pod scheduled with a claim picks the node of a WaitForFirstConsumer volume.
        let q = self.queue.clone();
        self.pods.on_change(move |c| {
            if let Change::Applied { new, .. } = c {
                let spec = new.spec.as_ref();
                if spec.and_then(|s| s.node_name.as_ref()).is_none() {
                    return;
                }
                for v in spec.and_then(|s| s.volumes.as_ref()).into_iter().flatten() {
                    if let Some(pvc) = &v.persistent_volume_claim {
                        q.add(Key::new(
                            new.namespace().unwrap_or_default(),
                            pvc.claim_name.clone(),
                        ));
                    }
                }
            }
        });
        let (q, pvcs) = (self.queue.clone(), self.pvcs.clone());
        self.classes.on_change(move |_| {
            for c in pvcs.list(|_| true) {
                q.add(Key::of(&*c));
            }
        });
        self.queue.clone()
    }

    /// Creates the `local-path` StorageClass, the default, unless it exists.
    pub async fn ensure_class(&self) -> Result<(), Error> {
        let api: Api<StorageClass> = Api::all(self.client.clone());
        if api.get_opt(CLASS).await?.is_some() {
            return Ok(());
        }
        match api.create(&PostParams::default(), &builtin_class()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The class a claim asks for (the default one when it names none), if this
    /// provisioner serves it. Without a StorageClass of that name the built-in
    /// `local-path` class stands in (an API server may not serve storage.k8s.io).
    fn class_for(&self, pvc: &PersistentVolumeClaim) -> Option<StorageClass> {
        let name = pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone());
        let found = match &name {
            Some(c) => self
                .classes
                .get(&Key::new("", c.clone()))
                .map(|c| (*c).clone()),
            None => self
                .classes
                .list(|c| c.annotations().get(DEFAULT_CLASS).map(String::as_str) == Some("true"))
                .into_iter()
                .next()
                .map(|c| (*c).clone()),
        };
        match found {
            Some(c) => (c.provisioner == PROVISIONER).then_some(c),
            None if name.as_deref().is_none_or(|n| n == CLASS) => Some(builtin_class()),
            None => None,
        }
    }
}

/// Whether the API server serves StorageClasses.
pub async fn classes_served(client: &Client) -> bool {
    let api: Api<StorageClass> = Api::all(client.clone());
    match api.list(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(kube::Error::Api(e)) if e.code == 404 => {
            tracing::warn!("the API server does not serve storage.k8s.io StorageClasses; using the built-in local-path class");
            false
        }
        Err(_) => true,
    }
}

fn builtin_class() -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(CLASS.into()),
            annotations: Some([(DEFAULT_CLASS.to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        provisioner: PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("WaitForFirstConsumer".into()),
        ..Default::default()
    }
}

impl Controller {
    pub async fn reconcile(&self, key: Key) -> Outcome {
        if key.namespace == "\0pv" {
            return self.reconcile_volume(&key.name).await;
        }
        let Some(pvc) = self.pvcs.get(&key) else {
            return Ok(None);
        };
        if pvc.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let spec = pvc.spec.clone().unwrap_or_default();
        if let Some(vol) = spec.volume_name.as_ref().filter(|v| !v.is_empty()) {
            return self.finish_binding(&pvc, vol).await;
        }
        let Some(class) = self.class_for(&pvc) else {
            return Ok(None);
        };
        let wait = class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer");
        let node = pvc
            .annotations()
            .get(SELECTED_NODE)
            .cloned()
            .or_else(|| self.consumer_node(&pvc));
        if wait && node.is_none() {
            // A pod that uses it will be scheduled first; its node decides.
            return Ok(None);
        }
        self.provision(&pvc, &class, node.as_deref()).await
    }

    /// The node of a scheduled pod that uses the claim.
    fn consumer_node(&self, pvc: &PersistentVolumeClaim) -> Option<String> {
        let ns = pvc.namespace().unwrap_or_default();
        let name = pvc.name_any();
        self.pods
            .list_namespace(&ns)
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .find(|p| {
                p.spec.as_ref().is_some_and(|s| {
                    s.volumes.iter().flatten().any(|v| {
                        v.persistent_volume_claim
                            .as_ref()
                            .is_some_and(|c| c.claim_name == name)
                    })
                })
            })
            .and_then(|p| p.spec.as_ref()?.node_name.clone())
    }

    async fn provision(
        &self,
        pvc: &PersistentVolumeClaim,
        class: &StorageClass,
        node: Option<&str>,
    ) -> Outcome {
        let spec = pvc.spec.clone().unwrap_or_default();
        let pv_name = format!("pvc-{}", pvc.metadata.uid.clone().unwrap_or_default());
        let path = self.dir.join(&pv_name);
        let storage = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage").cloned());
        let node_affinity = node.map(|n| VolumeNodeAffinity {
            required: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: HOSTNAME.into(),
                        operator: "In".into(),
                        values: Some(vec![n.to_string()]),
                    }]),
                    match_fields: None,
                }],
            }),
        });
        let pv = PersistentVolume {
            metadata: ObjectMeta {
                name: Some(pv_name.clone()),
                annotations: Some([(PROVISIONED_BY.to_string(), PROVISIONER.to_string())].into()),
                finalizers: None,
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: storage.map(|s| BTreeMap::from([("storage".to_string(), s)])),
                access_modes: spec.access_modes.clone(),
                persistent_volume_reclaim_policy: Some(
                    class
                        .reclaim_policy
                        .clone()
                        .unwrap_or_else(|| "Delete".into()),
                ),
                storage_class_name: Some(class.name_any()),
                volume_mode: spec.volume_mode.clone(),
                host_path: Some(HostPathVolumeSource {
                    path: path.to_string_lossy().into_owned(),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                node_affinity,
                claim_ref: Some(ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("PersistentVolumeClaim".into()),
                    name: pvc.metadata.name.clone(),
                    namespace: pvc.metadata.namespace.clone(),
                    uid: pvc.metadata.uid.clone(),
                    resource_version: pvc.metadata.resource_version.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        };
        let dir = path.clone();
        tokio::task::spawn_blocking(move || std::fs::create_dir_all(&dir))
            .await
            .map_err(|e| Error::Other(e.to_string()))?
            .map_err(|e| Error::Other(format!("creating {}: {e}", path.display())))?;
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        match api.create(&PostParams::default(), &pv).await {
            Ok(_) => self.recorder.normal(
                pvc,
                "ProvisioningSucceeded",
                format!("Successfully provisioned volume {pv_name}"),
            ),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                self.recorder.warning(
                    pvc,
                    "ProvisioningFailed",
                    format!(
                        "failed to provision volume with StorageClass {:?}: {}",
                        class.name_any(),
                        crate::claim::api_message(&e)
                    ),
                );
                return Err(e.into());
            }
        }
        // Bind the claim to it.
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &pvc.namespace().unwrap_or_default());
        let patch = json!({
            "metadata": {
                "uid": pvc.metadata.uid,
                "annotations": {
                    "pv.kubernetes.io/bind-completed": "yes",
                    "pv.kubernetes.io/bound-by-controller": "yes",
                    "volume.kubernetes.io/storage-provisioner": PROVISIONER,
                    "volume.beta.kubernetes.io/storage-provisioner": PROVISIONER,
                }
            },
            "spec": {"volumeName": pv_name},
        });
        let bound = claims
            .patch(
                &pvc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        self.finish_binding(&bound, &pv_name).await
    }

    /// Both sides Bound once the claim names a volume that names it back.
    async fn finish_binding(&self, pvc: &PersistentVolumeClaim, vol: &str) -> Outcome {
        let Some(pv) = self.pvs.get(&Key::new("", vol)) else {
            // The volume is not in the cache yet; its arrival queues the claim again.
            return Ok(None);
        };
        let refers = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some_and(|r| r.uid == pvc.metadata.uid);
        if !refers {
            return Ok(None);
        }
        if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
            let api: Api<PersistentVolume> = Api::all(self.client.clone());
            let patch = json!({"status": {"phase": "Bound"}});
            api.patch_status(vol, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
            let claims: Api<PersistentVolumeClaim> =
                Api::namespaced(self.client.clone(), &pvc.namespace().unwrap_or_default());
            let spec = pv.spec.clone().unwrap_or_default();
            let patch = json!({"status": {
                "phase": "Bound",
                "accessModes": spec.access_modes,
                "capacity": spec.capacity,
            }});
            claims
                .patch_status(
                    &pvc.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
        }
        Ok(None)
    }

    /// A volume whose claim is gone: deleted with its directory (Delete) or Released.
    async fn reconcile_volume(&self, name: &str) -> Outcome {
        let Some(pv) = self.pvs.get(&Key::new("", name)) else {
            return Ok(None);
        };
        if pv.annotations().get(PROVISIONED_BY).map(String::as_str) != Some(PROVISIONER) {
            return Ok(None);
        }
        let spec = pv.spec.clone().unwrap_or_default();
        let Some(r) = spec.claim_ref.as_ref() else {
            return Ok(None);
        };
        let ns = r.namespace.clone().unwrap_or_default();
        let claim_name = r.name.clone().unwrap_or_default();
        if let Some(c) = self.pvcs.get(&Key::new(ns.clone(), claim_name.clone())) {
            if c.metadata.uid == r.uid {
                return Ok(None);
            }
        }
        // The cache may lag: ask the API before letting data go.
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
        if let Some(c) = claims.get_opt(&claim_name).await? {
            if c.metadata.uid == r.uid {
                return Ok(None);
            }
        }
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        if spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete") {
            if let Some(path) = spec.host_path.as_ref().map(|h| PathBuf::from(&h.path)) {
                self.remove_dir(&path).await?;
            }
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        } else if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Released") {
            let patch = json!({"status": {"phase": "Released"}});
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Ok(None)
    }

    /// Removes a volume's directory, only ever one directly under the volumes directory.
    async fn remove_dir(&self, path: &Path) -> Result<(), Error> {
        if path.parent() != Some(self.dir.as_path()) {
            tracing::warn!(path = %path.display(), "not removing a volume outside the volumes directory");
            return Ok(());
        }
        let p = path.to_path_buf();
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .await
        .map_err(|e| Error::Other(e.to_string()))?
        .map_err(|e| Error::Other(format!("removing {}: {e}", path.display())))
    }
}
