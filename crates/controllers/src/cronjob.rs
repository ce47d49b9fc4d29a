//! The CronJob controller, following Kubernetes' cronjob_controllerv2: at each scheduled
//! time (in spec.timeZone, else UTC) it creates a Job named `<cronjob>-<minutes since the
//! epoch>` from jobTemplate, within startingDeadlineSeconds, honouring
//! concurrencyPolicy (Allow, Forbid, Replace) and suspend; it keeps status.active,
//! lastScheduleTime and lastSuccessfulTime, and deletes finished Jobs beyond the history
//! limits. The name derived from the scheduled time makes a restart safe: a Job created
//! just before a crash is found by name, never created twice.

use crate::claim::{api_message, ignore_gone};
use crate::cron::Schedule;
use crate::informer::{Change, Informer, Key};
use crate::job::finished;
use crate::podutil::{controller_of, owner_ref};
use crate::queue::{Outcome, Queue};
use crate::{events::Recorder, Error};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

pub struct Controller {
    client: Client,
    cronjobs: Informer<CronJob>,
    jobs: Informer<Job>,
    recorder: Recorder,
    queue: Queue,
}

fn cronjob_owner(job: &Job) -> Option<Key> {
    let r = controller_of(&job.metadata)?;
    (r.kind == "CronJob" && r.api_version == "batch/v1")
        .then(|| Key::new(job.namespace().unwrap_or_default(), r.name.clone()))
}

/// The outcome of looking for the latest missed schedule (Kubernetes'
/// mostRecentScheduleTime): the latest time due, and whether over 100 were missed.
#[derive(Debug, PartialEq)]
pub struct Due {
    pub time: Option<Timestamp>,
    pub too_many_missed: bool,
}

/// The latest scheduled time in (earliest, now], where earliest is the last schedule
/// time (or the CronJob's creation), but no earlier than now - startingDeadlineSeconds.
pub fn most_recent(
    sched: &Schedule,
    tz: &TimeZone,
    created: Timestamp,
    last: Option<Timestamp>,
    deadline: Option<i64>,
    now: Timestamp,
) -> Due {
    let mut earliest = last.unwrap_or(created);
    if let Some(d) = deadline {
        let limit = now - SignedDuration::from_secs(d);
        if limit > earliest {
            earliest = limit;
        }
    }
    let mut time = None;
    let mut missed = 0;
    let mut t = earliest;
    while let Some(n) = sched.next(t, tz) {
        if n > now {
            break;
        }
        time = Some(n);
        missed += 1;
        t = n;
        if missed > 100 {
            // Keep going to find the latest, but say so (Kubernetes warns).
            if let Some(latest) = latest_before(sched, tz, t, now) {
                time = Some(latest);
            }
            break;
        }
    }
    Due {
        time,
        too_many_missed: missed > 100,
    }
}

/// The latest activation in (from, now], stepping back from now a day at a time.
fn latest_before(
    sched: &Schedule,
    tz: &TimeZone,
    from: Timestamp,
    now: Timestamp,
) -> Option<Timestamp> {
    let mut window = SignedDuration::from_hours(24);
    loop {
        let start = (now - window).max(from);
        let mut t = start;
        let mut latest = None;
        while let Some(n) = sched.next(t, tz) {
            if n > now {
                break;
            }
            latest = Some(n);
            t = n;
        }
        if latest.is_some() || start == from {
            return latest;
        }
        window = window.checked_mul(2)?;
    }
}

/// The Job name for a scheduled time: the CronJob's name and the time in minutes.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

fn time_zone(cj: &CronJob) -> Result<TimeZone, String> {
    match cj.spec.as_ref().and_then(|s| s.time_zone.as_deref()) {
        None => Ok(TimeZone::UTC),
        Some(name) => TimeZone::get(name).map_err(|e| e.to_string()),
    }
}

impl Controller {
    pub fn new(
        client: Client,
        cronjobs: Informer<CronJob>,
        jobs: Informer<Job>,
        recorder: Recorder,
    ) -> Controller {
        Controller {
            client,
            cronjobs,
            jobs,
            recorder,
            queue: Queue::new("cronjob"),
        }
    }

    pub fn register(self: &Arc<Self>) -> Queue {
        let q = self.queue.clone();
        self.cronjobs.on_change(move |c| q.add(Key::of(c.object())));
        let q = self.queue.clone();
        self.jobs.on_change(move |c| {
            if let Change::Applied { old: Some(old), .. } = c {
                if let Some(k) = cronjob_owner(old) {
                    q.add(k);
                }
            }
            if let Some(k) = cronjob_owner(c.object()) {
                q.add(k);
            }
        });
        self.queue.clone()
    }

