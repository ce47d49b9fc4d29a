"""End-to-end tests of ResourceQuota and LimitRange enforcement with the real kubectl and
Python client: LimitRange defaults and bounds on pods, quota admission (object counts,
compute resources, the exact refusal messages), the quota controller's recount when
objects go away or finish, and concurrent creates that must never overrun a quota.

The session server has no node agent, so pods stay Pending; Pending pods count."""

import json
import os
import threading
import time
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from conftest import Kubectl, Server, _py_config

ETCD = os.environ.get("CORRAL_TEST_ETCD", "")


def wait_for(what, fn, timeout=20, interval=0.2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def quota_used(kubectl, ns, name):
    q = kubectl.json("get", "resourcequota", name, "-n", ns)
    return q.get("status", {}).get("used")


def create_quota(kubectl, ns, name, hard, extra=""):
    lines = "\n".join(f"    {k}: \"{v}\"" for k, v in hard.items())
    kubectl.run(
        "apply", "-n", ns, "-f", "-",
        input=f"apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: {name}\nspec:\n  hard:\n{lines}\n{extra}",
    )
    # Admission only applies a quota once the controller has filled in its status.
    wait_for(f"quota {name} status", lambda: (quota_used(kubectl, ns, name) or {}).keys() >= hard.keys())


def pod_yaml(name, resources=None, extra_spec=""):
    res = f"\n    resources: {json.dumps(resources)}" if resources else ""
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{extra_spec}"
        f"  containers:\n  - name: c\n    image: busybox{res}\n"
    )


LIMITS = """apiVersion: v1
kind: LimitRange
metadata:
  name: limits
spec:
  limits:
  - type: Container
    default: {cpu: 500m, memory: 256Mi}
    defaultRequest: {cpu: 250m, memory: 128Mi}
    max: {cpu: 500m, memory: 1Gi}
    min: {memory: 10Mi}
    maxLimitRequestRatio: {cpu: "2"}
"""


def test_limitrange_defaults_a_pod_without_resources(kubectl, ns):
    kubectl.run("apply", "-n", ns, "-f", "-", input=LIMITS)
    kubectl.run("run", "plain", "-n", ns, "--image=busybox")
    pod = kubectl.json("get", "pod", "plain", "-n", ns)
    res = pod["spec"]["containers"][0]["resources"]
    assert res == {
        "limits": {"cpu": "500m", "memory": "256Mi"},
        "requests": {"cpu": "250m", "memory": "128Mi"},
    }
    assert pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"] == (
        "LimitRanger plugin set: cpu, memory request for container plain; "
        "cpu, memory limit for container plain"
    )
    assert pod["status"]["qosClass"] == "Burstable"
    # The LimitRange itself reads back defaulted, as Kubernetes stores it.
    lr = kubectl.json("get", "limitrange", "limits", "-n", ns)
    assert lr["spec"]["limits"][0]["min"] == {"memory": "10Mi"}


def test_limitrange_refuses_out_of_bounds_pods(kubectl, ns, api_client):
    kubectl.run("apply", "-n", ns, "-f", "-", input=LIMITS)
    p = kubectl.run(
        "create", "-n", ns, "-f", "-", check=False,
        input=pod_yaml("big", {"limits": {"cpu": "1"}, "requests": {"cpu": "500m"}}),
    )
    assert p.returncode == 1
    assert p.stderr.strip() == (
        'Error from server (Forbidden): error when creating "STDIN": pods "big" is forbidden: '
        "maximum cpu usage per Container is 500m, but limit is 1"
    )
    core = client.CoreV1Api(api_client)
    body = {
        "metadata": {"name": "small"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {
            "limits": {"cpu": "400m", "memory": "20Mi"},
            "requests": {"cpu": "100m", "memory": "5Mi"}}}]},
    }
    with pytest.raises(ApiException) as e:
        core.create_namespaced_pod(ns, body)
    assert e.value.status == 403
    status = json.loads(e.value.body)
    assert status["reason"] == "Forbidden"
    assert status["message"] == (
        'pods "small" is forbidden: [minimum memory usage per Container is 10Mi, but request is 5Mi, '
        "cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000]"
    )
    assert (status["details"]["name"], status["details"]["kind"]) == ("small", "pods")
    assert kubectl("get", "pods", "-n", ns, "-o", "name") == ""


