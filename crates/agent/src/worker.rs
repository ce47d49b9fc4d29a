//! One task per pod on the node: makes the runtime match the pod (sandbox, init containers
//! in order, then containers, restarts with back-off, probes, hooks), and writes the pod's
//! status as the kubelet reports it. Level-triggered: every wake-up (a pod update, a
//! container exit, a probe result, a timer) recomputes from the pod and the runtime.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use corral_images::Image;
use corral_runtime::{ContainerState, PodNetwork, Sandbox, SandboxSpec};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::containers::{self, BuildError, BuildInputs, EnvInputs, Objects};
use crate::paths;
use crate::probes::{self, Action, ProbeEvent, ProbeState, Target};
use crate::volumes::{self, VolumeInputs};
use crate::Ctx;

const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long since its back-off was last raised starts over at 10 s.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
const RESYNC: Duration = Duration::from_secs(30);
const RETRY: Duration = Duration::from_secs(5);

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// How one run of a container ended.
#[derive(Clone, Debug, PartialEq)]
struct Term {
    exit_code: i32,
    signal: Option<i32>,
    reason: String,
    message: Option<String>,
    started_at: Option<DateTime<Utc>>,
    finished_at: DateTime<Utc>,
    container_id: String,
}

impl Term {
    fn json(&self) -> Value {
        let mut t = json!({
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at.map(ts).unwrap_or_else(|| "1970-01-01T00:00:00Z".into()),
            "finishedAt": ts(self.finished_at),
            "containerID": format!("corral://{}", self.container_id),
        });
        if let Some(s) = self.signal {
            t["signal"] = json!(s);
        }
        if let Some(m) = &self.message {
            t["message"] = json!(m);
        }
        t
    }

    fn from_json(v: &Value) -> Option<Term> {
        let parse = |k: &str| {
            v[k].as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        Some(Term {
            exit_code: v["exitCode"].as_i64()? as i32,
            signal: v["signal"].as_i64().map(|s| s as i32),
            reason: v["reason"].as_str().unwrap_or("Error").to_string(),
            message: v["message"].as_str().map(str::to_string),
            started_at: parse("startedAt"),
            finished_at: parse("finishedAt").unwrap_or_else(Utc::now),
            container_id: v["containerID"]
                .as_str()
                .unwrap_or("")
                .trim_start_matches("corral://")
                .to_string(),
        })
    }

    fn from_state(id: &str, st: &ContainerState) -> Option<Term> {
        match st {
            ContainerState::Exited {
                code,
                signal,
                reason,
                started_at,
                finished_at,
            } => Some(Term {
                exit_code: *code,
                signal: *signal,
                reason: reason.as_str().to_string(),
                message: None,
                started_at: *started_at,
                finished_at: *finished_at,
                container_id: id.to_string(),
            }),
            ContainerState::Unknown { reason } => Some(Term {
                exit_code: 137,
                signal: None,
                reason: "ContainerStatusUnknown".into(),
                message: Some(format!("The container could not be located: {reason}")),
                started_at: None,
                finished_at: Utc::now(),
                container_id: id.to_string(),
            }),
            _ => None,
        }
    }
}

struct Probes {
    state: Arc<ProbeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One run of a container in the runtime.
struct Run {
    id: String,
    started_at: Option<DateTime<Utc>>,
    exit: Option<Term>,
    /// When the agent saw it exit (back-off is measured from here).
    exited_at: Option<Instant>,
    probes: Option<Probes>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// Being stopped (liveness failure, failed postStart hook).
    stopping: bool,
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
    }
}

#[derive(Default)]
struct Ctr {
    restart_count: u32,
    run: Option<Run>,
    last: Option<Term>,
    waiting: Option<(String, String)>,
    /// (current back-off, when it was last raised).
    crash_backoff: Option<(Duration, Instant)>,
    /// (current back-off, next pull attempt).
    pull_backoff: Option<(Duration, Instant)>,
    image_ref: Option<String>,
    image_id: Option<String>,
}

impl Ctr {
    fn running(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.exit.is_none())
    }

    fn exit(&self) -> Option<&Term> {
        self.run.as_ref().and_then(|r| r.exit.as_ref())
    }
}

pub(crate) struct Worker {
    ctx: Arc<Ctx>,
    uid: String,
    pod: Pod,
    sandbox: Option<Sandbox>,
    ctrs: HashMap<String, Ctr>,
    start_time: Option<String>,
    last_status: Option<Value>,
    wake: mpsc::UnboundedSender<()>,
    events: mpsc::UnboundedSender<ProbeEvent>,
    /// Why the pod cannot start containers yet (sandbox or volume failure).
    blocked: Option<String>,
    /// The pod reached Succeeded or Failed: nothing is started again.
    terminal: Option<&'static str>,
    /// All containers were stopped because the pod is being deleted.
    killed: bool,
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

fn grace_seconds(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0)
}

