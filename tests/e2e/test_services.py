"""Services end to end: real pods behind ClusterIP, NodePort and LoadBalancer Services,
reached from a pod and from the node through corral's node proxy.

The node's address is 127.0.0.1 here (--node-ip), so NodePorts and LoadBalancer ports are
reached on loopback; cluster IPs come from a service range of this server's own that the
proxy puts on lo and removes again when it stops.
"""

import http.client
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request


import pytest

from conftest import Node, wait_for
from svc_helpers import (WHOAMI, apply, client_pod, cluster_ip, deployment, from_pod, http_get,
                         service, wait_ready_endpoints)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the node agent and proxy need root (namespaces, bridges, lo addresses)"
)


class FakeUpstream:
    """A DNS server on 127.0.0.1 answering every A question with 192.0.2.77, standing in
    for the host's resolvers so cluster DNS forwarding is tested without leaving the host."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.questions = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            # Header (12 bytes), then the question: labels, type, class.
            i = 12
            labels = []
            while data[i]:
                labels.append(data[i + 1:i + 1 + data[i]].decode())
                i += 1 + data[i]
            question = data[12:i + 5]
            self.questions.append(".".join(labels))
            qtype = int.from_bytes(data[i + 1:i + 3], "big")
            answers = b""
            if qtype == 1:
                answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 30, 4) + bytes([192, 0, 2, 77])
            header = data[:2] + struct.pack(">HHHHH", 0x8180, 1, 1 if answers else 0, 0, 0)
            self.sock.sendto(header + question + answers, peer)

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def upstream():
    u = FakeUpstream()
    yield u
    u.close()


@pytest.fixture(scope="module")
def node(images, upstream):
    n = Node(images, extra_args=["--node-ip", "127.0.0.1",
                                 "--cluster-dns-upstream", f"127.0.0.1:{upstream.port}"])
    yield n
    n.cleanup()


@pytest.fixture
def sns(node):
    with node.namespace("s-") as name:
        yield name


def test_cluster_ip_from_a_pod_and_the_node_spreads_over_ready_pods(kc, sns):
    apply(kc, sns, deployment("who", 3, WHOAMI), service("who", "who"))
    client_pod(kc, sns)
    wait_ready_endpoints(kc, sns, "who", 3)
    ip = cluster_ip(kc, sns, "who")
    pods = {p["metadata"]["name"] for p in kc.json("get", "pods", "-n", sns, "-l", "app=who")["items"]}
    # HTTP ports balance by least requests (Istio's default), not strictly in turn: 30
    # requests reach all three pods but with odds of about 1 in 60,000.
    loop = f"for i in $(seq 30); do wget -q -O- http://{ip}/; done"
    seen = set(kc("exec", "client", "-n", sns, "--", "sh", "-c", loop).split())
    assert seen == pods, f"every ready pod answers through the cluster IP: {seen} vs {pods}"
    assert http_get(f"http://{ip}/") in pods
    # The kubelet's Service variables: the API's own Service and those of the namespace.
    env = dict(l.split("=", 1) for l in kc("exec", "client", "-n", sns, "--", "env").splitlines() if "=" in l)
    assert env["WHO_SERVICE_HOST"] == ip and env["WHO_SERVICE_PORT_HTTP"] == "80", env
    assert env["WHO_PORT"] == f"tcp://{ip}:80"
    assert env["KUBERNETES_SERVICE_HOST"] == cluster_ip(kc, "default", "kubernetes")
    assert env["KUBERNETES_SERVICE_PORT"] == "443"


def test_node_port_and_load_balancer_on_the_node_address(kc, sns):
    lb_port = 18000 + os.getpid() % 1000
    apply(kc, sns, deployment("web", 2, image="busybox-web:1"),
          service("web-np", "web", "NodePort"),
          service("web-lb", "web", "LoadBalancer", ports=[{"name": "http", "port": lb_port, "targetPort": 8080}]))
    wait_ready_endpoints(kc, sns, "web-np", 2)
    np = kc.json("get", "service", "web-np", "-n", sns)["spec"]["ports"][0]["nodePort"]
    assert wait_for("the NodePort to answer", lambda: http_get(f"http://127.0.0.1:{np}/")) == "web v1"
    lb = wait_for("the LoadBalancer's ingress", lambda: kc.json("get", "service", "web-lb", "-n", sns)
                  ["status"].get("loadBalancer", {}).get("ingress"))
    assert lb == [{"ip": "127.0.0.1", "ipMode": "VIP"}]
    out = kc("get", "service", "web-lb", "-n", sns)
    assert "127.0.0.1" in out, out
    assert wait_for("the LoadBalancer port to answer", lambda: http_get(f"http://127.0.0.1:{lb_port}/")) == "web v1"
    # Its node port answers as well, as Kubernetes gives LoadBalancers one.
    lb_np = kc.json("get", "service", "web-lb", "-n", sns)["spec"]["ports"][0]["nodePort"]
    assert http_get(f"http://127.0.0.1:{lb_np}/") == "web v1"


def test_client_ip_affinity_keeps_a_client_on_one_pod(kc, sns):
    apply(kc, sns, deployment("sticky", 3, WHOAMI), service("sticky", "sticky", sessionAffinity="ClientIP"))
    client_pod(kc, sns)
    wait_ready_endpoints(kc, sns, "sticky", 3)
    ip = cluster_ip(kc, sns, "sticky")
    seen = {from_pod(kc, sns, f"http://{ip}/") for _ in range(6)}
    assert len(seen) == 1, seen


def test_unready_pods_get_no_traffic_and_a_service_without_endpoints_refuses(kc, sns):
    gate = ["sh", "-c", "mkdir -p /w && hostname > /w/index.html && touch /w/ok && exec httpd -f -p 8080 -h /w"]
    dep = deployment("gated", 2, gate)
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] = "/ok"
    nobody = service("nobody", "no-such-app", ports=[
        {"name": "http", "port": 80, "targetPort": 8080},
        {"name": "raw", "port": 81, "targetPort": 8080},
    ])
    apply(kc, sns, dep, service("gated", "gated"), nobody)
    client_pod(kc, sns)
    wait_ready_endpoints(kc, sns, "gated", 2)
    pods = sorted(p["metadata"]["name"] for p in kc.json("get", "pods", "-n", sns, "-l", "app=gated")["items"])
    kc.run("exec", pods[0], "-n", sns, "--", "rm", "/w/ok")
    wait_ready_endpoints(kc, sns, "gated", 1)
    ip = cluster_ip(kc, sns, "gated")
    seen = {from_pod(kc, sns, f"http://{ip}/") for _ in range(5)}
    assert seen == {pods[1]}, seen
    # No endpoints: an HTTP port answers 503 with the reason, as Envoy does ...
    nobody = cluster_ip(kc, sns, "nobody")
    try:
        http_get(f"http://{nobody}/")
        raise AssertionError("expected a 503")
    except urllib.error.HTTPError as e:
        assert e.code == 503
        assert e.headers["x-corral-reason"] == "no_healthy_upstream"
        assert e.read().decode() == "no healthy upstream"
    # ... and a TCP port refuses at once rather than hanging.
    started = time.time()
    out = from_pod(kc, sns, f"http://{nobody}:81/", check=False)
    assert out.returncode != 0
    assert time.time() - started < 10
    assert "refused" in out.stderr.lower() or "reset" in out.stderr.lower(), out.stderr


def test_rolling_a_deployment_behind_a_service_loses_no_request(kc, sns):
    dep = deployment("roll", 2, image="busybox-web:1")
    dep["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    apply(kc, sns, dep, service("roll", "roll"))
    wait_ready_endpoints(kc, sns, "roll", 2)
    url = f"http://{cluster_ip(kc, sns, 'roll')}/"
    results, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            try:
                results.append(http_get(url, timeout=5))
            except Exception as e:  # counted as a lost request
                results.append(f"error: {e}")
            time.sleep(0.01)

    t = threading.Thread(target=load)
    t.start()
    try:
        kc.run("set", "image", "-n", sns, "deployment/roll", "app=busybox-web:2")
        kc.run("rollout", "status", "-n", sns, "deployment/roll", "--timeout=120s", timeout=150)
        wait_for("v2 to answer", lambda: results and results[-1] == "web v2")
        time.sleep(1)
    finally:
        stop.set()
        t.join()
    errors = [r for r in results if r.startswith("error")]
    assert not errors, f"{len(errors)} of {len(results)} requests failed: {errors[:3]}"
    assert {"web v1", "web v2"} <= set(results)


def test_the_proxy_removes_its_addresses_when_it_stops_and_after_a_crash(node, kc, sns):
    apply(kc, sns, service("addr", "nothing"))
    ip = cluster_ip(kc, sns, "addr")

    def on_lo():
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True).stdout
        return {line.split()[3].split("/")[0] for line in out.splitlines()}

    wait_for("the cluster IP on lo", lambda: ip in on_lo())
    # A crash leaves addresses behind; the next start removes those whose Service is gone.
    stale = node.server.service_cidr.rsplit(".", 1)[0] + ".250"
    subprocess.run(["ip", "addr", "add", f"{stale}/32", "dev", "lo"], check=True)
    with open(os.path.join(node.data_dir, "proxy", "local-ips"), "a") as f:
        f.write(stale + "\n")
    node.server.stop(sig=9)
    assert ip in on_lo()
    node.server.start()
    wait_for("the stale address to be removed", lambda: stale not in on_lo())
    assert wait_for("the live address to stay", lambda: ip in on_lo())
    node.server.stop()
    assert not {a for a in on_lo() if a.startswith(node.server.service_cidr.rsplit(".", 1)[0] + ".")}, on_lo()
    node.server.start()
    wait_for("the cluster IP on lo again", lambda: ip in on_lo())


def test_cluster_dns_from_a_pod(kc, sns, upstream):
    apply(kc, sns, deployment("named", 2, WHOAMI), service("named", "named"),
          service("peers", "named", clusterIP="None"))
    client_pod(kc, sns)
    wait_ready_endpoints(kc, sns, "named", 2)
    wait_ready_endpoints(kc, sns, "peers", 2)
    ip = cluster_ip(kc, sns, "named")
    resolv = kc("exec", "client", "-n", sns, "--", "cat", "/etc/resolv.conf")
    assert f"search {sns}.svc.cluster.local svc.cluster.local cluster.local" in resolv, resolv
    assert "options ndots:5" in resolv
    out = kc("exec", "client", "-n", sns, "--", "nslookup", f"named.{sns}.svc.cluster.local")
    assert ip in out, out
    # The short name through the search path, as every HTTP client in a pod uses it.
    pods = {p["metadata"]["name"] for p in kc.json("get", "pods", "-n", sns, "-l", "app=named")["items"]}
    assert from_pod(kc, sns, "http://named/") in pods
    # A headless Service answers with its ready pods' addresses.
    pod_ips = sorted(p["status"]["podIP"] for p in kc.json("get", "pods", "-n", sns, "-l", "app=named")["items"])
    out = kc("exec", "client", "-n", sns, "--", "nslookup", f"peers.{sns}.svc.cluster.local")
    assert all(p in out for p in pod_ips), out
    # A name that does not exist in the cluster domain is NXDOMAIN, not forwarded.
    bad = kc.run("exec", "client", "-n", sns, "--", "nslookup", f"nothing.{sns}.svc.cluster.local", check=False)
    assert "NXDOMAIN" in bad.stdout + bad.stderr, bad
    # Other names go to the upstream resolvers.
    out = kc("exec", "client", "-n", sns, "--", "nslookup", "www.example.test.")
    assert "192.0.2.77" in out, out
    assert "www.example.test" in upstream.questions


def test_ingress_routes_hosts_and_paths_with_tls(node, kc, sns, tmp_path):
    # Each pod answers its own name at every path the rules below route.
    paths = ["sh", "-c", "mkdir -p /w/web && for f in index.html web/index.html webx exact; do "
                         "hostname > /w/$f; done && exec httpd -f -p 8080 -h /w"]
    apply(kc, sns, deployment("web", 1, paths), service("web", "web"),
          deployment("who", 1, paths), service("who", "who"))
    wait_ready_endpoints(kc, sns, "web", 1)
    wait_ready_endpoints(kc, sns, "who", 1)
    web = kc.json("get", "pods", "-n", sns, "-l", "app=web")["items"][0]["metadata"]["name"]
    who = kc.json("get", "pods", "-n", sns, "-l", "app=who")["items"][0]["metadata"]["name"]
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the Ingress's TLS certificate")
    key, crt = tmp_path / "tls.key", tmp_path / "tls.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=shop.example.test", "-addext", "subjectAltName=DNS:shop.example.test",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    kc.run("create", "secret", "tls", "shop-tls", "-n", sns, f"--cert={crt}", f"--key={key}")
    ingress = {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "shop"},
        "spec": {
            "tls": [{"hosts": ["shop.example.test"], "secretName": "shop-tls"}],
            "defaultBackend": {"service": {"name": "who", "port": {"number": 80}}},
            "rules": [{"host": "shop.example.test", "http": {"paths": [
                {"path": "/web", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "http"}}}},
                {"path": "/exact", "pathType": "Exact", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "who", "port": {"number": 80}}}},
            ]}}],
        },
    }
    apply(kc, sns, ingress)
    base = f"http://127.0.0.1:{node.ingress_http_port}"

    def get(path, host="shop.example.test"):
        req = urllib.request.Request(base + path, headers={"Host": host})
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.read().decode().strip()

    assert wait_for("the Ingress to route", lambda: get("/web/index.html") == web)
    assert get("/webx") == who, "a Prefix path matches whole elements only"
    assert get("/exact") == web
    assert get("/") == who
    assert get("/", host="other.example.test") == who, "the default backend takes other hosts"
    assert get("/exact", host="SHOP.example.test:80") == web, "hosts match without case or port"
    # The Ingress's status names the node; kubectl shows the class and address.
    wait_for("the Ingress status", lambda: kc.json("get", "ingress", "shop", "-n", sns)["status"]
             .get("loadBalancer", {}).get("ingress") == [{"ip": "127.0.0.1"}])
    out = kc("get", "ingress", "shop", "-n", sns)
    assert "corral" in out and "127.0.0.1" in out, out
    # HTTPS with the Secret's certificate, chosen by SNI.
    ctx = ssl.create_default_context(cafile=str(crt))
    conn = http.client.HTTPSConnection("shop.example.test", node.ingress_https_port, context=ctx, timeout=5)
    conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", node.ingress_https_port), timeout=5),
                                server_hostname="shop.example.test")
    conn.request("GET", "/web/index.html", headers={"Host": "shop.example.test"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read().decode().strip() == web
    conn.close()
    # A host without a certificate gets no TLS handshake.
    with pytest.raises(ssl.SSLError):
        ctx2 = ssl.create_default_context(cafile=str(crt))
        ctx2.check_hostname = False
        ctx2.wrap_socket(socket.create_connection(("127.0.0.1", node.ingress_https_port), timeout=5),
                         server_hostname="nocert.example.test")
    kc.run("delete", "ingress", "shop", "-n", sns)
