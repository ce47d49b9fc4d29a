"""End-to-end tests of the workload controllers (Job, CronJob, DaemonSet, StatefulSet),
the local-path provisioner and the node lifecycle controller, driven with the real
kubectl and Python client against a `corral server`.

No node agent runs pods here: the tests create Node objects themselves (with allocatable
resources, a Ready condition and a Lease in kube-node-lease that a heartbeat thread
renews), the scheduler in the server binds pods to them, and a stand-in kubelet plays the
node's part through the status subresource: it marks pods Running and Ready, runs pods
annotated `fake.corral.dev/exit` to completion (Succeeded or Failed with that exit code),
finishes graceful deletions, and waits for a pod's claims to be Bound before starting it.
A node whose heartbeat stops gets none of that, as with a dead kubelet."""

import datetime
import json
import os
import threading
import time
import uuid

import pytest
from kubernetes import client

from conftest import Kubectl, Server, _py_config, corral_binary

EXIT = "fake.corral.dev/exit"
RUN_SECONDS = "fake.corral.dev/run-seconds"


def _server_flags():
    import subprocess

    out = subprocess.run([corral_binary(), "server", "--help"], capture_output=True, text=True).stdout
    flags = []
    if "--disable-agent" in out:
        flags.append("--disable-agent")
    if "--node-monitor-grace-period" in out:
        flags.append("--node-monitor-grace-period=6s")
    if "--pod-gc-quarantine" in out:
        flags.append(f"--pod-gc-quarantine={QUARANTINE}s")
    return flags


QUARANTINE = 2


GRACE = 6 if "--node-monitor-grace-period=6s" in _server_flags() else 40


def now_rfc3339(offset=0.0):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Cluster:
    """Nodes with heartbeats, and a stand-in kubelet for the pods bound to live ones."""

    def __init__(self, api):
        self.core = client.CoreV1Api(api)
        self.coord = client.CoordinationV1Api(api)
        self.alive = set()
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.threads = [
            threading.Thread(target=self._heartbeat, daemon=True),
            threading.Thread(target=self._kubelet, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def close(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=5)

    def add_node(self, name, labels=None, taints=None):
        labels = dict(labels or {})
        labels["kubernetes.io/hostname"] = name
        self.core.create_node(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels},
                "spec": {"taints": taints or []},
            }
        )
        res = {"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        ts = now_rfc3339()
        self.core.patch_node_status(
            name,
            {
                "status": {
                    "capacity": res,
                    "allocatable": res,
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": ts,
                            "lastTransitionTime": ts,
                        }
                    ],
                }
            },
        )
        with self.lock:
            self.alive.add(name)
        self._renew(name)

    def kill(self, name):
        """The node's kubelet stops: no more heartbeats, pods left as they are."""
        with self.lock:
            self.alive.discard(name)

    def remove_node(self, name):
        self.kill(name)
        try:
            self.core.delete_node(name)
        except client.ApiException:
            pass

    def _renew(self, name):
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_rfc3339()},
        }
        try:
            self.coord.patch_namespaced_lease(name, "kube-node-lease", {"spec": {"renewTime": now_rfc3339()}})
        except client.ApiException as e:
            if e.status == 404:
                self.coord.create_namespaced_lease("kube-node-lease", body)

    def _heartbeat(self):
        while not self.stop_flag.wait(1.0):
            with self.lock:
                names = list(self.alive)
            for n in names:
                try:
                    self._renew(n)
                except Exception:
                    pass

    def _claims_bound(self, pod):
        for v in pod.spec.volumes or []:
            if v.persistent_volume_claim:
                try:
                    c = self.core.read_namespaced_persistent_volume_claim(v.persistent_volume_claim.claim_name, pod.metadata.namespace)
                except client.ApiException:
                    return False
                if (c.status.phase if c.status else None) != "Bound":
                    return False
        return True

    def _kubelet(self):
        while not self.stop_flag.is_set():
            try:
                pods = self.core.list_pod_for_all_namespaces().items
            except Exception:
                time.sleep(0.1)
                continue
            with self.lock:
                alive = set(self.alive)
            for p in pods:
                try:
                    self._step(p, alive)
                except client.ApiException:
                    pass
            time.sleep(0.1)

    def _step(self, p, alive):
        node = p.spec.node_name
        if not node or node not in alive:
            return
        ns, name = p.metadata.namespace, p.metadata.name
        phase = p.status.phase if p.status else None
        if p.metadata.deletion_timestamp:
            # Containers stopped: the kubelet finishes the graceful deletion.
            self.core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
            return
        if phase in ("Succeeded", "Failed"):
            return
        ann = p.metadata.annotations or {}
        age = time.time() - p.metadata.creation_timestamp.timestamp()
        ts = now_rfc3339()
        ready = any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
        if EXIT in ann:
            if age < float(ann.get(RUN_SECONDS, "0.3")):
                if phase != "Running":
                    self.core.patch_namespaced_pod_status(name, ns, {"status": {"phase": "Running", "startTime": ts}})
                return
            code = int(ann[EXIT])
            state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "startedAt": ts, "finishedAt": ts}}
            body = {
                "status": {
                    "phase": "Succeeded" if code == 0 else "Failed",
                    "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": ts}],
                    "containerStatuses": [
                        {"name": c.name, "image": c.image, "imageID": "", "ready": False, "restartCount": 0, "state": state}
                        for c in p.spec.containers
                    ],
                }
            }
            self.core.patch_namespaced_pod_status(name, ns, body)
            return
        if ready or age < float(ann.get("fake.corral.dev/ready-after", "0.2")) or not self._claims_bound(p):
            return
        self.core.patch_namespaced_pod_status(
            name,
            ns,
            {
                "status": {
                    "phase": "Running",
                    "startTime": ts,
                    "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": ts},
                        {"type": "ContainersReady", "status": "True", "lastTransitionTime": ts},
                    ],
                }
            },
        )


@pytest.fixture(scope="module")
def wserver():
    s = Server(extra_args=_server_flags()).start()
    yield s
    s.cleanup()


@pytest.fixture(scope="module")
def wk(wserver):
    k = Kubectl(wserver)
    yield k
    k.cleanup()


@pytest.fixture(scope="module")
def api(wserver):
    c = client.ApiClient(configuration=_py_config(wserver))
    yield c
    c.close()


