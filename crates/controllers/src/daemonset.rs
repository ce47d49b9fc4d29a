//! The DaemonSet controller, following Kubernetes' pkg/controller/daemon: one pod on
//! every node the template's nodeSelector, required node affinity and tolerations admit
//! (pods get the DaemonSet default tolerations), placed by a required node affinity on
//! metadata.name so the scheduler binds it there; RollingUpdate (maxUnavailable or
//! maxSurge) and OnDelete; ControllerRevisions for `kubectl rollout history|undo`; and
//! the status counts `kubectl rollout status` reads.

use crate::claim::{self, api_message, Owner};
use crate::expectations::Expectations;
use crate::history::{self, Revisions};
use crate::informer::{Change, Informer, Key};
use crate::nodeutil::{
    self, add_daemon_tolerations, fits_affinity, taints, target_node, tolerated,
};
use crate::podutil::{self, controller_of, owner_ref};
use crate::queue::{Outcome, Queue};
use crate::{events::Recorder, selector, Error};
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

const TEMPLATE_GENERATION: &str = "pod-template-generation";

pub struct Controller {
    client: Client,
    daemonsets: Informer<DaemonSet>,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    revisions: Informer<ControllerRevision>,
    recorder: Recorder,
    expectations: Arc<Expectations>,
    queue: Queue,
}

/// Whether a DaemonSet pod should be placed on a node, and whether one already there may
/// stay (Kubernetes' NodeShouldRunDaemonPod): a pod tolerating the NoExecute taints
/// stays even where a NoSchedule taint would keep a new one out.
pub fn should_run(ds: &DaemonSet, node: &Node) -> (bool, bool) {
    let mut spec = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default();
    let name = node.metadata.name.as_deref().unwrap_or("");
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != name)
    {
        return (false, false);
    }
    if !fits_affinity(&spec, node) {
        return (false, false);
    }
    add_daemon_tolerations(&mut spec);
    let tols = spec.tolerations.clone().unwrap_or_default();
    let blocking = |effects: &[&str]| {
        taints(node)
            .iter()
            .filter(|t| effects.contains(&t.effect.as_str()))
            .any(|t| !tolerated(&tols, t))
    };
    if blocking(&["NoSchedule", "NoExecute"]) {
        return (false, !blocking(&["NoExecute"]));
    }
    (true, true)
}

fn ds_owner(pod: &Pod) -> Option<Key> {
    let r = controller_of(&pod.metadata)?;
    (r.kind == "DaemonSet" && r.api_version.starts_with("apps/"))
        .then(|| Key::new(pod.namespace().unwrap_or_default(), r.name.clone()))
}

fn selects(ds: &DaemonSet, labels: &BTreeMap<String, String>) -> bool {
    ds.spec
        .as_ref()
        .is_some_and(|s| !selector::is_empty(&s.selector) && selector::matches(&s.selector, labels))
}

