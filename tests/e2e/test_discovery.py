"""Discovery and OpenAPI documents as real clients fetch them."""

import json

import pytest

from test_bad_input import Raw


@pytest.fixture(scope="module")
def raw(server):
    return Raw(server)


def test_aggregated_discovery_content_type(raw):
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    code, body, resp = raw.request("GET", "/apis", headers={"Accept": accept})
    assert code == 200
    assert resp.getheader("Content-Type") == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    groups = {g["metadata"]["name"]: g for g in body["items"]}
    apps = groups["apps"]["versions"][0]
    dep = next(r for r in apps["resources"] if r["resource"] == "deployments")
    assert dep["shortNames"] == ["deploy"] and dep["scope"] == "Namespaced"
    assert {s["subresource"] for s in dep["subresources"]} == {"status", "scale"}
    assert [v["version"] for v in groups["autoscaling"]["versions"]] == ["v2", "v1"]


def test_legacy_discovery(raw):
    code, body, _ = raw.request("GET", "/api")
    assert body["kind"] == "APIVersions" and body["versions"] == ["v1"]
    code, body, _ = raw.request("GET", "/api/v1")
    names = {r["name"] for r in body["resources"]}
    assert {"pods", "pods/log", "pods/exec", "pods/binding", "configmaps", "namespaces/status"} <= names
    code, body, _ = raw.request("GET", "/apis/apps")
    assert body["kind"] == "APIGroup" and body["preferredVersion"]["version"] == "v1"


def test_openapi_v3_declares_field_validation_and_gvk(raw):
    code, index, _ = raw.request("GET", "/openapi/v3")
    url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
    code, doc, resp = raw.request("GET", url)
    assert code == 200 and resp.getheader("Cache-Control") == "public, immutable"
    op = doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    assert op["x-kubernetes-group-version-kind"] == {"group": "apps", "version": "v1", "kind": "Deployment"}
    assert "fieldValidation" in [p["name"] for p in op["parameters"]]
    schema = doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]
    assert schema["x-kubernetes-group-version-kind"][0]["kind"] == "Deployment"
    containers = doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"


def test_openapi_v2_json_for_json_clients_only(raw):
    code, doc, _ = raw.request("GET", "/openapi/v2")
    assert code == 200 and doc["swagger"] == "2.0"
    assert "io.k8s.api.core.v1.Pod" in doc["definitions"]
    code, _, _ = raw.request("GET", "/openapi/v2", headers={"Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"})
    assert code == 404


def test_version_and_health(raw):
    code, body, _ = raw.request("GET", "/version", anon=True)
    assert body["major"] == "1" and body["minor"] == "33" and body["gitVersion"].startswith("v1.33")
    for p in ["/healthz", "/livez", "/readyz"]:
        assert raw.request("GET", p, anon=True)[0] == 200
