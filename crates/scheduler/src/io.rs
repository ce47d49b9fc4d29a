//! The scheduler's writes to the API, run concurrently on the tokio runtime: binds
//! (pods/binding), PodScheduled=False status patches (pods/status) and events
//! (events.k8s.io/v1, repeated failures folded into a series). Results of binds go back to
//! the scheduling thread as messages.

use crate::framework::truncate_event_message;
use crate::metrics::Metrics;
use crate::run::Msg;
use crate::types::PodInfo;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use std::collections::HashMap;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Semaphore};

/// How a bind ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindOutcome {
    Bound,
    /// 404 or 409: the pod is gone, terminating or already bound; drop it.
    Gone(String),
    /// Anything else: retry after backoff.
    Failed(String),
}

pub struct EventRequest {
    pub pod: Arc<PodInfo>,
    pub reporting_controller: String,
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

#[derive(Clone)]
pub struct Io {
    client: Client,
    handle: Handle,
    tx: Sender<Msg>,
    binds: Arc<Semaphore>,
    statuses: Arc<Semaphore>,
    events: mpsc::Sender<EventRequest>,
    metrics: Arc<Metrics>,
}

/// An event already written, for folding repeats into its series.
struct Written {
    name: String,
    count: i32,
    at: std::time::Instant,
}

/// Events written, by (pod uid, reason, note).
type SeriesMap = HashMap<(String, &'static str, String), Written>;

/// Repeats within this window update the existing event's series (as client-go does).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

impl Io {
    pub fn new(
        client: Client,
        handle: Handle,
        tx: Sender<Msg>,
        config: &crate::SchedulerConfig,
    ) -> Io {
        let (etx, erx) = mpsc::channel(config.event_buffer.max(1));
        let io = Io {
            client: client.clone(),
            handle: handle.clone(),
            tx,
            binds: Arc::new(Semaphore::new(config.parallel_binds.max(1))),
            statuses: Arc::new(Semaphore::new(config.parallel_status_updates.max(1))),
            events: etx,
            metrics: config.metrics.clone(),
        };
        handle.spawn(event_writer(
            client,
            erx,
            config.parallel_events.max(1),
            config.instance.clone(),
            config.metrics.clone(),
        ));
        io
    }

    /// Bind in the background; the outcome comes back as `Msg::Bound`.
    pub fn bind(&self, pod: Arc<PodInfo>, node: String, reporting_controller: String) {
        let io = self.clone();
        self.handle.spawn(async move {
            let _permit = io.binds.acquire().await;
            let api: Api<Pod> = Api::namespaced(io.client.clone(), &pod.namespace);
            let binding = Binding {
                metadata: ObjectMeta {
                    name: Some(pod.name.clone()),
                    namespace: Some(pod.namespace.clone()),
                    uid: Some(pod.uid.clone()),
                    ..Default::default()
                },
                target: ObjectReference {
                    kind: Some("Node".into()),
                    api_version: Some("v1".into()),
                    name: Some(node.clone()),
                    ..Default::default()
                },
            };
            let res = api
                .create_subresource::<_, serde_json::Value>(
                    "binding",
                    &pod.name,
                    &PostParams::default(),
                    &binding,
                )
                .await;
            let outcome = match res {
                Ok(_) => BindOutcome::Bound,
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                    BindOutcome::Gone(s.message.clone())
                }
                Err(e) => BindOutcome::Failed(e.to_string()),
            };
            if outcome == BindOutcome::Bound {
                io.event(EventRequest {
                    note: format!(
                        "Successfully assigned {}/{} to {}",
                        pod.namespace, pod.name, node
                    ),
                    pod: pod.clone(),
                    reporting_controller,
                    warning: false,
                    reason: "Scheduled",
                    action: "Binding",
                });
            }
            let _ = io.tx.send(Msg::Bound {
                uid: pod.uid.clone(),
                outcome,
            });
        });
    }

    /// Queue an event; when the buffer is full it is dropped and counted.
    pub fn event(&self, req: EventRequest) {
        if self.events.try_send(req).is_err() {
            Metrics::inc(&self.metrics.events_dropped);
        }
    }

    /// Record a failed attempt: PodScheduled=False with the reason and message (skipped
    /// when the pod already says exactly that) and a FailedScheduling warning event.
    pub fn report_failure(
        &self,
        pod: Arc<PodInfo>,
        reason: &'static str,
        message: String,
        reporting_controller: String,
    ) {
        self.event(EventRequest {
            pod: pod.clone(),
            reporting_controller,
            warning: true,
            reason: "FailedScheduling",
            action: "Scheduling",
            note: truncate_event_message(&message),
        });
        let unchanged = pod
            .scheduled_condition
            .as_ref()
            .is_some_and(|c| c.status == "False" && c.reason == reason && c.message == message);
        if unchanged {
            return;
        }
        let transition = match &pod.scheduled_condition {
            Some(c) if c.status == "False" => c.last_transition_time.clone(),
            _ => None,
        }
        .unwrap_or_else(|| Timestamp::now().to_string());
        let io = self.clone();
        self.handle.spawn(async move {
            let _permit = io.statuses.acquire().await;
            let api: Api<Pod> = Api::namespaced(io.client.clone(), &pod.namespace);
            let patch = serde_json::json!({
                "status": {"conditions": [{
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": reason,
                    "message": message,
                    "lastProbeTime": null,
                    "lastTransitionTime": transition,
                }]}
            });
            match api.patch_status(&pod.name, &PatchParams::default(), &Patch::Strategic(&patch)).await
            {
                Ok(_) => Metrics::inc(&io.metrics.status_updates),
                Err(e) => {
                    Metrics::inc(&io.metrics.status_update_failures);
                    tracing::warn!(pod = %pod.key(), error = %e, "could not set PodScheduled=False");
                }
            }
        });
    }
}

async fn event_writer(
    client: Client,
    mut rx: mpsc::Receiver<EventRequest>,
    parallel: usize,
    instance: String,
    metrics: Arc<Metrics>,
) {
    let sem = Arc::new(Semaphore::new(parallel));
    let written: Arc<Mutex<SeriesMap>> = Arc::default();
    while let Some(req) = rx.recv().await {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            return;
        };
        let client = client.clone();
        let instance = instance.clone();
        let metrics = metrics.clone();
        let written = written.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let api: Api<Event> = Api::namespaced(client, &req.pod.namespace);
            let key = (req.pod.uid.clone(), req.reason, req.note.clone());
            let now = Timestamp::now();
            let previous = {
                let mut w = written.lock().expect("event series lock");
                if w.len() > 10_000 {
                    w.retain(|_, v| v.at.elapsed() < SERIES_WINDOW);
                }
                match w.get_mut(&key) {
                    Some(v) if v.at.elapsed() < SERIES_WINDOW => {
                        v.count += 1;
                        v.at = std::time::Instant::now();
                        Some((v.name.clone(), v.count))
                    }
                    _ => None,
                }
            };
            let res = match previous {
                Some((name, count)) => {
                    let patch = serde_json::json!({"series": EventSeries {
                        count,
                        last_observed_time: MicroTime(now),
                    }});
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(|_| ())
                }
                None => {
                    let name = format!("{}.{:x}", req.pod.name, now.as_nanosecond());
                    let ev = Event {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            namespace: Some(req.pod.namespace.clone()),
                            ..Default::default()
                        },
                        action: Some(req.action.into()),
                        reason: Some(req.reason.into()),
                        note: Some(req.note.clone()),
                        type_: Some(if req.warning { "Warning" } else { "Normal" }.into()),
                        event_time: Some(MicroTime(now)),
                        reporting_controller: Some(req.reporting_controller.clone()),
                        reporting_instance: Some(instance),
                        regarding: Some(ObjectReference {
                            kind: Some("Pod".into()),
                            api_version: Some("v1".into()),
                            namespace: Some(req.pod.namespace.clone()),
                            name: Some(req.pod.name.clone()),
                            uid: Some(req.pod.uid.clone()),
                            resource_version: Some(req.pod.resource_version.clone())
                                .filter(|s| !s.is_empty()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    let r = api.create(&PostParams::default(), &ev).await.map(|_| ());
                    if r.is_ok() && req.warning {
                        written.lock().expect("event series lock").insert(
                            key,
                            Written {
                                name,
                                count: 1,
                                at: std::time::Instant::now(),
                            },
                        );
                    }
                    r
                }
            };
            match res {
                Ok(()) => Metrics::inc(&metrics.events_sent),
                Err(e) => {
                    Metrics::inc(&metrics.events_failed);
                    tracing::debug!(pod = %req.pod.key(), error = %e, "event not written");
                }
            }
        });
    }
}