fn resolve(v: Option<&IntOrString>, total: i32, default: i32, round_up: bool) -> i32 {
    match v {
        None => default,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
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

/// maxSurge and maxUnavailable against the number of nodes that should run a pod;
/// both zero would stall, so unavailability is then 1 (Kubernetes' UnavailableCount).
fn surge_and_unavailable(ds: &DaemonSet, desired: i32) -> (i32, i32) {
    let ru = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref());
    let surge = resolve(ru.and_then(|r| r.max_surge.as_ref()), desired, 0, true);
    let mut unavail = resolve(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        desired,
        1,
        true,
    );
    if surge == 0 && unavail == 0 {
        unavail = 1;
    }
    (surge, unavail)
}

fn is_updated(pod: &Pod, hash: &str, generation: Option<i64>) -> bool {
    let l = pod.labels();
    l.get(history::HASH_LABEL).is_some_and(|h| h == hash)
        || generation.is_some_and(|g| l.get(TEMPLATE_GENERATION) == Some(&g.to_string()))
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn created(p: &Pod) -> i64 {
    p.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_nanosecond() as i64)
        .unwrap_or(0)
}

impl Controller {
    pub fn new(
        client: Client,
        daemonsets: Informer<DaemonSet>,
        pods: Informer<Pod>,
        nodes: Informer<Node>,
        revisions: Informer<ControllerRevision>,
        recorder: Recorder,
    ) -> Controller {
        Controller {
            client,
            daemonsets,
            pods,
            nodes,
            revisions,
            recorder,
            expectations: Default::default(),
            queue: Queue::new("daemonset"),
        }
    }

    pub fn register(self: &Arc<Self>) -> Queue {
        let q = self.queue.clone();
        self.daemonsets
            .on_change(move |c| q.add(Key::of(c.object())));
        let (q, exp, dss) = (
            self.queue.clone(),
            self.expectations.clone(),
            self.daemonsets.clone(),
        );
        self.pods.on_change(move |c| {
            let pod = c.object();
            let owner = ds_owner(pod);
            if let Some(o) = &owner {
                match c {
                    Change::Applied { old: None, new } => {
                        exp.observed_add(o);
                        if new.metadata.deletion_timestamp.is_some() {
                            exp.observed_delete(o, &new.name_any());
                        }
                    }
                    Change::Applied { new, .. } => {
                        if new.metadata.deletion_timestamp.is_some() {
                            exp.observed_delete(o, &new.name_any());
                        }
                    }
                    Change::Deleted(p) => exp.observed_delete(o, &p.name_any()),
                }
                q.add(o.clone());
            } else if !matches!(c, Change::Deleted(_)) {
                for ds in dss.list_namespace(&pod.namespace().unwrap_or_default()) {
                    if selects(&ds, pod.labels()) {
                        q.add(Key::of(&*ds));
                    }
                }
            }
            if let Change::Applied { old: Some(old), .. } = c {
                if let Some(prev) = ds_owner(old).filter(|p| Some(p) != owner.as_ref()) {
                    q.add(prev);
                }
            }
        });
        // A node added, relabelled, tainted or removed may change where pods belong.
        let (q, dss) = (self.queue.clone(), self.daemonsets.clone());
        self.nodes.on_change(move |c| {
            let relevant = match c {
                Change::Applied {
                    old: Some(old),
                    new,
                } => {
                    old.metadata.labels != new.metadata.labels
                        || old.spec != new.spec
                        || nodeutil::ready_status(old) != nodeutil::ready_status(new)
                }
                _ => true,
            };
            if relevant {
                for ds in dss.list(|_| true) {
                    q.add(Key::of(&*ds));
                }
            }
        });
        let (q, dss) = (self.queue.clone(), self.daemonsets.clone());
        self.revisions.on_change(move |c| {
            let r = c.object();
            if let Some(o) = controller_of(&r.metadata).filter(|o| o.kind == "DaemonSet") {
                let k = Key::new(r.namespace().unwrap_or_default(), o.name.clone());
                if dss.get(&k).is_some() {
                    q.add(k);
                }
            }
        });
        self.queue.clone()
    }

    pub async fn reconcile(&self, key: Key) -> Outcome {
        let Some(ds) = self.daemonsets.get(&key) else {
            self.expectations.forget(&key);
            return Ok(None);
        };
        let spec = ds.spec.clone().unwrap_or_default();
        if selector::is_empty(&spec.selector) {
            self.recorder.warning(
                &*ds,
                "SelectingAll",
                "This daemon set is selecting all pods. A non-empty selector is required.".into(),
            );
            return Ok(None);
        }
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        let owner = Owner::of(&*ds, "apps/v1", "DaemonSet");
        let pods = claim::claim(
            self.pods.list_namespace(&key.namespace),
            &pods_api,
            &owner,
            |p| selects(&ds, p.labels()),
            None,
        )
        .await?;
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let collisions = ds
            .status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0);
        let hash = crate::deployment::template_hash(&spec.template, collisions);
        let revs = match history::sync(
            &self.client,
            &self.revisions,
            history::Spec {
                owner: Owner::of(&*ds, "apps/v1", "DaemonSet"),
                namespace: key.namespace.clone(),
                selector: &spec.selector,
                template_labels: spec
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default(),
                annotations: ds.annotations().clone(),
                data: history::template_patch(&spec.template),
                hash: hash.clone(),
            },
        )
        .await
        {
            Ok(r) => r,
            Err(Error::Other(m)) if m == history::COLLISION => {
                let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), &key.namespace);
                let patch = json!({"status": {"collisionCount": collisions + 1}});
                api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                return Err(Error::Other(m));
            }
            Err(e) => return Err(e),
        };
        // Pods carry the hash of the revision that made them.
        let cur_hash = revs
            .current
            .labels()
            .get(history::HASH_LABEL)
            .cloned()
            .unwrap_or(hash);
        let nodes = self.nodes.list(|_| true);
        let by_node = group_by_node(&pods);
        let mut requeue = None;
        if self.expectations.satisfied(&key) {
            requeue = self.manage(&key, &ds, &nodes, &by_node, &cur_hash).await?;
            if spec
                .update_strategy
                .as_ref()
                .and_then(|u| u.type_.as_deref())
                .unwrap_or("RollingUpdate")
                == "RollingUpdate"
                && self.expectations.satisfied(&key)
            {
                let r = self
                    .rolling_update(&key, &ds, &nodes, &by_node, &cur_hash)
                    .await?;
                requeue = min_dur(requeue, r);
            }
        }
        self.cleanup_history(&ds, &revs, &pods).await?;
        let r = self.update_status(&ds, &nodes, &by_node, &cur_hash).await?;
        Ok(min_dur(requeue, r))
    }

    /// Creates a pod on every node that should run one and has none; deletes pods where
    /// they should not be, failed ones, and duplicates.
    async fn manage(
        &self,
        key: &Key,
        ds: &DaemonSet,
        nodes: &[Arc<Node>],
        by_node: &HashMap<String, Vec<Arc<Pod>>>,
        hash: &str,
    ) -> Result<Option<Duration>, Error> {
        let mut create_on: Vec<String> = Vec::new();
        let mut delete: Vec<Arc<Pod>> = Vec::new();
        let surge = surge_and_unavailable(ds, 1).0 > 0;
        let names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
        for node in nodes {
            let name = node.name_any();
            let (run, keep) = should_run(ds, node);
            let pods: Vec<Arc<Pod>> = by_node
                .get(&name)
                .map(|v| {
                    v.iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if run && pods.is_empty() {
                create_on.push(name);
            } else if keep {
                let mut running = Vec::new();
                for p in pods {
                    match phase(&p) {
                        "Failed" => {
                            self.recorder.warning(
                                ds,
                                "FailedDaemonPod",
                                format!(
                                    "Found failed daemon pod {}/{} on node {name}, will try to kill it",
                                    p.namespace().unwrap_or_default(),
                                    p.name_any()
                                ),
                            );
                            delete.push(p);
                        }
                        "Succeeded" => delete.push(p),
                        _ => running.push(p),
                    }
                }
                running.sort_by_key(|p| created(p));
                if !surge {
                    delete.extend(running.into_iter().skip(1));
                } else {
                    // With surge, at most the oldest old pod and the oldest new pod.
                    let (mut new_seen, mut old_seen) = (false, false);
                    for p in running {
                        let slot = if is_updated(&p, hash, ds.metadata.generation) {
                            &mut new_seen
                        } else {
                            &mut old_seen
                        };
                        if *slot {
                            delete.push(p);
                        } else {
                            *slot = true;
                        }
                    }
                }
            } else {
                delete.extend(pods);
            }
        }
        // Pods bound or aimed at nodes that no longer exist.
        for (node, pods) in by_node {
            if !names.contains(node) {
                delete.extend(
                    pods.iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .cloned(),
                );
            }
        }
        self.sync_nodes(key, ds, delete, create_on, hash).await?;
        Ok(None)
    }

    async fn sync_nodes(
        &self,
        key: &Key,
        ds: &DaemonSet,
        delete: Vec<Arc<Pod>>,
        create_on: Vec<String>,
        hash: &str,
    ) -> Result<(), Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        let mut failure: Option<Error> = None;
        if !create_on.is_empty() {
            self.expectations.expect_adds(key, create_on.len() as i64);
            let pp = PostParams::default();
            let (mut done, mut batch) = (0usize, 1usize);
            while done < create_on.len() {
                let size = batch.min(create_on.len() - done);
                let results = join_all(create_on[done..done + size].iter().map(|n| {
                    let (api, pp) = (&api, &pp);
                    let pod = pod_for(ds, n, hash);
                    async move { api.create(pp, &pod).await }
                }))
                .await;
                done += size;
                let mut failed = false;
                for r in results {
                    match r {
                        Ok(p) => self.recorder.normal(
                            ds,
                            "SuccessfulCreate",
                            format!("Created pod: {}", p.name_any()),
                        ),
                        Err(e) => {
                            self.expectations.observed_add(key);
                            self.recorder.warning(
                                ds,
                                "FailedCreate",
                                format!("Error creating: {}", api_message(&e)),
                            );
                            failed = true;
                            failure = Some(e.into());
                        }
                    }
                }
                if failed {
                    for _ in done..create_on.len() {
                        self.expectations.observed_add(key);
                    }
                    break;
                }
                batch *= 2;
            }
        }
        if !delete.is_empty() {
            self.expectations
                .expect_deletes(key, delete.iter().map(|p| p.name_any()));
            let results = join_all(delete.iter().map(|p| {
                let api = &api;
                async move { api.delete(&p.name_any(), &DeleteParams::default()).await }
            }))
            .await;
            for (p, r) in delete.iter().zip(results) {
                match r {
                    Ok(_) => self.recorder.normal(
                        ds,
                        "SuccessfulDelete",
                        format!("Deleted pod: {}", p.name_any()),
                    ),
                    Err(e) => {
                        self.expectations.observed_delete(key, &p.name_any());
                        if !claim::is_not_found(&e) {
                            self.recorder.warning(
                                ds,
                                "FailedDelete",
                                format!("Error deleting: {}", api_message(&e)),
                            );
                            failure = Some(e.into());
                        }
                    }
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Kubernetes' rollingUpdate: replace old pods within maxUnavailable, or surge new
    /// pods next to old ones within maxSurge.
    async fn rolling_update(
        &self,
        key: &Key,
        ds: &DaemonSet,
        nodes: &[Arc<Node>],
        by_node: &HashMap<String, Vec<Arc<Pod>>>,
        hash: &str,
    ) -> Result<Option<Duration>, Error> {
        let now = Timestamp::now();
        let min_ready = ds
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);
        let desired = nodes.iter().filter(|n| should_run(ds, n).0).count() as i32;
        let (max_surge, max_unavailable) = surge_and_unavailable(ds, desired);
        let gen = ds.metadata.generation;
        let mut requeue: Option<Duration> = None;
        let mut available = |p: &Pod| {
            let ok = podutil::is_available(p, min_ready, now);
            if !ok {
                if let Some(s) = podutil::seconds_until_available(p, min_ready, now) {
                    requeue = min_dur(
                        requeue,
                        Some(Duration::from_secs(s as u64) + Duration::from_millis(100)),
                    );
                }
            }
            ok
        };
        let node_map: HashMap<String, &Arc<Node>> =
            nodes.iter().map(|n| (n.name_any(), n)).collect();
        let mut keys: Vec<&String> = by_node.keys().collect();
        keys.sort();
        if max_surge == 0 {
            let mut unavailable = 0;
            let mut allowed: Vec<Arc<Pod>> = Vec::new();
            let mut candidates: Vec<Arc<Pod>> = Vec::new();
            for node in keys {
                let Some((new, old)) = updated_on_node(&by_node[node], hash, gen) else {
                    unavailable += 1;
                    continue;
                };
                match (new, old) {
                    (None, None) | (Some(_), Some(_)) => unavailable += 1,
                    (Some(n), None) => {
                        if !available(&n) {
                            unavailable += 1;
                        }
                    }
                    (None, Some(o)) => {
                        if !available(&o) {
                            allowed.push(o);
                        } else if unavailable < max_unavailable {
                            candidates.push(o);
                        }
                    }
                }
            }
            let remaining =
                (max_unavailable - unavailable).clamp(0, candidates.len() as i32) as usize;
            allowed.extend(candidates.into_iter().take(remaining));
            self.sync_nodes(key, ds, allowed, Vec::new(), hash).await?;
            return Ok(requeue);
        }
        let mut old_to_delete: Vec<Arc<Pod>> = Vec::new();
        let mut should_not_run: Vec<Arc<Pod>> = Vec::new();
        let mut candidates: Vec<String> = Vec::new();
        let mut allowed_new: Vec<String> = Vec::new();
        let mut surging = 0;
        for node in keys {
            let Some((new, old)) = updated_on_node(&by_node[node], hash, gen) else {
                surging += 1;
                continue;
            };
            match (new, old) {
                (_, None) => {}
                (None, Some(o)) => {
                    if !available(&o) {
                        let run = node_map.get(node).is_some_and(|n| should_run(ds, n).0);
                        if !run {
                            should_not_run.push(o);
                            continue;
                        }
                        allowed_new.push(node.clone());
                    } else if surging < max_surge {
                        candidates.push(node.clone());
                    }
                }
                (Some(n), Some(o)) => {
                    if !available(&n) {
                        surging += 1;
                        continue;
                    }
                    old_to_delete.push(o);
                }
            }
        }
        let remaining = (max_surge - surging).clamp(0, candidates.len() as i32) as usize;
        allowed_new.extend(candidates.into_iter().take(remaining));
        let unavail_budget = max_unavailable.max(0) as usize;
        old_to_delete.extend(should_not_run.into_iter().take(unavail_budget));
        self.sync_nodes(key, ds, old_to_delete, allowed_new, hash)
            .await?;
        Ok(requeue)
    }

    async fn cleanup_history(
        &self,
        ds: &DaemonSet,
        revs: &Revisions,
        pods: &[Arc<Pod>],
    ) -> Result<(), Error> {
        let limit = ds
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10);
        let in_use: HashSet<String> = pods
            .iter()
            .filter_map(|p| p.labels().get(history::HASH_LABEL).cloned())
            .collect();
        history::truncate(
            &self.client,
            &ds.namespace().unwrap_or_default(),
            revs,
            limit,
            &in_use,
            |r| {
                r.labels()
                    .get(history::HASH_LABEL)
                    .cloned()
                    .unwrap_or_default()
            },
        )
        .await
    }

    async fn update_status(
        &self,
        ds: &DaemonSet,
        nodes: &[Arc<Node>],
        by_node: &HashMap<String, Vec<Arc<Pod>>>,
        hash: &str,
    ) -> Result<Option<Duration>, Error> {
        let now = Timestamp::now();
        let min_ready = ds
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);
        let (mut desired, mut current, mut mis, mut ready, mut avail, mut updated) =
            (0, 0, 0, 0, 0, 0);
        let mut requeue = None;
        for node in nodes {
            let (run, _) = should_run(ds, node);
            let mut pods: Vec<Arc<Pod>> = by_node
                .get(&node.name_any())
                .map(|v| {
                    v.iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let scheduled = !pods.is_empty();
            if run {
                desired += 1;
                if !scheduled {
                    continue;
                }
                current += 1;
                pods.sort_by_key(|p| (created(p), phase_rank(p)));
                let p = &pods[0];
                if podutil::is_ready(p) {
                    ready += 1;
                    if podutil::is_available(p, min_ready, now) {
                        avail += 1;
                    } else if let Some(s) = podutil::seconds_until_available(p, min_ready, now) {
                        requeue = min_dur(
                            requeue,
                            Some(Duration::from_secs(s as u64) + Duration::from_millis(100)),
                        );
                    }
                }
                if is_updated(p, hash, ds.metadata.generation) {
                    updated += 1;
                }
            } else if scheduled {
                mis += 1;
            }
        }
        let old = ds.status.clone().unwrap_or_default();
        let status = DaemonSetStatus {
            collision_count: old.collision_count,
            conditions: old.conditions.clone(),
            current_number_scheduled: current,
            desired_number_scheduled: desired,
            number_available: Some(avail).filter(|n| *n > 0),
            number_misscheduled: mis,
            number_ready: ready,
            number_unavailable: Some(desired - avail).filter(|n| *n > 0),
            observed_generation: ds.metadata.generation,
            updated_number_scheduled: Some(updated).filter(|n| *n > 0),
        };
        if status != old {
            let api: Api<DaemonSet> =
                Api::namespaced(self.client.clone(), &ds.namespace().unwrap_or_default());
            let patch = json!({"status": {
                "currentNumberScheduled": status.current_number_scheduled,
                "desiredNumberScheduled": status.desired_number_scheduled,
                "numberMisscheduled": status.number_misscheduled,
                "numberReady": status.number_ready,
                "numberAvailable": status.number_available,
                "numberUnavailable": status.number_unavailable,
                "updatedNumberScheduled": status.updated_number_scheduled,
                "observedGeneration": status.observed_generation,
            }});
            match api
                .patch_status(
                    &ds.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if claim::is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(requeue)
    }
}

fn phase_rank(p: &Pod) -> u8 {
    match phase(p) {
        "Running" => 0,
        "Pending" => 1,
        _ => 2,
    }
}

fn min_dur(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Pods by the node they are on or aimed at.
fn group_by_node(pods: &[Arc<Pod>]) -> HashMap<String, Vec<Arc<Pod>>> {
    let mut m: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    for p in pods {
        if let Some(n) = target_node(p) {
            m.entry(n).or_default().push(p.clone());
        }
    }
    m
}

/// The new and old pod on a node; None if there are duplicates of either (the manage
/// step cleans those up first).
type NewOld = (Option<Arc<Pod>>, Option<Arc<Pod>>);
fn updated_on_node(pods: &[Arc<Pod>], hash: &str, gen: Option<i64>) -> Option<NewOld> {
    let (mut new, mut old) = (None, None);
    for p in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let slot = if is_updated(p, hash, gen) {
            &mut new
        } else {
            &mut old
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(p.clone());
    }
    Some((new, old))
}

/// The pod for one node: the template, the default tolerations, and a required node
/// affinity naming the node (Kubernetes' ReplaceDaemonSetPodNodeNameNodeAffinity).
pub fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let spec = ds.spec.clone().unwrap_or_default();
    let tm = spec.template.metadata.unwrap_or_default();
    let mut pod_spec = spec.template.spec.unwrap_or_default();
    add_daemon_tolerations(&mut pod_spec);
    let term = NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
    };
    let affinity = pod_spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
    let mut labels = tm.labels.unwrap_or_default();
    labels.insert(history::HASH_LABEL.into(), hash.into());
    if let Some(g) = ds.metadata.generation {
        labels.insert(TEMPLATE_GENERATION.into(), g.to_string());
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ds.name_any())),
            namespace: ds.namespace(),
            labels: Some(labels),
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![owner_ref(
                "apps/v1",
                "DaemonSet",
                &ds.name_any(),
                ds.metadata.uid.as_deref().unwrap_or_default(),
            )]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, PodSpec, PodTemplateSpec, Taint, Toleration};

    fn node(name: &str, labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n.spec = Some(NodeSpec {
            taints: Some(taints),
            ..Default::default()
        });
        n
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: None,
            effect: effect.into(),
            time_added: None,
        }
    }

    fn ds(spec: PodSpec) -> DaemonSet {
        let mut d = DaemonSet::default();
        d.metadata.name = Some("agent".into());
        d.metadata.generation = Some(2);
        d.spec = Some(k8s_openapi::api::apps::v1::DaemonSetSpec {
            template: PodTemplateSpec {
                metadata: None,
                spec: Some(spec),
            },
            ..Default::default()
        });
        d
    }

    #[test]
    fn node_eligibility() {
        let d = ds(PodSpec {
            node_selector: Some([("role".to_string(), "edge".to_string())].into()),
            ..Default::default()
        });
        assert_eq!(
            should_run(&d, &node("a", &[("role", "edge")], vec![])),
            (true, true)
        );
        assert_eq!(
            should_run(&d, &node("b", &[("role", "core")], vec![])),
            (false, false)
        );
        let d = ds(PodSpec::default());
        // A NoSchedule taint keeps new pods out but lets a running one stay.
        assert_eq!(
            should_run(&d, &node("c", &[], vec![taint("dedicated", "NoSchedule")])),
            (false, true)
        );
        // An untolerated NoExecute taint evicts.
        assert_eq!(
            should_run(&d, &node("d", &[], vec![taint("dedicated", "NoExecute")])),
            (false, false)
        );
        // PreferNoSchedule is no obstacle.
        assert_eq!(
            should_run(
                &d,
                &node("e", &[], vec![taint("dedicated", "PreferNoSchedule")])
            ),
            (true, true)
        );
        // The default tolerations: not-ready, unreachable, cordoned nodes still run one.
        for t in [
            taint(nodeutil::NOT_READY, "NoExecute"),
            taint(nodeutil::UNREACHABLE, "NoExecute"),
            taint(nodeutil::UNSCHEDULABLE, "NoSchedule"),
        ] {
            assert_eq!(should_run(&d, &node("f", &[], vec![t])), (true, true));
        }
        let d = ds(PodSpec {
            tolerations: Some(vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Exists".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(
            should_run(&d, &node("g", &[], vec![taint("dedicated", "NoSchedule")])),
            (true, true)
        );
        let d = ds(PodSpec {
            node_name: Some("x".into()),
            ..Default::default()
        });
        assert_eq!(should_run(&d, &node("y", &[], vec![])), (false, false));
    }

    #[test]
    fn pods_are_pinned_by_node_affinity() {
        let d = ds(PodSpec::default());
        let p = pod_for(&d, "n7", "abc");
        assert_eq!(target_node(&p).as_deref(), Some("n7"));
        assert_eq!(
            p.labels().get(history::HASH_LABEL).map(String::as_str),
            Some("abc")
        );
        assert_eq!(
            p.labels().get(TEMPLATE_GENERATION).map(String::as_str),
            Some("2")
        );
        assert_eq!(
            p.spec.as_ref().unwrap().tolerations.as_ref().unwrap().len(),
            6
        );
        assert!(is_updated(&p, "abc", None));
        assert!(!is_updated(&p, "xyz", Some(3)));
    }
}
