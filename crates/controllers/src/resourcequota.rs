//! The ResourceQuota controller: keeps each quota's `status.hard` equal to `spec.hard` and
//! `status.used` equal to what the live objects in its namespace use, counted exactly as
//! the API server's quota admission counts them (corral_apimachinery::quota).
//!
//! Admission raises `status.used` as objects are created; this controller is what lowers
//! it again. Like Kubernetes' it recounts a quota when the quota is created or its spec
//! changes, when an object in the namespace is deleted, when a pod finishes (terminal
//! pods stop using compute), and every five minutes. It does not recount on object
//! creation, when admission has already charged the object: a recount then could only
//! race with charges still in flight.

use crate::informer::{Change, Informer, Key};
use crate::queue::{Outcome, Queue};
use corral_apimachinery::quantity::Quantity;
use corral_apimachinery::quota::{self, ResourceList};
use k8s_openapi::api::core::v1::{Pod, ResourceQuota, ResourceQuotaStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KQuantity;
use kube::api::{ApiResource, DynamicObject, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How often every quota is recounted even if nothing seemed to change.
pub const RESYNC: Duration = Duration::from_secs(300);

pub struct Controller {
    client: Client,
    quotas: Informer<ResourceQuota>,
    queue: Queue,
}

impl Controller {
    pub fn new(client: Client, quotas: Informer<ResourceQuota>) -> Controller {
        Controller {
            client,
            quotas,
            queue: Queue::new("resourcequota"),
        }
    }

    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    /// Queues every quota of a namespace for a recount.
    pub fn recount_namespace(&self, ns: &str) {
        for q in self.quotas.list_namespace(ns) {
            self.queue.add(Key::of(&*q));
        }
    }

    /// Hooks the informers: quota spec changes, deleted and finished pods.
    pub fn register(self: &std::sync::Arc<Self>, pods: &Informer<Pod>) -> Queue {
        let q = self.queue.clone();
        self.quotas.on_change(move |c| {
            if let Change::Applied { old, new } = c {
                let spec_changed = old.is_none_or(|o| o.spec != new.spec);
                if spec_changed || needs_status(new) {
                    q.add(Key::of(*new));
                }
            }
        });
        let me = self.clone();
        pods.on_change(move |c| match c {
            Change::Deleted(p) => me.recount_namespace(&p.namespace().unwrap_or_default()),
            Change::Applied {
                old: Some(old),
                new,
            } => {
                // Only a pod that finished or is being deleted can stop counting; most
                // pod updates are neither, and skip the conversions below.
                let phase = new.status.as_ref().and_then(|s| s.phase.as_deref());
                let ending = matches!(phase, Some("Succeeded" | "Failed"))
                    || new.metadata.deletion_timestamp.is_some();
                if !ending {
                    return;
                }
                let now = chrono::Utc::now();
                let was = quota::counts_compute(&to_value(*old), now);
                let is = quota::counts_compute(&to_value(*new), now);
                if was && !is {
                    me.recount_namespace(&new.namespace().unwrap_or_default());
                }
            }
            Change::Applied { .. } => {}
        });
        self.queue.clone()
    }

    pub async fn reconcile(&self, key: Key) -> Outcome {
        let api: Api<ResourceQuota> = Api::namespaced(self.client.clone(), &key.namespace);
        let Some(mut rq) = api.get_opt(&key.name).await? else {
            return Ok(None);
        };
        let rq_json = to_value(&rq);
        let hard = quota::parse_list(&rq_json["spec"]["hard"]);
        let used = self.usage(&key.namespace, &rq_json, &hard).await?;
        let status = ResourceQuotaStatus {
            hard: Some(to_k8s(&hard)),
            used: Some(to_k8s(&used)),
        };
        let current = rq.status.clone().unwrap_or_default();
        let same = |a: &Option<BTreeMap<String, KQuantity>>, b: &ResourceList| {
            quota::parse_list(&serde_json::to_value(a).unwrap_or_default()) == *b
                && a.as_ref().map_or(0, |m| m.len()) == b.len()
        };
        if !(same(&current.hard, &hard) && same(&current.used, &used)) {
            rq.status = Some(status);
            // The resourceVersion read above is a precondition: a charge made by admission
            // since then makes this a conflict, and the recount runs again.
            api.replace_status(&key.name, &PostParams::default(), &rq)
                .await?;
            tracing::debug!(quota = %key, used = %quota::pretty_print(&used), "quota recounted");
        }
        Ok(Some(RESYNC))
    }

    /// What the namespace's objects use of the quota's hard resources (0 for each
    /// resource nothing uses).
    async fn usage(
        &self,
        ns: &str,
        rq: &Value,
        hard: &ResourceList,
    ) -> Result<ResourceList, crate::Error> {
        let names: BTreeSet<String> = hard.keys().cloned().collect();
        let mut used: ResourceList = names
            .iter()
            .map(|n| (n.clone(), Quantity::zero()))
            .collect();
        let now = chrono::Utc::now();
        for (group, plural) in kinds_counted(&names) {
            let matched = quota::matching_resources(&group, &plural, &names);
            if matched.is_empty() {
                continue;
            }
            let Some(ar) = self.resource(&group, &plural).await else {
                continue;
            };
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &ar);
            let list = match api.list(&ListParams::default()).await {
                Ok(l) => l,
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 405 => continue,
                Err(e) => return Err(e.into()),
            };
            for obj in list.items {
                let obj = to_value(&obj);
                if !quota::matches_scopes(rq, &group, &plural, &obj) {
                    continue;
                }
                let u = quota::usage(&group, &plural, &obj, now);
                used = quota::add(&used, &quota::mask(&u, &matched));
            }
        }
        Ok(used)
    }

    /// The API resource for a group and plural (core kinds are v1; others are found by
    /// discovery, so `count/widgets.example.com` works for custom resources too).
    async fn resource(&self, group: &str, plural: &str) -> Option<ApiResource> {
        if group.is_empty() {
            return Some(ApiResource {
                group: String::new(),
                version: "v1".into(),
                api_version: "v1".into(),
                kind: String::new(),
                plural: plural.to_string(),
            });
        }
        let g = kube::discovery::group(&self.client, group).await.ok()?;
        g.recommended_resources()
            .into_iter()
            .find(|(ar, _)| ar.plural == plural)
            .map(|(ar, _)| ar)
    }
}

/// A quota whose status does not yet cover its spec.
fn needs_status(rq: &ResourceQuota) -> bool {
    let hard = rq
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    let status = rq.status.clone().unwrap_or_default();
    let shard = status.hard.unwrap_or_default();
    let used = status.used.unwrap_or_default();
    hard.len() != shard.len()
        || hard
            .iter()
            .any(|(k, v)| shard.get(k).map(parse) != Some(parse(v)) || !used.contains_key(k))
}

fn parse(q: &KQuantity) -> Option<Quantity> {
    Quantity::parse(&q.0).ok()
}

/// The kinds (group, plural) whose objects a quota with these resources counts.
fn kinds_counted(names: &BTreeSet<String>) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for n in names {
        let kind = if let Some(rest) = n.strip_prefix("count/") {
            match rest.split_once('.') {
                Some((plural, group)) => (group.to_string(), plural.to_string()),
                None => (String::new(), rest.to_string()),
            }
        } else {
            let core = match n.as_str() {
                "services" | "services.nodeports" | "services.loadbalancers" => "services",
                "configmaps" => "configmaps",
                "secrets" => "secrets",
                "replicationcontrollers" => "replicationcontrollers",
                "resourcequotas" => "resourcequotas",
                "persistentvolumeclaims" | "requests.storage" => "persistentvolumeclaims",
                s if s.contains(".storageclass.storage.k8s.io/") => "persistentvolumeclaims",
                _ => "pods",
            };
            (String::new(), core.to_string())
        };
        out.insert(kind);
    }
    out
}

