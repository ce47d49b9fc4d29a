//! The Job controller (batch/v1), following Kubernetes' pkg/controller/job as of 1.33:
//! pods run to `completions` successes, `parallelism` at a time, in NonIndexed or Indexed
//! mode; failures count against backoffLimit with an exponential delay before replacement
//! pods; activeDeadlineSeconds and suspend; ttlSecondsAfterFinished (Kubernetes'
//! ttl-after-finished controller, folded in here).
//!
//! Finished pods are counted exactly once even across controller restarts, as Kubernetes
//! ≥1.26 does: every pod carries the `batch.kubernetes.io/job-tracking` finalizer; a
//! finished pod's uid is first written to status.uncountedTerminatedPods, then its
//! finalizer is removed, then it moves from there to the succeeded/failed counters. Status
//! writes carry the resourceVersion read, so a stale cache can never move a counter back.
//! The terminal condition is written in two steps (SuccessCriteriaMet or FailureTarget
//! first, Complete or Failed once no pod is left terminating), as 1.33 does.

use crate::claim::{self, api_message, ignore_gone, Owner};
use crate::expectations::Expectations;
use crate::informer::{Change, Informer, Key};
use crate::podutil::{self, controller_of};
use crate::queue::{Outcome, Queue};
use crate::{events::Recorder, selector, Error};
use futures::future::join_all;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// Kubernetes' DefaultJobPodFailureBackOff and MaxJobPodFailureBackOff.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(360);
/// Kubernetes' MaxPodCreateDeletePerSync.
const MAX_PER_SYNC: usize = 500;
/// Kubernetes' MaxUncountedPods: keeps status small and one sync short.
const MAX_UNCOUNTED: usize = 500;

/// Failures since the last success, and when the last one happened: how long to wait
/// before the next replacement pod.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Backoff {
    pub failures: u32,
    pub last_failure: Option<Timestamp>,
}

impl Backoff {
    /// Kubernetes' newBackoffRecord: successes reset the count; failures after the last
    /// success add to it.
    pub fn record(self, succeeded: &[Timestamp], failed: &[Timestamp]) -> Backoff {
        let mut failed = failed.to_vec();
        failed.sort();
        let Some(last_success) = succeeded.iter().max() else {
            return match failed.last() {
                None => self,
                Some(t) => Backoff {
                    failures: self.failures + failed.len() as u32,
                    last_failure: Some(*t),
                },
            };
        };
        let after: Vec<&Timestamp> = failed.iter().filter(|t| *t > last_success).collect();
        Backoff {
            failures: after.len() as u32,
            last_failure: after.last().map(|t| **t),
        }
    }

    /// Time left before another pod may be created.
    pub fn remaining(&self, now: Timestamp) -> Duration {
        let (Some(last), true) = (self.last_failure, self.failures > 0) else {
            return Duration::ZERO;
        };
        let delay = backoff_delay(self.failures);
        let elapsed = now.duration_since(last);
        let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
        delay.saturating_sub(elapsed)
    }
}

/// 10 s doubling per consecutive failure, capped at 6 minutes.
pub fn backoff_delay(failures: u32) -> Duration {
    let mut d = BACKOFF_BASE;
    for _ in 1..failures {
        d *= 2;
        if d >= BACKOFF_MAX {
            return BACKOFF_MAX;
        }
    }
    d
}

pub struct Controller {
    client: Client,
    jobs: Informer<Job>,
    pods: Informer<Pod>,
    recorder: Recorder,
    expectations: Arc<Expectations>,
    /// Pod uids whose finalizer removal was sent but not yet seen, per job.
    finalizers: Arc<Mutex<HashMap<Key, HashSet<String>>>>,
    backoff: Mutex<HashMap<Key, Backoff>>,
    queue: Queue,
    /// Pods whose tracking finalizer must go because their Job is gone or finished.
    orphans: Queue,
}

fn job_owner(pod: &Pod) -> Option<Key> {
    let r = controller_of(&pod.metadata)?;
    (r.kind == "Job" && r.api_version == "batch/v1")
        .then(|| Key::new(pod.namespace().unwrap_or_default(), r.name.clone()))
}

fn has_finalizer(pod: &Pod) -> bool {
    pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Kubernetes' isPodFailed: Failed, or deleted before it succeeded (unless only failed
/// pods are replaced).
fn is_pod_failed(pod: &Pod, job: &Job) -> bool {
    phase(pod) == "Failed"
        || (!only_replace_failed(job)
            && pod.metadata.deletion_timestamp.is_some()
            && phase(pod) != "Succeeded")
}

fn only_replace_failed(job: &Job) -> bool {
    let spec = job.spec.as_ref();
    spec.and_then(|s| s.pod_replacement_policy.as_deref()) == Some("Failed")
        || spec.is_some_and(|s| s.pod_failure_policy.is_some())
}

fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some() && !matches!(phase(pod), "Succeeded" | "Failed")
}

pub fn is_indexed(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed")
}

fn completion_index(pod: &Pod) -> Option<i32> {
    pod.annotations()
        .get(COMPLETION_INDEX)?
        .parse()
        .ok()
        .filter(|i: &i32| *i >= 0)
}

/// When a pod finished, as Kubernetes' getFinishedTime: its containers' last finish,
/// else when it stopped being Ready, else its deletion, else its creation.
fn finished_time(pod: &Pod) -> Timestamp {
    let st = pod.status.as_ref();
    let statuses = st
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or(&[]);
    if !statuses.is_empty() {
        let times: Vec<Option<Timestamp>> = statuses
            .iter()
            .map(|c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .and_then(|t| t.finished_at.as_ref())
                    .map(|t| t.0)
            })
            .collect();
        if times.iter().all(|t| t.is_some()) {
            if let Some(t) = times.into_iter().flatten().max() {
                return t;
            }
        }
    }
    if let Some(t) = st
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "Ready" && c.status == "False")
        })
        .and_then(|c| c.last_transition_time.as_ref())
    {
        return t.0;
    }
    if let Some(t) = &pod.metadata.deletion_timestamp {
        let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
        return t.0 - SignedDuration::from_secs(grace);
    }
    pod.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(Timestamp::now)
}