@pytest.fixture(scope="module")
def cluster(api):
    c = Cluster(api)
    c.add_node("w1")
    c.add_node("w2")
    yield c
    c.close()


@pytest.fixture
def wns(wk, cluster):
    name = "w-" + uuid.uuid4().hex[:8]
    wk("create", "namespace", name)
    yield name
    wk.run("delete", "namespace", name, "--wait=false", check=False)


def wait_for(cond, timeout=30, what="condition", interval=0.1):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def events(core, ns, name):
    return [(e.reason, e.message) for e in core.list_namespaced_event(ns).items if e.involved_object.name == name]


def await_reasons(core, ns, name, *reasons):
    """Events are recorded asynchronously, after the change they report: wait for them."""
    wait_for(lambda: set(reasons) <= {r for r, _ in events(core, ns, name)}, what=f"events {reasons} of {name}")


def job_body(name, completions=None, parallelism=1, exit_code=0, run_seconds=0.3, extra=None):
    """A Job with its selector given (manualSelector), so it does not depend on the API
    server generating one."""
    labels = {"wl-job": name}
    spec = {
        "parallelism": parallelism,
        "manualSelector": True,
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels, "annotations": {EXIT: str(exit_code), RUN_SECONDS: str(run_seconds)}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "work", "image": "busybox:1"}]},
        },
    }
    if completions is not None:
        spec["completions"] = completions
    spec.update(extra or {})
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def field(obj, name):
    """A status field, 0 while the controller has written no status."""
    return (getattr(obj.status, name, None) if obj.status else None) or 0


def conditions(obj):
    return {c.type: c for c in ((obj.status and obj.status.conditions) or [])}


# ---------------------------------------------------------------- Job


def test_job_runs_to_completion_with_parallelism(wk, api, wns):
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    batch.create_namespaced_job(wns, job_body("pi", completions=5, parallelism=2, run_seconds=0.8))
    seen_active = []
    stop = threading.Event()

    def observe():
        while not stop.is_set():
            pods = core.list_namespaced_pod(wns, label_selector="wl-job=pi").items
            seen_active.append(sum(1 for p in pods if (p.status.phase or "Pending") not in ("Succeeded", "Failed") and not p.metadata.deletion_timestamp))
            time.sleep(0.05)

    t = threading.Thread(target=observe, daemon=True)
    t.start()
    wk("wait", "--for=condition=complete", "job/pi", "-n", wns, "--timeout=90s")
    stop.set()
    t.join()
    assert max(seen_active) <= 2, f"more than parallelism pods active: {max(seen_active)}"
    j = batch.read_namespaced_job("pi", wns)
    assert j.status.succeeded == 5 and not j.status.failed
    assert not j.status.active
    conds = conditions(j)
    assert conds["Complete"].status == "True" and conds["Complete"].reason == "CompletionsReached"
    assert conds["SuccessCriteriaMet"].status == "True"
    assert j.status.completion_time and j.status.start_time
    unc = j.status.uncounted_terminated_pods
    assert not (unc and (unc.succeeded or unc.failed))
    pods = core.list_namespaced_pod(wns, label_selector="wl-job=pi").items
    assert len(pods) == 5
    for p in pods:
        ref = p.metadata.owner_references[0]
        assert (ref.kind, ref.name, ref.controller) == ("Job", "pi", True)
        # Counted: the tracking finalizer is gone.
        assert "batch.kubernetes.io/job-tracking" not in (p.metadata.finalizers or [])
        assert p.metadata.name.startswith("pi-")
    ev = events(core, wns, "pi")
    assert ("Completed", "Job completed") in ev
    assert sum(1 for r, _ in ev if r == "SuccessfulCreate") == 5
    out = wk("get", "job", "pi", "-n", wns)
    assert "5/5" in out


