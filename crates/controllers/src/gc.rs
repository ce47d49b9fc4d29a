//! The garbage collector: deletes objects whose owners are all gone (ownerReferences),
//! and carries out the Orphan and Foreground propagation policies that the API server
//! records as the `orphan` and `foregroundDeletion` finalizers.
//!
//! Like Kubernetes' GC it keeps a graph of every object's owners, built from metadata-only
//! watches of every kind that can be listed, watched and deleted (found by discovery, and
//! found again periodically so CRDs join), and it never trusts the graph alone before
//! deleting: an owner missing from the graph is looked up live first.

use crate::informer::Key;
use crate::queue::{Outcome, Queue};
use crate::Error;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy};
use kube::core::PartialObjectMeta;
use kube::discovery::{verbs, Discovery, Scope};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

#[derive(Clone)]
struct Node {
    resource: Arc<Resource>,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    finalizers: Vec<String>,
    deleting: bool,
}

struct Resource {
    ar: ApiResource,
    namespaced: bool,
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    /// owner uid -> dependent uids
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn upsert(&mut self, uid: &str, node: Node) -> Option<Node> {
        let old = self.nodes.insert(uid.to_string(), node.clone());
        if let Some(o) = &old {
            for r in &o.owners {
                if let Some(set) = self.dependents.get_mut(&r.uid) {
                    set.remove(uid);
                }
            }
        }
        for r in &node.owners {
            self.dependents
                .entry(r.uid.clone())
                .or_default()
                .insert(uid.to_string());
        }
        old
    }

    fn remove(&mut self, uid: &str) -> Option<Node> {
        let old = self.nodes.remove(uid)?;
        for r in &old.owners {
            if let Some(set) = self.dependents.get_mut(&r.uid) {
                set.remove(uid);
                if set.is_empty() {
                    self.dependents.remove(&r.uid);
                }
            }
        }
        Some(old)
    }

    fn dependents_of(&self, uid: &str) -> Vec<(String, Node)> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.nodes.get(d).map(|n| (d.clone(), n.clone())))
            .collect()
    }
}

/// Told of every object deletion the collector sees: (group, plural, namespace).
type DeleteHook = Box<dyn Fn(&str, &str, Option<&str>) + Send + Sync>;

pub struct GarbageCollector {
    client: Client,
    on_delete: Mutex<Vec<DeleteHook>>,
    graph: Mutex<Graph>,
    /// Keys are object uids (in `name`).
    queue: Queue,
    /// "group/version" + kind -> resource, for owners looked up live.
    kinds: Mutex<HashMap<(String, String), Arc<Resource>>>,
}

fn uid_key(uid: &str) -> Key {
    Key::new("", uid)
}

impl GarbageCollector {
    pub fn new(client: Client) -> Arc<GarbageCollector> {
        Arc::new(GarbageCollector {
            client,
            on_delete: Default::default(),
            graph: Default::default(),
            queue: Queue::new("garbage-collector"),
            kinds: Default::default(),
        })
    }

    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    /// Calls `f` whenever an object of any watched kind goes away (the quota controller
    /// recounts its namespace), so no other controller needs a watch of every kind.
    pub fn on_delete(&self, f: impl Fn(&str, &str, Option<&str>) + Send + Sync + 'static) {
        self.on_delete.lock().unwrap().push(Box::new(f));
    }

