"""The real kubectl against a real corral server: the everyday commands, their output and
exit codes, as a user sees them."""

import json
import os
import stat
import tempfile
import textwrap

import yaml

APP = textwrap.dedent(
    """
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: settings
      labels: {app: web, tier: front}
    data:
      color: blue
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
      labels: {app: web}
    spec:
      replicas: 3
      selector:
        matchLabels: {app: web}
      template:
        metadata:
          labels: {app: web}
        spec:
          containers:
          - name: web
            image: busybox-web:1
            ports:
            - containerPort: 8080
    ---
    apiVersion: v1
    kind: Service
    metadata:
      name: web
    spec:
      selector: {app: web}
      ports:
      - port: 80
        targetPort: 8080
    """
)


def test_apply_multi_document_and_get_forms(kubectl, ns):
    out = kubectl("apply", "-n", ns, "-f", "-", input=APP)
    assert "configmap/settings created" in out
    assert "deployment.apps/web created" in out
    assert "service/web created" in out

    # Re-applying the same documents changes nothing.
    out = kubectl("apply", "-n", ns, "-f", "-", input=APP)
    assert "configmap/settings unchanged" in out
    assert "deployment.apps/web unchanged" in out

    dep = kubectl.json("get", "deploy", "web", "-n", ns)
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert dep["spec"]["template"]["spec"]["restartPolicy"] == "Always"
    assert dep["metadata"]["generation"] == 1
    assert dep["metadata"]["uid"]

    y = yaml.safe_load(kubectl("get", "cm", "settings", "-n", ns, "-o", "yaml"))
    assert y["data"] == {"color": "blue"}

    assert kubectl("get", "cm", "-n", ns, "-o", "name").split() == [
        "configmap/kube-root-ca.crt",
        "configmap/settings",
    ] or "configmap/settings" in kubectl("get", "cm", "-n", ns, "-o", "name")

    jp = kubectl("get", "svc", "web", "-n", ns, "-o", "jsonpath={.spec.ports[0].targetPort}")
    assert jp == "8080"

    table = kubectl("get", "deploy", "-n", ns)
    header = table.splitlines()[0].split()
    assert header == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    wide = kubectl("get", "deploy", "-n", ns, "-o", "wide").splitlines()[0].split()
    assert wide[-3:] == ["CONTAINERS", "IMAGES", "SELECTOR"]

    svc = kubectl.json("get", "svc", "web", "-n", ns)
    assert svc["spec"]["clusterIP"].startswith("10.43.")
    assert svc["spec"]["type"] == "ClusterIP"
    svc_table = kubectl("get", "svc", "web", "-n", ns).splitlines()
    assert svc_table[0].split()[:4] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP"]
    assert "80/TCP" in svc_table[1]

    everything = kubectl("get", "deploy,svc,cm", "-A", "-o", "wide")
    assert "web" in everything and "settings" in everything


def test_label_annotate_patch_scale(kubectl, ns):
    kubectl("apply", "-n", ns, "-f", "-", input=APP)
    kubectl("label", "cm", "settings", "-n", ns, "env=prod")
    kubectl("annotate", "cm", "settings", "-n", ns, "owner=team-a")
    cm = kubectl.json("get", "cm", "settings", "-n", ns)
    assert cm["metadata"]["labels"]["env"] == "prod"
    assert cm["metadata"]["annotations"]["owner"] == "team-a"

    # Overwriting a label needs --overwrite, as on Kubernetes.
    p = kubectl.run("label", "cm", "settings", "-n", ns, "env=dev", check=False)
    assert p.returncode != 0 and "already has a value" in p.stderr
    kubectl("label", "cm", "settings", "-n", ns, "env-")
    assert "env" not in kubectl.json("get", "cm", "settings", "-n", ns)["metadata"]["labels"]

    kubectl("patch", "cm", "settings", "-n", ns, "--type", "merge", "-p", '{"data":{"size":"xl"}}')
    kubectl("patch", "cm", "settings", "-n", ns, "--type", "json",
            "-p", '[{"op":"replace","path":"/data/color","value":"red"}]')
    cm = kubectl.json("get", "cm", "settings", "-n", ns)
    assert cm["data"] == {"color": "red", "size": "xl"}

    # Strategic merge: containers merge by name.
    kubectl("patch", "deploy", "web", "-n", ns, "-p",
            '{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"busybox-web:2"}]}}}}')
    dep = kubectl.json("get", "deploy", "web", "-n", ns)
    c = dep["spec"]["template"]["spec"]["containers"]
    assert len(c) == 1 and c[0]["image"] == "busybox-web:2" and c[0]["ports"][0]["containerPort"] == 8080
    assert dep["metadata"]["generation"] == 2

    kubectl("set", "image", "deploy/web", "-n", ns, "web=busybox-web:3")
    assert kubectl.json("get", "deploy", "web", "-n", ns)["spec"]["template"]["spec"]["containers"][0]["image"] == "busybox-web:3"

    out = kubectl("scale", "deploy", "web", "-n", ns, "--replicas=5")
    assert "scaled" in out
    assert kubectl.json("get", "deploy", "web", "-n", ns)["spec"]["replicas"] == 5


