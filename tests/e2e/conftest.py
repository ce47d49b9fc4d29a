"""Fixtures for end-to-end tests: a real `corral server` process, the real `kubectl` and the
official `kubernetes` Python client pointed at it. Everything a test starts is stopped and
every directory it makes is removed when it ends."""

import contextlib
import json
import os
import random
import shutil
import sys
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def corral_binary():
    """The binary the test command built (CORRAL_BIN), else the debug build."""
    b = os.environ.get("CORRAL_BIN")
    if b:
        return b
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "debug", "corral")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One corral server process with its own data directory."""

    def __init__(self, data_dir=None, port=None, extra_args=(), host="127.0.0.1"):
        self.owns_dir = data_dir is None
        self.host = host
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="corral-e2e-")
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        if host != "127.0.0.1":
            self.extra_args += ["--bind", host]
        # A server runs a node agent unless told otherwise; tests share one host, so only
        # tests that ask for an agent (a unique --node-name, --bridge and --pod-cidr) get one,
        # and no other server's scheduler binds pods to a node that would really run them.
        if "--node-name" not in self.extra_args and "--disable-agent" not in self.extra_args:
            self.extra_args.append("--disable-agent")
        self.service_cidr = None
        # A node's proxy puts its Services' cluster IPs on the host's lo: each server with
        # an agent gets a service range of its own so servers never share an address.
        if "--disable-agent" not in self.extra_args and "--service-cidr" not in self.extra_args:
            self.service_cidr = free_service_cidr()
            self.extra_args += ["--service-cidr", self.service_cidr]
        self.proc = None
        self.log_path = os.path.join(self.data_dir, "server.log")

    @property
    def url(self):
        return f"https://{self.host}:{self.port}"

    @property
    def kubeconfig(self):
        return os.path.join(self.data_dir, "kubeconfig.yaml")

    def start(self, wait=True):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [corral_binary(), "server", "--data-dir", self.data_dir, "--https-port", str(self.port)]
            + self.extra_args,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corral exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", context=ctx, timeout=1) as r:
                    if r.status == 200 and os.path.exists(self.kubeconfig):
                        return
            except Exception:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"corral not ready after {timeout}s:\n{self.logs()}")

    def logs(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode if self.proc else None
        if getattr(self, "log", None):
            self.log.close()
        return code

    def cleanup(self):
        self.stop()
        if self.owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def server():
    s = Server().start()
    yield s
    s.cleanup()


class Kubectl:
    def __init__(self, server):
        self.server = server
        self.cache = tempfile.mkdtemp(prefix="corral-kubectl-cache-")
        self.home = tempfile.mkdtemp(prefix="corral-kubectl-home-")

    def env(self, extra=None):
        env = dict(os.environ)
        env["KUBECONFIG"] = self.server.kubeconfig
        env["HOME"] = self.home
        env.update(extra or {})
        return env

    def run(self, *args, input=None, check=True, env=None, timeout=60):
        cmd = ["kubectl", "--cache-dir", self.cache] + list(args)
        p = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            env=self.env(env),
            timeout=timeout,
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({p.returncode}):\nstdout: {p.stdout}\nstderr: {p.stderr}"
            )
        return p

    def __call__(self, *args, **kw):
        return self.run(*args, **kw).stdout

    def json(self, *args, **kw):
        return json.loads(self.run(*args, "-o", "json", **kw).stdout)

    def cleanup(self):
        shutil.rmtree(self.cache, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="session")
def kubectl(server):
    k = Kubectl(server)
    yield k
    k.cleanup()


@pytest.fixture
def ns(kubectl):
    """A fresh namespace for one test, deleted afterwards."""
    name = "t-" + uuid.uuid4().hex[:8]
    kubectl.run("apply", "-f", "-", input=f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def api_client(server):
    from kubernetes import client, config

    c = client.ApiClient(
        configuration=_py_config(server)
    )
    yield c
    c.close()


def _py_config(server):
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=server.kubeconfig, client_configuration=cfg)
    return cfg


# Shared by the tests that run real pods (test_pods, test_multinode).

def wait_for(what, fn, timeout=90, interval=0.3):
    """Polls fn until it returns something truthy; fails with `what` and the last value."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
        except Exception as e:  # the object may not exist yet
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def images():
    """The test images: those scripts/test.sh built (CORRAL_TEST_IMAGES), else built here."""
    given = os.environ.get("CORRAL_TEST_IMAGES")
    if given:
        yield [os.path.join(given, f) for f in sorted(os.listdir(given)) if f.endswith(".tar")]
        return
    if not os.path.exists("/bin/busybox") and os.geteuid() != 0:
        pytest.skip("/bin/busybox (Debian's busybox-static) is needed to build the test images")
    out = tempfile.mkdtemp(prefix="corral-test-images-")
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "images", "build.py"), out], check=True
    )
    yield [os.path.join(out, f) for f in sorted(os.listdir(out)) if f.endswith(".tar")]
    shutil.rmtree(out, ignore_errors=True)


def free_service_cidr():
    """A /24 in 10.96.0.0/12 with no address on lo yet."""
    used = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "lo"],
                          capture_output=True, text=True).stdout
    for _ in range(100):
        net = f"10.{random.randint(96, 111)}.{random.randint(0, 255)}."
        if f" {net}" not in used:
            return net + "0/24"
    raise RuntimeError("no free service range")


