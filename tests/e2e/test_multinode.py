"""Two nodes: a `corral server` with its own node agent, and a second node that joins it as
`corral agent --server URL --token T` from a network namespace this module creates (a
veth pair 10.250.<N>.1 <-> 10.250.<N>.2 is the only link between them, so the agent
really talks to the server over a network, and the server to the agent's kubelet API).

Checks what a user of a two-node cluster sees: the node joins with a token from `corral
token create` (a wrong CA hash or secret is refused), gets a pod range from the server,
runs pods whose logs and exec work through the server; when the agent dies, its node goes
Unknown, is tainted, and its Deployment pods are replaced on the other node; when the agent
comes back it adopts the pods it still runs without restarting them and cleans up those
deleted while it was away. Needs root (namespaces, cgroups, bridges); skips otherwise.
Everything it makes (processes, netns, links, bridges, cgroups, mounts) is removed."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid

import pytest

from conftest import Kubectl, Server, corral_binary, free_net_index, free_port, wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="node agents need root for namespaces, cgroups and bridges"
)

GRACE = 20  # --node-monitor-grace-period of the test server (the agents renew every 10 s)


class Netns:
    """A network namespace joined to the host by a veth pair: host .1, namespace .2."""

    def __init__(self, n):
        self.name = f"corral-mn{n}"
        self.host_if, self.ns_if = f"cmn{n}a", f"cmn{n}b"
        self.host_ip, self.ns_ip = f"10.250.{n}.1", f"10.250.{n}.2"
        run = lambda *a: subprocess.run(a, check=True, capture_output=True)
        run("ip", "netns", "add", self.name)
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        run("ip", "link", "set", self.ns_if, "netns", self.name)
        run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        run("ip", "-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        run("ip", "-n", self.name, "link", "set", self.ns_if, "up")
        run("ip", "-n", self.name, "link", "set", "lo", "up")

    def cmd(self, *args):
        # nsenter switches only the network namespace: the agent keeps the host's mounts,
        # so it sees the cgroup hierarchies (`ip netns exec` would remount /sys).
        return ["nsenter", f"--net=/run/netns/{self.name}", *args]

    def cleanup(self):
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)


def remove_cgroups(parent):
    roots = ["/sys/fs/cgroup"] + [
        os.path.join("/sys/fs/cgroup", h) for h in ("cpu", "cpuacct", "memory", "pids", "cpu,cpuacct")
    ]
    for root in roots:
        d = os.path.join(root, parent)
        if not os.path.isdir(d):
            continue
        for sub, _, _ in sorted(os.walk(d), key=lambda w: -len(w[0])):
            try:
                os.rmdir(sub)
            except OSError:
                pass


def unmount_under(path):
    for line in reversed(open("/proc/self/mountinfo").read().splitlines()):
        mp = line.split()[4]
        if mp.startswith(path):
            subprocess.run(["umount", "-l", mp], capture_output=True)


class Agent:
    """`corral agent` in the network namespace, with a data dir of its own."""

    def __init__(self, netns, server, images):
        self.netns = netns
        self.server = server
        self.node_name = f"corral-join-{uuid.uuid4().hex[:6]}"
        self.data_dir = tempfile.mkdtemp(prefix="corral-agent-")
        self.log_path = os.path.join(self.data_dir, "agent.log")
        self.proc = None
        out = subprocess.run(
            [corral_binary(), "image", "import", "--data-dir", self.data_dir] + images,
            capture_output=True, text=True,
        )
        assert out.returncode == 0, out.stderr
        self.token = subprocess.run(
            [corral_binary(), "token", "create", "--data-dir", server.data_dir, "--ttl", "1h"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()

    def args(self, token=None):
        return [
            corral_binary(), "agent",
            "--server", f"https://{self.netns.host_ip}:{self.server.port}",
            "--token", token or self.token,
            "--data-dir", self.data_dir,
            "--node-name", self.node_name,
            "--node-ip", self.netns.ns_ip,
            "--kubelet-port", "10250",
            "--cluster-dns-upstream", "127.0.0.1:9",
        ]

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.netns.cmd(*self.args()), stdout=self.log, stderr=subprocess.STDOUT)

    def logs(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def containers(self):
        d = os.path.join(self.data_dir, "runtime", "containers")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def container_pid(self, cid):
        with open(os.path.join(self.data_dir, "runtime", "containers", cid, "state.json")) as f:
            return json.load(f)["pid"]


class Cluster:
    def __init__(self, images):
        self.n = free_net_index()
        self.netns = Netns(self.n)
        self.server_node = f"corral-main-{uuid.uuid4().hex[:6]}"
        self.bridge = f"corral-t{self.n}"
        self.metrics_port = free_port()
        self.server = Server(
            host=self.netns.host_ip,
            extra_args=[
                "--node-name", self.server_node,
                "--bridge", self.bridge,
                "--pod-cidr", f"10.244.{self.n}.0/24",
                "--node-ip", self.netns.host_ip,
                "--kubelet-port", str(free_port()),
                "--proxy-metrics-port", str(self.metrics_port),
                "--cluster-dns-upstream", f"127.0.0.1:{free_port()}",
                "--ingress-http-port", "0", "--ingress-https-port", "0",
                "--node-monitor-grace-period", f"{GRACE}s",
            ],
        )
        out = subprocess.run(
            [corral_binary(), "image", "import", "--data-dir", self.server.data_dir] + images,
            capture_output=True, text=True,
        )
        assert out.returncode == 0, out.stderr
        self.server.start()
        self.kc = Kubectl(self.server)
        self.agent = Agent(self.netns, self.server, images)

    def cleanup(self):
        try:
            self.kc.run("delete", "pods", "--all", "-A", "--grace-period=0", "--force", check=False)
            if self.agent.proc and self.agent.proc.poll() is None:
                wait_for("the joined node to run nothing", lambda: not self.agent.containers(), timeout=60)
        finally:
            self.agent.stop()
            self.server.stop()
            for d in (self.server.data_dir, self.agent.data_dir):
                cdir = os.path.join(d, "runtime", "containers")
                for cid in os.listdir(cdir) if os.path.isdir(cdir) else []:
                    try:
                        with open(os.path.join(cdir, cid, "state.json")) as f:
                            os.kill(json.load(f)["pid"], signal.SIGKILL)
                    except Exception:
                        pass
            self.kc.cleanup()
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
            self.netns.cleanup()
            for node in (self.server_node, self.agent.node_name):
                remove_cgroups("corral-" + node)
            for d in (self.server.data_dir, self.agent.data_dir):
                unmount_under(d)
            self.server.cleanup()
            subprocess.run(["rm", "-rf", self.agent.data_dir])


@pytest.fixture(scope="module")
def cluster(images):
    c = Cluster(images)
    yield c
    c.cleanup()


def node_ready(kc, name):
    try:
        n = kc.json("get", "node", name)
    except Exception:
        return None
    conds = {c["type"]: c["status"] for c in n.get("status", {}).get("conditions", [])}
    return conds.get("Ready")


def post_to_server(cluster, path, body, token):
    """POSTs `body` to the server's `path` as a node would (TLS not verified: these tests
    look at the answers), with `token` as bearer when given; returns (status, text)."""
    import ssl
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(f"https://{cluster.netns.host_ip}:{cluster.server.port}{path}", data=body,
                                 method="POST")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_bad_tokens_are_refused(cluster):
    a = cluster.agent
    good_hash = a.token.split("::")[0]
    wrong_ca = "K10" + "0" * 64 + "::" + a.token.split("::")[1]
    p = subprocess.run(cluster.netns.cmd(*a.args(wrong_ca)), capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "is not the one in the token: refusing to join" in p.stderr, p.stderr
    wrong_secret = good_hash + "::" + a.token.split("::")[1].split(".")[0] + ".0123456789abcdef"
    p = subprocess.run(cluster.netns.cmd(*a.args(wrong_secret)), capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "refused the token" in p.stderr and "401" in p.stderr, p.stderr
    p = subprocess.run(cluster.netns.cmd(*a.args("not-a-token")), capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and p.stderr.strip(), p.stderr
    assert subprocess.run(["kubectl", "--kubeconfig", cluster.server.kubeconfig, "get", "node", a.node_name],
                          capture_output=True).returncode != 0, "a refused agent registered a node"


def test_agent_joins_and_gets_a_pod_range(cluster):
    kc, a = cluster.kc, cluster.agent
    a.start()
    wait_for("the joined node to be Ready", lambda: node_ready(kc, a.node_name) == "True" or
             (a.proc.poll() is not None and pytest.fail(a.logs())), timeout=60)
    n = kc.json("get", "node", a.node_name)
    assert n["spec"]["podCIDR"] == "10.42.0.0/24", n["spec"]  # the first block of --cluster-cidr
    assert n["metadata"]["labels"]["kubernetes.io/hostname"] == a.node_name
    assert "node-role.kubernetes.io/control-plane" not in n["metadata"]["labels"]
    ips = {x["type"]: x["address"] for x in n["status"]["addresses"]}
    assert ips["InternalIP"] == cluster.netns.ns_ip
    events = kc.json("get", "events", "--field-selector", f"involvedObject.name={a.node_name}")["items"]
    assert any(e["reason"] == "CIDRAssignmentSucceeded" for e in events), events
    out = kc("get", "nodes")
    assert cluster.server_node in out and a.node_name in out
    main = kc.json("get", "node", cluster.server_node)
    assert main["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] == "true"


def pinned_pod(name, node, **spec):
    spec.setdefault("terminationGracePeriodSeconds", 2)
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                 "containers": [{"name": "web", "image": "busybox-web:1"}], **spec},
    }


def running(kc, ns, name):
    p = kc.json("get", "pod", name, "-n", ns)
    st = (p.get("status", {}).get("containerStatuses") or [{}])[0]
    return p if st.get("ready") else None


def test_pods_run_on_the_joined_node(cluster):
    kc, a = cluster.kc, cluster.agent
    wait_for("the joined node", lambda: node_ready(kc, a.node_name) == "True", timeout=60)
    kc.run("create", "namespace", "mn-run")
    kc.run("apply", "-n", "mn-run", "-f", "-", input=json.dumps(pinned_pod("there", a.node_name)))
    p = wait_for("the pod to run on the joined node", lambda: running(kc, "mn-run", "there"), timeout=90)
    assert p["spec"]["nodeName"] == a.node_name
    assert p["status"]["podIP"].startswith("10.42.0."), p["status"]
    assert p["status"]["hostIP"] == cluster.netns.ns_ip
    # The pod answers on its address inside the node's network.
    body = subprocess.run(
        cluster.netns.cmd("python3", "-c", f"import urllib.request;print(urllib.request.urlopen('http://{p['status']['podIP']}:8080/', timeout=5).read().decode())"),
        capture_output=True, text=True, timeout=30,
    )
    assert "web v1" in body.stdout, body.stderr
    # Logs and exec go server -> the node's kubelet API over the veth, with the serving
    # certificate the node got from the server.
    out = kc("exec", "-n", "mn-run", "there", "--", "hostname")
    assert out.strip() == "there"
    kc("exec", "-n", "mn-run", "there", "--", "sh", "-c", "echo from-node-b > /proc/1/fd/1")
    wait_for("the log line", lambda: "from-node-b" in kc("logs", "-n", "mn-run", "there"))
    kc.run("delete", "namespace", "mn-run", "--wait=false")


def test_a_service_spans_the_nodes_through_the_mutual_tls_tunnel(cluster):
    """A Service whose pod runs on the joined node, called from a pod of the server's
    node: the node proxies carry it in their tunnel (HTTP/2 CONNECT over mutual TLS on
    port 15008), not over the pod route, at L7 (port `http`) and L4 (port `tcp-raw`). Each proxy got its certificates from the cluster CA; the
    tunnel refuses a client without one."""
    import socket
    import ssl

    kc, a = cluster.kc, cluster.agent
    ns = "mn-mesh"
    wait_for("the joined node", lambda: node_ready(kc, a.node_name) == "True", timeout=60)
    kc.run("create", "namespace", ns)
    far = pinned_pod("far", a.node_name)
    client = pinned_pod("client", cluster.server_node)
    client["spec"]["containers"][0]["command"] = ["sleep", "3600"]
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "far"},
           "spec": {"selector": {"app": "far"}, "ports": [
               {"name": "http", "port": 80, "targetPort": 8080},
               {"name": "tcp-raw", "port": 81, "targetPort": 8080}]}}
    for obj in (far, client, svc):
        kc.run("apply", "-n", ns, "-f", "-", input=json.dumps(obj))
    wait_for("both pods", lambda: running(kc, ns, "far") and running(kc, ns, "client"), timeout=90)
    ip = kc.json("get", "service", "far", "-n", ns)["spec"]["clusterIP"]

    def wget(url):
        return kc.run("exec", "-n", ns, "client", "--", "wget", "-q", "-O-", url, check=False, timeout=30)

    for url in (f"http://{ip}/", f"http://{ip}:81/", f"http://far.{ns}.svc.cluster.local/"):
        out = wait_for(f"{url} through the tunnel", lambda: (lambda o: o if o.returncode == 0 else None)(wget(url)),
                       timeout=30)
        assert "web v1" in out.stdout, out
    logs = cluster.server.logs()
    assert f"spiffe://cluster.local/ns/{ns}/sa/default" in logs, "the client's workload identity was not issued"
    assert f"spiffe://cluster.local/node/{a.node_name}" in logs, "the joined node's proxy got no certificate"
    import urllib.request
    with urllib.request.urlopen(f"http://{cluster.netns.host_ip}:{cluster.metrics_port}/stats/prometheus",
                                timeout=10) as r:
        metrics = r.read().decode()
    for family in ("istio_requests_total", "istio_tcp_connections_opened_total"):
        assert any(line.startswith(family) and 'connection_security_policy="mutual_tls"' in line
                   and 'destination_service_name="far"' in line for line in metrics.splitlines()), family

    # The tunnel port takes TLS with a certificate of the cluster CA, nothing else.
    tunnel = (cluster.netns.ns_ip, 15008)
    with socket.create_connection(tunnel, timeout=5) as s:
        s.sendall(b"CONNECT 10.42.0.2:8080 HTTP/1.1\r\n\r\n")
        s.settimeout(5)
        try:
            got = s.recv(100)
        except OSError:
            got = b""
        assert not got.startswith(b"HTTP"), got
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    refused = False
    try:
        with socket.create_connection(tunnel, timeout=5) as raw, ctx.wrap_socket(raw) as s:
            s.settimeout(5)
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            refused = s.recv(100) == b""
    except (ssl.SSLError, ConnectionError):
        refused = True
    assert refused, "the tunnel served a client without a certificate"
    kc.run("delete", "namespace", ns, "--wait=false")


def test_pods_reach_each_other_across_nodes_by_pod_ip(cluster):
    """Each node routes the other's pod range via the other's address (host-gw), so a pod
    reaches a pod of the other node by its IP, both ways, as in any Kubernetes cluster.
    Forwarding is turned on only for the bridges and the interfaces toward the other node,
    never with the host's global ip_forward."""
    kc, a = cluster.kc, cluster.agent
    ns = "mn-podip"
    forward_before = open("/proc/sys/net/ipv4/ip_forward").read().strip()
    wait_for("the joined node", lambda: node_ready(kc, a.node_name) == "True", timeout=60)
    kc.run("create", "namespace", ns)
    for name, node in (("far", a.node_name), ("near", cluster.server_node)):
        kc.run("apply", "-n", ns, "-f", "-", input=json.dumps(pinned_pod(name, node)))
    pods = wait_for("both pods", lambda: (lambda f, n: (f, n) if f and n else None)(
        running(kc, ns, "far"), running(kc, ns, "near")), timeout=90)
    far_ip, near_ip = (p["status"]["podIP"] for p in pods)
    agent_cidr = kc.json("get", "node", a.node_name)["spec"]["podCIDR"]
    wait_for("the server's route to the joined node's pods", lambda: f"{agent_cidr} via {cluster.netns.ns_ip}" in
             subprocess.run(["ip", "route", "show", "proto", "196"], capture_output=True, text=True).stdout,
             timeout=30)

    def wget(pod, ip):
        return kc.run("exec", "-n", ns, pod, "--", "wget", "-q", "-O-", f"http://{ip}:8080/", check=False, timeout=30)

    def routing():
        sh = lambda *c: subprocess.run(list(c), capture_output=True, text=True).stdout
        return "\n".join([
            sh("ip", "route"), sh("ip", "-n", cluster.netns.name, "route"),
            sh("sh", "-c", "grep . /proc/sys/net/ipv4/conf/*/forwarding"),
            sh("ip", "netns", "exec", cluster.netns.name, "sh", "-c", "grep . /proc/sys/net/ipv4/conf/*/forwarding")])

    for src, dst in (("near", far_ip), ("far", near_ip)):
        try:
            out = wait_for(f"{src} -> {dst}", lambda: (lambda o: o if o.returncode == 0 else None)(wget(src, dst)),
                           timeout=30)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{routing()}\n{a.logs()}") from None
        assert "web v1" in out.stdout, out
    conf = lambda iface: open(f"/proc/sys/net/ipv4/conf/{iface}/forwarding").read().strip()
    assert conf(cluster.netns.host_if) == "1" and conf(cluster.bridge) == "1"
    assert open("/proc/sys/net/ipv4/ip_forward").read().strip() == forward_before

    # NetworkPolicy judges a pod of the other node by its address like a local one: on
    # the receiving node (far's ingress) and on the sending one (near's egress, whose
    # rules cover the pod ranges this node routes to).
    def blocked(src, dst):
        out = kc.run("exec", "-n", ns, src, "--", "timeout", "3", "wget", "-q", "-O-", f"http://{dst}:8080/",
                     check=False, timeout=30)
        return out.returncode != 0

    def policy(name, body):
        kc.run("apply", "-n", ns, "-f", "-", input=json.dumps(
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name}, "spec": body}))

    policy("far-from-friends", {"podSelector": {"matchLabels": {"app": "far"}},
                                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "friend"}}}]}]})
    wait_for("far's ingress policy to drop near", lambda: blocked("near", far_ip), timeout=30)
    kc.run("label", "pod", "-n", ns, "near", "role=friend")
    wait_for("near, now a friend, to reach far", lambda: not blocked("near", far_ip), timeout=30)
    policy("near-no-egress", {"podSelector": {"matchLabels": {"app": "near"}}, "policyTypes": ["Egress"]})
    wait_for("near's egress policy to drop its way to far", lambda: blocked("near", far_ip), timeout=30)
    assert not blocked("far", near_ip), "far -> near needs no egress of near's"
    kc.run("delete", "namespace", ns, "--wait=false")


