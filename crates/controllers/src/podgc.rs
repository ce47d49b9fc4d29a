//! The pod garbage collector, following Kubernetes' pkg/controller/podgc: every period
//! (20 s upstream) it
//! - deletes pods bound to a node that no longer exists, once the node has been missing
//!   for the quarantine (40 s upstream) and a fresh read of the node still finds nothing;
//!   such a pod is first marked Failed with the DisruptionTarget condition (reason
//!   DeletionByPodGC), then deleted with no grace, since no kubelet is left to finish a
//!   graceful deletion (this also ends pods that were already terminating there);
//! - force-deletes terminating pods that were never scheduled;
//! - when more pods have terminated (Succeeded or Failed) than the threshold
//!   (--terminated-pod-gc-threshold, 12500 upstream; 0 disables), deletes the oldest,
//!   evicted ones first.

use crate::informer::{Change, Informer, Key};
use crate::queue::{Outcome, Queue};
use crate::Error;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The field manager of PodGC's status writes, as upstream.
const FIELD_MANAGER: &str = "PodGC";
/// How many deletions run at once.
const PARALLEL: usize = 16;

/// When and how much the collector collects.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Terminated pods kept before the oldest are deleted (0: never delete them).
    pub terminated_threshold: usize,
    /// How long a node must be missing before its pods are deleted.
    pub quarantine: Duration,
    /// How often the collector looks.
    pub period: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            terminated_threshold: 12500,
            quarantine: Duration::from_secs(40),
            period: Duration::from_secs(20),
        }
    }
}

pub struct Controller {
    client: Client,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    settings: Settings,
    /// Nodes that pods name but that do not exist, with when they were first missed.
    missing: Mutex<HashMap<String, Instant>>,
    queue: Queue,
}

/// The one key the collector's queue carries: each reconcile looks at every pod.
fn key() -> Key {
    Key::new("", "podgc")
}

