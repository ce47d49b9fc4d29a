#!/usr/bin/env python3
"""Pod start and density benchmarks: corral's node agent against crun, with the same image,
on the same machine, in the same run. Driven by bench/pod_start.sh and bench/density.sh.

    python3 bench/podbench.py start   --tmp DIR --corral BIN --images DIR
    python3 bench/podbench.py density --tmp DIR --corral BIN --images DIR
    python3 bench/podbench.py cleanup --tmp DIR

corral: a `corral server` with its node agent on a bridge and pod range of its own
(corral-b<N>, 10.245.<N>.0/24), the test images imported; pods are created through the API
(raw HTTPS with the admin client certificate, the scheduler binds them) and a watch on the
namespace notes when each is first seen Running.

crun: the same image's layers unpacked once; each container gets what corral's agent makes
for a pod, done by this script inside the timed section (as a container engine or CNI
plugin would): an overlay rootfs, a network namespace (`ip netns add`) with a veth pair to
a bridge of its own (corral-c<N>, 10.246.<N>.0/24), address, routes and lo up, /etc/hosts,
hostname and resolv.conf bind-mounted, a cgroup, stdout/stderr to a log file; then
`crun run --detach`. crun has no daemon.

Everything is recorded under --tmp as it is made, so `cleanup` (also run by the shell
script's trap) removes all of it: pods, the server, container processes, crun containers,
mounts, network namespaces, bridges and cgroups. Python 3 standard library only.
"""

import argparse
import base64
import ctypes
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import threading
import time
import http.client
import urllib.parse
import gzip
import io

NS = "podbench"
IMAGE = "docker.io/library/busybox-web:1"
CMD = ["httpd", "-f", "-p", "8080", "-h", "/www"]
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP_ROOT = "/sys/fs/cgroup"


def log(*a):
    print(f"[podbench {time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def now():
    return time.monotonic()


# ---------------------------------------------------------------- records (for cleanup)

class Records:
    """What this run made, appended to files under tmp as soon as it exists."""

    def __init__(self, tmp):
        self.tmp = tmp

    def add(self, kind, value):
        with open(os.path.join(self.tmp, f"made.{kind}"), "a") as f:
            f.write(f"{value}\n")

    def get(self, kind):
        try:
            with open(os.path.join(self.tmp, f"made.{kind}")) as f:
                return [l.strip() for l in f if l.strip()]
        except OSError:
            return []

    def set(self, kind, value):
        with open(os.path.join(self.tmp, f"made.{kind}"), "w") as f:
            f.write(f"{value}\n")


# ---------------------------------------------------------------- Kubernetes API over HTTPS

class Kube:
    def __init__(self, kubeconfig, tmp):
        text = open(kubeconfig).read()
        vals = {}
        for line in text.splitlines():
            line = line.strip()
            for k in ("server", "certificate-authority-data", "client-certificate-data", "client-key-data"):
                if line.startswith(k + ":"):
                    vals[k] = line.split(":", 1)[1].strip()
        u = urllib.parse.urlparse(vals["server"])
        self.host, self.port = u.hostname, u.port
        pki = os.path.join(tmp, "client-pki")
        os.makedirs(pki, exist_ok=True)
        paths = {}
        for k in ("certificate-authority-data", "client-certificate-data", "client-key-data"):
            p = os.path.join(pki, k)
            with open(p, "wb") as f:
                f.write(base64.b64decode(vals[k]))
            paths[k] = p
        ctx = ssl.create_default_context(cafile=paths["certificate-authority-data"])
        ctx.check_hostname = False
        ctx.load_cert_chain(paths["client-certificate-data"], paths["client-key-data"])
        self.ctx = ctx
        self.local = threading.local()

    def conn(self, timeout=30):
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)

    def request(self, method, path, body=None, ok=(200, 201)):
        c = getattr(self.local, "c", None)
        for attempt in range(2):
            if c is None:
                c = self.local.c = self.conn()
            try:
                data = json.dumps(body).encode() if body is not None else None
                c.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
                r = c.getresponse()
                out = r.read()
                break
            except (http.client.HTTPException, OSError):
                c.close()
                c = self.local.c = None
                if attempt:
                    raise
        if r.status not in ok:
            raise RuntimeError(f"{method} {path}: {r.status} {out[:300]!r}")
        return json.loads(out) if out else None

    def get(self, path, ok=(200,)):
        return self.request("GET", path, ok=ok)


