"""End-to-end tests of the node agent: real pods from busybox test images, run by the agent
inside `corral server`, driven with the real kubectl and the official Python client.

The module starts its own server with the agent on a bridge and pod range of its own
(corral-t<N>, 10.244.<N>.0/24), imports the test images that tests/images/build.py builds
from Debian's busybox-static, and talks HTTP only to pod addresses on that bridge. Every
test works in its own namespace and deletes its pods; at the end the module checks that
the runtime holds nothing, then removes the bridge and the cgroups it made. Needs root
(namespaces, cgroups, bridges); skips with a message otherwise."""

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

import pytest

from conftest import free_port, wait_for, Kubectl, Server, _py_config, corral_binary

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the node agent needs root for namespaces, cgroups and bridges"
)


@pytest.fixture
def pns(node):
    with node.namespace("p-") as name:
        yield name


@pytest.fixture
def core(node):
    from kubernetes import client

    api = client.ApiClient(configuration=_py_config(node.server))
    yield client.CoreV1Api(api)
    api.close()


def apply(kc, ns, manifest):
    kc.run("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))


def pod(name, node, containers, **spec):
    spec = dict(spec)
    spec["containers"] = containers
    spec.setdefault("terminationGracePeriodSeconds", 2)
    if node is not None:
        spec["nodeName"] = node.node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def get_pod(kc, ns, name):
    return kc.json("get", "pod", name, "-n", ns)


def cstatus(p, i=0):
    return (p.get("status", {}).get("containerStatuses") or [{}])[i]


def http_get(ip, port=8080, path="/"):
    with urllib.request.urlopen(f"http://{ip}:{port}{path}", timeout=5) as r:
        return r.read().decode()


def ready_pods(kc, ns, selector):
    items = kc.json("get", "pods", "-n", ns, "-l", selector)["items"]
    ok = []
    for p in items:
        if p["metadata"].get("deletionTimestamp"):
            continue
        conds = {c["type"]: c["status"] for c in p.get("status", {}).get("conditions", [])}
        if conds.get("Ready") == "True":
            ok.append(p)
    return ok


def test_node_registered(node, kc):
    n = kc.json("get", "node", node.node_name)
    st = n["status"]
    assert int(st["capacity"]["cpu"]) == os.cpu_count()
    assert st["capacity"]["pods"] == "110"
    assert st["capacity"]["memory"].endswith("Ki")
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Ready"]["reason"] == "KubeletReady"
    for t in ("MemoryPressure", "DiskPressure", "PIDPressure"):
        assert conds[t]["status"] == "False"
    assert st["nodeInfo"]["kubeletVersion"] == "v1.33.0"
    assert st["nodeInfo"]["containerRuntimeVersion"].startswith("corral://")
    assert st["daemonEndpoints"]["kubeletEndpoint"]["Port"] == node.kubelet_port
    assert {a["type"] for a in st["addresses"]} >= {"InternalIP", "Hostname"}
    assert n["spec"]["podCIDR"] == node.cidr
    lease = kc.json("get", "lease", node.node_name, "-n", "kube-node-lease")
    assert lease["spec"]["holderIdentity"] == node.node_name
    first = lease["spec"]["renewTime"]
    wait_for(
        "the lease to be renewed",
        lambda: kc.json("get", "lease", node.node_name, "-n", "kube-node-lease")["spec"]["renewTime"] != first,
        timeout=30,
    )
    out = kc("get", "nodes")
    assert node.node_name in out and "Ready" in out


def test_deployment_serves_http_and_scales(node, kc, pns):
    kc.run("create", "deployment", "web", "-n", pns, "--image=busybox-web:1", "--replicas=3", "--port=8080")
    kc.run("rollout", "status", "deploy/web", "-n", pns, "--timeout=120s", timeout=150)
    pods = wait_for("3 ready pods", lambda: len(ready_pods(kc, pns, "app=web")) == 3 and ready_pods(kc, pns, "app=web"))
    prefix = f"10.244.{node.n}."
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 3, ips
    for p in pods:
        ip = p["status"]["podIP"]
        assert ip.startswith(prefix), ip
        assert http_get(ip).strip() == "web v1"
        st = cstatus(p)
        assert st["ready"] and st["started"] and "running" in st["state"]
        assert st["containerID"].startswith("corral://")
        assert st["imageID"].startswith("docker.io/library/busybox-web@sha256:")
        assert p["status"]["phase"] == "Running"
        assert p["status"]["qosClass"] == "BestEffort"
    kc.run("scale", "deploy/web", "-n", pns, "--replicas=5")
    pods = wait_for("5 ready pods", lambda: len(ready_pods(kc, pns, "app=web")) == 5 and ready_pods(kc, pns, "app=web"))
    for p in pods:
        assert http_get(p["status"]["podIP"]).strip() == "web v1"
    kc.run("scale", "deploy/web", "-n", pns, "--replicas=2")
    wait_for(
        "exactly 2 pods left",
        lambda: len(kc.json("get", "pods", "-n", pns, "-l", "app=web")["items"]) == 2,
        timeout=90,
    )
    left = ready_pods(kc, pns, "app=web")
    assert len(left) == 2
    for p in left:
        assert http_get(p["status"]["podIP"]).strip() == "web v1"


def test_missing_image(node, kc, pns):
    apply(kc, pns, pod("nope", node, [{"name": "c", "image": "busybox-missing:1"}]))

    def pulled_failed():
        st = cstatus(get_pod(kc, pns, "nope"))
        w = st.get("state", {}).get("waiting", {})
        return w if w.get("reason") in ("ErrImagePull", "ImagePullBackOff") else None

    w = wait_for("ErrImagePull", pulled_failed)
    assert "corral image import" in w["message"]
    assert "busybox-missing:1" in w["message"]
    wait_for(
        "ImagePullBackOff",
        lambda: cstatus(get_pod(kc, pns, "nope"))["state"].get("waiting", {}).get("reason") == "ImagePullBackOff",
    )
    events = kc.json("get", "events", "-n", pns)["items"]
    assert any(
        e["type"] == "Warning" and e["reason"] == "Failed" and "corral image import" in e["message"]
        for e in events
    ), events
    assert get_pod(kc, pns, "nope")["status"]["phase"] == "Pending"


def test_command_not_found(node, kc, pns):
    apply(kc, pns, pod("nocmd", node, [{"name": "c", "image": "busybox:test", "command": ["no-such-command"]}],
                       restartPolicy="Never"))
    p = wait_for("the pod to fail", lambda: (lambda p: p["status"].get("phase") == "Failed" and p)(get_pod(kc, pns, "nocmd")))
    t = cstatus(p)["state"]["terminated"]
    assert t["reason"] == "StartError"
    assert t["exitCode"] == 128
    assert "no-such-command" in t["message"] and "not found" in t["message"]


def test_crash_loop_backoff(node, kc, pns):
    apply(kc, pns, pod("crash", node, [{"name": "c", "image": "busybox:test", "command": ["sh", "-c", "exit 3"]}]))

    def backing_off():
        st = cstatus(get_pod(kc, pns, "crash"))
        return st if st.get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff" else None

    st = wait_for("CrashLoopBackOff", backing_off)
    assert st["lastState"]["terminated"]["exitCode"] == 3
    assert st["lastState"]["terminated"]["reason"] == "Error"
    assert "back-off 10s restarting failed container=c" in st["state"]["waiting"]["message"]
    first = st["restartCount"]
    assert first >= 1
    st = wait_for(
        "another restart after the back-off",
        lambda: (lambda s: s["restartCount"] > first and s)(cstatus(get_pod(kc, pns, "crash"))),
        timeout=60,
    )
    wait_for(
        "a longer back-off",
        lambda: "back-off 20s" in cstatus(get_pod(kc, pns, "crash"))["state"].get("waiting", {}).get("message", ""),
        timeout=30,
    )
    events = kc.json("get", "events", "-n", pns, "--field-selector", "involvedObject.name=crash")["items"]
    assert any(e["reason"] == "BackOff" for e in events), [e["reason"] for e in events]


def test_oom_killed(node, kc, pns):
    apply(kc, pns, pod("oom", node, [{
        "name": "c", "image": "busybox:test",
        "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        "resources": {"limits": {"memory": "16Mi"}},
    }], restartPolicy="Never"))
    p = wait_for("the pod to fail", lambda: (lambda p: p["status"].get("phase") == "Failed" and p)(get_pod(kc, pns, "oom")))
    t = cstatus(p)["state"]["terminated"]
    assert t["reason"] == "OOMKilled", t
    assert t["exitCode"] == 137


def test_liveness_probe_restarts(node, kc, pns):
    apply(kc, pns, pod("live", node, [{
        "name": "c", "image": "busybox:test",
        "command": ["sh", "-c", "touch /tmp/healthy; sleep 2; rm /tmp/healthy; sleep 600"],
        "livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 2},
    }], terminationGracePeriodSeconds=1))
    st = wait_for(
        "a restart by the liveness probe",
        lambda: (lambda s: s.get("restartCount", 0) >= 1 and s)(cstatus(get_pod(kc, pns, "live"))),
        timeout=60,
    )
    assert st["lastState"]["terminated"]["exitCode"] == 137
    events = kc.json("get", "events", "-n", pns, "--field-selector", "involvedObject.name=live")["items"]
    msgs = [e["message"] for e in events]
    assert any("Liveness probe failed" in m for m in msgs), msgs
    assert any("failed liveness probe, will be restarted" in m for m in msgs), msgs


def test_readiness_probe_gates_ready(node, kc, pns, core):
    apply(kc, pns, pod("gate", node, [{
        "name": "c", "image": "busybox:test",
        "command": ["sh", "-c", "sleep 4; touch /tmp/ready; sleep 600"],
        "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1},
    }]))
    p = wait_for("running", lambda: core.read_namespaced_pod("gate", pns).status.phase == "Running" and core.read_namespaced_pod("gate", pns))
    conds = {c.type: c for c in p.status.conditions}
    assert conds["Ready"].status == "False"
    assert conds["Ready"].reason == "ContainersNotReady"
    assert p.status.container_statuses[0].ready is False
    wait_for(
        "Ready after the probe passes",
        lambda: any(c.type == "Ready" and c.status == "True" for c in core.read_namespaced_pod("gate", pns).status.conditions),
        timeout=30,
    )
    # An HTTP readiness probe against the pod's address.
    apply(kc, pns, pod("webready", node, [{
        "name": "web", "image": "busybox-web:1", "ports": [{"containerPort": 8080, "name": "http"}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }]))
    wait_for(
        "the web pod Ready",
        lambda: cstatus(get_pod(kc, pns, "webready")).get("ready") is True,
    )


def test_env_volumes_and_init_containers(node, kc, pns):
    kc.run("create", "configmap", "cfg", "-n", pns, "--from-literal=greeting=hello", "--from-literal=file.txt=from-configmap")
    kc.run("create", "secret", "generic", "sec", "-n", pns, "--from-literal=password=s3cret")
    manifest = pod("envs", node, [{
        "name": "main", "image": "busybox:test",
        "command": ["sh", "-c", "echo GREETING=$GREETING; echo PW=$PW; echo NAME=$POD_NAME; echo MEM=$MEM; "
                    "echo ARG=$(GREETING); cat /cfg/file.txt; echo; cat /sec/password; echo; "
                    "cat /work/init.txt; cat /info/labels; echo; id -u; pwd"],
        "workingDir": "/work",
        "env": [
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        ],
        "resources": {"limits": {"memory": "32Mi"}},
        "securityContext": {"runAsUser": 65534},
        "volumeMounts": [
            {"name": "cfg", "mountPath": "/cfg"},
            {"name": "sec", "mountPath": "/sec"},
            {"name": "work", "mountPath": "/work"},
            {"name": "info", "mountPath": "/info"},
        ],
    }], restartPolicy="Never",
        initContainers=[{
            "name": "init", "image": "busybox:test",
            "command": ["sh", "-c", "echo from-init > /work/init.txt"],
            "volumeMounts": [{"name": "work", "mountPath": "/work"}],
        }],
        volumes=[
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "sec", "secret": {"secretName": "sec"}},
            {"name": "work", "emptyDir": {}},
            {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
        ])
    manifest["metadata"]["labels"] = {"app": "envs"}
    apply(kc, pns, manifest)
    p = wait_for("the pod to succeed", lambda: (lambda p: p["status"].get("phase") == "Succeeded" and p)(get_pod(kc, pns, "envs")), timeout=60)
    init = p["status"]["initContainerStatuses"][0]
    assert init["state"]["terminated"]["reason"] == "Completed"
    uid = p["metadata"]["uid"]
    log = os.path.join(node.data_dir, "pods", f"{pns}_envs_{uid}", "main", "0.log")
    lines = [l.split(" ", 3)[3] for l in open(log).read().splitlines()]
    assert "GREETING=hello" in lines
    assert "PW=s3cret" in lines
    assert "NAME=envs" in lines
    assert "MEM=32" in lines
    assert "ARG=hello" in lines
    assert "from-configmap" in lines
    assert "s3cret" in lines
    assert "from-init" in lines
    assert 'app="envs"' in lines
    assert "65534" in lines
    assert "/work" in lines


def test_graceful_delete_leaves_nothing(node, kc, pns):
    marks = tempfile.mkdtemp(prefix="corral-test-marks-")
    try:
        apply(kc, pns, pod("bye", node, [{
            "name": "c", "image": "busybox:test",
            "command": ["sh", "-c", "trap 'echo TERM > /marks/term; exit 0' TERM; while true; do sleep 0.2; done"],
            "volumeMounts": [{"name": "marks", "mountPath": "/marks"}],
            "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo prestop > /marks/prestop"]}}},
        }], volumes=[{"name": "marks", "hostPath": {"path": marks}}], terminationGracePeriodSeconds=20))
        p = wait_for("running", lambda: (lambda p: cstatus(p).get("ready") and p)(get_pod(kc, pns, "bye")))
        uid = p["metadata"]["uid"]
        cid = cstatus(p)["containerID"].removeprefix("corral://")
        pid = node.container_pid(cid)
        os.kill(pid, 0)
        with open(os.path.join(node.runtime, "sandboxes", uid, "sandbox.json")) as f:
            veth = json.load(f)["host_veth"]
        assert os.path.exists(f"/sys/class/net/{veth}")
        assert node.cgroup_dirs(cid)
        kc.run("delete", "pod", "bye", "-n", pns, timeout=60)
        with pytest.raises(AssertionError):
            get_pod(kc, pns, "bye")
        assert open(os.path.join(marks, "prestop")).read().strip() == "prestop"
        assert open(os.path.join(marks, "term")).read().strip() == "TERM"
        wait_for("the process to be gone", lambda: not os.path.exists(f"/proc/{pid}"), timeout=10)
        assert not os.path.exists(f"/sys/class/net/{veth}")
        assert cid not in node.containers()
        assert uid not in node.sandboxes()
        assert not node.cgroup_dirs(cid)
        mounts = [l.split()[4] for l in open("/proc/self/mountinfo")]
        assert not [m for m in mounts if uid in m], mounts
        assert not os.path.exists(os.path.join(node.data_dir, "pods", f"{pns}_bye_{uid}"))
        assert not os.path.exists(os.path.join(node.data_dir, "pods", uid))
    finally:
        shutil.rmtree(marks, ignore_errors=True)


