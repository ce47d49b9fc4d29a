//! The scheduler against a real `corral server` (CORRAL_BIN): nodes created through the
//! API, the scheduler running in-process, pods checked through the API. Skipped with a
//! message when CORRAL_BIN is unset.

use corral_scheduler::{run, Profile, ProfileKind, SchedulerConfig};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the server when the test ends, also on panic.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_server(bin: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    // The server's own scheduler would race with the one under test, and its own node
    // agent would register this machine as one more node.
    let child = Command::new(bin)
        .args(["server", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--https-port", &port.to_string()])
        .args(["--disable-scheduler", "--disable-agent"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start corral server");
    let kubeconfig = dir.path().join("data").join("kubeconfig.yaml");
    Server {
        child,
        _dir: dir,
        kubeconfig,
    }
}

async fn client_for(server: &mut Server) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "corral server exited early"
        );
        if server.kubeconfig.exists() {
            if let Ok(kc) = Kubeconfig::read_from(&server.kubeconfig) {
                if let Ok(cfg) =
                    kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await
                {
                    let client = Client::try_from(cfg).unwrap();
                    let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
                    if client.request_text(req).await.is_ok() {
                        return client;
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "server not ready in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create_node(
    client: &Client,
    name: &str,
    cpu: &str,
    labels: serde_json::Value,
    taints: serde_json::Value,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = labels;
    labels["kubernetes.io/hostname"] = json!(name);
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let resources =
        json!({"cpu": cpu, "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let status = json!({"status": {
        "capacity": resources, "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "ready", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

async fn create_pod(client: &Client, spec: serde_json::Value) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod"});
    pod["metadata"] = spec["metadata"].clone();
    let mut s = spec["spec"].clone();
    s["containers"] = json!([{
        "name": "c", "image": "busybox",
        "resources": {"requests": spec["requests"].clone()},
    }]);
    pod["spec"] = s;
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod).unwrap(),
    )
    .await
    .unwrap();
}

async fn node_of(client: &Client, name: &str, wait: Duration) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + wait;
    loop {
        let p = pods.get(name).await.unwrap();
        if let Some(n) = p.spec.and_then(|s| s.node_name) {
            return Some(n);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod_json(
    name: &str,
    labels: serde_json::Value,
    cpu: &str,
    spec: serde_json::Value,
) -> serde_json::Value {
    json!({"metadata": {"name": name, "labels": labels}, "spec": spec, "requests": {"cpu": cpu, "memory": "100Mi"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_pods_through_the_api() {
    let Ok(bin) = std::env::var("CORRAL_BIN") else {
        eprintln!("skipped: set CORRAL_BIN to a built corral binary to run this test");
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter("corral_scheduler=info")
        .with_test_writer()
        .try_init();
    let mut server = start_server(&bin);
    let client = client_for(&mut server).await;

    let gpu_taint = json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
    create_node(&client, "small", "2", json!({"zone": "a"}), json!([])).await;
    create_node(
        &client,
        "big",
        "8",
        json!({"zone": "b", "disk": "ssd"}),
        json!([]),
    )
    .await;
    create_node(&client, "gpu", "8", json!({"zone": "c"}), gpu_taint).await;

    let config = SchedulerConfig {
        profiles: vec![
            Profile::new("default-scheduler", ProfileKind::Default),
            Profile::new("rr-scheduler", ProfileKind::RoundRobin),
        ],
        ..Default::default()
    };
    let metrics = config.metrics.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sched = tokio::spawn(run(client.clone(), config, async move {
        let _ = stop_rx.await;
    }));

    let tol =
        json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]);
    // Resources: only "big" has 4 free cpus without a toleration.
    create_pod(&client, pod_json("needs-4-cpus", json!({}), "4", json!({}))).await;
    // Node selector.
    create_pod(
        &client,
        pod_json(
            "wants-ssd",
            json!({}),
            "100m",
            json!({"nodeSelector": {"disk": "ssd"}}),
        ),
    )
    .await;
    // Toleration + required node affinity: only the tainted node.
    create_pod(
        &client,
        pod_json("gpu-job", json!({}), "100m", json!({
            "tolerations": tol,
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["c"]}]}]}}},
        })),
    )
    .await;
    // Another scheduler's pod is left alone.
    create_pod(
        &client,
        pod_json(
            "not-mine",
            json!({}),
            "100m",
            json!({"schedulerName": "someone-else"}),
        ),
    )
    .await;

    assert_eq!(
        node_of(&client, "needs-4-cpus", Duration::from_secs(20))
            .await
            .as_deref(),
        Some("big")
    );
    assert_eq!(
        node_of(&client, "wants-ssd", Duration::from_secs(20))
            .await
            .as_deref(),
        Some("big")
    );
    assert_eq!(
        node_of(&client, "gpu-job", Duration::from_secs(20))
            .await
            .as_deref(),
        Some("gpu")
    );

    // Anti-affinity by hostname: three replicas on three different nodes.
    for i in 0..3 {
        create_pod(
            &client,
            pod_json(&format!("web-{i}"), json!({"app": "web"}), "100m", json!({
                "tolerations": tol,
                "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                    "labelSelector": {"matchLabels": {"app": "web"}},
                    "topologyKey": "kubernetes.io/hostname"}]}},
            })),
        )
        .await;
    }
    let mut web_nodes = Vec::new();
    for i in 0..3 {
        web_nodes.push(
            node_of(&client, &format!("web-{i}"), Duration::from_secs(20))
                .await
                .unwrap(),
        );
    }
    web_nodes.sort();
    assert_eq!(web_nodes, vec!["big", "gpu", "small"]);

    // Topology spread by zone (maxSkew 1, DoNotSchedule): 6 pods -> 2 per zone.
    for i in 0..6 {
        create_pod(
            &client,
            pod_json(
                &format!("spread-{i}"),
                json!({"app": "spread"}),
                "100m",
                json!({
                    "tolerations": tol,
                    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app": "spread"}}}],
                }),
            ),
        )
        .await;
    }
    let mut per_node = std::collections::BTreeMap::new();
    for i in 0..6 {
        let n = node_of(&client, &format!("spread-{i}"), Duration::from_secs(20))
            .await
            .unwrap();
        *per_node.entry(n).or_insert(0) += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{per_node:?}"
    );

    // Round-robin profile rotates over the feasible nodes (the tolerated taint included).
    let mut rr = Vec::new();
    for i in 0..3 {
        create_pod(
            &client,
            pod_json(
                &format!("rr-{i}"),
                json!({}),
                "10m",
                json!({"schedulerName": "rr-scheduler", "tolerations": tol}),
            ),
        )
        .await;
        rr.push(
            node_of(&client, &format!("rr-{i}"), Duration::from_secs(20))
                .await
                .unwrap(),
        );
    }
    rr.sort();
    assert_eq!(rr, vec!["big", "gpu", "small"]);

    // Unschedulable: 20 cpus fit nowhere.
    create_pod(&client, pod_json("too-big", json!({}), "20", json!({}))).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let expected = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
                    2 Insufficient cpu. preemption: 0/3 nodes are available: 3 Preemption is not \
                    helpful for scheduling.";
    let deadline = Instant::now() + Duration::from_secs(20);
    let cond = loop {
        let p = pods.get("too-big").await.unwrap();
        let c = p
            .status
            .and_then(|s| s.conditions)
            .and_then(|cs| cs.into_iter().find(|c| c.type_ == "PodScheduled"));
        if let Some(c) = c {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no PodScheduled condition on too-big"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(cond.status, "False");
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(cond.message.as_deref(), Some(expected));
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=too-big"))
            .await
            .unwrap();
        let failed = list
            .items
            .iter()
            .find(|e| e.reason.as_deref() == Some("FailedScheduling"));
        if let Some(e) = failed {
            assert_eq!(e.type_.as_deref(), Some("Warning"));
            assert_eq!(e.message.as_deref(), Some(expected));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no FailedScheduling event for too-big"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Scheduled pods got a Scheduled event.
    let list = events
        .list(&ListParams::default().fields("involvedObject.name=needs-4-cpus"))
        .await
        .unwrap();
    assert!(
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Scheduled")
                && e.message.as_deref()
                    == Some("Successfully assigned default/needs-4-cpus to big")),
        "{:?}",
        list.items
    );

    // A node that fits arrives: the pod is retried (after its backoff) and bound there.
    create_node(&client, "huge", "32", json!({"zone": "d"}), json!([])).await;
    assert_eq!(
        node_of(&client, "too-big", Duration::from_secs(30))
            .await
            .as_deref(),
        Some("huge")
    );
    assert_eq!(
        node_of(&client, "not-mine", Duration::from_millis(10)).await,
        None
    );

    use std::sync::atomic::Ordering::Relaxed;
    assert!(metrics.attempts_unschedulable.load(Relaxed) >= 1);
    assert_eq!(metrics.binds_ok.load(Relaxed), 16);
    assert_eq!(metrics.e2e_duration.count(), 16);

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), sched)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