def test_edit_with_editor(kubectl, ns):
    kubectl("create", "configmap", "ed", "-n", ns, "--from-literal=k=v")
    script = tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False)
    script.write("#!/bin/sh\nsed -i 's/k: v/k: edited/' \"$1\"\n")
    script.close()
    os.chmod(script.name, stat.S_IRWXU)
    try:
        out = kubectl("edit", "cm", "ed", "-n", ns, env={"EDITOR": script.name, "KUBE_EDITOR": script.name})
        assert "edited" in out
        assert kubectl.json("get", "cm", "ed", "-n", ns)["data"]["k"] == "edited"
    finally:
        os.unlink(script.name)


def test_create_commands_and_describe(kubectl, ns):
    kubectl("create", "configmap", "c1", "-n", ns, "--from-literal=a=1", "--from-literal=b=2")
    kubectl("create", "secret", "generic", "s1", "-n", ns, "--from-literal=password=hunter2")
    sec = kubectl.json("get", "secret", "s1", "-n", ns)
    assert sec["type"] == "Opaque"
    assert sec["data"]["password"] == "aHVudGVyMg=="
    table = kubectl("get", "secret", "s1", "-n", ns).splitlines()
    assert table[0].split() == ["NAME", "TYPE", "DATA", "AGE"]
    assert table[1].split()[:3] == ["s1", "Opaque", "1"]
    out = kubectl("describe", "cm", "c1", "-n", ns)
    assert "Name:" in out and "c1" in out


def test_delete_with_selector_and_wait(kubectl, ns):
    for i in range(3):
        kubectl("create", "configmap", f"d{i}", "-n", ns)
        kubectl("label", "cm", f"d{i}", "-n", ns, f"group={'a' if i < 2 else 'b'}")
    out = kubectl("delete", "cm", "-n", ns, "-l", "group=a")
    assert 'configmap "d0" deleted' in out and 'configmap "d1" deleted' in out
    names = kubectl("get", "cm", "-n", ns, "-l", "group", "-o", "name").split()
    assert names == ["configmap/d2"]
    p = kubectl.run("get", "cm", "d0", "-n", ns, check=False)
    assert p.returncode == 1
    assert 'configmaps "d0" not found' in p.stderr


def test_api_resources_and_explain(kubectl):
    out = kubectl("api-resources")
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NAME", "SHORTNAMES"]
    text = "\n".join(lines)
    for want in ["deployments", "deploy", "configmaps", "cm", "customresourcedefinitions",
                 "horizontalpodautoscalers", "leases", "poddisruptionbudgets", "networkpolicies"]:
        assert want in text
    exp = kubectl("explain", "deployment.spec.replicas")
    assert "replicas" in exp and "integer" in exp
    exp = kubectl("explain", "pod.spec.containers")
    assert "image" in exp