/// A job is finished once it has a Complete or Failed condition that is True.
pub fn finished(job: &Job) -> Option<&JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn find_condition<'a>(s: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    s.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

fn new_condition(type_: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Kubernetes' ensureJobConditionStatus: sets a condition, adding a False one only if
/// the type already exists. Returns whether the list changed.
fn ensure_condition(
    s: &mut JobStatus,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> bool {
    let list = s.conditions.get_or_insert_with(Vec::new);
    let mut c = new_condition(type_, reason, message, now);
    c.status = status.into();
    if let Some(old) = list.iter_mut().find(|o| o.type_ == type_) {
        if old.status != status
            || old.reason.as_deref() != Some(reason)
            || old.message.as_deref() != Some(message)
        {
            *old = c;
            return true;
        }
        return false;
    }
    if status != "False" {
        list.push(c);
        return true;
    }
    false
}

/// A set of completion indexes, written as Kubernetes writes completedIndexes: ascending,
/// runs of three or more as "a-b" ("1,3-5,7").
pub fn format_indexes(ix: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let v: Vec<i32> = ix.iter().copied().collect();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        if j == i {
            out.push(v[i].to_string());
        } else {
            out.push(format!("{}-{}", v[i], v[j]));
        }
        i = j + 1;
    }
    out.join(",")
}

/// Parses completedIndexes, keeping the indexes below `completions`.
pub fn parse_indexes(s: &str, completions: i32) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<i32>(), b.parse::<i32>()),
            None => (part.parse::<i32>(), part.parse::<i32>()),
        };
        if let (Ok(a), Ok(b)) = (a, b) {
            for i in a.max(0)..=b.min(completions - 1) {
                out.insert(i);
            }
        }
    }
    out
}

/// The lowest `count` indexes below `completions` neither succeeded nor running.
pub fn first_pending_indexes(
    succeeded: &BTreeSet<i32>,
    active: &HashSet<i32>,
    count: usize,
    completions: i32,
) -> Vec<i32> {
    (0..completions)
        .filter(|i| !succeeded.contains(i) && !active.contains(i))
        .take(count)
        .collect()
}

/// What one sync learned, passed between its steps (Kubernetes' syncJobCtx).
struct Ctx {
    job: Job,
    pods: Vec<Arc<Pod>>,
    active: Vec<Arc<Pod>>,
    uncounted_succeeded: HashSet<String>,
    uncounted_failed: HashSet<String>,
    expected_rm: HashSet<String>,
    succeeded: i32,
    ready: i32,
    terminating: i32,
    finished: Option<JobCondition>,
    prev_succeeded_ix: BTreeSet<i32>,
    succeeded_ix: BTreeSet<i32>,
    backoff: Backoff,
}

impl Controller {
    pub fn new(
        client: Client,
        jobs: Informer<Job>,
        pods: Informer<Pod>,
        recorder: Recorder,
    ) -> Controller {
        Controller {
            client,
            jobs,
            pods,
            recorder,
            expectations: Default::default(),
            finalizers: Default::default(),
            backoff: Default::default(),
            queue: Queue::new("job"),
            orphans: Queue::new("job-orphan-pods"),
        }
    }

