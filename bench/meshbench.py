#!/usr/bin/env python3
"""The mesh benchmark behind bench/mesh.sh: a Service call that crosses nodes under mutual
TLS, against HAProxy doing the same, in the same run.

Two nodes on this machine: `corral server` (with its node agent and proxy) on the host, and
`corral agent` joined to it from a network namespace this script makes (a veth pair
10.250.N.1 <-> 10.250.N.2 is the only link). Two nginx pods (an image made here from
Debian's nginx binary) run on the joined node. wrk runs on the host and calls:

- direct:  from inside the joined node's namespace, a pod's address (no proxy at all);
- corral:  the Service's cluster IP on the host; the server node's proxy routes it (L7) and
           carries it to the joined node's proxy in the HTTP/2 CONNECT tunnel over mutual
           TLS 1.3 (port 15008), which connects to the pod;
- haproxy: HAProxy on the host (mode http) -> mutual TLS 1.3 (client certificate, both
           verified against one CA, connections reused) -> HAProxy in the namespace (mode
           http) -> the two pods, round robin.

Measured: latency at about 1,000 req/s (wrk -c1 with a 1 ms pause, as bench/proxy.sh) and
the maximum rate (wrk -c50). Prints one JSON line per measurement and a summary table with
the added p99 over direct and the ratios. Python 3 standard library only; needs root.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "images"))
import build as images  # noqa: E402  (tests/images/build.py: OCI layouts)

NGINX_CONF = """daemon off;
master_process off;
worker_processes 1;
user root;
error_log stderr error;
pid /tmp/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path /tmp;
    proxy_temp_path /tmp;
    fastcgi_temp_path /tmp;
    uwsgi_temp_path /tmp;
    scgi_temp_path /tmp;
    server {
        listen 8080 reuseport;
        location / { default_type text/plain; return 200 "mesh bench $hostname\\n"; }
    }
}
"""


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(*cmd, **kw):
    kw.setdefault("check", True)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run(list(cmd), **kw)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_image(path):
    """An OCI layout with /usr/sbin/nginx, the libraries it links and a config."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    libs = set()
    for line in run("ldd", nginx).stdout.splitlines():
        m = re.search(r"(/\S+)", line)
        if m and os.path.exists(m.group(1)):
            libs.add(m.group(1))
    t = images.Tar()
    made = set()

    def parents(p):
        parts = p.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in made:
                made.add(d)
                t.dir(d)

    for src in sorted(libs | {nginx}):
        real = os.path.realpath(src)
        parents(src)
        with open(real, "rb") as f:
            t.file(src.lstrip("/"), f.read(), 0o755)
    for d in ("tmp", "etc", "var", "var/log", "var/log/nginx", "var/lib", "var/lib/nginx"):
        if d not in made:
            made.add(d)
            t.dir(d, 0o1777 if d == "tmp" else 0o755)
    t.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    t.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    t.file("etc/nginx.conf", NGINX_CONF.encode())
    cfg = {"Cmd": ["/usr/sbin/nginx", "-c", "/etc/nginx.conf", "-p", "/tmp"], "ExposedPorts": {"8080/tcp": {}}}
    data, _ = images.image_layout("mesh-nginx", "1", [(t.bytes(), False)], cfg, ["nginx from the host"])
    with open(path, "wb") as f:
        f.write(data)


