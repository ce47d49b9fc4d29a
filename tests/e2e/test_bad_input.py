"""Bad input over raw HTTPS: each gets the Status a Kubernetes API server returns (code,
reason, message), never a 5xx, a hang or lost data."""

import base64
import json
import os
import ssl
import tempfile
import time
import http.client
import uuid

import pytest
import yaml


class Raw:
    """A minimal HTTPS client with the admin client certificate from the kubeconfig."""

    def __init__(self, server):
        cfg = yaml.safe_load(open(server.kubeconfig))
        user = cfg["users"][0]["user"]
        cluster = cfg["clusters"][0]["cluster"]
        self.tmp = tempfile.mkdtemp(prefix="corral-raw-")
        paths = {}
        for name, key in [("ca", cluster["certificate-authority-data"]),
                          ("crt", user["client-certificate-data"]),
                          ("key", user["client-key-data"])]:
            p = os.path.join(self.tmp, name)
            with open(p, "wb") as f:
                f.write(base64.b64decode(key))
            paths[name] = p
        self.ctx = ssl.create_default_context(cafile=paths["ca"])
        self.ctx.load_cert_chain(paths["crt"], paths["key"])
        self.anon = ssl.create_default_context(cafile=paths["ca"])
        self.port = server.port

    def request(self, method, path, body=None, ctype="application/json", anon=False, headers=None):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.anon if anon else self.ctx, timeout=30)
        h = {"Content-Type": ctype, "Accept": "application/json"}
        h.update(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        if r.getheader("Content-Encoding") == "gzip":
            return r.status, data, r
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = data.decode(errors="replace")
        return r.status, parsed, r


@pytest.fixture(scope="module")
def raw(server):
    return Raw(server)


def cm(name, **extra):
    d = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "b"}}
    d.update(extra)
    return d


def assert_status(body, code, reason):
    assert isinstance(body, dict), body
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == code, body
    assert body["reason"] == reason, body
    assert body["message"]


def test_unauthenticated_is_401(raw):
    code, body, _ = raw.request("GET", "/api/v1/namespaces", anon=True)
    assert code == 401
    assert_status(body, 401, "Unauthorized")
    code, body, _ = raw.request("GET", "/api/v1/namespaces", anon=True, headers={"Authorization": "Bearer wrong"})
    assert code == 401
    # Health and version need no credentials.
    assert raw.request("GET", "/readyz", anon=True)[0] == 200
    assert raw.request("GET", "/version", anon=True)[1]["major"] == "1"


def test_malformed_json_and_yaml(raw, ns):
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body='{"apiVersion": "v1", "kind": ')
    assert code == 400
    assert_status(body, 400, "BadRequest")
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body="a: [b", ctype="application/yaml")
    assert code == 400
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body="[1,2]")
    assert code == 400
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body="")
    assert code == 400


def test_wrong_types_and_kinds(raw, ns):
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body=cm("t", data={"a": 1}))
    assert code == 400 and "cannot be handled as a ConfigMap" in body["message"]
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": "three"}}
    code, body, _ = raw.request("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", body=dep)
    assert code == 400 and "replicas" in body["message"]
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body=dict(cm("t"), apiVersion="v2"))
    assert code == 400 and "does not match the expected API version" in body["message"]
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body=dict(cm("t"), kind="Secret"))
    assert code == 400
    code, body, _ = raw.request("GET", "/apis/nosuch.group/v1/things")
    assert code == 404
    assert_status(body, 404, "NotFound")


def test_invalid_names_are_422_with_causes(raw, ns):
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body=cm("Bad_Name"))
    assert code == 422
    assert_status(body, 422, "Invalid")
    cause = body["details"]["causes"][0]
    assert cause["field"] == "metadata.name" and cause["reason"] == "FieldValueInvalid"
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body=cm("x" * 300))
    assert code == 422
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}})
    assert code == 422 and "name or generateName is required" in body["message"]
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "gen-"}})
    assert code == 201 and body["metadata"]["name"].startswith("gen-") and len(body["metadata"]["name"]) == 9
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}}
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod)
    assert code == 422 and any(c["field"] == "spec.containers" for c in body["details"]["causes"])