def test_diff(kubectl, ns):
    kubectl("apply", "-n", ns, "-f", "-", input=APP)
    changed = APP.replace("color: blue", "color: green")
    p = kubectl.run("diff", "-n", ns, "-f", "-", input=changed, check=False)
    assert p.returncode == 1, p.stderr
    assert "-  color: blue" in p.stdout and "+  color: green" in p.stdout
    # dry-run must not have written anything
    assert kubectl.json("get", "cm", "settings", "-n", ns)["data"]["color"] == "blue"
    p = kubectl.run("diff", "-n", ns, "-f", "-", input=APP, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_server_side_apply_and_conflicts(kubectl, ns):
    doc = textwrap.dedent(
        f"""
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: ssa
          namespace: {ns}
        data:
          a: "1"
          b: "2"
        """
    )
    out = kubectl("apply", "--server-side", "-f", "-", input=doc)
    assert "serverside-applied" in out
    cm = kubectl.json("get", "cm", "ssa", "-n", ns, "--show-managed-fields")
    managers = {m["manager"]: m for m in cm["metadata"]["managedFields"]}
    assert managers["kubectl"]["operation"] == "Apply"
    assert "f:a" in managers["kubectl"]["fieldsV1"]["f:data"]

    # Another manager changes a field: applying the old value conflicts.
    kubectl("patch", "cm", "ssa", "-n", ns, "--type", "merge", "-p", '{"data":{"a":"changed"}}')
    p = kubectl.run("apply", "--server-side", "-f", "-", input=doc, check=False)
    assert p.returncode != 0
    assert "conflict" in p.stderr.lower() and ".data.a" in p.stderr
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=doc)
    assert kubectl.json("get", "cm", "ssa", "-n", ns)["data"]["a"] == "1"

    # Dropping a field from the applied config removes it.
    smaller = doc.replace('  b: "2"\n', "")
    kubectl("apply", "--server-side", "-f", "-", input=smaller)
    assert kubectl.json("get", "cm", "ssa", "-n", ns)["data"] == {"a": "1"}


def test_get_watch_prints_changes(kubectl, ns):
    import subprocess
    import time

    kubectl("create", "configmap", "w1", "-n", ns)
    proc = subprocess.Popen(
        ["kubectl", "--cache-dir", kubectl.cache, "get", "cm", "-n", ns, "-w", "--request-timeout=20s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=kubectl.env(),
    )
    try:
        time.sleep(1.5)
        kubectl("create", "configmap", "w2", "-n", ns)
        deadline = time.time() + 15
        seen = ""
        os.set_blocking(proc.stdout.fileno(), False)
        while time.time() < deadline and "w2" not in seen:
            chunk = proc.stdout.read()
            if chunk:
                seen += chunk
            time.sleep(0.1)
        assert "w1" in seen and "w2" in seen, seen
        assert "DATA" in seen.splitlines()[0]
    finally:
        proc.kill()
        proc.wait()


def test_namespace_deletion_removes_contents(kubectl):
    import time
    import uuid

    name = "del-" + uuid.uuid4().hex[:6]
    kubectl("create", "namespace", name)
    kubectl("create", "configmap", "x", "-n", name)
    kubectl("apply", "-n", name, "-f", "-", input=APP)
    kubectl("delete", "namespace", name, "--timeout=60s")
    p = kubectl.run("get", "namespace", name, check=False)
    assert p.returncode == 1 and "not found" in p.stderr
    # Re-creating it gives an empty namespace.
    kubectl("create", "namespace", name)
    # (but for the cluster CA every namespace gets)
    left = kubectl("get", "cm,deploy", "-n", name, "-o", "name").split()
    assert left in ([], ["configmap/kube-root-ca.crt"]), left
    kubectl("delete", "namespace", name, "--wait=false")


def test_builtin_namespaces_and_kubernetes_service(kubectl):
    names = kubectl("get", "ns", "-o", "name").split()
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"]:
        assert f"namespace/{n}" in names
    svc = kubectl.json("get", "svc", "kubernetes", "-n", "default")
    assert svc["spec"]["clusterIP"] == "10.43.0.1"


def test_errors_are_statuses(kubectl, ns):
    p = kubectl.run("create", "configmap", "Bad_Name", "-n", ns, check=False)
    assert p.returncode == 1
    assert "Invalid value" in p.stderr and "RFC 1123" in p.stderr
    kubectl("create", "configmap", "dup", "-n", ns)
    p = kubectl.run("create", "configmap", "dup", "-n", ns, check=False)
    assert p.returncode == 1 and 'configmaps "dup" already exists' in p.stderr
    p = kubectl.run("get", "nosuchkind", check=False)
    assert p.returncode == 1 and "doesn't have a resource type" in p.stderr
    bad = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: strict\ndata:\n  a: b\nbogusField: 1\n"
    p = kubectl.run("create", "-n", ns, "-f", "-", input=bad, check=False)
    assert p.returncode == 1 and 'unknown field "bogusField"' in p.stderr
    out = kubectl.run("create", "-n", ns, "--validate=warn", "-f", "-", input=bad)
    assert 'unknown field "bogusField"' in out.stderr