    /// Discovers resources now and every 30 s, starting a metadata watch for each new one.
    pub async fn watch_resources(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut watching: HashSet<String> = HashSet::new();
        loop {
            match Discovery::new(self.client.clone()).run().await {
                Ok(d) => {
                    for group in d.groups() {
                        for (ar, caps) in group.recommended_resources() {
                            let id = format!("{}/{}", ar.api_version, ar.plural);
                            let watchable = caps.supports_operation(verbs::WATCH)
                                && caps.supports_operation(verbs::LIST)
                                && caps.supports_operation(verbs::DELETE);
                            // Events are never owners or dependents; Kubernetes ignores them too.
                            if !watchable || ar.plural == "events" || !watching.insert(id) {
                                continue;
                            }
                            let res = Arc::new(Resource {
                                namespaced: caps.scope == Scope::Namespaced,
                                ar: ar.clone(),
                            });
                            self.kinds
                                .lock()
                                .unwrap()
                                .insert((ar.api_version.clone(), ar.kind.clone()), res.clone());
                            tokio::spawn(self.clone().watch(res, stop.clone()));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "garbage collector: discovery failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn watch(
        self: Arc<Self>,
        res: Arc<Resource>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let api: Api<PartialObjectMeta<DynamicObject>> =
            Api::all_with(self.client.clone(), &res.ar);
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut relist: Option<HashSet<String>> = None;
        loop {
            let ev = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                ev = stream.next() => ev,
            };
            match ev {
                None => return,
                Some(Err(e)) => {
                    tracing::debug!(resource = %res.ar.plural, error = %e, "gc watch failed; retrying")
                }
                Some(Ok(Event::Init)) => relist = Some(HashSet::new()),
                Some(Ok(Event::InitApply(o))) => {
                    if let (Some(seen), Some(uid)) = (relist.as_mut(), o.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    self.observe(&res, o);
                }
                Some(Ok(Event::InitDone)) => {
                    // Whatever of this kind the fresh list no longer has was deleted while
                    // the watch was down.
                    if let Some(seen) = relist.take() {
                        let gone: Vec<String> = {
                            let g = self.graph.lock().unwrap();
                            g.nodes
                                .iter()
                                .filter(|(uid, n)| {
                                    Arc::ptr_eq(&n.resource, &res) && !seen.contains(*uid)
                                })
                                .map(|(uid, _)| uid.clone())
                                .collect()
                        };
                        for uid in gone {
                            self.forget(&uid);
                        }
                    }
                }
                Some(Ok(Event::Apply(o))) => self.observe(&res, o),
                Some(Ok(Event::Delete(o))) => {
                    if let Some(uid) = o.metadata.uid {
                        self.forget(&uid);
                    }
                }
            }
        }
    }

    fn observe(&self, res: &Arc<Resource>, o: PartialObjectMeta<DynamicObject>) {
        let m = o.metadata;
        let Some(uid) = m.uid else { return };
        let node = Node {
            resource: res.clone(),
            namespace: m.namespace,
            name: m.name.unwrap_or_default(),
            owners: m.owner_references.unwrap_or_default(),
            finalizers: m.finalizers.unwrap_or_default(),
            deleting: m.deletion_timestamp.is_some(),
        };
        let interesting = !node.owners.is_empty()
            || (node.deleting
                && node
                    .finalizers
                    .iter()
                    .any(|f| f == ORPHAN || f == FOREGROUND));
        let old = self.graph.lock().unwrap().upsert(&uid, node.clone());
        if interesting {
            self.queue.add(uid_key(&uid));
        }
        // An owner that just started foreground deletion must act on its dependents;
        // one that was waiting for us may now finish.
        if let Some(old) = old {
            if old.owners != node.owners || old.deleting != node.deleting {
                for r in &old.owners {
                    self.queue.add(uid_key(&r.uid));
                }
            }
        }
    }

    fn forget(&self, uid: &str) {
        let (old, dependents) = {
            let mut g = self.graph.lock().unwrap();
            let old = g.remove(uid);
            (old, g.dependents_of(uid))
        };
        // Dependents of a vanished owner may now be garbage; a foreground owner waiting
        // for this object may now be done.
        for (d, _) in dependents {
            self.queue.add(uid_key(&d));
        }
        if let Some(old) = old {
            for r in &old.owners {
                self.queue.add(uid_key(&r.uid));
            }
            for hook in self.on_delete.lock().unwrap().iter() {
                hook(
                    &old.resource.ar.group,
                    &old.resource.ar.plural,
                    old.namespace.as_deref(),
                );
            }
        }
    }

    pub async fn reconcile(&self, key: Key) -> Outcome {
        let uid = key.name;
        let Some(node) = self.graph.lock().unwrap().nodes.get(&uid).cloned() else {
            return Ok(None);
        };
        if node.deleting && node.finalizers.iter().any(|f| f == ORPHAN) {
            return self.orphan_dependents(&uid, &node).await;
        }
        if node.deleting && node.finalizers.iter().any(|f| f == FOREGROUND) {
            return self.delete_dependents_first(&uid, &node).await;
        }
        if node.owners.is_empty() {
            return Ok(None);
        }
        let mut absent = Vec::new();
        let mut waiting_foreground = false;
        for r in &node.owners {
            match self.owner_state(&node, r).await? {
                OwnerState::Absent => absent.push(r.uid.clone()),
                OwnerState::Present { foreground } => {
                    waiting_foreground |= foreground && r.block_owner_deletion == Some(true)
                }
            }
        }
        if absent.len() == node.owners.len() {
            tracing::debug!(object = %node.name, "deleting: every owner is gone");
            return self
                .delete(&uid, &node, PropagationPolicy::Background)
                .await;
        }
        if !absent.is_empty() {
            let keep: Vec<&OwnerReference> = node
                .owners
                .iter()
                .filter(|r| !absent.contains(&r.uid))
                .collect();
            let patch = json!({"metadata": {"ownerReferences": keep, "uid": uid}});
            return self.patch(&node, &patch).await;
        }
        if waiting_foreground && !node.deleting {
            // The owner is being deleted in the foreground: dependents go first.
            return self
                .delete(&uid, &node, PropagationPolicy::Foreground)
                .await;
        }
        Ok(None)
    }

    async fn owner_state(&self, dependent: &Node, r: &OwnerReference) -> Result<OwnerState, Error> {
        if let Some(o) = self.graph.lock().unwrap().nodes.get(&r.uid) {
            return Ok(OwnerState::Present {
                foreground: o.deleting && o.finalizers.iter().any(|f| f == FOREGROUND),
            });
        }
        // Not in the graph (yet): ask the API server before concluding it is gone.
        let res = self
            .kinds
            .lock()
            .unwrap()
            .get(&(r.api_version.clone(), r.kind.clone()))
            .cloned();
        let Some(res) = res else {
            // A kind we cannot look up: never delete on a guess.
            return Ok(OwnerState::Present { foreground: false });
        };
        let api: Api<DynamicObject> = match (&dependent.namespace, res.namespaced) {
            (Some(ns), true) => Api::namespaced_with(self.client.clone(), ns, &res.ar),
            (None, true) => return Ok(OwnerState::Absent),
            _ => Api::all_with(self.client.clone(), &res.ar),
        };
        match api.get_metadata_opt(&r.name).await? {
            Some(o) if o.metadata.uid.as_deref() == Some(&r.uid) => Ok(OwnerState::Present {
                foreground: o.metadata.deletion_timestamp.is_some()
                    && o.metadata
                        .finalizers
                        .iter()
                        .flatten()
                        .any(|f| f == FOREGROUND),
            }),
            _ => Ok(OwnerState::Absent),
        }
    }

    /// Orphan: remove the owner from every dependent, then the finalizer.
    async fn orphan_dependents(&self, uid: &str, node: &Node) -> Outcome {
        let deps = self.graph.lock().unwrap().dependents_of(uid);
        for (duid, d) in deps {
            let keep: Vec<&OwnerReference> = d.owners.iter().filter(|r| r.uid != uid).collect();
            self.patch(
                &d,
                &json!({"metadata": {"ownerReferences": keep, "uid": duid}}),
            )
            .await?;
        }
        self.remove_finalizer(node, ORPHAN).await
    }

    /// Foreground: delete the dependents (themselves in the foreground) and remove the
    /// finalizer once none is left.
    async fn delete_dependents_first(&self, uid: &str, node: &Node) -> Outcome {
        let deps = self.graph.lock().unwrap().dependents_of(uid);
        if deps.is_empty() {
            return self.remove_finalizer(node, FOREGROUND).await;
        }
        for (duid, d) in deps {
            if !d.deleting {
                self.delete(&duid, &d, PropagationPolicy::Foreground)
                    .await?;
            }
        }
        // Woken again when each dependent goes; the timer only guards a lost event.
        Ok(Some(Duration::from_secs(5)))
    }

    fn api(&self, node: &Node) -> Api<DynamicObject> {
        match &node.namespace {
            Some(ns) if node.resource.namespaced => {
                Api::namespaced_with(self.client.clone(), ns, &node.resource.ar)
            }
            _ => Api::all_with(self.client.clone(), &node.resource.ar),
        }
    }

    async fn delete(&self, uid: &str, node: &Node, policy: PropagationPolicy) -> Outcome {
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(kube::api::Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.api(node).delete(&node.name, &dp).await {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn patch(&self, node: &Node, patch: &serde_json::Value) -> Outcome {
        match self
            .api(node)
            .patch(&node.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn remove_finalizer(&self, node: &Node, finalizer: &str) -> Outcome {
        let api = self.api(node);
        let Some(current) = api.get_metadata_opt(&node.name).await? else {
            return Ok(None);
        };
        let list: Vec<String> = current
            .metadata
            .finalizers
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != finalizer)
            .collect();
        // The resourceVersion makes this fail (and retry) if someone else changed the
        // finalizers meanwhile, so no other finalizer is lost.
        let patch = json!({"metadata": {
            "finalizers": list,
            "resourceVersion": current.metadata.resource_version,
        }});
        match api
            .patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

enum OwnerState {
    Absent,
    Present { foreground: bool },
}