impl Worker {
    /// A worker for `pod`, adopting whatever the runtime already runs for it.
    async fn adopt(
        ctx: Arc<Ctx>,
        pod: Pod,
        wake: mpsc::UnboundedSender<()>,
        events: mpsc::UnboundedSender<ProbeEvent>,
    ) -> Worker {
        let uid = pod.uid().unwrap_or_default();
        let sandbox = ctx.runtime.sandbox(&uid).ok().flatten();
        let status = serde_json::to_value(&pod.status).unwrap_or(Value::Null);
        let mut w = Worker {
            ctx: ctx.clone(),
            uid: uid.clone(),
            start_time: status["startTime"].as_str().map(str::to_string),
            terminal: match status["phase"].as_str() {
                Some("Succeeded") => Some("Succeeded"),
                Some("Failed") => Some("Failed"),
                _ => None,
            },
            pod,
            sandbox,
            ctrs: HashMap::new(),
            last_status: None,
            wake,
            events,
            blocked: None,
            killed: false,
        };
        let old_statuses: HashMap<String, Value> = ["containerStatuses", "initContainerStatuses"]
            .iter()
            .flat_map(|k| status[*k].as_array().cloned().unwrap_or_default())
            .filter_map(|s| Some((s["name"].as_str()?.to_string(), s)))
            .collect();
        let mut runs: BTreeMap<String, Vec<(u32, corral_runtime::ContainerInfo)>> = BTreeMap::new();
        // Container ids start with the pod uid (paths::container_id).
        for info in ctx
            .runtime
            .list_containers_with_prefix(&uid)
            .unwrap_or_default()
        {
            if info.pod_uid != uid {
                continue;
            }
            if let Some((name, n)) = paths::parse_container_id(&uid, &info.id) {
                runs.entry(name.to_string()).or_default().push((n, info));
            }
        }
        for (name, mut list) in runs {
            list.sort_by_key(|(n, _)| *n);
            let (n, info) = list.pop().expect("non-empty");
            let mut c = Ctr {
                restart_count: n,
                ..Default::default()
            };
            let old = old_statuses.get(&name);
            if let Some((pn, prev)) = list.last() {
                if *pn + 1 == n {
                    c.last = Term::from_state(&prev.id, &prev.state);
                }
            }
            if c.last.is_none() {
                c.last = old.and_then(|o| Term::from_json(&o["lastState"]["terminated"]));
            }
            c.image_ref = old.and_then(|o| o["image"].as_str().map(str::to_string));
            c.image_id = old.and_then(|o| o["imageID"].as_str().map(str::to_string));
            for (_, stale) in list.iter().rev().skip(1) {
                let _ = ctx.runtime.remove_container(&stale.id).await;
            }
            let mut run = Run {
                id: info.id.clone(),
                started_at: match &info.state {
                    ContainerState::Running { started_at, .. } => Some(*started_at),
                    ContainerState::Exited { started_at, .. } => *started_at,
                    _ => None,
                },
                exit: Term::from_state(&info.id, &info.state),
                exited_at: None,
                probes: None,
                watcher: None,
                stopping: false,
            };
            if run.exit.is_some() {
                run.exited_at = Some(Instant::now());
            } else if let Some(spec) = w.container_spec(&name) {
                let seeded = Arc::new(ProbeState::default());
                let same = old.is_some_and(|o| {
                    o["containerID"].as_str() == Some(&format!("corral://{}", info.id))
                });
                if same {
                    let o = old.expect("checked");
                    seeded
                        .ready
                        .store(o["ready"].as_bool().unwrap_or(false), Ordering::SeqCst);
                    seeded
                        .started
                        .store(o["started"].as_bool().unwrap_or(false), Ordering::SeqCst);
                }
                w.watch_run(&mut run);
                if !w.is_init(&name) {
                    w.start_probes(&mut run, spec, seeded);
                }
                tracing::info!(pod = %w.key(), container = %name, id = %info.id, "adopted running container");
            }
            c.run = Some(run);
            w.ctrs.insert(name, c);
        }
        w
    }

    fn key(&self) -> String {
        format!(
            "{}/{}",
            self.pod.namespace().unwrap_or_default(),
            self.pod.name_any()
        )
    }

    fn is_init(&self, name: &str) -> bool {
        self.pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .any(|c| c.name == name)
    }

