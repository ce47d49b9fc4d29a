"""End-to-end tests of the Deployment and ReplicaSet controllers and the garbage collector,
driven with the real kubectl and Python client.

These run against a server whose pods are not run by a node (no agent): a small stand-in
for the kubelet marks pods Running and Ready through the status subresource, as a kubelet
would, so rollouts can be checked step by step (the invariant maxUnavailable, revisions,
undo, pause, the progress deadline) independently of real containers."""

import threading
import time
import uuid

import pytest
from kubernetes import client, watch

from conftest import Kubectl, Server, _py_config


@pytest.fixture(scope="module")
def cserver():
    # No node agent (conftest's default): the FakeKubelet below plays the node.
    s = Server().start()
    yield s
    s.cleanup()


@pytest.fixture(scope="module")
def ck(cserver):
    k = Kubectl(cserver)
    yield k
    k.cleanup()


@pytest.fixture(scope="module")
def api(cserver):
    c = client.ApiClient(configuration=_py_config(cserver))
    yield c
    c.close()


@pytest.fixture
def cns(ck):
    name = "c-" + uuid.uuid4().hex[:8]
    ck("create", "namespace", name)
    yield name
    ck.run("delete", "namespace", name, "--wait=false", check=False)


class FakeKubelet:
    """Marks the namespace's pods Running and Ready after `delay` seconds, except pods
    labelled never-ready=true."""

    def __init__(self, api, ns, delay=0.2):
        self.core = client.CoreV1Api(api)
        self.ns = ns
        self.delay = delay
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.stop_flag.set()
        self.thread.join(timeout=5)

    def run(self):
        while not self.stop_flag.is_set():
            try:
                pods = self.core.list_namespaced_pod(self.ns).items
            except Exception:
                time.sleep(0.1)
                continue
            now = time.time()
            for p in pods:
                if p.metadata.deletion_timestamp or (p.metadata.labels or {}).get("never-ready") == "true":
                    continue
                ready = any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
                age = now - p.metadata.creation_timestamp.timestamp()
                if ready or age < self.delay:
                    continue
                ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                body = {
                    "status": {
                        "phase": "Running",
                        "conditions": [
                            {"type": "Ready", "status": "True", "lastTransitionTime": ts},
                            {"type": "ContainersReady", "status": "True", "lastTransitionTime": ts},
                        ],
                    }
                }
                try:
                    self.core.patch_namespaced_pod_status(p.metadata.name, self.ns, body)
                except Exception:
                    pass
            time.sleep(0.05)


def deployment(name, replicas=3, image="busybox-web:1", strategy=None, extra_spec=None, labels=None):
    spec = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name, **(labels or {})}},
            "spec": {"containers": [{"name": "web", "image": image, "ports": [{"containerPort": 8080}]}]},
        },
    }
    if strategy:
        spec["strategy"] = strategy
    spec.update(extra_spec or {})
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec}


