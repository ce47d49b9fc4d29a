"""End-to-end tests of the EndpointSlice and Endpoints controllers: real pods from the
busybox test images, run by the node agent of a `corral server`, selected by Services,
checked with the real kubectl and the official Python client.

The module starts its own server with an agent on a bridge of its own (test_pods' Node),
so pod addresses are real. Every test works in its own namespace and removes its
workloads and pods; the module's Node checks at the end that the runtime holds nothing.
Needs root (namespaces, cgroups, bridges); skips with a message otherwise."""

import json
import os
import time

import pytest

from conftest import _py_config, wait_for


pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the node agent needs root for namespaces, cgroups and bridges"
)

MANAGED_BY = "endpointslice-controller.k8s.io"


@pytest.fixture
def ens(node):
    with node.namespace("e-") as name:
        yield name


@pytest.fixture
def apis(node):
    from kubernetes import client

    api = client.ApiClient(configuration=_py_config(node.server))
    yield client.CoreV1Api(api), client.DiscoveryV1Api(api)
    api.close()


def apply(kc, ns, *objs):
    kc.run("apply", "-n", ns, "-f", "-", input="\n---\n".join(json.dumps(o) for o in objs))


def web_container(ready_file=True):
    """A container with a named port whose readiness is a file the test can remove; it
    takes a few seconds to stop after SIGTERM, so a deleted pod is seen terminating."""
    start = "touch /tmp/ready; " if ready_file else ""
    return {
        "name": "web",
        "image": "busybox:test",
        "command": ["sh", "-c", start + "trap 'sleep 5; exit 0' TERM; httpd -p 8080 -h /tmp; while true; do sleep 1; done"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1},
    }


def deployment(name, node, replicas, grace=30):
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeName": node.node_name,
                    "terminationGracePeriodSeconds": grace,
                    "containers": [web_container()],
                },
            },
        },
    }


def service(name, selector=None, ports=None, **spec):
    spec = dict(spec)
    if selector is not None:
        spec["selector"] = selector
    if ports is not None:
        spec["ports"] = ports
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def slices(kc, ns, svc):
    return kc.json("get", "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={svc}")["items"]


def endpoints_of(kc, ns, svc):
    """Every endpoint of the Service's slices, by pod name."""
    out = {}
    for s in slices(kc, ns, svc):
        for e in s.get("endpoints") or []:
            out[e["targetRef"]["name"]] = e
    return out


def ready_pods(kc, ns, selector):
    items = kc.json("get", "pods", "-n", ns, "-l", selector)["items"]
    return [
        p for p in items
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))
    ]


def addresses(ep, field="addresses"):
    return sorted(a["ip"] for s in ep.get("subsets") or [] for a in s.get(field) or [])