def test_running_job_pods_carry_the_tracking_finalizer_and_suspend(wk, api, wns):
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    body = job_body("sleepy", completions=3, parallelism=3)
    del body["spec"]["template"]["metadata"]["annotations"][EXIT]
    batch.create_namespaced_job(wns, body)
    wait_for(lambda: field(batch.read_namespaced_job("sleepy", wns), "ready") == 3, what="3 ready")
    pods = core.list_namespaced_pod(wns, label_selector="wl-job=sleepy").items
    assert all("batch.kubernetes.io/job-tracking" in p.metadata.finalizers for p in pods)
    j = batch.read_namespaced_job("sleepy", wns)
    assert j.status.active == 3
    wk("patch", "job/sleepy", "-n", wns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_for(lambda: not core.list_namespaced_pod(wns, label_selector="wl-job=sleepy").items, what="pods removed on suspend")
    j = wait_for(lambda: (lambda j: j if "Suspended" in conditions(j) else None)(batch.read_namespaced_job("sleepy", wns)), what="Suspended")
    assert conditions(j)["Suspended"].status == "True" and conditions(j)["Suspended"].reason == "JobSuspended"
    # Pods removed by suspend are not failures.
    assert not j.status.failed
    wk("patch", "job/sleepy", "-n", wns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_for(lambda: field(batch.read_namespaced_job("sleepy", wns), "active") == 3, what="resumed")
    assert conditions(batch.read_namespaced_job("sleepy", wns))["Suspended"].status == "False"
    await_reasons(core, wns, "sleepy", "Suspended", "Resumed")


def test_failing_job_backs_off_then_hits_backoff_limit(wk, api, wns):
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    batch.create_namespaced_job(wns, job_body("fail", completions=1, exit_code=1, extra={"backoffLimit": 1}))
    j = wait_for(
        lambda: (lambda j: j if conditions(j).get("Failed") else None)(batch.read_namespaced_job("fail", wns)),
        timeout=60,
        what="Failed condition",
    )
    c = conditions(j)
    assert c["Failed"].reason == "BackoffLimitExceeded"
    assert c["Failed"].message == "Job has reached the specified backoff limit"
    assert c["FailureTarget"].reason == "BackoffLimitExceeded"
    assert j.status.failed == 2 and not j.status.succeeded
    assert not j.status.completion_time
    pods = sorted(core.list_namespaced_pod(wns, label_selector="wl-job=fail").items, key=lambda p: p.metadata.creation_timestamp)
    assert len(pods) == 2, [p.metadata.name for p in pods]
    # The replacement waited out the 10 s backoff after the first failure.
    first_done = pods[0].status.container_statuses[0].state.terminated.finished_at
    gap = (pods[1].metadata.creation_timestamp - first_done).total_seconds()
    assert gap >= 8, f"replacement created {gap}s after the failure"
    # Events are written after the status, asynchronously.
    wait_for(lambda: ("BackoffLimitExceeded", "Job has reached the specified backoff limit") in events(core, wns, "fail"),
             what="the BackoffLimitExceeded event")
    out = wk("describe", "job/fail", "-n", wns)
    assert "BackoffLimitExceeded" in out


def test_active_deadline_fails_the_job(wk, api, wns):
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    body = job_body("slow", completions=1, extra={"activeDeadlineSeconds": 2})
    del body["spec"]["template"]["metadata"]["annotations"][EXIT]
    batch.create_namespaced_job(wns, body)
    j = wait_for(
        lambda: (lambda j: j if conditions(j).get("Failed") else None)(batch.read_namespaced_job("slow", wns)),
        timeout=30,
        what="DeadlineExceeded",
    )
    assert conditions(j)["Failed"].reason == "DeadlineExceeded"
    assert conditions(j)["Failed"].message == "Job was active longer than specified deadline"
    # The running pod was removed and counted as failed.
    assert j.status.failed == 1 and not j.status.active
    wait_for(lambda: not core.list_namespaced_pod(wns, label_selector="wl-job=slow").items, what="pod removed")


def test_indexed_job(wk, api, wns):
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    batch.create_namespaced_job(wns, job_body("idx", completions=3, parallelism=3, extra={"completionMode": "Indexed"}))
    wk("wait", "--for=condition=complete", "job/idx", "-n", wns, "--timeout=60s")
    j = batch.read_namespaced_job("idx", wns)
    assert j.status.completed_indexes == "0-2"
    assert j.status.succeeded == 3
    pods = core.list_namespaced_pod(wns, label_selector="wl-job=idx").items
    by_index = {p.metadata.annotations["batch.kubernetes.io/job-completion-index"]: p for p in pods}
    assert sorted(by_index) == ["0", "1", "2"]
    for i, p in by_index.items():
        assert p.metadata.labels["batch.kubernetes.io/job-completion-index"] == i
        assert p.metadata.name.startswith(f"idx-{i}-")
        assert p.spec.hostname == f"idx-{i}"
        env = {e.name: e for e in p.spec.containers[0].env}
        assert env["JOB_COMPLETION_INDEX"].value_from.field_ref.field_path == "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def test_ttl_after_finished_deletes_the_job(wk, api, wns):
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    batch.create_namespaced_job(wns, job_body("ttl", completions=1, extra={"ttlSecondsAfterFinished": 1}))
    wait_for(lambda: not batch.list_namespaced_job(wns).items, timeout=40, what="job deleted after ttl")
    wait_for(lambda: not core.list_namespaced_pod(wns, label_selector="wl-job=ttl").items, timeout=30, what="pods deleted")


def test_generated_selector_from_kubectl_create_job(wk, api, wns):
    """`kubectl create job` sends no selector: the API server generates it, as Kubernetes'
    Job strategy does."""
    batch = client.BatchV1Api(api)
    wk("create", "job", "gen", "--image=busybox:1", "-n", wns)
    j = batch.read_namespaced_job("gen", wns)
    if j.spec.selector is None:
        pytest.skip("the API server does not generate Job selectors (batch.kubernetes.io/controller-uid) yet")
    labels = j.spec.template.metadata.labels
    assert labels["batch.kubernetes.io/job-name"] == "gen"
    wait_for(lambda: field(batch.read_namespaced_job("gen", wns), "active") == 1, what="pod created")


def test_controller_restart_creates_no_extra_pods():
    s = Server(extra_args=_server_flags()).start()
    try:
        api = client.ApiClient(configuration=_py_config(s))
        c = Cluster(api)
        try:
            c.add_node("r1")
            batch = client.BatchV1Api(api)
            core = client.CoreV1Api(api)
            body = job_body("steady", completions=10, parallelism=3, run_seconds=2)
            batch.create_namespaced_job("default", body)
            wait_for(lambda: len(core.list_namespaced_pod("default").items) >= 3, what="3 pods")
            c.close()
            s.stop()
            s.start()
            api2 = client.ApiClient(configuration=_py_config(s))
            c = Cluster(api2)
            c.alive.add("r1")
            batch = client.BatchV1Api(api2)
            core = client.CoreV1Api(api2)
            max_active = 0
            deadline = time.time() + 90
            while time.time() < deadline:
                j = batch.read_namespaced_job("steady", "default")
                pods = core.list_namespaced_pod("default").items
                active = [p for p in pods if (p.status.phase or "Pending") not in ("Succeeded", "Failed") and not p.metadata.deletion_timestamp]
                max_active = max(max_active, len(active))
                if conditions(j).get("Complete"):
                    break
                time.sleep(0.05)
            assert conditions(j).get("Complete"), "job did not complete after the restart"
            assert max_active <= 3, f"{max_active} pods active at once"
            # Exactly as many successes as completions: no pod counted twice, none extra.
            assert j.status.succeeded == 10
            assert len(core.list_namespaced_pod("default").items) == 10
        finally:
            c.close()
    finally:
        s.cleanup()


# ---------------------------------------------------------------- CronJob


def cronjob_body(name, schedule="* * * * *", policy="Allow", exit_code=0, run_seconds=0.3, extra=None):
    job = job_body(name, completions=1, exit_code=exit_code, run_seconds=run_seconds)
    spec = {
        "schedule": schedule,
        "concurrencyPolicy": policy,
        "startingDeadlineSeconds": 300,
        "jobTemplate": {"metadata": {"labels": {"wl-cron": name}}, "spec": job["spec"]},
    }
    spec.update(extra or {})
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name}, "spec": spec}


def make_due(batch, ns, name, minutes_ago=3):
    """A schedule time already due: the last run is set in the past, as if the cron job had
    existed for a while (the controller starts from lastScheduleTime)."""
    past = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:00Z")
    batch.patch_namespaced_cron_job_status(name, ns, {"status": {"lastScheduleTime": past}})