class PodWatch(threading.Thread):
    """One watch on the namespace's pods; notes the first time each pod is seen bound,
    with a status from the agent, and Running (with its pod IP)."""

    def __init__(self, kube, rv):
        super().__init__(daemon=True)
        self.kube, self.rv = kube, rv
        self.cond = threading.Condition()
        self.bound, self.reported, self.running, self.ip = {}, {}, {}, {}
        self.stop = False
        self.error = None

    def run(self):
        try:
            while not self.stop:
                c = self.kube.conn(timeout=None)
                c.request("GET", f"/api/v1/namespaces/{NS}/pods?watch=true&resourceVersion={self.rv}")
                r = c.getresponse()
                if r.status != 200:
                    raise RuntimeError(f"watch: {r.status} {r.read()[:300]!r}")
                while not self.stop:
                    line = r.readline()
                    if not line:
                        break
                    t = now()
                    ev = json.loads(line)
                    if ev.get("type") == "ERROR":
                        raise RuntimeError(f"watch error event: {ev}")
                    p = ev["object"]
                    self.rv = p["metadata"]["resourceVersion"]
                    name = p["metadata"]["name"]
                    st = p.get("status") or {}
                    with self.cond:
                        if (p.get("spec") or {}).get("nodeName") and name not in self.bound:
                            self.bound[name] = t
                        if st.get("hostIP") and name not in self.reported:
                            self.reported[name] = t
                        cs = st.get("containerStatuses") or []
                        if (st.get("phase") == "Running" and cs and all("running" in (c.get("state") or {}) for c in cs)
                                and name not in self.running):
                            self.running[name] = t
                            self.ip[name] = st.get("podIP")
                            self.cond.notify_all()
                c.close()
        except Exception as e:  # reported by the waiter
            self.error = e
            with self.cond:
                self.cond.notify_all()

    def wait_running(self, names, timeout):
        deadline = now() + timeout
        with self.cond:
            while not all(n in self.running for n in names):
                if self.error:
                    raise RuntimeError(f"pod watch failed: {self.error}")
                left = deadline - now()
                if left <= 0:
                    missing = [n for n in names if n not in self.running]
                    raise RuntimeError(f"pods not Running after {timeout}s: {missing[:5]}")
                self.cond.wait(left)


def wait_tcp(ip, port, deadline):
    """Time at which a TCP connect to ip:port first succeeds (polled every ms)."""
    while now() < deadline:
        s = socket.socket()
        s.settimeout(0.2)
        try:
            s.connect((ip, port))
            return now()
        except OSError:
            time.sleep(0.001)
        finally:
            s.close()
    raise RuntimeError(f"{ip}:{port} not serving in time")


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(xs):
    ms = [x * 1000 for x in xs]
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 2), "p99_ms": round(pct(ms, 99), 2),
            "max_ms": round(max(ms), 2) if ms else None, "mean_ms": round(sum(ms) / len(ms), 2) if ms else None}


# ---------------------------------------------------------------- the corral node

