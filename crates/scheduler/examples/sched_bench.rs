//! Scheduler throughput benchmark against a running API server (bench/scheduler.sh runs it).
//!
//!   sched_bench KUBECONFIG NODES PODS CREATORS
//!
//! Creates NODES nodes (32 cpu / 128Gi / 110 pods, no agent), starts the scheduler
//! in-process, creates PODS pods (100m / 500Mi, like scheduler_perf's default pod) from
//! CREATORS concurrent clients, and watches pods until all are bound. Prints one JSON line:
//! pods bound per second end to end (first create to last bound seen by the watch) and
//! the scheduler's own decisions per second.

use corral_scheduler::{run, SchedulerConfig};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, watcher, Event};
use kube::Client;
use serde_json::json;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn concurrently<F, Fut>(total: usize, workers: usize, f: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let f = Arc::new(f);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let next = next.clone();
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                f(i).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn retry<T, E: std::fmt::Display, Fut: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    f: impl Fn() -> Fut,
) -> T {
    for attempt in 0.. {
        match f().await {
            Ok(v) => return v,
            Err(e) if attempt < 5 => {
                eprintln!("{what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    unreachable!()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: sched_bench KUBECONFIG NODES PODS CREATORS");
        std::process::exit(2);
    }
    let nodes_n: usize = args[2].parse().unwrap();
    let pods_n: usize = args[3].parse().unwrap();
    let creators: usize = args[4].parse().unwrap();
    let kc = Kubeconfig::read_from(&args[1]).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = Client::try_from(cfg).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
        if client.request_text(req).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "API server not ready in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let t = Instant::now();
    let c = client.clone();
    concurrently(nodes_n, creators, move |i| {
        let nodes: Api<Node> = Api::all(c.clone());
        async move {
            let name = format!("node-{i}");
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {
                    "kubernetes.io/hostname": name,
                    "topology.kubernetes.io/zone": format!("zone-{}", i % 10)}},
            }))
            .unwrap();
            let pp = PostParams::default();
            retry("create node", || nodes.create(&pp, &node)).await;
            let r = json!({"cpu": "32", "memory": "128Gi", "pods": "110"});
            let status = json!({"status": {"capacity": r, "allocatable": r,
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "ready", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
            let (pp, patch) = (PatchParams::default(), Patch::Merge(&status));
            retry("node status", || nodes.patch_status(&name, &pp, &patch)).await;
        }
    })
    .await;
    eprintln!(
        "{nodes_n} nodes created in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Watch pods: count the bound ones.
    let bound = Arc::new(AtomicUsize::new(0));
    let last_bound = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    {
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let bound = bound.clone();
        let last_bound = last_bound.clone();
        tokio::spawn(async move {
            let mut seen: HashSet<String> = HashSet::new();
            let mut done_tx = Some(done_tx);
            let mut stream = watcher(pods, watcher::Config::default()).boxed();
            while let Some(ev) = stream.next().await {
                let p = match ev {
                    Ok(Event::Apply(p)) | Ok(Event::InitApply(p)) => p,
                    Ok(_) => continue,
                    Err(e) => {
                        eprintln!("watch: {e}");
                        continue;
                    }
                };
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                    && seen.insert(p.metadata.name.clone().unwrap_or_default())
                {
                    *last_bound.lock().unwrap() = Some(Instant::now());
                    if bound.fetch_add(1, Ordering::Relaxed) + 1 == pods_n {
                        if let Some(tx) = done_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
            }
        });
    }

    let config = SchedulerConfig::default();
    let metrics = config.metrics.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sched = tokio::spawn(run(client.clone(), config, async move {
        let _ = stop_rx.await;
    }));
    // Let the scheduler list the nodes before the first pod arrives.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let start = Instant::now();
    let c = client.clone();
    let creating = tokio::spawn(concurrently(pods_n, creators, move |i| {
        let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
        async move {
            let pod: Pod = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("pod-{i}")},
                "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}}]},
            }))
            .unwrap();
            let pp = PostParams::default();
            retry("create pod", || pods.create(&pp, &pod)).await;
        }
    }));
    creating.await.unwrap();
    let created = start.elapsed();
    eprintln!("{pods_n} pods created in {:.1} s", created.as_secs_f64());
    let timed_out = tokio::time::timeout(Duration::from_secs(1800), done_rx)
        .await
        .is_err();
    let end = last_bound.lock().unwrap().unwrap_or_else(Instant::now);
    let e2e = end.duration_since(start).as_secs_f64();
    let bound_n = bound.load(Ordering::Relaxed);
    let decisions = metrics.attempts_scheduled.load(Ordering::Relaxed);
    let algo = metrics.algorithm_duration.sum().as_secs_f64();
    let result = json!({
        "nodes": nodes_n, "pods": pods_n, "creators": creators,
        "timed_out": timed_out,
        "bound": bound_n,
        "create_seconds": created.as_secs_f64(),
        "creates_per_second": pods_n as f64 / created.as_secs_f64(),
        "e2e_seconds": e2e,
        "e2e_pods_per_second": bound_n as f64 / e2e,
        "ratio_vs_810": bound_n as f64 / e2e / 810.0,
        "decisions": decisions,
        "decisions_per_second_of_algorithm_time": decisions as f64 / algo,
        "algorithm_seconds": algo,
        "unschedulable_attempts": metrics.attempts_unschedulable.load(Ordering::Relaxed),
        "binds_ok": metrics.binds_ok.load(Ordering::Relaxed),
        "binds_failed": metrics.binds_failed.load(Ordering::Relaxed),
        "binds_dropped": metrics.binds_dropped.load(Ordering::Relaxed),
        "events_sent": metrics.events_sent.load(Ordering::Relaxed),
        "events_dropped": metrics.events_dropped.load(Ordering::Relaxed),
        "e2e_latency_mean_ms": metrics.e2e_duration.sum().as_secs_f64() * 1000.0
            / metrics.e2e_duration.count().max(1) as f64,
    });
    println!("{result}");
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), sched).await;
}