def test_cronjob_fires_and_tracks_status(wk, api, wns):
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    batch.create_namespaced_cron_job(wns, cronjob_body("tick"))
    make_due(batch, wns, "tick")
    jobs = wait_for(lambda: batch.list_namespaced_job(wns).items, timeout=20, what="job created")
    assert len(jobs) == 1
    j = jobs[0]
    minute = int(time.time() // 60)
    assert j.metadata.name in (f"tick-{minute}", f"tick-{minute - 1}")
    assert j.metadata.owner_references[0].kind == "CronJob"
    assert j.metadata.labels["wl-cron"] == "tick"
    assert j.metadata.annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"]
    cj = batch.read_namespaced_cron_job("tick", wns)
    scheduled = int(j.metadata.name.rsplit("-", 1)[1]) * 60
    assert int(cj.status.last_schedule_time.timestamp()) == scheduled
    wk("wait", "--for=condition=complete", f"job/{j.metadata.name}", "-n", wns, "--timeout=60s")
    cj = wait_for(
        lambda: (lambda c: c if c.status.last_successful_time and not c.status.active else None)(batch.read_namespaced_cron_job("tick", wns)),
        what="lastSuccessfulTime",
    )
    await_reasons(core, wns, "tick", "SuccessfulCreate", "SawCompletedJob")
    # kubectl create job --from=cronjob (client-side) makes a Job the cron job owns.
    wk("create", "job", "--from=cronjob/tick", "manual", "-n", wns)
    m = batch.read_namespaced_job("manual", wns)
    assert m.metadata.annotations["cronjob.kubernetes.io/instantiate"] == "manual"
    wk("wait", "--for=condition=complete", "job/manual", "-n", wns, "--timeout=60s")
    out = wk("get", "cronjob", "tick", "-n", wns)
    assert "* * * * *" in out


def test_cronjob_forbid_and_history_limit(wk, api, wns):
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    body = cronjob_body("lock", policy="Forbid")
    del body["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["annotations"][EXIT]
    batch.create_namespaced_cron_job(wns, body)
    make_due(batch, wns, "lock")
    jobs = wait_for(lambda: batch.list_namespaced_job(wns).items, timeout=20, what="first job")
    first = jobs[0].metadata.name
    cj = wait_for(lambda: (lambda c: c if c.status.active else None)(batch.read_namespaced_cron_job("lock", wns)), what="active")
    assert [r.name for r in cj.status.active] == [first]
    # At the next minute the first job still runs: Forbid skips the run.
    wait_for(
        lambda: "JobAlreadyActive" in [r for r, _ in events(core, wns, "lock")],
        timeout=75,
        interval=0.5,
        what="JobAlreadyActive",
    )
    assert [j.metadata.name for j in batch.list_namespaced_job(wns).items] == [first]
    # Replace: the next run deletes the running job and starts a new one.
    wk("patch", "cronjob/lock", "-n", wns, "--type=merge", "-p", '{"spec":{"concurrencyPolicy":"Replace"}}')
    wait_for(
        lambda: [j.metadata.name for j in batch.list_namespaced_job(wns).items if not j.metadata.deletion_timestamp] not in ([], [first]),
        timeout=75,
        interval=0.5,
        what="replacement job",
    )
    cj = wait_for(lambda: (lambda c: c if c.status.active and c.status.active[0].name != first else None)(batch.read_namespaced_cron_job("lock", wns)), what="active replaced")
    assert len(cj.status.active) == 1


def test_cronjob_suspend_and_bad_time_zone(wk, api, wns):
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    batch.create_namespaced_cron_job(wns, cronjob_body("off", extra={"suspend": True}))
    make_due(batch, wns, "off")
    try:
        batch.create_namespaced_cron_job(wns, cronjob_body("tz", extra={"timeZone": "Mars/Olympus_Mons"}))
    except client.ApiException as e:
        # Kubernetes' validation rejects an unknown zone at once.
        assert e.status == 422, e
    else:
        make_due(batch, wns, "tz")
        wait_for(lambda: "UnknownTimeZone" in [r for r, _ in events(core, wns, "tz")], what="UnknownTimeZone event")
    time.sleep(2)
    assert not batch.list_namespaced_job(wns).items
    batch.create_namespaced_cron_job(wns, cronjob_body("ny", extra={"timeZone": "America/New_York"}))
    make_due(batch, wns, "ny")
    j = wait_for(lambda: batch.list_namespaced_job(wns).items, timeout=20, what="job in a time zone")[0]
    ts = j.metadata.annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"]
    assert ts.endswith("-05:00") or ts.endswith("-04:00"), ts


# ---------------------------------------------------------------- DaemonSet


def ds_body(name, group, image="busybox-web:1"):
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"nodeSelector": {"wl-group": group}, "containers": [{"name": "agent", "image": image}]},
            },
        },
    }


def ds_pods(core, ns, name):
    return [p for p in core.list_namespaced_pod(ns, label_selector=f"app={name}").items if not p.metadata.deletion_timestamp]


def pinned_node(p):
    terms = p.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
    assert len(terms) == 1 and terms[0].match_fields[0].key == "metadata.name"
    return terms[0].match_fields[0].values[0]