    fn container_spec(&self, name: &str) -> Option<Container> {
        self.pod.spec.as_ref().and_then(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .find(|c| c.name == name)
                .cloned()
        })
    }

    fn pod_ip(&self) -> Option<IpAddr> {
        match self.sandbox.as_ref().and_then(|s| s.network.as_ref()) {
            Some(n) => Some(IpAddr::V4(n.pod_ip)),
            None if self.sandbox.is_some() => Some(self.ctx.node_ip),
            None => None,
        }
    }

    fn event(&self, name: &str, type_: &str, reason: &str, message: impl Into<String>) {
        let fp = if self.is_init(name) {
            format!("spec.initContainers{{{name}}}")
        } else {
            format!("spec.containers{{{name}}}")
        };
        self.ctx
            .recorder
            .container(&self.pod, fp, type_, reason, message);
    }

    fn watch_run(&self, run: &mut Run) {
        let rt = self.ctx.runtime.clone();
        let id = run.id.clone();
        let wake = self.wake.clone();
        run.watcher = Some(tokio::spawn(async move {
            let _ = rt.wait_exit(&id).await;
            let _ = wake.send(());
        }));
    }

    fn start_probes(&self, run: &mut Run, c: Container, state: Arc<ProbeState>) {
        let target = Target {
            runtime: self.ctx.runtime.clone(),
            container_id: run.id.clone(),
            pod_ip: self.pod_ip().unwrap_or(self.ctx.node_ip),
            container: c,
        };
        let task = tokio::spawn(probes::run_probes(
            target,
            state.clone(),
            self.wake.clone(),
            self.events.clone(),
        ));
        run.probes = Some(Probes { state, task });
    }

    /// Notices runs that ended since the last look.
    fn refresh_runs(&mut self) {
        for c in self.ctrs.values_mut() {
            let Some(run) = c.run.as_mut() else { continue };
            if run.exit.is_some() {
                continue;
            }
            let st = match self.ctx.runtime.container_state(&run.id) {
                Ok(st) => st,
                Err(e) => ContainerState::Unknown {
                    reason: e.to_string(),
                },
            };
            if let Some(t) = Term::from_state(&run.id, &st) {
                run.exit = Some(t);
                run.exited_at = Some(Instant::now());
                run.probes = None;
                run.stopping = false;
            }
        }
    }

    /// Stops containers whose liveness or startup probe failed for good.
    fn kill_unhealthy(&mut self) {
        let grace = Duration::from_secs(grace_seconds(&self.pod) as u64);
        let mut to_kill = Vec::new();
        for (name, c) in &mut self.ctrs {
            let Some(run) = c.run.as_mut() else { continue };
            if run.exit.is_some() || run.stopping {
                continue;
            }
            let failed = run
                .probes
                .as_ref()
                .and_then(|p| p.state.failed.lock().unwrap().take());
            if let Some(msg) = failed {
                run.stopping = true;
                to_kill.push((name.clone(), run.id.clone(), msg));
            }
        }
        for (name, id, msg) in to_kill {
            self.event(&name, "Normal", "Killing", msg);
            let rt = self.ctx.runtime.clone();
            let wake = self.wake.clone();
            let pre_stop = self.pre_stop_target(&name, &id);
            tokio::spawn(async move {
                let started = Instant::now();
                if let Some((target, handler)) = pre_stop {
                    let _ = tokio::time::timeout(
                        grace,
                        probes::run(&target, &Action::of_handler(&handler), grace),
                    )
                    .await;
                }
                let _ = rt
                    .stop_container(&id, grace.saturating_sub(started.elapsed()))
                    .await;
                let _ = wake.send(());
            });
        }
    }

    fn pre_stop_target(
        &self,
        name: &str,
        id: &str,
    ) -> Option<(Target, k8s_openapi::api::core::v1::LifecycleHandler)> {
        let c = self.container_spec(name)?;
        let h = c.lifecycle.as_ref()?.pre_stop.clone()?;
        Some((
            Target {
                runtime: self.ctx.runtime.clone(),
                container_id: id.to_string(),
                pod_ip: self.pod_ip().unwrap_or(self.ctx.node_ip),
                container: c,
            },
            h,
        ))
    }

    /// One reconcile; returns when to look again at the latest.
    async fn sync(&mut self) -> Instant {
        let now = Instant::now();
        let mut next = now + RESYNC;
        self.refresh_runs();
        self.kill_unhealthy();
        if self.terminal.is_none() {
            next = next.min(self.start_what_is_due().await);
        }
        self.write_status().await;
        next
    }

    async fn ensure_sandbox(&mut self) -> Result<(), String> {
        if self.sandbox.is_some() {
            return Ok(());
        }
        let pod = &self.pod;
        let spec = pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network.unwrap_or(false);
        let network = if host_network || !self.ctx.runtime.capabilities().namespaces {
            None
        } else {
            let mut ipam = self.ctx.ipam.lock().unwrap();
            let ip = ipam.allocate(&self.uid).map_err(|e| e.to_string())?;
            Some(PodNetwork {
                bridge: self.ctx.cfg.bridge.clone(),
                pod_ip: ip,
                prefix_len: ipam.prefix_len(),
                gateway: ipam.gateway(),
            })
        };
        let hostname = spec
            .hostname
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| pod.name_any());
        let ns = pod.namespace().unwrap_or_default();
        let ip = network
            .as_ref()
            .map(|n| IpAddr::V4(n.pod_ip))
            .unwrap_or(self.ctx.node_ip);
        let domain = &self.ctx.cfg.cluster_domain;
        let hosts = crate::dns::hosts_file(&spec, &ns, &hostname, ip, domain);
        let resolv_conf = crate::dns::resolv_conf(
            &spec,
            &ns,
            self.ctx.cfg.cluster_dns,
            domain,
            self.ctx.resolv_conf.as_deref(),
        );
        let sb = SandboxSpec {
            pod_uid: self.uid.clone(),
            name: pod.name_any(),
            namespace: ns,
            hostname,
            network,
            resolv_conf,
            hosts: Some(hosts),
        };
        let started = Instant::now();
        let created = self.ctx.runtime.create_sandbox(sb).await;
        tracing::debug!(pod = %self.key(), ms = ms(started.elapsed()), ok = created.is_ok(), "sandbox");
        match created {
            Ok(s) => {
                self.sandbox = Some(s);
                Ok(())
            }
            Err(corral_runtime::Error::AlreadyExists { .. }) => {
                self.sandbox = self.ctx.runtime.sandbox(&self.uid).ok().flatten();
                Ok(())
            }
            Err(e) => {
                self.ctx.ipam.lock().unwrap().release(&self.uid);
                Err(format!("Failed to create pod sandbox: {e}"))
            }
        }
    }

    /// Starts init containers in order, then the containers, each when due; returns when a
    /// back-off ends.
    async fn start_what_is_due(&mut self) -> Instant {
        let now = Instant::now();
        let mut next = now + RESYNC;
        let spec = self.pod.spec.clone().unwrap_or_default();
        let policy = restart_policy(&self.pod).to_string();
        if let Err(e) = self.ensure_sandbox().await {
            if self.blocked.as_deref() != Some(&e) {
                self.ctx
                    .recorder
                    .warning(&self.pod, "FailedCreatePodSandBox", e.clone());
            }
            self.blocked = Some(e);
            return now + RETRY;
        }
        if self.start_time.is_none() {
            self.start_time = Some(ts(Utc::now()));
        }
        for c in spec.init_containers.iter().flatten() {
            let st = self.ctrs.entry(c.name.clone()).or_default();
            if st.running() {
                return next;
            }
            match st.exit().map(|t| t.exit_code) {
                Some(0) => continue,
                Some(_) if policy == "Never" => {
                    self.terminal = Some("Failed");
                    return next;
                }
                Some(_) => {
                    let when = self.start(c, true).await;
                    return next.min(when);
                }
                None => {
                    let when = self.start(c, false).await;
                    return next.min(when);
                }
            }
        }
        for c in &spec.containers {
            let st = self.ctrs.entry(c.name.clone()).or_default();
            if st.running() {
                continue;
            }
            let when = match st.exit().map(|t| t.exit_code) {
                Some(code) => {
                    let restart = policy == "Always" || (policy == "OnFailure" && code != 0);
                    if !restart {
                        st.waiting = None;
                        continue;
                    }
                    self.start(c, true).await
                }
                None => self.start(c, false).await,
            };
            next = next.min(when);
        }
        // Every container ended for good: the pod is done.
        let all_done = spec.containers.iter().all(|c| {
            self.ctrs
                .get(&c.name)
                .is_some_and(|s| s.exit().is_some() && s.waiting.is_none())
        });
        if all_done && policy != "Always" {
            let ok = spec
                .containers
                .iter()
                .all(|c| self.ctrs[&c.name].exit().is_some_and(|t| t.exit_code == 0));
            self.terminal = Some(if ok { "Succeeded" } else { "Failed" });
        }
        next
    }

    /// The Service variables for this pod's containers, once the Service cache has its
    /// first list (a container started before it would miss them for good).
    async fn service_env(&self) -> std::collections::BTreeMap<String, String> {
        let store = &self.ctx.services;
        let _ = tokio::time::timeout(Duration::from_secs(10), store.wait_until_ready()).await;
        let services = store.state();
        crate::service_env::service_env(
            services.iter().map(|s| &**s),
            &self.pod.namespace().unwrap_or_default(),
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.enable_service_links)
                .unwrap_or(true),
        )
    }

    async fn resolve_image(&self, image: &str) -> Option<Image> {
        let store = self.ctx.images.clone();
        let image = image.to_string();
        tokio::task::spawn_blocking(move || store.resolve(&image))
            .await
            .ok()
            .flatten()
    }

    /// Starts (or restarts) one container if no back-off holds it; returns when to retry.
    async fn start(&mut self, c: &Container, restart: bool) -> Instant {
        let now = Instant::now();
        let name = c.name.clone();
        let pod_desc = format!(
            "{}_{}({})",
            self.pod.name_any(),
            self.pod.namespace().unwrap_or_default(),
            self.uid
        );
        // Crash back-off, as kubelet: the first restart is at once, then 10 s doubling to
        // 5 min, measured from the exit; reset once it ran 10 min since the last raise.
        if restart {
            let st = self.ctrs.get_mut(&name).expect("present");
            let exited_at = st.run.as_ref().and_then(|r| r.exited_at).unwrap_or(now);
            if let Some((d, raised)) = st.crash_backoff {
                if exited_at.saturating_duration_since(raised) > BACKOFF_RESET {
                    st.crash_backoff = None;
                } else if now < exited_at + d {
                    let msg = format!(
                        "back-off {} restarting failed container={name} pod={pod_desc}",
                        fmt_dur(d)
                    );
                    let first =
                        st.waiting.as_ref().map(|w| w.0.as_str()) != Some("CrashLoopBackOff");
                    st.waiting = Some(("CrashLoopBackOff".into(), msg));
                    if first {
                        self.event(
                            &name,
                            "Warning",
                            "BackOff",
                            format!(
                                "Back-off restarting failed container {name} in pod {pod_desc}"
                            ),
                        );
                    }
                    return exited_at + d;
                }
            }
        }
        let image_name = c.image.clone().unwrap_or_default();
        let Some(image) = self.resolve_image(&image_name).await else {
            let st = self.ctrs.get_mut(&name).expect("present");
            let why = format!(
                "image \"{image_name}\" is not present on node {} and corral does not pull from registries: import it with `corral image import <file>` (an OCI layout or `docker save` tarball)",
                self.ctx.cfg.node_name
            );
            if let Some((d, at)) = st.pull_backoff {
                if now < at {
                    st.waiting = Some((
                        "ImagePullBackOff".into(),
                        format!("Back-off pulling image \"{image_name}\": ErrImagePull: {why}"),
                    ));
                    if st.waiting.is_some() {
                        self.event(
                            &name,
                            "Normal",
                            "BackOff",
                            format!("Back-off pulling image \"{image_name}\""),
                        );
                    }
                    return at;
                }
                st.pull_backoff = Some(((d * 2).min(BACKOFF_MAX), now + (d * 2).min(BACKOFF_MAX)));
            } else {
                st.pull_backoff = Some((BACKOFF_INITIAL, now + BACKOFF_INITIAL));
            }
            st.waiting = Some(("ErrImagePull".into(), why.clone()));
            self.event(
                &name,
                "Warning",
                "Failed",
                format!("Failed to pull image \"{image_name}\": {why}"),
            );
            self.event(&name, "Warning", "Failed", "Error: ErrImagePull");
            // Show ErrImagePull now and ImagePullBackOff at the next look, as kubelet does.
            return now + Duration::from_secs(1);
        };
        let image_ref = image
            .references
            .iter()
            .find(|r| {
                corral_images::Reference::parse(&image_name)
                    .map(|p| p.to_string() == **r)
                    .unwrap_or(false)
            })
            .or(image.references.first())
            .cloned()
            .unwrap_or_else(|| image_name.clone());
        let repo = image_ref
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
            .map(|(r, _)| r.to_string())
            .unwrap_or_else(|| image_ref.clone());
        let image_id = format!("{repo}@{}", image.digest.as_str());
        let t_image = Instant::now();
        {
            let st = self.ctrs.get_mut(&name).expect("present");
            if st.pull_backoff.take().is_some()
                || st.image_id.as_deref() != Some(&image_id)
                || !restart
            {
                self.event(
                    &name,
                    "Normal",
                    "Pulled",
                    format!("Container image \"{image_name}\" already present on machine"),
                );
            }
            let st = self.ctrs.get_mut(&name).expect("present");
            st.image_ref = Some(image_ref);
            st.image_id = Some(image_id);
        }
        // Volumes, then the container's spec.
        let ns = self.pod.namespace().unwrap_or_default();
        let mut objects = Objects::new(self.ctx.client.clone(), &ns);
        let vin = VolumeInputs {
            client: self.ctx.client.clone(),
            pod: &self.pod,
            dir: paths::pod_volumes_dir(&self.ctx.cfg.data_dir, &self.uid),
            pod_ip: self.pod_ip(),
            host_ip: self.ctx.node_ip,
            node: self.ctx.node,
            can_mount: self.ctx.runtime.capabilities().root,
        };
        let vols = match volumes::prepare(&vin, &mut objects).await {
            Ok(v) => {
                self.blocked = None;
                v
            }
            Err(e) => {
                if self.blocked.as_deref() != Some(&e) {
                    self.ctx
                        .recorder
                        .warning(&self.pod, "FailedMount", e.clone());
                }
                self.blocked = Some(e);
                return now + RETRY;
            }
        };
        let t_volumes = Instant::now();
        let st = self.ctrs.get(&name).expect("present");
        let n = if st.run.is_some() {
            st.restart_count + 1
        } else {
            st.restart_count
        };
        let id = paths::container_id(&self.uid, &name, n);
        let log_path = paths::container_log_path(
            &self.ctx.cfg.data_dir,
            &ns,
            &self.pod.name_any(),
            &self.uid,
            &name,
            n,
        );
        let hostname = self
            .sandbox
            .as_ref()
            .map(|s| s.hostname.clone())
            .unwrap_or_else(|| self.pod.name_any());
        let service_env = self.service_env().await;
        let built = containers::build(
            BuildInputs {
                env: EnvInputs {
                    pod: &self.pod,
                    container: c,
                    image_env: &image.config.env,
                    pod_ip: self.pod_ip(),
                    host_ip: self.ctx.node_ip,
                    node: self.ctx.node,
                    hostname: &hostname,
                    service_env: &service_env,
                },
                image: &image,
                volumes: &vols,
                id: id.clone(),
                log_path: log_path.clone(),
            },
            &mut objects,
        )
        .await;
        let spec = match built {
            Ok(s) => s,
            Err(e) => {
                let (reason, msg) = match e {
                    BuildError::Config(m) => ("CreateContainerConfigError", m),
                    BuildError::Create(m) => ("CreateContainerError", m),
                };
                let st = self.ctrs.get_mut(&name).expect("present");
                let changed =
                    st.waiting.as_ref().map(|w| (&w.0, &w.1)) != Some((&reason.to_string(), &msg));
                st.waiting = Some((reason.into(), msg.clone()));
                if changed {
                    self.event(&name, "Warning", "Failed", format!("Error: {msg}"));
                }
                return now + Duration::from_secs(10);
            }
        };
        if let Some(parent) = log_path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        // Keep the run before this one (lastState after a restart of the agent); drop older.
        if n >= 2 {
            let _ = self
                .ctx
                .runtime
                .remove_container(&paths::container_id(&self.uid, &name, n - 2))
                .await;
        }
        if self.ctx.runtime.container_state(&id).is_ok() {
            let _ = self.ctx.runtime.remove_container(&id).await;
        }
        let sandbox = self
            .sandbox
            .clone()
            .expect("sandbox made before containers");
        let t_built = Instant::now();
        let result = self.ctx.runtime.start_container(&sandbox, spec).await;
        tracing::debug!(
            pod = %self.key(), container = %name,
            image_ms = ms(t_image - now), volumes_ms = ms(t_volumes - t_image),
            build_ms = ms(t_built - t_volumes), runtime_ms = ms(t_built.elapsed()),
            ok = result.is_ok(), "container start"
        );
        if restart {
            let st = self.ctrs.get_mut(&name).expect("present");
            st.crash_backoff = Some(match st.crash_backoff {
                Some((d, _)) => ((d * 2).min(BACKOFF_MAX), now),
                None => (BACKOFF_INITIAL, now),
            });
        }
        let mut run = Run {
            id: id.clone(),
            started_at: None,
            exit: None,
            exited_at: None,
            probes: None,
            watcher: None,
            stopping: false,
        };
        match result {
            Ok(info) => {
                if let ContainerState::Running { started_at, .. } = info.state {
                    run.started_at = Some(started_at);
                }
                self.event(
                    &name,
                    "Normal",
                    "Created",
                    format!("Created container: {name}"),
                );
                self.event(
                    &name,
                    "Normal",
                    "Started",
                    format!("Started container {name}"),
                );
                self.watch_run(&mut run);
                if !self.is_init(&name) {
                    self.start_probes(&mut run, c.clone(), Arc::new(ProbeState::default()));
                }
            }
            Err(corral_runtime::Error::StartFailed { reason, .. }) => {
                let msg = format!("failed to start container process: {reason}");
                self.event(&name, "Warning", "Failed", format!("Error: {msg}"));
                run.exit = Some(Term {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".into(),
                    message: Some(msg),
                    started_at: None,
                    finished_at: Utc::now(),
                    container_id: id.clone(),
                });
                run.exited_at = Some(now);
            }
            Err(e) => {
                let st = self.ctrs.get_mut(&name).expect("present");
                let msg = e.to_string();
                st.waiting = Some(("CreateContainerError".into(), msg.clone()));
                self.event(&name, "Warning", "Failed", format!("Error: {msg}"));
                return now + Duration::from_secs(10);
            }
        }
        let st = self.ctrs.get_mut(&name).expect("present");
        if let Some(prev) = st.run.take() {
            st.last = prev.exit.clone();
            st.restart_count = n;
        }
        st.waiting = None;
        let started_ok = run.exit.is_none();
        st.run = Some(run);
        if started_ok {
            if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.clone()) {
                self.post_start(c, &id, h).await;
            }
        }
        // An immediate exit (StartError) is handled at the next look.
        now + if started_ok { RESYNC } else { Duration::ZERO }
    }

    async fn post_start(
        &mut self,
        c: &Container,
        id: &str,
        h: k8s_openapi::api::core::v1::LifecycleHandler,
    ) {
        let target = Target {
            runtime: self.ctx.runtime.clone(),
            container_id: id.to_string(),
            pod_ip: self.pod_ip().unwrap_or(self.ctx.node_ip),
            container: c.clone(),
        };
        let limit = Duration::from_secs(grace_seconds(&self.pod).max(30) as u64);
        let result = probes::run(&target, &Action::of_handler(&h), limit).await;
        if let Err(msg) = result {
            self.event(
                &c.name,
                "Warning",
                "FailedPostStartHook",
                format!("PostStartHook failed: {msg}"),
            );
            let grace = Duration::from_secs(grace_seconds(&self.pod) as u64);
            if let Some(run) = self.ctrs.get_mut(&c.name).and_then(|s| s.run.as_mut()) {
                run.stopping = true;
            }
            self.event(
                &c.name,
                "Normal",
                "Killing",
                format!("FailedPostStartHook: stopping container {}", c.name),
            );
            let _ = self.ctx.runtime.stop_container(id, grace).await;
            self.refresh_runs();
        }
    }

    fn container_status(&self, c: &Container, init: bool) -> Value {
        let st = self.ctrs.get(&c.name);
        let image = st
            .and_then(|s| s.image_ref.clone())
            .unwrap_or_else(|| c.image.clone().unwrap_or_default());
        let mut out = json!({
            "name": c.name,
            "image": image,
            "imageID": st.and_then(|s| s.image_id.clone()).unwrap_or_default(),
            "restartCount": st.map(|s| s.restart_count).unwrap_or(0),
            "ready": false,
            "started": false,
            "lastState": {},
        });
        let Some(st) = st else {
            let reason = if init || !self.init_done() {
                "PodInitializing"
            } else {
                "ContainerCreating"
            };
            let reason = if init && self.first_pending_init() != Some(c.name.as_str()) {
                "PodInitializing"
            } else if init {
                "ContainerCreating"
            } else {
                reason
            };
            out["state"] = json!({"waiting": {"reason": reason}});
            return out;
        };
        if let Some(l) = &st.last {
            out["lastState"] = json!({"terminated": l.json()});
        }
        match &st.run {
            Some(run) => {
                out["containerID"] = json!(format!("corral://{}", run.id));
                match (&run.exit, &st.waiting) {
                    (None, _) => {
                        out["state"] = json!({"running": {
                            "startedAt": run.started_at.map(ts).unwrap_or_else(|| ts(Utc::now()))
                        }});
                        let (ready, started) = match &run.probes {
                            Some(p) => (
                                p.state.ready.load(Ordering::SeqCst),
                                p.state.started.load(Ordering::SeqCst),
                            ),
                            None => (init, true),
                        };
                        out["ready"] = json!(ready && !run.stopping && !init);
                        out["started"] = json!(started);
                    }
                    (Some(t), Some((reason, msg))) => {
                        out["state"] = json!({"waiting": {"reason": reason, "message": msg}});
                        out["lastState"] = json!({"terminated": t.json()});
                    }
                    (Some(t), None) => {
                        out["state"] = json!({"terminated": t.json()});
                        out["ready"] = json!(init && t.exit_code == 0);
                    }
                }
            }
            None => {
                let (reason, msg) = st.waiting.clone().unwrap_or_else(|| {
                    let r = if !init && !self.init_done() {
                        "PodInitializing"
                    } else {
                        "ContainerCreating"
                    };
                    (r.to_string(), String::new())
                });
                out["state"] = if msg.is_empty() {
                    json!({"waiting": {"reason": reason}})
                } else {
                    json!({"waiting": {"reason": reason, "message": msg}})
                };
            }
        }
        out
    }

    fn first_pending_init(&self) -> Option<&str> {
        self.pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .find(|c| {
                self.ctrs
                    .get(&c.name)
                    .and_then(|s| s.exit())
                    .is_none_or(|t| t.exit_code != 0)
            })
            .map(|c| c.name.as_str())
    }

    fn init_done(&self) -> bool {
        self.first_pending_init().is_none()
    }

    fn phase(&self, statuses: &[Value]) -> &'static str {
        if let Some(t) = self.terminal {
            return t;
        }
        if !self.init_done() {
            return "Pending";
        }
        let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
        for s in statuses {
            if s["state"]["running"].is_object() {
                running += 1;
            } else if s["state"]["terminated"].is_object() {
                stopped += 1;
                if s["state"]["terminated"]["exitCode"] == 0 {
                    succeeded += 1;
                }
            } else if s["lastState"]["terminated"].is_object() {
                stopped += 1;
            } else {
                waiting += 1;
            }
        }
        let policy = restart_policy(&self.pod);
        if waiting > 0 {
            "Pending"
        } else if running > 0 {
            "Running"
        } else if stopped > 0 {
            if policy == "Always" {
                if self.killed {
                    if stopped == succeeded {
                        "Succeeded"
                    } else {
                        "Failed"
                    }
                } else {
                    "Running"
                }
            } else if stopped == succeeded {
                "Succeeded"
            } else if policy == "Never" || self.killed {
                "Failed"
            } else {
                "Running"
            }
        } else {
            "Pending"
        }
    }

    fn status(&self) -> Value {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let statuses: Vec<Value> = spec
            .containers
            .iter()
            .map(|c| self.container_status(c, false))
            .collect();
        let init_statuses: Vec<Value> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| self.container_status(c, true))
            .collect();
        let phase = self.phase(&statuses);
        let prev = serde_json::to_value(&self.pod.status).unwrap_or(Value::Null);
        let prev_conds = prev["conditions"].as_array().cloned().unwrap_or_default();
        let now = ts(Utc::now());
        let cond = |ty: &str, ok: bool, reason: Option<&str>, message: Option<String>| {
            let status = if ok { "True" } else { "False" };
            let since = prev_conds
                .iter()
                .find(|c| c["type"] == ty && c["status"] == status)
                .and_then(|c| c["lastTransitionTime"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| now.clone());
            let mut c = json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            if let Some(m) = message {
                c["message"] = json!(m);
            }
            c
        };
        let terminal = matches!(phase, "Succeeded" | "Failed");
        let pending_init: Vec<String> = init_statuses
            .iter()
            .filter(|s| s["state"]["terminated"]["exitCode"] != 0)
            .filter_map(|s| s["name"].as_str().map(str::to_string))
            .collect();
        let unready: Vec<String> = statuses
            .iter()
            .filter(|s| s["ready"] != true)
            .filter_map(|s| s["name"].as_str().map(str::to_string))
            .collect();
        let initialized = pending_init.is_empty()
            || (terminal
                && init_statuses
                    .iter()
                    .all(|s| s["state"]["terminated"].is_object()));
        let ready_reason = if terminal {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        };
        let ready_msg = |l: &[String]| {
            (!terminal).then(|| format!("containers with unready status: [{}]", l.join(" ")))
        };
        let mut conditions = vec![
            cond(
                "PodReadyToStartContainers",
                self.sandbox.is_some() && !terminal,
                None,
                None,
            ),
            if initialized {
                cond("Initialized", true, None, None)
            } else {
                cond(
                    "Initialized",
                    false,
                    Some("ContainersNotInitialized"),
                    Some(format!(
                        "containers with incomplete status: [{}]",
                        pending_init.join(" ")
                    )),
                )
            },
        ];
        let ready = unready.is_empty() && !terminal && initialized;
        if ready {
            conditions.push(cond("Ready", true, None, None));
            conditions.push(cond("ContainersReady", true, None, None));
        } else {
            conditions.push(cond(
                "Ready",
                false,
                Some(ready_reason),
                ready_msg(&unready),
            ));
            conditions.push(cond(
                "ContainersReady",
                false,
                Some(ready_reason),
                ready_msg(&unready),
            ));
        }
        // Conditions others own (PodScheduled, DisruptionTarget, readiness gates) stay.
        let ours = [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
        ];
        let mut all: Vec<Value> = prev_conds
            .iter()
            .filter(|c| c["type"].as_str().is_some_and(|t| !ours.contains(&t)))
            .cloned()
            .collect();
        if !all.iter().any(|c| c["type"] == "PodScheduled") {
            all.insert(0, cond("PodScheduled", true, None, None));
        }
        all.extend(conditions);
        let host_ip = self.ctx.node_ip.to_string();
        let mut status = json!({
            "phase": phase,
            "conditions": all,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "containerStatuses": statuses,
        });
        if !init_statuses.is_empty() {
            status["initContainerStatuses"] = json!(init_statuses);
        }
        if let Some(ip) = self.pod_ip() {
            status["podIP"] = json!(ip.to_string());
            status["podIPs"] = json!([{"ip": ip.to_string()}]);
        } else if let Some(ip) = prev["podIP"].as_str() {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        if let Some(t) = &self.start_time {
            status["startTime"] = json!(t);
        }
        if let Some(q) = prev["qosClass"].as_str() {
            status["qosClass"] = json!(q);
        }
        status
    }

    async fn write_status(&mut self) {
        let status = self.status();
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let ns = self.pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let patch = json!({"metadata": {"uid": self.uid}, "status": status});
        let started = Instant::now();
        let written = api
            .patch_status(
                &self.pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await;
        tracing::debug!(pod = %self.key(), ms = ms(started.elapsed()), phase = %status["phase"], "status written");
        match written {
            Ok(_) => self.last_status = Some(status),
            Err(e) => tracing::warn!(pod = %self.key(), error = %e, "writing pod status failed"),
        }
    }

    /// Stops every running container: preStop hooks then SIGTERM, SIGKILL after `grace`.
    async fn stop_all(&mut self, grace: Duration) {
        let started = Instant::now();
        let mut stops = Vec::new();
        let names: Vec<String> = self.ctrs.keys().cloned().collect();
        for name in names {
            let Some(run) = self.ctrs.get_mut(&name).and_then(|c| c.run.as_mut()) else {
                continue;
            };
            if run.exit.is_some() {
                continue;
            }
            run.probes = None;
            let id = run.id.clone();
            let pre_stop = self.pre_stop_target(&name, &id);
            self.event(
                &name,
                "Normal",
                "Killing",
                format!("Stopping container {name}"),
            );
            let rt = self.ctx.runtime.clone();
            stops.push(async move {
                if let Some((target, h)) = pre_stop {
                    if let Ok(Err(msg)) = tokio::time::timeout(
                        grace,
                        probes::run(&target, &Action::of_handler(&h), grace),
                    )
                    .await
                    {
                        tracing::info!(container = %id, "preStop hook failed: {msg}");
                    }
                }
                let _ = rt
                    .stop_container(&id, grace.saturating_sub(started.elapsed()))
                    .await;
            });
        }
        futures::future::join_all(stops).await;
        self.refresh_runs();
    }

    /// Deletes everything the node holds for the pod: containers, sandbox, address,
    /// volumes and logs.
    async fn cleanup(&mut self) {
        for c in self.ctrs.values_mut() {
            c.run = None;
        }
        for info in self
            .ctx
            .runtime
            .list_containers_with_prefix(&self.uid)
            .unwrap_or_default()
        {
            if info.pod_uid == self.uid {
                if let Err(e) = self.ctx.runtime.remove_container(&info.id).await {
                    tracing::warn!(pod = %self.key(), error = %e, "removing container failed");
                }
            }
        }
        remove_pod_files(&self.ctx, &self.uid).await;
        self.sandbox = None;
        self.ctx.recorder.forget(&self.uid);
    }

    /// Graceful deletion: stop the containers, report the final status, clean up, then
    /// delete the pod object for good (gracePeriodSeconds=0), as the kubelet does.
    async fn terminate(&mut self) {
        let grace = Duration::from_secs(grace_seconds(&self.pod) as u64);
        self.stop_all(grace).await;
        self.killed = true;
        for c in self.ctrs.values_mut() {
            c.waiting = None;
        }
        self.write_status().await;
        self.cleanup().await;
        let ns = self.pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let mut wait = Duration::from_millis(200);
        loop {
            match api.delete(&self.pod.name_any(), &dp).await {
                Ok(_) => break,
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => break,
                Err(e) => {
                    tracing::warn!(pod = %self.key(), error = %e, "deleting pod failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
        tracing::info!(pod = %self.key(), "pod terminated and deleted");
    }
}

/// Milliseconds with a fraction, for timing logs.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn fmt_dur(d: Duration) -> String {
    // Go's time.Duration format, as kubelet's messages print it: 10s, 1m20s, 5m0s.
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Removes a pod's sandbox (freeing its address), volumes and log directory.
pub(crate) async fn remove_pod_files(ctx: &Ctx, uid: &str) {
    if let Err(e) = ctx.runtime.remove_sandbox(uid).await {
        tracing::warn!(uid, error = %e, "removing sandbox failed");
    }
    ctx.ipam.lock().unwrap().release(uid);
    let pod_dir = paths::pod_dir(&ctx.cfg.data_dir, uid);
    if let Err(e) = volumes::remove_dir(&pod_dir) {
        tracing::warn!(uid, error = %e, "removing pod volumes failed");
    }
    // Log directories end with `_<uid>`.
    let pods = ctx.cfg.data_dir.join("pods");
    if let Ok(rd) = std::fs::read_dir(&pods) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.ends_with(&format!("_{uid}")) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Runs the worker for one pod until the pod is gone, is deleted, or the agent stops.
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    mut rx: watch::Receiver<Option<Pod>>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(first) = rx.borrow_and_update().clone() else {
        return;
    };
    let (wake_tx, mut wake_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<ProbeEvent>();
    let mut w = Worker::adopt(ctx, first, wake_tx, ev_tx).await;
    loop {
        let current = rx.borrow_and_update().clone();
        let next = match current {
            None => {
                // The pod object is gone (force-deleted, or deleted while we were away).
                w.stop_all(Duration::from_secs(2)).await;
                w.cleanup().await;
                tracing::info!(pod = %w.key(), "pod gone: containers stopped and removed");
                return;
            }
            Some(p) => {
                w.pod = p;
                if w.pod.metadata.deletion_timestamp.is_some() {
                    tokio::select! {
                        _ = w.terminate() => return,
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
                w.sync().await
            }
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = rx.changed() => if r.is_err() { return },
            Some(()) = wake_rx.recv() => {}
            Some(ev) = ev_rx.recv() => {
                w.event(&ev.container, "Warning", "Unhealthy", ev.message);
                continue;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
        // Coalesce a burst of wake-ups into one reconcile.
        while wake_rx.try_recv().is_ok() {}
    }
}