def test_pod_count_quota_refuses_the_next_pod_and_frees_room_on_delete(kubectl, ns):
    create_quota(kubectl, ns, "pods", {"pods": "2"})
    for name in ("p1", "p2"):
        kubectl.run("create", "-n", ns, "-f", "-", input=pod_yaml(name))
    p = kubectl.run("create", "-n", ns, "-f", "-", check=False, input=pod_yaml("p3"))
    assert p.returncode == 1
    assert p.stderr.strip() == (
        'Error from server (Forbidden): error when creating "STDIN": pods "p3" is forbidden: '
        "exceeded quota: pods, requested: pods=1, used: pods=2, limited: pods=2"
    )
    out = kubectl("describe", "quota", "pods", "-n", ns)
    assert ["Resource", "Used", "Hard"] in [l.split() for l in out.splitlines()]
    assert [l.split() for l in out.splitlines() if l.startswith("pods ")] == [["pods", "2", "2"]]
    table = kubectl("get", "quota", "-n", ns)
    assert table.splitlines()[0].split() == ["NAME", "REQUEST", "LIMIT", "AGE"]
    assert "pods: 2/2" in table.splitlines()[1]
    # Deleting a pod gives its room back (the quota controller recounts).
    kubectl.run("delete", "pod", "p1", "-n", ns, "--wait=false")
    wait_for("used pods 1", lambda: quota_used(kubectl, ns, "pods") == {"pods": "1"})
    kubectl.run("create", "-n", ns, "-f", "-", input=pod_yaml("p3"))
    assert quota_used(kubectl, ns, "pods") == {"pods": "2"}
    # Creating one that exists is refused as such, and charges nothing.
    p = kubectl.run("create", "-n", ns, "-f", "-", check=False, input=pod_yaml("p3"))
    assert "(AlreadyExists)" in p.stderr
    assert quota_used(kubectl, ns, "pods") == {"pods": "2"}


def test_compute_quota_requires_requests_and_counts_them(kubectl, ns, api_client):
    create_quota(kubectl, ns, "compute", {"requests.cpu": "1200m", "limits.memory": "1Gi"})
    p = kubectl.run("create", "-n", ns, "-f", "-", check=False, input=pod_yaml("bare"))
    assert p.returncode == 1
    assert p.stderr.strip().endswith(
        'pods "bare" is forbidden: failed quota: compute: '
        "must specify limits.memory for: c; requests.cpu for: c"
    )
    kubectl.run("create", "-n", ns, "-f", "-", input=pod_yaml(
        "one", {"requests": {"cpu": "1"}, "limits": {"memory": "512Mi"}}))
    p = kubectl.run("create", "-n", ns, "-f", "-", check=False, input=pod_yaml(
        "more", {"requests": {"cpu": "500m"}, "limits": {"memory": "256Mi"}}))
    assert p.returncode == 1
    assert p.stderr.strip().endswith(
        'pods "more" is forbidden: exceeded quota: compute, requested: requests.cpu=500m, '
        "used: requests.cpu=1, limited: requests.cpu=1200m"
    )
    assert quota_used(kubectl, ns, "compute") == {"limits.memory": "512Mi", "requests.cpu": "1"}
    out = kubectl("describe", "quota", "compute", "-n", ns)
    rows = {l.split()[0]: l.split()[1:] for l in out.splitlines() if l.startswith(("requests.", "limits."))}
    assert rows == {"limits.memory": ["512Mi", "1Gi"], "requests.cpu": ["1", "1200m"]}
    # A pod that finishes stops using compute: the controller sees it and recounts.
    core = client.CoreV1Api(api_client)
    core.patch_namespaced_pod_status("one", ns, {"status": {"phase": "Failed"}})
    wait_for("compute freed", lambda: quota_used(kubectl, ns, "compute") == {"limits.memory": "0", "requests.cpu": "0"})
    kubectl.run("create", "-n", ns, "-f", "-", input=pod_yaml(
        "more", {"requests": {"cpu": "500m"}, "limits": {"memory": "256Mi"}}))


def test_scoped_quota_counts_only_matching_pods(kubectl, ns):
    create_quota(kubectl, ns, "besteffort", {"pods": "1"}, extra="  scopes: [BestEffort]\n")
    kubectl.run("create", "-n", ns, "-f", "-", input=pod_yaml("be1"))
    # Not BestEffort: outside the quota's scope.
    kubectl.run("create", "-n", ns, "-f", "-", input=pod_yaml("burst", {"requests": {"cpu": "100m"}}))
    p = kubectl.run("create", "-n", ns, "-f", "-", check=False, input=pod_yaml("be2"))
    assert p.returncode == 1
    assert "exceeded quota: besteffort, requested: pods=1, used: pods=1, limited: pods=1" in p.stderr