fn to_value<T: serde::Serialize>(o: &T) -> Value {
    serde_json::to_value(o).unwrap_or_default()
}

fn to_k8s(list: &ResourceList) -> BTreeMap<String, KQuantity> {
    list.iter()
        .map(|(k, v)| (k.clone(), KQuantity(v.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_for_resource_names() {
        let names: BTreeSet<String> = [
            "pods",
            "requests.cpu",
            "count/deployments.apps",
            "count/secrets",
            "services.nodeports",
            "requests.storage",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let kinds: Vec<(String, String)> = kinds_counted(&names).into_iter().collect();
        let want: Vec<(String, String)> = [
            ("", "persistentvolumeclaims"),
            ("", "pods"),
            ("", "secrets"),
            ("", "services"),
            ("apps", "deployments"),
        ]
        .iter()
        .map(|(g, p)| (g.to_string(), p.to_string()))
        .collect();
        assert_eq!(kinds, want);
    }

    #[test]
    fn status_needed_until_it_covers_spec() {
        let mut rq: ResourceQuota = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "q", "namespace": "n"},
            "spec": {"hard": {"pods": "2", "requests.cpu": "1"}}
        }))
        .unwrap();
        assert!(needs_status(&rq));
        rq.status = serde_json::from_value(serde_json::json!({
            "hard": {"pods": "2", "requests.cpu": "1000m"},
            "used": {"pods": "0", "requests.cpu": "0"}
        }))
        .unwrap();
        assert!(!needs_status(&rq));
    }
}