    pub async fn reconcile(&self, key: Key) -> Outcome {
        let Some(cj) = self.cronjobs.get(&key) else {
            return Ok(None);
        };
        let uid = cj.metadata.uid.clone().unwrap_or_default();
        let jobs: Vec<Arc<Job>> = self
            .jobs
            .list_namespace(&key.namespace)
            .into_iter()
            .filter(|j| controller_of(&j.metadata).is_some_and(|r| r.uid == uid))
            .collect();
        let old = cj.status.clone().unwrap_or_default();
        let mut status = old.clone();
        let mut active: Vec<ObjectReference> = status.active.clone().unwrap_or_default();
        let in_active = |active: &[ObjectReference], j: &Job| {
            active
                .iter()
                .any(|r| r.uid.is_some() && r.uid == j.metadata.uid)
        };
        for j in &jobs {
            let found = in_active(&active, j);
            let done = finished(j);
            if !found && done.is_none() {
                let scheduled = scheduled_time(j);
                if scheduled
                    .is_some_and(|t| old.last_schedule_time.as_ref().is_none_or(|l| t > l.0))
                {
                    self.recorder.warning(
                        &*cj,
                        "UnexpectedJob",
                        format!(
                            "Saw a job that the controller did not create or forgot: {}",
                            j.name_any()
                        ),
                    );
                }
                // An unfinished Job of ours (created just before a restart) is active.
                active.push(job_ref(j));
            } else if found {
                if let Some(c) = done {
                    active.retain(|r| r.uid != j.metadata.uid);
                    self.recorder.normal(
                        &*cj,
                        "SawCompletedJob",
                        format!(
                            "Saw completed job: {}, condition: {}",
                            j.name_any(),
                            c.type_
                        ),
                    );
                }
            }
            if done.is_some_and(|c| c.type_ == "Complete") {
                if let Some(t) = j.status.as_ref().and_then(|s| s.completion_time.clone()) {
                    if status
                        .last_successful_time
                        .as_ref()
                        .is_none_or(|l| t.0 > l.0)
                    {
                        status.last_successful_time = Some(t);
                    }
                }
            }
        }
        // Active Jobs that are gone.
        let jobs_api: Api<Job> = Api::namespaced(self.client.clone(), &key.namespace);
        let mut kept = Vec::new();
        for r in active {
            if jobs.iter().any(|j| j.metadata.uid == r.uid) {
                kept.push(r);
                continue;
            }
            match jobs_api
                .get_opt(r.name.as_deref().unwrap_or_default())
                .await?
            {
                Some(j) if j.metadata.uid == r.uid => kept.push(r),
                _ => self.recorder.normal(
                    &*cj,
                    "MissingJob",
                    format!(
                        "Active job went missing: {}",
                        r.name.as_deref().unwrap_or_default()
                    ),
                ),
            }
        }
        active = kept;
        let mut requeue = None;
        if cj.metadata.deletion_timestamp.is_none() {
            requeue = self.schedule(&cj, &mut active, &mut status).await?;
        }
        status.active = Some(active);
        let norm = |a: &Option<Vec<ObjectReference>>| a.clone().filter(|v| !v.is_empty());
        if norm(&status.active) != norm(&old.active)
            || status.last_schedule_time != old.last_schedule_time
            || status.last_successful_time != old.last_successful_time
        {
            let api: Api<CronJob> = Api::namespaced(self.client.clone(), &key.namespace);
            let patch = json!({
                "metadata": {"resourceVersion": cj.metadata.resource_version},
                "status": {
                    "active": norm(&status.active),
                    "lastScheduleTime": status.last_schedule_time,
                    "lastSuccessfulTime": status.last_successful_time,
                }
            });
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        self.cleanup_history(&cj, &jobs).await?;
        Ok(requeue)
    }

    /// Creates the Job for the latest due time, if it should run. Returns when the next
    /// scheduled time falls.
    async fn schedule(
        &self,
        cj: &Arc<CronJob>,
        active: &mut Vec<ObjectReference>,
        status: &mut k8s_openapi::api::batch::v1::CronJobStatus,
    ) -> Result<Option<Duration>, Error> {
        let spec = cj.spec.clone().unwrap_or_default();
        let tz = match time_zone(cj) {
            Ok(tz) => tz,
            Err(e) => {
                self.recorder.warning(
                    &**cj,
                    "UnknownTimeZone",
                    format!(
                        "invalid timeZone: {:?}: {e}",
                        spec.time_zone.unwrap_or_default()
                    ),
                );
                return Ok(None);
            }
        };
        if spec.suspend == Some(true) {
            return Ok(None);
        }
        let sched = match Schedule::parse(&spec.schedule) {
            Ok(s) => s,
            Err(e) => {
                self.recorder.warning(
                    &**cj,
                    "UnparseableSchedule",
                    format!("unparseable schedule: {:?} : {e}", spec.schedule),
                );
                return Ok(None);
            }
        };
        let now = Timestamp::now();
        let created = cj
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(now);
        let last = status.last_schedule_time.as_ref().map(|t| t.0);
        let due = most_recent(
            &sched,
            &tz,
            created,
            last,
            spec.starting_deadline_seconds,
            now,
        );
        if due.too_many_missed {
            self.recorder.warning(
                &**cj,
                "TooManyMissedTimes",
                "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
            );
        }
        let next_in = || {
            sched.next(now, &tz).map(|n| {
                Duration::try_from(n.duration_since(now)).unwrap_or_default()
                    + Duration::from_millis(100)
            })
        };
        let Some(scheduled) = due.time else {
            return Ok(next_in());
        };
        if let Some(d) = spec.starting_deadline_seconds {
            if scheduled + SignedDuration::from_secs(d) < now {
                self.recorder.warning(
                    &**cj,
                    "MissSchedule",
                    format!(
                        "Missed scheduled time to start a job: {}",
                        rfc1123z(scheduled, &tz)
                    ),
                );
                return Ok(next_in());
            }
        }
        let name = job_name(&cj.name_any(), scheduled);
        if active.iter().any(|r| r.name.as_deref() == Some(&name)) || last == Some(scheduled) {
            return Ok(next_in());
        }
        let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
        if policy == "Forbid" && !active.is_empty() {
            self.recorder.normal(
                &**cj,
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
            );
            return Ok(next_in());
        }
        let ns = cj.namespace().unwrap_or_default();
        let jobs_api: Api<Job> = Api::namespaced(self.client.clone(), &ns);
        if policy == "Replace" {
            for r in std::mem::take(active) {
                let jname = r.name.clone().unwrap_or_default();
                let dp = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..Default::default()
                };
                match jobs_api.delete(&jname, &dp).await {
                    Ok(_) => self.recorder.normal(
                        &**cj,
                        "SuccessfulDelete",
                        format!("Deleted job {jname}"),
                    ),
                    Err(e) if crate::claim::is_not_found(&e) => {}
                    Err(e) => {
                        self.recorder.warning(
                            &**cj,
                            "FailedDelete",
                            format!("Deleted job: {}", api_message(&e)),
                        );
                        active.push(r);
                        return Err(e.into());
                    }
                }
            }
        }
        let job = job_from_template(cj, scheduled, &tz);
        let created_job = match jobs_api.create(&PostParams::default(), &job).await {
            Ok(j) => {
                self.recorder
                    .normal(&**cj, "SuccessfulCreate", format!("Created job {name}"));
                j
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Created before (by us, before a restart): adopt it into active if ours.
                match jobs_api.get_opt(&name).await? {
                    Some(j)
                        if controller_of(&j.metadata)
                            .is_some_and(|r| Some(&r.uid) == cj.metadata.uid.as_ref()) =>
                    {
                        j
                    }
                    _ => return Ok(next_in()),
                }
            }
            Err(e) => {
                self.recorder.warning(
                    &**cj,
                    "FailedCreate",
                    format!("Error creating job: {}", api_message(&e)),
                );
                return Err(e.into());
            }
        };
        if finished(&created_job).is_none()
            && !active.iter().any(|r| r.uid == created_job.metadata.uid)
        {
            active.push(job_ref(&created_job));
        }
        status.last_schedule_time = Some(Time(scheduled));
        Ok(next_in())
    }