def free_index():
    taken = set(os.listdir("/sys/class/net"))
    for _ in range(200):
        n = random.randint(1, 250)
        if f"corral-b{n}" not in taken and f"corral-c{n}" not in taken and \
                not os.path.exists(f"{CGROUP_ROOT}/cpu/corral-bench-crun-{n}"):
            return n
    raise RuntimeError("no free corral-b<N>/corral-c<N> bridge names")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_start_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class CorralNode:
    def __init__(self, args, rec, n):
        self.args, self.rec, self.n = args, rec, n
        self.data = os.path.join(args.tmp, "data")
        self.node_name = f"corral-bench-{n}"
        self.bridge = f"corral-b{n}"
        self.cidr = f"10.245.{n}.0/24"
        self.proc = None

    def start(self):
        os.makedirs(self.data, exist_ok=True)
        images = sorted(os.path.join(self.args.images, f) for f in os.listdir(self.args.images) if f.endswith(".tar"))
        subprocess.run([self.args.corral, "image", "import", "--data-dir", self.data] + images,
                       check=True, capture_output=True)
        port, kport = free_port(), free_port()
        self.rec.set("node_name", self.node_name)
        self.rec.add("bridges", self.bridge)
        self.log = open(os.path.join(self.args.tmp, "server.log"), "ab")
        self.proc = subprocess.Popen(
            [self.args.corral, "server", "--data-dir", self.data, "--https-port", str(port),
             "--node-name", self.node_name, "--bridge", self.bridge, "--pod-cidr", self.cidr,
             "--kubelet-port", str(kport)],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.rec.set("server_pid", f"{self.proc.pid} {proc_start_ticks(self.proc.pid)}")
        kc = os.path.join(self.data, "kubeconfig.yaml")
        deadline = now() + 60
        while not os.path.exists(kc):
            if self.proc.poll() is not None or now() > deadline:
                raise RuntimeError("corral server did not start; see server.log")
            time.sleep(0.05)
        time.sleep(0.1)
        self.kube = Kube(kc, self.args.tmp)
        while True:
            try:
                node = self.kube.get(f"/api/v1/nodes/{self.node_name}", ok=(200, 404))
                st = node.get("status") if node.get("kind") == "Node" else None
                conds = {c["type"]: c["status"] for c in (st or {}).get("conditions", [])}
                if conds.get("Ready") == "True":
                    break
            except (OSError, RuntimeError, http.client.HTTPException, ssl.SSLError):
                pass
            if self.proc.poll() is not None or now() > deadline:
                raise RuntimeError("node not Ready in 60 s; see server.log")
            time.sleep(0.1)
        self.kube.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                         "metadata": {"name": NS}})
        while self.kube.get(f"/api/v1/namespaces/{NS}/serviceaccounts/default", ok=(200, 404)).get("kind") != "ServiceAccount":
            if now() > deadline:
                raise RuntimeError("no default ServiceAccount in 60 s")
            time.sleep(0.1)
        log(f"corral server pid {self.proc.pid} on :{port}, node {self.node_name}, bridge {self.bridge} {self.cidr}")

    def pid(self):
        return self.proc.pid

    def pod_manifest(self, name):
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "podbench"}},
                "spec": {"terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "web", "image": IMAGE}]}}

    def watch(self):
        rv = self.kube.get(f"/api/v1/namespaces/{NS}/pods")["metadata"]["resourceVersion"]
        w = PodWatch(self.kube, rv)
        w.start()
        return w

    def start_pods(self, names, batch, timeout=120, w=None):
        """Creates the pods `batch` at a time (each batch waits for the previous one to be
        Running); returns per pod (create sent, bound, agent status, Running, serving)."""
        own = w is None
        if own:
            w = self.watch()
        t0, serving, errors = {}, {}, []

        def one(name):
            try:
                t0[name] = now()
                self.kube.request("POST", f"/api/v1/namespaces/{NS}/pods", self.pod_manifest(name))
                w.wait_running([name], timeout)
                serving[name] = wait_tcp(w.ip[name], 8080, now() + timeout)
            except Exception as e:
                errors.append(f"{name}: {e}")

        for i in range(0, len(names), batch):
            ts = [threading.Thread(target=one, args=(n,)) for n in names[i:i + batch]]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            if errors:
                raise RuntimeError("; ".join(errors[:3]))
        if own:
            w.stop = True
        return {n: (t0[n], w.bound.get(n), w.reported.get(n), w.running[n], serving[n]) for n in names}

    def containers_dir(self):
        return os.path.join(self.data, "runtime", "containers")

    def container_pids(self):
        """(container pid, shim pid) for each running container, from the runtime's records."""
        out = []
        d = self.containers_dir()
        for cid in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            try:
                st = json.load(open(os.path.join(d, cid, "state.json")))
            except (OSError, ValueError):
                continue
            out.append((st["pid"], st["shim_pid"]))
        return out

    def delete_pods(self, timeout=120):
        self.kube.request("DELETE", f"/api/v1/namespaces/{NS}/pods?gracePeriodSeconds=0", ok=(200,))
        deadline = now() + timeout
        while now() < deadline:
            left = self.kube.get(f"/api/v1/namespaces/{NS}/pods")["items"]
            d = self.containers_dir()
            if not left and not (os.path.isdir(d) and os.listdir(d)):
                return
            time.sleep(0.2)
        raise RuntimeError("pods or containers still present 120 s after deleting them")


# ---------------------------------------------------------------- crun

libc = ctypes.CDLL(None, use_errno=True)
MS_BIND, MS_REC = 4096, 16384


def mount(src, target, fstype, flags, data):
    if libc.mount(src.encode() if src else None, target.encode(), fstype.encode() if fstype else None,
                  ctypes.c_ulong(flags), data.encode() if data else None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {target}: {os.strerror(e)}")


CLONE_NEWNS, MS_PRIVATE, MNT_DETACH = 0x20000, 1 << 18, 2
UNIFIED = os.path.join(CGROUP_ROOT, "unified")
HYBRID = os.path.ismount(UNIFIED) and os.path.exists(os.path.join(CGROUP_ROOT, "cpu"))


def _crun_mount_ns():
    """In the forked child before exec: crun 1.8 refuses a hybrid cgroup layout (v1
    hierarchies plus a v2 one at /sys/fs/cgroup/unified that holds a controller, as on this
    host), so crun runs in a private mount namespace without the v2 mount and manages the
    v1 hierarchies (cgroupfs), as corral's runtime does. Nothing propagates to the host."""
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None) != 0:
        raise OSError(ctypes.get_errno(), "make mounts private")
    if libc.umount2(UNIFIED.encode(), MNT_DETACH) != 0:
        raise OSError(ctypes.get_errno(), "umount " + UNIFIED)


def crun(argv, stdout, stderr=subprocess.PIPE):
    return subprocess.run(["crun"] + argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                          preexec_fn=_crun_mount_ns if HYBRID else None)


class Crun:
    def __init__(self, args, rec, n):
        self.args, self.rec, self.n = args, rec, n
        self.dir = os.path.join(args.tmp, "crun")
        self.root = os.path.join(self.dir, "state")
        self.bridge = f"corral-c{n}"
        self.net = f"10.246.{n}"
        self.cgroup_parent = f"corral-bench-crun-{n}"
        self.count = 0
        self.pids = {}

    def prepare(self):
        """Unpacks the image's layers (not timed) and makes the bridge."""
        os.makedirs(self.root, exist_ok=True)
        self.rec.set("crun_root", self.root)
        self.rec.set("crun_cgroup", self.cgroup_parent)
        lay = os.path.join(self.dir, "layers")
        img = os.path.join(self.args.images, "busybox-web-1.tar")
        with tarfile.open(img) as t:
            index = json.load(t.extractfile("index.json"))
            mdig = index["manifests"][0]["digest"].split(":")[1]
            manifest = json.load(t.extractfile(f"blobs/sha256/{mdig}"))
            self.layers = []
            for i, l in enumerate(manifest["layers"]):
                d = os.path.join(lay, str(i))
                os.makedirs(d)
                blob = t.extractfile("blobs/sha256/" + l["digest"].split(":")[1]).read()
                if l["mediaType"].endswith("gzip"):
                    blob = gzip.decompress(blob)
                with tarfile.open(fileobj=io.BytesIO(blob)) as lt:
                    lt.extractall(d, filter="fully_trusted") if sys.version_info >= (3, 12) else lt.extractall(d)
                self.layers.append(d)
        with open(os.path.join(self.dir, "resolv.conf"), "w") as f:
            f.write(open("/etc/resolv.conf").read() if os.path.exists("/etc/resolv.conf") else "")
        subprocess.run(["crun", "spec"], cwd=self.dir, check=True, capture_output=True)
        with open(os.path.join(self.dir, "config.json")) as f:
            self.spec = json.load(f)
        os.unlink(os.path.join(self.dir, "config.json"))
        self.rec.add("bridges", self.bridge)
        self.ip(f"link add {self.bridge} type bridge\naddr add {self.net}.1/24 dev {self.bridge}\nlink set {self.bridge} up\n")

    @staticmethod
    def ip(script, netns=None):
        cmd = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
        r = subprocess.run(cmd, input=script.encode(), capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"ip {' '.join(cmd[1:])}: {r.stderr.decode()} for:\n{script}")

    def start_one(self, i):
        """Everything an engine does for one container, then `crun run --detach`; returns
        (seconds for rootfs+network+files, seconds for crun run, pod IP)."""
        cid = f"pb{self.n}-{i}"
        netns = f"corralbench-{self.n}-{i}"
        veth = f"cbv{self.n}x{i}"
        ip = f"{self.net}.{i % 250 + 2}"
        b = os.path.join(self.dir, "b", cid)
        t_a = now()
        for sub in ("rootfs", "upper", "work"):
            os.makedirs(os.path.join(b, sub))
        self.rec.add("mounts", os.path.join(b, "rootfs"))
        lower = ":".join(reversed(self.layers))
        mount("overlay", os.path.join(b, "rootfs"), "overlay", 0,
              f"lowerdir={lower},upperdir={b}/upper,workdir={b}/work")
        self.rec.add("netns", netns)
        self.ip(f"netns add {netns}\nlink add {veth} type veth peer name eth0 netns {netns}\n"
                f"link set {veth} master {self.bridge} up\n")
        self.ip(f"link set lo up\nlink set eth0 up\naddr add {ip}/24 dev eth0\nroute add default via {self.net}.1\n",
                netns=netns)
        with open(os.path.join(b, "hosts"), "w") as f:
            f.write(f"127.0.0.1\tlocalhost\n{ip}\t{cid}\n")
        with open(os.path.join(b, "hostname"), "w") as f:
            f.write(cid + "\n")
        spec = json.loads(json.dumps(self.spec))
        p = spec["process"]
        p["terminal"] = False
        p["args"] = CMD
        p["cwd"] = "/www"
        p["env"] = [PATH_ENV, f"HOSTNAME={cid}"]
        spec["root"] = {"path": "rootfs", "readonly": False}
        spec["hostname"] = cid
        for dst, src in (("/etc/hosts", f"{b}/hosts"), ("/etc/hostname", f"{b}/hostname"),
                         ("/etc/resolv.conf", f"{self.dir}/resolv.conf")):
            spec["mounts"].append({"destination": dst, "type": "bind", "source": src, "options": ["rbind", "rw"]})
        lx = spec["linux"]
        lx["namespaces"] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")] + \
                           [{"type": "network", "path": f"/var/run/netns/{netns}"}]
        lx["cgroupsPath"] = f"/{self.cgroup_parent}/{cid}"
        with open(os.path.join(b, "config.json"), "w") as f:
            json.dump(spec, f)
        logf = open(os.path.join(b, "ctr.log"), "ab")
        t_b = now()
        self.rec.add("crun_ids", cid)
        # The container inherits crun's stdout and stderr: both go to its log file (a pipe
        # would keep us waiting for an EOF that never comes).
        r = crun(["--root", self.root, "run", "--detach", "--bundle", b, cid], stdout=logf, stderr=logf)
        t_c = now()
        logf.close()
        if r.returncode != 0:
            raise RuntimeError(f"crun run {cid}: exit {r.returncode}: {open(os.path.join(b, 'ctr.log')).read()[-500:]}")
        return t_b - t_a, t_c - t_b, ip

    def start_many(self, count, batch, timeout=60):
        """`count` containers, `batch` at a time; per container (t0, prep done, crun run
        returned, serving)."""
        res, errors = {}, []

        def one(i):
            try:
                t0 = now()
                prep, run, ip = self.start_one(i)
                res[i] = (t0, t0 + prep, t0 + prep + run, wait_tcp(ip, 8080, now() + timeout))
            except Exception as e:
                errors.append(str(e))

        base = self.count
        self.count += count
        for s in range(0, count, batch):
            ts = [threading.Thread(target=one, args=(base + i,)) for i in range(s, min(s + batch, count))]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            if errors:
                raise RuntimeError("; ".join(errors[:3]))
        return res

    def container_pids(self):
        out = []
        for cid in self.rec.get("crun_ids"):
            r = crun(["--root", self.root, "state", cid], stdout=subprocess.PIPE)
            if r.returncode == 0:
                st = json.loads(r.stdout)
                if st.get("status") == "running":
                    out.append(st["pid"])
        return out


def crun_cleanup(rec):
    """Deletes the crun containers, their rootfs mounts and network namespaces (idempotent)."""
    root = (rec.get("crun_root") or [None])[0]
    if root and os.path.isdir(root):
        for cid in rec.get("crun_ids"):
            if os.path.isdir(os.path.join(root, cid)):
                crun(["--root", root, "delete", "-f", cid], stdout=subprocess.DEVNULL)
    mounted = {l.split()[4] for l in open("/proc/self/mountinfo")}
    for mp in rec.get("mounts"):
        if mp in mounted:
            subprocess.run(["umount", "-l", mp], capture_output=True)
    for ns in rec.get("netns"):
        if os.path.exists(f"/var/run/netns/{ns}"):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# ---------------------------------------------------------------- process accounting

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except (OSError, IndexError):
        return 0.0


def mem_kib(pid):
    """(RSS, PSS) in KiB."""
    rss = pss = 0
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def descendants(pid):
    """pid and every process under it (by PPid)."""
    kids = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                for line in open(f"/proc/{p}/status"):
                    if line.startswith("PPid:"):
                        kids.setdefault(int(line.split()[1]), []).append(int(p))
                        break
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        x = todo.pop()
        out.append(x)
        todo.extend(kids.get(x, []))
    return out


def group_usage(pids):
    rss = pss = 0
    cpu = 0.0
    for p in pids:
        r, s = mem_kib(p)
        rss += r
        pss += s
        cpu += cpu_seconds(p)
    return {"procs": len(pids), "rss_kib": rss, "pss_kib": pss, "cpu_s": cpu}


# ---------------------------------------------------------------- commands

def cmd_start(args):
    rec = Records(args.tmp)
    n = free_index()
    count, batch = args.count, args.batch
    node = CorralNode(args, rec, n)
    node.start()
    crun = Crun(args, rec, n)
    crun.prepare()
    results = {}
    # One warm-up of each (first use of the bridge, image store and page cache), not counted.
    node.start_pods(["warmup"], 1)
    crun.start_many(1, 1)
    for rnd in range(args.rounds):
        # Batches alternate (10 pods, then 10 crun containers, ...), so that both see the
        # same machine load: on a shared machine it swings within seconds.
        log(f"round {rnd + 1}/{args.rounds}: {count} corral pods and {count} crun containers, "
            f"{batch} at a time, alternating")
        names = [f"p{rnd}-{i}" for i in range(count)]
        w = node.watch()
        r, c = {}, {}
        for i in range(0, count, batch):
            r.update(node.start_pods(names[i:i + batch], batch, w=w))
            c.update(crun.start_many(min(batch, count - i), batch))
        w.stop = True
        node.delete_pods()
        for k, v in (("corral_running", [x[3] - x[0] for x in r.values()]),
                     ("corral_serving", [x[4] - x[0] for x in r.values()]),
                     ("corral_bound", [x[1] - x[0] for x in r.values() if x[1]]),
                     ("corral_agent_status", [x[2] - x[0] for x in r.values() if x[2]]),
                     ("crun_run_returned", [x[2] - x[0] for x in c.values()]),
                     ("crun_serving", [x[3] - x[0] for x in c.values()]),
                     ("crun_prep", [x[1] - x[0] for x in c.values()]),
                     ("crun_run_only", [x[2] - x[1] for x in c.values()])):
            results.setdefault(k, []).extend(v)
        crun_cleanup(rec)
    out = {"bench": "pod_start", "count": count, "batch": batch, "rounds": args.rounds,
           "loadavg": open("/proc/loadavg").read().split()[:3]}
    for k, v in results.items():
        out[k] = summary(v)
    print(json.dumps(out), flush=True)
    rows = [("create -> Running seen by a watch", "corral_running", "crun_run_returned",
             "crun: engine prep + `crun run --detach` returned"),
            ("start -> TCP connect to :8080 succeeds", "corral_serving", "crun_serving", "")]
    print()
    print("| measure | corral p50 / p99 ms | crun p50 / p99 ms | p50 ratio | p99 ratio |")
    print("|---|---|---|---|---|")
    for title, a, b, _ in rows:
        A, B = out[a], out[b]
        print(f"| {title} | {A['p50_ms']} / {A['p99_ms']} | {B['p50_ms']} / {B['p99_ms']} | "
              f"{A['p50_ms'] / B['p50_ms']:.2f} | {A['p99_ms'] / B['p99_ms']:.2f} |")
    print()
    print("corral, from create: bound seen p50/p99 "
          f"{out['corral_bound']['p50_ms']}/{out['corral_bound']['p99_ms']} ms; first agent status p50/p99 "
          f"{out['corral_agent_status']['p50_ms']}/{out['corral_agent_status']['p99_ms']} ms")
    print(f"crun, split: engine prep (overlay, netns+veth via ip, files) p50/p99 "
          f"{out['crun_prep']['p50_ms']}/{out['crun_prep']['p99_ms']} ms; `crun run --detach` alone p50/p99 "
          f"{out['crun_run_only']['p50_ms']}/{out['crun_run_only']['p99_ms']} ms")
    print(f"goal: corral p99 create -> Running < 100 ms: "
          f"{'met' if out['corral_running']['p99_ms'] < 100 else 'NOT met'}")


def cmd_density(args):
    rec = Records(args.tmp)
    n = free_index()
    node = CorralNode(args, rec, n)
    node.start()
    crun = Crun(args, rec, n)
    crun.prepare()
    count, idle = args.count, args.idle
    server = node.pid()

    def corral_groups():
        pairs = node.container_pids()
        ctr = [p for c, _ in pairs for p in descendants(c)]
        return {"server": group_usage([server]), "shims": group_usage([s for _, s in pairs]),
                "containers": group_usage(ctr)}

    base = corral_groups()
    log(f"corral: {count} pods, 10 at a time")
    node.start_pods([f"d{i}" for i in range(count)], 10, timeout=300)
    if len(node.container_pids()) != count:
        raise RuntimeError(f"{len(node.container_pids())} containers running, expected {count}")
    time.sleep(2)
    a = corral_groups()
    log(f"corral: idle {idle} s")
    time.sleep(idle)
    b = corral_groups()
    node.delete_pods(timeout=300)
    log(f"crun: {count} containers, 10 at a time")
    crun.start_many(count, 10)
    time.sleep(2)
    pids = crun.container_pids()
    if len(pids) != count:
        raise RuntimeError(f"{len(pids)} crun containers running, expected {count}")
    ca = group_usage([p for c in pids for p in descendants(c)])
    log(f"crun: idle {idle} s")
    time.sleep(idle)
    cb = group_usage([p for c in pids for p in descendants(c)])
    crun_cleanup(rec)
    out = {"bench": "density", "pods": count, "idle_s": idle,
           "loadavg": open("/proc/loadavg").read().split()[:3],
           "corral_before_pods": base, "corral_all_running": a, "corral_after_idle": b,
           "crun_all_running": ca, "crun_after_idle": cb}
    print(json.dumps(out), flush=True)

    def mib(k):
        return k / 1024

    def per(k):
        return k / count

    srv_rss_pod = per(b["server"]["rss_kib"] - base["server"]["rss_kib"])
    print()
    print(f"| per pod ({count} pods, {idle} s idle) | corral | crun | note |")
    print("|---|---|---|---|")
    print(f"| server RSS: before pods / all Running / after idle | {mib(base['server']['rss_kib']):.1f} / "
          f"{mib(a['server']['rss_kib']):.1f} / {mib(b['server']['rss_kib']):.1f} MiB | no daemon | |")
    print(f"| server RSS growth per pod (after idle) | {srv_rss_pod:.0f} KiB | 0 | |")
    print(f"| server CPU over {idle} s idle, per pod | {per((b['server']['cpu_s'] - a['server']['cpu_s']) * 1000):.2f} ms "
          f"(total {(b['server']['cpu_s'] - a['server']['cpu_s']) * 1000:.0f} ms) | 0 | whole server (API, controllers too) |")
    print(f"| shim RSS / PSS per pod | {per(b['shims']['rss_kib']):.0f} / {per(b['shims']['pss_kib']):.0f} KiB "
          f"({b['shims']['procs']} shims) | 0 | crun leaves no process beside the container |")
    print(f"| shim CPU over {idle} s idle, per pod | {per((b['shims']['cpu_s'] - a['shims']['cpu_s']) * 1000):.2f} ms | 0 | |")
    print(f"| container processes RSS / PSS per pod | {per(b['containers']['rss_kib']):.0f} / "
          f"{per(b['containers']['pss_kib']):.0f} KiB | {per(cb['rss_kib']):.0f} / {per(cb['pss_kib']):.0f} KiB | same httpd |")
    tot_c = b['shims']['pss_kib'] + b['containers']['pss_kib'] + max(0, b['server']['pss_kib'] - base['server']['pss_kib'])
    print(f"| node overhead + container, PSS per pod | {per(tot_c):.0f} KiB | {per(cb['pss_kib']):.0f} KiB | "
          f"ratio {tot_c / max(cb['pss_kib'], 1):.2f} |")


def cmd_cleanup(args):
    rec = Records(args.tmp)
    data = os.path.join(args.tmp, "data")
    # 1. Pods through the API while the server runs, so the agent removes them as usual.
    sp = (rec.get("server_pid") or [""])[0].split()
    server_alive = len(sp) == 2 and proc_start_ticks(int(sp[0])) == int(sp[1]) if sp and sp[1] != "None" else False
    if server_alive and os.path.exists(os.path.join(data, "kubeconfig.yaml")):
        try:
            k = Kube(os.path.join(data, "kubeconfig.yaml"), args.tmp)
            k.request("DELETE", f"/api/v1/namespaces/{NS}/pods?gracePeriodSeconds=0", ok=(200, 404))
            d = os.path.join(data, "runtime", "containers")
            deadline = now() + 60
            while now() < deadline and os.path.isdir(d) and os.listdir(d):
                time.sleep(0.2)
        except Exception as e:
            log(f"cleanup: deleting pods through the API failed: {e}")
    # 2. The server.
    if server_alive:
        pid = int(sp[0])
        os.kill(pid, signal.SIGTERM)
        for _ in range(150):
            if proc_start_ticks(pid) is None:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    # 3. Container processes and shims it may have left (only when something failed).
    d = os.path.join(data, "runtime", "containers")
    for cid in os.listdir(d) if os.path.isdir(d) else []:
        try:
            st = json.load(open(os.path.join(d, cid, "state.json")))
        except (OSError, ValueError):
            continue
        for pid, ticks in ((st["pid"], st["start_ticks"]), (st["shim_pid"], st["shim_start_ticks"])):
            if proc_start_ticks(pid) == ticks:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
    # 4. crun containers.
    crun_cleanup(rec)
    time.sleep(0.3)
    # 5. Mounts under tmp (deepest first).
    tmp = os.path.realpath(args.tmp)
    mps = []
    for line in open("/proc/self/mountinfo"):
        mp = line.split()[4].replace("\\040", " ")
        if mp == tmp or mp.startswith(tmp + "/"):
            mps.append(mp)
    for mp in sorted(mps, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)
    # 6. Network namespaces and bridges.
    for ns in rec.get("netns"):
        if os.path.exists(f"/var/run/netns/{ns}"):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for br in rec.get("bridges"):
        if os.path.exists(f"/sys/class/net/{br}"):
            subprocess.run(["ip", "link", "del", br], capture_output=True)
    # 7. Cgroups: corral's node parent and crun's parent in every hierarchy.
    parents = []
    for nn in rec.get("node_name"):
        parents.append("corral-" + nn)
    parents += rec.get("crun_cgroup")
    for parent in parents:
        for h in sorted(os.listdir(CGROUP_ROOT)) if os.path.isdir(CGROUP_ROOT) else []:
            top = os.path.join(CGROUP_ROOT, h, parent)
            if not os.path.isdir(top) or os.path.islink(os.path.join(CGROUP_ROOT, h)):
                continue
            for root, dirs, _ in sorted(os.walk(top), key=lambda x: len(x[0]), reverse=True):
                try:
                    os.rmdir(root)
                except OSError as e:
                    log(f"cleanup: rmdir {root}: {e}")
    # Report anything left.
    left = [br for br in rec.get("bridges") if os.path.exists(f"/sys/class/net/{br}")]
    left += [ns for ns in rec.get("netns") if os.path.exists(f"/var/run/netns/{ns}")]
    left += [mp for mp in (l.split()[4] for l in open("/proc/self/mountinfo")) if mp.startswith(tmp + "/")]
    if left:
        log(f"cleanup: still present: {left}")
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["start", "density", "cleanup"])
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--corral")
    ap.add_argument("--images")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--idle", type=int, default=60)
    args = ap.parse_args()
    {"start": cmd_start, "density": cmd_density, "cleanup": cmd_cleanup}[args.command](args)


if __name__ == "__main__":
    main()
