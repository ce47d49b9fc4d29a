//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the selector,
//! adopting orphans that match and releasing pods that no longer do, and reports replicas,
//! fullyLabeledReplicas, readyReplicas, availableReplicas and observedGeneration, as
//! Kubernetes' replicaset controller does.

use crate::expectations::Expectations;
use crate::informer::{Change, Key};
use crate::podutil::{self, controller_of, owner_ref};
use crate::queue::{Outcome, Queue};
use crate::{events::Recorder, selector, Error, Informers};
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Most pods created or deleted in one reconcile (Kubernetes' burstReplicas).
const BURST: usize = 500;

pub struct Controller {
    client: Client,
    inf: Informers,
    recorder: Recorder,
    expectations: Arc<Expectations>,
    queue: Queue,
}

impl Controller {
    pub fn new(client: Client, inf: Informers, recorder: Recorder) -> Controller {
        Controller {
            client,
            inf,
            recorder,
            expectations: Default::default(),
            queue: Queue::new("replicaset"),
        }
    }

    /// Hooks the informers to the queue; returns the queue for the workers.
    pub fn register(self: &Arc<Self>) -> Queue {
        let q = self.queue.clone();
        self.inf
            .replicasets
            .on_change(move |c| q.add(Key::of(c.object())));
        let (q, exp, rss) = (
            self.queue.clone(),
            self.expectations.clone(),
            self.inf.replicasets.clone(),
        );
        self.inf.pods.on_change(move |c| {
            let pod = c.object();
            let owner = rs_owner(pod);
            match c {
                Change::Applied { old: None, new } => {
                    if let Some(o) = &owner {
                        exp.observed_add(o);
                        if new.metadata.deletion_timestamp.is_some() {
                            exp.observed_delete(o, &new.name_any());
                        }
                    }
                }
                Change::Applied {
                    old: Some(old),
                    new,
                } => {
                    if let Some(o) = &owner {
                        if new.metadata.deletion_timestamp.is_some() {
                            exp.observed_delete(o, &new.name_any());
                        }
                    }
                    // The controller reference changed: the old owner must recount too.
                    if let Some(prev) = rs_owner(old).filter(|p| Some(p) != owner.as_ref()) {
                        q.add(prev);
                    }
                }
                Change::Deleted(p) => {
                    if let Some(o) = &owner {
                        exp.observed_delete(o, &p.name_any());
                    }
                }
            }
            match owner {
                Some(o) => q.add(o),
                // An orphan: every ReplicaSet that selects it may adopt it.
                None if !matches!(c, Change::Deleted(_)) => {
                    let ns = pod.namespace().unwrap_or_default();
                    for rs in rss.list_namespace(&ns) {
                        if selects(&rs, pod) {
                            q.add(Key::of(&*rs));
                        }
                    }
                }
                None => {}
            }
        });
        self.queue.clone()
    }

    pub async fn reconcile(&self, key: Key) -> Outcome {
        let Some(rs) = self.inf.replicasets.get(&key) else {
            self.expectations.forget(&key);
            return Ok(None);
        };
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        let owned = self.claim_pods(&rs, &pods_api).await?;
        let active: Vec<Arc<Pod>> = owned
            .iter()
            .filter(|p| podutil::is_active(p))
            .cloned()
            .collect();
        let mut failure = None;
        if self.expectations.satisfied(&key) && rs.metadata.deletion_timestamp.is_none() {
            failure = self.manage_replicas(&key, &rs, &active, &pods_api).await;
        }
        let (status, requeue) = compute_status(&rs, &active, failure.as_deref());
        if rs.status.as_ref() != Some(&status) {
            let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &key.namespace);
            let patch = json!({ "status": status_json(&status) });
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        if failure.is_some() {
            return Err(Error::Other(failure.unwrap_or_default()));
        }
        Ok(requeue)
    }

    /// The pods this ReplicaSet controls, after adopting matching orphans and releasing
    /// owned pods whose labels no longer match (Kubernetes' ClaimPods).
    async fn claim_pods(&self, rs: &ReplicaSet, pods: &Api<Pod>) -> Result<Vec<Arc<Pod>>, Error> {
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        let deleting = rs.metadata.deletion_timestamp.is_some();
        let mut owned = Vec::new();
        for pod in self
            .inf
            .pods
            .list_namespace(&rs.namespace().unwrap_or_default())
        {
            let matches = selects(rs, &pod);
            match controller_of(&pod.metadata) {
                Some(r) if r.uid == uid => {
                    if matches {
                        owned.push(pod);
                    } else if !deleting {
                        let refs: Vec<_> = pod
                            .owner_references()
                            .iter()
                            .filter(|r| r.uid != uid)
                            .cloned()
                            .collect();
                        let patch =
                            json!({"metadata": {"ownerReferences": refs, "uid": pod.metadata.uid}});
                        ignore_not_found(
                            pods.patch(
                                &pod.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(&patch),
                            )
                            .await,
                        )?;
                    }
                }
                Some(_) => {}
                None if matches && !deleting && pod.metadata.deletion_timestamp.is_none() => {
                    let mut refs = pod.owner_references().to_vec();
                    refs.push(owner_ref("apps/v1", "ReplicaSet", &rs.name_any(), &uid));
                    // The uid makes the patch fail if the pod was replaced meanwhile.
                    let patch =
                        json!({"metadata": {"ownerReferences": refs, "uid": pod.metadata.uid}});
                    match pods
                        .patch(
                            &pod.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
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

    /// Creates or deletes pods toward spec.replicas. Returns a failure message for the
    /// ReplicaFailure condition, if a create failed.
    async fn manage_replicas(
        &self,
        key: &Key,
        rs: &ReplicaSet,
        active: &[Arc<Pod>],
        pods: &Api<Pod>,
    ) -> Option<String> {
        let want = rs
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1)
            .max(0) as usize;
        if active.len() < want {
            let n = (want - active.len()).min(BURST);
            self.expectations.expect_adds(key, n as i64);
            let pod = pod_from_template(rs);
            let pp = PostParams::default();
            // Slow start, as Kubernetes: batches of 1, 2, 4, ... so a create that fails
            // (a quota, a bad template) fails once, not n times.
            let (mut done, mut batch) = (0usize, 1usize);
            while done < n {
                let size = batch.min(n - done);
                let results = join_all((0..size).map(|_| pods.create(&pp, &pod))).await;
                done += size;
                let mut failed = None;
                for r in results {
                    match r {
                        Ok(p) => self.recorder.normal(
                            rs,
                            "SuccessfulCreate",
                            format!("Created pod: {}", p.name_any()),
                        ),
                        Err(e) => {
                            // Never observed: lower the expectation for it.
                            self.expectations.observed_add(key);
                            failed = Some(api_message(&e));
                        }
                    }
                }
                if let Some(msg) = failed {
                    for _ in done..n {
                        self.expectations.observed_add(key);
                    }
                    self.recorder
                        .warning(rs, "FailedCreate", format!("Error creating: {msg}"));
                    return Some(msg);
                }
                batch *= 2;
            }
        } else if active.len() > want {
            let n = (active.len() - want).min(BURST);
            let mut ranked = active.to_vec();
            ranked.sort_by_key(|p| deletion_rank(p));
            let victims: Vec<String> = ranked.iter().take(n).map(|p| p.name_any()).collect();
            self.expectations.expect_deletes(key, victims.clone());
            let dp = DeleteParams::default();
            let results = join_all(victims.iter().map(|name| pods.delete(name, &dp))).await;
            for (name, r) in victims.iter().zip(results) {
                match r {
                    Ok(_) => {
                        self.recorder
                            .normal(rs, "SuccessfulDelete", format!("Deleted pod: {name}"))
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        self.expectations.observed_delete(key, name)
                    }
                    Err(e) => {
                        self.expectations.observed_delete(key, name);
                        self.recorder.warning(
                            rs,
                            "FailedDelete",
                            format!("Error deleting: {}", api_message(&e)),
                        );
                    }
                }
            }
        }
        None
    }
}

fn ignore_not_found<T>(r: Result<T, kube::Error>) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

fn rs_owner(pod: &Pod) -> Option<Key> {
    let r = controller_of(&pod.metadata)?;
    (r.kind == "ReplicaSet" && r.api_version.starts_with("apps/"))
        .then(|| Key::new(pod.namespace().unwrap_or_default(), r.name.clone()))
}

fn selects(rs: &ReplicaSet, pod: &Pod) -> bool {
    let Some(sel) = rs.spec.as_ref().map(|s| &s.selector) else {
        return false;
    };
    // An empty selector selects nothing here, as in Kubernetes' controllers.
    !selector::is_empty(sel) && selector::matches(sel, pod.labels())
}

/// The pod a ReplicaSet creates from its template.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let tm = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.namespace(),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![owner_ref(
                "apps/v1",
                "ReplicaSet",
                &rs.name_any(),
                rs.metadata.uid.as_deref().unwrap_or_default(),
            )]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Which pods go first when scaling down (Kubernetes' ActivePods ordering): unscheduled
/// before scheduled, pending before running, not ready before ready, more restarts
/// first, then the newest first.
pub(crate) fn deletion_rank(p: &Pod) -> (u8, u8, u8, i64, std::cmp::Reverse<i64>) {
    let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    let phase = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    };
    let restarts: i64 = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| i64::from(c.restart_count)).sum())
        .unwrap_or(0);
    let created = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0);
    (
        scheduled as u8,
        phase,
        podutil::is_ready(p) as u8,
        -restarts,
        std::cmp::Reverse(created),
    )
}

