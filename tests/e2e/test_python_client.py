"""The official `kubernetes` Python client against corral: typed APIs, custom objects, the
dynamic client and watch.Watch, used the way applications use them."""

import threading
import time
import uuid

import pytest
from kubernetes import client, dynamic, watch
from kubernetes.client.rest import ApiException


def test_core_v1_configmaps_and_secrets(api_client, ns):
    core = client.CoreV1Api(api_client)
    cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"a": "b"}), data={"k": "v"})
    created = core.create_namespaced_config_map(ns, cm)
    assert created.metadata.uid and created.metadata.resource_version
    got = core.read_namespaced_config_map("py", ns)
    assert got.data == {"k": "v"}
    lst = core.list_namespaced_config_map(ns, label_selector="a=b")
    assert [i.metadata.name for i in lst.items] == ["py"]
    assert lst.metadata.resource_version

    patched = core.patch_namespaced_config_map("py", ns, {"data": {"k2": "v2"}})
    assert patched.data == {"k": "v", "k2": "v2"}
    patched = core.patch_namespaced_config_map(
        "py", ns, [{"op": "remove", "path": "/data/k"}]
    )
    assert patched.data == {"k2": "v2"}

    # Optimistic concurrency: a stale resourceVersion is a 409 Conflict.
    stale = got
    stale.data = {"x": "y"}
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_config_map("py", ns, stale)
    assert e.value.status == 409
    assert "the object has been modified" in e.value.body

    fresh = core.read_namespaced_config_map("py", ns)
    fresh.data = {"x": "y"}
    replaced = core.replace_namespaced_config_map("py", ns, fresh)
    assert replaced.data == {"x": "y"}
    assert int(replaced.metadata.resource_version) > int(fresh.metadata.resource_version)

    sec = core.create_namespaced_secret(
        ns, client.V1Secret(metadata=client.V1ObjectMeta(name="s"), string_data={"p": "q"})
    )
    assert sec.data == {"p": "cQ=="} and sec.type == "Opaque"

    core.delete_namespaced_config_map("py", ns)
    with pytest.raises(ApiException) as e:
        core.read_namespaced_config_map("py", ns)
    assert e.value.status == 404


def test_pagination(api_client, ns):
    core = client.CoreV1Api(api_client)
    for i in range(25):
        core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"p{i:02d}")))
    names, cont = [], None
    pages = 0
    while True:
        page = core.list_namespaced_config_map(ns, limit=10, _continue=cont)
        pages += 1
        names += [i.metadata.name for i in page.items]
        cont = page.metadata._continue
        if not cont:
            break
    assert pages == 3
    # Every namespace also holds the cluster CA (kube-root-ca.crt).
    assert [n for n in names if n != "kube-root-ca.crt"] == sorted(f"p{i:02d}" for i in range(25))


def test_pages_show_the_first_pages_point_in_time(api_client, ns):
    """Continue tokens read the state at the first page's resourceVersion, as on
    Kubernetes: objects created, changed or deleted after the first page do not show."""
    core = client.CoreV1Api(api_client)
    for i in range(6):
        core.create_namespaced_config_map(
            ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"s{i}", labels={"snap": "1"}), data={"v": "old"})
        )
    first = core.list_namespaced_config_map(ns, limit=2, label_selector="snap=1")
    rv = first.metadata.resource_version
    core.delete_namespaced_config_map("s4", ns)
    core.patch_namespaced_config_map("s3", ns, {"data": {"v": "new"}})
    core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="s2a", labels={"snap": "1"})))
    items, cont = list(first.items), first.metadata._continue
    while cont:
        page = core.list_namespaced_config_map(ns, limit=2, label_selector="snap=1", _continue=cont)
        assert page.metadata.resource_version == rv
        items += page.items
        cont = page.metadata._continue
    assert [i.metadata.name for i in items] == [f"s{i}" for i in range(6)]
    assert {i.metadata.name: i.data["v"] for i in items}["s3"] == "old"