def test_conflicts(raw, ns):
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body=cm("c"))
    assert code == 201
    rv = body["metadata"]["resourceVersion"]
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body=cm("c"))
    assert code == 409
    assert_status(body, 409, "AlreadyExists")
    upd = cm("c")
    upd["metadata"]["resourceVersion"] = rv
    upd["data"] = {"v": "1"}
    assert raw.request("PUT", f"/api/v1/namespaces/{ns}/configmaps/c", body=upd)[0] == 200
    upd["data"] = {"v": "2"}
    code, body, _ = raw.request("PUT", f"/api/v1/namespaces/{ns}/configmaps/c", body=upd)
    assert code == 409
    assert_status(body, 409, "Conflict")
    # Nothing was lost: the first update is what is stored.
    code, body, _ = raw.request("GET", f"/api/v1/namespaces/{ns}/configmaps/c")
    assert body["data"] == {"v": "1"}


def test_huge_body_is_413(raw, ns):
    big = cm("big", data={"a": "x" * (3 * 1024 * 1024 + 10)})
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body=big)
    assert code == 413
    assert_status(body, 413, "RequestEntityTooLarge")
    assert raw.request("GET", f"/api/v1/namespaces/{ns}/configmaps/big")[0] == 404


def test_watch_from_compacted_revision_is_410(raw, ns):
    code, body, resp = raw.request("GET", f"/api/v1/namespaces/{ns}/configmaps?watch=true&resourceVersion=1&timeoutSeconds=2")
    # The server keeps a bounded history; revision 1 is long compacted only on busy servers,
    # so accept either a stream of events or the 410 ERROR event Kubernetes sends.
    assert code == 200
    if isinstance(body, str) and "ERROR" in body:
        ev = json.loads(body.splitlines()[0])
        assert ev["type"] == "ERROR" and ev["object"]["code"] == 410 and ev["object"]["reason"] == "Expired"


def test_unsupported_patch_type_and_field_selector(raw, ns):
    raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body=cm("p"))
    code, body, _ = raw.request("PATCH", f"/api/v1/namespaces/{ns}/configmaps/p", body="{}", ctype="text/plain")
    assert code == 415
    code, body, _ = raw.request("GET", f"/api/v1/namespaces/{ns}/configmaps?fieldSelector=spec.bogus%3Dx")
    assert code == 400 and "field label not supported" in body["message"]
    code, body, _ = raw.request("GET", f"/api/v1/namespaces/{ns}/configmaps?labelSelector=a%20in%20(")
    assert code == 400
    code, body, _ = raw.request("PATCH", f"/api/v1/namespaces/{ns}/configmaps/p", body='[{"op":"test","path":"/data/a","value":"nope"}]', ctype="application/json-patch+json")
    assert code == 422
    code, body, _ = raw.request("PATCH", f"/api/v1/namespaces/{ns}/configmaps/missing", body="{}", ctype="application/merge-patch+json")
    assert code == 404


def test_dry_run_persists_nothing(raw, ns):
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps?dryRun=All", body=cm("dry"))
    assert code == 201 and body["metadata"]["name"] == "dry"
    assert raw.request("GET", f"/api/v1/namespaces/{ns}/configmaps/dry")[0] == 404
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps?dryRun=Bogus", body=cm("dry"))
    assert code == 400


def test_namespace_missing_or_mismatched(raw, ns):
    code, body, _ = raw.request("POST", "/api/v1/namespaces/does-not-exist/configmaps", body=cm("x"))
    assert code == 404 and 'namespaces "does-not-exist" not found' in body["message"]
    bad = cm("x")
    bad["metadata"]["namespace"] = "other"
    code, body, _ = raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body=bad)
    assert code == 400 and "does not match the namespace" in body["message"]


def test_finalizers_hold_deletion(raw, ns):
    obj = cm("fin")
    obj["metadata"]["finalizers"] = ["example.com/hold"]
    assert raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body=obj)[0] == 201
    code, body, _ = raw.request("DELETE", f"/api/v1/namespaces/{ns}/configmaps/fin")
    assert code in (200, 202) and body["metadata"]["deletionTimestamp"]
    code, body, _ = raw.request("GET", f"/api/v1/namespaces/{ns}/configmaps/fin")
    assert code == 200 and body["metadata"]["deletionTimestamp"]
    code, body, _ = raw.request("PATCH", f"/api/v1/namespaces/{ns}/configmaps/fin", body='{"metadata":{"finalizers":null}}', ctype="application/merge-patch+json")
    assert code == 200
    assert raw.request("GET", f"/api/v1/namespaces/{ns}/configmaps/fin")[0] == 404


