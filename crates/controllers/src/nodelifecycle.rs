//! The node lifecycle controller, following Kubernetes' pkg/controller/nodelifecycle and
//! its taint eviction controller: a node whose Lease (kube-node-lease) and Ready
//! heartbeat have not moved for the grace period (40 s by default) gets its conditions
//! set Unknown ("Kubelet stopped posting node status."), and its pods marked not Ready;
//! nodes carry the NoSchedule and NoExecute taints their conditions call for
//! (not-ready, unreachable, unschedulable, pressure); pods on a node with a NoExecute
//! taint they do not tolerate are evicted (deleted), at once or after their
//! tolerationSeconds, so their controllers replace them elsewhere.
//!
//! Silence is measured on this controller's own clock (when it last saw the heartbeat
//! change), never by comparing the node's timestamps with ours, as Kubernetes does, so
//! clock skew between machines cannot make a node look dead.

use crate::informer::{Change, Informer, Key};
use crate::nodeutil::{self, NOT_READY, UNREACHABLE, UNSCHEDULABLE};
use crate::queue::{Outcome, Queue};
use crate::{events::Recorder, Error};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Kubernetes' node monitor period: how often an unchanged node is looked at again.
const MONITOR_PERIOD: Duration = Duration::from_secs(5);

/// What this controller last saw of a node's heartbeats, and when (its own clock).
struct Health {
    lease_renew: Option<Timestamp>,
    ready_heartbeat: Option<Timestamp>,
    probed: Instant,
}

pub struct Controller {
    client: Client,
    nodes: Informer<Node>,
    leases: Informer<Lease>,
    pods: Informer<Pod>,
    recorder: Recorder,
    grace: Duration,
    health: Mutex<HashMap<String, Health>>,
    queue: Queue,
}

/// The taints a node's state calls for, by key and effect (Kubernetes'
/// doNoScheduleTaintingPass and doNoExecuteTaintingPass).
pub fn wanted_taints(node: &Node) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    let conds = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or(&[]);
    let status_of = |t: &str| {
        conds
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.status.as_str())
    };
    match status_of("Ready") {
        Some("False") => {
            out.push((NOT_READY, "NoSchedule"));
            out.push((NOT_READY, "NoExecute"));
        }
        Some("Unknown") => {
            out.push((UNREACHABLE, "NoSchedule"));
            out.push((UNREACHABLE, "NoExecute"));
        }
        _ => {}
    }
    for (cond, key) in [
        ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
        ("DiskPressure", "node.kubernetes.io/disk-pressure"),
        ("PIDPressure", "node.kubernetes.io/pid-pressure"),
        (
            "NetworkUnavailable",
            "node.kubernetes.io/network-unavailable",
        ),
    ] {
        if status_of(cond) == Some("True") {
            out.push((key, "NoSchedule"));
        }
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        out.push((UNSCHEDULABLE, "NoSchedule"));
    }
    out
}

/// Keys this controller manages: it adds and removes only these.
fn managed(key: &str) -> bool {
    key.starts_with("node.kubernetes.io/")
}

/// When a pod on a node with `taints` must go: None = never, Some(t) = at t (now or
/// past means at once). Kubernetes' taint eviction: an untolerated NoExecute taint
/// evicts at once; tolerated ones after the shortest tolerationSeconds.
pub fn eviction_time(pod: &Pod, taints: &[Taint], now: Timestamp) -> Option<Timestamp> {
    let tols = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut when: Option<Timestamp> = None;
    for t in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<_> = tols.iter().filter(|x| nodeutil::tolerates(x, t)).collect();
        if matching.is_empty() {
            return Some(now);
        }
        // The shortest bound among the tolerations that match; none bounded = forever.
        let secs = matching.iter().filter_map(|x| x.toleration_seconds).min();
        if let Some(s) = secs {
            let added = t.time_added.as_ref().map(|t| t.0).unwrap_or(now);
            let at = added + SignedDuration::from_secs(s.max(0));
            when = Some(when.map_or(at, |w| w.min(at)));
        }
    }
    when
}

impl Controller {
    pub fn new(
        client: Client,
        nodes: Informer<Node>,
        leases: Informer<Lease>,
        pods: Informer<Pod>,
        recorder: Recorder,
        grace: Duration,
    ) -> Controller {
        Controller {
            client,
            nodes,
            leases,
            pods,
            recorder,
            grace,
            health: Default::default(),
            queue: Queue::new("node-lifecycle"),
        }
    }

