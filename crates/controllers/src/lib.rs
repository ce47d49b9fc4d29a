//! corral's controllers: level-triggered reconcilers that are clients of the Kubernetes
//! API and nothing else, so each could run against any API server. Each reads desired
//! state and actual state from shared informers, takes one step toward the former and
//! writes status; none trusts that it saw every event.

pub mod claim;
pub mod cron;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod endpointutil;
pub mod events;
pub mod expectations;
pub mod gateway;
pub mod gc;
pub mod history;
pub mod informer;
pub mod job;
pub mod localpath;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod nodeutil;
pub mod podgc;
pub mod podutil;
pub mod queue;
pub mod replicaset;
pub mod resourcequota;
pub mod selector;
pub mod serviceaccount;
pub mod servicelb;
pub mod statefulset;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
    ResourceQuota, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::storage::v1::StorageClass;
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
    pub jobs: informer::Informer<Job>,
    pub cronjobs: informer::Informer<CronJob>,
    pub daemonsets: informer::Informer<DaemonSet>,
    pub nodes: informer::Informer<Node>,
    pub revisions: informer::Informer<ControllerRevision>,
    pub statefulsets: informer::Informer<StatefulSet>,
    pub pvcs: informer::Informer<PersistentVolumeClaim>,
    pub pvs: informer::Informer<PersistentVolume>,
    pub classes: informer::Informer<StorageClass>,
    pub leases: informer::Informer<Lease>,
    pub services: informer::Informer<Service>,
}

impl Informers {
    fn new() -> Informers {
        Informers {
            pods: informer::Informer::new("Pod"),
            replicasets: informer::Informer::new("ReplicaSet"),
            deployments: informer::Informer::new("Deployment"),
            jobs: informer::Informer::new("Job"),
            cronjobs: informer::Informer::new("CronJob"),
            daemonsets: informer::Informer::new("DaemonSet"),
            nodes: informer::Informer::new("Node"),
            revisions: informer::Informer::new("ControllerRevision"),
            statefulsets: informer::Informer::new("StatefulSet"),
            pvcs: informer::Informer::new("PersistentVolumeClaim"),
            pvs: informer::Informer::new("PersistentVolume"),
            classes: informer::Informer::new("StorageClass"),
            leases: informer::Informer::new("Lease"),
            services: informer::Informer::new("Service"),
        }
    }
}