def test_service_traffic_fields_are_checked_and_follow_the_type(raw, ns):
    def svc(name, **spec):
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                "spec": {"ports": [{"port": 80}], **spec}}

    path = f"/api/v1/namespaces/{ns}/services"
    for body, field in [
        (svc("etp-clusterip", externalTrafficPolicy="Local"), "spec.externalTrafficPolicy"),
        (svc("etp-bad", type="NodePort", externalTrafficPolicy="Sideways"), "spec.externalTrafficPolicy"),
        (svc("itp-bad", internalTrafficPolicy="Nearby"), "spec.internalTrafficPolicy"),
        (svc("alloc-np", type="NodePort", allocateLoadBalancerNodePorts=False), "spec.allocateLoadBalancerNodePorts"),
    ]:
        code, out, _ = raw.request("POST", path, body=body)
        assert code == 422, (body, out)
        assert [c["field"] for c in out["details"]["causes"]] == [field], out
    # A LoadBalancer may go without node ports.
    code, out, _ = raw.request("POST", path, body=svc("lb-bare", type="LoadBalancer", allocateLoadBalancerNodePorts=False))
    assert code == 201 and "nodePort" not in out["spec"]["ports"][0], out
    # NodePort -> ClusterIP by merge patch: the node port and the defaulted
    # externalTrafficPolicy go with the type, as upstream.
    code, out, _ = raw.request("POST", path, body=svc("np", type="NodePort"))
    assert code == 201 and out["spec"]["externalTrafficPolicy"] == "Cluster", out
    code, out, _ = raw.request("PATCH", f"{path}/np", body='{"spec":{"type":"ClusterIP"}}',
                               ctype="application/merge-patch+json")
    assert code == 200, out
    assert "nodePort" not in out["spec"]["ports"][0] and "externalTrafficPolicy" not in out["spec"], out


def test_a_list_of_thousands_is_streamed_whole_and_in_order(raw, ns, api_client):
    """An unpaginated list of more objects than one store chunk (500) is streamed from one
    snapshot: every item once, in name order, the list's resourceVersion set; selectors,
    metadata-only lists and gzip work on it as on a small one."""
    import gzip
    from kubernetes import client

    names = [f"s{i:04d}" for i in range(1100)]
    for i, n in enumerate(names):
        body = cm(n)
        body["metadata"]["labels"] = {"third": str(i % 3)}
        assert raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body=body)[0] == 201
    core = client.CoreV1Api(api_client)
    got = core.list_namespaced_config_map(ns)
    assert [i.metadata.name for i in got.items if i.metadata.name != "kube-root-ca.crt"] == names
    assert int(got.metadata.resource_version) >= max(int(i.metadata.resource_version) for i in got.items)
    third = core.list_namespaced_config_map(ns, label_selector="third=1")
    assert [i.metadata.name for i in third.items] == names[1::3]
    code, body, resp = raw.request("GET", f"/api/v1/namespaces/{ns}/configmaps",
                                   headers={"Accept-Encoding": "gzip"})
    assert code == 200 and resp.getheader("Content-Encoding") == "gzip"
    assert len(json.loads(gzip.decompress(body))["items"]) == 1101
    code, body, _ = raw.request("GET", f"/api/v1/namespaces/{ns}/configmaps", headers={
        "Accept": "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"})
    assert code == 200 and body["kind"] == "PartialObjectMetadataList", body.get("kind")
    assert len(body["items"]) == 1101 and "data" not in body["items"][0]


def test_large_lists_are_gzipped_for_clients_that_accept_it(raw, ns, kubectl):
    import gzip

    for i in range(40):
        assert raw.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body=cm(f"g{i}", data={"a": "x" * 4000}))[0] == 201
    code, body, resp = raw.request("GET", f"/api/v1/namespaces/{ns}/configmaps", headers={"Accept-Encoding": "gzip"})
    assert code == 200 and resp.getheader("Content-Encoding") == "gzip"
    names = [i["metadata"]["name"] for i in json.loads(gzip.decompress(body))["items"]]
    assert len([n for n in names if n.startswith("g")]) == 40  # besides kube-root-ca.crt
    # kubectl accepts gzip and sees the same list.
    assert len(kubectl("get", "cm", "-n", ns, "-o", "name").split()) >= 40