def test_deployment_beyond_quota_reports_failed_create(kubectl, ns):
    create_quota(kubectl, ns, "pods", {"pods": "1"})
    kubectl.run("create", "deployment", "web", "-n", ns, "--image=busybox", "--replicas=3")

    def failure():
        rss = kubectl.json("get", "rs", "-n", ns)["items"]
        for rs in rss:
            for c in rs.get("status", {}).get("conditions", []):
                if c["type"] == "ReplicaFailure":
                    return c
        return None

    c = wait_for("ReplicaFailure", failure)
    assert c["status"] == "True" and c["reason"] == "FailedCreate"
    assert "is forbidden: exceeded quota: pods, requested: pods=1, used: pods=1, limited: pods=1" in c["message"]
    events = wait_for("FailedCreate event", lambda: [
        e for e in kubectl.json("get", "events", "-n", ns)["items"] if e["reason"] == "FailedCreate"])
    assert events[0]["message"].startswith('Error creating: pods "web-')
    assert "exceeded quota: pods" in events[0]["message"]
    d = wait_for("deployment condition", lambda: [
        c for c in kubectl.json("get", "deploy", "web", "-n", ns).get("status", {}).get("conditions", [])
        if c["type"] == "ReplicaFailure"])
    assert d[0]["reason"] == "FailedCreate"
    assert len(kubectl.json("get", "pods", "-n", ns)["items"]) == 1