/// What the controllers need to know that the API does not tell them.
#[derive(Clone)]
pub struct Config {
    /// The cluster CA (PEM) published in every namespace as kube-root-ca.crt.
    pub root_ca_pem: Option<String>,
    /// Where the local-path provisioner makes volumes (None: no provisioner).
    pub volumes_dir: Option<std::path::PathBuf>,
    /// How long a node's Lease may go unrenewed before the node is marked Unknown.
    pub node_monitor_grace: std::time::Duration,
    /// The cluster's pod range, from which nodes without a podCIDR get a block of
    /// `node_cidr_mask_size` (None: nodes must bring their own).
    pub cluster_cidr: Option<nodeipam::Cidr>,
    pub node_cidr_mask_size: u8,
    /// The pod garbage collector's threshold, quarantine and period.
    pub pod_gc: podgc::Settings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root_ca_pem: None,
            volumes_dir: None,
            node_monitor_grace: std::time::Duration::from_secs(40),
            cluster_cidr: None,
            node_cidr_mask_size: 24,
            pod_gc: podgc::Settings::default(),
        }
    }
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
        recorder.clone(),
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
    let job = Arc::new(job::Controller::new(
        client.clone(),
        informers.jobs.clone(),
        informers.pods.clone(),
        recorder.with_component("job-controller"),
    ));
    let (job_queue, job_orphans) = job.register();
    let cronjob = Arc::new(cronjob::Controller::new(
        client.clone(),
        informers.cronjobs.clone(),
        informers.jobs.clone(),
        recorder.with_component("cronjob-controller"),
    ));
    let cronjob_queue = cronjob.register();
    let ds = Arc::new(daemonset::Controller::new(
        client.clone(),
        informers.daemonsets.clone(),
        informers.pods.clone(),
        informers.nodes.clone(),
        informers.revisions.clone(),
        recorder.with_component("daemonset-controller"),
    ));
    let ds_queue = ds.register();
    let sts = Arc::new(statefulset::Controller::new(
        client.clone(),
        informers.statefulsets.clone(),
        informers.pods.clone(),
        informers.pvcs.clone(),
        informers.revisions.clone(),
        recorder.with_component("statefulset-controller"),
    ));
    let sts_queue = sts.register();
    let lifecycle = Arc::new(nodelifecycle::Controller::new(
        client.clone(),
        informers.nodes.clone(),
        informers.leases.clone(),
        informers.pods.clone(),
        recorder.with_component("node-controller"),
        config.node_monitor_grace,
    ));
    let lifecycle_queue = lifecycle.register();
    let ipam = config.cluster_cidr.map(|range| {
        let c = Arc::new(nodeipam::Controller::new(
            client.clone(),
            informers.nodes.clone(),
            recorder.with_component("node-ipam-controller"),
            range,
            config.node_cidr_mask_size,
        ));
        let q = c.register();
        (c, q)
    });
    let pod_gc = Arc::new(podgc::Controller::new(
        client.clone(),
        informers.pods.clone(),
        informers.nodes.clone(),
        config.pod_gc.clone(),
    ));
    let pod_gc_queue = pod_gc.register();
    // The provisioner runs where volumes have a home.
    let local_path = config.volumes_dir.clone().map(|dir| {
        let c = Arc::new(localpath::Controller::new(
            client.clone(),
            informers.pvcs.clone(),
            informers.pvs.clone(),
            informers.classes.clone(),
            informers.pods.clone(),
            recorder.with_component("persistentvolume-controller"),
            dir,
        ));
        let q = c.register();
        (c, q)
    });
    let gc = gc::GarbageCollector::new(client.clone());
    let gc_queue = gc.queue();
    let quotas: informer::Informer<ResourceQuota> = informer::Informer::new("ResourceQuota");
    let rq = Arc::new(resourcequota::Controller::new(
        client.clone(),
        quotas.clone(),
    ));
    let rq_queue = rq.register(&informers.pods);
    {
        let rq = rq.clone();
        gc.on_delete(move |group, plural, ns| {
            // Pods are followed through their own informer (they also free quota when
            // they finish); events come and go too often to matter.
            let pods = group.is_empty() && plural == "pods";
            if let (Some(ns), false) = (ns, pods || plural == "events") {
                rq.recount_namespace(ns);
            }
        });
    }
    let rs_queue = rs.register();
    let deploy_queue = deploy.register();
    // Only the slices the EndpointSlice controller manages are watched.
    let slices: informer::Informer<EndpointSlice> = informer::Informer::new("EndpointSlice");
    let eps_slices = Arc::new(endpointslice::Controller::new(
        client.clone(),
        informers.services.clone(),
        informers.pods.clone(),
        informers.nodes.clone(),
        slices.clone(),
        recorder.with_component("endpoint-slice-controller"),
    ));
    let slices_queue = eps_slices.register();
    let endpoints: informer::Informer<Endpoints> = informer::Informer::new("Endpoints");
    let eps = Arc::new(endpoints::Controller::new(
        client.clone(),
        informers.services.clone(),
        informers.pods.clone(),
        endpoints.clone(),
        recorder.with_component("endpoint-controller"),
    ));
    let endpoints_queue = eps.register();
    let lb = Arc::new(servicelb::Controller::new(
        client.clone(),
        informers.services.clone(),
        informers.nodes.clone(),
    ));
    let lb_queue = lb.register();
    let ingresses: informer::Informer<k8s_openapi::api::networking::v1::Ingress> =
        informer::Informer::new("Ingress");
    let ing_status = Arc::new(servicelb::IngressStatus::new(
        client.clone(),
        ingresses.clone(),
        informers.nodes.clone(),
    ));
    let ing_queue = ing_status.register();
    let gateway_status = Arc::new(gateway::Controller::new(
        client.clone(),
        namespaces.clone(),
        informers.services.clone(),
        informers.nodes.clone(),
    ));
    let gateway_queue = gateway_status.register();

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
    tasks.push(informers.jobs.start(Api::all(client.clone()), stopped()));
    tasks.push(
        informers
            .cronjobs
            .start(Api::all(client.clone()), stopped()),
    );
    for t in [
        informers
            .daemonsets
            .start(Api::all(client.clone()), stopped()),
        informers.nodes.start(Api::all(client.clone()), stopped()),
        informers
            .revisions
            .start(Api::all(client.clone()), stopped()),
        informers
            .statefulsets
            .start(Api::all(client.clone()), stopped()),
        informers.pvcs.start(Api::all(client.clone()), stopped()),
        informers.pvs.start(Api::all(client.clone()), stopped()),
        informers.leases.start(
            Api::namespaced(client.clone(), nodelifecycle::LEASE_NAMESPACE),
            stopped(),
        ),
    ] {
        tasks.push(t);
    }
    // An API server without storage.k8s.io still gets the built-in local-path class.
    let classes_served = local_path.is_some() && localpath::classes_served(&client).await;
    if classes_served {
        tasks.push(informers.classes.start(Api::all(client.clone()), stopped()));
    }
    tasks.push(quotas.start(Api::all(client.clone()), stopped()));
    tasks.push(
        informers
            .services
            .start(Api::all(client.clone()), stopped()),
    );
    tasks.push(slices.start_with(
        Api::all(client.clone()),
        endpointslice::slice_watch(),
        stopped(),
    ));
    tasks.push(endpoints.start(Api::all(client.clone()), stopped()));
    tasks.push(ingresses.start(Api::all(client.clone()), stopped()));
    {
        // Without the Gateway API's CRDs these watches retry quietly and nothing is written.
        let g = &gateway_status;
        tasks.push(g.classes.start(Api::all(client.clone()), stopped()));
        tasks.push(g.gateways.start(Api::all(client.clone()), stopped()));
        tasks.push(g.routes.start(Api::all(client.clone()), stopped()));
        tasks.push(g.grants.start(Api::all(client.clone()), stopped()));
        tasks.push(g.secrets.start_with(
            Api::all(client.clone()),
            kube::runtime::watcher::Config::default().fields("type=kubernetes.io/tls"),
            stopped(),
        ));
    }
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
    informers.jobs.synced().await;
    informers.cronjobs.synced().await;
    informers.daemonsets.synced().await;
    informers.nodes.synced().await;
    informers.revisions.synced().await;
    informers.statefulsets.synced().await;
    informers.pvcs.synced().await;
    informers.pvs.synced().await;
    informers.leases.synced().await;
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
    {
        let j = job.clone();
        tasks.push(tokio::spawn(job_queue.clone().run(4, move |k| {
            let j = j.clone();
            async move { j.reconcile(k).await }
        })));
        let j = job.clone();
        tasks.push(tokio::spawn(job_orphans.clone().run(1, move |k| {
            let j = j.clone();
            async move { j.reconcile_orphan(k).await }
        })));
    }
    {
        let c = cronjob.clone();
        tasks.push(tokio::spawn(cronjob_queue.clone().run(2, move |k| {
            let c = c.clone();
            async move { c.reconcile(k).await }
        })));
    }
    tasks.push(workers(&ds_queue, 2, ds.clone(), |c, k| async move {
        c.reconcile(k).await
    }));
    tasks.push(workers(&sts_queue, 2, sts.clone(), |c, k| async move {
        c.reconcile(k).await
    }));
    tasks.push(workers(
        &lifecycle_queue,
        2,
        lifecycle.clone(),
        |c, k| async move { c.reconcile(k).await },
    ));
    if let Some((c, q)) = &ipam {
        // One worker: blocks are handed out one at a time.
        tasks.push(workers(q, 1, c.clone(), |c, k| async move {
            c.reconcile(k).await
        }));
    }
    tasks.push(workers(
        &pod_gc_queue,
        1,
        pod_gc.clone(),
        |c, k| async move { c.reconcile(k).await },
    ));
    if let Some((c, q)) = &local_path {
        if !classes_served {
            // Nothing to create: claims use the built-in class.
        } else if let Err(e) = c.ensure_class().await {
            tracing::warn!(error = %e, "creating the local-path StorageClass failed");
        }
        tasks.push(workers(q, 2, c.clone(), |c, k| async move {
            c.reconcile(k).await
        }));
    }
    informers.services.synced().await;
    slices.synced().await;
    tasks.push(workers(
        &slices_queue,
        4,
        eps_slices.clone(),
        |c, k| async move { c.reconcile(k).await },
    ));
    tasks.push(workers(&lb_queue, 1, lb.clone(), |c, k| async move {
        c.reconcile(k).await
    }));
    tasks.push(workers(
        &ing_queue,
        1,
        ing_status.clone(),
        |c, k| async move { c.reconcile(k).await },
    ));
    tasks.push(workers(
        &gateway_queue,
        1,
        gateway_status.clone(),
        |c, k| async move { c.reconcile(k).await },
    ));
    endpoints.synced().await;
    eps.queue_leftovers();
    tasks.push(workers(
        &endpoints_queue,
        4,
        eps.clone(),
        |c, k| async move { c.reconcile(k).await },
    ));
    quotas.synced().await;
    tasks.push(workers(&rq_queue, 2, rq.clone(), |c, k| async move {
        c.reconcile(k).await
    }));
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
    rq_queue.shutdown();
    sa_queue.shutdown();
    rs_queue.shutdown();
    deploy_queue.shutdown();
    job_queue.shutdown();
    job_orphans.shutdown();
    cronjob_queue.shutdown();
    ds_queue.shutdown();
    sts_queue.shutdown();
    lifecycle_queue.shutdown();
    pod_gc_queue.shutdown();
    slices_queue.shutdown();
    endpoints_queue.shutdown();
    gateway_queue.shutdown();
    // Every queue with workers: one left open kept shutdown waiting 5 s for its tasks.
    lb_queue.shutdown();
    ing_queue.shutdown();
    if let Some((_, q)) = &local_path {
        q.shutdown();
    }
    if let Some((_, q)) = &ipam {
        q.shutdown();
    }
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!("controllers stopped");
}

/// Runs `n` workers of `queue`, each calling `f` with the controller and a key.
fn workers<C, F, Fut>(
    queue: &queue::Queue,
    n: usize,
    c: Arc<C>,
    f: F,
) -> tokio::task::JoinHandle<()>
where
    C: Send + Sync + 'static,
    F: Fn(Arc<C>, informer::Key) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = queue::Outcome> + Send + 'static,
{
    tokio::spawn(queue.clone().run(n, move |k| f(c.clone(), k)))
}
