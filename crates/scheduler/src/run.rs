//! The running scheduler: watchers feed Node, Pod and Namespace events to the scheduling
//! thread, which owns the cache and the queue, schedules pods one at a time (CPU work,
//! kept off the async runtime) and hands binds, status patches and events to `Io`.

use crate::algorithm::{Algorithm, ScheduleError};
use crate::cache::{Cache, Change};
use crate::framework::{Plugin, PluginSet, NO_NODES_AVAILABLE};
use crate::io::{BindOutcome, EventRequest, Io};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::selectors::Labels;
use crate::types::{NodeData, PodInfo};
use crate::SchedulerConfig;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::runtime::watcher::{self, watcher, Event as WEvent};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not start the scheduling thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("the scheduling thread panicked")]
    Panicked,
}

/// A watch event, translated into the scheduler's types.
#[derive(Debug)]
pub enum Watched<T> {
    Apply(T),
    Delete(T),
    InitStart,
    InitApply(T),
    InitDone,
}

#[derive(Debug)]
pub enum Msg {
    Node(Watched<NodeData>),
    Pod(Watched<Arc<PodInfo>>),
    Namespace(Watched<(String, Labels)>),
    Bound { uid: String, outcome: BindOutcome },
    Shutdown,
}

/// Run the scheduler until `shutdown` completes.
pub async fn run<F: Future>(
    client: Client,
    config: SchedulerConfig,
    shutdown: F,
) -> Result<(), Error> {
    let span = tracing::info_span!("scheduler");
    async move {
        let (tx, rx) = mpsc::channel();
        let watchers = vec![
            tokio::spawn(
                watch(
                    Api::<Node>::all(client.clone()),
                    watcher::Config::default(),
                    tx.clone(),
                    |n: Node| NodeData::from_node(&n),
                    Msg::Node,
                )
                .in_current_span(),
            ),
            tokio::spawn(
                watch(
                    Api::<Pod>::all(client.clone()),
                    // As kube-scheduler: finished pods use no resources.
                    watcher::Config::default()
                        .fields("status.phase!=Succeeded,status.phase!=Failed"),
                    tx.clone(),
                    |p: Pod| Arc::new(PodInfo::from_pod(&p)),
                    Msg::Pod,
                )
                .in_current_span(),
            ),
            tokio::spawn(
                watch(
                    Api::<Namespace>::all(client.clone()),
                    watcher::Config::default(),
                    tx.clone(),
                    |n: Namespace| {
                        (
                            n.metadata.name.unwrap_or_default(),
                            n.metadata.labels.unwrap_or_default(),
                        )
                    },
                    Msg::Namespace,
                )
                .in_current_span(),
            ),
        ];
        let io = Io::new(
            client,
            tokio::runtime::Handle::current(),
            tx.clone(),
            &config,
        );
        let span = tracing::Span::current();
        let core = Core::new(config, io, rx);
        let thread = std::thread::Builder::new()
            .name("corral-scheduler".into())
            .spawn(move || span.in_scope(|| core.run()))?;
        tracing::info!("scheduler started");
        shutdown.await;
        tracing::info!("scheduler stopping");
        let _ = tx.send(Msg::Shutdown);
        for w in &watchers {
            w.abort();
        }
        let joined = tokio::task::spawn_blocking(move || thread.join()).await;
        match joined {
            Ok(Ok(())) => Ok(()),
            _ => Err(Error::Panicked),
        }
    }
    .instrument(span)
    .await
}

async fn watch<K, T>(
    api: Api<K>,
    cfg: watcher::Config,
    tx: Sender<Msg>,
    convert: impl Fn(K) -> T,
    wrap: impl Fn(Watched<T>) -> Msg,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let kind = std::any::type_name::<K>()
        .rsplit("::")
        .next()
        .unwrap_or("object");
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    while let Some(ev) = stream.next().await {
        let w = match ev {
            Ok(WEvent::Apply(o)) => Watched::Apply(convert(o)),
            Ok(WEvent::Delete(o)) => Watched::Delete(convert(o)),
            Ok(WEvent::Init) => Watched::InitStart,
            Ok(WEvent::InitApply(o)) => Watched::InitApply(convert(o)),
            Ok(WEvent::InitDone) => Watched::InitDone,
            Err(e) => {
                tracing::warn!(kind, error = %e, "watch failed; retrying with backoff");
                continue;
            }
        };
        if tx.send(wrap(w)).is_err() {
            return;
        }
    }
}

/// Pods rejected by these plugins may fit after the given change.
fn helped_by(change: Change) -> PluginSet {
    use Plugin::*;
    match change {
        Change::None => PluginSet::default(),
        Change::NodeAdded | Change::NodeUpdated => PluginSet::ALL,
        Change::AssignedPodDeleted => PluginSet::of(&[
            NodeResourcesFit,
            NodePorts,
            InterPodAffinity,
            PodTopologySpread,
        ]),
        Change::AssignedPodAdded => PluginSet::of(&[InterPodAffinity, PodTopologySpread]),
        Change::NamespaceChanged => PluginSet::of(&[InterPodAffinity]),
    }
}

