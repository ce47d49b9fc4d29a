"""Pod streams through the real API server and the real kubectl: `kubectl logs` (tail,
timestamps, follow), `kubectl exec` (exit codes, stdin) and `kubectl port-forward`, proxied by
the API server to a node agent found from a Node object. The node is `corral-fake-node`: the
real kubelet API server (crates/kubelet-api) over TLS with a backend of files and host
processes, so these tests need no container runtime."""

import json
import os
import socket
import subprocess
import threading
import time
import uuid

import pytest

from conftest import corral_binary


def fake_node_binary():
    return os.path.join(os.path.dirname(corral_binary()), "corral-fake-node")


class FakeNode:
    def __init__(self, server, kubectl, tmp_path, port=None):
        self.kubectl = kubectl
        self.dir = str(tmp_path)
        self.name = "fake-" + uuid.uuid4().hex[:8]
        self.proc = None
        if port is None:
            self.proc = subprocess.Popen(
                [fake_node_binary(), "--pki", os.path.join(server.data_dir, "pki"), "--dir", self.dir],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            line = self.proc.stdout.readline().decode()
            assert line.startswith("port "), line
            port = int(line.split()[1])
        self.port = port
        kubectl.run("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name}}))
        status = {"status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
        }}
        kubectl.run("patch", "node", self.name, "--subresource=status", "--type=merge", "-p", json.dumps(status))

    def pod(self, ns, name, state=None, containers=("main",)):
        """A pod bound to this node, its containers in `state` (running by default)."""
        self.kubectl.run("apply", "-n", ns, "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": self.name, "containers": [{"name": c, "image": "busybox"} for c in containers]},
        }))
        state = state or {"running": {"startedAt": "2024-01-01T00:00:00Z"}}
        status = {"status": {"phase": "Running", "containerStatuses": [
            {"name": c, "ready": True, "restartCount": 0, "image": "busybox", "imageID": "", "state": state}
            for c in containers]}}
        self.kubectl.run("patch", "pod", name, "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps(status))

    def log_path(self, ns, pod, container="main"):
        return os.path.join(self.dir, f"{ns}_{pod}_{container}.log")

    def stop_container(self, ns, pod, container="main"):
        open(os.path.join(self.dir, f"{ns}_{pod}_{container}.stopped"), "w").close()

    def cleanup(self):
        self.kubectl.run("delete", "node", self.name, "--wait=false", check=False)
        if self.proc:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def node(server, kubectl, tmp_path):
    n = FakeNode(server, kubectl, tmp_path)
    yield n
    n.cleanup()


LOG = (
    "2024-01-02T03:04:05.000000001Z stdout F first line\n"
    "2024-01-02T03:04:06Z stderr F an error\n"
    "2024-01-02T03:04:07.5Z stdout P partial \n"
    "2024-01-02T03:04:08Z stdout F and the rest\n"
)


def test_logs_with_options(kubectl, ns, node):
    node.pod(ns, "web")
    with open(node.log_path(ns, "web"), "w") as f:
        f.write(LOG)
    assert kubectl("logs", "-n", ns, "web") == "first line\nan error\npartial and the rest\n"
    assert kubectl("logs", "-n", ns, "web", "--tail=1") == "and the rest\n"
    assert kubectl("logs", "-n", ns, "web", "--tail=2", "--timestamps") == (
        "2024-01-02T03:04:07.500000000Z partial and the rest\n"
    )
    assert kubectl("logs", "-n", ns, "web", "--limit-bytes=5") == "first"
    p = kubectl.run("logs", "-n", ns, "web", "--previous", check=False)
    assert p.returncode != 0
    assert 'previous terminated container "main" in pod "web" not found' in p.stderr


def test_logs_follow_streams_until_the_container_stops(kubectl, ns, node):
    node.pod(ns, "web")
    path = node.log_path(ns, "web")
    with open(path, "w") as f:
        f.write("2024-01-02T03:04:05Z stdout F one\n")
    p = subprocess.Popen(
        ["kubectl", "--cache-dir", kubectl.cache, "logs", "-f", "-n", ns, "web"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kubectl.env(), text=True,
    )
    try:
        assert p.stdout.readline() == "one\n"
        with open(path, "a") as f:
            f.write("2024-01-02T03:04:06Z stdout F two\n")
        assert p.stdout.readline() == "two\n"
        with open(path, "a") as f:
            f.write("2024-01-02T03:04:07Z stdout F three\n")
        node.stop_container(ns, "web")
        assert p.stdout.read() == "three\n"
        assert p.wait(timeout=20) == 0
    finally:
        p.kill()
        p.wait()


def test_exec_exit_code_and_stdin(kubectl, ns, node):
    node.pod(ns, "web")
    open(node.log_path(ns, "web"), "w").close()
    p = kubectl.run("exec", "-n", ns, "web", "--", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert p.returncode == 3, p.stderr
    assert p.stdout == "out\n"
    assert "err\n" in p.stderr
    assert "command terminated with exit code 3" in p.stderr
    assert kubectl("exec", "-i", "-n", ns, "web", "--", "cat", input="through stdin\n") == "through stdin\n"


def test_port_forward_both_ways(kubectl, ns, node):
    node.pod(ns, "web")
    open(node.log_path(ns, "web"), "w").close()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    target = srv.getsockname()[1]

    def echo():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                while True:
                    d = c.recv(65536)
                    if not d:
                        break
                    c.sendall(d)

    threading.Thread(target=echo, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
    p = subprocess.Popen(
        ["kubectl", "--cache-dir", kubectl.cache, "port-forward", "-n", ns, "pod/web", f"{local}:{target}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kubectl.env(), text=True,
    )
    try:
        line = p.stdout.readline()
        assert "Forwarding from 127.0.0.1:" in line, line + p.stderr.read() if p.poll() is not None else line
        for i in range(2):
            with socket.create_connection(("127.0.0.1", local), timeout=10) as c:
                msg = (f"hello {i} " * 5000).encode()
                c.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    d = c.recv(65536)
                    assert d, "connection closed early"
                    got += d
                assert got == msg
    finally:
        p.terminate()
        p.wait(timeout=10)
        srv.close()


def test_clear_errors(kubectl, server, ns, node, tmp_path):
    # Not scheduled yet.
    kubectl.run("apply", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pending"},
        "spec": {"containers": [{"name": "main", "image": "busybox"}], "schedulerName": "nobody"}}))
    p = kubectl.run("logs", "-n", ns, "pending", check=False)
    assert "pod pending does not have a host assigned" in p.stderr
    # Waiting to start, as the node reported.
    node.pod(ns, "creating", state={"waiting": {"reason": "ContainerCreating"}})
    p = kubectl.run("logs", "-n", ns, "creating", check=False)
    assert 'container "main" in pod "creating" is waiting to start: ContainerCreating' in p.stderr
    p = kubectl.run("exec", "-n", ns, "creating", "--", "true", check=False)
    assert p.returncode != 0
    assert "is waiting to start: ContainerCreating" in p.stderr
    # Two containers and none named.
    node.pod(ns, "two", containers=("a", "b"))
    p = kubectl.run("logs", "-n", ns, "two", "-c", "nope", check=False)
    assert "container nope is not valid for pod two" in p.stderr
    # A node whose agent does not answer: a clear error, quickly.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    dead = FakeNode(server, kubectl, tmp_path / "dead", port=dead_port)
    try:
        dead.pod(ns, "orphan")
        started = time.time()
        p = kubectl.run("logs", "-n", ns, "orphan", check=False, timeout=30)
        assert p.returncode != 0
        assert "ServiceUnavailable" in p.stderr and "cannot reach the node agent" in p.stderr, p.stderr
        assert time.time() - started < 20
    finally:
        dead.cleanup()
