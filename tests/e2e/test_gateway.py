"""The Gateway API end to end: GatewayClass, Gateway and HTTPRoute applied with kubectl, and
traffic through the node proxy that serves Gateways of class `corral` on the node's address:
routing by host and path to real pods, a weighted split, header modifiers, redirects and
rewrites, an HTTPS listener with a TLS Secret, the status a controller writes, and bad
input refused with its field path.

The node's address is 127.0.0.1 here (--node-ip), so listeners are reached on loopback at
ports picked free for each test.
"""

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess

import pytest

from conftest import Node, free_port, wait_for
from svc_helpers import apply, deployment, service, wait_ready_endpoints

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the node agent and proxy need root (namespaces, bridges, lo addresses)"
)

GROUP = "gateway.networking.k8s.io"

# Each pod answers its own name at every path below; /cgi-bin/env also echoes the request
# URI and headers (busybox httpd hands them to CGI as REQUEST_URI and HTTP_*), and records
# the URI in /tmp/seen, so a mirror's copy can be found.
HTTPD = ["sh", "-c", "mkdir -p /w/web /w/cgi-bin && for f in index.html web/index.html webx exact; do "
                     "hostname > /w/$f; done && cp /cgi/env /w/cgi-bin/env && chmod +x /w/cgi-bin/env && "
                     "exec httpd -f -p 8080 -h /w"]
ENV_CGI = ("#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'; hostname; "
           "echo \"$REQUEST_URI\" >> /tmp/seen; echo \"REQUEST_URI=$REQUEST_URI\"; env | grep '^HTTP_'\n")


@pytest.fixture(scope="module")
def node(images):
    n = Node(images, extra_args=["--node-ip", "127.0.0.1"])
    yield n
    n.cleanup()


@pytest.fixture
def kc(node):
    return node.kubectl


@pytest.fixture(scope="module")
def apps(node):
    """web, who and mirror: one pod each behind a Service of the same name, port 80."""
    kc = node.kubectl
    with node.namespace("g-") as ns:
        kc.run("create", "configmap", "cgi", "-n", ns, f"--from-literal=env={ENV_CGI}")
        objs = []
        for name in ["web", "who", "mirror"]:
            dep = deployment(name, 1, HTTPD)
            spec = dep["spec"]["template"]["spec"]
            spec["volumes"] = [{"name": "cgi", "configMap": {"name": "cgi"}}]
            spec["containers"][0]["volumeMounts"] = [{"name": "cgi", "mountPath": "/cgi"}]
            objs += [dep, service(name, name)]
        apply(kc, ns, *objs)
        pods = {}
        for name in ["web", "who", "mirror"]:
            wait_ready_endpoints(kc, ns, name, 1)
            pods[name] = kc.json("get", "pods", "-n", ns, "-l", f"app={name}")["items"][0]["metadata"]["name"]
        yield ns, pods


@pytest.fixture
def cleanup(kc, apps):
    """Deletes the Gateway API objects a test made in the apps' namespace."""
    ns, _ = apps
    yield
    kc.run("delete", "httproutes.gateway.networking.k8s.io,gateways.gateway.networking.k8s.io",
           "--all", "-n", ns, check=False)


def gateway(name, listeners):
    return {"apiVersion": f"{GROUP}/v1", "kind": "Gateway", "metadata": {"name": name},
            "spec": {"gatewayClassName": "corral", "listeners": listeners}}


def route(name, parent, rules, hostnames=None, **parent_extra):
    spec = {"parentRefs": [dict(name=parent, **parent_extra)], "rules": rules}
    if hostnames:
        spec["hostnames"] = hostnames
    return {"apiVersion": f"{GROUP}/v1", "kind": "HTTPRoute", "metadata": {"name": name}, "spec": spec}


def backend(name, weight=None):
    b = {"name": name, "port": 80}
    if weight is not None:
        b["weight"] = weight
    return b