struct InFlight {
    pod: Arc<PodInfo>,
    first_seen: Instant,
}

struct Core {
    config: SchedulerConfig,
    io: Io,
    rx: Receiver<Msg>,
    cache: Cache,
    queue: Queue,
    algo: Algorithm,
    metrics: Arc<Metrics>,
    binding: HashMap<String, InFlight>,
    node_buf: Option<Vec<NodeData>>,
    pod_buf: Option<Vec<Arc<PodInfo>>>,
    ns_buf: Option<Vec<(String, Labels)>>,
    synced: [bool; 3],
    last_gauges: Option<Instant>,
}

/// Pods scheduled between two checks of the message channel.
const BATCH: usize = 256;

impl Core {
    fn new(config: SchedulerConfig, io: Io, rx: Receiver<Msg>) -> Core {
        let queue = Queue::new(
            config.initial_backoff,
            config.max_backoff,
            config.max_unschedulable_duration,
        );
        Core {
            metrics: config.metrics.clone(),
            config,
            io,
            rx,
            cache: Cache::new(),
            queue,
            algo: Algorithm::default(),
            binding: HashMap::new(),
            node_buf: None,
            pod_buf: None,
            ns_buf: None,
            synced: [false; 3],
            last_gauges: None,
        }
    }

    fn run(mut self) {
        loop {
            let now = Instant::now();
            self.queue.flush(now);
            let ready = self.synced.iter().all(|s| *s);
            let timeout = if ready && self.queue.has_active() {
                Duration::ZERO
            } else {
                self.queue
                    .next_wakeup()
                    .map(|t| t.saturating_duration_since(now))
                    .unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_secs(1))
            };
            match self.rx.recv_timeout(timeout) {
                Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(msg) => {
                    if !self.handle(msg) {
                        break;
                    }
                    // Take everything already waiting before scheduling more.
                    while let Ok(msg) = self.rx.try_recv() {
                        if !self.handle(msg) {
                            return;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.synced.iter().all(|s| *s) {
                let now = Instant::now();
                self.queue.flush(now);
                for _ in 0..BATCH {
                    let Some(pod) = self.queue.pop(now) else {
                        break;
                    };
                    self.schedule_one(pod, now);
                }
            }
            self.update_gauges();
        }
        tracing::info!("scheduling thread stopped");
    }

    fn update_gauges(&mut self) {
        let now = Instant::now();
        if self
            .last_gauges
            .is_some_and(|t| now - t < Duration::from_secs(1))
        {
            return;
        }
        self.last_gauges = Some(now);
        let c = self.queue.counts();
        let m = &self.metrics;
        m.pending_active.store(c.active as i64, Ordering::Relaxed);
        m.pending_backoff.store(c.backoff as i64, Ordering::Relaxed);
        m.pending_unschedulable
            .store(c.unschedulable as i64, Ordering::Relaxed);
        m.cache_nodes
            .store(self.cache.num_nodes() as i64, Ordering::Relaxed);
        m.cache_pods
            .store(self.cache.num_pods() as i64, Ordering::Relaxed);
    }

    fn moved(&mut self, change: Change) {
        if change != Change::None {
            self.queue.move_for(helped_by(change), Instant::now());
        }
    }

    /// Apply one message; false to stop.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Shutdown => return false,
            Msg::Node(w) => self.on_node(w),
            Msg::Pod(w) => self.on_pod_event(w),
            Msg::Namespace(w) => self.on_namespace(w),
            Msg::Bound { uid, outcome } => self.on_bound(uid, outcome),
        }
        true
    }

    fn on_node(&mut self, w: Watched<NodeData>) {
        match w {
            Watched::Apply(n) => {
                let c = self.cache.set_node(n);
                self.moved(c);
            }
            Watched::Delete(n) => self.cache.remove_node(&n.name),
            Watched::InitStart => self.node_buf = Some(Vec::new()),
            Watched::InitApply(n) => self.node_buf.get_or_insert_with(Vec::new).push(n),
            Watched::InitDone => {
                let list = self.node_buf.take().unwrap_or_default();
                tracing::info!(nodes = list.len(), "nodes listed");
                if self.cache.replace_nodes(list) {
                    self.moved(Change::NodeAdded);
                }
                self.synced[0] = true;
            }
        }
    }

    fn on_namespace(&mut self, w: Watched<(String, Labels)>) {
        match w {
            Watched::Apply((name, labels)) => {
                let c = self.cache.set_namespace(name, labels);
                self.moved(c);
            }
            Watched::Delete((name, _)) => self.cache.remove_namespace(&name),
            Watched::InitStart => self.ns_buf = Some(Vec::new()),
            Watched::InitApply(n) => self.ns_buf.get_or_insert_with(Vec::new).push(n),
            Watched::InitDone => {
                self.cache
                    .replace_namespaces(self.ns_buf.take().unwrap_or_default());
                self.moved(Change::NamespaceChanged);
                self.synced[2] = true;
            }
        }
    }

    fn on_pod_event(&mut self, w: Watched<Arc<PodInfo>>) {
        match w {
            Watched::Apply(p) => self.on_pod(p),
            Watched::Delete(p) => self.on_pod_deleted(&p.uid),
            Watched::InitStart => self.pod_buf = Some(Vec::new()),
            Watched::InitApply(p) => self.pod_buf.get_or_insert_with(Vec::new).push(p),
            Watched::InitDone => {
                let list = self.pod_buf.take().unwrap_or_default();
                tracing::info!(pods = list.len(), "pods listed");
                let listed: HashSet<String> = list.iter().map(|p| p.uid.clone()).collect();
                for p in list {
                    self.on_pod(p);
                }
                if self.cache.retain_listed(&listed) {
                    self.moved(Change::AssignedPodDeleted);
                }
                let stale: Vec<String> = self
                    .queue
                    .uids()
                    .into_iter()
                    .filter(|u| !listed.contains(u))
                    .collect();
                for uid in stale {
                    self.queue.remove(&uid);
                }
                self.synced[1] = true;
            }
        }
    }

    fn on_pod(&mut self, pod: Arc<PodInfo>) {
        if pod.terminal {
            self.on_pod_deleted(&pod.uid);
            return;
        }
        if !pod.node_name.is_empty() {
            self.queue.remove(&pod.uid);
            let c = self.cache.add_or_update_bound(pod);
            self.moved(c);
            return;
        }
        if self.cache.is_assumed(&pod.uid) {
            return;
        }
        if pod.terminating || self.config.profile(&pod.scheduler_name).is_none() {
            self.queue.remove(&pod.uid);
            return;
        }
        self.queue.add_or_update(pod, Instant::now());
    }

    fn on_pod_deleted(&mut self, uid: &str) {
        self.queue.remove(uid);
        let c = self.cache.remove_pod(uid);
        self.moved(c);
    }

    fn on_bound(&mut self, uid: String, outcome: BindOutcome) {
        let Some(f) = self.binding.remove(&uid) else {
            return;
        };
        match outcome {
            BindOutcome::Bound => {
                Metrics::inc(&self.metrics.binds_ok);
                self.metrics.e2e_duration.observe(f.first_seen.elapsed());
                self.cache.finish_binding(&uid);
            }
            BindOutcome::Gone(msg) => {
                Metrics::inc(&self.metrics.binds_dropped);
                tracing::debug!(pod = %f.pod.key(), %msg, "bind rejected; dropping the pod");
                self.cache.forget(&uid);
                self.moved(Change::AssignedPodDeleted);
            }
            BindOutcome::Failed(msg) => {
                Metrics::inc(&self.metrics.binds_failed);
                tracing::warn!(pod = %f.pod.key(), %msg, "bind failed; retrying after backoff");
                self.cache.forget(&uid);
                self.moved(Change::AssignedPodDeleted);
                let controller = f.pod.scheduler_name.clone();
                self.io.event(EventRequest {
                    pod: f.pod.clone(),
                    reporting_controller: controller,
                    warning: true,
                    reason: "FailedScheduling",
                    action: "Scheduling",
                    note: crate::framework::truncate_event_message(&format!(
                        "Binding rejected: {msg}"
                    )),
                });
                self.queue
                    .retry_after_error(f.pod, f.first_seen, Instant::now());
            }
        }
    }

    fn schedule_one(&mut self, pod: Arc<PodInfo>, now: Instant) {
        let Some(profile) = self.config.profile(&pod.scheduler_name).cloned() else {
            self.queue.remove(&pod.uid);
            return;
        };
        let start = Instant::now();
        let result = self.algo.schedule(
            &pod,
            &self.cache,
            profile.kind,
            self.config.percentage_of_nodes_to_score,
        );
        self.metrics.algorithm_duration.observe(start.elapsed());
        match result {
            Ok(d) => {
                Metrics::inc(&self.metrics.attempts_scheduled);
                tracing::debug!(pod = %pod.key(), node = %d.node, evaluated = d.evaluated, feasible = d.feasible, "scheduled");
                let first_seen = self.queue.done(&pod.uid).unwrap_or(now);
                self.cache.assume(pod.clone(), &d.node);
                self.binding.insert(
                    pod.uid.clone(),
                    InFlight {
                        pod: pod.clone(),
                        first_seen,
                    },
                );
                self.io.bind(pod, d.node, profile.scheduler_name);
            }
            Err(e) => {
                let (plugins, message) = match e {
                    ScheduleError::NoNodes => (PluginSet::ALL, NO_NODES_AVAILABLE.to_string()),
                    ScheduleError::Unschedulable(fe) => (fe.unschedulable_plugins(), fe.message()),
                };
                Metrics::inc(&self.metrics.attempts_unschedulable);
                tracing::debug!(pod = %pod.key(), %message, "unschedulable");
                self.queue.unschedulable(&pod.uid, plugins, now);
                self.io
                    .report_failure(pod, "Unschedulable", message, profile.scheduler_name);
            }
        }
    }
}
