//! The StatefulSet controller, following Kubernetes' pkg/controller/statefulset: pods
//! named `<set>-<ordinal>` with a stable hostname under the governing service, each with
//! its own PersistentVolumeClaims from volumeClaimTemplates (`<claim>-<set>-<ordinal>`,
//! created before the pod); OrderedReady (one at a time, each Running and Ready before
//! the next, removal from the highest ordinal) or Parallel management; RollingUpdate
//! from the highest ordinal down to the partition, or OnDelete; ControllerRevisions for
//! currentRevision/updateRevision and `kubectl rollout history|undo`; and
//! persistentVolumeClaimRetentionPolicy (claims are kept unless it says Delete).

use crate::claim::{self, api_message, ignore_gone, Owner};
use crate::history::{self, Revisions};
use crate::informer::{Change, Informer, Key};
use crate::podutil::{self, controller_of};
use crate::queue::{Outcome, Queue};
use crate::{events::Recorder, selector, Error};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub struct Controller {
    client: Client,
    sets: Informer<StatefulSet>,
    pods: Informer<Pod>,
    pvcs: Informer<PersistentVolumeClaim>,
    revisions: Informer<ControllerRevision>,
    recorder: Recorder,
    queue: Queue,
}

/// The set's name and the ordinal of a pod named `<set>-<ordinal>`.
pub fn parent_and_ordinal(pod_name: &str) -> Option<(&str, i32)> {
    let (parent, ord) = pod_name.rsplit_once('-')?;
    if ord.is_empty() || !ord.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((parent, ord.parse().ok()?))
}

fn ordinal_of(set: &StatefulSet, pod: &Pod) -> Option<i32> {
    parent_and_ordinal(pod.metadata.name.as_deref()?)
        .filter(|(p, _)| *p == set.name_any())
        .map(|(_, o)| o)
}

pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn running_and_ready(p: &Pod) -> bool {
    phase(p) == "Running" && podutil::is_ready(p)
}

fn terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

fn healthy(p: &Pod) -> bool {
    running_and_ready(p) && !terminating(p)
}

fn revision_of(p: &Pod) -> &str {
    p.labels()
        .get(history::HASH_LABEL)
        .map(String::as_str)
        .unwrap_or("")
}

/// What one sync decided, in Kubernetes' order: which ordinals to create, which pods to
/// delete. `monotonic` is OrderedReady: at most one step, and only when everything
/// before it is Running and Ready.
#[derive(Debug, PartialEq, Default)]
pub struct Step {
    pub create: Vec<i32>,
    pub delete: Vec<String>,
    /// Pods (finished) to delete so they are recreated.
    pub recreate: Vec<String>,
    /// Blocked on this pod (OrderedReady waiting for it).
    pub waiting_for: Option<String>,
}

/// One ordinal's pod as the planner sees it.
#[derive(Clone, Debug)]
pub struct Slot {
    pub ordinal: i32,
    pub name: String,
    pub exists: bool,
    pub healthy: bool,
    pub terminating: bool,
    pub finished: bool,
    pub revision: String,
}