def test_daemonset_one_pod_per_eligible_node(wk, api, wns, cluster):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    g = wns
    cluster.add_node(f"{g}-a", labels={"wl-group": g})
    cluster.add_node(f"{g}-b", labels={"wl-group": g})
    cluster.add_node(f"{g}-t", labels={"wl-group": g}, taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
    cluster.add_node(f"{g}-other", labels={"wl-group": "elsewhere"})
    try:
        apps.create_namespaced_daemon_set(wns, ds_body("agent", g))
        wk("rollout", "status", "ds/agent", "-n", wns, "--timeout=60s")
        pods = ds_pods(core, wns, "agent")
        assert sorted(pinned_node(p) for p in pods) == [f"{g}-a", f"{g}-b"]
        assert sorted(p.spec.node_name for p in pods) == [f"{g}-a", f"{g}-b"]
        tols = {(t.key, t.effect) for t in pods[0].spec.tolerations}
        for key, effect in [
            ("node.kubernetes.io/not-ready", "NoExecute"),
            ("node.kubernetes.io/unreachable", "NoExecute"),
            ("node.kubernetes.io/disk-pressure", "NoSchedule"),
            ("node.kubernetes.io/memory-pressure", "NoSchedule"),
            ("node.kubernetes.io/pid-pressure", "NoSchedule"),
            ("node.kubernetes.io/unschedulable", "NoSchedule"),
        ]:
            assert (key, effect) in tols
        ds = apps.read_namespaced_daemon_set("agent", wns)
        st = ds.status
        assert (st.desired_number_scheduled, st.current_number_scheduled, st.number_ready, st.number_available) == (2, 2, 2, 2)
        assert st.number_misscheduled == 0 and not st.number_unavailable
        assert st.updated_number_scheduled == 2 and st.observed_generation == ds.metadata.generation
        # A node added later gets its pod; a node removed loses it.
        cluster.add_node(f"{g}-c", labels={"wl-group": g})
        wait_for(lambda: sorted(pinned_node(p) for p in ds_pods(core, wns, "agent")) == [f"{g}-a", f"{g}-b", f"{g}-c"], what="pod on the new node")
        wk("rollout", "status", "ds/agent", "-n", wns, "--timeout=60s")
        # Relabelling a node so it no longer matches removes its pod.
        core.patch_node(f"{g}-b", {"metadata": {"labels": {"wl-group": "gone"}}})
        wait_for(lambda: sorted(pinned_node(p) for p in ds_pods(core, wns, "agent")) == [f"{g}-a", f"{g}-c"], what="pod removed from relabelled node")
        # Tolerating the taint lets a pod onto the tainted node.
        wk("patch", "ds/agent", "-n", wns, "--type=merge", "-p",
           '{"spec":{"template":{"spec":{"tolerations":[{"key":"dedicated","operator":"Exists"}]}}}}')
        wk("rollout", "status", "ds/agent", "-n", wns, "--timeout=90s")
        assert sorted(pinned_node(p) for p in ds_pods(core, wns, "agent")) == [f"{g}-a", f"{g}-c", f"{g}-t"]
        await_reasons(core, wns, "agent", "SuccessfulCreate", "SuccessfulDelete")
    finally:
        for n in ("a", "b", "t", "other", "c"):
            cluster.remove_node(f"{g}-{n}")


def test_daemonset_rolling_update_history_and_undo(wk, api, wns, cluster):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    g = wns
    for n in ("a", "b", "c"):
        cluster.add_node(f"{g}-{n}", labels={"wl-group": g})
    try:
        apps.create_namespaced_daemon_set(wns, ds_body("roll", g))
        wk("rollout", "status", "ds/roll", "-n", wns, "--timeout=60s")
        # Watch availability while rolling: maxUnavailable 1 of 3.
        seen = {"min_ready": 99}
        stop = threading.Event()

        def observe():
            while not stop.is_set():
                pods = ds_pods(core, wns, "roll")
                ready = [p for p in pods if any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))]
                seen["min_ready"] = min(seen["min_ready"], len(ready))
                time.sleep(0.02)

        t = threading.Thread(target=observe, daemon=True)
        t.start()
        wk("set", "image", "ds/roll", "agent=busybox-web:2", "-n", wns)
        wk("rollout", "status", "ds/roll", "-n", wns, "--timeout=90s")
        stop.set()
        t.join()
        assert seen["min_ready"] >= 2, seen
        assert {p.spec.containers[0].image for p in ds_pods(core, wns, "roll")} == {"busybox-web:2"}
        revs = sorted(
            (r.revision, r.metadata.name)
            for r in apps.list_namespaced_controller_revision(wns).items
        )
        assert [r for r, _ in revs] == [1, 2]
        hist = wk("rollout", "history", "ds/roll", "-n", wns)
        assert "1 " in hist and "2 " in hist
        wk("rollout", "undo", "ds/roll", "-n", wns)
        wk("rollout", "status", "ds/roll", "-n", wns, "--timeout=90s")
        wait_for(lambda: {p.spec.containers[0].image for p in ds_pods(core, wns, "roll")} == {"busybox-web:1"}, what="undone")
        # Undo reuses revision 1's template as revision 3.
        assert sorted(r.revision for r in apps.list_namespaced_controller_revision(wns).items) == [2, 3]
        # OnDelete: the template changes, the pods stay until deleted.
        wk("patch", "ds/roll", "-n", wns, "--type=merge", "-p", '{"spec":{"updateStrategy":{"type":"OnDelete","rollingUpdate":null}}}')
        wk("set", "image", "ds/roll", "agent=busybox-web:3", "-n", wns)
        time.sleep(2)
        assert {p.spec.containers[0].image for p in ds_pods(core, wns, "roll")} == {"busybox-web:1"}
        victim = ds_pods(core, wns, "roll")[0]
        core.delete_namespaced_pod(victim.metadata.name, wns)
        wait_for(lambda: sorted(p.spec.containers[0].image for p in ds_pods(core, wns, "roll")) == ["busybox-web:1", "busybox-web:1", "busybox-web:3"], what="one pod on the new template")
    finally:
        for n in ("a", "b", "c"):
            cluster.remove_node(f"{g}-{n}")


# ---------------------------------------------------------------- StatefulSet


def sts_body(name, replicas=3, policy="OrderedReady", claims=True, ready_after=1.0):
    spec = {
        "replicas": replicas,
        "serviceName": name,
        "podManagementPolicy": policy,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}, "annotations": {"fake.corral.dev/ready-after": str(ready_after)}},
            "spec": {"containers": [{"name": "db", "image": "busybox-web:1"}]},
        },
    }
    if claims:
        spec["volumeClaimTemplates"] = [
            {"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
        ]
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name}, "spec": spec}


def ready_time(p):
    for c in p.status.conditions or []:
        if c.type == "Ready" and c.status == "True":
            return c.last_transition_time
    return None


