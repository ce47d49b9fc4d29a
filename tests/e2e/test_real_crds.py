"""The real Istio and Argo CD CustomResourceDefinitions, installed the way their docs say, and
realistic objects of each kind driven through kubectl: printer columns, YAML round trips,
`kubectl explain`, schema rejections with field paths, and CRD deletion.

We may not ship other projects' files, so the CRD YAML is taken at test time from crates on
the Rust package registry that vendor it verbatim, fetched by cargo itself (`cargo info
NAME@VERSION` leaves the `.crate` in cargo's download cache), pinned by version and
sha256, and kept in ~/.cache/corral-test-crds:

- istio-sdk 0.1.3 vendors Istio 1.18's `crd-all.gen.yaml` (the file the Istio "base" chart
  installs) as src/v1_18_0/crds.all.yaml.
- kopium 0.24.1 keeps Argo CD's `applications.argoproj.io` CRD (the one in Argo CD's
  manifests/crds/application-crd.yaml) among its test fixtures.

Without cargo or a registry the module is skipped, saying why."""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import re
import tarfile
import tempfile
import time

import pytest
import yaml

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "corral-test-crds")

# (crate, version, sha256 of the .crate, member holding the CRD YAML)
ISTIO = (
    "istio-sdk",
    "0.1.3",
    "5c242652e4372b9cadfb379477fa206b5ca0e94368b9134a5177dc7ee4734244",
    "istio-sdk-0.1.3/src/v1_18_0/crds.all.yaml",
)
ARGOCD = (
    "kopium",
    "0.24.1",
    "15cc3a0ffd281ea6e36696c9a2d3a6a7a9e6ea1cf0d35b5dab54c021dade6fc9",
    "kopium-0.24.1/tests/applications.argoproj.io.yaml",
)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cargo_home():
    return os.environ.get("CARGO_HOME") or os.path.join(os.path.expanduser("~"), ".cargo")