/// Kubernetes' updateStatefulSet, as a pure function: living replicas in ascending
/// order, then condemned (out of range) ones from the highest ordinal, then the rolling
/// update from the highest ordinal down to `partition`.
pub fn plan(
    replicas: &[Slot],
    condemned: &[Slot],
    monotonic: bool,
    rolling: Option<(i32, &str)>,
) -> Step {
    let mut step = Step::default();
    for r in replicas {
        if r.exists && r.finished {
            if !r.terminating {
                step.recreate.push(r.name.clone());
            }
            return step;
        }
        if !r.exists {
            step.create.push(r.ordinal);
            if monotonic {
                return step;
            }
            continue;
        }
        if monotonic && (r.terminating || !r.healthy) {
            step.waiting_for = Some(r.name.clone());
            return step;
        }
    }
    let first_unhealthy = replicas
        .iter()
        .chain(condemned.iter())
        .find(|s| s.exists && !s.healthy)
        .map(|s| s.name.clone());
    let mut sorted: Vec<&Slot> = condemned.iter().filter(|c| c.exists).collect();
    sorted.sort_by_key(|c| c.ordinal);
    for c in sorted.iter().rev() {
        if c.terminating {
            if monotonic {
                step.waiting_for = Some(c.name.clone());
                return step;
            }
            continue;
        }
        if !c.healthy && monotonic && first_unhealthy.as_deref() != Some(&c.name) {
            step.waiting_for = first_unhealthy.clone();
            return step;
        }
        step.delete.push(c.name.clone());
        if monotonic {
            return step;
        }
    }
    if !step.create.is_empty() || !step.delete.is_empty() {
        return step;
    }
    if let Some((partition, update)) = rolling {
        for r in replicas.iter().rev() {
            if r.ordinal < partition {
                break;
            }
            if r.revision != update && !r.terminating {
                step.delete.push(r.name.clone());
                return step;
            }
            if !r.healthy {
                step.waiting_for = Some(r.name.clone());
                return step;
            }
        }
    }
    step
}

fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = history::data_of(rev)["spec"]["template"].clone();
    t.as_object_mut()?.remove("$patch");
    serde_json::from_value(t).ok()
}

fn sts_owner(pod: &Pod) -> Option<Key> {
    let r = controller_of(&pod.metadata)?;
    (r.kind == "StatefulSet" && r.api_version.starts_with("apps/"))
        .then(|| Key::new(pod.namespace().unwrap_or_default(), r.name.clone()))
}

impl Controller {
    pub fn new(
        client: Client,
        sets: Informer<StatefulSet>,
        pods: Informer<Pod>,
        pvcs: Informer<PersistentVolumeClaim>,
        revisions: Informer<ControllerRevision>,
        recorder: Recorder,
    ) -> Controller {
        Controller {
            client,
            sets,
            pods,
            pvcs,
            revisions,
            recorder,
            queue: Queue::new("statefulset"),
        }
    }

    pub fn register(self: &Arc<Self>) -> Queue {
        let q = self.queue.clone();
        self.sets.on_change(move |c| q.add(Key::of(c.object())));
        let (q, sets) = (self.queue.clone(), self.sets.clone());
        self.pods.on_change(move |c| {
            let pod = c.object();
            if let Change::Applied { old: Some(old), .. } = c {
                if let Some(k) = sts_owner(old) {
                    q.add(k);
                }
            }
            match sts_owner(pod) {
                Some(k) => q.add(k),
                None if !matches!(c, Change::Deleted(_)) => {
                    for s in sets.list_namespace(&pod.namespace().unwrap_or_default()) {
                        if selects(&s, pod.labels()) {
                            q.add(Key::of(&*s));
                        }
                    }
                }
                None => {}
            }
        });
        let (q, sets) = (self.queue.clone(), self.sets.clone());
        self.revisions.on_change(move |c| {
            let r = c.object();
            if let Some(o) = controller_of(&r.metadata).filter(|o| o.kind == "StatefulSet") {
                let k = Key::new(r.namespace().unwrap_or_default(), o.name.clone());
                if sets.get(&k).is_some() {
                    q.add(k);
                }
            }
        });
        self.queue.clone()
    }