def test_external_traffic_policy_local_answers_only_on_nodes_with_endpoints(cluster):
    """A LoadBalancer Service with externalTrafficPolicy: Local is served by the nodes that
    run one of its pods (no second hop, the client's address kept); another node answers
    503 instead of forwarding, and each node's healthCheckNodePort says which is which, as
    kube-proxy's does. With Cluster, both nodes answer and the health check port goes; a
    change of type allocates and frees node ports."""
    import urllib.error
    import urllib.request

    kc, a = cluster.kc, cluster.agent
    ns = "mn-etp"
    wait_for("the joined node", lambda: node_ready(kc, a.node_name) == "True", timeout=60)
    kc.run("create", "namespace", ns)
    kc.run("apply", "-n", ns, "-f", "-", input=json.dumps(pinned_pod("only-there", a.node_name)))
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "only-there"},
           "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "selector": {"app": "only-there"},
                    "ports": [{"name": "http", "port": 8081, "targetPort": 8080}]}}
    kc.run("apply", "-n", ns, "-f", "-", input=json.dumps(svc))
    wait_for("the pod", lambda: running(kc, ns, "only-there"), timeout=90)
    spec = kc.json("get", "service", "only-there", "-n", ns)["spec"]
    port, hc = spec["ports"][0]["nodePort"], spec["healthCheckNodePort"]
    assert 30000 <= hc <= 32767 and hc != port, spec

    def on_server_node(p, path="/"):
        try:
            with urllib.request.urlopen(f"http://{cluster.netns.host_ip}:{p}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def on_joined_node(p, path="/"):
        code = f"import urllib.request;print(urllib.request.urlopen('http://{cluster.netns.ns_ip}:{p}{path}', timeout=5).read().decode())"
        out = subprocess.run(cluster.netns.cmd("python3", "-c", code), capture_output=True, text=True, timeout=30)
        return out.stdout if out.returncode == 0 else None

    wait_for("the joined node, which runs the pod, to answer", lambda: "web v1" in (on_joined_node(port) or ""),
             timeout=30)
    wait_for("the server's node, which runs none, to answer 503", lambda: on_server_node(port)[0] == 503, timeout=30)
    health = json.loads(wait_for("the joined node's health check", lambda: on_joined_node(hc, "/healthz"), timeout=30))
    assert health["localEndpoints"] == 1 and health["service"] == {"namespace": ns, "name": "only-there"}, health
    code, body = on_server_node(hc, "/healthz")
    assert code == 503 and json.loads(body)["localEndpoints"] == 0, (code, body)

    kc.run("patch", "service", "only-there", "-n", ns, "-p", '{"spec":{"externalTrafficPolicy":"Cluster"}}')
    assert "healthCheckNodePort" not in kc.json("get", "service", "only-there", "-n", ns)["spec"]
    wait_for("the server's node to forward once the policy is Cluster", lambda: on_server_node(port)[0] == 200,
             timeout=30)
    # Node ports follow the type: gone with ClusterIP, a new one with NodePort.
    kc.run("patch", "service", "only-there", "-n", ns, "-p", '{"spec":{"type":"ClusterIP"}}')
    assert "nodePort" not in kc.json("get", "service", "only-there", "-n", ns)["spec"]["ports"][0]
    kc.run("patch", "service", "only-there", "-n", ns, "-p", '{"spec":{"type":"NodePort"}}')
    port = kc.json("get", "service", "only-there", "-n", ns)["spec"]["ports"][0]["nodePort"]
    wait_for("the new node port", lambda: on_server_node(port)[0] == 200, timeout=30)
    kc.run("delete", "namespace", ns, "--wait=false")


def test_the_mesh_certificate_endpoint_refuses_what_a_node_may_not_have(cluster, tmp_path):
    """POST /corral/v1/mesh-certificate with a join token: an identity of a service
    account no pod runs as, or of another trust domain, is refused (403); a body that is
    not a certificate request gets 400."""
    bearer = cluster.agent.token.split("::", 1)[1]

    def csr(uri):
        out = tmp_path / "req.pem"
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(tmp_path / "key.pem"), "-subj", "/", "-addext",
                        f"subjectAltName=URI:{uri}", "-out", str(out)], check=True, capture_output=True)
        return out.read_bytes()

    def post(body, token=bearer):
        return post_to_server(cluster, "/corral/v1/mesh-certificate", body, token)

    if not shutil.which("openssl"):
        pytest.skip("openssl makes the certificate requests (scripts/test.sh installs it)")
    code, body = post(csr("spiffe://cluster.local/ns/default/sa/nobody-runs-as-me"))
    assert code == 403 and "no pod on a node runs as service account default/nobody-runs-as-me" in body, body
    code, body = post(csr("spiffe://evil.example/ns/default/sa/default"))
    assert code == 403 and "trust domain" in body, body
    code, body = post(b"not a certificate request")
    assert code == 400 and "certificate request" in body, body
    code, body = post(csr("spiffe://cluster.local/node/some-node"), token=None)
    assert code == 401, body
    code, body = post(csr(f"spiffe://cluster.local/node/{cluster.agent.node_name}"))
    assert code == 200 and "BEGIN CERTIFICATE" in body, body