def test_statefulset_ordered_with_local_path_volumes(wk, api, wns, wserver):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    storage = client.StorageV1Api(api)
    sc = wait_for(lambda: next((s for s in storage.list_storage_class().items if s.metadata.name == "local-path"), None), what="local-path StorageClass")
    assert sc.provisioner == "corral.dev/local-path"
    assert sc.volume_binding_mode == "WaitForFirstConsumer"
    assert sc.metadata.annotations["storageclass.kubernetes.io/is-default-class"] == "true"
    assert "local-path (default)" in wk("get", "storageclass")
    apps.create_namespaced_stateful_set(wns, sts_body("db"))
    wk("rollout", "status", "sts/db", "-n", wns, "--timeout=90s")
    pods = {p.metadata.name: p for p in core.list_namespaced_pod(wns, label_selector="app=db").items}
    assert sorted(pods) == ["db-0", "db-1", "db-2"]
    # Each pod was created only after its predecessor was Ready.
    for i in (1, 2):
        # (creationTimestamp has whole seconds)
        assert pods[f"db-{i}"].metadata.creation_timestamp >= ready_time(pods[f"db-{i-1}"]).replace(microsecond=0), f"db-{i} before db-{i-1} was Ready"
    for i in range(3):
        p = pods[f"db-{i}"]
        assert p.spec.hostname == f"db-{i}" and p.spec.subdomain == "db"
        assert p.metadata.labels["statefulset.kubernetes.io/pod-name"] == f"db-{i}"
        assert p.metadata.labels["apps.kubernetes.io/pod-index"] == str(i)
        vol = {v.name: v for v in p.spec.volumes}["data"]
        assert vol.persistent_volume_claim.claim_name == f"data-db-{i}"
        pvc = core.read_namespaced_persistent_volume_claim(f"data-db-{i}", wns)
        assert pvc.status.phase == "Bound"
        assert pvc.spec.storage_class_name == "local-path"  # the default class, set on create
        pv = core.read_persistent_volume(pvc.spec.volume_name)
        assert pv.status.phase == "Bound"
        assert pv.spec.claim_ref.name == f"data-db-{i}" and pv.spec.claim_ref.namespace == wns
        assert pv.spec.storage_class_name == "local-path"
        assert pv.spec.persistent_volume_reclaim_policy == "Delete"
        assert pv.spec.host_path.path == os.path.join(os.path.realpath(wserver.data_dir), "volumes", pv.metadata.name)
        assert os.path.isdir(pv.spec.host_path.path)
        terms = pv.spec.node_affinity.required.node_selector_terms
        assert terms[0].match_expressions[0].values == [p.spec.node_name]
    st = apps.read_namespaced_stateful_set("db", wns).status
    assert (st.replicas, st.ready_replicas, st.current_replicas, st.updated_replicas) == (3, 3, 3, 3)
    assert st.current_revision == st.update_revision and st.current_revision.startswith("db-")
    # Scale down: highest ordinal first, one at a time; claims stay.
    order = []
    stop = threading.Event()

    def observe():
        while not stop.is_set():
            names = {p.metadata.name for p in core.list_namespaced_pod(wns, label_selector="app=db").items if not p.metadata.deletion_timestamp}
            for n in ("db-2", "db-1"):
                if n not in names and n not in order:
                    order.append(n)
            time.sleep(0.02)

    t = threading.Thread(target=observe, daemon=True)
    t.start()
    wk("scale", "sts/db", "--replicas=1", "-n", wns)
    wait_for(lambda: [p.metadata.name for p in core.list_namespaced_pod(wns, label_selector="app=db").items] == ["db-0"], what="scaled to 1")
    stop.set()
    t.join()
    assert order == ["db-2", "db-1"], order
    claims = sorted(c.metadata.name for c in core.list_namespaced_persistent_volume_claim(wns).items)
    assert claims == ["data-db-0", "data-db-1", "data-db-2"]
    # Deleting a claim with reclaimPolicy Delete removes its volume and directory.
    pvc = core.read_namespaced_persistent_volume_claim("data-db-2", wns)
    pv = core.read_persistent_volume(pvc.spec.volume_name)
    core.delete_namespaced_persistent_volume_claim("data-db-2", wns)
    wait_for(lambda: pv.metadata.name not in [v.metadata.name for v in core.list_persistent_volume().items], what="volume deleted")
    assert not os.path.exists(pv.spec.host_path.path)
    # Scaling back up reuses the kept claim of db-1.
    kept = core.read_namespaced_persistent_volume_claim("data-db-1", wns).spec.volume_name
    wk("scale", "sts/db", "--replicas=2", "-n", wns)
    wk("rollout", "status", "sts/db", "-n", wns, "--timeout=60s")
    assert core.read_namespaced_persistent_volume_claim("data-db-1", wns).spec.volume_name == kept
    reasons = events(core, wns, "db")
    assert ("SuccessfulCreate", f"create Pod db-0 in StatefulSet db successful") in reasons
    assert ("SuccessfulCreate", f"create Claim data-db-0 Pod db-0 in StatefulSet db success") in reasons
    assert ("SuccessfulDelete", f"delete Pod db-2 in StatefulSet db successful") in reasons


def test_statefulset_rolling_update_partition_and_undo(wk, api, wns):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    apps.create_namespaced_stateful_set(wns, sts_body("web", claims=False, ready_after=0.3))
    wk("rollout", "status", "sts/web", "-n", wns, "--timeout=60s")
    image = lambda: {p.metadata.name: p.spec.containers[0].image for p in core.list_namespaced_pod(wns, label_selector="app=web").items if not p.metadata.deletion_timestamp}
    # A partition of 2 updates only web-2.
    wk("patch", "sts/web", "-n", wns, "--type=merge", "-p", '{"spec":{"updateStrategy":{"rollingUpdate":{"partition":2}}}}')
    wk("set", "image", "sts/web", "db=busybox-web:2", "-n", wns)
    wait_for(lambda: image() == {"web-0": "busybox-web:1", "web-1": "busybox-web:1", "web-2": "busybox-web:2"}, what="partitioned update")
    st = wait_for(lambda: (lambda s: s if s.updated_replicas == 1 and s.ready_replicas == 3 else None)(apps.read_namespaced_stateful_set("web", wns).status), what="status")
    assert st.current_revision != st.update_revision and st.current_replicas == 2
    # Partition 0: the rest, highest ordinal first.
    deleted = []
    stop = threading.Event()

    def observe():
        prev = set(image())
        while not stop.is_set():
            cur = {n for n, i in image().items()}
            for n in sorted(prev - cur):
                deleted.append(n)
            prev = cur
            time.sleep(0.02)

    t = threading.Thread(target=observe, daemon=True)
    t.start()
    wk("patch", "sts/web", "-n", wns, "--type=merge", "-p", '{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}')
    wk("rollout", "status", "sts/web", "-n", wns, "--timeout=90s")
    stop.set()
    t.join()
    assert set(image().values()) == {"busybox-web:2"}
    assert deleted == ["web-1", "web-0"], deleted
    st = apps.read_namespaced_stateful_set("web", wns).status
    assert st.current_revision == st.update_revision and st.updated_replicas == 3
    assert "2 " in wk("rollout", "history", "sts/web", "-n", wns)
    wk("rollout", "undo", "sts/web", "-n", wns)
    wk("rollout", "status", "sts/web", "-n", wns, "--timeout=90s")
    wait_for(lambda: set(image().values()) == {"busybox-web:1"}, what="undone")


