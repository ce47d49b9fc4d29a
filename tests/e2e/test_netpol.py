"""NetworkPolicy and Istio PeerAuthentication STRICT end to end: policies applied with
kubectl to real pods, and traffic from busybox clients straight to pod IPs (filtered by
the eBPF programs corral puts on the pods' veths) and through Service cluster IPs (judged
by the node proxy), plus the node itself, which may always reach its pods.

A dropped connection (a SYN the filter discards) hangs until the client gives up, so
clients run wget under `timeout`; a connection the proxy refuses is reset at once (TCP
ports) or answered 503 with `x-corral-reason: network_policy` (HTTP ports).
"""

import ctypes
import json
import os
import platform
import signal
import struct
import time
import urllib.error
import urllib.request

import pytest

from conftest import wait_for
from svc_helpers import WHOAMI, apply, cluster_ip, deployment, service, wait_ready_endpoints

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0,
                       reason="the node agent and proxy need root (namespaces, bridges, eBPF)"),
    pytest.mark.skipif(platform.machine() != "x86_64",
                       reason="the tcx query below uses x86_64's bpf(2) number"),
]

BLOCKED = "blocked"


# The node's address is loopback: NodePorts and LoadBalancer ports are reached there.
NODE_ARGS = ["--node-ip", "127.0.0.1"]


# ---- what is attached to a pod's veth ----

_libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF = 321
BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD, BPF_PROG_QUERY = 13, 15, 16
BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47


def _bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    r = _libc.syscall(SYS_BPF, cmd, buf, 128)
    if r < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r, buf.raw


def host_veth(pod_uid):
    """corral_runtime::host_veth_name: "veth" and 11 hex digits of an FNV-1a hash."""
    h = 0xcbf29ce484222325
    for b in pod_uid.encode():
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "veth%011x" % (h & 0xFFFFFFFFFFF)


def tcx_programs(veth):
    """Names of the eBPF programs attached to `veth` (both directions); [] without it."""
    try:
        ifindex = int(open(f"/sys/class/net/{veth}/ifindex").read())
    except FileNotFoundError:
        return []
    names = []
    for attach_type in (BPF_TCX_INGRESS, BPF_TCX_EGRESS):
        ids = (ctypes.c_uint32 * 16)()
        _, out = _bpf(BPF_PROG_QUERY, struct.pack("<IIIIQI", ifindex, attach_type, 0, 0,
                                                  ctypes.addressof(ids), 16))
        for prog_id in list(ids)[:struct.unpack_from("<I", out, 24)[0]]:
            fd, _ = _bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("<I", prog_id))
            try:
                info = ctypes.create_string_buffer(256)
                _bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", fd, 256, ctypes.addressof(info)))
                names.append(info.raw[64:80].rstrip(b"\0").decode())
            finally:
                os.close(fd)
    return names


def corral_programs(kc, ns, pod):
    uid = kc.json("get", "pod", pod, "-n", ns)["metadata"]["uid"]
    return [n for n in tcx_programs(host_veth(uid)) if n.startswith("corral_")]


# ---- pods, policies and requests ----

def server(kc, ns, name="web", labels=None):
    """A Deployment of one pod serving its name on 8080 (port "http"), with two Services:
    `name` (an HTTP port, proxied per request) and `name`-tcp (a TCP port)."""
    dep = deployment(name, 1, WHOAMI)
    dep["spec"]["template"]["metadata"]["labels"].update(labels or {})
    apply(kc, ns, dep, service(name, name),
          service(f"{name}-tcp", name, ports=[{"name": "tcp", "port": 80, "targetPort": "http"}]))
    wait_ready_endpoints(kc, ns, name, 1)
    pod = kc.json("get", "pods", "-n", ns, "-l", f"app={name}")["items"][0]
    return pod["metadata"]["name"], pod["status"]["podIP"]