    /// Hooks the informers to the queues; returns (jobs queue, orphan pods queue).
    pub fn register(self: &Arc<Self>) -> (Queue, Queue) {
        let q = self.queue.clone();
        self.jobs.on_change(move |c| q.add(Key::of(c.object())));
        let (q, oq, exp, fin, jobs) = (
            self.queue.clone(),
            self.orphans.clone(),
            self.expectations.clone(),
            self.finalizers.clone(),
            self.jobs.clone(),
        );
        self.pods.on_change(move |c| {
            let pod = c.object();
            let owner = job_owner(pod);
            let uid = pod.metadata.uid.clone().unwrap_or_default();
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
                if matches!(c, Change::Deleted(_)) || !has_finalizer(pod) {
                    if let Some(set) = fin.lock().unwrap().get_mut(o) {
                        set.remove(&uid);
                    }
                }
            }
            if let Change::Applied { old: Some(old), .. } = c {
                if let Some(prev) = job_owner(old).filter(|p| Some(p) != owner.as_ref()) {
                    q.add(prev);
                }
            }
            let deleted = matches!(c, Change::Deleted(_));
            match &owner {
                Some(o) => {
                    let job = jobs.get(o);
                    let live = job.as_ref().filter(|j| {
                        controller_of(&pod.metadata).map(|r| &r.uid) == j.metadata.uid.as_ref()
                    });
                    match live {
                        Some(j) if finished(j).is_none() => q.add(o.clone()),
                        _ if has_finalizer(pod) && !deleted => oq.add(Key::of(pod)),
                        _ => {}
                    }
                }
                None if !deleted => {
                    if has_finalizer(pod) {
                        oq.add(Key::of(pod));
                    }
                    let ns = pod.namespace().unwrap_or_default();
                    for j in jobs.list_namespace(&ns) {
                        if selects(&j, pod) {
                            q.add(Key::of(&*j));
                        }
                    }
                }
                None => {}
            }
        });
        (self.queue.clone(), self.orphans.clone())
    }

    /// Removes the tracking finalizer from a pod whose Job is gone or finished.
    pub async fn reconcile_orphan(&self, key: Key) -> Outcome {
        let Some(pod) = self.pods.get(&key) else {
            return Ok(None);
        };
        if !has_finalizer(&pod) {
            return Ok(None);
        }
        if let Some(r) = controller_of(&pod.metadata) {
            if r.kind != "Job" || r.api_version != "batch/v1" {
                return Ok(None);
            }
            let job = self
                .jobs
                .get(&Key::new(key.namespace.clone(), r.name.clone()));
            if job
                .is_some_and(|j| j.metadata.uid.as_ref() == Some(&r.uid) && finished(&j).is_none())
            {
                return Ok(None);
            }
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        ignore_gone(remove_finalizer(&api, &pod).await)?;
        Ok(None)
    }

    pub async fn reconcile(&self, key: Key) -> Outcome {
        let Some(shared) = self.jobs.get(&key) else {
            self.expectations.forget(&key);
            self.finalizers.lock().unwrap().remove(&key);
            self.backoff.lock().unwrap().remove(&key);
            return Ok(None);
        };
        if let Some(c) = finished(&shared) {
            self.backoff.lock().unwrap().remove(&key);
            self.cleanup_finished_pods(&shared).await?;
            return self.ttl_after_finished(&shared, c).await;
        }
        let mode = shared
            .spec
            .as_ref()
            .and_then(|s| s.completion_mode.as_deref())
            .unwrap_or("NonIndexed");
        if mode != "NonIndexed" && mode != "Indexed" {
            self.recorder.warning(
                &*shared,
                "UnknownCompletionMode",
                "Skipped Job sync because completion mode is unknown".into(),
            );
            return Ok(None);
        }
        let Some(sel) = shared.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
            // The API server generates the selector; without one the Job selects nothing.
            tracing::warn!(job = %key, "job has no selector; not syncing it");
            return Ok(None);
        };
        if selector::is_empty(sel) {
            return Ok(None);
        }
        let mut job = (*shared).clone();
        let now = Timestamp::now();
        let status = job.status.get_or_insert_with(Default::default);
        let uncounted = status
            .uncounted_terminated_pods
            .get_or_insert_with(Default::default)
            .clone();
        let satisfied = self.expectations.satisfied(&key);
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        let owner = Owner::of(&job, "batch/v1", "Job");
        let pods = claim::claim(
            self.pods.list_namespace(&key.namespace),
            &pods_api,
            &owner,
            |p| selects(&job, p),
            Some(TRACKING_FINALIZER),
        )
        .await?;
        let active: Vec<Arc<Pod>> = pods
            .iter()
            .filter(|p| podutil::is_active(p))
            .cloned()
            .collect();
        let expected_rm = self
            .finalizers
            .lock()
            .unwrap()
            .get(&key)
            .cloned()
            .unwrap_or_default();
        let mut ctx = Ctx {
            uncounted_succeeded: uncounted
                .succeeded
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            uncounted_failed: uncounted
                .failed
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            expected_rm,
            succeeded: 0,
            ready: active.iter().filter(|p| podutil::is_ready(p)).count() as i32,
            terminating: pods.iter().filter(|p| is_terminating(p)).count() as i32,
            active,
            pods,
            finished: None,
            prev_succeeded_ix: BTreeSet::new(),
            succeeded_ix: BTreeSet::new(),
            backoff: Backoff::default(),
            job,
        };
        let (new_succeeded, new_failed) = self.new_finished(&ctx);
        let st = ctx.job.status.clone().unwrap_or_default();
        ctx.succeeded = st.succeeded.unwrap_or(0)
            + new_succeeded.len() as i32
            + ctx.uncounted_succeeded.len() as i32;
        let failed =
            st.failed.unwrap_or(0) + new_failed.len() as i32 + ctx.uncounted_failed.len() as i32;
        let suspended = suspended(&ctx.job);
        if st.start_time.is_none() && !suspended {
            ctx.job.status.as_mut().unwrap().start_time = Some(Time(now));
        }
        let prev_backoff = self
            .backoff
            .lock()
            .unwrap()
            .get(&key)
            .copied()
            .unwrap_or_default();
        ctx.backoff = prev_backoff.record(
            &new_succeeded
                .iter()
                .map(|p| finished_time(p))
                .collect::<Vec<_>>(),
            &new_failed
                .iter()
                .map(|p| finished_time(p))
                .collect::<Vec<_>>(),
        );
        let spec = ctx.job.spec.clone().unwrap_or_default();
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let mut requeue: Option<Duration> = None;
        let st = ctx.job.status.clone().unwrap_or_default();
        ctx.finished = find_condition(&st, "SuccessCriteriaMet")
            .filter(|c| c.status == "True")
            .cloned();
        if ctx.finished.is_none() {
            if let Some(t) = find_condition(&st, "FailureTarget").filter(|c| c.status == "True") {
                ctx.finished = Some(new_condition(
                    "Failed",
                    t.reason.as_deref().unwrap_or(""),
                    t.message.as_deref().unwrap_or(""),
                    now,
                ));
            } else if failed > backoff_limit || past_backoff_limit_on_failure(&ctx.job, &ctx.pods) {
                ctx.finished = Some(new_condition(
                    "FailureTarget",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    now,
                ));
            } else if let Some(left) = deadline_left(&ctx.job, now) {
                if left.is_zero() {
                    ctx.finished = Some(new_condition(
                        "FailureTarget",
                        "DeadlineExceeded",
                        "Job was active longer than specified deadline",
                        now,
                    ));
                } else {
                    requeue = Some(left);
                }
            }
        }
        if is_indexed(&ctx.job) {
            let completions = spec.completions.unwrap_or(1);
            ctx.prev_succeeded_ix =
                parse_indexes(st.completed_indexes.as_deref().unwrap_or(""), completions);
            ctx.succeeded_ix = ctx.prev_succeeded_ix.clone();
            for p in &ctx.pods {
                if let Some(ix) = completion_index(p) {
                    if phase(p) == "Succeeded" && ix < completions && has_finalizer(p) {
                        ctx.succeeded_ix.insert(ix);
                    }
                }
            }
            ctx.succeeded = ctx.succeeded_ix.len() as i32;
        }
        let mut active = ctx.active.len() as i32;
        let mut suspend_changed = false;
        let mut manage_err = None;
        if ctx.finished.is_some() {
            let to_delete = ctx.active.clone();
            let (deleted_ready, deleted, err) = self.delete_active(&ctx.job, &to_delete).await;
            if deleted != active || !satisfied {
                ctx.finished = None;
            }
            active -= deleted;
            ctx.terminating += deleted;
            ctx.ready -= deleted_ready;
            manage_err = err;
        } else {
            let mut managed = false;
            if satisfied && ctx.job.metadata.deletion_timestamp.is_none() {
                let (a, r, err) = self.manage(&key, &mut ctx).await;
                active = a;
                if r.is_some() {
                    requeue = min_dur(requeue, r);
                }
                manage_err = err;
                managed = true;
            }
            let complete = match spec.completions {
                None => ctx.succeeded > 0 && active == 0,
                Some(c) => ctx.succeeded >= c && active == 0,
            };
            if complete {
                ctx.finished = Some(new_condition(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    now,
                ));
            } else if managed {
                let status = ctx.job.status.as_mut().unwrap();
                if suspended {
                    if ensure_condition(
                        status,
                        "Suspended",
                        "True",
                        "JobSuspended",
                        "Job suspended",
                        now,
                    ) {
                        suspend_changed = true;
                        self.recorder
                            .normal(&*shared, "Suspended", "Job suspended".into());
                    }
                } else if ensure_condition(
                    status,
                    "Suspended",
                    "False",
                    "JobResumed",
                    "Job resumed",
                    now,
                ) {
                    suspend_changed = true;
                    self.recorder
                        .normal(&*shared, "Resumed", "Job resumed".into());
                    // activeDeadlineSeconds counts time continuously active.
                    status.start_time = Some(Time(now));
                }
            }
        }
        let status = ctx.job.status.as_mut().unwrap();
        let mut needs_flush = suspend_changed
            || status.active.unwrap_or(0) != active
            || status.ready != Some(ctx.ready)
            || status.terminating != Some(ctx.terminating)
            || shared.status.as_ref().and_then(|s| s.start_time.as_ref())
                != status.start_time.as_ref();
        status.active = Some(active);
        status.ready = Some(ctx.ready);
        status.terminating = Some(ctx.terminating);
        if shared
            .status
            .as_ref()
            .and_then(|s| s.uncounted_terminated_pods.as_ref())
            .is_none()
        {
            needs_flush = true;
        }
        self.track_and_remove_finalizers(&key, &mut ctx, needs_flush)
            .await?;
        if let Some(e) = manage_err {
            return Err(e);
        }
        Ok(requeue)
    }

    /// Pods newly succeeded or failed: tracked by a finalizer, not yet in uncounted.
    fn new_finished(&self, ctx: &Ctx) -> (Vec<Arc<Pod>>, Vec<Arc<Pod>>) {
        let completions = ctx
            .job
            .spec
            .as_ref()
            .and_then(|s| s.completions)
            .unwrap_or(1);
        let valid = |p: &Pod| {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            has_finalizer(p)
                && !ctx.expected_rm.contains(&uid)
                && (!is_indexed(&ctx.job) || completion_index(p).is_some_and(|i| i < completions))
        };
        let succeeded = ctx
            .pods
            .iter()
            .filter(|p| valid(p) && phase(p) == "Succeeded")
            .filter(|p| {
                !ctx.uncounted_succeeded
                    .contains(p.metadata.uid.as_deref().unwrap_or(""))
            })
            .cloned()
            .collect();
        let failed = ctx
            .pods
            .iter()
            .filter(|p| valid(p) && is_pod_failed(p, &ctx.job))
            .filter(|p| {
                !ctx.uncounted_failed
                    .contains(p.metadata.uid.as_deref().unwrap_or(""))
            })
            .cloned()
            .collect();
        (succeeded, failed)
    }

    /// Creates or deletes pods toward the wanted number of active ones (Kubernetes'
    /// manageJob). Returns active, when to look again, and an error to retry on.
    async fn manage(&self, key: &Key, ctx: &mut Ctx) -> (i32, Option<Duration>, Option<Error>) {
        let job = ctx.job.clone();
        let spec = job.spec.clone().unwrap_or_default();
        let mut active = ctx.active.len() as i32;
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        if suspended(&job) {
            let victims = ctx.active.clone();
            let (ready, removed, err) = self.delete_job_pods(key, &job, &pods_api, &victims).await;
            ctx.terminating += removed;
            ctx.ready -= ready;
            return (active - removed, None, err);
        }
        let want = match spec.completions {
            None if ctx.succeeded > 0 => active,
            None => parallelism,
            Some(c) => (c - ctx.succeeded).clamp(0, parallelism),
        };
        let rm_at_least = (active - want).max(0) as usize;
        let mut victims = pods_for_removal(&job, &ctx.active, rm_at_least);
        victims.truncate(MAX_PER_SYNC);
        if !victims.is_empty() {
            let (ready, removed, err) = self.delete_job_pods(key, &job, &pods_api, &victims).await;
            ctx.terminating += removed;
            ctx.ready -= ready;
            return (active - removed, None, err);
        }
        let terminating = if only_replace_failed(&job) {
            ctx.terminating
        } else {
            0
        };
        let mut diff = want - terminating - active;
        if diff <= 0 {
            return (active, None, None);
        }
        let remaining = ctx.backoff.remaining(Timestamp::now());
        if !remaining.is_zero() {
            return (active, Some(remaining.max(Duration::from_secs(1))), None);
        }
        diff = diff.min(MAX_PER_SYNC as i32);
        let mut indexes: Vec<Option<i32>> = vec![None; diff as usize];
        if is_indexed(&job) {
            let running: HashSet<i32> = ctx
                .active
                .iter()
                .filter_map(|p| completion_index(p))
                .collect();
            indexes = first_pending_indexes(
                &ctx.succeeded_ix,
                &running,
                diff as usize,
                spec.completions.unwrap_or(1),
            )
            .into_iter()
            .map(Some)
            .collect();
            diff = indexes.len() as i32;
        }
        if diff == 0 {
            return (active, None, None);
        }
        self.expectations.expect_adds(key, i64::from(diff));
        active += diff;
        let pp = PostParams::default();
        let (mut done, mut batch) = (0usize, 1usize);
        let n = indexes.len();
        while done < n {
            let size = batch.min(n - done);
            let results = join_all(indexes[done..done + size].iter().map(|ix| {
                let (api, pp) = (&pods_api, &pp);
                let pod = pod_for(&job, *ix);
                async move { api.create(pp, &pod).await }
            }))
            .await;
            done += size;
            let mut failed = None;
            for r in results {
                match r {
                    Ok(p) => self.recorder.normal(
                        &job,
                        "SuccessfulCreate",
                        format!("Created pod: {}", p.name_any()),
                    ),
                    Err(e) => {
                        self.expectations.observed_add(key);
                        active -= 1;
                        failed = Some(e);
                    }
                }
            }
            if let Some(e) = failed {
                for _ in done..n {
                    self.expectations.observed_add(key);
                    active -= 1;
                }
                self.recorder.warning(
                    &job,
                    "FailedCreate",
                    format!("Error creating: {}", api_message(&e)),
                );
                return (active, None, Some(e.into()));
            }
            batch *= 2;
        }
        (active, None, None)
    }

    /// Deletes pods that are not wanted (excess or suspended): their finalizer goes
    /// first, so they are not counted as failures.
    async fn delete_job_pods(
        &self,
        key: &Key,
        job: &Job,
        api: &Api<Pod>,
        pods: &[Arc<Pod>],
    ) -> (i32, i32, Option<Error>) {
        self.expectations
            .expect_deletes(key, pods.iter().map(|p| p.name_any()));
        let results = join_all(pods.iter().map(|p| async move {
            if has_finalizer(p) {
                remove_finalizer(api, p).await?;
            }
            api.delete(&p.name_any(), &DeleteParams::default()).await
        }))
        .await;
        let (mut ready, mut removed, mut err) = (0, 0, None);
        for (p, r) in pods.iter().zip(results) {
            match r {
                Ok(_) => {
                    removed += 1;
                    if podutil::is_ready(p) {
                        ready += 1;
                    }
                    self.recorder.normal(
                        job,
                        "SuccessfulDelete",
                        format!("Deleted pod: {}", p.name_any()),
                    );
                }
                Err(e) => {
                    self.expectations.observed_delete(key, &p.name_any());
                    if claim::is_not_found(&e) {
                        removed += 1;
                    } else {
                        err = Some(e.into());
                    }
                }
            }
        }
        (ready, removed, err)
    }

    /// Deletes the active pods of a finishing Job, keeping their finalizers so that they
    /// are counted (as failed) once they are gone.
    async fn delete_active(&self, job: &Job, pods: &[Arc<Pod>]) -> (i32, i32, Option<Error>) {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &job.namespace().unwrap_or_default());
        let results = join_all(pods.iter().map(|p| {
            let api = &api;
            async move { api.delete(&p.name_any(), &DeleteParams::default()).await }
        }))
        .await;
        let (mut ready, mut deleted, mut err) = (0, 0, None);
        for (p, r) in pods.iter().zip(results) {
            match r {
                Ok(_) => deleted += 1,
                Err(e) if claim::is_not_found(&e) => deleted += 1,
                Err(e) => {
                    err = Some(e.into());
                    continue;
                }
            }
            if podutil::is_ready(p) {
                ready += 1;
            }
        }
        (ready, deleted, err)
    }

    /// Kubernetes' trackJobStatusAndRemoveFinalizers: record finished pods as uncounted,
    /// remove their finalizers, move them to the counters, then finish the Job.
    async fn track_and_remove_finalizers(
        &self,
        key: &Key,
        ctx: &mut Ctx,
        mut needs_flush: bool,
    ) -> Result<(), Error> {
        let indexed = is_indexed(&ctx.job);
        let completions = ctx
            .job
            .spec
            .as_ref()
            .and_then(|s| s.completions)
            .unwrap_or(1);
        let mut pods = ctx.pods.clone();
        if indexed {
            pods.sort_by_key(|p| completion_index(p).unwrap_or(i32::MAX));
        }
        let mut with_finalizer: HashSet<String> = pods
            .iter()
            .filter(|p| has_finalizer(p))
            .filter_map(|p| p.metadata.uid.clone())
            .filter(|u| !ctx.expected_rm.contains(u))
            .collect();
        let status = ctx.job.status.get_or_insert_with(Default::default);
        if clean_uncounted(status, &with_finalizer) {
            needs_flush = true;
        }
        let mut uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        let mut to_remove: Vec<Arc<Pod>> = Vec::new();
        let mut new_ix: Vec<i32> = Vec::new();
        let mut reached_max = false;
        let job_deleting = ctx.job.metadata.deletion_timestamp.is_some();
        for pod in &pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if !has_finalizer(pod) || ctx.expected_rm.contains(&uid) {
                continue;
            }
            let failed = is_pod_failed(pod, &ctx.job);
            let can_remove =
                job_deleting || ctx.finished.is_some() || phase(pod) == "Succeeded" || failed;
            if !can_remove {
                continue;
            }
            to_remove.push(pod.clone());
            if phase(pod) == "Succeeded" && !ctx.uncounted_failed.contains(&uid) {
                if indexed {
                    if let Some(ix) = completion_index(pod).filter(|i| *i < completions) {
                        if !ctx.prev_succeeded_ix.contains(&ix) {
                            new_ix.push(ix);
                            needs_flush = true;
                        }
                    }
                } else if !ctx.uncounted_succeeded.contains(&uid) {
                    needs_flush = true;
                    uncounted
                        .succeeded
                        .get_or_insert_with(Vec::new)
                        .push(uid.clone());
                }
            } else if failed
                || ctx
                    .finished
                    .as_ref()
                    .is_some_and(|c| c.type_ != "SuccessCriteriaMet")
            {
                let ix_ok = !indexed || completion_index(pod).is_some_and(|i| i < completions);
                if !ctx.uncounted_failed.contains(&uid) && ix_ok {
                    needs_flush = true;
                    uncounted
                        .failed
                        .get_or_insert_with(Vec::new)
                        .push(uid.clone());
                }
            }
            let n = new_ix.len()
                + uncounted.succeeded.as_ref().map_or(0, Vec::len)
                + uncounted.failed.as_ref().map_or(0, Vec::len);
            if n >= MAX_UNCOUNTED {
                reached_max = true;
                break;
            }
        }
        let status = ctx.job.status.get_or_insert_with(Default::default);
        status.uncounted_terminated_pods = Some(uncounted);
        if indexed {
            ctx.succeeded_ix.extend(new_ix);
            let s = format_indexes(&ctx.succeeded_ix);
            if status.completed_indexes.as_deref().unwrap_or("") != s {
                needs_flush = true;
            }
            status.succeeded = Some(ctx.succeeded_ix.len() as i32);
            status.completed_indexes = Some(s);
        }
        let now = Timestamp::now();
        if let Some(f) = ctx.finished.clone() {
            if f.type_ == "FailureTarget" {
                status
                    .conditions
                    .get_or_insert_with(Vec::new)
                    .push(f.clone());
                needs_flush = true;
                ctx.finished = Some(new_condition(
                    "Failed",
                    f.reason.as_deref().unwrap_or(""),
                    f.message.as_deref().unwrap_or(""),
                    now,
                ));
            } else if f.type_ == "SuccessCriteriaMet" {
                if find_condition(status, "SuccessCriteriaMet").is_none() {
                    status
                        .conditions
                        .get_or_insert_with(Vec::new)
                        .push(f.clone());
                    needs_flush = true;
                }
                ctx.finished = Some(new_condition(
                    "Complete",
                    f.reason.as_deref().unwrap_or(""),
                    f.message.as_deref().unwrap_or(""),
                    now,
                ));
            }
        }
        // 1. Flush: the uncounted uids are durable before any finalizer goes.
        if needs_flush {
            self.write_status(ctx).await?;
            self.backoff
                .lock()
                .unwrap()
                .insert(key.clone(), ctx.backoff);
            needs_flush = false;
        }
        // 2. Remove finalizers.
        let mut rm_err = None;
        if !to_remove.is_empty() {
            {
                let mut fin = self.finalizers.lock().unwrap();
                let set = fin.entry(key.clone()).or_default();
                set.extend(to_remove.iter().filter_map(|p| p.metadata.uid.clone()));
            }
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
            let results = join_all(to_remove.iter().map(|p| remove_finalizer(&api, p))).await;
            for (p, r) in to_remove.iter().zip(results) {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                match r {
                    Ok(_) => {
                        with_finalizer.remove(&uid);
                    }
                    Err(e) => {
                        if let Some(set) = self.finalizers.lock().unwrap().get_mut(key) {
                            set.remove(&uid);
                        }
                        if claim::is_not_found(&e) {
                            with_finalizer.remove(&uid);
                        } else {
                            rm_err = Some(Error::from(e));
                        }
                    }
                }
            }
        }
        // 3. Counters for what no longer has a finalizer.
        let status = ctx.job.status.get_or_insert_with(Default::default);
        if clean_uncounted(status, &with_finalizer) {
            needs_flush = true;
        }
        if let Some(e) = rm_err {
            if needs_flush {
                self.write_status(ctx).await?;
            }
            return Err(e);
        }
        // 4. Finished, once nothing is uncounted or terminating.
        let mut finished_now = false;
        if !reached_max {
            if let Some(f) = ctx.finished.clone() {
                let st = ctx.job.status.get_or_insert_with(Default::default);
                let unc = st.uncounted_terminated_pods.clone().unwrap_or_default();
                let pending = unc.succeeded.as_ref().map_or(0, Vec::len)
                    + unc.failed.as_ref().map_or(0, Vec::len);
                if pending == 0 && ctx.terminating == 0 {
                    ensure_condition(
                        st,
                        &f.type_,
                        &f.status,
                        f.reason.as_deref().unwrap_or(""),
                        f.message.as_deref().unwrap_or(""),
                        now,
                    );
                    if f.type_ == "Complete" {
                        st.completion_time = Some(Time(now));
                    }
                    finished_now = true;
                    needs_flush = true;
                }
            }
        }
        if needs_flush {
            self.write_status(ctx).await?;
            if finished_now {
                let f = ctx.finished.clone().unwrap();
                let job = &ctx.job;
                if f.type_ == "Complete" {
                    let st = job.status.clone().unwrap_or_default();
                    if job
                        .spec
                        .as_ref()
                        .and_then(|s| s.completions)
                        .is_some_and(|c| st.succeeded.unwrap_or(0) > c)
                    {
                        self.recorder.warning(
                            job,
                            "TooManySucceededPods",
                            "Too many succeeded pods running after completion count reached".into(),
                        );
                    }
                    self.recorder
                        .normal(job, "Completed", "Job completed".into());
                } else {
                    self.recorder.warning(
                        job,
                        f.reason.as_deref().unwrap_or(""),
                        f.message.clone().unwrap_or_default(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Writes the whole status against the resourceVersion it was computed from; the
    /// written Job (with its new resourceVersion) replaces ctx.job.
    async fn write_status(&self, ctx: &mut Ctx) -> Result<(), Error> {
        let api: Api<Job> = Api::namespaced(
            self.client.clone(),
            &ctx.job.namespace().unwrap_or_default(),
        );
        let s = ctx.job.status.clone().unwrap_or_default();
        let unc = s.uncounted_terminated_pods.clone().unwrap_or_default();
        let nz = |n: Option<i32>| n.filter(|n| *n > 0);
        let patch = json!({
            "metadata": {"resourceVersion": ctx.job.metadata.resource_version},
            "status": {
                "startTime": s.start_time,
                "completionTime": s.completion_time,
                "active": nz(s.active),
                "ready": s.ready,
                "terminating": s.terminating,
                "succeeded": nz(s.succeeded),
                "failed": nz(s.failed),
                "completedIndexes": s.completed_indexes.filter(|c| !c.is_empty()),
                "conditions": s.conditions,
                "uncountedTerminatedPods": {
                    "succeeded": unc.succeeded.filter(|v| !v.is_empty()),
                    "failed": unc.failed.filter(|v| !v.is_empty()),
                },
            }
        });
        let written = api
            .patch_status(
                &ctx.job.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        ctx.job = written;
        Ok(())
    }

    /// A finished Job's pods keep no tracking finalizer (a backup for removals that failed).
    async fn cleanup_finished_pods(&self, job: &Job) -> Result<(), Error> {
        let ns = job.namespace().unwrap_or_default();
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        for p in self.pods.list_namespace(&ns) {
            if has_finalizer(&p) && controller_of(&p.metadata).is_some_and(|r| r.uid == uid) {
                ignore_gone(remove_finalizer(&api, &p).await)?;
            }
        }
        Ok(())
    }

    /// Kubernetes' ttl-after-finished controller: deletes a finished Job (and, in the
    /// foreground, its pods) ttlSecondsAfterFinished after it finished.
    async fn ttl_after_finished(&self, job: &Job, cond: &JobCondition) -> Outcome {
        let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
            return Ok(None);
        };
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let finished_at = job
            .status
            .as_ref()
            .and_then(|s| s.completion_time.as_ref())
            .filter(|_| cond.type_ == "Complete")
            .or(cond.last_transition_time.as_ref())
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now);
        let expire = finished_at + SignedDuration::from_secs(i64::from(ttl.max(0)));
        let now = Timestamp::now();
        if now < expire {
            let left = Duration::try_from(expire.duration_since(now)).unwrap_or_default();
            return Ok(Some(left + Duration::from_millis(100)));
        }
        let api: Api<Job> =
            Api::namespaced(self.client.clone(), &job.namespace().unwrap_or_default());
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            preconditions: Some(Preconditions {
                uid: job.metadata.uid.clone(),
                resource_version: job.metadata.resource_version.clone(),
            }),
            ..Default::default()
        };
        ignore_gone(api.delete(&job.name_any(), &dp).await)?;
        Ok(None)
    }
}

fn min_dur(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Moves uids whose pods no longer have the finalizer from uncounted to the counters.
fn clean_uncounted(status: &mut JobStatus, with_finalizer: &HashSet<String>) -> bool {
    let unc = status
        .uncounted_terminated_pods
        .get_or_insert_with(UncountedTerminatedPods::default);
    let mut changed = false;
    let succ = unc.succeeded.take().unwrap_or_default();
    let keep: Vec<String> = succ
        .iter()
        .filter(|u| with_finalizer.contains(*u))
        .cloned()
        .collect();
    if keep.len() != succ.len() {
        changed = true;
        status.succeeded = Some(status.succeeded.unwrap_or(0) + (succ.len() - keep.len()) as i32);
    }
    unc.succeeded = Some(keep);
    let failed = unc.failed.take().unwrap_or_default();
    let keep: Vec<String> = failed
        .iter()
        .filter(|u| with_finalizer.contains(*u))
        .cloned()
        .collect();
    if keep.len() != failed.len() {
        changed = true;
        status.failed = Some(status.failed.unwrap_or(0) + (failed.len() - keep.len()) as i32);
    }
    unc.failed = Some(keep);
    changed
}

async fn remove_finalizer(api: &Api<Pod>, pod: &Pod) -> Result<Pod, kube::Error> {
    let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER]}});
    api.patch(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await
}