/// The status the ReplicaSet should have, and when to look again (a ready pod that
/// becomes available after minReadySeconds changes the status without any event).
fn compute_status(
    rs: &ReplicaSet,
    active: &[Arc<Pod>],
    failure: Option<&str>,
) -> (ReplicaSetStatus, Option<Duration>) {
    let now = Timestamp::now();
    let spec = rs.spec.as_ref();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut status = ReplicaSetStatus {
        replicas: active.len() as i32,
        observed_generation: rs.metadata.generation,
        ..Default::default()
    };
    let (mut labeled, mut ready, mut available) = (0, 0, 0);
    let mut requeue: Option<i64> = None;
    for p in active {
        if template_labels
            .iter()
            .all(|(k, v)| p.labels().get(k) == Some(v))
        {
            labeled += 1;
        }
        if podutil::is_ready(p) {
            ready += 1;
            if podutil::is_available(p, min_ready, now) {
                available += 1;
            } else if let Some(s) = podutil::seconds_until_available(p, min_ready, now) {
                requeue = Some(requeue.map_or(s, |r| r.min(s)));
            }
        }
    }
    // Zero counts are omitted on the wire, as Go's omitempty does.
    status.fully_labeled_replicas = (labeled > 0).then_some(labeled);
    status.ready_replicas = (ready > 0).then_some(ready);
    status.available_replicas = (available > 0).then_some(available);
    let old_conditions = rs
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut conditions: Vec<ReplicaSetCondition> = old_conditions
        .into_iter()
        .filter(|c| c.type_ != "ReplicaFailure")
        .collect();
    if let Some(msg) = failure {
        let prev = rs
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "ReplicaFailure"))
            .filter(|c| c.message.as_deref() == Some(msg));
        conditions.push(prev.cloned().unwrap_or(ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some(msg.to_string()),
            last_transition_time: Some(Time(now)),
        }));
    }
    if !conditions.is_empty() {
        status.conditions = Some(conditions);
    }
    (
        status,
        requeue.map(|s| Duration::from_secs(s.max(0) as u64) + Duration::from_millis(100)),
    )
}

/// The status as a merge patch body: absent optional fields are sent as null so that a
/// count that drops to none, or a condition that clears, is removed rather than kept.
fn status_json(s: &ReplicaSetStatus) -> serde_json::Value {
    json!({
        "replicas": s.replicas,
        "fullyLabeledReplicas": s.fully_labeled_replicas,
        "readyReplicas": s.ready_replicas,
        "availableReplicas": s.available_replicas,
        "observedGeneration": s.observed_generation,
        "conditions": s.conditions,
    })
}