def remove_service_addresses(cidr):
    """Removes what a server that died uncleanly left of its service range on lo."""
    if not cidr:
        return
    prefix = cidr.rsplit(".", 1)[0] + "."
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "lo"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        addr = line.split()[3]
        if addr.startswith(prefix):
            subprocess.run(["ip", "addr", "del", addr, "dev", "lo"], capture_output=True)


def free_net_index():
    taken = set(os.listdir("/sys/class/net"))
    for _ in range(100):
        n = random.randint(1, 250)
        if f"corral-t{n}" not in taken:
            return n
    raise RuntimeError("no free corral-t<N> bridge name")


class Node:
    """A corral server with its node agent on a bridge of its own."""

    def __init__(self, images, extra_args=()):
        self.n = free_net_index()
        self.bridge = f"corral-t{self.n}"
        self.cidr = f"10.244.{self.n}.0/24"
        self.node_name = f"corral-test-{self.n}-{uuid.uuid4().hex[:6]}"
        self.kubelet_port = free_port()
        self.metrics_port = free_port()
        self.ingress_http_port = free_port()
        self.ingress_https_port = free_port()
        self.server = Server(
            extra_args=[
                "--node-name", self.node_name,
                "--bridge", self.bridge,
                "--pod-cidr", self.cidr,
                "--kubelet-port", str(self.kubelet_port),
                "--proxy-metrics-port", str(self.metrics_port),
                # Names outside the cluster go to a closed local port, never off the machine.
                "--cluster-dns-upstream", f"127.0.0.1:{free_port()}",
                "--ingress-http-port", str(self.ingress_http_port),
                "--ingress-https-port", str(self.ingress_https_port),
            ] + list(extra_args)
        )
        self.data_dir = self.server.data_dir
        out = subprocess.run(
            [corral_binary(), "image", "import", "--data-dir", self.data_dir] + images,
            capture_output=True, text=True,
        )
        assert out.returncode == 0, out.stderr
        assert "docker.io/library/busybox-web:1" in out.stdout
        ls = subprocess.run(
            [corral_binary(), "image", "ls", "--data-dir", self.data_dir],
            capture_output=True, text=True, check=True,
        ).stdout
        assert "docker.io/library/busybox:test" in ls
        self.server.start()
        self.kubectl = Kubectl(self.server)

    @contextlib.contextmanager
    def namespace(self, prefix):
        """A fresh namespace; afterwards its workloads, Services and pods are deleted, then it."""
        kc = self.kubectl
        name = prefix + uuid.uuid4().hex[:8]
        kc.run("create", "namespace", name)
        try:
            yield name
        finally:
            kc.run("delete", "deployments,statefulsets,daemonsets,jobs,services", "--all", "-n", name,
                   "--wait=false", check=False)
            kc.run("delete", "pods", "--all", "-n", name, "--grace-period=0", "--force", check=False)
            wait_for(f"the pods of {name} to be gone",
                     lambda: not kc.json("get", "pods", "-n", name)["items"], timeout=90)
            kc.run("delete", "namespace", name, "--wait=false", check=False)

    @property
    def runtime(self):
        return os.path.join(self.data_dir, "runtime")

    def containers(self):
        d = os.path.join(self.runtime, "containers")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def sandboxes(self):
        d = os.path.join(self.runtime, "sandboxes")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def container_pid(self, container_id):
        with open(os.path.join(self.runtime, "containers", container_id, "state.json")) as f:
            return json.load(f)["pid"]

    def cgroup_dirs(self, leaf=""):
        parent = "corral-" + self.node_name
        found = []
        for root in ["/sys/fs/cgroup"] + [
            os.path.join("/sys/fs/cgroup", h) for h in ("cpu", "cpuacct", "memory", "pids", "cpu,cpuacct")
        ]:
            p = os.path.join(root, parent, leaf) if leaf else os.path.join(root, parent)
            if os.path.isdir(p) and os.path.realpath(p) not in [os.path.realpath(x) for x in found]:
                found.append(p)
        return found

    def cleanup(self):
        try:
            wait_for("the runtime to hold no containers", lambda: not self.containers(), timeout=60)
            wait_for("the runtime to hold no sandboxes", lambda: not self.sandboxes(), timeout=60)
        finally:
            self.server.stop()
            self.kubectl.cleanup()
            # What a stopped server may still hold (only when a test failed midway).
            for cid in self.containers():
                try:
                    os.kill(self.container_pid(cid), 9)
                except Exception:
                    pass
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
            remove_service_addresses(self.server.service_cidr)
            for d in self.cgroup_dirs():
                for sub in sorted(os.listdir(d), reverse=True):
                    if os.path.isdir(os.path.join(d, sub)):
                        try:
                            os.rmdir(os.path.join(d, sub))
                        except OSError:
                            pass
                try:
                    os.rmdir(d)
                except OSError:
                    pass
            for line in open("/proc/self/mountinfo"):
                mp = line.split()[4]
                if mp.startswith(self.data_dir):
                    subprocess.run(["umount", "-l", mp], capture_output=True)
            self.server.cleanup()


@pytest.fixture(scope="module")
def node(request, images):
    """One Node for the test module, with the module's NODE_ARGS (extra server flags)."""
    n = Node(images, extra_args=getattr(request.module, "NODE_ARGS", ()))
    yield n
    n.cleanup()


@pytest.fixture
def kc(node):
    """kubectl for the module's Node."""
    return node.kubectl