    /// Deletes the oldest finished Jobs beyond successfulJobsHistoryLimit and
    /// failedJobsHistoryLimit.
    async fn cleanup_history(&self, cj: &CronJob, jobs: &[Arc<Job>]) -> Result<(), Error> {
        let spec = cj.spec.clone().unwrap_or_default();
        let api: Api<Job> =
            Api::namespaced(self.client.clone(), &cj.namespace().unwrap_or_default());
        for (kind, limit) in [
            ("Complete", spec.successful_jobs_history_limit),
            ("Failed", spec.failed_jobs_history_limit),
        ] {
            let Some(limit) = limit else { continue };
            let mut done: Vec<&Arc<Job>> = jobs
                .iter()
                .filter(|j| j.metadata.deletion_timestamp.is_none())
                .filter(|j| finished(j).is_some_and(|c| c.type_ == kind))
                .collect();
            if done.len() <= limit.max(0) as usize {
                continue;
            }
            done.sort_by_key(|j| {
                (
                    j.status
                        .as_ref()
                        .and_then(|s| s.start_time.as_ref())
                        .map(|t| t.0),
                    j.name_any(),
                )
            });
            let n = done.len() - limit.max(0) as usize;
            for j in &done[..n] {
                let dp = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..Default::default()
                };
                ignore_gone(api.delete(&j.name_any(), &dp).await)?;
                self.recorder.normal(
                    cj,
                    "SuccessfulDelete",
                    format!("Deleted job {}", j.name_any()),
                );
            }
        }
        Ok(())
    }
}

