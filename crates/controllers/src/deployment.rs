//! The Deployment controller: one ReplicaSet per pod template (named by a hash of it),
//! rolled from old to new by the RollingUpdate (maxSurge/maxUnavailable) or Recreate
//! strategy, with revisions kubectl's `rollout history|undo` read, proportional scaling
//! while a rollout is under way, pause/resume, revisionHistoryLimit, and the Available
//! and Progressing conditions (progressDeadlineSeconds) `kubectl rollout status` reads.
//! It follows Kubernetes' pkg/controller/deployment step by step.

use crate::informer::{Change, Key};
use crate::podutil::{controller_of, owner_ref};
use crate::queue::{Outcome, Queue};
use crate::{events::Recorder, selector, Error, Informers};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";

pub struct Controller {
    client: Client,
    inf: Informers,
    recorder: Recorder,
    queue: Queue,
}

/// One ReplicaSet as this reconcile sees it: its scale is updated locally as the
/// reconcile scales it, so later steps count what was just decided.
#[derive(Clone)]
struct Rs {
    obj: Arc<ReplicaSet>,
    replicas: i32,
}

impl Rs {
    fn name(&self) -> String {
        self.obj.name_any()
    }
    fn available(&self) -> i32 {
        status_of(&self.obj).available_replicas.unwrap_or(0)
    }
    fn ready(&self) -> i32 {
        status_of(&self.obj).ready_replicas.unwrap_or(0)
    }
    fn status_replicas(&self) -> i32 {
        status_of(&self.obj).replicas
    }
    fn revision(&self) -> i64 {
        revision_of(&self.obj.metadata)
    }
    fn created(&self) -> i64 {
        self.obj
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_nanosecond() as i64)
            .unwrap_or(0)
    }
}

fn status_of(rs: &ReplicaSet) -> k8s_openapi::api::apps::v1::ReplicaSetStatus {
    rs.status.clone().unwrap_or_default()
}

fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

struct Plan<'a> {
    d: &'a Deployment,
    replicas: i32,
    max_surge: i32,
    max_unavailable: i32,
    rolling: bool,
}

impl Controller {
    pub fn new(client: Client, inf: Informers, recorder: Recorder) -> Controller {
        Controller {
            client,
            inf,
            recorder,
            queue: Queue::new("deployment"),
        }
    }

    pub fn register(self: &Arc<Self>) -> Queue {
        let q = self.queue.clone();
        self.inf
            .deployments
            .on_change(move |c| q.add(Key::of(c.object())));
        let (q, deps) = (self.queue.clone(), self.inf.deployments.clone());
        self.inf.replicasets.on_change(move |c| {
            let rs = c.object();
            let ns = rs.namespace().unwrap_or_default();
            if let Change::Applied { old: Some(old), .. } = c {
                if let Some(o) = deployment_owner(old) {
                    q.add(Key::new(ns.clone(), o));
                }
            }
            match deployment_owner(rs) {
                Some(o) => q.add(Key::new(ns, o)),
                None => {
                    for d in deps.list_namespace(&ns) {
                        let sel = d.spec.as_ref().map(|s| &s.selector);
                        if sel.is_some_and(|s| {
                            !selector::is_empty(s) && selector::matches(s, rs.labels())
                        }) {
                            q.add(Key::of(&*d));
                        }
                    }
                }
            }
        });
        // Recreate waits for the old pods to be gone: their deletion must wake it.
        let (q, rss) = (self.queue.clone(), self.inf.replicasets.clone());
        self.inf.pods.on_change(move |c| {
            if let Change::Deleted(pod) = c {
                let ns = pod.namespace().unwrap_or_default();
                if let Some(r) = controller_of(&pod.metadata).filter(|r| r.kind == "ReplicaSet") {
                    if let Some(rs) = rss.get(&Key::new(ns.clone(), r.name.clone())) {
                        if let Some(d) = deployment_owner(&rs) {
                            q.add(Key::new(ns, d));
                        }
                    }
                }
            }
        });
        self.queue.clone()
    }