def test_node_failure_reschedules_and_the_agent_comes_back(cluster):
    kc, a = cluster.kc, cluster.agent
    ns = "mn-fail"
    wait_for("the joined node", lambda: node_ready(kc, a.node_name) == "True", timeout=60)
    kc.run("create", "namespace", ns)
    tolerate = [{"key": k, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}
                for k in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")]
    deploy = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {
            "replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "tolerations": tolerate,
                    "topologySpreadConstraints": [{
                        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": {"app": "web"}},
                    }],
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                            "labelSelector": {"matchLabels": {"app": "web"}}},
                    }]}},
                    "containers": [{"name": "web", "image": "busybox-web:1"}],
                },
            },
        },
    }
    kc.run("apply", "-n", ns, "-f", "-", input=json.dumps(deploy))
    # A pod that stays on the joined node through the outage (default 300 s toleration).
    kc.run("apply", "-n", ns, "-f", "-", input=json.dumps(pinned_pod("keeper", a.node_name)))
    kc.run("rollout", "status", "deploy/web", "-n", ns, "--timeout=120s", timeout=150)

    def web_pods():
        return [p for p in kc.json("get", "pods", "-n", ns, "-l", "app=web")["items"]]

    spread = {p["spec"].get("nodeName") for p in web_pods()}
    assert spread == {cluster.server_node, a.node_name}, spread
    victim = next(p for p in web_pods() if p["spec"]["nodeName"] == a.node_name)
    keeper = wait_for("the keeper to run", lambda: running(kc, ns, "keeper"), timeout=90)
    kst = keeper["status"]["containerStatuses"][0]
    keeper_pid = a.container_pid(kst["containerID"].removeprefix("corral://"))

    a.stop(signal.SIGKILL)  # the node vanishes; its containers keep running
    os.kill(keeper_pid, 0)
    wait_for("the node to go Unknown", lambda: node_ready(kc, a.node_name) == "Unknown", timeout=GRACE + 30)
    taints = kc.json("get", "node", a.node_name)["spec"].get("taints", [])
    assert {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"} in [
        {"key": t["key"], "effect": t["effect"]} for t in taints
    ], taints

    def replaced():
        live = [p for p in web_pods() if not p["metadata"].get("deletionTimestamp")]
        on_main = [p for p in live if p["spec"].get("nodeName") == cluster.server_node and
                   (p.get("status", {}).get("containerStatuses") or [{}])[0].get("ready")]
        return len(on_main) == 2 and live
    wait_for("both web pods to run on the surviving node", replaced, timeout=90)
    gone = kc.json("get", "pods", "-n", ns, "-l", "app=web")["items"]
    old = [p for p in gone if p["metadata"]["name"] == victim["metadata"]["name"]]
    assert not old or old[0]["metadata"].get("deletionTimestamp"), "the evicted pod was not deleted"
    assert any(e["reason"] == "TaintManagerEviction" for e in
               kc.json("get", "events", "-n", ns)["items"]), "no eviction event"

    # The agent returns: the keeper is adopted (same process, no restart), the evicted pod
    # it still ran is stopped and its deletion completes, and the node is Ready again.
    a.start()
    wait_for("the node to be Ready again", lambda: node_ready(kc, a.node_name) == "True", timeout=60)
    wait_for("the evicted pod to be gone", lambda: not [
        p for p in kc.json("get", "pods", "-n", ns)["items"] if p["metadata"]["name"] == victim["metadata"]["name"]
    ], timeout=60)
    wait_for("the node to hold only the keeper's container", lambda: len(a.containers()) == 1, timeout=60)
    after = wait_for("the keeper adopted", lambda: running(kc, ns, "keeper"), timeout=30)
    ast = after["status"]["containerStatuses"][0]
    assert ast["containerID"] == kst["containerID"] and ast["restartCount"] == kst["restartCount"]
    assert a.container_pid(ast["containerID"].removeprefix("corral://")) == keeper_pid
    os.kill(keeper_pid, 0)
    wait_for("the unreachable taint to be lifted", lambda: not [
        t for t in kc.json("get", "node", a.node_name)["spec"].get("taints", []) if "unreachable" in t["key"]
    ], timeout=30)
    kc.run("delete", "namespace", ns, "--wait=false")


def test_the_serving_certificate_endpoint_refuses_bad_requests(cluster):
    """POST /corral/v1/node-serving-certificate: no credentials -> 401, a request that is
    not a PEM certificate request -> 400 with the reason, nothing signed."""
    bearer = cluster.agent.token.split("::", 1)[1]

    def post(body, token=None):
        return post_to_server(cluster, "/corral/v1/node-serving-certificate", body, token)

    code, body = post(b"-----BEGIN CERTIFICATE REQUEST-----\n")
    assert code == 401, body
    code, body = post(b"not a certificate request", bearer)
    assert code == 400 and "certificate request" in body and "BEGIN CERTIFICATE" not in body, body
    code, body = post(b"x" * (65 * 1024), bearer)
    assert code == 400 and "at most 64 KiB" in body, body