def fetch_crate(name, version, sha256):
    """The pinned .crate file, downloaded once with cargo; None and a reason when it cannot be had."""
    os.makedirs(CACHE, exist_ok=True)
    dest = os.path.join(CACHE, f"{name}-{version}.crate")
    if os.path.exists(dest) and _sha256(dest) == sha256:
        return dest, None
    pattern = os.path.join(_cargo_home(), "registry", "cache", "*", f"{name}-{version}.crate")
    found = glob.glob(pattern)
    if not found:
        if shutil.which("cargo") is None:
            return None, "cargo is not installed"
        # Outside any workspace, so only the registry is consulted.
        with tempfile.TemporaryDirectory() as tmp:
            try:
                p = subprocess.run(
                    ["cargo", "info", f"{name}@{version}"],
                    cwd=tmp,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
            except subprocess.TimeoutExpired:
                return None, f"cargo info {name}@{version} timed out"
        found = glob.glob(pattern)
        if not found:
            return None, f"cargo info {name}@{version} did not download it: {p.stderr.strip()[-500:]}"
    for f in found:
        if _sha256(f) == sha256:
            shutil.copyfile(f, dest + ".part")
            os.replace(dest + ".part", dest)
            return dest, None
    raise AssertionError(f"{name}-{version}.crate does not have the pinned sha256 {sha256}")


def crd_yaml(source):
    name, version, sha256, member = source
    path, why = fetch_crate(name, version, sha256)
    if path is None:
        pytest.skip(f"cannot fetch the {name} {version} crate holding the CRD YAML: {why}")
    with tarfile.open(path, "r:gz") as t:
        return t.extractfile(member).read().decode()


@pytest.fixture(scope="module")
def istio_crds(kubectl):
    text = crd_yaml(ISTIO)
    names = [d["metadata"]["name"] for d in yaml.safe_load_all(text) if d]
    assert "virtualservices.networking.istio.io" in names and len(names) == 14
    # Istio's own instruction for the CRDs alone: kubectl apply -f crd-all.gen.yaml.
    out = kubectl("apply", "-f", "-", input=text, timeout=180)
    assert out.count("created") + out.count("configured") + out.count("unchanged") == 14, out
    kubectl("wait", "--for", "condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
    # corral serves Istio's kinds from the start with a v1 that Istio 1.18's CRDs lack: a
    # kubectl that discovered them before must discover again, as a fresh one would.
    shutil.rmtree(os.path.join(kubectl.cache, "discovery"), ignore_errors=True)
    yield text, names
    kubectl.run("delete", "--ignore-not-found", "-f", "-", input=text, check=False, timeout=180)


@pytest.fixture(scope="module")
def argocd_crd(kubectl):
    text = crd_yaml(ARGOCD)
    # About 350 KiB of YAML. Argo CD's docs install its CRDs server-side: client-side apply
    # stores each again in last-applied-configuration, and some exceed the 256 KiB limit.
    assert len(text) > 256 * 1024
    kubectl("apply", "--server-side", "-f", "-", input=text, timeout=180)
    kubectl("wait", "--for", "condition=Established", "--timeout=60s", "crd/applications.argoproj.io")
    yield text
    kubectl.run("delete", "--ignore-not-found", "crd", "applications.argoproj.io", check=False)


def table(kubectl, *args):
    """Rows of `kubectl get` output split on runs of 2+ spaces (headers may hold one)."""
    lines = kubectl("get", *args).strip().splitlines()
    return [re.split(r"\s{2,}", line.strip()) for line in lines]


VIRTUAL_SERVICE = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews.prod.svc.cluster.local]
  gateways: [mesh, bookinfo-gateway]
  http:
  - name: reviews-split
    match:
    - uri:
        prefix: /api/reviews
      headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews.prod.svc.cluster.local
        subset: v1
        port:
          number: 9080
      weight: 90
    - destination:
        host: reviews.prod.svc.cluster.local
        subset: v2
        port:
          number: 9080
      weight: 10
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: 5xx,connect-failure,refused-stream
    timeout: 10s
    fault:
      delay:
        percentage:
          value: 0.5
        fixedDelay: 7s
"""

DESTINATION_RULE = """
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews.prod.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 30ms
      http:
        http1MaxPendingRequests: 64
        maxRequestsPerConnection: 10
    outlierDetection:
      consecutive5xxErrors: 5
      interval: 30s
      baseEjectionTime: 60s
      maxEjectionPercent: 50
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
    trafficPolicy:
      loadBalancer:
        consistentHash:
          httpHeaderName: x-user
"""

GATEWAY = """
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    hosts: [bookinfo.example.com]
    tls:
      mode: SIMPLE
      credentialName: bookinfo-cert
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts: [bookinfo.example.com]
    tls:
      httpsRedirect: true
"""

AUTHORIZATION_POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
spec:
  selector:
    matchLabels:
      app: reviews
  action: DENY
  rules:
  - to:
    - operation:
        methods: [GET]
        paths: [/admin, /admin/*]
"""

PEER_AUTHENTICATION = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
spec:
  mtls:
    mode: STRICT
"""

APPLICATION = """
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: guestbook
  finalizers: [resources-finalizer.argocd.argoproj.io]
spec:
  project: default
  source:
    repoURL: https://git.example.com/argoproj/argocd-example-apps.git
    targetRevision: HEAD
    path: guestbook
    helm:
      valueFiles: [values-prod.yaml]
      valuesObject:
        replicaCount: 3
        ingress: {enabled: true}
  destination:
    server: https://kubernetes.default.svc
    namespace: guestbook
  syncPolicy:
    automated:
      prune: true
      selfHeal: true
    syncOptions: [CreateNamespace=true]
    retry:
      limit: 5
      backoff:
        duration: 5s
        factor: 2
        maxDuration: 3m
  revisionHistoryLimit: 10
"""


def spec_of(text):
    return yaml.safe_load(text)["spec"]


def test_istio_kinds_from_real_crds(kubectl, ns, istio_crds):
    objs = {
        "virtualservice": VIRTUAL_SERVICE,
        "destinationrule": DESTINATION_RULE,
        "gateway.networking.istio.io": GATEWAY,
        "authorizationpolicy": AUTHORIZATION_POLICY,
        "peerauthentication": PEER_AUTHENTICATION,
    }
    for text in objs.values():
        kubectl("apply", "-n", ns, "-f", "-", input=text)

    # Everything sent is kept (nothing pruned), and read back through the storage version.
    for res, text in objs.items():
        name = yaml.safe_load(text)["metadata"]["name"]
        got = kubectl.json("get", res, name, "-n", ns)
        assert got["spec"] == spec_of(text), res
        assert got["metadata"]["generation"] == 1

    # The same object through both served versions.
    alpha = kubectl.json("get", "virtualservices.v1alpha3.networking.istio.io", "reviews", "-n", ns)
    assert alpha["apiVersion"] == "networking.istio.io/v1alpha3"
    assert alpha["spec"]["http"][0]["route"][1]["weight"] == 10

    # Printer columns from the CRDs.
    vs = table(kubectl, "vs", "-n", ns)
    assert vs[0] == ["NAME", "GATEWAYS", "HOSTS", "AGE"]
    assert vs[1][0] == "reviews"
    assert json.loads(vs[1][1]) == ["mesh", "bookinfo-gateway"]
    assert json.loads(vs[1][2]) == ["reviews.prod.svc.cluster.local"]
    dr = table(kubectl, "dr", "-n", ns)
    assert dr[0] == ["NAME", "HOST", "AGE"]
    assert dr[1][:2] == ["reviews", "reviews.prod.svc.cluster.local"]
    pa = table(kubectl, "pa", "-n", ns)
    assert pa[0] == ["NAME", "MODE", "AGE"] and pa[1][:2] == ["default", "STRICT"]
    gw = table(kubectl, "gw", "-n", ns)
    assert gw[0] == ["NAME", "AGE"] and gw[1][0] == "bookinfo-gateway"
    ap = table(kubectl, "authorizationpolicies", "-n", ns)
    assert ap[0] == ["NAME", "AGE"] and ap[1][0] == "deny-admin"
    # The CRDs' categories.
    names = kubectl("get", "istio-io", "-n", ns, "-o", "name").split()
    assert "virtualservice.networking.istio.io/reviews" in names
    assert "peerauthentication.security.istio.io/default" in names
    assert len(names) == 5

    # A YAML round trip: get -o yaml, apply it back unchanged.
    y = kubectl("get", "vs", "reviews", "-n", ns, "-o", "yaml")
    assert yaml.safe_load(y)["spec"] == spec_of(VIRTUAL_SERVICE)
    out = kubectl("apply", "-n", ns, "-f", "-", input=y)
    assert "unchanged" in out or "configured" in out
    again = kubectl.json("get", "vs", "reviews", "-n", ns)
    assert again["spec"] == spec_of(VIRTUAL_SERVICE)
    assert again["metadata"]["generation"] == 1

    # A real change bumps the generation; the 90/10 split becomes 50/50.
    kubectl(
        "patch", "vs", "reviews", "-n", ns, "--type", "json", "-p",
        json.dumps([
            {"op": "replace", "path": "/spec/http/0/route/0/weight", "value": 50},
            {"op": "replace", "path": "/spec/http/0/route/1/weight", "value": 50},
        ]),
    )
    changed = kubectl.json("get", "vs", "reviews", "-n", ns)
    assert [r["weight"] for r in changed["spec"]["http"][0]["route"]] == [50, 50]
    assert changed["metadata"]["generation"] == 2

    exp = kubectl("explain", "virtualservice.spec.http")
    assert "KIND:" in exp and "VirtualService" in exp
    for field in ("retries", "route", "timeout", "match", "fault"):
        assert field in exp, exp
    exp = kubectl("explain", "destinationrule.spec.trafficPolicy.outlierDetection")
    assert "consecutive5xxErrors" in exp


def _expect_invalid(api_client, group, version, ns, plural, body, field):
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api = client.CustomObjectsApi(api_client)
    with pytest.raises(ApiException) as e:
        api.create_namespaced_custom_object(group, version, ns, plural, body)
    assert e.value.status == 422, e.value.body
    status = json.loads(e.value.body)
    assert status["reason"] == "Invalid"
    fields = [c.get("field") for c in status["details"]["causes"]]
    assert field in fields, status
    return status


def test_istio_schema_rejections(kubectl, ns, api_client, istio_crds):
    vs = yaml.safe_load(VIRTUAL_SERVICE)
    vs["metadata"]["name"] = "bad-attempts"
    vs["spec"]["http"][0]["retries"]["attempts"] = "three"
    st = _expect_invalid(api_client, "networking.istio.io", "v1beta1", ns, "virtualservices", vs,
                         "spec.http[0].retries.attempts")
    assert "integer" in st["message"]

    pa = yaml.safe_load(PEER_AUTHENTICATION)
    pa["metadata"]["name"] = "bad-mode"
    pa["spec"]["mtls"]["mode"] = "SUPER_STRICT"
    st = _expect_invalid(api_client, "security.istio.io", "v1beta1", ns, "peerauthentications", pa,
                         "spec.mtls.mode")
    assert "STRICT" in st["message"] and "PERMISSIVE" in st["message"]

    ap = yaml.safe_load(AUTHORIZATION_POLICY)
    ap["metadata"]["name"] = "bad-action"
    ap["spec"]["action"] = "REJECT"
    _expect_invalid(api_client, "security.istio.io", "v1", ns, "authorizationpolicies", ap, "spec.action")

    # Istio's CRDs say with oneOf that a load balancer is simple or consistent-hash, not both.
    dr = yaml.safe_load(DESTINATION_RULE)
    dr["metadata"]["name"] = "bad-lb"
    dr["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"] = {"httpHeaderName": "x-user"}
    st = _expect_invalid(api_client, "networking.istio.io", "v1beta1", ns, "destinationrules", dr,
                         "spec.trafficPolicy.loadBalancer")
    assert "oneOf" in st["message"]

    # kubectl shows the same errors with their field paths.
    bad = VIRTUAL_SERVICE.replace("attempts: 3", "attempts: three").replace("name: reviews", "name: bad2", 1)
    p = kubectl.run("apply", "-n", ns, "-f", "-", input=bad, check=False)
    assert p.returncode != 0
    assert "is invalid" in p.stderr and "spec.http[0].retries.attempts" in p.stderr, p.stderr
    names = kubectl("get", "vs,dr,pa,authorizationpolicies", "-n", ns, "-o", "name").split()
    assert not [n for n in names if "/bad" in n]


def test_argocd_application_from_real_crd(kubectl, ns, api_client, argocd_crd):
    crd = kubectl.json("get", "crd", "applications.argoproj.io")
    conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conds["Established"] == "True"
    # Server-side apply keeps no last-applied copy of the 350 KiB CRD.
    assert "kubectl.kubernetes.io/last-applied-configuration" not in crd["metadata"].get("annotations", {})
    # Client-side apply over it works too: its JSON (about 190 KiB) fits the 256 KiB
    # annotation limit, unlike the ApplicationSet CRD that makes Argo CD's docs go server-side.
    kubectl("apply", "-f", "-", input=argocd_crd, timeout=120)
    crd = kubectl.json("get", "crd", "applications.argoproj.io")
    last = crd["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
    assert 150_000 < len(last) < 256 * 1024
    assert json.loads(last)["spec"] == yaml.safe_load(argocd_crd)["spec"]

    kubectl("apply", "-n", ns, "-f", "-", input=APPLICATION)
    app = kubectl.json("get", "application", "guestbook", "-n", ns)
    assert app["spec"] == spec_of(APPLICATION)
    assert app["metadata"]["finalizers"] == ["resources-finalizer.argocd.argoproj.io"]

    # What the Argo CD controller writes: status (there is no status subresource here).
    status = {
        "sync": {"status": "Synced", "revision": "4e5f6a7b"},
        "health": {"status": "Healthy"},
    }
    kubectl("patch", "app", "guestbook", "-n", ns, "--type", "merge", "-p", json.dumps({"status": status}))
    t = table(kubectl, "apps", "-n", ns)
    assert t[0] == ["NAME", "SYNC STATUS", "HEALTH STATUS"]
    assert t[1] == ["guestbook", "Synced", "Healthy"]
    wide = table(kubectl, "applications.argoproj.io", "-n", ns, "-o", "wide")
    assert wide[0] == ["NAME", "SYNC STATUS", "HEALTH STATUS", "REVISION", "PROJECT"]
    assert wide[1] == ["guestbook", "Synced", "Healthy", "4e5f6a7b", "default"]

    y = kubectl("get", "app", "guestbook", "-n", ns, "-o", "yaml")
    back = yaml.safe_load(y)
    assert back["spec"] == spec_of(APPLICATION) and back["status"]["sync"]["status"] == "Synced"
    kubectl("apply", "-n", ns, "-f", "-", input=y)
    assert kubectl.json("get", "app", "guestbook", "-n", ns)["spec"] == spec_of(APPLICATION)

    exp = kubectl("explain", "application.spec.syncPolicy")
    assert "automated" in exp and "syncOptions" in exp

    bad = yaml.safe_load(APPLICATION)
    bad["metadata"] = {"name": "no-destination"}
    del bad["spec"]["destination"]
    _expect_invalid(api_client, "argoproj.io", "v1alpha1", ns, "applications", bad, "spec.destination")
    bad = yaml.safe_load(APPLICATION)
    bad["metadata"] = {"name": "bad-limit"}
    bad["spec"]["syncPolicy"]["retry"]["limit"] = "five"
    _expect_invalid(api_client, "argoproj.io", "v1alpha1", ns, "applications", bad,
                    "spec.syncPolicy.retry.limit")

    # Unknown fields are refused under kubectl's default strict field validation.
    p = kubectl.run("apply", "-n", ns, "-f", "-", check=False,
                    input=APPLICATION.replace("  project: default", "  project: default\n  autoSync: true"))
    assert p.returncode != 0 and 'unknown field "spec.autoSync"' in p.stderr, p.stderr
    kubectl("patch", "app", "guestbook", "-n", ns, "--type", "json",
            "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]')


def test_deleting_real_crds_removes_their_objects(kubectl, ns, istio_crds, argocd_crd):
    kubectl("apply", "-n", ns, "-f", "-", input=PEER_AUTHENTICATION)
    kubectl("apply", "-n", ns, "-f", "-", input=APPLICATION.replace("  finalizers: [resources-finalizer.argocd.argoproj.io]\n", "").replace("guestbook\n", "gone\n", 1))
    assert kubectl("get", "pa", "-n", ns, "-o", "name").strip()
    assert kubectl("get", "app", "-n", ns, "-o", "name").strip()

    kubectl("delete", "crd", "peerauthentications.security.istio.io", "applications.argoproj.io")
    deadline = time.time() + 15
    while time.time() < deadline:
        p1 = kubectl.run("get", "peerauthentications.security.istio.io", "-n", ns, check=False)
        p2 = kubectl.run("get", "applications.argoproj.io", "-n", ns, check=False)
        if p1.returncode != 0 and p2.returncode != 0:
            break
        time.sleep(0.2)
    assert p1.returncode != 0 and p2.returncode != 0
    # Re-installed, the CRDs come back empty.
    text, _ = istio_crds
    kubectl("apply", "-f", "-", input=text, timeout=180)
    kubectl("apply", "--server-side", "-f", "-", input=argocd_crd, timeout=180)
    kubectl("wait", "--for", "condition=Established", "--timeout=60s",
            "crd/peerauthentications.security.istio.io", "crd/applications.argoproj.io")
    assert kubectl("get", "pa", "-n", ns, "-o", "name").strip() == ""
    assert kubectl("get", "applications.argoproj.io", "-n", ns, "-o", "name").strip() == ""