def test_server_restart_keeps_pods(node, kc, pns):
    apply(kc, pns, pod("keep", node, [{"name": "web", "image": "busybox-web:1"}]))
    before = wait_for("running", lambda: (lambda p: cstatus(p).get("ready") and p)(get_pod(kc, pns, "keep")))
    st = cstatus(before)
    pid = node.container_pid(st["containerID"].removeprefix("corral://"))
    ip = before["status"]["podIP"]
    assert http_get(ip).strip() == "web v1"
    node.server.stop()
    os.kill(pid, 0)  # still running without the server
    node.server.start()
    time.sleep(3)  # give the agent time to adopt (and, were it wrong, to restart)
    after = wait_for("status readable", lambda: get_pod(kc, pns, "keep"))
    st2 = cstatus(after)
    assert st2["containerID"] == st["containerID"]
    assert st2["restartCount"] == st["restartCount"]
    assert st2["state"] == st["state"]
    assert st2["ready"] is True
    assert after["status"]["podIP"] == ip
    assert node.container_pid(st["containerID"].removeprefix("corral://")) == pid
    os.kill(pid, 0)
    assert http_get(ip).strip() == "web v1"


def test_logs_exec_and_port_forward_reach_the_container(node, kc, pns):
    """kubectl logs, exec (exit codes, stdin) and port-forward on a real pod: the API server
    proxies to this node's kubelet API, which reaches the container."""
    kc("create", "deployment", "stream", "--image=busybox-web:1", "-n", pns)
    kc("rollout", "status", "deploy/stream", "-n", pns, "--timeout=90s")
    name = kc("get", "pods", "-n", pns, "-l", "app=stream", "-o", "jsonpath={.items[0].metadata.name}").strip()
    p = kc.run("exec", "-n", pns, name, "--", "sh", "-c", "hostname; exit 3", check=False)
    assert p.returncode == 3 and p.stdout.strip() == name, (p.returncode, p.stdout, p.stderr)
    out = kc("exec", "-i", "-n", pns, name, "--", "sh", "-c", "cat > /tmp/in; cat /tmp/in", input="piped\n")
    assert out == "piped\n"
    kc("exec", "-n", pns, name, "--", "sh", "-c", "echo to-the-log > /proc/1/fd/1")
    wait_for("the log line", lambda: "to-the-log" in kc("logs", "-n", pns, name))
    assert "Z to-the-log" in kc("logs", "--timestamps", "-n", pns, name)
    port = free_port()
    pf = subprocess.Popen(
        ["kubectl", "--cache-dir", kc.cache, "port-forward", "-n", pns, f"pod/{name}", f"{port}:8080"],
        env=kc.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        body = wait_for("a response through port-forward", lambda: http_get("127.0.0.1", port), timeout=30)
        assert "web v1" in body
    finally:
        pf.kill()
        pf.wait()
    kc("delete", "deploy/stream", "-n", pns)


def running_pod(kc, ns, name):
    """Waits until the pod's containers all run and returns it."""
    def running():
        p = get_pod(kc, ns, name)
        sts = p.get("status", {}).get("containerStatuses") or []
        return p if sts and all("running" in s.get("state", {}) for s in sts) else None

    return wait_for(f"pod {name} to run", running, timeout=60)


def sleeper(name, node, **container):
    c = {"name": "c", "image": "busybox:test", "command": ["sleep", "3600"]}
    c.update(container)
    return pod(name, node, [c], terminationGracePeriodSeconds=1)


def test_kubectl_cp_both_directions(node, kc, pns, tmp_path):
    """kubectl cp runs tar in the container over exec (stdin closed with the v5 CLOSE
    signal when copying in): a file and a directory go in and come back byte for byte."""
    apply(kc, pns, sleeper("cp", node))
    running_pod(kc, pns, "cp")
    data = bytes(range(256)) * 64 + os.urandom(100_000) + b"\x00\r\nend"
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    kc("cp", str(src), f"{pns}/cp:/tmp/blob.bin")
    size = kc("exec", "-n", pns, "cp", "--", "stat", "-c", "%s", "/tmp/blob.bin").strip()
    assert size == str(len(data))
    back = tmp_path / "back.bin"
    kc("cp", f"{pns}/cp:/tmp/blob.bin", str(back))
    assert back.read_bytes() == data

    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    files = {
        "top.txt": b"top level\n",
        "sub/a.txt": b"in a subdirectory\n",
        "sub/deeper/b.bin": os.urandom(5000),
        "sub/empty": b"",
    }
    for rel, content in files.items():
        (tree / rel).write_bytes(content)
    kc("cp", str(tree), f"{pns}/cp:/tmp/tree")
    listed = kc("exec", "-n", pns, "cp", "--", "find", "/tmp/tree", "-type", "f").split()
    assert sorted(listed) == sorted(f"/tmp/tree/{r}" for r in files)
    got = tmp_path / "got"
    kc("cp", f"{pns}/cp:/tmp/tree", str(got))
    for rel, content in files.items():
        assert (got / rel).read_bytes() == content, rel
    # A missing path copies nothing. (Whether kubectl prints tar's complaint, and its exit
    # code, race with its own end of the copy, so they are not checked.)
    kc.run("cp", f"{pns}/cp:/tmp/missing", str(tmp_path / "missing"), check=False)
    assert not (tmp_path / "missing").exists()
    kc("delete", "pod", "cp", "-n", pns, "--wait=false")


def test_security_context(node, kc, pns):
    """runAsUser, runAsNonRoot (refused for an image user root, exactly kubelet's
    message), readOnlyRootFilesystem with a writable emptyDir, allowPrivilegeEscalation
    false (no_new_privs) and capabilities drop ALL, seen from inside the container."""
    apply(kc, pns, sleeper("uid", node, securityContext={"runAsUser": 1000}))
    apply(kc, pns, sleeper("root", node, securityContext={"runAsNonRoot": True}))
    apply(kc, pns, sleeper("nonroot", node, securityContext={"runAsNonRoot": True, "runAsUser": 1000}))
    podsc = sleeper("podlevel", node)
    podsc["spec"]["securityContext"] = {"runAsUser": 2000, "runAsGroup": 3000}
    apply(kc, pns, podsc)
    ro = sleeper("ro", node, securityContext={"readOnlyRootFilesystem": True},
                 volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}])
    ro["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    apply(kc, pns, ro)
    apply(kc, pns, sleeper("locked", node, securityContext={
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}))
    apply(kc, pns, sleeper("plain", node))
    groups = sleeper("groups", node)
    groups["spec"]["securityContext"] = {"runAsUser": 1000, "supplementalGroups": [4000], "fsGroup": 5000}
    apply(kc, pns, groups)
    apply(kc, pns, sleeper("privileged", node, securityContext={"privileged": True}))

    def sh(name, script, check=True):
        return kc.run("exec", "-n", pns, name, "--", "sh", "-c", script, check=check)

    running_pod(kc, pns, "uid")
    assert sh("uid", "id -u; id -g").stdout.split() == ["1000", "0"]
    # The container's own process, not only exec sessions.
    assert "Uid:\t1000\t1000\t1000\t1000" in sh("uid", "cat /proc/1/status").stdout
    running_pod(kc, pns, "podlevel")
    assert sh("podlevel", "id -u; id -g").stdout.split() == ["2000", "3000"]
    running_pod(kc, pns, "groups")
    assert {"4000", "5000"} <= set(sh("groups", "id -G").stdout.split())
    running_pod(kc, pns, "privileged")
    caps = dict(l.split(":\t", 1) for l in sh("privileged", "cat /proc/self/status").stdout.splitlines() if ":\t" in l)
    assert int(caps["CapEff"], 16) & (1 << 21), caps  # CAP_SYS_ADMIN
    running_pod(kc, pns, "nonroot")
    assert sh("nonroot", "id -u").stdout.strip() == "1000"

    def config_error():
        p = get_pod(kc, pns, "root")
        w = cstatus(p).get("state", {}).get("waiting", {})
        return (p, w) if w.get("reason") == "CreateContainerConfigError" else None

    p, w = wait_for("CreateContainerConfigError", config_error)
    uid = p["metadata"]["uid"]
    assert w["message"] == (
        f'container has runAsNonRoot and image will run as root (pod: "root_{pns}({uid})", container: c)'
    )
    assert p["status"]["phase"] == "Pending"
    assert not cstatus(p).get("ready")
    events = kc.json("get", "events", "-n", pns, "--field-selector", "involvedObject.name=root")["items"]
    assert any(e["reason"] == "Failed" and e["message"] == "Error: " + w["message"] for e in events), events

    running_pod(kc, pns, "ro")
    denied = sh("ro", "touch /x", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied
    assert sh("ro", "echo ok > /scratch/f && cat /scratch/f").stdout == "ok\n"
    assert sh("plain", "touch /x && echo ok").stdout == "ok\n"

    running_pod(kc, pns, "locked")
    for target in ("self", "1"):
        status = sh("locked", f"cat /proc/{target}/status").stdout
        fields = dict(l.split(":\t", 1) for l in status.splitlines() if ":\t" in l)
        assert fields["NoNewPrivs"].strip() == "1", status
        assert fields["CapEff"].strip() == "0000000000000000", status
        assert fields["CapBnd"].strip() == "0000000000000000", status
    plain = dict(l.split(":\t", 1) for l in sh("plain", "cat /proc/self/status").stdout.splitlines() if ":\t" in l)
    assert plain["NoNewPrivs"].strip() == "0"
    assert plain["CapEff"].strip() != "0000000000000000"
    kc("delete", "pods", "--all", "-n", pns, "--wait=false")


def read_until(stream, want, timeout=30):
    """Reads a Popen stream (by its descriptor: no buffering of our own that select
    cannot see) until what was read contains `want`; returns what was read."""
    import select

    seen = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        r, _, _ = select.select([stream], [], [], 0.2)
        if r:
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                break
            seen += chunk
            if want.encode() in seen:
                return seen.decode()
    raise AssertionError(f"no {want!r} in output: {seen!r}")


def test_kubectl_attach(node, kc, pns):
    """kubectl attach -i reaches a running container's own stdin and output; leaving
    detaches without stopping it; with stdinOnce the container's stdin closes when the
    first session ends (cat exits and the pod completes), as `kubectl run -i --rm` needs."""
    apply(kc, pns, pod("cat", node, [{
        "name": "c", "image": "busybox:test", "stdin": True,
        "command": ["sh", "-c", "echo started; while read l; do echo got:$l; echo err:$l >&2; done"],
    }]))
    running_pod(kc, pns, "cat")
    wait_for("the first line", lambda: "started" in kc("logs", "-n", pns, "cat"))
    for round_ in ("one", "two"):
        a = subprocess.Popen(
            ["kubectl", "--cache-dir", kc.cache, "attach", "-i", "-n", pns, "cat", "-c", "c"],
            env=kc.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1,
        )
        try:
            # Input sent before the stream is up waits in the pipe; send until echoed.
            def echoed():
                a.stdin.write(f"{round_}\n")
                a.stdin.flush()
                return read_until(a.stdout, f"got:{round_}", timeout=2)

            wait_for(f"{round_} echoed through attach", echoed, timeout=30, interval=0)
            read_until(a.stderr, f"err:{round_}")
        finally:
            a.kill()
            a.wait()
        # Detaching leaves the container running, ready for the next session.
        p = get_pod(kc, pns, "cat")
        assert "running" in cstatus(p)["state"] and cstatus(p)["restartCount"] == 0, p["status"]
    assert "got:one" in kc("logs", "-n", pns, "cat")

    # A container without stdin: attach streams its output only.
    apply(kc, pns, pod("ticker", node, [{
        "name": "c", "image": "busybox:test",
        "command": ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"],
    }]))
    running_pod(kc, pns, "ticker")
    t = subprocess.Popen(
        ["kubectl", "--cache-dir", kc.cache, "attach", "-n", pns, "ticker"],
        env=kc.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        read_until(t.stdout, "tick")
    finally:
        t.kill()
        t.wait()

    # stdinOnce (what `kubectl run -i` creates): the end of the first session's input is
    # the container's end of input.
    p = kc.run(
        "run", "once", "-n", pns, "-i", "--rm", "--restart=Never", "--image=busybox:test",
        f"--overrides={json.dumps({'spec': {'nodeName': node.node_name, 'terminationGracePeriodSeconds': 1}})}",
        "--", "sh", "-c", "while read l; do echo line:$l; done; echo bye",
        input="alpha\nbeta\n", timeout=90,
    )
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "line:alpha\nline:beta\nbye" in p.stdout, (p.stdout, p.stderr)
    wait_for("the --rm pod to be deleted", lambda: not kc.json("get", "pods", "-n", pns, "--field-selector", "metadata.name=once")["items"], timeout=60)
    kc("delete", "pod", "cat", "ticker", "-n", pns, "--wait=false")


def test_kubectl_attach_tty(node, kc, pns):
    """kubectl attach -it to a shell on a terminal (what kubectl run -it gives): typed
    input reaches the container's terminal, whose output comes back."""
    import select

    apply(kc, pns, pod("tty", node, [{
        "name": "c", "image": "busybox:test", "stdin": True, "tty": True, "command": ["sh"],
    }]))
    running_pod(kc, pns, "tty")
    master, slave = os.openpty()
    a = subprocess.Popen(
        ["kubectl", "--cache-dir", kc.cache, "attach", "-it", "-n", pns, "tty"],
        env=kc.env(), stdin=slave, stdout=slave, stderr=slave,
    )
    os.close(slave)
    out = b""
    try:
        deadline = time.time() + 30
        next_send = 0
        while b"hi-2" not in out and time.time() < deadline:
            if time.time() >= next_send:
                # Until the session is up, input may be lost: send again now and then.
                os.write(master, b"echo hi-$((1+1))\r")
                next_send = time.time() + 3
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                out += os.read(master, 4096)
        assert b"hi-2" in out, out
    finally:
        a.kill()
        a.wait()
        os.close(master)
    assert "running" in cstatus(get_pod(kc, pns, "tty"))["state"]
    kc("delete", "pod", "tty", "-n", pns, "--wait=false")