fn suspended(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.suspend) == Some(true)
}

fn selects(job: &Job, pod: &Pod) -> bool {
    job.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|sel| !selector::is_empty(sel) && selector::matches(sel, pod.labels()))
}

/// Time left before activeDeadlineSeconds; None when there is no deadline running.
fn deadline_left(job: &Job, now: Timestamp) -> Option<Duration> {
    let ads = job.spec.as_ref()?.active_deadline_seconds?;
    if suspended(job) {
        return None;
    }
    let start = job.status.as_ref()?.start_time.as_ref()?.0;
    let end = start + SignedDuration::from_secs(ads);
    if now >= end {
        Some(Duration::ZERO)
    } else {
        Some(Duration::try_from(end.duration_since(now)).unwrap_or_default())
    }
}

/// With restartPolicy OnFailure, container restarts count against backoffLimit.
fn past_backoff_limit_on_failure(job: &Job, pods: &[Arc<Pod>]) -> bool {
    let spec = job.spec.as_ref();
    let restart = spec
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.restart_policy.as_deref());
    if restart != Some("OnFailure") {
        return false;
    }
    let mut restarts = 0;
    for p in pods {
        if matches!(phase(p), "Running" | "Pending") {
            let st = p.status.as_ref();
            for cs in st
                .and_then(|s| s.init_container_statuses.as_ref())
                .into_iter()
                .chain(st.and_then(|s| s.container_statuses.as_ref()))
                .flatten()
            {
                restarts += cs.restart_count;
            }
        }
    }
    let limit = spec.and_then(|s| s.backoff_limit).unwrap_or(6);
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= limit
    }
}