def test_endpoints_follow_readiness_termination_and_scale(node, kc, ens, apis):
    core, discovery = apis
    apply(kc, ens, deployment("web", node, 2),
          service("web", {"app": "web"}, [{"name": "http", "port": 80, "targetPort": "http"}]))
    pods = wait_for("two ready pods", lambda: (lambda ps: len(ps) == 2 and ps)(ready_pods(kc, ens, "app=web")))
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}

    def all_ready():
        eps = endpoints_of(kc, ens, "web")
        ok = set(eps) == set(ips) and all(e["conditions"]["ready"] for e in eps.values())
        return ok and eps

    eps = wait_for("both pods ready in the EndpointSlice", all_ready)
    [s] = slices(kc, ens, "web")
    assert s["addressType"] == "IPv4"
    assert s["metadata"]["name"].startswith("web-") and len(s["metadata"]["name"]) == len("web-") + 5
    assert s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == MANAGED_BY
    svc_uid = kc.json("get", "service", "web", "-n", ens)["metadata"]["uid"]
    [owner] = s["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Service", "web", svc_uid)
    assert owner["controller"] is True and owner["blockOwnerDeletion"] is True
    assert s["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    for name, e in eps.items():
        assert e["addresses"] == [ips[name]]
        assert e["conditions"] == {"ready": True, "serving": True, "terminating": False}
        assert e["nodeName"] == node.node_name
        assert e["targetRef"]["kind"] == "Pod" and e["targetRef"]["namespace"] == ens

    # The legacy Endpoints object, through kubectl and the Python client.
    ep = wait_for("Endpoints listing both pods",
                  lambda: (lambda e: addresses(e) == sorted(ips.values()) and e)(kc.json("get", "endpoints", "web", "-n", ens)))
    assert ep["subsets"][0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    table = kc("get", "endpoints", "web", "-n", ens)
    for ip in ips.values():
        assert f"{ip}:8080" in table
    py = core.read_namespaced_endpoints("web", ens)
    assert sorted(a.ip for a in py.subsets[0].addresses) == sorted(ips.values())
    py_slices = discovery.list_namespaced_endpoint_slice(ens, label_selector="kubernetes.io/service-name=web").items
    assert [sl.metadata.name for sl in py_slices] == [s["metadata"]["name"]]

    # Nothing changes while nothing happens: no writes.
    before = (s["metadata"]["resourceVersion"], ep["metadata"]["resourceVersion"])
    time.sleep(3)
    [s] = slices(kc, ens, "web")
    ep = kc.json("get", "endpoints", "web", "-n", ens)
    assert (s["metadata"]["resourceVersion"], ep["metadata"]["resourceVersion"]) == before

    # One pod fails its readiness probe: not ready, not serving; a notReadyAddress.
    sick, other = sorted(ips)
    kc.run("exec", "-n", ens, sick, "--", "rm", "/tmp/ready")
    wait_for("the unready pod marked not ready",
             lambda: endpoints_of(kc, ens, "web")[sick]["conditions"] == {"ready": False, "serving": False, "terminating": False})
    assert endpoints_of(kc, ens, "web")[other]["conditions"]["ready"] is True
    wait_for("the unready pod in notReadyAddresses",
             lambda: (lambda e: addresses(e, "notReadyAddresses") == [ips[sick]] and addresses(e) == [ips[other]])(
                 kc.json("get", "endpoints", "web", "-n", ens)))
    kc.run("exec", "-n", ens, sick, "--", "touch", "/tmp/ready")
    wait_for("the pod ready again", lambda: endpoints_of(kc, ens, "web")[sick]["conditions"]["ready"] is True)

    # A graceful delete: the pod stays listed as terminating until it is gone, and leaves
    # the Endpoints object at once.
    kc.run("delete", "pod", other, "-n", ens, "--grace-period=30", "--wait=false")
    term = wait_for("the deleted pod terminating",
                    lambda: (lambda e: e and e["conditions"]["terminating"] and e)(endpoints_of(kc, ens, "web").get(other)))
    assert term["conditions"]["ready"] is False
    pod_ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in kc.json("get", "pod", other, "-n", ens)["status"]["conditions"])
    assert term["conditions"]["serving"] is pod_ready
    assert pod_ready, "the terminating pod still passes its readiness probe, so it is serving"
    ep = kc.json("get", "endpoints", "web", "-n", ens)
    assert ips[other] not in addresses(ep) + addresses(ep, "notReadyAddresses")
    wait_for("the deleted pod gone from the slices", lambda: other not in endpoints_of(kc, ens, "web"), timeout=60)

    # Scaled to zero: one empty slice stays, the Endpoints object has no subsets.
    kc.run("scale", "deploy/web", "-n", ens, "--replicas=0")
    wait_for("no pods", lambda: not kc.json("get", "pods", "-n", ens)["items"], timeout=90)
    empty = wait_for("an empty placeholder slice",
                     lambda: (lambda ss: len(ss) == 1 and not ss[0].get("endpoints") and ss)(slices(kc, ens, "web")))
    assert empty[0]["metadata"]["name"] == s["metadata"]["name"], "the slice is emptied in place"
    wait_for("Endpoints without subsets", lambda: not kc.json("get", "endpoints", "web", "-n", ens).get("subsets"))

    # Deleting the Service removes its slices (garbage collector) and its Endpoints.
    kc.run("delete", "service", "web", "-n", ens)
    wait_for("the slices gone", lambda: not slices(kc, ens, "web"), timeout=60)
    wait_for("the Endpoints gone",
             lambda: kc.run("get", "endpoints", "web", "-n", ens, check=False).returncode != 0, timeout=30)


def test_headless_statefulset_pods_get_hostnames(node, kc, ens):
    sts = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {
            "replicas": 1, "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {"nodeName": node.node_name, "terminationGracePeriodSeconds": 1, "containers": [web_container()]},
            },
        },
    }
    apply(kc, ens, service("db", {"app": "db"}, [{"name": "http", "port": 8080}], clusterIP="None"), sts)
    eps = wait_for("db-0 ready in the slice",
                   lambda: (lambda e: "db-0" in e and e["db-0"]["conditions"]["ready"] and e)(endpoints_of(kc, ens, "db")))
    assert eps["db-0"]["hostname"] == "db-0"
    [s] = slices(kc, ens, "db")
    assert s["metadata"]["labels"]["service.kubernetes.io/headless"] == ""
    ep = wait_for("db-0 in the Endpoints",
                  lambda: (lambda e: addresses(e) and e)(kc.json("get", "endpoints", "db", "-n", ens)))
    [addr] = ep["subsets"][0]["addresses"]
    assert addr["hostname"] == "db-0" and addr["targetRef"]["name"] == "db-0"
    assert ep["metadata"]["labels"]["service.kubernetes.io/headless"] == ""