def test_statefulset_parallel(wk, api, wns):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    apps.create_namespaced_stateful_set(wns, sts_body("par", replicas=3, policy="Parallel", claims=False, ready_after=2))
    # All three exist before any is Ready.
    pods = wait_for(lambda: (lambda ps: ps if len(ps) == 3 else None)(core.list_namespaced_pod(wns, label_selector="app=par").items), timeout=10, what="3 pods at once")
    assert not any(ready_time(p) for p in pods)
    wk("rollout", "status", "sts/par", "-n", wns, "--timeout=60s")


# ---------------------------------------------------------------- Node lifecycle


def test_silent_node_goes_unknown_and_its_pods_move(wk, api, wns, cluster):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    g = wns
    cluster.add_node(f"{g}-x", labels={"wl-group": g})
    cluster.add_node(f"{g}-y", labels={"wl-group": g})
    try:
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "mover"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "mover"}},
                "template": {
                    "metadata": {"labels": {"app": "mover"}},
                    "spec": {
                        "nodeSelector": {"wl-group": g},
                        # What DefaultTolerationSeconds would add, shortened.
                        "tolerations": [
                            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2},
                            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2},
                        ],
                        "containers": [{"name": "app", "image": "busybox-web:1"}],
                    },
                },
            },
        }
        apps.create_namespaced_deployment(wns, body)
        wk("rollout", "status", "deploy/mover", "-n", wns, "--timeout=60s")
        pod = core.list_namespaced_pod(wns, label_selector="app=mover").items[0]
        dead = pod.spec.node_name
        other = f"{g}-y" if dead == f"{g}-x" else f"{g}-x"
        cluster.kill(dead)
        node = wait_for(
            lambda: (lambda n: n if any(c.type == "Ready" and c.status == "Unknown" for c in n.status.conditions) else None)(core.read_node(dead)),
            timeout=GRACE + 30,
            what="node Ready=Unknown",
        )
        ready = {c.type: c for c in node.status.conditions}["Ready"]
        assert ready.reason == "NodeStatusUnknown"
        assert ready.message == "Kubelet stopped posting node status."
        taints = wait_for(lambda: {(t.key, t.effect) for t in (core.read_node(dead).spec.taints or [])} or None, what="taints")
        assert ("node.kubernetes.io/unreachable", "NoExecute") in taints
        assert ("node.kubernetes.io/unreachable", "NoSchedule") in taints
        wk("get", "node", dead)
        assert "NotReady" in wk("get", "node", dead)
        # The pod is marked not Ready, evicted after its 2 s, and replaced on the other node.
        wait_for(lambda: core.read_namespaced_pod(pod.metadata.name, wns).metadata.deletion_timestamp, timeout=30, what="eviction")
        p = core.read_namespaced_pod(pod.metadata.name, wns)
        assert not any(c.type == "Ready" and c.status == "True" for c in p.status.conditions)
        replacement = wait_for(
            lambda: next((q for q in core.list_namespaced_pod(wns, label_selector="app=mover").items if q.metadata.name != pod.metadata.name and q.spec.node_name), None),
            timeout=30,
            what="replacement scheduled",
        )
        assert replacement.spec.node_name == other
        wk("rollout", "status", "deploy/mover", "-n", wns, "--timeout=60s")
        wait_for(lambda: ("TaintManagerEviction", f"Marking for deletion Pod {wns}/{pod.metadata.name}") in events(core, wns, pod.metadata.name),
                 what="the TaintManagerEviction event")
        # The node comes back: Ready again, taints gone.
        cluster.alive.add(dead)
        ts = now_rfc3339()
        core.patch_node_status(dead, {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "back", "lastHeartbeatTime": ts, "lastTransitionTime": ts}]}})
        wait_for(lambda: not [t for t in (core.read_node(dead).spec.taints or []) if t.key.startswith("node.kubernetes.io/")], timeout=20, what="taints removed")
    finally:
        cluster.remove_node(f"{g}-x")
        cluster.remove_node(f"{g}-y")


def test_storage_classes_are_validated_and_the_default_is_applied(wk, api, wns):
    storage = client.StorageV1Api(api)
    core = client.CoreV1Api(api)
    name = "fast-" + wns
    bad = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
           "provisioner": "example.com/x", "reclaimPolicy": "Keep"}
    p = wk.run("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert p.returncode != 0 and 'reclaimPolicy: Unsupported value: "Keep"' in p.stderr, p.stderr
    good = dict(bad, reclaimPolicy="Retain", parameters={"tier": "1"})
    wk.run("apply", "-f", "-", input=json.dumps(good))
    try:
        sc = storage.read_storage_class(name)
        assert sc.volume_binding_mode == "Immediate" and sc.reclaim_policy == "Retain"
        p = wk.run("patch", "storageclass", name, "-p", '{"parameters":{"tier":"2"}}', check=False)
        assert p.returncode != 0 and "parameters: Forbidden: updates to parameters are forbidden." in p.stderr, p.stderr
        out = wk("get", "sc", name)
        assert "example.com/x" in out and "Retain" in out and "Immediate" in out
        # A claim naming a class keeps it; "" means no class at all.
        for claim, cls in (("named", name), ("none", "")):
            core.create_namespaced_persistent_volume_claim(wns, {
                "metadata": {"name": claim},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": cls,
                         "resources": {"requests": {"storage": "1Mi"}}}})
            assert core.read_namespaced_persistent_volume_claim(claim, wns).spec.storage_class_name == cls
    finally:
        storage.delete_storage_class(name)