fn node_of(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Upstream's isPodTerminated: neither Pending, Running nor Unknown (nor without a phase).
pub fn terminated(p: &Pod) -> bool {
    !matches!(phase(p), "" | "Pending" | "Running" | "Unknown")
}

fn evicted(p: &Pod) -> bool {
    phase(p) == "Failed" && p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted")
}

/// Which terminated pods go when there are more than `threshold`: evicted ones first,
/// then the oldest, name breaking ties (upstream's byEvictionAndCreationTimestamp).
pub fn over_threshold(pods: &[Arc<Pod>], threshold: usize) -> Vec<Arc<Pod>> {
    let mut done: Vec<Arc<Pod>> = pods.iter().filter(|p| terminated(p)).cloned().collect();
    if threshold == 0 || done.len() <= threshold {
        return Vec::new();
    }
    let excess = done.len() - threshold;
    done.sort_by(|a, b| {
        evicted(b).cmp(&evicted(a)).then_with(|| {
            let t = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            t(a).cmp(&t(b))
                .then_with(|| a.name_any().cmp(&b.name_any()))
        })
    });
    done.truncate(excess);
    done
}

impl Controller {
    pub fn new(
        client: Client,
        pods: Informer<Pod>,
        nodes: Informer<Node>,
        settings: Settings,
    ) -> Controller {
        Controller {
            client,
            pods,
            nodes,
            settings,
            missing: Default::default(),
            queue: Queue::new("podgc"),
        }
    }

    /// A deleted node starts its pods' quarantine at once, not at the next period.
    pub fn register(self: &Arc<Self>) -> Queue {
        let q = self.queue.clone();
        self.nodes.on_change(move |c| {
            if let Change::Deleted(_) = c {
                q.add(key());
            }
        });
        self.queue.add(key());
        self.queue.clone()
    }

    pub async fn reconcile(&self, _key: Key) -> Outcome {
        let pods = self.pods.list(|_| true);
        let next = self.gc_orphaned(&pods).await?;
        self.gc_unscheduled_terminating(&pods).await?;
        let victims = over_threshold(&pods, self.settings.terminated_threshold);
        if !victims.is_empty() {
            tracing::info!(
                count = victims.len(),
                "podgc: deleting terminated pods over the threshold"
            );
            self.delete_all(victims, None).await?;
        }
        Ok(Some(next.map_or(self.settings.period, |n| {
            n.min(self.settings.period)
        })))
    }

    /// Deletes the pods of nodes missing for the quarantine; returns when to look again
    /// for nodes still in quarantine.
    async fn gc_orphaned(&self, pods: &[Arc<Pod>]) -> Result<Option<Duration>, Error> {
        let named: HashSet<&str> = pods.iter().filter_map(|p| node_of(p)).collect();
        let absent: Vec<String> = named
            .iter()
            .filter(|n| self.nodes.get(&Key::new("", **n)).is_none())
            .map(|n| n.to_string())
            .collect();
        let due: Vec<String> = {
            let mut missing = self.missing.lock().unwrap();
            missing.retain(|n, _| absent.contains(n));
            let now = Instant::now();
            absent
                .iter()
                .filter(|n| {
                    let since = *missing.entry((*n).clone()).or_insert(now);
                    now.duration_since(since) >= self.settings.quarantine
                })
                .cloned()
                .collect()
        };
        let nodes: Api<Node> = Api::all(self.client.clone());
        for name in &due {
            // The cache may lag: only a node the API itself does not have is gone.
            if nodes.get_opt(name).await?.is_some() {
                self.missing.lock().unwrap().remove(name);
                continue;
            }
            let orphans: Vec<Arc<Pod>> = pods
                .iter()
                .filter(|p| node_of(p) == Some(name.as_str()))
                .cloned()
                .collect();
            tracing::info!(node = %name, pods = orphans.len(), "podgc: deleting pods of a node that no longer exists");
            self.delete_all(orphans, Some("PodGC: node no longer exists"))
                .await?;
        }
        let missing = self.missing.lock().unwrap();
        let now = Instant::now();
        Ok(missing
            .values()
            .map(|since| {
                (self.settings.quarantine + Duration::from_millis(50))
                    .saturating_sub(now.duration_since(*since))
            })
            .min())
    }

    /// A pod deleted before it was scheduled has no kubelet to finish its deletion.
    async fn gc_unscheduled_terminating(&self, pods: &[Arc<Pod>]) -> Result<(), Error> {
        let stuck: Vec<Arc<Pod>> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some() && node_of(p).is_none())
            .cloned()
            .collect();
        if !stuck.is_empty() {
            self.delete_all(stuck, None).await?;
        }
        Ok(())
    }

    async fn delete_all(&self, pods: Vec<Arc<Pod>>, condition: Option<&str>) -> Result<(), Error> {
        let results: Vec<Result<(), Error>> = futures::stream::iter(pods)
            .map(|p| async move { self.mark_failed_and_delete(&p, condition).await })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Upstream's markFailedAndDeletePodWithCondition: a pod not yet terminated is marked
    /// Failed (with the DisruptionTarget condition when there is a reason to give) so it
    /// never stays Running with no kubelet to say otherwise, then deleted with no grace.
    async fn mark_failed_and_delete(&self, p: &Pod, condition: Option<&str>) -> Result<(), Error> {
        let ns = p.namespace().unwrap_or_default();
        let name = p.name_any();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        tracing::info!(pod = %format!("{ns}/{name}"), "podgc: force deleting pod");
        let ignore_gone = |r: Result<(), kube::Error>| match r {
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            other => other,
        };
        if !matches!(phase(p), "Succeeded" | "Failed") {
            let mut status = json!({"phase": "Failed"});
            if let Some(message) = condition {
                status["conditions"] = json!([{
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "DeletionByPodGC",
                    "message": message,
                    "lastTransitionTime": Time(Timestamp::now()),
                }]);
            }
            let pp = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            // Strategic merge: conditions merge by type, the pod's others stay.
            let r = api
                .patch_status(&name, &pp, &Patch::Strategic(json!({"status": status})))
                .await
                .map(|_| ());
            ignore_gone(r)?;
        }
        let r = api
            .delete(&name, &DeleteParams::default().grace_period(0))
            .await
            .map(|_| ());
        Ok(ignore_gone(r)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;

    fn pod(name: &str, created: i64, phase: &str, reason: Option<&str>) -> Arc<Pod> {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(1_700_000_000 + created).unwrap(),
        ));
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            reason: reason.map(String::from),
            ..Default::default()
        });
        Arc::new(p)
    }

    fn names(v: &[Arc<Pod>]) -> Vec<String> {
        v.iter().map(|p| p.name_any()).collect()
    }

    #[test]
    fn terminated_pods_over_the_threshold_go_evicted_then_oldest_first() {
        let pods = vec![
            pod("running-old", 0, "Running", None),
            pod("done-3", 30, "Succeeded", None),
            pod("done-1", 10, "Succeeded", None),
            pod("failed-2", 20, "Failed", None),
            pod("evicted-late", 90, "Failed", Some("Evicted")),
            pod("b-tie", 40, "Failed", None),
            pod("a-tie", 40, "Succeeded", None),
            pod("pending", 1, "Pending", None),
        ];
        assert_eq!(names(&over_threshold(&pods, 6)), Vec::<String>::new());
        assert_eq!(names(&over_threshold(&pods, 0)), Vec::<String>::new());
        assert_eq!(
            names(&over_threshold(&pods, 2)),
            ["evicted-late", "done-1", "failed-2", "done-3"]
        );
        assert_eq!(
            names(&over_threshold(&pods, 1)),
            ["evicted-late", "done-1", "failed-2", "done-3", "a-tie"]
        );
    }

    #[test]
    fn only_finished_phases_count_as_terminated() {
        for (ph, t) in [
            ("Succeeded", true),
            ("Failed", true),
            ("Running", false),
            ("Pending", false),
            ("Unknown", false),
            ("", false),
        ] {
            assert_eq!(terminated(&pod("p", 0, ph, None)), t, "{ph}");
        }
    }
}