def test_concurrent_creates_never_exceed_the_quota(kubectl, ns, api_client):
    create_quota(kubectl, ns, "pods", {"pods": "5", "count/secrets": "3"})
    core = client.CoreV1Api(api_client)
    results = []
    lock = threading.Lock()

    def create(i):
        try:
            core.create_namespaced_pod(ns, {"metadata": {"name": f"p{i}"},
                                            "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
            r = 201
        except ApiException as e:
            r = e.status
        try:
            core.create_namespaced_secret(ns, {"metadata": {"name": f"cm{i}"}})
            r2 = 201
        except ApiException as e:
            r2 = e.status
        with lock:
            results.append((r, r2))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r for r, _ in results) == [201] * 5 + [403] * 11
    assert sorted(r for _, r in results) == [201] * 3 + [403] * 13
    assert len(core.list_namespaced_pod(ns).items) == 5
    cms = [c for c in core.list_namespaced_secret(ns).items if c.metadata.name.startswith("cm")]
    assert len(cms) == 3
    used = quota_used(kubectl, ns, "pods")
    assert used["pods"] == "5" and used["count/secrets"] == "3"


def race_pod_creates(cores, ns, n):
    """Creates pods p0..p<n-1> at once, round-robin over the API clients; their statuses."""
    results = []
    lock = threading.Lock()

    def create(i):
        try:
            cores[i % len(cores)].create_namespaced_pod(
                ns, {"metadata": {"name": f"p{i}"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
            r = 201
        except ApiException as e:
            r = e.status
        with lock:
            results.append(r)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results)


@pytest.mark.skipif(not ETCD, reason="CORRAL_TEST_ETCD is not set (scripts/test.sh starts an etcd and sets it)")
def test_concurrent_creates_through_two_servers_sharing_etcd():
    # The quota's compare-and-swap holds across API servers: the store is the arbiter.
    servers, clients = [], []
    try:
        for extra in ([], ["--disable-controllers", "--disable-scheduler"]):
            servers.append(Server(extra_args=["--datastore-endpoint", ETCD, *extra]).start())
        ka = Kubectl(servers[0])
        ns = "q-" + uuid.uuid4().hex[:8]
        ka("create", "namespace", ns)
        create_quota(ka, ns, "pods", {"pods": "6"})
        clients = [client.ApiClient(configuration=_py_config(s)) for s in servers]
        cores = [client.CoreV1Api(c) for c in clients]
        assert race_pod_creates(cores, ns, 24) == [201] * 6 + [403] * 18
        assert len(cores[1].list_namespaced_pod(ns).items) == 6
        assert quota_used(ka, ns, "pods") == {"pods": "6"}
        ka.run("delete", "namespace", ns, "--wait=false", check=False)
        ka.cleanup()
    finally:
        for c in clients:
            c.close()
        for s in servers:
            s.cleanup()


def test_count_deployments_apps(kubectl, ns):
    create_quota(kubectl, ns, "deploys", {"count/deployments.apps": "1"})
    kubectl.run("create", "deployment", "a", "-n", ns, "--image=busybox", "--replicas=0")
    p = kubectl.run("create", "deployment", "b", "-n", ns, "--image=busybox", check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == (
        'error: failed to create deployment: deployments.apps "b" is forbidden: exceeded quota: deploys, '
        "requested: count/deployments.apps=1, used: count/deployments.apps=1, limited: count/deployments.apps=1"
    )
    # A dry run is checked but charges nothing.
    p = kubectl.run("create", "deployment", "c", "-n", ns, "--image=busybox", "--dry-run=server", check=False)
    assert p.returncode == 1 and "exceeded quota: deploys" in p.stderr
    kubectl.run("delete", "deployment", "a", "-n", ns)
    wait_for("deployment freed", lambda: quota_used(kubectl, ns, "deploys") == {"count/deployments.apps": "0"})
    kubectl.run("create", "deployment", "b", "-n", ns, "--image=busybox", "--replicas=0")


def test_malformed_and_negative_quantities(kubectl, ns, api_client):
    p = kubectl.run("create", "-n", ns, "-f", "-", check=False, input=(
        "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: bad\nspec:\n  hard:\n    pods: abc\n"))
    assert p.returncode == 1
    # Kubernetes refuses a quantity it cannot decode with a 400 from its decoder.
    assert p.stderr.strip() == (
        'Error from server (BadRequest): error when creating "STDIN": ResourceQuota in version "v1" '
        "cannot be handled as a ResourceQuota: quantities must match the regular expression "
        "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )
    core = client.CoreV1Api(api_client)
    with pytest.raises(ApiException) as e:
        core.create_namespaced_resource_quota(ns, {"metadata": {"name": "neg"}, "spec": {"hard": {"pods": "-1"}}})
    assert e.value.status == 422
    status = json.loads(e.value.body)
    assert status["reason"] == "Invalid"
    assert status["details"]["causes"] == [{
        "reason": "FieldValueInvalid",
        "message": 'Invalid value: "-1": must be greater than or equal to 0',
        "field": "spec.hard[pods]",
    }]
    assert status["message"] == (
        'ResourceQuota "neg" is invalid: spec.hard[pods]: Invalid value: "-1": must be greater than or equal to 0')
    with pytest.raises(ApiException) as e:
        core.create_namespaced_pod(ns, {"metadata": {"name": "x"}, "spec": {"containers": [
            {"name": "c", "image": "busybox", "resources": {"limits": {"cpu": "lots"}}}]}})
    assert e.value.status == 400
    assert kubectl("get", "resourcequota", "-n", ns, "-o", "name") == ""


def test_claim_storage_quota_and_limits(kubectl, ns):
    kubectl.run("apply", "-n", ns, "-f", "-", input=(
        "apiVersion: v1\nkind: LimitRange\nmetadata:\n  name: storage\nspec:\n  limits:\n"
        "  - type: PersistentVolumeClaim\n    max: {storage: 2Gi}\n    min: {storage: 100Mi}\n"))
    create_quota(kubectl, ns, "storage", {"requests.storage": "3Gi", "persistentvolumeclaims": "5"})

    def claim(name, size):
        return (f"apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {name}\nspec:\n"
                f"  accessModes: [ReadWriteOnce]\n  storageClassName: none\n"
                f"  resources:\n    requests:\n      storage: {size}\n")

    p = kubectl.run("create", "-n", ns, "-f", "-", check=False, input=claim("huge", "5Gi"))
    assert p.returncode == 1
    assert p.stderr.strip().endswith(
        'persistentvolumeclaims "huge" is forbidden: maximum storage usage per PersistentVolumeClaim is 2Gi, '
        "but request is 5Gi")
    kubectl.run("create", "-n", ns, "-f", "-", input=claim("a", "2Gi"))
    p = kubectl.run("create", "-n", ns, "-f", "-", check=False, input=claim("b", "1536Mi"))
    assert p.returncode == 1
    assert p.stderr.strip().endswith(
        'persistentvolumeclaims "b" is forbidden: exceeded quota: storage, requested: requests.storage=1536Mi, '
        "used: requests.storage=2Gi, limited: requests.storage=3Gi")
    kubectl.run("create", "-n", ns, "-f", "-", input=claim("b", "1Gi"))
    assert quota_used(kubectl, ns, "storage") == {"persistentvolumeclaims": "2", "requests.storage": "3Gi"}
