//! corral's controllers: level-triggered reconcilers that are clients of the Kubernetes
//! API and nothing else, so each could run against any API server. Each reads desired
//! state and actual state from shared informers, takes one step toward the former and
//! writes status; none trusts that it saw every event.

pub mod deployment;
pub mod events;
pub mod expectations;
pub mod gc;
pub mod informer;
pub mod podutil;
pub mod queue;
pub mod replicaset;
pub mod selector;
pub mod serviceaccount;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use kube::{Api, Client};
use std::future::Future;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API request failed: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

/// The informers every controller shares: one watch per kind for the whole server.
#[derive(Clone)]
pub struct Informers {
    pub pods: informer::Informer<Pod>,
    pub replicasets: informer::Informer<ReplicaSet>,
    pub deployments: informer::Informer<Deployment>,
}

impl Informers {
    fn new() -> Informers {
        Informers {
            pods: informer::Informer::new("Pod"),
            replicasets: informer::Informer::new("ReplicaSet"),
            deployments: informer::Informer::new("Deployment"),
        }
    }
}

/// What the controllers need to know that the API does not tell them.
#[derive(Clone, Default)]
pub struct Config {
    /// The cluster CA (PEM) published in every namespace as kube-root-ca.crt.
    pub root_ca_pem: Option<String>,
}

/// Runs every controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let informers = Informers::new();
    let recorder = events::Recorder::new(client.clone(), "deployment-controller");
    let rs = Arc::new(replicaset::Controller::new(
        client.clone(),
        informers.clone(),
        recorder.with_component("replicaset-controller"),
    ));
    let deploy = Arc::new(deployment::Controller::new(
        client.clone(),
        informers.clone(),
        recorder,
    ));
    let namespaces: informer::Informer<Namespace> = informer::Informer::new("Namespace");
    let accounts: informer::Informer<ServiceAccount> = informer::Informer::new("ServiceAccount");
    let root_ca: informer::Informer<ConfigMap> = informer::Informer::new("ConfigMap");
    let sa = Arc::new(serviceaccount::Controller::new(
        client.clone(),
        namespaces.clone(),
        config.root_ca_pem.clone(),
    ));
    let sa_queue = queue::Queue::new("serviceaccount");
    {
        let q = sa_queue.clone();
        namespaces.on_change(move |c| {
            q.add(informer::Key::new(
                "",
                kube::ResourceExt::name_any(c.object()),
            ))
        });
        let q = sa_queue.clone();
        accounts.on_change(move |c| {
            if let informer::Change::Deleted(a) = c {
                q.add(informer::Key::new(
                    "",
                    a.metadata.namespace.clone().unwrap_or_default(),
                ));
            }
        });
        let q = sa_queue.clone();
        root_ca.on_change(move |c| {
            let cm = c.object();
            q.add(informer::Key::new(
                "",
                cm.metadata.namespace.clone().unwrap_or_default(),
            ));
        });
    }
    let gc = gc::GarbageCollector::new(client.clone());
    let gc_queue = gc.queue();
    let rs_queue = rs.register();
    let deploy_queue = deploy.register();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = vec![
        informers.pods.start(Api::all(client.clone()), stopped()),
        informers
            .replicasets
            .start(Api::all(client.clone()), stopped()),
        informers
            .deployments
            .start(Api::all(client.clone()), stopped()),
    ];
    tasks.push(namespaces.start(Api::all(client.clone()), stopped()));
    tasks.push(accounts.start(Api::all(client.clone()), stopped()));
    tasks.push(root_ca.start_with(
        Api::all(client.clone()),
        kube::runtime::watcher::Config::default().fields(&format!(
            "metadata.name={}",
            serviceaccount::ROOT_CA_CONFIGMAP
        )),
        stopped(),
    ));
    // Reconcile only from a full cache, or a controller would act on a partial view.
    informers.pods.synced().await;
    informers.replicasets.synced().await;
    informers.deployments.synced().await;
    tracing::info!("controllers started");
    {
        let rs = rs.clone();
        tasks.push(tokio::spawn(rs_queue.clone().run(4, move |k| {
            let rs = rs.clone();
            async move { rs.reconcile(k).await }
        })));
    }
    {
        let d = deploy.clone();
        tasks.push(tokio::spawn(deploy_queue.clone().run(4, move |k| {
            let d = d.clone();
            async move { d.reconcile(k).await }
        })));
    }
    namespaces.synced().await;
    {
        let sa = sa.clone();
        tasks.push(tokio::spawn(sa_queue.clone().run(2, move |k| {
            let sa = sa.clone();
            async move { sa.reconcile(k).await }
        })));
    }
    tasks.push(tokio::spawn(
        gc.clone().watch_resources(stop_tx.subscribe()),
    ));
    {
        let gc = gc.clone();
        tasks.push(tokio::spawn(gc_queue.clone().run(2, move |k| {
            let gc = gc.clone();
            async move { gc.reconcile(k).await }
        })));
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    gc_queue.shutdown();
    sa_queue.shutdown();
    rs_queue.shutdown();
    deploy_queue.shutdown();
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!("controllers stopped");
}