class Bench:
    def __init__(self, args):
        self.args = args
        self.bin = args.bin
        self.tmp = tempfile.mkdtemp(prefix="corral-meshbench-")
        taken = run("ip", "-o", "link").stdout
        self.n = next(n for n in random.sample(range(100, 250), 150) if f"cmb{n}a" not in taken)
        self.netns = f"corral-mb{self.n}"
        self.host_if, self.ns_if = f"cmb{self.n}a", f"cmb{self.n}b"
        self.host_ip, self.ns_ip = f"10.250.{self.n}.1", f"10.250.{self.n}.2"
        self.bridge = f"corral-mb{self.n}"
        self.server_node = f"corral-meshbench-main-{self.n}"
        self.agent_node = f"corral-meshbench-join-{self.n}"
        self.procs = []

    # ---- set up ----

    def ns(self, *cmd):
        return ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]

    def network(self):
        run("ip", "netns", "add", self.netns)
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        run("ip", "link", "set", self.ns_if, "netns", self.netns)
        run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        run("ip", "-n", self.netns, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        run("ip", "-n", self.netns, "link", "set", self.ns_if, "up")
        run("ip", "-n", self.netns, "link", "set", "lo", "up")

    def spawn(self, cmd, name):
        out = open(os.path.join(self.tmp, name + ".log"), "ab")
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append((name, p))
        return p

    def kubectl(self, *args, input=None, check=True):
        env = dict(os.environ, KUBECONFIG=os.path.join(self.server_dir, "kubeconfig.yaml"))
        return subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, env=env,
                              check=check, timeout=60)

    def wait(self, what, fn, timeout=90):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                v = fn()
                if v:
                    return v
            except Exception:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"timed out waiting for {what}")

    def cluster(self):
        image = os.path.join(self.tmp, "mesh-nginx.tar")
        nginx_image(image)
        self.server_dir = os.path.join(self.tmp, "server")
        self.agent_dir = os.path.join(self.tmp, "agent")
        self.port = free_port()
        self.metrics_port = free_port()
        self.spawn([self.bin, "server", "--data-dir", self.server_dir, "--https-port", str(self.port),
                    "--bind", self.host_ip, "--node-name", self.server_node, "--bridge", self.bridge,
                    "--pod-cidr", f"10.248.{self.n}.0/24", "--node-ip", self.host_ip,
                    "--service-cidr", f"10.98.{self.n}.0/24", "--kubelet-port", str(free_port()),
                    "--proxy-metrics-port", str(self.metrics_port),
                    "--cluster-dns-upstream", f"127.0.0.1:{free_port()}",
                    "--ingress-http-port", "0", "--ingress-https-port", "0"], "server")
        self.wait("the server", lambda: os.path.exists(os.path.join(self.server_dir, "kubeconfig.yaml"))
                  and self.kubectl("get", "nodes").returncode == 0, 60)
        token = run(self.bin, "token", "create", "--data-dir", self.server_dir, "--ttl", "2h").stdout.strip()
        run(self.bin, "image", "import", "--data-dir", self.agent_dir, image)
        self.spawn(self.ns(self.bin, "agent", "--server", f"https://{self.host_ip}:{self.port}", "--token", token,
                           "--data-dir", self.agent_dir, "--node-name", self.agent_node, "--node-ip", self.ns_ip,
                           "--kubelet-port", "10250", "--proxy-metrics-port", "15020",
                           "--cluster-dns-upstream", "127.0.0.1:9"), "agent")
        dep = {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"nodeSelector": {"kubernetes.io/hostname": self.agent_node},
                                           "containers": [{"name": "nginx", "image": "mesh-nginx:1",
                                                           "ports": [{"containerPort": 8080}]}]}}}}
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
        dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "web"},
              "spec": {"host": "web", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}}
        for obj in (dep, svc, dr):
            self.kubectl("apply", "-n", "default", "-f", "-", input=json.dumps(obj))

        def ready_ips():
            pods = json.loads(self.kubectl("get", "pods", "-l", "app=web", "-o", "json").stdout)["items"]
            ok = [p["status"]["podIP"] for p in pods
                  if any(c.get("ready") for c in p["status"].get("containerStatuses", []))]
            return ok if len(ok) == 2 else None
        self.pod_ips = self.wait("two nginx pods on the joined node", ready_ips, 120)
        self.cluster_ip = json.loads(self.kubectl("get", "svc", "web", "-o", "json").stdout)["spec"]["clusterIP"]
        self.wait("the Service through the tunnel", lambda: b"mesh bench" in
                  urllib.request.urlopen(f"http://{self.cluster_ip}/", timeout=2).read(), 60)
        self.server_pid = self.procs[0][1].pid

    def haproxy(self):
        d = os.path.join(self.tmp, "pki")
        os.makedirs(d)
        o = lambda *a: run("openssl", *a, cwd=d)  # noqa: E731
        o("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
          "-subj", "/CN=bench-ca", "-keyout", "ca.key", "-out", "ca.pem")
        for who in ("a", "b"):
            o("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
              "-subj", f"/CN=node-{who}", "-keyout", f"{who}.key", "-out", f"{who}.csr")
            with open(os.path.join(d, f"{who}.ext"), "w") as f:
                f.write(f"subjectAltName=DNS:node-{who}\nextendedKeyUsage=serverAuth,clientAuth\n")
            o("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
              "-days", "1", "-extfile", f"{who}.ext", "-out", f"{who}.crt")
            with open(os.path.join(d, f"{who}.pem"), "w") as f:
                f.write(open(os.path.join(d, f"{who}.crt")).read() + open(os.path.join(d, f"{who}.key")).read())
        self.ha_port, ha_b_port = free_port(), 15443
        common = ("global\n    nbthread 2\n    ssl-default-bind-options ssl-min-ver TLSv1.3\n"
                  "    ssl-default-server-options ssl-min-ver TLSv1.3\n"
                  "defaults\n    mode http\n    timeout connect 3s\n    timeout client 60s\n"
                  "    timeout server 60s\n    http-reuse always\n")
        a = common + (f"frontend fa\n    bind 127.0.0.1:{self.ha_port}\n    default_backend ba\n"
                      f"backend ba\n    server b {self.ns_ip}:{ha_b_port} ssl crt {d}/a.pem ca-file {d}/ca.pem"
                      f" verify required verifyhost node-b sni str(node-b)\n")
        servers = "".join(f"    server p{i} {ip}:8080\n" for i, ip in enumerate(self.pod_ips))
        b = common + (f"frontend fb\n    bind {self.ns_ip}:{ha_b_port} ssl crt {d}/b.pem ca-file {d}/ca.pem"
                      f" verify required\n    default_backend bb\nbackend bb\n    balance roundrobin\n{servers}")
        for name, cfg, wrap in (("haproxy-a", a, lambda c: c), ("haproxy-b", b, lambda c: self.ns(*c))):
            path = os.path.join(self.tmp, name + ".cfg")
            with open(path, "w") as f:
                f.write(cfg)
            self.spawn(wrap(["haproxy", "-f", path, "-db"]), name)
        self.wait("HAProxy's chain", lambda: b"mesh bench" in
                  urllib.request.urlopen(f"http://127.0.0.1:{self.ha_port}/", timeout=2).read(), 30)

    # ---- measure ----

    def wrk(self, url, conns, delay_ms, in_ns=False):
        env = dict(os.environ, WRK_DELAY_MS=str(delay_ms))
        cmd = ["wrk", "-t1" if conns == 1 else "-t2", f"-c{conns}", f"-d{self.args.duration}s", "--latency",
               "-s", os.path.join(HERE, "proxy_wrk.lua"), url]
        out = subprocess.run(self.ns(*cmd) if in_ns else cmd, capture_output=True, text=True, env=env,
                             timeout=self.args.duration + 60)
        line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
        if not line:
            raise RuntimeError(f"wrk gave no result: {out.stdout}\n{out.stderr}")
        r = json.loads(line[len("WRK_JSON "):])
        r["rate"] = r["requests"] / (r["duration_us"] / 1e6)
        return r

    def measure(self):
        paths = {
            "direct": (f"http://{self.pod_ips[0]}:8080/", True),
            "corral": (f"http://{self.cluster_ip}/", False),
            "haproxy": (f"http://127.0.0.1:{self.ha_port}/", False),
        }
        results = {}
        for rnd in range(self.args.rounds):
            # Alternate the order so neither side always runs on a warmer machine.
            order = ["direct", "corral", "haproxy"] if rnd % 2 == 0 else ["direct", "haproxy", "corral"]
            for kind, conns, delay in (("paced", 1, 1), ("max", 50, 0)):
                for name in order:
                    url, in_ns = paths[name]
                    r = self.wrk(url, conns, delay, in_ns)
                    r.update(path=name, kind=kind, round=rnd)
                    print(json.dumps(r), flush=True)
                    results.setdefault((name, kind), []).append(r)
        return results

    def summary(self, results):
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        p99 = {n: med([r["lat_us"]["p99"] for r in results[(n, "paced")]]) for n in ("direct", "corral", "haproxy")}
        rate = {n: med([r["rate"] for r in results[(n, "max")]]) for n in ("direct", "corral", "haproxy")}
        added = {n: (p99[n] - p99["direct"]) / 1000 for n in ("corral", "haproxy")}
        log("")
        log(f"{'':44}{'direct':>10}{'corral':>10}{'haproxy':>10}{'ratio':>8}")
        log(f"{'p99 at ~1,000 req/s (ms)':44}{p99['direct']/1000:>10.3f}{p99['corral']/1000:>10.3f}"
            f"{p99['haproxy']/1000:>10.3f}")
        log(f"{'added p99 over direct (ms; goal < 1.0 mTLS)':44}{'':>10}{added['corral']:>10.3f}"
            f"{added['haproxy']:>10.3f}{(added['corral'] / added['haproxy']) if added['haproxy'] > 0 else 0:>8.2f}")
        log(f"{'max req/s, 50 connections':44}{rate['direct']:>10.0f}{rate['corral']:>10.0f}"
            f"{rate['haproxy']:>10.0f}{rate['corral'] / rate['haproxy']:>8.2f}")
        log("(medians of the rounds; ratio = corral / HAProxy: below 1 is better for latency, above 1 for rate)")

    # ---- clean up ----

    def cleanup(self):
        if getattr(self, "server_dir", None) and os.path.exists(os.path.join(self.server_dir, "kubeconfig.yaml")):
            self.kubectl("delete", "deployment", "web", "--wait=false", check=False)
            self.kubectl("delete", "pods", "--all", "--grace-period=0", "--force", check=False)
            deadline = time.time() + 60
            cdir = os.path.join(getattr(self, "agent_dir", ""), "runtime", "containers")
            while time.time() < deadline and os.path.isdir(cdir) and os.listdir(cdir):
                time.sleep(0.5)
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for d in (getattr(self, "server_dir", None), getattr(self, "agent_dir", None)):
            cdir = os.path.join(d or "", "runtime", "containers")
            for cid in os.listdir(cdir) if os.path.isdir(cdir) else []:
                try:
                    with open(os.path.join(cdir, cid, "state.json")) as f:
                        os.kill(json.load(f)["pid"], signal.SIGKILL)
                except Exception:
                    pass
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        for node in (self.server_node, self.agent_node):
            for root in ["/sys/fs/cgroup"] + [f"/sys/fs/cgroup/{h}" for h in
                                             ("cpu", "cpuacct", "memory", "pids", "cpu,cpuacct")]:
                top = os.path.join(root, "corral-" + node)
                for sub, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])) if os.path.isdir(top) else []:
                    try:
                        os.rmdir(sub)
                    except OSError:
                        pass
        for line in reversed(open("/proc/self/mountinfo").read().splitlines()):
            mp = line.split()[4]
            if mp.startswith(self.tmp):
                subprocess.run(["umount", "-l", mp], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        left = [x for x in run("ip", "-o", "link").stdout.splitlines() if self.host_if in x or self.bridge in x]
        if left:
            log("left behind:", left)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    b = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        log("setting up: network namespace, corral server + joined agent, nginx pods, HAProxy pair")
        b.network()
        b.cluster()
        b.haproxy()
        log(f"measuring: {args.rounds} rounds of {args.duration} s per path and load")
        b.summary(b.measure())
    finally:
        b.cleanup()


if __name__ == "__main__":
    main()