def wait_for(cond, timeout=30, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def active_pods(core, ns, app):
    pods = core.list_namespaced_pod(ns, label_selector=f"app={app}").items
    return [p for p in pods if not p.metadata.deletion_timestamp]


def test_deployment_creates_replicaset_and_scales(ck, api, cns):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    ck("create", "deployment", "web", "--image=busybox-web:1", "--replicas=3", "-n", cns)
    wait_for(lambda: len(active_pods(core, cns, "web")) == 3, what="3 pods")
    rss = apps.list_namespaced_replica_set(cns).items
    assert len(rss) == 1
    rs = rss[0]
    assert rs.metadata.owner_references[0].kind == "Deployment"
    assert rs.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    h = rs.metadata.labels["pod-template-hash"]
    assert rs.metadata.name == f"web-{h}"
    for p in active_pods(core, cns, "web"):
        assert p.metadata.name.startswith(f"web-{h}-")
        ref = p.metadata.owner_references[0]
        assert (ref.kind, ref.name, ref.controller) == ("ReplicaSet", rs.metadata.name, True)
    for n in (5, 2):
        ck("scale", "deploy/web", f"--replicas={n}", "-n", cns)
        wait_for(lambda: len(active_pods(core, cns, "web")) == n, what=f"{n} pods")
        wait_for(
            lambda: apps.read_namespaced_replica_set(rs.metadata.name, cns).status.replicas == n,
            what="rs status",
        )
    out = ck("describe", "deploy/web", "-n", cns)
    assert "ScalingReplicaSet" in out and f"Scaled up replica set web-{h} from 0 to 3" in out
    assert f"Scaled down replica set web-{h} from 5 to 2" in out
    out = ck("describe", f"rs/web-{h}", "-n", cns)
    assert "SuccessfulCreate" in out and "SuccessfulDelete" in out


def test_rolling_update_never_below_max_unavailable_and_undo(ck, api, cns):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}}
    with FakeKubelet(api, cns):
        apps.create_namespaced_deployment(cns, deployment("roll", replicas=4, strategy=strategy))
        ck("rollout", "status", "deploy/roll", "-n", cns, "--timeout=60s")
        # Watch readiness during the rollout: never fewer than replicas - maxUnavailable
        # ready pods, never more than replicas + maxSurge pods.
        seen = {"min_ready": 99, "max_total": 0}
        stop = threading.Event()

        def observe():
            while not stop.is_set():
                pods = active_pods(core, cns, "roll")
                ready = [p for p in pods if any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))]
                seen["min_ready"] = min(seen["min_ready"], len(ready))
                all_pods = core.list_namespaced_pod(cns, label_selector="app=roll").items
                seen["max_total"] = max(seen["max_total"], len(all_pods))
                time.sleep(0.02)

        t = threading.Thread(target=observe, daemon=True)
        t.start()
        ck("set", "image", "deploy/roll", "web=busybox-web:2", "-n", cns)
        ck("rollout", "status", "deploy/roll", "-n", cns, "--timeout=90s")
        stop.set()
        t.join()
        assert seen["min_ready"] >= 3, seen
        assert seen["max_total"] <= 5, seen
        images = {p.spec.containers[0].image for p in active_pods(core, cns, "roll")}
        assert images == {"busybox-web:2"}
        d = apps.read_namespaced_deployment("roll", cns)
        assert d.status.updated_replicas == 4 and d.status.available_replicas == 4
        assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "2"
        conds = {c.type: c for c in d.status.conditions}
        assert conds["Available"].status == "True"
        assert conds["Progressing"].reason == "NewReplicaSetAvailable"
        hist = ck("rollout", "history", "deploy/roll", "-n", cns)
        assert "1 " in hist and "2 " in hist
        ck("rollout", "undo", "deploy/roll", "-n", cns)
        ck("rollout", "status", "deploy/roll", "-n", cns, "--timeout=90s")
        wait_for(
            lambda: {p.spec.containers[0].image for p in active_pods(core, cns, "roll")} == {"busybox-web:1"},
            what="pods back on v1",
        )
        d = apps.read_namespaced_deployment("roll", cns)
        assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "3"
        # Undo reuses the first ReplicaSet rather than making a third.
        assert len(apps.list_namespaced_replica_set(cns).items) == 2


def test_recreate_removes_old_pods_before_new_ones(ck, api, cns):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    with FakeKubelet(api, cns):
        apps.create_namespaced_deployment(cns, deployment("rec", replicas=2, strategy={"type": "Recreate"}))
        ck("rollout", "status", "deploy/rec", "-n", cns, "--timeout=60s")
        mixed = threading.Event()
        stop = threading.Event()

        def observe():
            while not stop.is_set():
                imgs = {p.spec.containers[0].image for p in core.list_namespaced_pod(cns, label_selector="app=rec").items}
                if len(imgs) > 1:
                    mixed.set()
                time.sleep(0.02)

        t = threading.Thread(target=observe, daemon=True)
        t.start()
        ck("set", "image", "deploy/rec", "web=busybox-web:2", "-n", cns)
        ck("rollout", "status", "deploy/rec", "-n", cns, "--timeout=60s")
        stop.set()
        t.join()
        assert not mixed.is_set(), "old and new pods existed at the same time"
        assert {p.spec.containers[0].image for p in active_pods(core, cns, "rec")} == {"busybox-web:2"}


def test_pause_resume_and_restart(ck, api, cns):
    apps = client.AppsV1Api(api)
    with FakeKubelet(api, cns):
        apps.create_namespaced_deployment(cns, deployment("pz", replicas=2))
        ck("rollout", "status", "deploy/pz", "-n", cns, "--timeout=60s")
        ck("rollout", "pause", "deploy/pz", "-n", cns)
        ck("set", "image", "deploy/pz", "web=busybox-web:2", "-n", cns)
        time.sleep(1)
        assert len(apps.list_namespaced_replica_set(cns).items) == 1, "a paused deployment must not roll"
        d = apps.read_namespaced_deployment("pz", cns)
        assert {c.type: c.reason for c in d.status.conditions}["Progressing"] == "DeploymentPaused"
        ck("rollout", "resume", "deploy/pz", "-n", cns)
        ck("rollout", "status", "deploy/pz", "-n", cns, "--timeout=60s")
        assert len(apps.list_namespaced_replica_set(cns).items) == 2
        ck("rollout", "restart", "deploy/pz", "-n", cns)
        ck("rollout", "status", "deploy/pz", "-n", cns, "--timeout=60s")
        assert len(apps.list_namespaced_replica_set(cns).items) == 3