    pub async fn reconcile(&self, key: Key) -> Outcome {
        let Some(d) = self.inf.deployments.get(&key) else {
            return Ok(None);
        };
        let spec = d.spec.clone().unwrap_or_default();
        if selector::is_empty(&spec.selector) {
            self.recorder.warning(
                &*d,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.".into(),
            );
            return Ok(None);
        }
        let mut rss = self.claim_replicasets(&d).await?;
        if d.metadata.deletion_timestamp.is_some() {
            return self.sync_status(&d, &rss, None).await;
        }
        let plan = plan(&d);
        if spec.paused == Some(true) || self.is_scaling_event(&plan, &rss) {
            return self.sync_scale(&plan, &mut rss).await;
        }
        if plan.rolling {
            self.rollout_rolling(&plan, rss).await
        } else {
            self.rollout_recreate(&plan, rss).await
        }
    }

    /// The ReplicaSets this Deployment controls, adopting orphans its selector matches
    /// and releasing owned ones it no longer matches.
    async fn claim_replicasets(&self, d: &Deployment) -> Result<Vec<Rs>, Error> {
        let ns = d.namespace().unwrap_or_default();
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let sel = d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &ns);
        let mut out = Vec::new();
        for rs in self.inf.replicasets.list_namespace(&ns) {
            let matches = selector::matches(&sel, rs.labels());
            match controller_of(&rs.metadata) {
                Some(r) if r.uid == uid => {
                    if matches {
                        out.push(rs);
                    } else if d.metadata.deletion_timestamp.is_none() {
                        let refs: Vec<_> = rs
                            .owner_references()
                            .iter()
                            .filter(|r| r.uid != uid)
                            .cloned()
                            .collect();
                        let patch =
                            json!({"metadata": {"ownerReferences": refs, "uid": rs.metadata.uid}});
                        ignore_gone(
                            api.patch(
                                &rs.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(&patch),
                            )
                            .await,
                        )?;
                    }
                }
                Some(_) => {}
                None if matches
                    && d.metadata.deletion_timestamp.is_none()
                    && rs.metadata.deletion_timestamp.is_none() =>
                {
                    let mut refs = rs.owner_references().to_vec();
                    refs.push(owner_ref("apps/v1", "Deployment", &d.name_any(), &uid));
                    let patch =
                        json!({"metadata": {"ownerReferences": refs, "uid": rs.metadata.uid}});
                    match api
                        .patch(
                            &rs.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await
                    {
                        Ok(r) => out.push(Arc::new(r)),
                        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                None => {}
            }
        }
        Ok(out
            .into_iter()
            .map(|obj| Rs {
                replicas: obj.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                obj,
            })
            .collect())
    }

    /// A scaling event: an active ReplicaSet was last sized for another replica count.
    fn is_scaling_event(&self, plan: &Plan, rss: &[Rs]) -> bool {
        rss.iter().filter(|r| r.replicas > 0).any(|r| {
            r.obj
                .annotations()
                .get(DESIRED_REPLICAS)
                .and_then(|v| v.parse::<i32>().ok())
                .is_some_and(|want| want != plan.replicas)
        })
    }

    /// Paused or resized: scale what exists, proportionally, without rolling.
    async fn sync_scale(&self, plan: &Plan<'_>, rss: &mut [Rs]) -> Outcome {
        let (new, _) = split_new(plan.d, rss);
        let new_name = new.map(|i| rss[i].name());
        self.scale(plan, rss, new_name.as_deref()).await?;
        if plan.d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
            self.cleanup(plan.d, rss).await?;
        }
        let new = new.map(|i| rss[i].clone());
        self.sync_status(plan.d, rss, new.as_ref()).await
    }

    /// Proportional scaling (Kubernetes' `scale`): spread a change of spec.replicas over
    /// the active ReplicaSets by their share, the rest to the largest.
    async fn scale(&self, plan: &Plan<'_>, rss: &mut [Rs], new: Option<&str>) -> Result<(), Error> {
        let active: Vec<usize> = (0..rss.len()).filter(|&i| rss[i].replicas > 0).collect();
        if active.len() <= 1 {
            let target = active
                .first()
                .copied()
                .or_else(|| new.and_then(|n| rss.iter().position(|r| r.name() == n)));
            if let Some(i) = target {
                self.scale_rs(plan, &mut rss[i], plan.replicas).await?;
            }
            return Ok(());
        }
        if let Some(ni) = new.and_then(|n| rss.iter().position(|r| r.name() == n)) {
            if rss[ni].replicas == plan.replicas && rss[ni].available() >= plan.replicas {
                for i in active.into_iter().filter(|&i| i != ni) {
                    self.scale_rs(plan, &mut rss[i], 0).await?;
                }
                return Ok(());
            }
        }
        let total: i32 = rss.iter().map(|r| r.replicas).sum();
        let allowed = if plan.replicas > 0 {
            plan.replicas + if plan.rolling { plan.max_surge } else { 0 }
        } else {
            0
        };
        let delta = allowed - total;
        if delta == 0 {
            // Only the annotations are stale.
            for i in active {
                let n = rss[i].replicas;
                self.scale_rs(plan, &mut rss[i], n).await?;
            }
            return Ok(());
        }
        let mut order = active.clone();
        // Scale up the newest first; scale down the oldest first (Kubernetes'
        // ReplicaSetsBySizeNewer / BySizeOlder): largest first, ties by age.
        if delta > 0 {
            order.sort_by_key(|&i| (-rss[i].replicas, -rss[i].created()));
        } else {
            order.sort_by_key(|&i| (-rss[i].replicas, rss[i].created()));
        }
        let mut sizes: Vec<i32> = order.iter().map(|&i| rss[i].replicas).collect();
        let mut added = 0;
        for (k, &i) in order.iter().enumerate() {
            let share =
                (i64::from(rss[i].replicas) * i64::from(delta) / i64::from(total.max(1))) as i32;
            let share = if delta > 0 {
                share.min(delta - added)
            } else {
                share.max(delta - added)
            };
            sizes[k] += share;
            added += share;
        }
        sizes[0] += delta - added;
        for (k, &i) in order.iter().enumerate() {
            self.scale_rs(plan, &mut rss[i], sizes[k].max(0)).await?;
        }
        Ok(())
    }

    /// Sets a ReplicaSet's replicas and the annotations that record what the Deployment
    /// wanted when it was sized.
    async fn scale_rs(&self, plan: &Plan<'_>, rs: &mut Rs, replicas: i32) -> Result<bool, Error> {
        let ann = rs.obj.annotations();
        let desired = plan.replicas.to_string();
        let max = (plan.replicas + plan.max_surge).to_string();
        if rs.replicas == replicas
            && ann.get(DESIRED_REPLICAS) == Some(&desired)
            && ann.get(MAX_REPLICAS) == Some(&max)
        {
            return Ok(false);
        }
        let api: Api<ReplicaSet> =
            Api::namespaced(self.client.clone(), &rs.obj.namespace().unwrap_or_default());
        let patch = json!({
            "metadata": {"annotations": {DESIRED_REPLICAS: desired, MAX_REPLICAS: max}},
            "spec": {"replicas": replicas},
        });
        let updated = api
            .patch(&rs.name(), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let from = rs.replicas;
        if from != replicas {
            let verb = if replicas > from { "up" } else { "down" };
            self.recorder.normal(
                plan.d,
                "ScalingReplicaSet",
                format!(
                    "Scaled {verb} replica set {} from {from} to {replicas}",
                    rs.name()
                ),
            );
        }
        rs.obj = Arc::new(updated);
        rs.replicas = replicas;
        Ok(from != replicas)
    }

    /// Finds the ReplicaSet for the current template (creating it when asked) and keeps
    /// revisions in order: the new one always has the highest revision.
    async fn new_and_old(
        &self,
        plan: &Plan<'_>,
        rss: &mut Vec<Rs>,
        create: bool,
    ) -> Result<Option<usize>, Error> {
        let d = plan.d;
        let (new, olds) = split_new(d, rss);
        let max_old = olds.iter().map(|&i| rss[i].revision()).max().unwrap_or(0);
        let revision = max_old + 1;
        let ns = d.namespace().unwrap_or_default();
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &ns);
        if let Some(i) = new {
            let rs = &rss[i];
            let old_rev = rs.revision();
            let min_ready = d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let rs_min_ready = rs.obj.spec.as_ref().and_then(|s| s.min_ready_seconds);
            if old_rev < revision || min_ready != rs_min_ready {
                let mut ann = serde_json::Map::new();
                if old_rev < revision {
                    ann.insert(REVISION.into(), json!(revision.to_string()));
                    if old_rev > 0 {
                        let hist = match rs.obj.annotations().get(REVISION_HISTORY) {
                            Some(h) if !h.is_empty() => format!("{h},{old_rev}"),
                            _ => old_rev.to_string(),
                        };
                        ann.insert(REVISION_HISTORY.into(), json!(hist));
                    }
                }
                let patch = json!({"metadata": {"annotations": ann}, "spec": {"minReadySeconds": min_ready}});
                let updated = api
                    .patch(&rs.name(), &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                rss[i].obj = Arc::new(updated);
            }
            self.set_deployment_revision(d, rss[i].revision()).await?;
            return Ok(Some(i));
        }
        if !create {
            return Ok(None);
        }
        let spec = d.spec.clone().unwrap_or_default();
        let collisions = d
            .status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0);
        let hash = template_hash(&spec.template, collisions);
        let mut template = spec.template.clone();
        let tm = template.metadata.get_or_insert_with(Default::default);
        tm.labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut selector: LabelSelector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let replicas = if plan.rolling {
            new_rs_replicas(plan, rss, 0)
        } else {
            plan.replicas
        };
        let mut annotations: BTreeMap<String, String> = d
            .annotations()
            .iter()
            .filter(|(k, _)| {
                !k.starts_with("kubectl.kubernetes.io/last-applied-configuration")
                    && k.as_str() != REVISION
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        annotations.insert(REVISION.into(), revision.to_string());
        annotations.insert(DESIRED_REPLICAS.into(), plan.replicas.to_string());
        annotations.insert(
            MAX_REPLICAS.into(),
            (plan.replicas + plan.max_surge).to_string(),
        );
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{}-{hash}", d.name_any())),
                namespace: Some(ns.clone()),
                labels: tm.labels.clone(),
                annotations: Some(annotations),
                owner_references: Some(vec![owner_ref(
                    "apps/v1",
                    "Deployment",
                    &d.name_any(),
                    d.metadata.uid.as_deref().unwrap_or_default(),
                )]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let created = match api.create(&PostParams::default(), &rs).await {
            Ok(c) => c,
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Either our own earlier create (the informer has not caught up) or a
                // hash collision with another template: bump collisionCount and retry.
                let existing = api
                    .get(rs.metadata.name.as_deref().unwrap_or_default())
                    .await?;
                let ours = controller_of(&existing.metadata)
                    .is_some_and(|r| Some(&r.uid) == d.metadata.uid.as_ref());
                if ours
                    && equal_ignore_hash(
                        existing.spec.as_ref().and_then(|s| s.template.as_ref()),
                        Some(&spec.template),
                    )
                {
                    return Err(Error::Other("new ReplicaSet not yet in the cache".into()));
                }
                let dapi: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
                let patch = json!({"status": {"collisionCount": collisions + 1}});
                dapi.patch_status(
                    &d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
                return Err(Error::Other(
                    "ReplicaSet name collision; retrying with a new hash".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        if replicas > 0 {
            self.recorder.normal(
                d,
                "ScalingReplicaSet",
                format!(
                    "Scaled up replica set {} from 0 to {replicas}",
                    created.name_any()
                ),
            );
        }
        self.set_deployment_revision(d, revision).await?;
        rss.push(Rs {
            replicas,
            obj: Arc::new(created),
        });
        Ok(Some(rss.len() - 1))
    }

    async fn set_deployment_revision(&self, d: &Deployment, revision: i64) -> Result<(), Error> {
        if revision_of(&d.metadata) == revision {
            return Ok(());
        }
        let api: Api<Deployment> =
            Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
        let patch = json!({"metadata": {"annotations": {REVISION: revision.to_string()}}});
        ignore_gone(
            api.patch(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await,
        )
    }

    async fn rollout_rolling(&self, plan: &Plan<'_>, mut rss: Vec<Rs>) -> Outcome {
        let new = self.new_and_old(plan, &mut rss, true).await?;
        let Some(ni) = new else {
            return Err(Error::Other("no new ReplicaSet".into()));
        };
        // Scale up the new ReplicaSet within maxSurge.
        if rss[ni].replicas != plan.replicas {
            let target = if rss[ni].replicas > plan.replicas {
                plan.replicas
            } else {
                new_rs_replicas(plan, &rss, rss[ni].replicas)
            };
            let mut rs = rss[ni].clone();
            if self.scale_rs(plan, &mut rs, target).await? {
                rss[ni] = rs;
                let new = rss[ni].clone();
                return self.sync_status(plan.d, &rss, Some(&new)).await;
            }
        }
        // Scale down old ones within maxUnavailable.
        if self.scale_down_old(plan, &mut rss, ni).await? {
            let new = rss[ni].clone();
            return self.sync_status(plan.d, &rss, Some(&new)).await;
        }
        if rollout_complete(plan, &rss, ni) {
            self.cleanup(plan.d, &rss).await?;
        }
        let new = rss[ni].clone();
        self.sync_status(plan.d, &rss, Some(&new)).await
    }

    /// Kubernetes' reconcileOldReplicaSets: first remove old pods that are not available
    /// anyway, then scale old ReplicaSets down as far as availability allows.
    async fn scale_down_old(
        &self,
        plan: &Plan<'_>,
        rss: &mut [Rs],
        ni: usize,
    ) -> Result<bool, Error> {
        let old_count: i32 = (0..rss.len())
            .filter(|&i| i != ni)
            .map(|i| rss[i].replicas)
            .sum();
        if old_count == 0 {
            return Ok(false);
        }
        let all: i32 = rss.iter().map(|r| r.replicas).sum();
        let min_available = plan.replicas - plan.max_unavailable;
        let new_unavailable = rss[ni].replicas - rss[ni].available();
        let max_scaled_down = all - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        let mut olds: Vec<usize> = (0..rss.len()).filter(|&i| i != ni).collect();
        olds.sort_by_key(|&i| (rss[i].created(), rss[i].name()));
        let mut cleaned = 0;
        for &i in &olds {
            if cleaned >= max_scaled_down {
                break;
            }
            let unhealthy = rss[i].replicas - rss[i].available();
            if rss[i].replicas == 0 || unhealthy <= 0 {
                continue;
            }
            let down = (max_scaled_down - cleaned).min(unhealthy);
            let target = rss[i].replicas - down;
            self.scale_rs(plan, &mut rss[i], target).await?;
            cleaned += down;
        }
        let available: i32 = rss.iter().map(|r| r.available().min(r.replicas)).sum();
        if available <= min_available {
            return Ok(cleaned > 0);
        }
        let total_down = available - min_available;
        let mut scaled = 0;
        for &i in &olds {
            if scaled >= total_down {
                break;
            }
            if rss[i].replicas == 0 {
                continue;
            }
            let down = rss[i].replicas.min(total_down - scaled);
            let target = rss[i].replicas - down;
            self.scale_rs(plan, &mut rss[i], target).await?;
            scaled += down;
        }
        Ok(cleaned + scaled > 0)
    }

    async fn rollout_recreate(&self, plan: &Plan<'_>, mut rss: Vec<Rs>) -> Outcome {
        let existing_new = self.new_and_old(plan, &mut rss, false).await?;
        let mut scaled = false;
        for (i, rs) in rss.iter_mut().enumerate() {
            if Some(i) != existing_new && rs.replicas > 0 {
                scaled |= self.scale_rs(plan, rs, 0).await?;
            }
        }
        let new = existing_new.map(|i| rss[i].clone());
        if scaled {
            return self.sync_status(plan.d, &rss, new.as_ref()).await;
        }
        // New pods start only when every old pod is gone.
        let old_uids: Vec<String> = (0..rss.len())
            .filter(|&i| Some(i) != existing_new)
            .filter_map(|i| rss[i].obj.metadata.uid.clone())
            .collect();
        let ns = plan.d.namespace().unwrap_or_default();
        let old_pods = self.inf.pods.list_namespace(&ns).into_iter().any(|p| {
            controller_of(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid))
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded") | Some("Failed")
                )
        });
        if old_pods {
            return self.sync_status(plan.d, &rss, new.as_ref()).await;
        }
        let ni = match existing_new {
            Some(i) => i,
            None => match self.new_and_old(plan, &mut rss, true).await? {
                Some(i) => i,
                None => return Err(Error::Other("no new ReplicaSet".into())),
            },
        };
        let mut rs = rss[ni].clone();
        self.scale_rs(plan, &mut rs, plan.replicas).await?;
        rss[ni] = rs;
        if rollout_complete(plan, &rss, ni) {
            self.cleanup(plan.d, &rss).await?;
        }
        let new = rss[ni].clone();
        self.sync_status(plan.d, &rss, Some(&new)).await
    }

    /// Deletes the oldest scaled-down ReplicaSets beyond revisionHistoryLimit.
    async fn cleanup(&self, d: &Deployment, rss: &[Rs]) -> Result<(), Error> {
        let limit = d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let (new, _) = split_new(d, rss);
        let mut idle: Vec<&Rs> = rss
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                Some(*i) != new
                    && r.replicas == 0
                    && r.status_replicas() == 0
                    && r.obj.metadata.deletion_timestamp.is_none()
            })
            .map(|(_, r)| r)
            .collect();
        if idle.len() <= limit {
            return Ok(());
        }
        idle.sort_by_key(|r| (r.revision(), r.created()));
        let api: Api<ReplicaSet> =
            Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
        for r in &idle[..idle.len() - limit] {
            ignore_gone(api.delete(&r.name(), &DeleteParams::default()).await)?;
        }
        Ok(())
    }

    /// Writes the status: counts summed over the ReplicaSets, the Available condition,
    /// and the Progressing condition with its deadline.
    async fn sync_status(&self, d: &Deployment, rss: &[Rs], new: Option<&Rs>) -> Outcome {
        let plan = plan(d);
        let now = Timestamp::now();
        let old = d.status.clone().unwrap_or_default();
        let total: i32 = rss.iter().map(|r| r.status_replicas()).sum();
        let available: i32 = rss.iter().map(|r| r.available()).sum();
        let ready: i32 = rss.iter().map(|r| r.ready()).sum();
        let updated = new.map(|n| n.status_replicas()).unwrap_or(0);
        let unavailable = (plan.replicas - available).max(0);
        let nz = |n: i32| (n > 0).then_some(n);
        let mut status = DeploymentStatus {
            observed_generation: d.metadata.generation,
            replicas: nz(total),
            updated_replicas: nz(updated),
            ready_replicas: nz(ready),
            available_replicas: nz(available),
            unavailable_replicas: nz(unavailable),
            collision_count: old.collision_count,
            conditions: old.conditions.clone(),
            terminating_replicas: None,
        };
        if available >= plan.replicas - plan.max_unavailable {
            set_condition(
                &mut status,
                condition(
                    "Available",
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.",
                    now,
                ),
            );
        } else {
            set_condition(
                &mut status,
                condition(
                    "Available",
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.",
                    now,
                ),
            );
        }
        let mut requeue = None;
        let spec = d.spec.clone().unwrap_or_default();
        let paused = spec.paused == Some(true);
        let current = get_condition(&old, "Progressing");
        let deadline = spec.progress_deadline_seconds;
        if paused {
            if current.is_none_or(|c| c.reason.as_deref() != Some("DeploymentPaused")) {
                set_condition(
                    &mut status,
                    condition(
                        "Progressing",
                        "Unknown",
                        "DeploymentPaused",
                        "Deployment is paused",
                        now,
                    ),
                );
            }
        } else if current.is_some_and(|c| c.reason.as_deref() == Some("DeploymentPaused")) {
            set_condition(
                &mut status,
                condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentResumed",
                    "Deployment is resumed",
                    now,
                ),
            );
        } else if let (Some(n), Some(deadline)) = (new, deadline.filter(|d| *d < i32::MAX)) {
            let name = n.name();
            let complete = updated == plan.replicas
                && available == plan.replicas
                && total == plan.replicas
                && status.observed_generation >= d.metadata.generation;
            let progressing = updated > old.updated_replicas.unwrap_or(0)
                || ready > old.ready_replicas.unwrap_or(0)
                || available > old.available_replicas.unwrap_or(0)
                || total < old.replicas.unwrap_or(0) && updated > 0;
            let same_rs = current
                .and_then(|c| c.message.as_deref())
                .is_some_and(|m| m.contains(&format!("\"{name}\"")));
            if complete {
                set_condition(
                    &mut status,
                    condition(
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable",
                        &format!("ReplicaSet \"{name}\" has successfully progressed."),
                        now,
                    ),
                );
            } else if !same_rs {
                let reason = if n.status_replicas() == 0 && n.replicas > 0 {
                    "NewReplicaSetCreated"
                } else {
                    "FoundNewReplicaSet"
                };
                let msg = if reason == "NewReplicaSetCreated" {
                    format!("Created new replica set \"{name}\"")
                } else {
                    format!("Found new replica set \"{name}\"")
                };
                set_condition(
                    &mut status,
                    condition("Progressing", "True", reason, &msg, now),
                );
            } else if progressing {
                set_condition(
                    &mut status,
                    condition(
                        "Progressing",
                        "True",
                        "ReplicaSetUpdated",
                        &format!("ReplicaSet \"{name}\" is progressing."),
                        now,
                    ),
                );
            } else if let Some(c) = current.filter(|c| {
                c.status == "True" && c.reason.as_deref() != Some("NewReplicaSetAvailable")
            }) {
                let since = c
                    .last_update_time
                    .as_ref()
                    .map(|t| t.0.as_second())
                    .unwrap_or(now.as_second());
                let left = since + i64::from(deadline) - now.as_second();
                if left <= 0 {
                    set_condition(
                        &mut status,
                        condition(
                            "Progressing",
                            "False",
                            "ProgressDeadlineExceeded",
                            &format!("ReplicaSet \"{name}\" has timed out progressing."),
                            now,
                        ),
                    );
                } else {
                    requeue = Some(Duration::from_secs(left as u64) + Duration::from_millis(200));
                }
            }
        }
        // A ReplicaSet that cannot create pods (a quota refused them, say) shows on the
        // Deployment too, as Kubernetes' getReplicaFailures does.
        let failure = new.into_iter().chain(rss.iter()).find_map(|r| {
            r.obj
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
                .cloned()
        });
        match failure {
            Some(c) => set_condition(
                &mut status,
                DeploymentCondition {
                    type_: c.type_,
                    status: c.status,
                    reason: c.reason,
                    message: c.message,
                    last_update_time: c.last_transition_time.clone(),
                    last_transition_time: c.last_transition_time,
                },
            ),
            None => {
                if let Some(list) = status.conditions.as_mut() {
                    list.retain(|c| c.type_ != "ReplicaFailure");
                }
            }
        }
        if status != old {
            let api: Api<Deployment> =
                Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
            let patch = json!({"status": {
                "observedGeneration": status.observed_generation,
                "replicas": status.replicas,
                "updatedReplicas": status.updated_replicas,
                "readyReplicas": status.ready_replicas,
                "availableReplicas": status.available_replicas,
                "unavailableReplicas": status.unavailable_replicas,
                "collisionCount": status.collision_count,
                "conditions": status.conditions,
            }});
            ignore_gone(
                api.patch_status(
                    &d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await,
            )?;
        }
        Ok(requeue)
    }
}

fn ignore_gone<T>(r: Result<T, kube::Error>) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn deployment_owner(rs: &ReplicaSet) -> Option<String> {
    controller_of(&rs.metadata)
        .filter(|r| r.kind == "Deployment" && r.api_version.starts_with("apps/"))
        .map(|r| r.name.clone())
}

fn plan(d: &Deployment) -> Plan<'_> {
    let spec = d.spec.as_ref();
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
    let strategy = spec.and_then(|s| s.strategy.as_ref());
    let rolling = strategy.and_then(|s| s.type_.as_deref()) != Some("Recreate");
    let ru = strategy.and_then(|s| s.rolling_update.as_ref());
    let (mut surge, mut unavail) = (0, 0);
    if rolling {
        let pct = IntOrString::String("25%".into());
        surge = resolve(
            ru.and_then(|r| r.max_surge.as_ref()).unwrap_or(&pct),
            replicas,
            true,
        );
        unavail = resolve(
            ru.and_then(|r| r.max_unavailable.as_ref()).unwrap_or(&pct),
            replicas,
            false,
        );
        if surge == 0 && unavail == 0 {
            // Kubernetes: both zero would never progress, so one pod may be unavailable.
            unavail = 1;
        }
        unavail = unavail.min(replicas);
    }
    Plan {
        d,
        replicas,
        max_surge: surge,
        max_unavailable: unavail,
        rolling,
    }
}

/// An int-or-percent against `total`: surge rounds up, unavailability down.
fn resolve(v: &IntOrString, total: i32, round_up: bool) -> i32 {
    match v {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let scaled = pct * i64::from(total);
            (if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            }) as i32
        }
    }
}

/// The size the new ReplicaSet may grow to now, within maxSurge.
fn new_rs_replicas(plan: &Plan, rss: &[Rs], current_new: i32) -> i32 {
    let current: i32 = rss.iter().map(|r| r.replicas).sum();
    let max_total = plan.replicas + plan.max_surge;
    if current >= max_total {
        return current_new;
    }
    let up = (max_total - current)
        .min(plan.replicas - current_new)
        .max(0);
    current_new + up
}

fn rollout_complete(plan: &Plan, rss: &[Rs], ni: usize) -> bool {
    let new = &rss[ni];
    new.replicas == plan.replicas
        && new.status_replicas() == plan.replicas
        && new.available() >= plan.replicas
        && rss
            .iter()
            .enumerate()
            .all(|(i, r)| i == ni || (r.replicas == 0 && r.status_replicas() == 0))
}

/// Index of the ReplicaSet whose template is the Deployment's (the oldest, if several),
/// and the indices of the others.
fn split_new(d: &Deployment, rss: &[Rs]) -> (Option<usize>, Vec<usize>) {
    let template = d.spec.as_ref().map(|s| &s.template);
    let mut matching: Vec<usize> = (0..rss.len())
        .filter(|&i| {
            equal_ignore_hash(
                rss[i].obj.spec.as_ref().and_then(|s| s.template.as_ref()),
                template,
            )
        })
        .collect();
    matching.sort_by_key(|&i| (rss[i].created(), rss[i].name()));
    let new = matching.first().copied();
    (new, (0..rss.len()).filter(|&i| Some(i) != new).collect())
}

/// Templates equal but for the pod-template-hash label.
fn equal_ignore_hash(a: Option<&PodTemplateSpec>, b: Option<&PodTemplateSpec>) -> bool {
    fn strip(t: Option<&PodTemplateSpec>) -> PodTemplateSpec {
        let mut t = t.cloned().unwrap_or_default();
        if let Some(m) = t.metadata.as_mut() {
            if let Some(l) = m.labels.as_mut() {
                l.remove(HASH_LABEL);
                if l.is_empty() {
                    m.labels = None;
                }
            }
        }
        t
    }
    strip(a) == strip(b)
}

/// The pod-template-hash: FNV-32a of the template (and collision count), written with
/// Kubernetes' SafeEncodeString alphabet (no vowels, no look-alike digits).
pub fn template_hash(t: &PodTemplateSpec, collisions: i32) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(serde_json::to_string(t).unwrap_or_default().as_bytes());
    if collisions > 0 {
        feed(&collisions.to_le_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

fn get_condition<'a>(s: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Sets a condition, keeping lastTransitionTime when the status does not change and
/// lastUpdateTime when nothing changes at all (so an idle Deployment writes nothing).
fn set_condition(s: &mut DeploymentStatus, mut c: DeploymentCondition) {
    let list = s.conditions.get_or_insert_with(Vec::new);
    if let Some(old) = list.iter_mut().find(|o| o.type_ == c.type_) {
        if old.status == c.status && old.reason == c.reason && old.message == c.message {
            return;
        }
        if old.status == c.status {
            c.last_transition_time = old.last_transition_time.clone();
        }
        *old = c;
    } else {
        list.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_like_kubernetes() {
        let p = IntOrString::String("25%".into());
        assert_eq!(resolve(&p, 3, true), 1);
        assert_eq!(resolve(&p, 3, false), 0);
        assert_eq!(resolve(&p, 10, true), 3);
        assert_eq!(resolve(&p, 10, false), 2);
        assert_eq!(resolve(&IntOrString::Int(2), 10, false), 2);
    }

    #[test]
    fn hash_is_stable_and_changes_with_template_and_collisions() {
        let mut t = PodTemplateSpec::default();
        let a = template_hash(&t, 0);
        assert_eq!(a, template_hash(&t, 0));
        assert!(a
            .bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
        assert_ne!(a, template_hash(&t, 1));
        t.metadata = Some(ObjectMeta {
            labels: Some([("app".to_string(), "x".to_string())].into()),
            ..Default::default()
        });
        assert_ne!(a, template_hash(&t, 0));
    }
}