def test_apps_v1_deployments(api_client, ns):
    apps = client.AppsV1Api(api_client)
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "d"}},
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}},
        },
    }
    d = apps.create_namespaced_deployment(ns, body)
    assert d.metadata.generation == 1
    assert d.spec.strategy.rolling_update.max_surge == "25%"
    scale = apps.read_namespaced_deployment_scale("d", ns)
    assert scale.spec.replicas == 2
    apps.patch_namespaced_deployment_scale("d", ns, {"spec": {"replicas": 4}})
    assert apps.read_namespaced_deployment("d", ns).spec.replicas == 4
    # Status writes go through /status and do not bump generation.
    # (The deployment controller rewrites status right after, so check the write's answer.)
    d = apps.patch_namespaced_deployment_status("d", ns, {"status": {"replicas": 4, "readyReplicas": 1}})
    assert d.status.ready_replicas == 1 and d.metadata.generation == 2
    # The selector is immutable.
    with pytest.raises(ApiException) as e:
        apps.patch_namespaced_deployment("d", ns, {"spec": {"selector": {"matchLabels": {"app": "other"}}, "template": {"metadata": {"labels": {"app": "other"}}}}})
    assert e.value.status == 422 and "field is immutable" in e.value.body


def test_networking_v1(api_client, ns):
    net = client.NetworkingV1Api(api_client)
    ing = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "i"},
        "spec": {"rules": [{"host": "a.example", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]},
    }
    net.create_namespaced_ingress(ns, ing)
    assert net.read_namespaced_ingress("i", ns).spec.rules[0].host == "a.example"
    pol = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny"},
        "spec": {"podSelector": {}},
    }
    created = net.create_namespaced_network_policy(ns, pol)
    assert created.spec.policy_types == ["Ingress"]


def test_watch_stream(api_client, ns):
    core = client.CoreV1Api(api_client)
    core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="before")))
    events = []

    def writer():
        time.sleep(0.5)
        core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="w")))
        core.patch_namespaced_config_map("w", ns, {"data": {"a": "b"}})
        core.delete_namespaced_config_map("w", ns)

    t = threading.Thread(target=writer)
    t.start()
    w = watch.Watch()
    for ev in w.stream(core.list_namespaced_config_map, ns, timeout_seconds=5):
        events.append((ev["type"], ev["object"].metadata.name))
        if ev["type"] == "DELETED":
            w.stop()
    t.join()
    assert events[0] == ("ADDED", "before")
    assert events[-3:] == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]


def test_custom_resources(api_client, ns):
    ext = client.ApiextensionsV1Api(api_client)
    group = f"g{uuid.uuid4().hex[:6]}.example.com"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wdg"]},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["size"], "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                        "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                    }},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                }}},
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}},
                "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
            }],
        },
    }
    ext.create_custom_resource_definition(crd)
    try:
        co = client.CustomObjectsApi(api_client)
        w = co.create_namespaced_custom_object(group, "v1", ns, "widgets", {
            "apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w1"},
            "spec": {"size": 3, "extra": "pruned"},
        })
        assert w["spec"] == {"size": 3, "color": "red"}
        with pytest.raises(ApiException) as e:
            co.create_namespaced_custom_object(group, "v1", ns, "widgets", {
                "apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w2"},
                "spec": {"size": 30, "color": "green"},
            })
        assert e.value.status == 422
        assert "spec.size" in e.value.body and "spec.color" in e.value.body
        co.patch_namespaced_custom_object_scale(group, "v1", ns, "widgets", "w1", {"spec": {"replicas": 5}})
        assert co.get_namespaced_custom_object(group, "v1", ns, "widgets", "w1")["spec"]["size"] == 5
        lst = co.list_namespaced_custom_object(group, "v1", ns, "widgets")
        assert [i["metadata"]["name"] for i in lst["items"]] == ["w1"]

        dyn = dynamic.DynamicClient(api_client)
        api = dyn.resources.get(api_version=f"{group}/v1", kind="Widget")
        assert api.get(namespace=ns, name="w1").spec.size == 5
    finally:
        ext.delete_custom_resource_definition(f"widgets.{group}")


def test_dynamic_client(api_client, ns):
    dyn = dynamic.DynamicClient(api_client)
    cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
    cms.create(body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dyn"}, "data": {"a": "1"}}, namespace=ns)
    assert cms.get(name="dyn", namespace=ns).data.a == "1"
    deps = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    assert deps.namespaced
    assert [i.metadata.name for i in cms.get(namespace=ns).items if i.metadata.name == "dyn"] == ["dyn"]