def client(kc, ns, name, labels=None):
    args = ["run", name, "-n", ns, "--image=busybox:test", "--restart=Never"]
    if labels:
        args.append("--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()))
    kc.run(*args, "--", "sleep", "3600")
    wait_for(f"{name} to run", lambda: kc.json("get", "pod", name, "-n", ns)["status"].get("phase") == "Running")


def policy(kc, ns, name, spec):
    apply(kc, ns, {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": name}, "spec": spec})


def peer_authentication(kc, ns, name, spec):
    apply(kc, ns, {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                   "metadata": {"name": name}, "spec": spec})


def fetch(kc, ns, pod, url, wait=3):
    """What `pod` gets from `url` with busybox wget: the body, or BLOCKED when the
    connection hangs (dropped), or the error wget prints (reset, HTTP status)."""
    p = kc.run("exec", pod, "-n", ns, "--", "timeout", str(wait), "wget", "-S", "-q", "-O-", url,
               check=False)
    if p.returncode == 0:
        return p.stdout.strip()
    # busybox timeout kills wget with SIGTERM (143); 124 is coreutils' way.
    if p.returncode == 124 or p.returncode >= 128 or "Terminated" in p.stderr:
        return BLOCKED
    return "error: " + p.stderr.strip()


def raw_get(kc, ns, pod, ip, port=80):
    """The whole HTTP response `pod` gets for GET / from ip:port (busybox wget prints no
    headers of an error response): status line, headers and body. nc's input stays open a
    moment, or it may quit before the answer comes."""
    p = kc.run("exec", pod, "-n", ns, "--", "sh", "-c",
               f"(printf 'GET / HTTP/1.0\\r\\nHost: web\\r\\n\\r\\n'; sleep 2) | timeout 3 nc {ip} {port}",
               check=False)
    return p.stdout


def host_get(url):
    """The node itself (this host) fetching `url`."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code} {e.headers.get('x-corral-reason')}"


def wait_programs(kc, ns, pod, present):
    want = "a packet filter on" if present else "no packet filter left on"
    return wait_for(f"{want} {ns}/{pod}", lambda: bool(corral_programs(kc, ns, pod)) == present
                    or None, timeout=30)


# ---- the tests ----

def test_ingress_from_frontends_only_by_pod_ip_and_through_the_service(node, kc):
    with node.namespace("np-") as a, node.namespace("np-") as b:
        web, web_ip = server(kc, a)
        client(kc, a, "frontend", {"role": "frontend"})
        client(kc, a, "other")
        client(kc, b, "frontend", {"role": "frontend"})
        http_ip, tcp_ip = cluster_ip(kc, a, "web"), cluster_ip(kc, a, "web-tcp")
        direct, via_http, via_tcp = f"http://{web_ip}:8080/", f"http://{http_ip}/", f"http://{tcp_ip}/"
        for ns, pod in ((a, "frontend"), (a, "other"), (b, "frontend")):
            assert fetch(kc, ns, pod, direct) == web, "no policy yet: everyone reaches the pod"
        assert corral_programs(kc, a, web) == []

        policy(kc, a, "web-from-frontend", {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}],
                         "ports": [{"port": 8080}]}]})
        wait_programs(kc, a, web, True)
        # The frontend of the namespace: straight, and through both Services.
        assert fetch(kc, a, "frontend", direct) == web
        assert fetch(kc, a, "frontend", via_http) == web
        assert fetch(kc, a, "frontend", via_tcp) == web
        # Another pod of the namespace: dropped straight, refused by the proxy.
        assert fetch(kc, a, "other", direct) == BLOCKED
        assert "503" in fetch(kc, a, "other", via_http)
        out = raw_get(kc, a, "other", http_ip)
        assert out.startswith("HTTP/1.0 503") and "x-corral-reason: network_policy" in out, out
        out = fetch(kc, a, "other", via_tcp)
        assert out.startswith("error:") and "reset" in out.lower(), out
        # A frontend of another namespace: a podSelector alone is the policy's namespace.
        assert fetch(kc, b, "frontend", direct) == BLOCKED
        assert "503" in fetch(kc, b, "frontend", via_http)
        # The node reaches the pod (kubelet probes keep it ready) and the Service.
        assert host_get(direct) == web
        assert host_get(via_http) == web
        wait_ready_endpoints(kc, a, "web", 1)

        kc.run("delete", "networkpolicy", "web-from-frontend", "-n", a)
        wait_programs(kc, a, web, False)
        assert fetch(kc, a, "other", direct) == web, "deleting the policy restores traffic"
        assert fetch(kc, a, "other", via_http) == web
        assert fetch(kc, b, "frontend", direct) == web


def test_namespace_selector_admits_a_labelled_namespace(node, kc):
    with node.namespace("np-") as a, node.namespace("np-") as b, node.namespace("np-") as c:
        kc.run("label", "namespace", b, "team=friends")
        web, web_ip = server(kc, a)
        client(kc, b, "client")
        client(kc, c, "client")
        policy(kc, a, "from-friends", {
            "podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "friends"}}}]}]})
        wait_programs(kc, a, web, True)
        assert fetch(kc, b, "client", f"http://{web_ip}:8080/") == web
        assert fetch(kc, c, "client", f"http://{web_ip}:8080/") == BLOCKED
        assert "503" in fetch(kc, c, "client", f"http://{cluster_ip(kc, a, 'web')}/")
        # Relabelling the namespace takes it out.
        kc.run("label", "namespace", b, "team-")
        wait_for("the namespace's label to count", lambda: fetch(kc, b, "client", f"http://{web_ip}:8080/") == BLOCKED)


def test_egress_policy_limits_where_a_pod_may_connect(node, kc):
    with node.namespace("np-") as a:
        web, web_ip = server(kc, a)
        other, other_ip = server(kc, a, "other")
        client(kc, a, "client", {"role": "client"})
        policy(kc, a, "client-egress", {
            "podSelector": {"matchLabels": {"role": "client"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                        "ports": [{"port": "http"}]},
                       {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]})
        wait_programs(kc, a, "client", True)
        assert fetch(kc, a, "client", f"http://{web_ip}:8080/") == web
        assert fetch(kc, a, "client", f"http://web.{a}.svc.cluster.local/") == web, "DNS is allowed"
        assert fetch(kc, a, "client", f"http://{other_ip}:8080/") == BLOCKED
        out = raw_get(kc, a, "client", cluster_ip(kc, a, "other"))
        assert out.startswith("HTTP/1.0 503") and "x-corral-reason: network_policy" in out, out
        # Others are not limited.
        assert host_get(f"http://{other_ip}:8080/") == other
        kc.run("delete", "networkpolicy", "client-egress", "-n", a)
        wait_programs(kc, a, "client", False)
        assert fetch(kc, a, "client", f"http://{other_ip}:8080/") == other


def test_default_deny_all_and_dns_needs_allowing(node, kc):
    with node.namespace("np-") as a:
        web, web_ip = server(kc, a)
        client(kc, a, "client")
        policy(kc, a, "deny-all", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
        wait_programs(kc, a, "client", True)
        wait_programs(kc, a, web, True)
        assert fetch(kc, a, "client", f"http://{web_ip}:8080/") == BLOCKED
        assert "503" in fetch(kc, a, "client", f"http://{cluster_ip(kc, a, 'web')}/")
        # Even DNS: the cluster DNS address is no exception.
        p = kc.run("exec", "client", "-n", a, "--", "timeout", "4", "nslookup", f"web.{a}.svc.cluster.local",
                   check=False)
        assert p.returncode != 0, p.stdout
        # The node still reaches the pod, and probes keep it ready.
        assert host_get(f"http://{web_ip}:8080/") == web
        wait_ready_endpoints(kc, a, "web", 1)
        kc.run("delete", "networkpolicy", "deny-all", "-n", a)
        wait_programs(kc, a, web, False)
        wait_programs(kc, a, "client", False)
        assert fetch(kc, a, "client", f"http://{web_ip}:8080/") == web


def test_peer_authentication_strict_refuses_plaintext_straight_to_the_pod(node, kc):
    with node.namespace("np-") as a:
        web, web_ip = server(kc, a)
        client(kc, a, "client")
        direct, via_svc = f"http://{web_ip}:8080/", f"http://{cluster_ip(kc, a, 'web')}/"
        peer_authentication(kc, a, "strict", {"mtls": {"mode": "STRICT"}})
        wait_programs(kc, a, web, True)
        assert fetch(kc, a, "client", direct) == BLOCKED, "plaintext straight to the pod"
        assert fetch(kc, a, "client", via_svc) == web, "through the node proxy"
        assert fetch(kc, a, "client", f"http://{cluster_ip(kc, a, 'web-tcp')}/") == web
        assert host_get(direct) == web, "the node itself"
        assert corral_programs(kc, a, "client"), "a namespace-wide policy covers every pod"
        # A workload-specific PERMISSIVE port beats the namespace's STRICT.
        peer_authentication(kc, a, "web-permissive", {
            "selector": {"matchLabels": {"app": "web"}},
            "portLevelMtls": {"8080": {"mode": "PERMISSIVE"}}})
        wait_for("port 8080 to accept plaintext", lambda: fetch(kc, a, "client", direct) == web)
        kc.run("delete", "peerauthentication", "web-permissive", "-n", a)
        wait_for("STRICT again", lambda: fetch(kc, a, "client", direct) == BLOCKED)
        # PERMISSIVE accepts both.
        peer_authentication(kc, a, "strict", {"mtls": {"mode": "PERMISSIVE"}})
        wait_programs(kc, a, web, False)
        assert fetch(kc, a, "client", direct) == web
        assert fetch(kc, a, "client", via_svc) == web
        kc.run("delete", "peerauthentication", "strict", "-n", a)


def test_filters_outlive_a_crash_are_adopted_and_go_on_a_clean_stop(node, kc):
    with node.namespace("np-") as a:
        web, web_ip = server(kc, a)
        client(kc, a, "client")
        veth = host_veth(kc.json("get", "pod", web, "-n", a)["metadata"]["uid"])
        via_svc = f"http://{cluster_ip(kc, a, 'web')}/"
        policy(kc, a, "deny", {"podSelector": {"matchLabels": {"app": "web"}}})
        wait_programs(kc, a, web, True)
        before = sorted(tcx_programs(veth))
        assert len(before) == 1 and before[0].startswith("corral_"), before

        node.server.stop(signal.SIGKILL)
        assert sorted(tcx_programs(veth)) == before, "tcx attachments outlive the process"
        node.server.start()
        wait_for("the restarted proxy to serve", lambda: host_get(via_svc) == web)
        time.sleep(1)
        assert sorted(tcx_programs(veth)) == before, "the right program is adopted, not doubled"
        assert fetch(kc, a, "client", f"http://{web_ip}:8080/") == BLOCKED

        node.server.stop()
        assert tcx_programs(veth) == [], "a clean stop detaches everything"
        node.server.start()
        wait_programs(kc, a, web, True)
        assert sorted(tcx_programs(veth)) == before
        assert fetch(kc, a, "client", f"http://{web_ip}:8080/") == BLOCKED


def test_nothing_is_left_when_pods_go(node, kc):
    with node.namespace("np-") as a:
        web, _ = server(kc, a)
        uid = kc.json("get", "pod", web, "-n", a)["metadata"]["uid"]
        policy(kc, a, "deny", {"podSelector": {}})
        wait_programs(kc, a, web, True)
        kc.run("delete", "deployment", "web", "-n", a)
        wait_for("the pod to go", lambda: not kc.json("get", "pods", "-n", a)["items"])
        wait_for("its veth to go", lambda: not os.path.exists(f"/sys/class/net/{host_veth(uid)}"), timeout=30)
    # The policy went with its namespace; no corral program is left on any pod of the
    # node's bridge.
    bridge = f"/sys/class/net/{node.bridge}/brif"
    for veth in (os.listdir(bridge) if os.path.isdir(bridge) else []):
        assert not [n for n in tcx_programs(veth) if n.startswith("corral_")], veth
