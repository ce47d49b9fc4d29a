"""Two corral servers sharing one etcd (`--datastore-endpoint`): what is written through one
is read and watched through the other. Needs CORRAL_TEST_ETCD (an etcd endpoint; the test
command starts one) and a binary built with `--features etcd`; skipped otherwise, with the
reason. Each server keeps its own data dir (and so its own CA and kubeconfig); only the
objects are shared."""

import json
import signal
import time
import os
import shutil
import subprocess
import tempfile
import threading
import uuid

import pytest

from conftest import Kubectl, Server, corral_binary, wait_for
from test_bad_input import Raw
from test_watch import stream

ENDPOINT = os.environ.get("CORRAL_TEST_ETCD", "")


def binary_has_etcd():
    """Whether the binary under test was built with the etcd backend: one without it refuses
    --datastore-endpoint at once and says so."""
    d = tempfile.mkdtemp(prefix="corral-e2e-probe-")
    try:
        p = subprocess.run(
            [corral_binary(), "server", "--data-dir", d, "--https-port", "0",
             "--datastore-endpoint", "http://127.0.0.1:1"],
            capture_output=True, text=True, timeout=30,
        )
        return "no etcd backend" not in p.stdout + p.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)


pytestmark = [
    pytest.mark.skipif(not ENDPOINT, reason="CORRAL_TEST_ETCD is not set (scripts/test.sh starts an etcd and sets it)"),
    pytest.mark.skipif(bool(ENDPOINT) and not binary_has_etcd(),
                       reason="the corral binary was built without --features etcd"),
]


@pytest.fixture(scope="module")
def pair():
    servers = []
    try:
        # Both run controllers and the scheduler; leader election lets only one act.
        for _ in range(2):
            servers.append(Server(extra_args=["--datastore-endpoint", ENDPOINT]).start())
        yield servers
    finally:
        for s in servers:
            s.cleanup()


def test_two_servers_share_objects_and_watches(pair):
    a, b = pair
    ka, kb = Kubectl(a), Kubectl(b)
    rb = Raw(b)
    try:
        ns = "etcd-" + uuid.uuid4().hex[:8]
        ka("create", "namespace", ns)
        ka("create", "configmap", "shared", "-n", ns, "--from-literal=from=a")

        # Read through B: the same object, at the same resourceVersion.
        via_a = ka.json("get", "configmap", "shared", "-n", ns)
        via_b = kb.json("get", "configmap", "shared", "-n", ns)
        assert via_b["data"] == {"from": "a"}
        assert via_b["metadata"]["uid"] == via_a["metadata"]["uid"]
        assert via_b["metadata"]["resourceVersion"] == via_a["metadata"]["resourceVersion"]
        rv = via_b["metadata"]["resourceVersion"]

        # Watch through B from that resourceVersion while A changes and deletes it.
        base = f"/api/v1/namespaces/{ns}/configmaps"
        got = {}

        def watch():
            got["events"] = stream(
                rb, f"{base}?watch=true&resourceVersion={rv}&timeoutSeconds=20&fieldSelector=metadata.name%3Dshared",
                until=lambda evs: any(e["type"] == "DELETED" for e in evs), timeout=25)

        t = threading.Thread(target=watch)
        t.start()
        ka("patch", "configmap", "shared", "-n", ns, "--type=merge", "-p",
           json.dumps({"data": {"from": "a-again"}}))
        ka("delete", "configmap", "shared", "-n", ns)
        t.join(30)
        events = [(e["type"], e["object"]["data"].get("from")) for e in got.get("events", [])
                  if e["type"] != "BOOKMARK"]
        assert events == [("MODIFIED", "a-again"), ("DELETED", "a-again")], got

        # And the other way round: created through B, gone for A too after B deletes it.
        kb("create", "configmap", "back", "-n", ns, "--from-literal=from=b")
        assert ka.json("get", "configmap", "back", "-n", ns)["data"] == {"from": "b"}
        kb("delete", "configmap", "back", "-n", ns)
        p = ka.run("get", "configmap", "back", "-n", ns, check=False)
        assert p.returncode != 0 and "NotFound" in p.stderr, p.stderr
        ka("delete", "namespace", ns, "--wait=false")
    finally:
        ka.cleanup()
        kb.cleanup()
        shutil.rmtree(rb.tmp, ignore_errors=True)


def test_unreachable_etcd_is_a_clear_error():
    s = Server(extra_args=["--datastore-endpoint", "http://127.0.0.1:1"])
    try:
        s.start(wait=False)
        code = s.proc.wait(timeout=30)
        assert code != 0
        out = open(s.log_path, errors="replace").read()
        assert "cannot reach etcd at http://127.0.0.1:1" in out, out
    finally:
        s.cleanup()


def leaders(servers, lease):
    def log(s):
        with open(s.log_path, "rb") as f:
            return strip_ansi(f.read().decode(errors="replace"))
    return [s for s in servers if f"became leader lease={lease}" in log(s)]


def strip_ansi(text):
    import re
    return re.sub(r"\x1b\[[0-9;]*m", "", text)



def test_leader_election_one_controller_manager_and_failover(pair):
    """Two servers with controllers and schedulers on one etcd: exactly one of each leads
    (Leases kube-controller-manager and kube-scheduler in kube-system), a Deployment gets
    one ReplicaSet and its replicas once, and when the leader dies the other takes over.
    (The last test of the pair: it kills one of them.)"""
    servers = pair
    k = Kubectl(servers[1])
    try:
        for lease in ("kube-controller-manager", "kube-scheduler"):
            wait_for(f"a {lease} leader", lambda: leaders(servers, lease), timeout=40)
        lead = leaders(servers, "kube-controller-manager")
        assert len(lead) == 1, "both servers lead the controllers"
        holder = k.json("get", "lease", "kube-controller-manager", "-n", "kube-system")["spec"]
        assert holder["holderIdentity"] and holder["leaseDurationSeconds"] == 15
        ns = "lead-" + uuid.uuid4().hex[:8]
        k("create", "namespace", ns)
        k("create", "deployment", "web", "--image=busybox-web:1", "--replicas=3", "-n", ns)
        wait_for("3 pods", lambda: len(k.json("get", "pods", "-n", ns)["items"]) == 3, timeout=30)
        time.sleep(3)  # a second controller manager would have doubled them by now
        assert len(k.json("get", "replicasets", "-n", ns)["items"]) == 1
        assert len(k.json("get", "pods", "-n", ns)["items"]) == 3

        leader = lead[0]
        survivor = servers[1 - servers.index(leader)]
        leader.stop(sig=signal.SIGKILL)  # no release: the survivor waits out the lease
        ks = Kubectl(survivor)
        try:
            wait_for("the survivor to lead", lambda: survivor in leaders([survivor], "kube-controller-manager"), timeout=40)
            new_holder = ks.json("get", "lease", "kube-controller-manager", "-n", "kube-system")["spec"]
            assert new_holder["holderIdentity"] != holder["holderIdentity"]
            assert new_holder["leaseTransitions"] >= 1
            ks("scale", "deployment", "web", "--replicas=5", "-n", ns)
            wait_for("5 pods", lambda: len(ks.json("get", "pods", "-n", ns)["items"]) == 5, timeout=30)
            ks("delete", "namespace", ns, "--wait=false")
        finally:
            ks.cleanup()
    finally:
        k.cleanup()