    pub async fn reconcile(&self, key: Key) -> Outcome {
        let Some(set) = self.sets.get(&key) else {
            return Ok(None);
        };
        let spec = set.spec.clone().unwrap_or_default();
        if selector::is_empty(&spec.selector) {
            return Ok(None);
        }
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        let owner = Owner::of(&*set, "apps/v1", "StatefulSet");
        // Kubernetes claims only pods whose names are `<set>-<ordinal>`.
        let pods = claim::claim(
            self.pods.list_namespace(&key.namespace),
            &pods_api,
            &owner,
            |p| selects(&set, p.labels()) && ordinal_of(&set, p).is_some(),
            None,
        )
        .await?;
        let collisions = set
            .status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0);
        let data = history::template_patch(&spec.template);
        let revs = match history::sync(
            &self.client,
            &self.revisions,
            history::Spec {
                owner: Owner::of(&*set, "apps/v1", "StatefulSet"),
                namespace: key.namespace.clone(),
                selector: &spec.selector,
                template_labels: spec
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default(),
                annotations: set.annotations().clone(),
                hash: history::hash_data(&data, collisions),
                data,
            },
        )
        .await
        {
            Ok(r) => r,
            Err(Error::Other(m)) if m == history::COLLISION => {
                let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &key.namespace);
                let patch = json!({"status": {"collisionCount": collisions + 1}});
                api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                return Err(Error::Other(m));
            }
            Err(e) => return Err(e),
        };
        let update_rev = revs.current.clone();
        let current_rev = set
            .status
            .as_ref()
            .and_then(|s| s.current_revision.as_ref())
            .and_then(|name| revs.all.iter().find(|r| &r.name_any() == name))
            .cloned()
            .unwrap_or_else(|| update_rev.clone());
        if set.metadata.deletion_timestamp.is_none() {
            self.sync_pods(&set, &pods, &current_rev, &update_rev)
                .await?;
        }
        self.truncate_history(&set, &revs, &pods, &current_rev, &update_rev)
            .await?;
        self.update_status(&set, &pods, &current_rev, &update_rev)
            .await
    }

    async fn sync_pods(
        &self,
        set: &StatefulSet,
        pods: &[Arc<Pod>],
        current: &ControllerRevision,
        update: &ControllerRevision,
    ) -> Result<(), Error> {
        let spec = set.spec.clone().unwrap_or_default();
        let ns = set.namespace().unwrap_or_default();
        let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let monotonic = spec.pod_management_policy.as_deref() != Some("Parallel");
        let slot = |ordinal: i32, pod: Option<&Arc<Pod>>| Slot {
            ordinal,
            name: format!("{}-{ordinal}", set.name_any()),
            exists: pod.is_some(),
            healthy: pod.is_some_and(|p| healthy(p)),
            terminating: pod.is_some_and(|p| terminating(p)),
            finished: pod.is_some_and(|p| matches!(phase(p), "Succeeded" | "Failed")),
            revision: pod.map(|p| revision_of(p).to_string()).unwrap_or_default(),
        };
        let by_ordinal: BTreeMap<i32, &Arc<Pod>> = pods
            .iter()
            .filter_map(|p| ordinal_of(set, p).map(|o| (o, p)))
            .collect();
        let wanted: Vec<Slot> = (start..start + replicas)
            .map(|o| slot(o, by_ordinal.get(&o).copied()))
            .collect();
        let condemned: Vec<Slot> = by_ordinal
            .iter()
            .filter(|(o, _)| **o < start || **o >= start + replicas)
            .map(|(o, p)| slot(*o, Some(p)))
            .collect();
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        let partition = strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.partition)
            .unwrap_or(0);
        let rolling = (strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate")
            .then(|| (start + partition, update.name_any()));
        let step = plan(
            &wanted,
            &condemned,
            monotonic,
            rolling.as_ref().map(|(p, n)| (*p, n.as_str())),
        );
        // Pods that stay get their identity labels back if someone removed them.
        for (o, p) in &by_ordinal {
            if p.labels().get(POD_NAME_LABEL) != Some(&p.name_any()) && !terminating(p) {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                let patch = json!({"metadata": {"labels": {POD_NAME_LABEL: p.name_any(), POD_INDEX_LABEL: o.to_string()}}});
                ignore_gone(
                    api.patch(
                        &p.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await,
                )?;
            }
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        for name in step.recreate.iter().chain(step.delete.iter()) {
            let ordinal = parent_and_ordinal(name).map(|(_, o)| o).unwrap_or(-1);
            let scaled_away = ordinal < start || ordinal >= start + replicas;
            if scaled_away {
                self.retain_or_release_claims(set, ordinal, by_ordinal.get(&ordinal).copied())
                    .await?;
            }
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => self.recorder.normal(
                    set,
                    "SuccessfulDelete",
                    format!(
                        "delete Pod {name} in StatefulSet {} successful",
                        set.name_any()
                    ),
                ),
                Err(e) if claim::is_not_found(&e) => {}
                Err(e) => {
                    self.recorder.warning(
                        set,
                        "FailedDelete",
                        format!(
                            "delete Pod {name} in StatefulSet {} failed error: {}",
                            set.name_any(),
                            api_message(&e)
                        ),
                    );
                    return Err(e.into());
                }
            }
        }
        for ordinal in &step.create {
            // Pods below the partition are made at the current revision.
            let rev = match &rolling {
                Some((p, _)) if *ordinal < *p => current,
                _ => update,
            };
            let template = template_of(rev).unwrap_or_else(|| spec.template.clone());
            self.create_claims(set, *ordinal).await?;
            let pod = pod_for(set, &template, *ordinal, &rev.name_any());
            match api.create(&PostParams::default(), &pod).await {
                Ok(p) => self.recorder.normal(
                    set,
                    "SuccessfulCreate",
                    format!(
                        "create Pod {} in StatefulSet {} successful",
                        p.name_any(),
                        set.name_any()
                    ),
                ),
                // Still in the cache's future: the next sync sees it.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => {
                    self.recorder.warning(
                        set,
                        "FailedCreate",
                        format!(
                            "create Pod {} in StatefulSet {} failed error: {}",
                            pod.metadata.name.clone().unwrap_or_default(),
                            set.name_any(),
                            api_message(&e)
                        ),
                    );
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// Creates the pod's claims that do not exist yet.
    async fn create_claims(&self, set: &StatefulSet, ordinal: i32) -> Result<(), Error> {
        let ns = set.namespace().unwrap_or_default();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
        let spec = set.spec.clone().unwrap_or_default();
        for t in spec.volume_claim_templates.iter().flatten() {
            let tname = t.metadata.name.clone().unwrap_or_default();
            let name = claim_name(&tname, &set.name_any(), ordinal);
            if let Some(existing) = self.pvcs.get(&Key::new(ns.clone(), name.clone())) {
                if existing.metadata.deletion_timestamp.is_some() {
                    return Err(Error::Other(format!(
                        "claim {name} is being deleted; waiting"
                    )));
                }
                continue;
            }
            let mut labels = t.metadata.labels.clone().unwrap_or_default();
            for (k, v) in spec.selector.match_labels.iter().flatten() {
                labels.insert(k.clone(), v.clone());
            }
            let mut owners = Vec::new();
            if retention(set).0 == "Delete" {
                owners.push(set_ref(set));
            }
            let pvc = PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations: t.metadata.annotations.clone(),
                    owner_references: (!owners.is_empty()).then_some(owners),
                    ..Default::default()
                },
                spec: t.spec.clone(),
                status: None,
            };
            let pod = format!("{}-{ordinal}", set.name_any());
            match api.create(&PostParams::default(), &pvc).await {
                Ok(_) => self.recorder.normal(
                    set,
                    "SuccessfulCreate",
                    format!(
                        "create Claim {name} Pod {pod} in StatefulSet {} success",
                        set.name_any()
                    ),
                ),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => {
                    self.recorder.warning(
                        set,
                        "FailedCreate",
                        format!(
                            "create Claim {name} for Pod {pod} in StatefulSet {} failed error: {}",
                            set.name_any(),
                            api_message(&e)
                        ),
                    );
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// Before a pod is removed by scale down: with whenScaled Delete its claims get the
    /// pod as owner, so the garbage collector removes them after it.
    async fn retain_or_release_claims(
        &self,
        set: &StatefulSet,
        ordinal: i32,
        pod: Option<&Arc<Pod>>,
    ) -> Result<(), Error> {
        let (_, when_scaled) = retention(set);
        let Some(pod) = pod.filter(|_| when_scaled == "Delete") else {
            return Ok(());
        };
        let ns = set.namespace().unwrap_or_default();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
        for t in set
            .spec
            .iter()
            .flat_map(|s| s.volume_claim_templates.iter().flatten())
        {
            let name = claim_name(
                t.metadata.name.as_deref().unwrap_or_default(),
                &set.name_any(),
                ordinal,
            );
            let Some(pvc) = self.pvcs.get(&Key::new(ns.clone(), name.clone())) else {
                continue;
            };
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if pvc.owner_references().iter().any(|r| r.uid == uid) {
                continue;
            }
            let mut refs = pvc.owner_references().to_vec();
            refs.push(OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: pod.name_any(),
                uid,
                controller: Some(false),
                block_owner_deletion: Some(true),
            });
            let patch = json!({"metadata": {"ownerReferences": refs}});
            ignore_gone(
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await,
            )?;
        }
        Ok(())
    }

    async fn truncate_history(
        &self,
        set: &StatefulSet,
        revs: &Revisions,
        pods: &[Arc<Pod>],
        current: &ControllerRevision,
        update: &ControllerRevision,
    ) -> Result<(), Error> {
        let limit = set
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10);
        let mut in_use: std::collections::HashSet<String> =
            pods.iter().map(|p| revision_of(p).to_string()).collect();
        in_use.insert(current.name_any());
        in_use.insert(update.name_any());
        history::truncate(
            &self.client,
            &set.namespace().unwrap_or_default(),
            revs,
            limit,
            &in_use,
            |r| r.name_any(),
        )
        .await
    }

    async fn update_status(
        &self,
        set: &StatefulSet,
        pods: &[Arc<Pod>],
        current: &ControllerRevision,
        update: &ControllerRevision,
    ) -> Outcome {
        let spec = set.spec.clone().unwrap_or_default();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let now = Timestamp::now();
        let mut st = StatefulSetStatus {
            observed_generation: set.metadata.generation,
            collision_count: set.status.as_ref().and_then(|s| s.collision_count),
            conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
            ..Default::default()
        };
        let (mut ready, mut available, mut cur, mut upd) = (0, 0, 0, 0);
        let mut requeue = None;
        for p in pods {
            st.replicas += 1;
            if running_and_ready(p) {
                ready += 1;
                if podutil::is_available(p, min_ready, now) {
                    available += 1;
                } else if let Some(s) = podutil::seconds_until_available(p, min_ready, now) {
                    requeue = Some(Duration::from_secs(s as u64) + Duration::from_millis(100));
                }
            }
            if !terminating(p) {
                if revision_of(p) == current.name_any() {
                    cur += 1;
                }
                if revision_of(p) == update.name_any() {
                    upd += 1;
                }
            }
        }
        let mut current_name = current.name_any();
        let rolling = spec
            .update_strategy
            .as_ref()
            .and_then(|u| u.type_.as_deref())
            .unwrap_or("RollingUpdate")
            == "RollingUpdate";
        // A finished rolling update makes the update revision current.
        if rolling
            && upd == st.replicas
            && ready == st.replicas
            && st.replicas == spec.replicas.unwrap_or(1)
        {
            current_name = update.name_any();
            cur = upd;
        }
        st.ready_replicas = Some(ready).filter(|n| *n > 0);
        st.available_replicas = Some(available);
        st.current_replicas = Some(cur).filter(|n| *n > 0);
        st.updated_replicas = Some(upd).filter(|n| *n > 0);
        st.current_revision = Some(current_name);
        st.update_revision = Some(update.name_any());
        let old = set.status.clone().unwrap_or_default();
        let norm = |s: &StatefulSetStatus| {
            let mut s = s.clone();
            s.available_replicas = s.available_replicas.filter(|n| *n > 0);
            s
        };
        if norm(&st) != norm(&old) {
            let api: Api<StatefulSet> =
                Api::namespaced(self.client.clone(), &set.namespace().unwrap_or_default());
            let patch = json!({"status": {
                "observedGeneration": st.observed_generation,
                "replicas": st.replicas,
                "readyReplicas": st.ready_replicas,
                "availableReplicas": st.available_replicas,
                "currentReplicas": st.current_replicas,
                "updatedReplicas": st.updated_replicas,
                "currentRevision": st.current_revision,
                "updateRevision": st.update_revision,
                "collisionCount": st.collision_count,
            }});
            match api
                .patch_status(
                    &set.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if claim::is_not_found(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(requeue)
    }
}

/// (whenDeleted, whenScaled).
fn retention(set: &StatefulSet) -> (String, String) {
    let p = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    (
        p.and_then(|p| p.when_deleted.clone())
            .unwrap_or_else(|| "Retain".into()),
        p.and_then(|p| p.when_scaled.clone())
            .unwrap_or_else(|| "Retain".into()),
    )
}

fn set_ref(set: &StatefulSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: set.name_any(),
        uid: set.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn selects(set: &StatefulSet, labels: &BTreeMap<String, String>) -> bool {
    set.spec
        .as_ref()
        .is_some_and(|s| !selector::is_empty(&s.selector) && selector::matches(&s.selector, labels))
}

/// The pod for one ordinal (Kubernetes' newVersionedStatefulSetPod): stable name and
/// hostname, the governing service as subdomain, identity labels, and its claims as
/// volumes.
pub fn pod_for(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let name = format!("{}-{ordinal}", set.name_any());
    let spec = set.spec.clone().unwrap_or_default();
    let tm = template.metadata.clone().unwrap_or_default();
    let mut pod_spec = template.spec.clone().unwrap_or_default();
    let mut labels = tm.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(history::HASH_LABEL.into(), revision.into());
    pod_spec.hostname = Some(name.clone());
    if !spec.service_name.as_deref().unwrap_or("").is_empty() {
        pod_spec.subdomain = spec.service_name.clone();
    }
    let mut volumes: Vec<Volume> = pod_spec.volumes.take().unwrap_or_default();
    for t in spec.volume_claim_templates.iter().flatten() {
        let tname = t.metadata.name.clone().unwrap_or_default();
        let v = Volume {
            name: tname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&tname, &set.name_any(), ordinal),
                read_only: None,
            }),
            ..Default::default()
        };
        match volumes.iter_mut().find(|x| x.name == tname) {
            Some(x) => *x = v,
            None => volumes.push(v),
        }
    }
    if !volumes.is_empty() {
        pod_spec.volumes = Some(volumes);
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.namespace(),
            labels: Some(labels),
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![set_ref(set)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ordinal: i32, exists: bool, healthy: bool, rev: &str) -> Slot {
        Slot {
            ordinal,
            name: format!("web-{ordinal}"),
            exists,
            healthy,
            terminating: false,
            finished: false,
            revision: rev.into(),
        }
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_in_order() {
        let r = [
            s(0, false, false, ""),
            s(1, false, false, ""),
            s(2, false, false, ""),
        ];
        assert_eq!(plan(&r, &[], true, None).create, vec![0]);
        // web-0 exists but is not Ready: wait for it, do not create web-1.
        let r = [
            s(0, true, false, "a"),
            s(1, false, false, ""),
            s(2, false, false, ""),
        ];
        let step = plan(&r, &[], true, None);
        assert!(step.create.is_empty());
        assert_eq!(step.waiting_for.as_deref(), Some("web-0"));
        let r = [
            s(0, true, true, "a"),
            s(1, false, false, ""),
            s(2, false, false, ""),
        ];
        assert_eq!(plan(&r, &[], true, None).create, vec![1]);
        // Parallel creates every missing ordinal at once.
        let r = [
            s(0, true, false, "a"),
            s(1, false, false, ""),
            s(2, false, false, ""),
        ];
        assert_eq!(plan(&r, &[], false, None).create, vec![1, 2]);
    }

    #[test]
    fn scale_down_removes_the_highest_ordinal_first() {
        let r = [s(0, true, true, "a")];
        let c = [s(1, true, true, "a"), s(2, true, true, "a")];
        assert_eq!(plan(&r, &c, true, None).delete, vec!["web-2".to_string()]);
        assert_eq!(
            plan(&r, &c, false, None).delete,
            vec!["web-2".to_string(), "web-1".to_string()]
        );
        // OrderedReady waits while the one being removed terminates.
        let mut t = s(2, true, true, "a");
        t.terminating = true;
        let c = [s(1, true, true, "a"), t];
        let step = plan(&r, &c, true, None);
        assert!(step.delete.is_empty());
        // And never scales down past an unhealthy replica.
        let r = [s(0, true, false, "a")];
        let c = [s(1, true, true, "a")];
        assert!(plan(&r, &c, true, None).delete.is_empty());
    }

    #[test]
    fn rolling_update_from_highest_ordinal_to_partition() {
        let r = [
            s(0, true, true, "old"),
            s(1, true, true, "old"),
            s(2, true, true, "old"),
        ];
        assert_eq!(
            plan(&r, &[], true, Some((0, "new"))).delete,
            vec!["web-2".to_string()]
        );
        let r = [
            s(0, true, true, "old"),
            s(1, true, true, "old"),
            s(2, true, true, "new"),
        ];
        assert_eq!(
            plan(&r, &[], true, Some((0, "new"))).delete,
            vec!["web-1".to_string()]
        );
        // The partition keeps lower ordinals at the old revision.
        assert!(plan(&r, &[], true, Some((2, "new"))).delete.is_empty());
        // An updated pod not yet Ready holds the update.
        let r = [
            s(0, true, true, "old"),
            s(1, true, true, "old"),
            s(2, true, false, "new"),
        ];
        let step = plan(&r, &[], false, Some((0, "new")));
        assert!(step.delete.is_empty());
        assert_eq!(step.waiting_for.as_deref(), Some("web-2"));
    }

    #[test]
    fn finished_pods_are_recreated() {
        let mut f = s(0, true, false, "a");
        f.finished = true;
        let step = plan(&[f, s(1, false, false, "")], &[], false, None);
        assert_eq!(step.recreate, vec!["web-0".to_string()]);
        assert!(step.create.is_empty());
    }

    #[test]
    fn names_and_pods() {
        assert_eq!(parent_and_ordinal("web-12"), Some(("web", 12)));
        assert_eq!(parent_and_ordinal("my-db-0"), Some(("my-db", 0)));
        assert_eq!(parent_and_ordinal("web-x"), None);
        assert_eq!(claim_name("www", "web", 2), "www-web-2");
        let mut set = StatefulSet::default();
        set.metadata.name = Some("web".into());
        let mut spec = k8s_openapi::api::apps::v1::StatefulSetSpec {
            service_name: Some("nginx".into()),
            ..Default::default()
        };
        let mut claim = PersistentVolumeClaim::default();
        claim.metadata.name = Some("www".into());
        spec.volume_claim_templates = Some(vec![claim]);
        set.spec = Some(spec);
        let p = pod_for(&set, &PodTemplateSpec::default(), 1, "web-abc");
        assert_eq!(p.metadata.name.as_deref(), Some("web-1"));
        let ps = p.spec.clone().unwrap();
        assert_eq!(ps.hostname.as_deref(), Some("web-1"));
        assert_eq!(ps.subdomain.as_deref(), Some("nginx"));
        assert_eq!(
            ps.volumes.unwrap()[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "www-web-1"
        );
        assert_eq!(
            p.labels().get(POD_NAME_LABEL).map(String::as_str),
            Some("web-1")
        );
        assert_eq!(
            p.labels().get(POD_INDEX_LABEL).map(String::as_str),
            Some("1")
        );
        assert_eq!(
            p.labels().get(history::HASH_LABEL).map(String::as_str),
            Some("web-abc")
        );
    }
}