def test_user_managed_endpoints_are_left_alone(node, kc, ens):
    user_slice = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "ext-manual", "labels": {"kubernetes.io/service-name": "ext", "endpointslice.kubernetes.io/managed-by": "me"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.9.9.9"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 9999, "protocol": "TCP"}],
    }
    user_ep = {
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "ext"},
        "subsets": [{"addresses": [{"ip": "10.9.9.9"}], "ports": [{"name": "http", "port": 9999}]}],
    }
    apply(kc, ens, service("ext", ports=[{"name": "http", "port": 80}]), user_slice, user_ep,
          service("alias", {"app": "web"}, type="ExternalName", externalName="example.com"),
          deployment("web", node, 1, grace=1))
    # A selector-based Service in the same namespace proves the controllers ran.
    apply(kc, ens, service("web", {"app": "web"}, [{"name": "http", "port": 80, "targetPort": 8080}]))
    wait_for("the web pod in its slice",
             lambda: any(e["conditions"]["ready"] for e in endpoints_of(kc, ens, "web").values()))
    kc.run("label", "service", "ext", "-n", ens, "touched=yes")
    time.sleep(2)
    [s] = slices(kc, ens, "ext")
    assert s["metadata"]["name"] == "ext-manual"
    assert s["endpoints"][0]["addresses"] == ["10.9.9.9"] and s["ports"][0]["port"] == 9999
    ep = kc.json("get", "endpoints", "ext", "-n", ens)
    assert addresses(ep) == ["10.9.9.9"]
    assert "touched" not in (ep["metadata"].get("labels") or {})
    # An ExternalName Service gets neither, even with a selector that matches pods.
    assert slices(kc, ens, "alias") == []
    assert kc.run("get", "endpoints", "alias", "-n", ens, check=False).returncode != 0


def test_unresolvable_target_port_drops_only_that_port(node, kc, ens, apis):
    core, _ = apis
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": "mix"}},
        "spec": {"nodeName": node.node_name, "terminationGracePeriodSeconds": 1, "containers": [web_container()]},
    }
    apply(kc, ens, pod,
          service("mixed", {"app": "mix"}, [
              {"name": "http", "port": 80, "targetPort": "http"},
              {"name": "bad", "port": 81, "targetPort": "no-such-port"},
          ]),
          service("allbad", {"app": "mix"}, [{"name": "bad", "port": 81, "targetPort": "no-such-port"}]))
    ip = wait_for("the pod ready", lambda: (lambda ps: ps and ps[0]["status"]["podIP"])(ready_pods(kc, ens, "app=mix")))
    wait_for("the pod ready in mixed's slice",
             lambda: endpoints_of(kc, ens, "mixed").get("p", {}).get("conditions", {}).get("ready"))
    [s] = slices(kc, ens, "mixed")
    assert s["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    ep = wait_for("mixed's Endpoints", lambda: (lambda e: addresses(e) and e)(kc.json("get", "endpoints", "mixed", "-n", ens)))
    assert addresses(ep) == [ip]
    assert ep["subsets"][0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    # No port resolves: the endpoint is listed without ports (as upstream), and the
    # Endpoints object has no subsets.
    wait_for("allbad's slice", lambda: endpoints_of(kc, ens, "allbad").get("p", {}).get("conditions", {}).get("ready"))
    [s] = slices(kc, ens, "allbad")
    assert not s.get("ports")
    assert not core.read_namespaced_endpoints("allbad", ens).subsets
    # The controllers keep serving: a fixed Service gets its endpoints.
    kc.run("patch", "service", "allbad", "-n", ens, "--type=json",
           "-p", json.dumps([{"op": "replace", "path": "/spec/ports/0/targetPort", "value": "http"}]))
    wait_for("allbad fixed", lambda: [p.get("port") for p in slices(kc, ens, "allbad")[0].get("ports") or []] == [8080])
    wait_for("allbad's Endpoints", lambda: addresses(kc.json("get", "endpoints", "allbad", "-n", ens)) == [ip])