    pub fn register(self: &Arc<Self>) -> Queue {
        let q = self.queue.clone();
        self.nodes
            .on_change(move |c| q.add(Key::new("", c.object().name_any())));
        let q = self.queue.clone();
        self.leases.on_change(move |c| {
            if c.object().namespace().as_deref() == Some(LEASE_NAMESPACE) {
                q.add(Key::new("", c.object().name_any()));
            }
        });
        // A pod landing on a tainted node must be looked at.
        let q = self.queue.clone();
        self.pods.on_change(move |c| {
            if let Change::Applied { new, .. } = c {
                if let Some(n) = new.spec.as_ref().and_then(|s| s.node_name.clone()) {
                    q.add(Key::new("", n));
                }
            }
        });
        self.queue.clone()
    }

    pub async fn reconcile(&self, key: Key) -> Outcome {
        let Some(node) = self.nodes.get(&key) else {
            self.health.lock().unwrap().remove(&key.name);
            return Ok(None);
        };
        let lease = self
            .leases
            .get(&Key::new(LEASE_NAMESPACE, key.name.clone()))
            .and_then(|l| {
                l.spec
                    .as_ref()
                    .and_then(|s| s.renew_time.as_ref())
                    .map(|t| t.0)
            });
        let heartbeat = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0);
        let silent_for = {
            let mut h = self.health.lock().unwrap();
            let e = h.entry(key.name.clone()).or_insert(Health {
                lease_renew: lease,
                ready_heartbeat: heartbeat,
                probed: Instant::now(),
            });
            if e.lease_renew != lease || e.ready_heartbeat != heartbeat {
                e.lease_renew = lease;
                e.ready_heartbeat = heartbeat;
                e.probed = Instant::now();
            }
            e.probed.elapsed()
        };
        let mut node = (*node).clone();
        let mut requeue = MONITOR_PERIOD;
        if silent_for >= self.grace {
            if self.mark_unknown(&mut node).await? {
                self.mark_pods_not_ready(&key.name).await?;
            }
        } else {
            requeue = requeue.min(self.grace - silent_for + Duration::from_millis(50));
        }
        self.sync_taints(&mut node).await?;
        if let Some(d) = self.evict(&node).await? {
            requeue = requeue.min(d);
        }
        Ok(Some(requeue))
    }

    /// Sets every condition Unknown, as Kubernetes' tryUpdateNodeHealth. Returns
    /// whether Ready just became Unknown.
    async fn mark_unknown(&self, node: &mut Node) -> Result<bool, Error> {
        let now = Time(Timestamp::now());
        let mut conds: Vec<NodeCondition> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let was_ready_unknown = conds
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "Unknown");
        let mut changed = false;
        for t in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
            match conds.iter_mut().find(|c| c.type_ == t) {
                Some(c) if c.status != "Unknown" => {
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some("Kubelet stopped posting node status.".into());
                    c.last_transition_time = Some(now.clone());
                    changed = true;
                }
                Some(_) => {}
                None => {
                    conds.push(NodeCondition {
                        type_: t.into(),
                        status: "Unknown".into(),
                        reason: Some("NodeStatusNeverUpdated".into()),
                        message: Some("Kubelet never posted node status.".into()),
                        last_heartbeat_time: node.metadata.creation_timestamp.clone(),
                        last_transition_time: Some(now.clone()),
                    });
                    changed = true;
                }
            }
        }
        if !changed {
            return Ok(false);
        }
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "status": {"conditions": conds},
        });
        let updated = api
            .patch_status(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        self.recorder.normal(
            &updated,
            "NodeNotReady",
            format!("Node {} status is now: NodeNotReady", node.name_any()),
        );
        *node = updated;
        Ok(!was_ready_unknown)
    }

    /// Kubernetes' MarkPodsNotReady: the pods of a node gone silent are not Ready.
    async fn mark_pods_not_ready(&self, node: &str) -> Result<(), Error> {
        let now = Time(Timestamp::now());
        for p in self
            .pods
            .list(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        {
            let conds = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            if !conds
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
            {
                continue;
            }
            let conds: Vec<_> = conds
                .into_iter()
                .map(|mut c| {
                    if c.type_ == "Ready" {
                        c.status = "False".into();
                        c.last_transition_time = Some(now.clone());
                    }
                    c
                })
                .collect();
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &p.namespace().unwrap_or_default());
            let patch = json!({
                "metadata": {"resourceVersion": p.metadata.resource_version},
                "status": {"conditions": conds},
            });
            match api
                .patch_status(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            self.recorder
                .warning(&*p, "NodeNotReady", "Node is not ready".into());
        }
        Ok(())
    }

    /// Adds the managed taints the node's state calls for and removes the others.
    async fn sync_taints(&self, node: &mut Node) -> Result<(), Error> {
        let want = wanted_taints(node);
        let have = nodeutil::taints(node).to_vec();
        let mut next: Vec<Taint> = have
            .iter()
            .filter(|t| !managed(&t.key) || want.iter().any(|(k, e)| *k == t.key && *e == t.effect))
            .cloned()
            .collect();
        let now = Time(Timestamp::now());
        for (k, e) in &want {
            if !next.iter().any(|t| t.key == *k && t.effect == *e) {
                next.push(Taint {
                    key: (*k).into(),
                    value: None,
                    effect: (*e).into(),
                    time_added: (*e == "NoExecute").then(|| now.clone()),
                });
            }
        }
        if next == have {
            return Ok(());
        }
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"taints": next},
        });
        *node = api
            .patch(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(())
    }

    /// Deletes the pods whose NoExecute taints have run out of toleration; returns when
    /// the next one is due.
    async fn evict(&self, node: &Node) -> Result<Option<Duration>, Error> {
        let taints: Vec<Taint> = nodeutil::taints(node)
            .iter()
            .filter(|t| t.effect == "NoExecute")
            .cloned()
            .collect();
        if taints.is_empty() {
            return Ok(None);
        }
        let now = Timestamp::now();
        let name = node.name_any();
        let mut next: Option<Duration> = None;
        for p in self
            .pods
            .list(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()))
        {
            if p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(at) = eviction_time(&p, &taints, now) else {
                continue;
            };
            if at > now {
                let d = Duration::try_from(at.duration_since(now)).unwrap_or_default()
                    + Duration::from_millis(50);
                next = Some(next.map_or(d, |n| n.min(d)));
                continue;
            }
            self.recorder.normal(
                &*p,
                "TaintManagerEviction",
                format!(
                    "Marking for deletion Pod {}/{}",
                    p.namespace().unwrap_or_default(),
                    p.name_any()
                ),
            );
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &p.namespace().unwrap_or_default());
            // Kubernetes records why first (DisruptionTarget), then deletes.
            let cond = json!({"status": {"conditions": [{
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "DeletionByTaintManager",
                "message": "Taint manager: deleting due to NoExecute taint",
                "lastTransitionTime": Time(now),
            }]}});
            let _ = api
                .patch_status(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Strategic(&cond),
                )
                .await;
            match api.delete(&p.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus, PodSpec, Toleration};

    fn node(ready: &str, unschedulable: bool) -> Node {
        Node {
            spec: Some(NodeSpec {
                unschedulable: Some(unschedulable),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn taints_follow_conditions() {
        assert!(wanted_taints(&node("True", false)).is_empty());
        assert_eq!(
            wanted_taints(&node("Unknown", false)),
            vec![(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")]
        );
        assert_eq!(
            wanted_taints(&node("False", true)),
            vec![
                (NOT_READY, "NoSchedule"),
                (NOT_READY, "NoExecute"),
                (UNSCHEDULABLE, "NoSchedule")
            ]
        );
    }

    #[test]
    fn eviction_waits_for_toleration_seconds() {
        let now: Timestamp = "2024-03-01T10:00:00Z".parse().unwrap();
        let taint = Taint {
            key: UNREACHABLE.into(),
            value: None,
            effect: "NoExecute".into(),
            time_added: Some(Time(now - SignedDuration::from_secs(10))),
        };
        let pod = |tols: Vec<Toleration>| Pod {
            spec: Some(PodSpec {
                tolerations: Some(tols),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Untolerated: now.
        assert_eq!(
            eviction_time(&pod(vec![]), std::slice::from_ref(&taint), now),
            Some(now)
        );
        let tol = |secs: Option<i64>| Toleration {
            key: Some(UNREACHABLE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: secs,
            ..Default::default()
        };
        // Tolerated for 300 s from when the taint was added.
        assert_eq!(
            eviction_time(
                &pod(vec![tol(Some(300))]),
                std::slice::from_ref(&taint),
                now
            ),
            Some(now + SignedDuration::from_secs(290))
        );
        // Tolerated forever.
        assert_eq!(
            eviction_time(&pod(vec![tol(None)]), std::slice::from_ref(&taint), now),
            None
        );
        // NoSchedule taints never evict.
        let ns = Taint {
            effect: "NoSchedule".into(),
            ..taint.clone()
        };
        assert_eq!(eviction_time(&pod(vec![]), &[ns], now), None);
    }
}
