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

pub(crate) async fn run(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.cfg.node_name));
    let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let mut listing: HashSet<String> = HashSet::new();
    let mut cleaned = false;
    loop {
        let ev = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            ev = stream.next() => ev,
        };
        let Some(ev) = ev else { break };
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