def test_podgc_deletes_the_pods_of_a_deleted_node(api, wns, cluster):
    """PodGC: once a node has been gone for the quarantine, its pods (running, or stuck
    terminating with no kubelet to finish) are marked Failed with DisruptionTarget
    (DeletionByPodGC) and force-deleted."""
    core = client.CoreV1Api(api)
    gone = f"{wns}-gone"
    cluster.add_node(gone)

    def bound(name, finalizers=None):
        meta = {"name": name}
        if finalizers:
            meta["finalizers"] = finalizers
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                "spec": {"nodeName": gone, "containers": [{"name": "c", "image": "busybox"}]}}

    for name in ("running", "terminating"):
        core.create_namespaced_pod(wns, bound(name))
    core.create_namespaced_pod(wns, bound("held", ["test.corral.dev/hold"]))
    for name in ("running", "terminating", "held"):
        wait_for(lambda: core.read_namespaced_pod(name, wns).status.phase == "Running", what=f"{name} running")
    cluster.kill(gone)
    # Its kubelet is gone, so a graceful deletion never finishes by itself.
    core.delete_namespaced_pod("terminating", wns)
    assert core.read_namespaced_pod("terminating", wns).metadata.deletion_timestamp
    cluster.remove_node(gone)
    # In quarantine: nothing happens yet.
    assert {p.metadata.name for p in core.list_namespaced_pod(wns).items} == {"running", "terminating", "held"}

    def gone_pods():
        names = {p.metadata.name for p in core.list_namespaced_pod(wns).items}
        return names if "running" not in names and "terminating" not in names else None

    assert wait_for(gone_pods, timeout=QUARANTINE + 30, what="orphaned pods deleted") == {"held"}
    held = core.read_namespaced_pod("held", wns)
    assert held.status.phase == "Failed"
    assert held.metadata.deletion_timestamp and held.metadata.deletion_grace_period_seconds == 0
    cond = {c.type: c for c in held.status.conditions}["DisruptionTarget"]
    assert (cond.status, cond.reason, cond.message) == ("True", "DeletionByPodGC", "PodGC: node no longer exists")
    # The kubelet's conditions stay (a strategic merge by type).
    assert "Ready" in {c.type for c in held.status.conditions}
    core.patch_namespaced_pod("held", wns, {"metadata": {"finalizers": None}})
    wait_for(lambda: not core.list_namespaced_pod(wns).items, what="held pod gone")


def test_podgc_keeps_at_most_the_threshold_of_terminated_pods():
    """--terminated-pod-gc-threshold: terminated pods beyond it go, evicted ones first,
    then the oldest; pods still running are never counted."""
    s = Server(extra_args=["--terminated-pod-gc-threshold=3", "--pod-gc-quarantine=1s"]).start()
    api = client.ApiClient(configuration=_py_config(s))
    try:
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": "gc"}})
        # Created in name order, so names break creationTimestamp ties the same way.
        done = [f"p{i}" for i in range(5)]
        for name in done + ["running", "q-evicted"]:
            core.create_namespaced_pod("gc", {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
        core.patch_namespaced_pod_status("running", "gc", {"status": {"phase": "Running"}})
        for name in done:
            core.patch_namespaced_pod_status(name, "gc", {"status": {"phase": "Succeeded" if name != "p2" else "Failed"}})
        core.patch_namespaced_pod_status("q-evicted", "gc", {"status": {"phase": "Failed", "reason": "Evicted"}})
        left = wait_for(
            lambda: (lambda names: names if len(names) == 4 else None)({p.metadata.name for p in core.list_namespaced_pod("gc").items}),
            timeout=30, what="terminated pods down to the threshold",
        )
        assert left == {"p2", "p3", "p4", "running"}
        time.sleep(2)
        assert {p.metadata.name for p in core.list_namespaced_pod("gc").items} == left
    finally:
        api.close()
        s.cleanup()


def test_scheduler_profiles_round_robin_and_unknown_scheduler(api, wns, cluster):
    """spec.schedulerName picks a profile: corral-round-robin rotates over the feasible
    nodes; a pod naming a scheduler nobody runs is left alone (Pending, no PodScheduled),
    as kube-scheduler leaves pods of other schedulers."""
    core = client.CoreV1Api(api)
    g = wns
    nodes = [f"{g}-r{i}" for i in range(3)]
    for n in nodes:
        cluster.add_node(n, labels={"wl-rr": g})
    try:
        def body(name, scheduler):
            return {"metadata": {"name": name}, "spec": {
                "schedulerName": scheduler, "nodeSelector": {"wl-rr": g},
                "containers": [{"name": "c", "image": "busybox:test"}]}}
        for i in range(6):
            core.create_namespaced_pod(wns, body(f"rr-{i}", "corral-round-robin"))
        core.create_namespaced_pod(wns, body("orphan", "someone-else"))
        placed = wait_for(lambda: (lambda ps: ps if all(p.spec.node_name for p in ps) else None)(
            [core.read_namespaced_pod(f"rr-{i}", wns) for i in range(6)]), what="round-robin pods bound")
        counts = {n: sum(p.spec.node_name == n for p in placed) for n in nodes}
        assert counts == {n: 2 for n in nodes}, counts
        time.sleep(1)
        orphan = core.read_namespaced_pod("orphan", wns)
        assert not orphan.spec.node_name and orphan.status.phase == "Pending"
        assert not [c for c in (orphan.status.conditions or []) if c.type == "PodScheduled"]
    finally:
        for p in core.list_namespaced_pod(wns).items:
            core.delete_namespaced_pod(p.metadata.name, wns, grace_period_seconds=0)
        for n in nodes:
            cluster.remove_node(n)


def test_binding_preconditions_and_no_rebinding(api, wns):
    """pods/binding as Kubernetes' BindingREST: the Binding's uid is a precondition, a bound
    pod cannot be bound again, and the Binding's annotations land on the pod."""
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(wns, {"metadata": {"name": "b"}, "spec": {
        "schedulerName": "nobody", "containers": [{"name": "c", "image": "busybox:test"}]}})
    uid = core.read_namespaced_pod("b", wns).metadata.uid

    def bind(node, uid=None, annotations=None):
        body = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": "b", "uid": uid, "annotations": annotations},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        # (The client cannot decode the Status a binding returns as a V1Binding, as
        # against Kubernetes: read the raw response.)
        return core.create_namespaced_pod_binding("b", wns, body, _preload_content=False)

    with pytest.raises(client.ApiException) as e:
        bind("n1", uid="00000000-0000-0000-0000-000000000000")
    assert e.value.status == 409 and "Precondition failed: UID in precondition" in str(e.value.body)
    assert bind("n1", uid=uid, annotations={"example.com/why": "test"}).status == 201
    p = core.read_namespaced_pod("b", wns)
    assert p.spec.node_name == "n1" and p.metadata.annotations["example.com/why"] == "test"
    assert {c.type: c.status for c in p.status.conditions}["PodScheduled"] == "True"
    with pytest.raises(client.ApiException) as e:
        bind("n2")
    assert e.value.status == 409 and 'is already assigned to node \\"n1\\"' in str(e.value.body)
    core.delete_namespaced_pod("b", wns, grace_period_seconds=0)
