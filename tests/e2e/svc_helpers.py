"""Helpers for tests with real pods behind Services: workloads, Services, requests."""

import json
import urllib.request

from conftest import wait_for


# Serves its own pod name on 8080, so a test sees which endpoint answered.
WHOAMI = ["sh", "-c", "mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 8080 -h /w"]


def deployment(name, replicas, command=None, image="busybox:test", extra_spec=None):
    container = {
        "name": "app",
        "image": image,
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    if command:
        container["command"] = command
    spec = {"terminationGracePeriodSeconds": 5, "containers": [container]}
    spec.update(extra_spec or {})
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


def service(name, selector, svc_type="ClusterIP", **spec):
    body = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"type": svc_type, "selector": {"app": selector},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    body["spec"].update(spec)
    return body


def apply(kc, ns, *objs):
    kc.run("apply", "-n", ns, "-f", "-", input="\n---\n".join(json.dumps(o) for o in objs))


def client_pod(kc, ns):
    kc.run("run", "client", "-n", ns, "--image=busybox:test", "--restart=Never", "--", "sleep", "3600")
    wait_for("the client pod to run", lambda: kc.json("get", "pod", "client", "-n", ns)["status"].get("phase") == "Running")


def ready_endpoints(kc, ns, svc):
    slices = kc.json("get", "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={svc}")["items"]
    return sorted(a for s in slices for e in (s.get("endpoints") or [])
                  if (e.get("conditions") or {}).get("ready") for a in e["addresses"])


def wait_ready_endpoints(kc, ns, svc, n):
    return wait_for(f"{n} ready endpoints behind {svc}", lambda: len(ready_endpoints(kc, ns, svc)) == n)


def cluster_ip(kc, ns, svc):
    return kc.json("get", "service", svc, "-n", ns)["spec"]["clusterIP"]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode().strip()


def from_pod(kc, ns, url, check=True):
    out = kc.run("exec", "client", "-n", ns, "--", "wget", "-q", "-O-", url, check=check)
    return out.stdout.strip() if check else out