def request(port, path, host, headers=None):
    """(status, body, headers) of one request to the node's port; redirects not followed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=dict({"Host": host}, **(headers or {})))
        r = conn.getresponse()
        return r.status, r.read().decode().strip(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def body_of(port, path, host, headers=None):
    status, body, _ = request(port, path, host, headers)
    return body if status == 200 else None


def condition(conds, ty):
    return next((c for c in conds or [] if c["type"] == ty), {})


def parent_status(kc, ns, name):
    return kc.json("get", "httproute", name, "-n", ns).get("status", {}).get("parents", [])


def test_routes_by_host_and_path_with_status(node, kc, apps, cleanup):
    ns, pods = apps
    port = free_port()
    apply(kc, ns, gateway("gw", [{"name": "http", "port": port, "protocol": "HTTP",
                                  "hostname": "*.example.test"}]))
    apply(kc, ns, route("shop", "gw", [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/web"}}], "backendRefs": [backend("web")]},
        {"matches": [{"path": {"type": "Exact", "value": "/exact"}}], "backendRefs": [backend("web")]},
        {"backendRefs": [backend("who")]},
    ], hostnames=["shop.example.test"]))
    apply(kc, ns, route("api", "gw", [
        {"matches": [{"headers": [{"name": "X-Canary", "value": "yes"}]}], "backendRefs": [backend("who")]},
        {"matches": [{"path": {"type": "RegularExpression", "value": "/we[a-z]+"}, "method": "GET"}],
         "backendRefs": [backend("who")]},
        {"backendRefs": [backend("web")]},
    ], hostnames=["api.example.test"], sectionName="http"))

    web, who = pods["web"], pods["who"]
    assert wait_for("the Gateway to route", lambda: body_of(port, "/web/index.html", "shop.example.test") == web)
    assert body_of(port, "/webx", "shop.example.test") == who, "a PathPrefix matches whole elements only"
    assert body_of(port, "/exact", "shop.example.test") == web
    assert body_of(port, "/", "SHOP.example.test:80") == who, "hosts match without case or port"
    assert body_of(port, "/", "api.example.test") == web
    assert body_of(port, "/", "api.example.test", {"X-Canary": "yes"}) == who
    assert body_of(port, "/webx", "api.example.test") == who
    status, _, headers = request(port, "/", "other.example.test")
    assert status == 404, "no route has that host"
    status, _, _ = request(port, "/", "shop.elsewhere.test")
    assert status == 404, "the listener's hostname does not match"

    # The class, Gateway and routes as kubectl shows them.
    out = kc("get", "gatewayclass", "corral")
    assert "corral.dev/gateway-controller" in out and "True" in out, out
    wait_for("the Gateway to be programmed", lambda: condition(
        kc.json("get", "gateway", "gw", "-n", ns).get("status", {}).get("conditions"), "Programmed").get("status") == "True")
    out = kc("get", "gateway", "gw", "-n", ns)
    assert out.split("\n")[0].split() == ["NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE"], out
    assert out.split("\n")[1].split()[:4] == ["gw", "corral", "127.0.0.1", "True"], out
    assert kc("get", "gtw", "-n", ns, "-o", "name").strip() == "gateway.gateway.networking.k8s.io/gw"
    gw = kc.json("get", "gateway", "gw", "-n", ns)
    assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": "127.0.0.1"}]
    assert condition(gw["status"]["conditions"], "Accepted")["observedGeneration"] == gw["metadata"]["generation"]
    listener = wait_for("both routes attached", lambda: (lambda l: l if l["attachedRoutes"] == 2 else None)(
        kc.json("get", "gateway", "gw", "-n", ns)["status"]["listeners"][0]))
    assert listener["supportedKinds"] == [{"group": GROUP, "kind": "HTTPRoute"}]
    assert {c["type"]: c["status"] for c in listener["conditions"]} == {
        "Accepted": "True", "ResolvedRefs": "True", "Conflicted": "False", "Programmed": "True"}
    parents = wait_for("the route's status", lambda: parent_status(kc, ns, "shop"))
    assert parents[0]["controllerName"] == "corral.dev/gateway-controller"
    assert parents[0]["parentRef"]["name"] == "gw"
    assert condition(parents[0]["conditions"], "Accepted")["status"] == "True"
    assert condition(parents[0]["conditions"], "ResolvedRefs")["status"] == "True"
    # Defaults filled in as upstream's CRDs do.
    shop = kc.json("get", "httproute", "shop", "-n", ns)
    assert shop["spec"]["parentRefs"][0]["kind"] == "Gateway"
    assert shop["spec"]["rules"][2]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert shop["spec"]["rules"][0]["backendRefs"][0]["weight"] == 1
    # The same object through v1beta1.
    beta = kc.json("get", "httproutes.v1beta1.gateway.networking.k8s.io", "shop", "-n", ns)
    assert beta["apiVersion"] == f"{GROUP}/v1beta1" and beta["spec"]["hostnames"] == ["shop.example.test"]
    # What corral does not implement is accepted with a warning kubectl prints.
    timed = route("timed", "gw", [{"backendRefs": [backend("web")], "timeouts": {"request": "5s"}}])
    p = kc.run("apply", "-n", ns, "-f", "-", input=json.dumps(timed))
    assert "spec.rules[0].timeouts is not implemented" in p.stderr, p.stderr


def test_routes_from_other_namespaces_need_allowed_routes(node, kc, apps, cleanup):
    ns, pods = apps
    port = free_port()
    apply(kc, ns, gateway("gw", [
        {"name": "same", "port": port, "protocol": "HTTP", "hostname": "same.example.test"},
        {"name": "shared", "port": port, "protocol": "HTTP", "hostname": "shared.example.test",
         "allowedRoutes": {"namespaces": {"from": "Selector",
                                          "selector": {"matchLabels": {"gateway-access": "yes"}}}}},
    ]))
    with node.namespace("g2-") as other:
        kc.run("label", "namespace", other, "gateway-access=yes")
        # Backends in the Gateway's namespace: allowed by a ReferenceGrant there.
        grant = {"apiVersion": f"{GROUP}/v1beta1", "kind": "ReferenceGrant", "metadata": {"name": "from-" + other},
                 "spec": {"from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": other}],
                          "to": [{"group": "", "kind": "Service"}]}}
        apply(kc, ns, grant)
        far = route("far", "gw", [{"backendRefs": [dict(backend("web"), namespace=ns)]}], namespace=ns)
        apply(kc, other, far)
        near = route("near", "gw", [{"backendRefs": [dict(backend("web"), namespace=ns)]}],
                     namespace=ns, sectionName="same")
        apply(kc, other, near)
        try:
            assert wait_for("the shared listener to route",
                            lambda: body_of(port, "/", "shared.example.test") == pods["web"])
            assert request(port, "/", "same.example.test")[0] == 404
            near_st = wait_for("the refused route's status", lambda: parent_status(kc, other, "near"))
            accepted = condition(near_st[0]["conditions"], "Accepted")
            assert (accepted["status"], accepted["reason"]) == ("False", "NotAllowedByListeners"), near_st
            far_st = parent_status(kc, other, "far")
            assert condition(far_st[0]["conditions"], "ResolvedRefs")["status"] == "True", far_st
            # Without the grant, the backend may not be used: 500, and the status says why.
            kc.run("delete", "referencegrant", "from-" + other, "-n", ns)
            wait_for("the backend to be refused", lambda: request(port, "/", "shared.example.test")[0] == 500)
            far_st = wait_for("RefNotPermitted", lambda: (lambda s: s if condition(
                s[0]["conditions"], "ResolvedRefs").get("reason") == "RefNotPermitted" else None)(
                parent_status(kc, other, "far")))
        finally:
            kc.run("delete", "httproutes.gateway.networking.k8s.io", "--all", "-n", other, check=False)
            kc.run("delete", "referencegrants", "--all", "-n", ns, check=False)


def test_weighted_split_and_missing_backends(node, kc, apps, cleanup):
    ns, pods = apps
    port = free_port()
    apply(kc, ns, gateway("gw", [{"name": "http", "port": port, "protocol": "HTTP"}]))
    apply(kc, ns, route("split", "gw", [{"backendRefs": [backend("web", 3), backend("who", 1)]}],
                        hostnames=["split.example.test"]))
    apply(kc, ns, route("half-missing", "gw", [{"backendRefs": [backend("web", 1), backend("ghost", 1)]}],
                        hostnames=["half.example.test"]))
    apply(kc, ns, route("orphan", "no-such-gateway", [{"backendRefs": [backend("web")]}]))
    wait_for("the split route", lambda: body_of(port, "/", "split.example.test"))
    seen = [body_of(port, "/", "split.example.test") for _ in range(200)]
    web = seen.count(pods["web"])
    assert seen.count(pods["who"]) + web == 200, seen
    assert 110 <= web <= 190, f"3:1 split gave {web} of 200 to web"
    # The missing Service's share is answered 500; the rest is served.
    codes = [request(port, "/", "half.example.test")[0] for _ in range(60)]
    assert set(codes) == {200, 500}, codes
    assert 10 <= codes.count(500) <= 50, codes
    parents = wait_for("the route's status", lambda: (lambda p: p if p and condition(
        p[0]["conditions"], "ResolvedRefs").get("status") == "False" else None)(parent_status(kc, ns, "half-missing")))
    resolved = condition(parents[0]["conditions"], "ResolvedRefs")
    assert resolved["reason"] == "BackendNotFound" and "ghost" in resolved["message"], resolved
    assert condition(parents[0]["conditions"], "Accepted")["status"] == "True"
    orphan = wait_for("the orphan's status", lambda: parent_status(kc, ns, "orphan"))
    accepted = condition(orphan[0]["conditions"], "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "NoMatchingParent"), orphan
    # When the Service appears, the whole route serves and the status follows.
    apply(kc, ns, service("ghost", "web"))
    wait_for("the ghost Service to serve", lambda: all(
        request(port, "/", "half.example.test")[0] == 200 for _ in range(10)))
    wait_for("ResolvedRefs", lambda: condition(parent_status(kc, ns, "half-missing")[0]["conditions"],
                                               "ResolvedRefs").get("status") == "True")
    kc.run("delete", "service", "ghost", "-n", ns)


def test_header_modifiers_redirects_rewrites_and_mirror(node, kc, apps, cleanup):
    ns, pods = apps
    port = free_port()
    apply(kc, ns, gateway("gw", [{"name": "http", "port": port, "protocol": "HTTP"}]))
    apply(kc, ns, route("filters", "gw", [
        {"matches": [{"path": {"type": "Exact", "value": "/env"}}],
         "filters": [
             {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                 "set": [{"name": "X-Set", "value": "s"}], "add": [{"name": "X-Added", "value": "a"}],
                 "remove": ["X-Drop"]}},
             {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "X-Resp", "value": "r"}]}},
             {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/cgi-bin/env"}}},
             {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "mirror", "port": 80}}},
         ],
         "backendRefs": [backend("web")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
         "filters": [{"type": "URLRewrite", "urlRewrite": {
             "hostname": "rewritten.example.test",
             "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/cgi-bin/env"}}}],
         "backendRefs": [backend("who")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/moved"}}],
         "filters": [{"type": "RequestRedirect", "requestRedirect": {
             "scheme": "https", "hostname": "secure.example.test", "statusCode": 301}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/shop/"}}],
         "filters": [{"type": "RequestRedirect", "requestRedirect": {
             "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/store"}}}]},
        {"matches": [{"path": {"type": "Exact", "value": "/go"}}],
         "filters": [{"type": "RequestRedirect", "requestRedirect": {
             "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}, "port": 8443}}]},
    ], hostnames=["filters.example.test"]))
    host = "filters.example.test"
    status, body, headers = wait_for("the filters route", lambda: (lambda r: r if r[0] == 200 else None)(
        request(port, "/env", host, {"X-Drop": "gone", "X-Set": "old"})))
    lines = body.split("\n")
    assert lines[0] == pods["web"]
    assert "REQUEST_URI=/cgi-bin/env" in lines
    assert "HTTP_X_SET=s" in lines and "HTTP_X_ADDED=a" in lines, lines
    assert not any(l.startswith("HTTP_X_DROP=") for l in lines), lines
    assert headers.get("x-resp") == "r", headers
    # The mirror got a copy (and its answer went nowhere).
    wait_for("the mirrored request", lambda: "/cgi-bin/env" in kc(
        "exec", pods["mirror"], "-n", ns, "--", "cat", "/tmp/seen", check=False))

    status, body, _ = request(port, "/old/x/y?q=1", host)
    lines = body.split("\n")
    assert status == 200 and lines[0] == pods["who"], body
    assert "REQUEST_URI=/cgi-bin/env/x/y?q=1" in lines, lines
    assert "HTTP_HOST=rewritten.example.test" in lines, lines

    status, _, headers = request(port, "/moved/here?a=b", host)
    assert status == 301 and headers["location"] == "https://secure.example.test/moved/here?a=b", headers
    status, _, headers = request(port, "/shop/cart/1?x=y", host)
    assert status == 302 and headers["location"] == f"http://{host}/store/cart/1?x=y", headers
    status, _, headers = request(port, "/go", f"{host}:{port}")
    assert status == 302 and headers["location"] == f"http://{host}:8443/new", headers


def test_https_listener_with_a_tls_secret(node, kc, apps, cleanup, tmp_path):
    ns, pods = apps
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the listener's TLS certificate")
    key, crt = tmp_path / "tls.key", tmp_path / "tls.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=secure.example.test", "-addext", "subjectAltName=DNS:secure.example.test",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    kc.run("create", "secret", "tls", "secure-tls", "-n", ns, f"--cert={crt}", f"--key={key}")
    https, http_port = free_port(), free_port()
    try:
        apply(kc, ns, gateway("tls", [
            {"name": "https", "port": https, "protocol": "HTTPS", "hostname": "secure.example.test",
             "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": "secure-tls"}]}},
            {"name": "http", "port": http_port, "protocol": "HTTP", "hostname": "secure.example.test"},
        ]))
        apply(kc, ns, gateway("broken", [
            {"name": "https", "port": free_port(), "protocol": "HTTPS",
             "tls": {"certificateRefs": [{"name": "no-such-secret"}]}},
        ]))
        apply(kc, ns, route("secure", "tls", [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/web"}}], "backendRefs": [backend("web")]},
            {"backendRefs": [backend("who")]},
        ]))
        ctx = ssl.create_default_context(cafile=str(crt))

        def get(path):
            conn = http.client.HTTPSConnection("secure.example.test", https, context=ctx, timeout=5)
            conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", https), timeout=5),
                                        server_hostname="secure.example.test")
            try:
                conn.request("GET", path, headers={"Host": "secure.example.test"})
                r = conn.getresponse()
                return r.status, r.read().decode().strip()
            finally:
                conn.close()

        assert wait_for("HTTPS to route", lambda: get("/web/index.html") == (200, pods["web"]))
        assert get("/") == (200, pods["who"])
        assert body_of(http_port, "/", "secure.example.test") == pods["who"], "the HTTP listener too"
        gw = wait_for("the listeners' status", lambda: (lambda g: g if len(g.get("status", {}).get("listeners", [])) == 2
                                                       and g["status"]["listeners"][0]["attachedRoutes"] == 1 else None)(
            kc.json("get", "gateway", "tls", "-n", ns)))
        for l in gw["status"]["listeners"]:
            assert condition(l["conditions"], "Programmed")["status"] == "True", l
        broken = wait_for("the broken listener's status", lambda: kc.json(
            "get", "gateway", "broken", "-n", ns).get("status", {}).get("listeners"))
        resolved = condition(broken[0]["conditions"], "ResolvedRefs")
        assert (resolved["status"], resolved["reason"]) == ("False", "InvalidCertificateRef"), broken
    finally:
        kc.run("delete", "secret", "secure-tls", "-n", ns, check=False)


def test_a_listener_on_the_ingress_port_shares_it(node, kc, apps, cleanup):
    ns, pods = apps
    port = node.ingress_http_port
    apply(kc, ns, gateway("gw", [{"name": "http", "port": port, "protocol": "HTTP", "hostname": "gw.example.test"}]))
    apply(kc, ns, route("r", "gw", [{"backendRefs": [backend("web")]}]))
    apply(kc, ns, {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "ing"},
                   "spec": {"rules": [{"host": "ing.example.test", "http": {"paths": [
                       {"path": "/", "pathType": "Prefix",
                        "backend": {"service": {"name": "who", "port": {"number": 80}}}}]}}]}})
    try:
        assert wait_for("the Gateway route", lambda: body_of(port, "/", "gw.example.test") == pods["web"])
        assert wait_for("the Ingress rule", lambda: body_of(port, "/", "ing.example.test") == pods["who"])
    finally:
        kc.run("delete", "ingress", "ing", "-n", ns, check=False)


def test_bad_input_is_refused_with_field_paths(kc, apps, cleanup):
    ns, _ = apps

    def refused(obj):
        p = kc.run("apply", "-n", ns, "-f", "-", input=json.dumps(obj), check=False)
        assert p.returncode != 0, f"accepted: {obj}"
        return p.stderr

    err = refused(route("bad", "gw", [{"matches": [{"path": {"type": "Glob", "value": "/"}}],
                                       "backendRefs": [backend("web")]}]))
    assert "spec.rules[0].matches[0].path.type" in err and "Unsupported value" in err, err
    err = refused(route("bad", "gw", [{"backendRefs": [backend("web", -1)]}]))
    assert "spec.rules[0].backendRefs[0].weight" in err, err
    err = refused(route("bad", "gw", [{"backendRefs": [backend("web")]}], hostnames=["Bad_Host!"]))
    assert "spec.hostnames[0]" in err, err
    err = refused(route("bad", "gw", [{"backendRefs": [backend("web")]}] * 17))
    assert "spec.rules" in err and "Too many" in err, err
    err = refused(route("bad", "gw", [{"backendRefs": [{"name": "web"}]}]))
    assert "spec.rules[0].backendRefs[0].port" in err and "Must have port for Service reference" in err, err
    err = refused(route("bad", "gw", [{"matches": [{"path": {"type": "PathPrefix", "value": "api"}}],
                                       "backendRefs": [backend("web")]}]))
    assert "spec.rules[0].matches[0].path.value" in err and "start with '/'" in err, err
    err = refused(route("bad", "gw", [{"filters": [{"type": "RequestHeaderModifier"}],
                                       "backendRefs": [backend("web")]}]))
    assert "spec.rules[0].filters[0].requestHeaderModifier" in err, err
    err = refused(gateway("bad", [{"name": "a", "port": 443, "protocol": "HTTPS"}]))
    assert "spec.listeners[0].tls" in err, err
    err = refused(gateway("bad", [{"name": "a", "port": 0, "protocol": "HTTP"}]))
    assert "spec.listeners[0].port" in err, err
    err = refused(gateway("bad", [{"name": "a", "port": 80, "protocol": "HTTP"},
                                  {"name": "a", "port": 81, "protocol": "HTTP"}]))
    assert "spec.listeners[1].name" in err and "Duplicate" in err, err
    assert kc.json("get", "httproutes", "-n", ns)["items"] == []


def test_the_crds_can_be_replaced_by_upstreams(kc, apps, cleanup):
    # As upstream's install says: `kubectl apply --server-side -f standard-install.yaml`.
    # Its CRDs carry CEL rules and its own annotations; corral keeps whatever is applied.
    ns, pods = apps
    crd = kc.json("get", "crd", f"httproutes.{GROUP}")
    meta = crd["metadata"]
    crd["metadata"] = {"name": meta["name"], "annotations": dict(
        meta.get("annotations") or {}, **{f"{GROUP}/bundle-version": "v1.2.1-upstream"})}
    crd.pop("status", None)
    for v in crd["spec"]["versions"]:
        v["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"] = [
            {"message": "Rule from upstream", "rule": "!has(self.rules) || size(self.rules) <= 16"}]
    kc.run("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(crd))
    got = kc.json("get", "crd", f"httproutes.{GROUP}")
    assert got["metadata"]["annotations"][f"{GROUP}/bundle-version"] == "v1.2.1-upstream"
    port = free_port()
    apply(kc, ns, gateway("gw", [{"name": "http", "port": port, "protocol": "HTTP"}]))
    apply(kc, ns, route("r", "gw", [{"backendRefs": [backend("web")]}]))
    assert wait_for("routing after the CRD update", lambda: body_of(port, "/", "any.example.test") == pods["web"])