fn job_ref(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: j.metadata.name.clone(),
        namespace: j.metadata.namespace.clone(),
        uid: j.metadata.uid.clone(),
        resource_version: j.metadata.resource_version.clone(),
        ..Default::default()
    }
}

fn scheduled_time(j: &Job) -> Option<Timestamp> {
    let a = j.annotations().get(SCHEDULED_TIMESTAMP)?;
    a.parse::<Timestamp>().ok()
}

/// RFC 1123 with a numeric zone, as Go's time.RFC1123Z.
fn rfc1123z(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned(tz.clone())
        .strftime("%a, %d %b %Y %H:%M:%S %z")
        .to_string()
}

/// The Job for one scheduled time (Kubernetes' getJobFromTemplate2).
pub fn job_from_template(cj: &CronJob, scheduled: Timestamp, tz: &TimeZone) -> Job {
    let spec = cj.spec.clone().unwrap_or_default();
    let tmpl = spec.job_template;
    let tm = tmpl.metadata.unwrap_or_default();
    let mut annotations = tm.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        scheduled
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
            .replace("+00:00", "Z"),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&cj.name_any(), scheduled)),
            namespace: cj.namespace(),
            labels: tm.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![owner_ref(
                "batch/v1",
                "CronJob",
                &cj.name_any(),
                cj.metadata.uid.as_deref().unwrap_or_default(),
            )]),
            ..Default::default()
        },
        spec: tmpl.spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn most_recent_due_time() {
        let s = Schedule::parse("*/5 * * * *").unwrap();
        let tz = TimeZone::UTC;
        let created = at("2024-03-01T10:01:00Z");
        // Nothing due yet.
        let d = most_recent(&s, &tz, created, None, None, at("2024-03-01T10:04:00Z"));
        assert_eq!(
            d,
            Due {
                time: None,
                too_many_missed: false
            }
        );
        // Several missed: the latest.
        let d = most_recent(&s, &tz, created, None, None, at("2024-03-01T10:17:00Z"));
        assert_eq!(d.time, Some(at("2024-03-01T10:15:00Z")));
        // Already scheduled at 10:15: nothing new until 10:20.
        let d = most_recent(
            &s,
            &tz,
            created,
            Some(at("2024-03-01T10:15:00Z")),
            None,
            at("2024-03-01T10:17:00Z"),
        );
        assert_eq!(d.time, None);
        // startingDeadlineSeconds bounds how far back it looks.
        let d = most_recent(&s, &tz, created, None, Some(60), at("2024-03-01T10:17:00Z"));
        assert_eq!(d.time, None);
        let d = most_recent(
            &s,
            &tz,
            created,
            None,
            Some(180),
            at("2024-03-01T10:17:00Z"),
        );
        assert_eq!(d.time, Some(at("2024-03-01T10:15:00Z")));
        // Over 100 missed: said, and still the latest.
        let d = most_recent(&s, &tz, created, None, None, at("2024-03-02T10:17:00Z"));
        assert!(d.too_many_missed);
        assert_eq!(d.time, Some(at("2024-03-02T10:15:00Z")));
    }

    #[test]
    fn job_names_are_minutes_since_the_epoch() {
        assert_eq!(
            job_name("hello", at("2024-03-01T10:15:00Z")),
            "hello-28488135"
        );
        let mut cj = CronJob::default();
        cj.metadata.name = Some("hello".into());
        cj.metadata.uid = Some("u".into());
        let j = job_from_template(&cj, at("2024-03-01T10:15:00Z"), &TimeZone::UTC);
        assert_eq!(j.metadata.name.as_deref(), Some("hello-28488135"));
        assert_eq!(
            j.annotations().get(SCHEDULED_TIMESTAMP).map(String::as_str),
            Some("2024-03-01T10:15:00Z")
        );
        assert_eq!(j.owner_references()[0].kind, "CronJob");
    }
}
