//! Watches the pods bound to this node (fieldSelector `spec.nodeName=<node>`) and keeps one
//! worker per pod uid. After the first full list it removes what the runtime holds for
//! pods that no longer exist (deleted while the agent was down).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use crate::{worker, Ctx};

struct Handle {
    tx: watch::Sender<Option<Pod>>,
    task: tokio::task::JoinHandle<()>,
}

pub(crate) async fn run(ctx: Arc<Ctx>, stop: watch::Receiver<bool>) {
    let mut stopped = stop.clone();
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let selector = format!("spec.nodeName={}", ctx.cfg.node_name);
    let cfg = watcher::Config::default().fields(&selector);
    let mut stream = watcher::watcher(api.clone(), cfg).default_backoff().boxed();
    // A full list now and then, so a missed watch event (a deletion above all) cannot leave
    // a pod running forever.
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let mut listing: HashSet<String> = HashSet::new();
    let mut cleaned = false;
    loop {
        enum Next<E> {
            Stop,
            Event(Option<E>),
            Resync,
        }
        let next = tokio::select! {
            _ = stopped.wait_for(|s| *s) => Next::Stop,
            ev = stream.next() => Next::Event(ev),
            _ = resync.tick() => Next::Resync,
        };
        let ev = match next {
            Next::Stop | Next::Event(None) => break,
            Next::Resync => {
                if cleaned {
                    relist(&ctx, &api, &selector, &mut workers, &stop).await;
                }
                continue;
            }
            Next::Event(Some(ev)) => ev,
        };
        workers.retain(|_, h| !h.task.is_finished());
        match ev {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(p)) => {
                listing.insert(p.uid().unwrap_or_default());
                upsert(&ctx, &mut workers, p, &stop);
            }
            Ok(Event::InitDone) => {
                for (uid, h) in &workers {
                    if !listing.contains(uid) {
                        h.tx.send_replace(None);
                    }
                }
                if !cleaned {
                    cleaned = true;
                    remove_orphans(&ctx, &listing).await;
                }
            }
            Ok(Event::Apply(p)) => upsert(&ctx, &mut workers, p, &stop),
            Ok(Event::Delete(p)) => {
                if let Some(h) = workers.get(&p.uid().unwrap_or_default()) {
                    h.tx.send_replace(None);
                }
            }
            Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying"),
        }
    }
    // Workers see the stop signal and return, leaving containers running for the next agent.
    for (_, h) in workers {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), h.task).await;
    }
}

const RESYNC: std::time::Duration = std::time::Duration::from_secs(60);

async fn relist(
    ctx: &Arc<Ctx>,
    api: &Api<Pod>,
    selector: &str,
    workers: &mut HashMap<String, Handle>,
    stop: &watch::Receiver<bool>,
) {
    let list = match api
        .list(&kube::api::ListParams::default().fields(selector))
        .await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "listing this node's pods failed");
            return;
        }
    };
    let present: HashSet<String> = list.items.iter().filter_map(|p| p.uid()).collect();
    for (uid, h) in workers.iter() {
        if !present.contains(uid) && h.tx.borrow().is_some() {
            tracing::info!(uid, "pod gone without a watch event");
            h.tx.send_replace(None);
        }
    }
    for p in list.items {
        let uid = p.uid().unwrap_or_default();
        if !workers.contains_key(&uid) {
            upsert(ctx, workers, p, stop);
        }
    }
}

fn upsert(
    ctx: &Arc<Ctx>,
    workers: &mut HashMap<String, Handle>,
    pod: Pod,
    stop: &watch::Receiver<bool>,
) {
    let Some(uid) = pod.uid() else { return };
    if let Some(h) = workers.get(&uid) {
        h.tx.send_replace(Some(pod));
        return;
    }
    let (tx, rx) = watch::channel(Some(pod));
    let task = tokio::spawn(worker::run(ctx.clone(), rx, stop.clone()));
    workers.insert(uid, Handle { tx, task });
}

/// Removes containers and sandboxes of pods that are not bound here any more.
async fn remove_orphans(ctx: &Ctx, known: &HashSet<String>) {
    let mut uids: HashSet<String> = HashSet::new();
    for c in ctx.runtime.list_containers().unwrap_or_default() {
        if !known.contains(&c.pod_uid) {
            if let Err(e) = ctx.runtime.remove_container(&c.id).await {
                tracing::warn!(id = %c.id, error = %e, "removing orphaned container failed");
            }
            uids.insert(c.pod_uid);
        }
    }
    for s in ctx.runtime.list_sandboxes().unwrap_or_default() {
        if !known.contains(&s.pod_uid) {
            uids.insert(s.pod_uid);
        }
    }
    for uid in uids {
        tracing::info!(uid, "removing what is left of a pod that no longer exists");
        worker::remove_pod_files(ctx, &uid).await;
    }
}