/// Kubernetes' activePodsForRemoval: for Indexed jobs duplicates and out-of-range indexes
/// first, then the least advanced pods.
fn pods_for_removal(job: &Job, pods: &[Arc<Pod>], at_least: usize) -> Vec<Arc<Pod>> {
    let mut rm: Vec<Arc<Pod>> = Vec::new();
    let mut left: Vec<Arc<Pod>> = Vec::new();
    if is_indexed(job) {
        let completions = job.spec.as_ref().and_then(|s| s.completions).unwrap_or(1);
        let mut sorted = pods.to_vec();
        sorted.sort_by_key(|p| completion_index(p).unwrap_or(-1));
        let mut last: Option<i32> = None;
        for p in sorted {
            match completion_index(&p) {
                Some(ix) if ix < completions && last != Some(ix) => {
                    last = Some(ix);
                    left.push(p);
                }
                _ => rm.push(p),
            }
        }
    } else {
        left = pods.to_vec();
    }
    if rm.len() < at_least {
        left.sort_by_key(|p| crate::replicaset::deletion_rank(p));
        let take = (at_least - rm.len()).min(left.len());
        rm.extend(left.into_iter().take(take));
    }
    rm
}

/// The pod a Job creates: its template, the tracking finalizer, and for Indexed jobs the
/// completion index (annotation, label, JOB_COMPLETION_INDEX, hostname).
pub fn pod_for(job: &Job, index: Option<i32>) -> Pod {
    let spec = job.spec.clone().unwrap_or_default();
    let template = spec.template;
    let tm = template.metadata.unwrap_or_default();
    let mut finalizers = tm.finalizers.unwrap_or_default();
    if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
        finalizers.push(TRACKING_FINALIZER.into());
    }
    let mut labels = tm.labels;
    let mut annotations = tm.annotations;
    let mut pod_spec = template.spec.unwrap_or_default();
    let mut generate_name = format!("{}-", job.name_any());
    if let Some(ix) = index {
        annotations
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.into(), ix.to_string());
        labels
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.into(), ix.to_string());
        pod_spec.hostname = Some(format!("{}-{ix}", job.name_any()));
        generate_name = format!("{}-{ix}-", job.name_any());
        let env = EnvVar {
            name: "JOB_COMPLETION_INDEX".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                }),
                ..Default::default()
            }),
        };
        for c in pod_spec
            .init_containers
            .iter_mut()
            .flatten()
            .chain(pod_spec.containers.iter_mut())
        {
            let list = c.env.get_or_insert_with(Vec::new);
            if !list.iter().any(|e| e.name == "JOB_COMPLETION_INDEX") {
                list.push(env.clone());
            }
        }
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.namespace(),
            labels,
            annotations,
            finalizers: Some(finalizers),
            owner_references: Some(vec![podutil::owner_ref(
                "batch/v1",
                "Job",
                &job.name_any(),
                job.metadata.uid.as_deref().unwrap_or_default(),
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

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_to_six_minutes() {
        assert_eq!(backoff_delay(1), Duration::from_secs(10));
        assert_eq!(backoff_delay(2), Duration::from_secs(20));
        assert_eq!(backoff_delay(3), Duration::from_secs(40));
        assert_eq!(backoff_delay(6), Duration::from_secs(320));
        assert_eq!(backoff_delay(7), Duration::from_secs(360));
        assert_eq!(backoff_delay(30), Duration::from_secs(360));
    }

    #[test]
    fn backoff_record_counts_failures_since_last_success() {
        let b = Backoff::default().record(&[], &[ts(5), ts(1)]);
        assert_eq!(
            b,
            Backoff {
                failures: 2,
                last_failure: Some(ts(5))
            }
        );
        assert_eq!(b.remaining(ts(5)), Duration::from_secs(20));
        assert_eq!(b.remaining(ts(15)), Duration::from_secs(10));
        assert_eq!(b.remaining(ts(60)), Duration::ZERO);
        // A success resets; only failures after it count.
        let b = b.record(&[ts(10)], &[ts(8), ts(12)]);
        assert_eq!(
            b,
            Backoff {
                failures: 1,
                last_failure: Some(ts(12))
            }
        );
        let b = b.record(&[ts(20)], &[]);
        assert_eq!(b.failures, 0);
        assert_eq!(b.remaining(ts(20)), Duration::ZERO);
        // Nothing new: unchanged.
        let c = Backoff {
            failures: 3,
            last_failure: Some(ts(1)),
        };
        assert_eq!(c.record(&[], &[]), c);
    }

    #[test]
    fn completed_indexes_round_trip_like_kubernetes() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7", 10), set);
        assert_eq!(
            parse_indexes("0-2,4,6-7", 5),
            [0, 1, 2, 4].into_iter().collect()
        );
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        let active: HashSet<i32> = [3].into_iter().collect();
        assert_eq!(first_pending_indexes(&set, &active, 2, 10), vec![5, 8]);
        assert_eq!(first_pending_indexes(&set, &active, 5, 8), vec![5]);
    }

    #[test]
    fn indexed_pods_carry_their_index() {
        let mut job = Job::default();
        job.metadata.name = Some("work".into());
        job.metadata.uid = Some("u1".into());
        let mut spec = k8s_openapi::api::batch::v1::JobSpec::default();
        spec.template.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            containers: vec![Default::default()],
            ..Default::default()
        });
        job.spec = Some(spec);
        let p = pod_for(&job, Some(3));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("work-3-"));
        assert_eq!(
            p.annotations().get(COMPLETION_INDEX).map(String::as_str),
            Some("3")
        );
        assert_eq!(
            p.labels().get(COMPLETION_INDEX).map(String::as_str),
            Some("3")
        );
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("work-3"));
        assert_eq!(
            spec.containers[0].env.as_ref().unwrap()[0].name,
            "JOB_COMPLETION_INDEX"
        );
        assert_eq!(
            p.metadata.finalizers.unwrap(),
            vec![TRACKING_FINALIZER.to_string()]
        );
        let p = pod_for(&job, None);
        assert_eq!(p.metadata.generate_name.as_deref(), Some("work-"));
        assert!(p.spec.unwrap().hostname.is_none());
    }
}