def test_progress_deadline_exceeded(ck, api, cns):
    apps = client.AppsV1Api(api)
    d = deployment("stuck", replicas=1, labels={"never-ready": "true"}, extra_spec={"progressDeadlineSeconds": 2})
    with FakeKubelet(api, cns):
        apps.create_namespaced_deployment(cns, d)
        p = ck.run("rollout", "status", "deploy/stuck", "-n", cns, "--timeout=30s", check=False)
    assert p.returncode != 0
    assert "exceeded its progress deadline" in p.stderr
    d = apps.read_namespaced_deployment("stuck", cns)
    prog = {c.type: c for c in d.status.conditions}["Progressing"]
    assert (prog.status, prog.reason) == ("False", "ProgressDeadlineExceeded")


def test_replicaset_adopts_orphans_and_releases_relabelled_pods(ck, api, cns):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    orphan = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "stray", "labels": {"app": "rs1"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:test"}]},
    }
    core.create_namespaced_pod(cns, orphan)
    rs = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "rs1"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "rs1"}},
            "template": {
                "metadata": {"labels": {"app": "rs1"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:test"}]},
            },
        },
    }
    apps.create_namespaced_replica_set(cns, rs)
    wait_for(lambda: len(active_pods(core, cns, "rs1")) == 2, what="2 pods")
    time.sleep(0.5)
    pods = active_pods(core, cns, "rs1")
    assert len(pods) == 2, "the orphan counts toward replicas"
    stray = core.read_namespaced_pod("stray", cns)
    assert stray.metadata.owner_references[0].name == "rs1"
    # Relabel: released (owner reference removed) and replaced.
    core.patch_namespaced_pod("stray", cns, {"metadata": {"labels": {"app": "other"}}})
    wait_for(lambda: not core.read_namespaced_pod("stray", cns).metadata.owner_references, what="release")
    wait_for(lambda: len(active_pods(core, cns, "rs1")) == 2, what="replacement")


def test_garbage_collection_background_orphan_foreground(ck, api, cns):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    for name in ("bg", "orph", "fg"):
        apps.create_namespaced_deployment(cns, deployment(name, replicas=2))
    for name in ("bg", "orph", "fg"):
        wait_for(lambda: len(active_pods(core, cns, name)) == 2, what=f"{name} pods")
    ck("delete", "deploy/bg", "-n", cns)
    wait_for(lambda: not core.list_namespaced_pod(cns, label_selector="app=bg").items, what="bg pods collected")
    assert not [r for r in apps.list_namespaced_replica_set(cns).items if r.metadata.name.startswith("bg-")]

    ck("delete", "deploy/orph", "--cascade=orphan", "-n", cns)
    wait_for(
        lambda: [r for r in apps.list_namespaced_replica_set(cns).items if r.metadata.name.startswith("orph-")
                 and not r.metadata.owner_references],
        what="orphaned rs",
    )
    time.sleep(0.5)
    assert len(active_pods(core, cns, "orph")) == 2

    # Foreground: the deployment stays (with the finalizer) until its dependents are gone.
    apps.delete_namespaced_deployment("fg", cns, propagation_policy="Foreground")
    d = apps.read_namespaced_deployment("fg", cns)
    assert "foregroundDeletion" in d.metadata.finalizers and d.metadata.deletion_timestamp
    wait_for(lambda: not apps.list_namespaced_deployment(cns, field_selector="metadata.name=fg").items,
             what="fg deployment gone")
    assert not core.list_namespaced_pod(cns, label_selector="app=fg").items


def test_every_namespace_gets_default_serviceaccount_and_root_ca(ck, api, cns, cserver):
    core = client.CoreV1Api(api)
    # Made by a controller after the namespace: until then a read would raise 404.
    wait_for(lambda: core.list_namespaced_service_account(cns, field_selector="metadata.name=default").items,
             what="default sa")
    cm = wait_for(lambda: core.list_namespaced_config_map(cns, field_selector="metadata.name=kube-root-ca.crt").items,
                  what="root ca configmap")[0]
    assert cm.data["ca.crt"].startswith("-----BEGIN CERTIFICATE-----")
    # Deleted: put back.
    core.delete_namespaced_service_account("default", cns)
    core.delete_namespaced_config_map("kube-root-ca.crt", cns)
    wait_for(lambda: core.list_namespaced_service_account(cns).items, what="sa recreated")
    wait_for(lambda: core.list_namespaced_config_map(cns, field_selector="metadata.name=kube-root-ca.crt").items,
             what="configmap recreated")
