"""Generator-driven fuzz / property test of the API over raw HTTPS.

Against a server of its own (so a crash cannot break other tests) it sends at least
CORRAL_FUZZ_REQUESTS (default 100,000) generated requests from several threads over
persistent keep-alive connections, and checks:

* no response is a 5xx, a hang (no answer within REQUEST_TIMEOUT) or a dropped connection;
* every 4xx is a JSON `Status` (kind Status, apiVersion v1, status Failure, code equal to
  the HTTP status, a reason) and every 2xx a well-formed object, list, or watch stream;
* inputs with one right answer get it (truncated JSON 400, over 3 MiB 413, unknown patch
  type 415, unknown resource 404, ...);
* nothing acknowledged is lost: each thread owns one namespace (and a few namespaces of its
  own), keeps every object as the server acknowledged its last write (each valid write carries
  a unique marker label) and checks that model against GETs and LISTs during the run and
  against the full state at the end: same names, same resourceVersions, same content;
* the server is alive afterwards (/readyz, kubectl), its process never exited, and its RSS
  stayed bounded (billion-laughs YAML, 1000-deep nesting, huge bodies must not blow it up).

Reproduce a run with CORRAL_FUZZ_SEED=<seed> (printed on failure). Every finding is also
written, with the full request body, to a JSON file whose path the failure message names.

KNOWN_5XX and KNOWN_DIVERGENCES list the inputs this fuzzer found to get a wrong answer, all
fixed since; `test_known_bad_inputs` replays each one as a regression test. An entry marked
`"open": True` is a finding not fixed yet: the fuzz loop reports matches without failing on
them (none is open now), while its replay keeps failing until it is fixed.
"""

import base64
import collections
import dataclasses
import hashlib
import http.client
import json
import math
import os
import random
import socket
import ssl
import string
import tempfile
import threading
import time
import urllib.parse
import uuid

import pytest
import yaml

from conftest import Kubectl, Server

# http.client refuses answers with more than 100 header lines or a line over 64 KiB; the
# server may send many Warning headers, which are checked separately (see check_warnings).
http.client._MAXHEADERS = 1_000_000
http.client._MAXLINE = 64 * 1024 * 1024

SEED = int(os.environ.get("CORRAL_FUZZ_SEED", "20261123"))
REQUESTS = int(os.environ.get("CORRAL_FUZZ_REQUESTS", "100000"))
WORKERS = int(os.environ.get("CORRAL_FUZZ_WORKERS", "16"))
# A request with no answer after this long is a hang.
REQUEST_TIMEOUT = 60
# Slower than this is reported (and fails the test): nothing here is legitimately slow.
SLOW_SECONDS = 10
RSS_LIMIT_KB = 1024 * 1024
MAX_BODY = 3 * 1024 * 1024

OWNER = "fuzz.corral.dev/owner"
MARK = "fuzz.corral.dev/mark"
GROUP = "fuzz.corral.dev"


# --------------------------------------------------------------------------------------
# Resources under test
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Res:
    key: str
    prefix: str            # "/api/v1" or "/apis/<group>/<version>"
    plural: str
    kind: str
    namespaced: bool = True
    status: bool = False   # has a status subresource


CONFIGMAP = Res("cm", "/api/v1", "configmaps", "ConfigMap")
SECRET = Res("secret", "/api/v1", "secrets", "Secret")
SERVICE = Res("svc", "/api/v1", "services", "Service", status=True)
POD = Res("pod", "/api/v1", "pods", "Pod", status=True)
DEPLOYMENT = Res("deploy", "/apis/apps/v1", "deployments", "Deployment", status=True)
JOB = Res("job", "/apis/batch/v1", "jobs", "Job", status=True)
INGRESS = Res("ing", "/apis/networking.k8s.io/v1", "ingresses", "Ingress", status=True)
ROLE = Res("role", "/apis/rbac.authorization.k8s.io/v1", "roles", "Role")
WIDGET = Res("widget", f"/apis/{GROUP}/v1", "widgets", "Widget", status=True)
NAMESPACE = Res("ns", "/api/v1", "namespaces", "Namespace", namespaced=False, status=True)

NAMESPACED = [CONFIGMAP, SECRET, SERVICE, POD, DEPLOYMENT, JOB, INGRESS, ROLE, WIDGET]

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas",
                                                     "statusReplicasPath": ".status.replicas"}},
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {"type": "object", "properties": {
                        "replicas": {"type": "integer", "minimum": 0},
                        "size": {"type": "integer", "format": "int32"},
                        "ratio": {"type": "number"},
                        "color": {"type": "string", "enum": ["red", "green", "blue"]},
                        "word": {"type": "string", "maxLength": 20, "pattern": "^[a-z]*$"},
                        "tags": {"type": "array", "maxItems": 20, "items": {"type": "string"}},
                        # Anything goes here: where deeply nested documents can be stored.
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    }},
                    "status": {"type": "object", "properties": {
                        "replicas": {"type": "integer"},
                        "phase": {"type": "string"},
                    }},
                },
            }},
        }],
    },
}


def coll_path(res, ns=None):
    if res.namespaced and ns is not None:
        return f"{res.prefix}/namespaces/{ns}/{res.plural}"
    return f"{res.prefix}/{res.plural}"


def item_path(res, ns, name, sub=None):
    p = f"{coll_path(res, ns)}/{urllib.parse.quote(name, safe='')}"
    return p + (f"/{sub}" if sub else "")


# --------------------------------------------------------------------------------------
# Values and bodies
# --------------------------------------------------------------------------------------

class RawJSON:
    """A literal JSON fragment spliced into an encoded body: what Python's json cannot write
    (1e309, lone surrogates, NaN, 1000-deep nesting without Python recursion)."""

    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text


def to_json(value, ascii=True, indent=None):
    raws = []

    def default(o):
        if isinstance(o, RawJSON):
            raws.append(o.text)
            return f"@@raw{len(raws) - 1}@@"
        raise TypeError(type(o).__name__)

    text = json.dumps(value, default=default, ensure_ascii=ascii, indent=indent)
    for i, t in enumerate(raws):
        text = text.replace(f'"@@raw{i}@@"', t, 1)
    return text


YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def to_yaml(value):
    """Block-style YAML for small documents; big ones (slow to emit) and ones holding RawJSON
    pieces go as JSON text, which is YAML too."""
    text = to_json(value)
    if len(text) > 4096:
        return text
    try:
        return yaml.dump(value, Dumper=YAML_DUMPER, allow_unicode=True, sort_keys=False)
    except (yaml.YAMLError, ValueError):
        return text


UNICODE = ["é", "中文", "😀", "\u200b", "\u202e", "\ufeff", "\U0010ffff", "e\u0301", "İ", "ß",
           "\r\n", "\t", "\\", '"', "'", "<script>", "${jndi:ldap://x}", "%s%n", "\u2028", "\x7f"]

# Invalid as DNS subdomains and labels (the names of every kind here except Role, whose
# names only exclude "/", "%", "." and "..").
BAD_NAMES = ["Bad_Name", "UPPER", "-lead", "trail-", "a..b", ".", "..", "a/b", "a b", " ", "x" * 254,
             "ünï", "😀", "a\x00b", "a%2Fb", "a\\b", "a:b", "*", "a" * 1000]

BAD_LABEL_KEYS = ["bad key", "a/b/c", "x" * 64, "/x", "x/", "-x", "example.com/" + "y" * 64,
                  "UPPER.example.com/x", "", "😀", "a" * 254 + "/b"]
BAD_LABEL_VALUES = ["x" * 64, "-bad", "bad-", "a b", "😀", "a/b", "\n"]


def rand_word(rng, n=8):
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, n)))


def rand_text(rng):
    """A string for a free-form field: mostly plain, sometimes unicode soup."""
    if rng.random() < 0.7:
        return rand_word(rng, 20)
    return "".join(rng.choice(UNICODE + [rand_word(rng, 3)]) for _ in range(rng.randint(1, 8)))


def huge_string(rng):
    n = rng.choices([1000, 20000, 70000, 300000, 1024 * 1024 + 1], weights=[50, 25, 15, 8, 2])[0]
    return rng.choice("xyz") * n


def deep_json(rng, depth=None):
    """Nesting far past any sane limit (and sometimes right at the edge of 128)."""
    depth = depth or rng.choice([100, 126, 127, 128, 129, 200, 1000, 10000])
    if rng.random() < 0.5:
        return RawJSON("[" * depth + "]" * depth)
    return RawJSON('{"a":' * depth + "1" + "}" * depth)


def weird_value(rng):
    """A value of the wrong type or range for wherever it lands."""
    pick = rng.randrange(34)
    return [
        lambda: None, lambda: True, lambda: False, lambda: 0, lambda: -1, lambda: 2 ** 31,
        lambda: 2 ** 63, lambda: 2 ** 64, lambda: 2 ** 70, lambda: -(2 ** 70), lambda: 1.5,
        lambda: -0.0, lambda: 1e308, lambda: RawJSON("1e309"), lambda: RawJSON("-1e309"),
        lambda: RawJSON("1e-400"), lambda: RawJSON("123456789012345678901234567890.5e3"),
        lambda: "", lambda: huge_string(rng), lambda: rand_text(rng), lambda: [],
        lambda: [None, 1, "a", {}], lambda: {}, lambda: {"a": {"b": [1, {"c": None}]}},
        lambda: deep_json(rng), lambda: list(range(rng.randint(1000, 20000))),
        lambda: {f"k{i}": i for i in range(rng.randint(100, 3000))},
        lambda: RawJSON('"\\ud800"'), lambda: RawJSON('"\\udc00\\ud800x"'), lambda: "\x00\x01\x1f",
        lambda: RawJSON("NaN"), lambda: float("inf"), lambda: "2026-13-45T99:99:99Z",
        lambda: "../../etc/passwd",
    ][pick]()


# Valid objects, one small generator per kind. Labels are added by the worker.

def mk_configmap(rng, name):
    data = {f"{rand_word(rng)}.{i}": rand_text(rng) for i in range(rng.randint(0, 3))}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def mk_secret(rng, name):
    data = {rand_word(rng): base64.b64encode(os.urandom(rng.randint(0, 40))).decode() for _ in range(rng.randint(0, 2))}
    obj = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque", "data": data}
    if rng.random() < 0.3:
        obj["stringData"] = {"plain": rand_text(rng)}
    return obj


def mk_service(rng, name):
    port = rng.randint(1, 65535)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"name": "p", "port": port, "targetPort": rng.randint(1, 65535), "protocol": "TCP"}]}}


def container(rng):
    c = {"name": "c", "image": rng.choice(["busybox", "nginx:1.27", "registry.example.com/x/y@sha256:" + "a" * 64])}
    if rng.random() < 0.3:
        c["env"] = [{"name": "E", "value": rand_text(rng)}]
    return c


def mk_pod(rng, name):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [container(rng)]}}


def mk_deployment(rng, name):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": rng.randint(0, 5), "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container(rng)]}}}}


def mk_job(rng, name):
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": rng.randint(0, 6),
                     "template": {"spec": {"restartPolicy": "Never", "containers": [container(rng)]}}}}


def mk_ingress(rng, name):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name},
            "spec": {"rules": [{"host": f"{rand_word(rng)}.example.com", "http": {"paths": [
                {"path": "/" + rand_word(rng), "pathType": rng.choice(["Prefix", "Exact"]),
                 "backend": {"service": {"name": "svc", "port": {"number": rng.randint(1, 65535)}}}}]}}]}}


def mk_role(rng, name):
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": [rng.choice(["pods", "configmaps"])], "verbs": rng.sample(["get", "list", "watch", "create"], 2)}]}


def mk_widget(rng, name):
    spec = {"replicas": rng.randint(0, 5), "size": rng.randint(-100, 100), "ratio": rng.random(),
            "color": rng.choice(["red", "green", "blue"]), "word": rand_word(rng), "tags": [rand_word(rng) for _ in range(rng.randint(0, 3))]}
    if rng.random() < 0.3:
        spec["free"] = {"x": [1, {"y": rand_text(rng)}], "n": None}
    return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def mk_namespace(rng, name):
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


MAKERS = {"cm": mk_configmap, "secret": mk_secret, "svc": mk_service, "pod": mk_pod, "deploy": mk_deployment,
          "job": mk_job, "ing": mk_ingress, "role": mk_role, "widget": mk_widget, "ns": mk_namespace}


# Object mutators: each changes a valid object in place and returns a tag naming what it did.

def all_slots(obj, depth=0, out=None):
    """Every (container, key) in a document, to pick a place to break."""
    out = [] if out is None else out
    if depth > 8:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((obj, k))
            all_slots(v, depth + 1, out)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((obj, i))
            all_slots(v, depth + 1, out)
    return out


def meta_of(obj):
    """obj's metadata, replaced by an empty one if an earlier mutation broke it."""
    m = obj.get("metadata")
    if not isinstance(m, dict):
        m = obj["metadata"] = {}
    return m


def mut_wrong_value(rng, obj):
    slots = all_slots(obj)
    if slots:
        c, k = rng.choice(slots)
        c[k] = weird_value(rng)
    return "wrong-value"


def mut_drop_field(rng, obj):
    slots = all_slots(obj)
    if slots:
        c, k = rng.choice(slots)
        del c[k]
    return "drop-field"


def mut_unknown_field(rng, obj):
    dicts = [c[k] for c, k in all_slots(obj) if isinstance(c[k], dict)] + [obj]
    rng.choice(dicts)[rng.choice(["bogus", "Spec", "metadata2", "💥", "$patch"])] = weird_value(rng)
    return "unknown-field"


def mut_bad_name(rng, obj):
    meta_of(obj)["name"] = rng.choice(BAD_NAMES)
    return "bad-name"


def mut_bad_labels(rng, obj):
    labels = meta_of(obj).setdefault("labels", {})
    if not isinstance(labels, dict):
        labels = meta_of(obj)["labels"] = {}
    r = rng.random()
    if r < 0.4:
        labels[rng.choice(BAD_LABEL_KEYS)] = "v"
    elif r < 0.7:
        labels["ok"] = rng.choice(BAD_LABEL_VALUES)
    elif r < 0.9:
        labels["ok"] = weird_value(rng)
    else:
        meta_of(obj)["labels"] = rng.choice([[], "a=b", 1, [{"a": "b"}]])
    return "bad-labels"


def mut_annotations(rng, obj):
    meta_of(obj)["annotations"] = rng.choice([
        {"big": "x" * rng.choice([1000, 256 * 1024, 300 * 1024])},
        {"n": 1}, ["a"], {rng.choice(BAD_LABEL_KEYS): "v"}, {"u": rand_text(rng)},
    ])
    return "annotations"


META_GARBAGE = {
    "resourceVersion": ["", "0", "-1", "abc", "99999999999999999999", 5, None, "1.5"],
    "uid": ["", "not-a-uid", 7, "00000000-0000-0000-0000-000000000000"],
    "creationTimestamp": ["yesterday", "2026-13-45T99:99:99Z", 12, "", None],
    "deletionTimestamp": ["2026-01-01T00:00:00Z", "garbage", 3],
    "deletionGracePeriodSeconds": [-1, 2 ** 70, "x"],
    "generation": [-5, 2 ** 70, "one", 1.5],
    "finalizers": [["example.com/hold"], ["Bad Finalizer"], "x", [1], ["kubernetes"], [None]],
    "ownerReferences": [[{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "u"}], [{}], "x", [1],
                        [{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "u", "controller": True}] * 2],
    "managedFields": [[{"manager": 1}], "x", [{"fieldsType": "FieldsV9", "fieldsV1": "no"}],
                      [{"manager": "m", "operation": "Bogus", "fieldsType": "FieldsV1", "fieldsV1": {"f:x": {}}}]],
    "generateName": ["gen-", "", "GEN_", "x" * 300, 5],
    "namespace": ["other", "", "BAD_NS", 5],
    "selfLink": ["/x"],
}


def mut_meta(rng, obj):
    field = rng.choice(sorted(META_GARBAGE))
    meta_of(obj)[field] = rng.choice(META_GARBAGE[field])
    if field == "generateName" and rng.random() < 0.7:
        meta_of(obj).pop("name", None)
    return f"meta-{field}"


def mut_type_meta(rng, obj):
    field = rng.choice(["kind", "apiVersion"])
    obj[field] = rng.choice(["", None, 5, "Other", "v2", "apps/v1", "ConfigMap", "x/y/z", rand_text(rng)])
    if rng.random() < 0.3:
        obj.pop(field, None)
    return f"typemeta-{field}"


def mut_container_shape(rng, obj):
    """Arrays where objects are expected and the other way round."""
    key = rng.choice([k for k in obj if k not in ("apiVersion", "kind")] or ["metadata"])
    obj[key] = rng.choice([[], [1, 2], "str", 42, None, [{"a": 1}], {"items": []}])
    return f"shape-{key}"


def mut_deep(rng, obj):
    dicts = [c[k] for c, k in all_slots(obj) if isinstance(c[k], dict)] + [obj]
    rng.choice(dicts)["deep"] = deep_json(rng)
    return "deep"


MUTATORS = [mut_wrong_value, mut_wrong_value, mut_drop_field, mut_unknown_field, mut_bad_name, mut_bad_labels,
            mut_annotations, mut_meta, mut_meta, mut_type_meta, mut_container_shape, mut_deep]


# Text mutators: break the encoded document. Those in MUST_400 leave no valid JSON behind.

def tm_truncate(rng, text):
    return text[: rng.randrange(len(text))] if len(text) > 1 else ""


def tm_trailing(rng, text):
    return text + rng.choice(["x", "}", ",", "{}", "\n{}", "]", "\x00"])


def tm_comment(rng, text):
    i = rng.randrange(1, len(text))
    return text[:i] + "/* c */" + text[i:]


def tm_single_quotes(rng, text):
    return text.replace('"', "'")


def tm_nul(rng, text):
    i = rng.randrange(1, len(text))
    return text[:i] + "\x00" + text[i:]


def tm_bad_utf8(rng, text):
    i = rng.randrange(1, len(text))
    return text[:i].encode() + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]) + text[i:].encode()


def tm_flip(rng, text):
    i = rng.randrange(len(text))
    return text[:i] + rng.choice('{}[]:,"\\0aé ') + text[i + 1:]


def tm_bom(rng, text):
    return "\ufeff" + text


def tm_dup_keys(rng, text):
    return '{"metadata":{"name":"dup"},"kind":"Nope",' + text[1:] if text.startswith("{") else text


# (A comment or a flipped byte may land inside a string and leave valid JSON.)
MUST_400 = {tm_truncate, tm_trailing, tm_single_quotes, tm_nul, tm_bad_utf8}
TEXT_MUTATORS = [tm_truncate, tm_truncate, tm_trailing, tm_comment, tm_single_quotes, tm_nul, tm_bad_utf8,
                 tm_flip, tm_flip, tm_bom, tm_dup_keys]


def random_bytes(rng):
    return rng.randbytes(rng.choice([0, 1, 2, 10, 100, 1000, 10000]))


# YAML that must be rejected or handled without blowing up memory.

def yaml_billion_laughs(rng):
    levels = rng.randint(6, 12)
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*l{i - 1}"] * 9)
        lines.append(f"l{i}: &l{i} [{refs}]")
    body = "\n".join(lines) + "\n"
    if rng.random() < 0.5:
        # The same bomb where the kind's fields are expected.
        body = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: lol\n" + "data:\n" + "".join("  " + ln + "\n" for ln in lines)
    return body


def yaml_weird(rng):
    return rng.choice([
        "a: &a [*a]\n",                                   # alias to itself
        "!!python/object/apply:os.system ['true']\n",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: t}\ndata: !!binary aGVsbG8=\n",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: m\n  <<: {labels: {a: b}}\n",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, name: b}\n",
        "? [a, b]\n: c\n",
        "1: 2\n3: [4]\n",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n\tname: tab\n",
        "a: 'unterminated\n",
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: one}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: two}\n",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: n}\ndata: {a: .nan, b: .inf, c: 0x1F, d: 1e400}\n",
        "x:\n" + "".join("  " * i + "- \n" for i in range(1, 400)),
        "a: " + "[" * 5000 + "]" * 5000 + "\n",
        "%YAML 9.9\n---\na: b\n",
        "&anchor " * 100 + "a\n",
        "a: *undefined\n",
        "\x00\x01: \x02\n",
    ])


# --------------------------------------------------------------------------------------
# Query strings
# --------------------------------------------------------------------------------------

GOOD_SELECTORS = ["a=b", "a==b", "a!=b", "a in (x,y)", "a notin (x)", "a", "!a", "a,b", f"{OWNER}", "x>1", "x<5", ""]
BAD_SELECTORS = ["a in (", "=", "!!", "a==b==c", "a in ()", "a=b,", ",", "a=(b)", "a in (x", "a b", "😀=1",
                 "x" * 70 + "=1", "a=" + "x" * 70, "a notin", "a=b=c", "(", "a in (b,)", "a in (b c)", "a>b", "a<", "%00"]
FIELD_SELECTORS = ["metadata.name=x", "metadata.namespace!=y", "metadata.name==x", "spec.bogus=x",
                   "status.phase=Running", "spec.nodeName=", "=", "metadata.name", "metadata.name=x,=y",
                   "metadata.name in (a)", "type=Opaque", "😀=1", ",", "metadata.name=" + "x" * 300]


def q_label(rng):
    return rng.choice(GOOD_SELECTORS + BAD_SELECTORS)


def q_continue(rng, token=None):
    garbage = ["", "abc", "!!!", base64.b64encode(b'{"rv":-1,"start":"/x"}').decode(),
               base64.urlsafe_b64encode(os.urandom(rng.randint(1, 40))).decode(),
               base64.b64encode(json.dumps({"v": "meta.k8s.io/v1", "rv": 2 ** 70, "start": "\u0000"}).encode()).decode(),
               base64.b64encode(b'{"rv":"x","start":5}').decode(), "x" * 5000]
    if token and rng.random() < 0.5:
        return rng.choice([token, token[:-2], token + "AA", token[::-1]])
    return rng.choice(garbage)


RV_VALUES = ["", "0", "1", "-1", "abc", "99999999999", "18446744073709551616", "1.5", " 1"]


def list_query(rng, res, token=None):
    """Random list options, some garbage. Never `watch`: a watch without a timeout would hang."""
    pairs = []
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3, 4])):
        k = rng.choice(["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion",
                        "resourceVersionMatch", "timeoutSeconds", "pretty", "bogus", "allowWatchBookmarks",
                        "sendInitialEvents"])
        v = {
            "labelSelector": lambda: q_label(rng),
            "fieldSelector": lambda: rng.choice(FIELD_SELECTORS),
            "limit": lambda: rng.choice(["-1", "0", "1", "2", "5", "500", "abc", "99999999999999999999", "1e3", ""]),
            "continue": lambda: q_continue(rng, token),
            "resourceVersion": lambda: rng.choice(RV_VALUES),
            "resourceVersionMatch": lambda: rng.choice(["NotOlderThan", "Exact", "bogus", ""]),
            "timeoutSeconds": lambda: rng.choice(["1", "-1", "abc"]),
            "pretty": lambda: rng.choice(["true", "false", "x"]),
            "bogus": lambda: rand_text(rng),
            "allowWatchBookmarks": lambda: rng.choice(["true", "x"]),
            "sendInitialEvents": lambda: rng.choice(["true", "false", "x"]),
        }[k]()
        pairs.append((k, v))
    return pairs


def write_query(rng, apply=False):
    """Write options; returns (pairs, dry): dry is True when the request, if it succeeds,
    must not change anything, False when it must, None when it is not for the test to say
    (invalid dryRun values: a success is then resynced into the model with a GET)."""
    pairs = []
    dry = False
    r = rng.random()
    if r < 0.08:
        pairs.append(("dryRun", "All"))
        dry = True
    elif r < 0.10:
        pairs.append(("dryRun", rng.choice(["", "bogus", "all", "All,All"])))
        dry = None
    if rng.random() < 0.1:
        pairs.append(("fieldValidation", rng.choice(["Strict", "Warn", "Ignore", "", "bogus", "strict"])))
    if apply or rng.random() < 0.05:
        pairs.append(("fieldManager", rng.choice(["fuzz", "fuzz", "kubectl", "", "x" * 129, "ünï", "a/b"])))
    if rng.random() < 0.02:
        pairs.append(("pretty", "true"))
    return pairs, dry


def query_ok(pairs, apply=False):
    """Whether write options are all valid (so that a content-type error is the only error)."""
    for k, v in pairs:
        if k == "dryRun" and v != "All":
            return False
        if k == "fieldValidation" and v not in ("", "Strict", "Warn", "Ignore"):
            return False
        if k == "fieldManager" and len(v.encode()) > 128:
            return False
        if k == "force" and not apply:
            return False
    return True


def encode_query(pairs, raw_tail=None):
    if not pairs and not raw_tail:
        return ""
    q = urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
    if raw_tail:
        q = (q + "&" if q else "") + raw_tail
    return "?" + q


RAW_QUERY_TAILS = ["%zz", "%ff%fe=%80", "a=%", "&&&", "=x", "labelSelector=a%00b", "limit=%2D1",
                   "dryRun=All&dryRun=All", "fieldValidation=Strict&fieldValidation=bogus", "x=" + "y" * 8000]


# --------------------------------------------------------------------------------------
# The model of acknowledged state
# --------------------------------------------------------------------------------------

@dataclasses.dataclass
class Known:
    obj: dict                  # the object as the server acknowledged it
    rv: str
    terminating: bool = False  # deletionTimestamp set: may still be there, or (namespaces) go

    @property
    def labels(self):
        labels = self.obj["metadata"].get("labels")
        return labels if isinstance(labels, dict) else {}


class Model:
    """What this worker's acknowledged writes say the server holds. Keyed by (res.key, name).
    A key maps to Known, or to None when it is known to be absent. Keys in `uncertain` saw a
    write whose outcome is unknown (a transport error) and are not checked."""

    def __init__(self):
        self.objs = {}
        self.uncertain = set()

    def state(self, key):
        return self.objs.get(key)

    def set_from(self, key, obj):
        meta = obj.get("metadata") or {}
        self.objs[key] = Known(obj=obj, rv=meta.get("resourceVersion"), terminating=bool(meta.get("deletionTimestamp")))
        self.uncertain.discard(key)

    def gone(self, key):
        self.objs[key] = None
        self.uncertain.discard(key)

    def names(self, res_key):
        return [n for (k, n), v in self.objs.items() if k == res_key and v is not None]


def differences(a, b, path="", out=None):
    """Leaf paths where two JSON documents differ."""
    out = [] if out is None else out
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append((f"{path}.{k}", a.get(k, "<absent>"), b.get(k, "<absent>")))
            else:
                differences(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            differences(x, y, f"{path}[{i}]", out)
    elif a != b or type(a) is not type(b):
        out.append((path, a, b))
    return out


def compare_state(ack, got):
    """None when the server's object is the acknowledged one; else (kind, description).
    kind is "float-drift" when only floating point numbers changed (in their last bits)."""
    diffs = differences(ack, got)
    if not diffs:
        return None
    text = "; ".join(f"{p}: acknowledged {json.dumps(x, default=str)[:120]} server {json.dumps(y, default=str)[:120]}" for p, x, y in diffs[:5])
    floats = all(isinstance(x, float) and isinstance(y, (int, float)) and math.isclose(x, y, rel_tol=1e-12)
                 for _, x, y in diffs)
    return ("float-drift" if floats else "lost-or-phantom"), text


# --------------------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------------------

@dataclasses.dataclass
class Req:
    method: str
    path: str
    body: bytes = None
    headers: dict = dataclasses.field(default_factory=dict)
    cat: str = ""              # what generated it, e.g. "create/mutated:wrong-value"
    expect: frozenset = None   # the only acceptable statuses, when there is one right answer
    shape: str = "json"        # what a 2xx must look like
    kind: str = ""             # expected kind for object shapes
    chunked: bool = False
    anon: bool = False
    fresh_conn: bool = False


def describe(req, status=None, resp=b"", extra=""):
    body = req.body or b""
    return {
        "cat": req.cat, "method": req.method, "path": req.path, "headers": req.headers, "chunked": req.chunked,
        "body_len": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_preview": body[:400].decode("utf-8", "replace"),
        "body_b64": base64.b64encode(body).decode() if len(body) <= 64 * 1024 else None,
        "status": status, "response": (resp or b"")[:600].decode("utf-8", "replace"), "extra": extra,
    }


# Inputs the fuzz run found to get a wrong answer. Each entry: `id`; `what` for humans;
# `match(finding)` recognising it among fuzz findings (which then do not fail the fuzz test,
# so that it keeps guarding everything else); `replay(r)` sending the input again and
# returning an error string while the server still answers it wrongly, None once fixed.
# test_known_bad_inputs runs the replays: it fails until every entry is fixed.

def replay_deep_unknown_field(r):
    # Accepted (201) because the unknown field is dropped, but managedFields keep the field
    # set of what was sent, four levels deeper: the stored object no longer decodes
    # (serde_json's 128-level limit) and every GET, LIST and DELETE of the collection is a 500.
    # (ServiceAccounts: a kind no other replay uses, since the collection stays broken.)
    depth = 124
    body = ('{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"deep"},"x":'
            + '{"a":' * depth + "1" + "}" * depth + "}")
    st, _, data = r.request("POST", f"/api/v1/namespaces/{r.ns}/serviceaccounts", body)
    after = [r.request(m, f"/api/v1/namespaces/{r.ns}/serviceaccounts" + p)[:3:2] for m, p in
             [("GET", "/deep"), ("GET", ""), ("DELETE", "/deep")]]
    bad = [(st2, d[:150]) for st2, d in [(st, data)] + after if st2 >= 500]
    return f"5xx after a create with an unknown field {depth} levels deep: {bad}" if bad else None


def replay_keepalive(r):
    # An answer given before the request body was read (404, 405, a bad query) closes the
    # connection without `Connection: close` and without draining the body. A body still
    # streaming in then turns the close into a reset and the client never sees the answer;
    # a body already sent leaves a kept-alive connection that fails the next request.

    def streamed(body):
        for i in range(0, len(body), 100):
            yield body[i:i + 100]
            time.sleep(0.02)

    body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "y" * 300}}).encode()
    conn = r.connection()
    try:
        conn.request("POST", f"/api/v1/namespaces/{r.ns}/configmaps?dryRun=bogus", body=streamed(body),
                     headers={"Content-Type": "application/json"})
        conn.getresponse().read()
    except (OSError, http.client.HTTPException) as e:
        return f"POST ?dryRun=bogus with a chunked body: the 400 never arrives ({type(e).__name__}: {e})"
    finally:
        conn.close()
    # Whether the body is drained first is a race here: try a few sizes.
    for attempt in range(20):
        size = 4096 << (attempt % 7)   # 4 KiB .. 256 KiB
        conn = r.connection()
        try:
            try:
                conn.request("POST", "/apis/nosuch.group/v1/things", body=b'{"a":"' + b"x" * size + b'"}',
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException) as e:
                return f"POST with a {size // 1024} KiB body to a missing resource: no answer ({type(e).__name__}: {e})"
            if resp.will_close:
                continue
            try:
                conn.request("GET", "/api/v1/namespaces", headers={"Accept": "application/json"})
                conn.getresponse().read()
            except (OSError, http.client.HTTPException) as e:
                return (f"POST with a {size // 1024} KiB body answered {resp.status} without Connection: close, then the "
                        f"next request on the connection failed: {type(e).__name__}: {e}")
        finally:
            conn.close()
    return None


def replay_float_drift(r):
    # serde_json parses floats fast but not exactly (no `float_roundtrip`): a stored number can
    # come back one unit in the last place off what the write acknowledged.
    body = ('{"apiVersion":"%s/v1","kind":"Widget","metadata":{"name":"floats"},'
            '"spec":{"ratio":1180591620717411303424,"free":{"a":1.1805916207174113e21,"b":0.30000000000000004,"c":9.007199254740993e15}}}' % GROUP)
    st, _, data = r.request("POST", f"/apis/{GROUP}/v1/namespaces/{r.ns}/widgets", body)
    if st != 201:
        return f"create answered {st}: {data[:200]!r}"
    acked = json.loads(data)["spec"]
    _, _, got = r.request("GET", f"/apis/{GROUP}/v1/namespaces/{r.ns}/widgets/floats")
    stored = json.loads(got)["spec"]
    return None if stored == acked else f"create acknowledged spec {acked}, GET returns {stored}"


def replay_deletecollection_all_namespaces(r):
    # Kubernetes serves only list and watch on /api/v1/<resource> across namespaces; DELETE
    # there is 405. Here it deletes matching objects in every namespace.
    label = f"fuzz-known-{uuid.uuid4().hex[:8]}"
    r.request("POST", f"/api/v1/namespaces/{r.ns}/configmaps",
              json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep", "labels": {label: "x"}}}))
    st, _, data = r.request("DELETE", f"/api/v1/configmaps?labelSelector={label}%3Dx")
    still = r.request("GET", f"/api/v1/namespaces/{r.ns}/configmaps/keep")[0]
    if st != 405 or still != 200:
        return f"DELETE /api/v1/configmaps answered {st} (want 405); the object in {r.ns} then answers GET {still}"
    return None


def replay_unsupported_content_type(r):
    # Kubernetes answers 415 for a body in a media type it does not decode.
    body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "plain"}})
    st, _, data = r.request("POST", f"/api/v1/namespaces/{r.ns}/configmaps", body, ctype="text/plain")
    return None if st == 415 else f"POST with Content-Type text/plain answered {st} (want 415): {data[:150]!r}"


def replay_configmap_over_1mib(r):
    # ConfigMaps (and Secrets) hold at most 1 MiB of data: 422 Invalid.
    body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"a": "x" * (1024 * 1024 + 1)}})
    st, _, data = r.request("POST", f"/api/v1/namespaces/{r.ns}/configmaps?dryRun=All", body)
    return None if st == 422 else f"ConfigMap with 1 MiB + 1 byte of data answered {st} (want 422)"


def replay_copy_bomb(r):
    # Each `copy` of a value into itself doubles it: 17 copies of 1 KB ask for 128 MB.
    # Kubernetes caps what copies may add (3 MiB) and answers 422 at once.
    r.request("POST", f"/api/v1/namespaces/{r.ns}/configmaps", json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bomb"}}))
    ops = [{"op": "add", "path": "/metadata/annotations", "value": {"a": "x" * 1000}}]
    ops += [{"op": "copy", "from": "/metadata/annotations", "path": f"/metadata/annotations/b{i}"} for i in range(17)]
    st, elapsed, growth, data = r.measured("PATCH", f"/api/v1/namespaces/{r.ns}/configmaps/bomb", json.dumps(ops), "application/json-patch+json")
    if st not in (413, 422) or elapsed > 5 or growth > 100 * 1024:
        return f"JSON patch copy bomb answered {st} after {elapsed:.1f}s, server RSS +{growth // 1024} MB (want 422, fast, no growth)"
    return None


def replay_too_many_patch_ops(r):
    # Kubernetes allows at most 10000 operations in one JSON patch (413 beyond).
    r.request("POST", f"/api/v1/namespaces/{r.ns}/configmaps", json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ops"}}))
    ops = [{"op": "test", "path": "/metadata/name", "value": "ops"}] * 10001
    st, _, data = r.request("PATCH", f"/api/v1/namespaces/{r.ns}/configmaps/ops", json.dumps(ops), ctype="application/json-patch+json")
    return None if st in (413, 422) else f"JSON patch with 10001 operations answered {st} (want 413)"


def replay_cr_metadata_types(r):
    # A custom resource's metadata is still ObjectMeta: labels of the wrong type are
    # rejected (or dropped), never stored as they came.
    body = '{"apiVersion":"%s/v1","kind":"Widget","metadata":{"name":"labels","labels":12345,"annotations":["a"]},"spec":{}}' % GROUP
    st, _, data = r.request("POST", f"/apis/{GROUP}/v1/namespaces/{r.ns}/widgets", body)
    if st in (400, 422):
        return None
    if st == 201:
        meta = json.loads(data)["metadata"]
        if isinstance(meta.get("labels", {}), dict) and isinstance(meta.get("annotations", {}), dict):
            return None
        return f"custom resource stored with metadata.labels={meta.get('labels')!r} annotations={meta.get('annotations')!r}"
    return f"answered {st}"


def replay_cr_strategic_missing(r):
    # The patch type is checked first: a custom resource has no strategic merge patch, 415
    # whether or not the object exists.
    answers = [r.request("PATCH", f"/apis/{GROUP}/v1/namespaces/{r.ns}/widgets/missing", body,
                         ctype="application/strategic-merge-patch+json")[0] for body in ("{}", "\x00")]
    return None if answers == [415, 415] else f"strategic merge patch of a missing custom resource answered {answers[0]}, with an undecodable body {answers[1]} (want 415)"


def replay_uncapped_warnings(r):
    # One Warning header per unknown field, without limit: 5000 unknown fields give 5000
    # headers (Python's http.client refuses more than 100; Go's client caps header bytes).
    fields = ",".join(f'"unknown{i}":{i}' for i in range(5000))
    body = '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"warn"},%s}' % fields
    st, headers, data = r.request("POST", f"/api/v1/namespaces/{r.ns}/configmaps?dryRun=All", body)
    err = check_warnings(headers)
    return f"answer {st} carries {err} (Kubernetes: at most ~4 KiB of warning text)" if err else None


KNOWN_5XX = [
    {"id": "deep-unknown-field-poisons-collection",
     "what": "POST an object of any kind with an unknown field nested ~124 levels: 201, then every GET/LIST/DELETE "
             "of that collection (and cluster-wide lists of the kind) is 500 'corrupt object in storage: recursion limit exceeded'",
     "match": lambda f: f.get("status") == 500 and "recursion limit exceeded" in f.get("response", ""),
     "replay": replay_deep_unknown_field},
]

KNOWN_DIVERGENCES = [
    {"id": "keepalive-closed-after-unread-body",
     "what": "an answer sent before the request body was read closes the HTTP/1.1 connection without Connection: close "
             "and without draining the body: the next request on a kept-alive connection fails, and a body still "
             "streaming in (chunked) turns the close into a reset that loses the answer itself",
     "match": lambda f: f["kind"] in ("keepalive-drop", "reset-before-answer"),
     "replay": replay_keepalive},
    {"id": "uncapped-warning-headers",
     "what": "one Warning header per unknown field, unbounded (Kubernetes caps warning text at 4 KiB per answer)",
     "match": lambda f: f["kind"] == "uncapped-warnings",
     "replay": replay_uncapped_warnings},
    {"id": "float-drift-in-storage",
     "what": "floating point numbers read back from storage differ from the acknowledged ones in the last bit",
     "match": lambda f: f["kind"] == "float-drift",
     "replay": replay_float_drift},
    {"id": "deletecollection-across-all-namespaces",
     "what": "DELETE /api/v1/configmaps deletes in every namespace (Kubernetes: 405)",
     "replay": replay_deletecollection_all_namespaces},
    {"id": "create-with-unsupported-content-type",
     "what": "POST with Content-Type text/plain (or xml, form, multipart) is decoded as JSON (Kubernetes: 415)",
     "replay": replay_unsupported_content_type},
    {"id": "configmap-over-1mib",
     "what": "a ConfigMap with more than 1 MiB of data is accepted (Kubernetes: 422)",
     "replay": replay_configmap_over_1mib},
    {"id": "json-patch-copy-bomb",
     "what": "JSON patch copies are not capped: a 700-byte patch makes the server allocate gigabytes",
     "replay": replay_copy_bomb},
    {"id": "json-patch-too-many-operations",
     "what": "JSON patches with more than 10000 operations are applied (Kubernetes: 413)",
     "replay": replay_too_many_patch_ops},
    {"id": "custom-resource-metadata-wrong-type",
     "what": "custom resources' metadata is not type-checked: labels a number, annotations a list, resourceVersion "
             "an array are accepted, stored and echoed back",
     "match": lambda f: (f["kind"] == "bad-2xx-body" and f"/apis/{GROUP}/" in f.get("path", "")
                         and ("resourceVersion" in f.get("extra", "") or "metadata.name" in f.get("extra", ""))),
     "replay": replay_cr_metadata_types},
    {"id": "strategic-patch-of-custom-resource-not-checked-first",
     "what": "strategic merge patch of a custom resource answers 404 when it is missing and 400 when the body "
             "does not decode (Kubernetes: 415 first, custom resources have no strategic merge patch)",
     "match": lambda f: (f["kind"] == "wrong-status" and "/widgets/" in f.get("path", "")
                         and f.get("headers", {}).get("Content-Type", "").startswith("application/strategic-merge-patch+json")),
     "replay": replay_cr_strategic_missing},
]


def known_signature(finding):
    for k in KNOWN_5XX + KNOWN_DIVERGENCES:
        m = k.get("match")
        if k.get("open") and m and m(finding):
            return k["id"]
    return None


class Findings:
    def __init__(self):
        self.lock = threading.Lock()
        self.items = []
        self.known = collections.Counter()
        self.by_kind = collections.Counter()

    def add(self, kind, info):
        info = dict(info, kind=kind)
        kid = known_signature(info)
        with self.lock:
            if kid:
                self.known[kid] += 1
                return
            self.by_kind[kind] += 1
            if len(self.items) < 2000:
                self.items.append(info)


# --------------------------------------------------------------------------------------
# HTTPS plumbing
# --------------------------------------------------------------------------------------

def tls_contexts(server, tmpdir):
    cfg = yaml.safe_load(open(server.kubeconfig))
    user = cfg["users"][0]["user"]
    cluster = cfg["clusters"][0]["cluster"]
    paths = {}
    for name, data in [("ca", cluster["certificate-authority-data"]), ("crt", user["client-certificate-data"]),
                       ("key", user["client-key-data"])]:
        p = os.path.join(tmpdir, name)
        with open(p, "wb") as f:
            f.write(base64.b64decode(data))
        paths[name] = p
    ctx = ssl.create_default_context(cafile=paths["ca"])
    ctx.load_cert_chain(paths["crt"], paths["key"])
    anon = ssl.create_default_context(cafile=paths["ca"])
    return ctx, anon


class Transport:
    """One persistent keep-alive connection (and an anonymous one), reconnected after errors
    or `Connection: close`."""

    def __init__(self, port, ctx, anon_ctx):
        self.port, self.ctx, self.anon_ctx = port, ctx, anon_ctx
        self.conns = {}
        self.last = {}   # anon -> what the connection carried last (to explain a dropped one)

    def _conn(self, anon):
        c = self.conns.get(anon)
        if c is None:
            c = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.anon_ctx if anon else self.ctx,
                                            timeout=REQUEST_TIMEOUT)
            self.conns[anon] = c
        return c

    def drop(self, anon):
        self.last.pop(anon, None)
        c = self.conns.pop(anon, None)
        if c:
            c.close()

    def send(self, req):
        """Returns (status, headers, body bytes). Raises on transport errors."""
        if req.fresh_conn:
            self.drop(req.anon)
        conn = self._conn(req.anon)
        body = req.body
        if req.chunked and body is not None:
            step = max(1, len(body) // 3)
            body = iter([body[i:i + step] for i in range(0, len(body), step)] or [b""])
        try:
            try:
                conn.request(req.method, req.path, body=body, headers=req.headers)
            except (BrokenPipeError, ConnectionResetError):
                # The server may answer (413) and close before reading the whole body; the
                # answer is still waiting in the socket.
                if not req.body or len(req.body) <= MAX_BODY:
                    raise
            r = conn.getresponse()
            data = r.read()
            if r.will_close:
                self.drop(req.anon)
            else:
                self.last[req.anon] = f"{req.method} {req.path[:200]} ({req.cat}, {len(req.body or b'')} body bytes) -> {r.status}"
            return r.status, r.headers, data
        except Exception as e:
            e.previous = self.last.get(req.anon)
            self.drop(req.anon)
            raise


# --------------------------------------------------------------------------------------
# Response checks
# --------------------------------------------------------------------------------------

def check_status_body(status, headers, data):
    ctype = headers.get("Content-Type", "")
    if "json" not in ctype:
        return f"{status} with Content-Type {ctype!r}, not a JSON Status"
    try:
        s = json.loads(data)
    except ValueError:
        return f"{status} body is not JSON"
    if not isinstance(s, dict):
        return f"{status} body is not an object"
    problems = []
    if s.get("kind") != "Status" or s.get("apiVersion") != "v1":
        problems.append(f"kind/apiVersion {s.get('kind')!r}/{s.get('apiVersion')!r}")
    if s.get("status") != "Failure":
        problems.append(f"status {s.get('status')!r}")
    if s.get("code") != status:
        problems.append(f"code {s.get('code')!r} != HTTP {status}")
    if not isinstance(s.get("reason"), str) or not s.get("reason"):
        problems.append(f"reason {s.get('reason')!r}")
    if not isinstance(s.get("message"), str):
        problems.append("no message")
    return "; ".join(problems) or None


def check_warnings(headers):
    """Kubernetes caps the Warning headers of one answer at 4096 characters of text (after
    which each is cut to 256 and the rest dropped); clients cap header sizes too."""
    values = headers.get_all("Warning") or []
    total = sum(len(v) for v in values)
    if total > 16 * 1024:
        return f"{len(values)} Warning headers, {total} bytes"
    return None


def check_object(o, kind, where="object"):
    if not isinstance(o, dict):
        return f"{where} is not a JSON object"
    if kind and o.get("kind") != kind:
        return f"{where} kind {o.get('kind')!r}, want {kind!r}"
    if not isinstance(o.get("apiVersion"), str):
        return f"{where} has no apiVersion"
    meta = o.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        return f"{where} has no metadata.name"
    rv = meta.get("resourceVersion")
    # ("" comes back from dry-run updates that did not name one: unset, if not omitted.)
    if rv is not None and not (isinstance(rv, str) and (rv.isdigit() or rv == "")):
        return f"{where} resourceVersion {rv!r} is not a number string"
    return None


def check_success_body(req, status, headers, data):
    """A 2xx must be well formed for what was asked."""
    if req.method == "HEAD":
        return None
    if req.shape == "text":
        return None
    if req.shape == "watch":
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                return f"watch line is not JSON: {line[:100]!r}"
            if ev.get("type") not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR") or not isinstance(ev.get("object"), dict):
                return f"bad watch event {line[:200]!r}"
            if ev["type"] == "ERROR" and ev["object"].get("kind") != "Status":
                return "watch ERROR event without a Status"
        return None
    try:
        o = json.loads(data)
    except ValueError:
        return "2xx body is not JSON"
    if req.shape == "json":
        return None if isinstance(o, (dict, list)) else "2xx body is not a JSON document"
    if not isinstance(o, dict) or not isinstance(o.get("kind"), str):
        return "2xx body is not an object with a kind"
    accept = req.headers.get("Accept", "")
    if "as=Table" in accept and "g=meta.k8s.io" in accept:
        if o.get("kind") != "Table" or not isinstance(o.get("rows"), list):
            return f"Table requested, got {o.get('kind')!r}"
        return None
    if "as=PartialObjectMetadata" in accept:
        return None
    if req.shape == "object":
        return check_object(o, req.kind)
    if req.shape == "delete":
        if o.get("kind") == "Status":
            return None if o.get("status") == "Success" else f"delete 2xx Status {o.get('status')!r}"
        return check_object(o, req.kind)
    if req.shape == "list":
        if o.get("kind") != req.kind + "List" or not isinstance(o.get("items"), list):
            return f"list kind {o.get('kind')!r} items {type(o.get('items')).__name__}"
        if not isinstance((o.get("metadata") or {}).get("resourceVersion"), str):
            return "list without metadata.resourceVersion"
        for it in o["items"]:
            p = check_object(it, None, "list item")
            if p:
                return p
        return None
    if req.shape == "scale":
        if o.get("kind") != "Scale":
            return f"scale kind {o.get('kind')!r}"
        return None
    return None


# --------------------------------------------------------------------------------------
# The worker: generates requests, sends them, checks answers, keeps the model
# --------------------------------------------------------------------------------------

class Stop(Exception):
    pass


class Worker:
    """One thread of the run: its own RNG (seeded from the run's seed and its number), its
    own namespace and namespace pool, its own connection and model. Everything it writes is
    its own, so its model is exact without locks."""

    def __init__(self, wid, run):
        self.wid = wid
        self.run = run
        self.rng = random.Random(f"{run.seed}:{wid}")
        self.ns = f"fuzz-{run.tag}-{wid}"
        self.owner = f"w{wid}"
        self.model = Model()
        self.transport = Transport(run.server.port, run.ctx, run.anon_ctx)
        self.sent = 0        # attempts, including resends after a dropped connection
        self.answered = 0    # requests that got an answer: what the quota counts
        self.retried = False  # the last request had to be resent: its outcome is for a GET to say
        self.marks = 0
        self.token = None     # a real continue token, to mutate

    # ---- sending and checking ----

    def send(self, req):
        """Send one request, check the answer, return (status, parsed JSON or None)."""
        if self.run.stop.is_set():
            raise Stop()
        self.sent += 1
        h = {"Accept": "application/json", "User-Agent": "corral-fuzz/1.0"}
        h.update(req.headers)
        req.headers = h
        t0 = time.monotonic()
        try:
            try:
                status, headers, data = self.transport.send(req)
            except (ssl.SSLEOFError, http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                status, headers, data = self.resend_after_drop(req, e)
        except socket.timeout:
            self.run.findings.add("hang", describe(req, extra=f"no answer in {REQUEST_TIMEOUT}s"))
            self.run.check_alive()
            return None, None
        except (http.client.HTTPException, OSError) as e:
            self.run.findings.add("connection", describe(req, extra=f"{type(e).__name__}: {e}; previous request on this connection: {getattr(e, 'previous', None)}"))
            self.run.check_alive()
            return None, None
        elapsed = time.monotonic() - t0
        warn = check_warnings(headers)
        if warn:
            self.run.findings.add("uncapped-warnings", describe(req, status, b"", warn))
        self.answered += 1
        self.run.count(status, req.cat, elapsed)
        if elapsed > SLOW_SECONDS and req.shape != "watch":
            self.run.findings.add("slow", describe(req, status, data, f"{elapsed:.1f}s"))
        if status >= 500:
            self.run.findings.add("5xx", describe(req, status, data))
        elif status >= 400:
            if req.method != "HEAD":
                p = check_status_body(status, headers, data)
                if p:
                    self.run.findings.add("bad-status-body", describe(req, status, data, p))
        elif 200 <= status < 300:
            p = check_success_body(req, status, headers, data)
            if p:
                self.run.findings.add("bad-2xx-body", describe(req, status, data, p))
        else:
            self.run.findings.add("unexpected-status", describe(req, status, data))
        if req.expect and status not in req.expect and status < 500:
            self.run.findings.add("wrong-status", describe(req, status, data, f"expected {sorted(req.expect)}"))
        parsed = None
        if req.shape != "watch" and data[:1] in (b"{", b"["):
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = None
        return status, parsed

    def resend_after_drop(self, req, err):
        """The connection closed with no answer. Either the server closed a kept-alive
        connection after its previous answer without `Connection: close` (it never read this
        request), or it answered this request before reading its body and closed, and the
        unread body turned the close into a reset that destroyed the answer. Both are noted
        (the second only if the server then answers a fresh copy) and the request is sent
        again on a new connection, as HTTP clients do. A connection that drops every time is
        a finding of its own (raised from here)."""
        self.retried = True
        previous = getattr(err, "previous", None)
        for attempt in range(3):
            self.sent += 1
            if attempt > 0:
                req.chunked = False   # a body still streaming in when the answer goes loses it
            try:
                answer = self.transport.send(req)
            except (ssl.SSLEOFError, http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                if attempt == 2:
                    e.previous = f"{previous}; dropped on 3 fresh connections too"
                    raise e
                continue
            kind = "keepalive-drop" if previous else "reset-before-answer"
            self.run.findings.add(kind, describe(req, answer[0], answer[2], f"{type(err).__name__}: {err}; previous request on this connection: {previous}"))
            return answer

    def model_error(self, key, what, req=None, status=None, body=None, kind="lost-or-phantom"):
        info = describe(req, status, json.dumps(body).encode() if body is not None else b"") if req else {}
        st = self.model.state(key)
        info.update({"key": list(key), "namespace": self.ns, "extra": what,
                     "model": json.dumps(st.obj)[:1000] if st else repr(st)})
        self.run.findings.add(kind, info)

    def check_same(self, key, got, req, status, where):
        """The server's copy of an object against the acknowledged one."""
        diff = compare_state(self.model.state(key).obj, got)
        if diff:
            kind, text = diff
            self.model_error(key, f"{where}: server object differs from the acknowledged one: {text}", req, status, got, kind)

    # ---- picking things ----

    def pick_res(self):
        return NAMESPACE if self.rng.random() < 0.05 else self.rng.choice(NAMESPACED)

    def ns_of(self, res):
        return self.ns if res.namespaced else None

    def pick_name(self, res):
        r = self.rng.random()
        if res is NAMESPACE:
            return f"fuzz-{self.run.tag}-{self.wid}-pool-{self.rng.randrange(3)}"
        if r < 0.85:
            return f"{res.key}-{self.rng.randrange(6)}"
        known = self.model.names(res.key)
        if known:
            return self.rng.choice(known)
        return f"{res.key}-0"

    def new_mark(self):
        self.marks += 1
        return f"w{self.wid}-m{self.marks}"

    def valid_obj(self, res, name):
        obj = MAKERS[res.key](self.rng, name)
        labels = {OWNER: self.owner, MARK: self.new_mark()}
        if self.rng.random() < 0.3:
            labels[self.rng.choice(["app", "tier", "example.com/team"])] = self.rng.choice(["a", "web", "x-1"])
        obj["metadata"]["labels"] = labels
        if self.rng.random() < 0.05:
            obj["metadata"]["annotations"] = {"note": rand_text(self.rng)}
        if self.rng.random() < 0.03:
            obj["metadata"]["finalizers"] = ["example.com/hold"]
        return obj

    def encode_object(self, obj, mutate_prob=0.6):
        """Serialise an object, often broken. Returns (body bytes, content type, tag, must_400, intact).
        `intact` means the body is the valid object as generated."""
        rng = self.rng
        tag = "valid"
        intact = True
        if rng.random() < mutate_prob:
            intact = False
            tags = [rng.choice(MUTATORS)(rng, obj) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
            tag = "mut:" + "+".join(tags)
        r = rng.random()
        if r < 0.12:
            ctype = rng.choice(["application/yaml", "application/yaml", "application/x-yaml", "text/yaml"])
            text = to_yaml(obj)
            return text.encode(), ctype, tag + "/yaml", False, intact
        text = to_json(obj, ascii=rng.random() < 0.7, indent=2 if rng.random() < 0.1 else None)
        ctype = "application/json"
        if r < 0.16:
            ctype = rng.choice(["application/json; charset=utf-8", "APPLICATION/JSON", "application/json;;", "application/json ; x=y"])
        must_400 = False
        if rng.random() < 0.15:
            intact = False
            tm = rng.choice(TEXT_MUTATORS)
            out = tm(rng, text)
            must_400 = tm in MUST_400
            tag += "/" + tm.__name__
            return (out if isinstance(out, bytes) else out.encode()), ctype, tag, must_400, intact
        return text.encode(), ctype, tag, False, intact

    def headers_for(self, ctype, read=False):
        h = {}
        if ctype is not None:
            h["Content-Type"] = ctype
        r = self.rng.random()
        # Table and metadata-only answers are asked for on reads only (what kubectl does).
        if read and r < 0.03:
            h["Accept"] = "application/json;as=Table;v=v1;g=meta.k8s.io, application/json"
        elif read and r < 0.05:
            h["Accept"] = "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io, application/json"
        elif r < 0.06:
            h["Accept"] = self.rng.choice(["*/*", "application/json, */*", "application/vnd.kubernetes.protobuf, application/json", ""])
        if self.rng.random() < 0.02:
            h["User-Agent"] = self.rng.choice(["", "x" * 4000, "ünï/1", "a/b/c", "kubectl/v1.33 (linux/amd64)"])
        if self.rng.random() < 0.01:
            h["Expect"] = "100-continue"
        return h

    # ---- model-aware helpers ----

    def absorb_write(self, res, key, status, obj, dry):
        """Fold a write's answer into the model: a success that is not a dry run is now the
        acknowledged state of the object."""
        if status is None:
            self.model.uncertain.add(key)
            return
        if dry is True or not 200 <= status < 300:
            return
        meta = (obj or {}).get("metadata") if isinstance(obj, dict) else None
        if (dry is None or not isinstance(meta, dict) or obj.get("kind") != res.kind
                or not meta.get("resourceVersion")
                or (meta.get("deletionTimestamp") and res is not NAMESPACE)):
            # Not for the test to say what the server holds now (an unusual dryRun value, an
            # object being deleted whose finalizers decide whether it is still there): ask.
            self.resync(res, key)
        else:
            self.model.set_from(key, obj)

    def resent(self, res, keys):
        """After a write that had to be resent, what the server holds is for a GET to say."""
        if not self.retried:
            return False
        for key in list(keys):
            self.resync(res, key)
        return True

    def resync(self, res, key):
        status, obj = self.send(Req("GET", item_path(res, self.ns_of(res), key[1]), cat="resync", shape="object", kind=res.kind))
        if status == 200 and isinstance(obj, dict):
            self.model.set_from(key, obj)
        elif status == 404:
            self.model.gone(key)
        else:
            self.model.uncertain.add(key)

    def verify_object(self, res, key, obj, req, status):
        """A GET's answer against the model."""
        if key in self.model.uncertain:
            return
        st = self.model.state(key)
        if key not in self.model.objs:
            # Never written by an acknowledged request (this run starts on an empty server).
            if status == 200:
                self.model_error(key, "object present that no acknowledged write created", req, status, obj)
            return
        whole = "as=" not in req.headers.get("Accept", "") and isinstance(obj, dict)  # not a Table
        if res is NAMESPACE and st is not None and st.terminating:
            # A terminating namespace goes away on its own.
            if status == 404:
                self.model.gone(key)
            elif status == 200 and whole:
                self.model.set_from(key, obj)
            return
        if st is None:
            if status != 404:
                self.model_error(key, f"GET {status}, but the object was deleted", req, status, obj)
        elif status == 404:
            self.model_error(key, "acknowledged object is missing (GET 404)", req, status, obj)
        elif status == 200 and whole:
            self.check_same(key, obj, req, status, "GET")

    # ---- operations ----

    def op_get(self):
        res = self.pick_res()
        rng = self.rng
        if rng.random() < 0.08:
            name = rng.choice(BAD_NAMES)
            req = Req("GET", item_path(res, self.ns_of(res), name), cat="get/bad-name", shape="object", kind=res.kind)
            req.headers = self.headers_for(None, read=True)
            self.send(req)
            return
        name = self.pick_name(res)
        key = (res.key, name)
        q = []
        if rng.random() < 0.1:
            q = [(rng.choice(["resourceVersion", "pretty", "export", "bogus"]), rng.choice(RV_VALUES))]
        sub = "status" if res.status and rng.random() < 0.05 else None
        req = Req("GET", item_path(res, self.ns_of(res), name, sub) + encode_query(q), cat="get" + ("/status" if sub else ""),
                  shape="object", kind=res.kind)
        req.headers = self.headers_for(None, read=True)
        status, obj = self.send(req)
        if status in (200, 404) and not q:
            self.verify_object(res, key, obj, req, status)

    def op_list(self):
        rng = self.rng
        res = self.pick_res()
        scope = rng.random()
        if res is NAMESPACE or scope < 0.1:
            path = coll_path(res)
        else:
            path = coll_path(res, self.ns)
        pairs = list_query(rng, res, self.token)
        raw_tail = rng.choice(RAW_QUERY_TAILS) if rng.random() < 0.05 else None
        req = Req("GET", path + encode_query(pairs, raw_tail), cat="list", shape="list", kind=res.kind)
        req.headers = self.headers_for(None, read=True)
        status, body = self.send(req)
        if status != 200 or not isinstance(body, dict):
            return
        tok = (body.get("metadata") or {}).get("continue")
        if tok:
            self.token = tok
        # The plain list of our own namespace must be exactly the acknowledged objects.
        if not pairs and not raw_tail and res is not NAMESPACE and path == coll_path(res, self.ns) and "as=" not in req.headers.get("Accept", ""):
            self.verify_list(res, body, req)

    def verify_list(self, res, body, req):
        got = {it["metadata"]["name"]: it for it in body.get("items", [])}
        for name, it in got.items():
            key = (res.key, name)
            if key in self.model.uncertain:
                continue
            st = self.model.state(key)
            if key not in self.model.objs:
                self.model_error(key, "listed object that no acknowledged write created", req, 200, it)
            elif st is None:
                self.model_error(key, "deleted object listed", req, 200, it)
            else:
                self.check_same(key, it, req, 200, "LIST")
        for name in self.model.names(res.key):
            key = (res.key, name)
            if name not in got and key not in self.model.uncertain:
                self.model_error(key, "acknowledged object missing from list", req, 200, None)

    def op_watch(self):
        rng = self.rng
        res = self.pick_res()
        pairs = [("watch", rng.choice(["true", "1"])), ("timeoutSeconds", "1")]
        if rng.random() < 0.5:
            pairs.append(("resourceVersion", rng.choice(RV_VALUES[:5])))
        if rng.random() < 0.3:
            pairs.append(("labelSelector", q_label(rng)))
        if rng.random() < 0.2:
            pairs.append(("allowWatchBookmarks", "true"))
        if rng.random() < 0.1:
            pairs += [("sendInitialEvents", "true"), ("resourceVersionMatch", "NotOlderThan")]
        path = coll_path(res, self.ns_of(res))
        self.send(Req("GET", path + encode_query(pairs), cat="watch", shape="watch", kind=res.kind))

    def op_watch_bad(self):
        """Watches whose options cannot parse: answered at once with a 400."""
        rng = self.rng
        res = self.pick_res()
        bad = rng.choice([("timeoutSeconds", "abc"), ("timeoutSeconds", "-1"), ("timeoutSeconds", "1.5"),
                          ("labelSelector", "a in ("), ("resourceVersion", "abc"), ("fieldSelector", "spec.bogus=1")])
        pairs = [("watch", "true"), bad]
        if bad[0] != "timeoutSeconds":
            pairs.append(("timeoutSeconds", "1"))
        self.send(Req("GET", coll_path(res, self.ns_of(res)) + encode_query(pairs), cat="watch/bad-option",
                      shape="watch", expect=frozenset({400})))

    def op_create(self):
        rng = self.rng
        res = self.pick_res()
        name = self.pick_name(res)
        obj = self.valid_obj(res, name)
        q, dry = write_query(rng)
        r = rng.random()
        if r < 0.04:
            body, ctype, tag, must400, intact = random_bytes(rng), "application/json", "random-bytes", True, False
        elif r < 0.06:
            body, ctype, tag, must400, intact = rng.choice([b"", b"   ", b"\n"]), "application/json", "empty", True, False
        elif r < 0.08:
            body, ctype, tag, must400, intact = rng.choice([b"null", b"[]", b"1", b'"x"', b"[{}]", b"true"]), "application/json", "not-object", True, False
        elif r < 0.10:
            body = to_json(obj).encode()
            ctype = rng.choice(["text/plain", "application/xml", "application/x-www-form-urlencoded",
                                "application/vnd.kubernetes.protobuf", "multipart/form-data", "application/cbor", "", None])
            tag, must400, intact = "wrong-content-type", False, False
        elif r < 0.12:
            body, ctype, tag, must400, intact = yaml_weird(rng).encode(), "application/yaml", "yaml-weird", False, False
        else:
            body, ctype, tag, must400, intact = self.encode_object(obj)
        expect = None
        if must400 and "yaml" not in ctype:
            expect = frozenset({400})
        elif tag == "mut:bad-name" and res is not ROLE:
            expect = frozenset({400, 422})
        req = Req("POST", coll_path(res, self.ns_of(res)) + encode_query(q), body, cat=f"create/{tag}",
                  expect=expect, shape="object", kind=res.kind)
        req.headers = self.headers_for(ctype)
        req.chunked = rng.random() < 0.03
        status, out = self.send(req)
        if status is None:
            self.model.uncertain.add((res.key, name))
            return
        created = ((out or {}).get("metadata") or {}).get("name") if status == 201 and isinstance(out, dict) else None
        if self.resent(res, {(res.key, name), (res.key, created or name)}):
            return
        key = (res.key, created or name)
        prev = self.model.state(key)
        known = key in self.model.objs and key not in self.model.uncertain
        if status == 201 and dry is False:
            if known and prev is not None and not (res is NAMESPACE and prev.terminating):
                self.model_error(key, "create succeeded over an acknowledged object", req, status, out)
        if status == 201 and not created:
            self.model.uncertain.add(key)   # a success without a name: nothing to check against
        else:
            self.absorb_write(res, key, status, out, dry)
        if status == 409 and intact and (out or {}).get("reason") == "AlreadyExists" and known and prev is None:
            self.model_error(key, "AlreadyExists for an object that was deleted", req, status, out)

    def current_rv(self, key):
        st = self.model.state(key)
        return st.rv if st else None

    def op_update(self):
        rng = self.rng
        res = self.pick_res()
        name = self.pick_name(res)
        key = (res.key, name)
        sub = "status" if res.status and rng.random() < 0.15 else None
        obj = self.valid_obj(res, name)
        if res is NAMESPACE and rng.random() < 0.1:
            sub = "finalize"
            obj["spec"] = {"finalizers": rng.choice([[], ["kubernetes"], ["x/y"], "x"])}
        if sub == "status":
            if rng.random() < 0.3:
                obj["status"] = weird_value(rng)
            elif res is WIDGET:
                obj["status"] = {"phase": rng.choice(["Running", "Bogus"]), "replicas": rng.randint(0, 3)}
            else:
                obj["status"] = {}
        rv_mode = rng.random()
        rv = self.current_rv(key)
        if rv_mode < 0.6 and rv:
            obj["metadata"]["resourceVersion"] = rv
        elif rv_mode < 0.7:
            obj["metadata"]["resourceVersion"] = rng.choice(["1", "abc", "99999999999", "-1"])
        q, dry = write_query(rng)
        body, ctype, tag, must400, intact = self.encode_object(obj, mutate_prob=0.45)
        expect = frozenset({400}) if must400 and "yaml" not in ctype else None
        req = Req("PUT", item_path(res, self.ns_of(res), name, sub) + encode_query(q), body, cat=f"update{'/' + sub if sub else ''}/{tag}",
                  expect=expect, shape="object", kind=res.kind)
        req.headers = self.headers_for(ctype)
        req.chunked = rng.random() < 0.02
        status, out = self.send(req)
        self.after_update(res, key, req, status, out, dry, intact and rv_mode < 0.6 and rv is not None and sub is None)

    def after_update(self, res, key, req, status, out, dry, precondition_was_current=False, may_create=False):
        """Check a PUT/PATCH answer against the model, then fold it in."""
        if self.resent(res, [key]):
            return
        st = self.model.state(key)
        known = key in self.model.objs and key not in self.model.uncertain
        settled = known and st is not None and not st.terminating
        if status is None:
            self.model.uncertain.add(key)
            return
        if 200 <= status < 300:
            if known and st is None and dry is False and not (may_create and status == 201):
                self.model_error(key, f"update {status} of a deleted object", req, status, out)
            self.absorb_write(res, key, status, out, dry)
        elif status == 404 and settled and isinstance(out, dict) and out.get("reason") == "NotFound":
            self.model_error(key, "update got 404 for an acknowledged object", req, status, out)
        elif status == 409 and precondition_was_current and settled:
            self.model_error(key, "update with the acknowledged resourceVersion got 409", req, status, out)

    # patches

    def merge_patch_doc(self, res, name):
        """A merge patch: a new marker label, sometimes finalizers, a resourceVersion
        precondition or a new body. Returns (doc, clean): clean when nothing weird was added."""
        rng = self.rng
        doc = {"metadata": {"labels": {MARK: self.new_mark()}}}
        r = rng.random()
        if r < 0.15:
            doc["metadata"]["labels"]["x"] = None
        elif r < 0.25:
            doc["metadata"]["finalizers"] = rng.choice([None, ["example.com/hold"], []])
        elif r < 0.35:
            doc["metadata"]["resourceVersion"] = rng.choice([self.current_rv((res.key, name)) or "1", "1", "abc"])
        body_field = {"cm": "data", "secret": "stringData", "role": "rules"}.get(res.key, "spec")
        if rng.random() < 0.5:
            fresh = MAKERS[res.key](rng, name)
            if body_field in fresh:
                doc[body_field] = fresh[body_field]
        return doc

    def strategic_doc(self, res, name):
        """A merge patch plus the directives only strategic merge patch knows."""
        rng = self.rng
        doc = self.merge_patch_doc(res, name)
        directive = rng.random()
        if directive < 0.1:
            doc["$patch"] = rng.choice(["replace", "merge", "delete", "bogus", 5])
        elif directive < 0.2:
            doc["metadata"]["$deleteFromPrimitiveList/finalizers"] = rng.choice([["example.com/hold"], "x", [1]])
        elif directive < 0.3 and res in (POD, DEPLOYMENT, JOB):
            cs = [{"name": "c", "image": "img:" + rand_word(rng)}]
            if rng.random() < 0.3:
                cs = [{"name": "c", "$patch": rng.choice(["delete", "replace", "bogus"])}]
            pod_spec = {"containers": cs, "$setElementOrder/containers": rng.choice([[{"name": "c"}], [{"name": "zz"}], "x"])}
            if res is POD:
                doc["spec"] = pod_spec
            else:
                doc["spec"] = {"template": {"spec": pod_spec}}
        elif directive < 0.35:
            doc["$retainKeys"] = rng.choice([["metadata"], "x", [1]])
        return doc

    def json_patch_doc(self, res, name):
        rng = self.rng
        ops = []
        mark_path = "/metadata/labels/" + MARK.replace("~", "~0").replace("/", "~1")
        if rng.random() < 0.8:
            ops.append({"op": "replace", "path": mark_path, "value": self.new_mark()})
        rv = self.current_rv((res.key, name))
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            ops.append(rng.choice([
                {"op": "add", "path": "/metadata/labels/extra", "value": rand_word(rng)},
                {"op": "remove", "path": "/metadata/labels/nonexistent"},
                {"op": "test", "path": "/metadata/name", "value": name},
                {"op": "test", "path": "/metadata/resourceVersion", "value": rv or "1"},
                {"op": "add", "path": "/metadata/annotations", "value": {"a": rand_text(rng)}},
                {"op": "copy", "from": "/metadata/labels", "path": "/metadata/annotations"},
                {"op": "move", "from": "/metadata", "path": "/metadata/x"},
                {"op": "move", "from": "/metadata/labels/extra", "path": "/metadata/labels/extra2"},
                {"op": "replace", "path": "/spec/replicas", "value": rng.choice([1, -1, 2 ** 70, "x"])},
                {"op": "add", "path": "/spec/containers/-", "value": {"name": "d", "image": "x"}},
                {"op": "remove", "path": "/spec/containers/99999999999999999999999"},
                {"op": "add", "path": "/data/" + rand_word(rng), "value": rand_text(rng)},
                {"op": "add", "path": rng.choice(["", "/", "~2", "/a~", "/metadata/labels/~", "/spec/ports/-1", "/x/y/z"]), "value": 1},
                {"op": rng.choice(["bogus", "", None, 5]), "path": "/metadata"},
                {"op": "add", "path": "/metadata/labels/x"},            # no value
                {"op": "replace"},                                       # no path
                {"op": "add", "path": "/metadata/labels/w", "value": weird_value(rng)},
                {"op": "remove", "path": "/metadata"},
                {"op": "replace", "path": "", "value": {"kind": "Nope"}},
                {"op": "add", "path": "/metadata/finalizers", "value": rng.choice([["example.com/hold"], []])},
            ]))
        rng.shuffle(ops)
        r = rng.random()
        if r < 0.03:
            return rng.choice([{}, "x", 1, None, {"op": "add"}, [1, 2], [[]]])
        if r < 0.04:
            # Many operations (Kubernetes allows 10000).
            return [{"op": "test", "path": "/metadata/name", "value": name}] * rng.choice([100, 10001, 30000])
        return ops

    def copy_bomb(self, res, name):
        """Each copy doubles the document. Kept small here (a few MB when done); the big one
        that blows memory up is a KNOWN_DIVERGENCES entry."""
        n = self.rng.randint(6, 11)
        ops = [{"op": "add", "path": "/metadata/annotations", "value": {"a": "x" * 1000}}]
        ops += [{"op": "copy", "from": "/metadata/annotations", "path": f"/metadata/annotations/b{i}"} for i in range(n)]
        return ops

    def op_patch(self):
        rng = self.rng
        res = self.pick_res()
        name = self.pick_name(res)
        key = (res.key, name)
        sub = "status" if res.status and rng.random() < 0.1 else None
        ptype = rng.choice(["json", "merge", "strategic"])
        ctype = {"json": "application/json-patch+json", "merge": "application/merge-patch+json",
                 "strategic": "application/strategic-merge-patch+json"}[ptype]
        if ptype == "json":
            doc = self.json_patch_doc(res, name)
        else:
            doc = self.merge_patch_doc(res, name) if ptype == "merge" else self.strategic_doc(res, name)
        clean = True
        if ptype != "json" and rng.random() < 0.35:
            c, k = rng.choice(all_slots(doc))
            c[k] = weird_value(rng)
            clean = False
        q, dry = write_query(rng)
        if rng.random() < 0.02:
            q.append(("force", "true"))
        text = to_json(doc, ascii=rng.random() < 0.7)
        tag = ptype
        expect = None
        r = rng.random()
        if r < 0.05:
            text = tm_truncate(rng, text)
            tag += "/truncated"
            expect = frozenset({400, 404})
        elif r < 0.08:
            text = rng.choice(["", " ", "null", "[", "{", "\x00"])
            tag += "/empty-or-garbage"
        elif r < 0.10:
            ctype = rng.choice(["application/json", "text/plain", "application/yaml", "application/merge-patch+yaml",
                                "application/json-patch+yaml", "", "application/strategic-merge-patch+json; charset=utf-8"])
            tag += "/unsupported-type"
            if ctype in ("application/json", "text/plain", "application/yaml", "application/merge-patch+yaml",
                         "application/json-patch+yaml", "") and query_ok(q):
                expect = frozenset({415})
        elif r < 0.11:
            text = to_json(self.copy_bomb(res, name))
            ctype = "application/json-patch+json"
            tag = "json/copy-bomb"
        if res is WIDGET and ctype.startswith("application/strategic-merge-patch+json") and query_ok(q):
            # Custom resources have no strategic merge patch; the patch type is checked first.
            expect = frozenset({415})
        req = Req("PATCH", item_path(res, self.ns_of(res), name, sub) + encode_query(q), text.encode(),
                  cat=f"patch{'/status' if sub else ''}/{tag}", expect=expect, shape="object", kind=res.kind)
        req.headers = self.headers_for(ctype)
        status, out = self.send(req)
        # A failed `test` of the acknowledged resourceVersion (with nothing else in the patch
        # that could fail) means the server's object is not the acknowledged one.
        st = self.model.state(key)
        if (status == 422 and tag == "json" and isinstance(doc, list) and not sub and st is not None
                and not st.terminating and key not in self.model.uncertain and MARK in st.labels):
            mark_path = "/metadata/labels/" + MARK.replace("/", "~1")
            ops = [o for o in doc if isinstance(o, dict)]
            tests = [o for o in ops if o.get("op") == "test" and o.get("path") == "/metadata/resourceVersion"]
            others = [o for o in doc if o not in tests and not (isinstance(o, dict) and o.get("op") == "replace" and o.get("path") == mark_path)]
            if tests and not others and tests[0]["value"] == st.rv:
                self.model_error(key, "json patch test of the acknowledged resourceVersion failed", req, status, out)
        self.after_update(res, key, req, status, out, dry)

    def op_apply(self):
        rng = self.rng
        res = self.pick_res()
        name = self.pick_name(res)
        key = (res.key, name)
        obj = self.valid_obj(res, name)
        q, dry = write_query(rng, apply=True)
        if rng.random() < 0.3:
            q.append(("force", rng.choice(["true", "false", "x"])))
        if rng.random() < 0.05:
            q = [(k, v) for k, v in q if k != "fieldManager"]
        r = rng.random()
        if r < 0.05:
            body, tag = yaml_billion_laughs(rng).encode(), "billion-laughs"
        elif r < 0.10:
            body, tag = yaml_weird(rng).encode(), "yaml-weird"
        else:
            if rng.random() < 0.5:
                tags = [rng.choice(MUTATORS)(rng, obj) for _ in range(rng.choice([1, 1, 2]))]
                tag = "mut:" + "+".join(tags)
            else:
                tag = "valid"
            body = (to_yaml(obj) if rng.random() < 0.6 else to_json(obj)).encode()
            if rng.random() < 0.08:
                body = tm_truncate(rng, body.decode()).encode()
                tag += "/truncated"
        req = Req("PATCH", item_path(res, self.ns_of(res), name) + encode_query(q), body,
                  cat=f"apply/{tag}", shape="object", kind=res.kind)
        req.headers = self.headers_for("application/apply-patch+yaml")
        status, out = self.send(req)
        self.after_update(res, key, req, status, out, dry, may_create=True)

    def op_delete(self):
        rng = self.rng
        res = self.pick_res()
        name = self.pick_name(res)
        key = (res.key, name)
        q = []
        dry = False
        if rng.random() < 0.08:
            q.append(("dryRun", "All"))
            dry = True
        if rng.random() < 0.1:
            q.append(("propagationPolicy", rng.choice(["Background", "Foreground", "Orphan", "bogus", ""])))
        if rng.random() < 0.1:
            q.append(("gracePeriodSeconds", rng.choice(["0", "-1", "30", "abc", "99999999999999999999"])))
        body = None
        ctype = None
        r = rng.random()
        if r < 0.25:
            st = self.model.state(key)
            opts = {"kind": "DeleteOptions", "apiVersion": "v1"}
            opts[rng.choice(["propagationPolicy", "gracePeriodSeconds", "preconditions", "dryRun", "orphanDependents"])] = rng.choice([
                "Background", 0, {"resourceVersion": st.rv if st else "1"}, {"uid": "nope"}, ["All"], [], True, None, weird_value(rng)])
            if opts.get("dryRun") == ["All"]:
                dry = True
            elif isinstance(opts.get("dryRun"), (list, str)) and opts["dryRun"] and not dry:
                dry = None   # an invalid dryRun: whatever the server does, ask afterwards
            body = to_json(opts).encode()
            ctype = "application/json"
        elif r < 0.3:
            body, ctype = rng.choice([b"{", b"[]", b"null", random_bytes(rng), b'{"dryRun":"All"}']), "application/json"
            if body == b'{"dryRun":"All"}' and not dry:
                dry = None
        req = Req("DELETE", item_path(res, self.ns_of(res), name) + encode_query(q), body, cat="delete",
                  shape="delete", kind=res.kind)
        req.headers = self.headers_for(ctype)
        status, out = self.send(req)
        st = self.model.state(key)
        known = key in self.model.objs and key not in self.model.uncertain
        if status is None:
            self.model.uncertain.add(key)
        elif self.resent(res, [key]):
            return
        elif dry is True:
            return
        elif dry is None and 200 <= status < 300:
            self.resync(res, key)
        elif status == 200:
            if known and st is None:
                self.model_error(key, "delete 200 of an already deleted object", req, status, out)
            elif key not in self.model.objs and key not in self.model.uncertain:
                self.model_error(key, "deleted an object that no acknowledged write created", req, status, out)
            self.model.gone(key)
        elif status == 202:
            # Marked for deletion (finalizers, namespaces): the answer is the stored object.
            self.absorb_write(res, key, status, out, False)
        elif status == 404 and known and st is not None and not (res is NAMESPACE and st.terminating):
            self.model_error(key, "delete got 404 for an acknowledged object", req, status, out)

    def op_deletecollection(self):
        rng = self.rng
        res = self.pick_res()
        pairs = []
        if res is NAMESPACE:
            # Cluster scoped: only ever this worker's own namespaces.
            sel = f"{OWNER}={self.owner}"
            if rng.random() < 0.5:
                sel += "," + q_label(rng)
            pairs.append(("labelSelector", sel))
        elif rng.random() < 0.7:
            pairs.append(("labelSelector", rng.choice([f"{MARK}=nothing", "app=web", "tier", q_label(rng)])))
        if rng.random() < 0.3:
            pairs.append(("fieldSelector", rng.choice(FIELD_SELECTORS + [f"metadata.name={res.key}-{rng.randrange(6)}"])))
        dry = False
        if rng.random() < 0.2:
            pairs.append(("dryRun", "All"))
            dry = True
        if rng.random() < 0.1:
            pairs.append(("propagationPolicy", rng.choice(["Background", "bogus"])))
        req = Req("DELETE", coll_path(res, self.ns_of(res)) + encode_query(pairs), cat="deletecollection",
                  shape="list", kind=res.kind)
        req.headers = self.headers_for(None)
        status, out = self.send(req)
        if status is None:
            for n in self.model.names(res.key):
                self.model.uncertain.add((res.key, n))
            return
        if self.resent(res, [(res.key, n) for n in self.model.names(res.key)]):
            return
        if status == 200 and not dry and isinstance(out, dict):
            for it in out.get("items") or []:
                name = (it.get("metadata") or {}).get("name")
                key = (res.key, name)
                if key not in self.model.objs and key not in self.model.uncertain:
                    self.model_error(key, "deletecollection removed an object no acknowledged write created", req, status, it)
                if res is NAMESPACE or (it.get("metadata") or {}).get("deletionTimestamp"):
                    self.resync(res, key)
                else:
                    self.model.gone(key)

    def op_binding(self):
        """Binding a pod to a node (what a scheduler does) makes its deletion graceful."""
        rng = self.rng
        name = self.pick_name(POD)
        key = (POD.key, name)
        b = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"kind": "Node", "name": "node-" + rand_word(rng, 3)}}
        tag = "valid"
        if rng.random() < 0.5:
            tag = mut_wrong_value(rng, b) if rng.random() < 0.5 else mut_container_shape(rng, b)
        req = Req("POST", item_path(POD, self.ns, name, "binding"), to_json(b).encode(), cat=f"binding/{tag}",
                  headers={"Content-Type": "application/json"}, shape="json")
        status, out = self.send(req)
        if status is None or 200 <= status < 300:
            self.resync(POD, key)

    def op_scale(self):
        rng = self.rng
        res = rng.choice([DEPLOYMENT, WIDGET])
        name = self.pick_name(res)
        key = (res.key, name)
        path = item_path(res, self.ns, name, "scale")
        m = rng.random()
        if m < 0.4:
            self.send(Req("GET", path, cat="scale/get", shape="scale"))
            return
        q, dry = write_query(rng)
        if m < 0.75:
            scale = {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": name, "namespace": self.ns},
                     "spec": {"replicas": rng.choice([0, 1, 3, -1, 2 ** 31, "x", None])}}
            if rng.random() < 0.3:
                scale["metadata"]["resourceVersion"] = rng.choice([self.current_rv(key) or "1", "abc"])
            if rng.random() < 0.2:
                mut_wrong_value(rng, scale)
            req = Req("PUT", path + encode_query(q), to_json(scale).encode(), cat="scale/put", shape="scale")
            req.headers = {"Content-Type": "application/json"}
        else:
            ctype = rng.choice(["application/merge-patch+json", "application/json-patch+json", "application/strategic-merge-patch+json"])
            doc = {"spec": {"replicas": rng.choice([0, 2, -3, "x"])}} if "json-patch" not in ctype else [{"op": "replace", "path": "/spec/replicas", "value": rng.choice([1, -1])}]
            req = Req("PATCH", path + encode_query(q), to_json(doc).encode(), cat="scale/patch", shape="scale")
            req.headers = {"Content-Type": ctype}
        status, out = self.send(req)
        if status is None:
            self.model.uncertain.add(key)
        elif status == 200 and not dry:
            # The Scale carries the parent's new resourceVersion; the labels are the parent's.
            self.resync(res, key)

    def op_misc_path(self):
        """Paths that name nothing, or name things in odd ways. Only GETs and writes that
        cannot touch anything real."""
        rng = self.rng
        ns = self.ns
        paths = [
            (f"/api/v1/namespaces/{ns}/nonexistent", {404}),
            ("/apis/nosuch.group/v1/things", {404}),
            ("/apis/apps/v99/deployments", {404}),
            ("/api/v2/pods", {404}),
            (f"/api/v1/namespaces/{ns}/configmaps/a/b/c/d", {404}),
            (f"/api/v1/namespaces/{ns}/configmaps/cm-1/status", {404}),
            (f"/api/v1/namespaces/{ns}/configmaps/cm-1/bogus", {404}),
            (f"/api/v1/namespaces//configmaps", None),
            ("//api//v1//namespaces", None),
            (f"/api/v1/namespaces/{ns}/configmaps/%zz", None),
            (f"/api/v1/namespaces/{ns}/configmaps/%ff%fe", None),
            (f"/api/v1/namespaces/{ns}/configmaps/" + "a" * 8000, None),
            ("/api/v1/namespaces/" + "%E2%80%AE" * 50 + "/configmaps", None),
            (f"/api/v1/namespaces/{ns}/configmaps/../../../../etc/passwd", None),
            (f"/api/v1/namespaces/{ns}/pods/pod-1/log", None),
            (f"/api/v1/namespaces/{ns}/pods/pod-1/exec?command=ls", None),
            (f"/api/v1/namespaces/{ns}/pods/pod-1/portforward", None),
            (f"/api/v1/namespaces/{ns}/pods/pod-1/attach", None),
            (f"/api/v1/namespaces/{ns}/pods/pod-1/eviction", None),
            (f"/api/v1/namespaces/{ns}/status", None),
            (f"/api/v1/namespaces/{ns}/configmaps/cm-1/scale", {404}),
            ("/api/v1/nodes/nonexistent-node/proxy/x", None),
            ("/apis/apps", None), ("/apis/apps/v1", None), ("/api", None), ("/apis", None), ("/api/v1", None),
            (f"/apis/{GROUP}/v1", None), ("/openapi/v2", None), ("/openapi/v3", None), ("/openapi/v3/api/v1", None),
            ("/openapi/v3/apis/nosuch/v1", None), ("/version", None), ("/healthz", None), ("/livez", None),
            ("/metrics", None), ("/.well-known/openid-configuration", None), ("/", None), ("/debug/pprof/", None),
        ]
        path, expect = rng.choice(paths)
        method = "GET"
        body = None
        ctype = None
        if expect == {404} and rng.random() < 0.3:
            method = rng.choice(["POST", "PUT", "PATCH", "DELETE"])
            body = to_json(mk_configmap(rng, "x")).encode()
            ctype = "application/merge-patch+json" if method == "PATCH" else "application/json"
        shape = "text" if path in ("/healthz", "/livez", "/metrics", "/", "/debug/pprof/") else "json"
        if path.endswith("/scale"):
            expect = None  # configmaps have no scale: 404; a server may also say 405
        req = Req(method, path, body, cat=f"misc-path/{method}", expect=frozenset(expect) if expect else None, shape=shape)
        req.headers = self.headers_for(ctype)
        if rng.random() < 0.1:
            req.headers["Accept"] = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        self.send(req)

    def op_weird_method(self):
        rng = self.rng
        res = self.pick_res()
        method = rng.choice(["HEAD", "OPTIONS", "TRACE", "FOO", "get", "PROPFIND", "M-SEARCH", "POST", "PUT"])
        target = rng.random()
        if method in ("POST",):
            path = item_path(res, self.ns_of(res), self.pick_name(res))  # POST on an item: 405
            expect = {405}
        elif method == "PUT":
            path = coll_path(res, self.ns_of(res))  # PUT on a collection: 405
            expect = {405}
        else:
            path = coll_path(res, self.ns_of(res)) if target < 0.5 else item_path(res, self.ns_of(res), self.pick_name(res))
            expect = None
        body = to_json(self.valid_obj(res, "x")).encode() if method in ("POST", "PUT") else None
        req = Req(method, path, body, cat=f"method/{method}", expect=frozenset(expect) if expect else None)
        req.headers = {"Content-Type": "application/json"} if body else {}
        self.send(req)

    def op_anon(self):
        """No client certificate: 401 everywhere except health and version."""
        rng = self.rng
        res = self.pick_res()
        path = coll_path(res, self.ns_of(res))
        req = Req(rng.choice(["GET", "POST", "DELETE"]), path, b"{}" if rng.random() < 0.5 else None, cat="anonymous",
                  expect=frozenset({401}), anon=True)
        req.headers = {"Content-Type": "application/json"}
        if rng.random() < 0.5:
            req.headers["Authorization"] = rng.choice(["Bearer wrong", "Bearer ", "Basic YTpi", "Bearer " + "x" * 5000, "garbage"])
        self.send(req)

    def op_oversize(self):
        """Bodies at and just over the 3 MiB limit."""
        rng = self.rng
        res = CONFIGMAP
        name = f"cm-{rng.randrange(6)}"
        over = rng.random() < 0.8
        size = MAX_BODY + rng.randint(1, 64 * 1024) if over else MAX_BODY - rng.randint(100, 4096)
        method = rng.choice(["POST", "PUT", "PATCH"])
        prefix = '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"%s"},"data":{"big":"' % name
        suffix = '"}}'
        body = (prefix + "x" * (size - len(prefix) - len(suffix)) + suffix).encode()
        assert len(body) == size
        if method == "POST":
            path, ctype = coll_path(res, self.ns), "application/json"
        else:
            path = item_path(res, self.ns, name)
            ctype = "application/json" if method == "PUT" else "application/merge-patch+json"
        req = Req(method, path + "?dryRun=All", body, cat=f"oversize/{'over' if over else 'under'}/{method}",
                  expect=frozenset({413}) if over else None, shape="object", kind=res.kind, fresh_conn=True)
        req.headers = {"Content-Type": ctype}
        self.send(req)

    def op_yaml_bomb(self):
        rng = self.rng
        res = CONFIGMAP
        body = yaml_billion_laughs(rng).encode()
        if rng.random() < 0.5:
            req = Req("POST", coll_path(res, self.ns), body, cat="yaml-bomb/create", expect=frozenset({400, 422}),
                      shape="object", kind=res.kind)
            req.headers = {"Content-Type": "application/yaml"}
        else:
            req = Req("PATCH", item_path(res, self.ns, f"cm-{rng.randrange(6)}") + "?fieldManager=fuzz", body,
                      cat="yaml-bomb/apply", expect=frozenset({400, 422}), shape="object", kind=res.kind)
            req.headers = {"Content-Type": "application/apply-patch+yaml"}
        self.send(req)

    def op_health(self):
        path = self.rng.choice(["/readyz", "/livez", "/healthz", "/version", "/readyz?verbose"])
        self.send(Req("GET", path, cat="health", expect=frozenset({200}), shape="text"))

    # Operations and their weights: what a request stream looks like. Watches hold a thread
    # for their 1 s timeout, and bodies of 3 MiB are slow to send: both are rare.
    OPS = [
        ("op_get", 170), ("op_list", 100), ("op_watch", 1), ("op_watch_bad", 5), ("op_create", 190),
        ("op_update", 110), ("op_patch", 170), ("op_apply", 50), ("op_delete", 75), ("op_deletecollection", 10),
        ("op_scale", 25), ("op_misc_path", 40), ("op_weird_method", 12), ("op_anon", 8), ("op_oversize", 1),
        ("op_yaml_bomb", 3), ("op_health", 5), ("op_binding", 4),
    ]

    def setup(self):
        ns = mk_namespace(self.rng, self.ns)
        ns["metadata"]["labels"] = {OWNER: "setup"}
        status, _ = self.send(Req("POST", "/api/v1/namespaces", to_json(ns).encode(), cat="setup",
                                  headers={"Content-Type": "application/json"}, expect=frozenset({201}),
                                  shape="object", kind="Namespace"))
        if status != 201:
            raise RuntimeError(f"cannot create namespace {self.ns}: {status}")

    def loop(self, quota):
        names = [n for n, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        try:
            while self.answered < quota:
                op = self.rng.choices(names, weights)[0]
                self.retried = False
                getattr(self, op)()
        except Stop:
            pass
        except Exception as e:  # a bug in the test itself: say where
            import traceback
            self.run.findings.add("test-error", {"extra": traceback.format_exc(), "cat": repr(e)})
            self.run.stop.set()


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------

def rss_kb(server):
    """The server process's resident memory (VmRSS), 0 once it is gone."""
    try:
        with open(f"/proc/{server.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Run:
    """One fuzz run: the server, TLS contexts, shared counters and findings."""

    def __init__(self, server, seed, tmpdir):
        self.server = server
        self.seed = seed
        self.tag = f"{seed % 100000:05d}"
        self.ctx, self.anon_ctx = tls_contexts(server, tmpdir)
        self.findings = Findings()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses = collections.Counter()
        self.cats = collections.Counter()
        self.total = 0
        self.slowest = (0.0, "")
        self.rss_max = 0

    def count(self, status, cat, elapsed):
        with self.lock:
            self.total += 1
            self.statuses[status] += 1
            self.cats[cat.split("/")[0]] += 1
            if elapsed > self.slowest[0]:
                self.slowest = (elapsed, cat)

    def check_alive(self):
        if self.server.proc.poll() is not None:
            self.findings.add("crash", {"extra": f"server exited with {self.server.proc.returncode}", "cat": "crash"})
            self.stop.set()

    def rss_kb(self):
        return rss_kb(self.server)

    def watch_rss(self, done):
        while not done.is_set():
            kb = self.rss_kb()
            self.rss_max = max(self.rss_max, kb)
            if kb > RSS_LIMIT_KB and "memory" not in self.findings.by_kind:
                self.findings.add("memory", {"extra": f"server RSS {kb} kB over {RSS_LIMIT_KB} kB", "cat": "rss"})
            self.check_alive()
            done.wait(0.2)


def register_crd(run):
    t = Transport(run.server.port, run.ctx, run.anon_ctx)
    status, _, data = t.send(Req("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                 json.dumps(CRD).encode(), headers={"Content-Type": "application/json"}))
    assert status == 201, data
    deadline = time.time() + 30
    while time.time() < deadline:
        status, _, _ = t.send(Req("GET", f"/apis/{GROUP}/v1/namespaces/default/widgets"))
        if status == 200:
            return
        time.sleep(0.2)
    raise AssertionError("the fuzz CRD never became served")


def final_state_check(run, workers):
    """After the storm: every acknowledged object is there exactly as acknowledged, and
    nothing deleted came back. Problems go to the findings (so known ones are recognised)."""
    t = Transport(run.server.port, run.ctx, run.anon_ctx)

    def get(path):
        req = Req("GET", path, headers={"Accept": "application/json"}, cat="final")
        status, _, data = t.send(req)
        return req, status, data

    def problem(kind, req, status, data, what):
        run.findings.add(kind, describe(req, status, data, what))

    for w in workers:
        for res in NAMESPACED:
            items, token, listed = {}, "", True
            while True:
                q = "?limit=7" + (f"&continue={urllib.parse.quote(token)}" if token else "")
                req, status, data = get(coll_path(res, w.ns) + q)
                if status != 200:
                    problem("final-state" if status < 500 else "5xx", req, status, data, "final paginated list failed")
                    listed = False
                    break
                body = json.loads(data)
                for it in body["items"]:
                    items[it["metadata"]["name"]] = it
                token = body["metadata"].get("continue")
                if not token:
                    break
            for (rk, name), st in w.model.objs.items():
                if rk != res.key or (rk, name) in w.model.uncertain:
                    continue
                if listed:
                    req, status, got = None, 200 if name in items else 404, items.get(name)
                else:
                    # The list is broken: look at each acknowledged object on its own.
                    req, status, data = get(item_path(res, w.ns, name))
                    if status >= 500:
                        problem("5xx", req, status, data, "final GET failed")
                        continue
                    got = json.loads(data) if status == 200 else None
                if st is None and got is not None:
                    w.model_error((rk, name), "final state: deleted (acknowledged) but present", req, status, got)
                elif st is not None and got is None:
                    w.model_error((rk, name), "final state: acknowledged but missing", req, status, None)
                elif st is not None:
                    w.check_same((rk, name), got, req or Req("GET", coll_path(res, w.ns), cat="final"), 200, "final state")
            for name in items:
                if (res.key, name) not in w.model.objs and (res.key, name) not in w.model.uncertain:
                    w.model_error((res.key, name), "final state: present but never acknowledged", None, 200, items[name])
        for (rk, name), st in w.model.objs.items():
            if rk != "ns" or (rk, name) in w.model.uncertain:
                continue
            req, status, data = get(item_path(NAMESPACE, None, name))
            if status >= 500:
                problem("5xx", req, status, data, "final GET failed")
            elif st is None and status != 404:
                w.model_error((rk, name), f"final state: deleted namespace answers GET {status}", req, status, None)
            elif st is not None and not st.terminating:
                if status != 200:
                    w.model_error((rk, name), f"final state: acknowledged namespace answers GET {status}", req, status, None)
                else:
                    w.check_same((rk, name), json.loads(data), req, status, "final state")


def run_fuzz(server, seed, requests, workers_n, tmpdir):
    run = Run(server, seed, tmpdir)
    register_crd(run)
    workers = [Worker(i, run) for i in range(workers_n)]
    for w in workers:
        w.setup()
    done = threading.Event()
    monitor = threading.Thread(target=run.watch_rss, args=(done,), daemon=True)
    monitor.start()
    quota = -(-requests // workers_n)
    t0 = time.monotonic()
    threads = [threading.Thread(target=w.loop, args=(quota,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.duration = time.monotonic() - t0
    done.set()
    monitor.join()
    run.rss_end = run.rss_kb()
    if server.proc.poll() is None:
        final_state_check(run, workers)
    run.workers = workers
    return run


def summary(run):
    lines = [
        f"seed={run.seed} (rerun with CORRAL_FUZZ_SEED={run.seed})",
        f"requests={run.total} in {run.duration:.1f}s ({run.total / max(run.duration, 1e-9):.0f}/s) with {len(run.workers)} workers",
        f"statuses={dict(sorted(run.statuses.items()))}",
        f"by op={dict(run.cats.most_common())}",
        f"slowest={run.slowest[0]:.2f}s ({run.slowest[1]})",
        f"server RSS max={run.rss_max} kB end={run.rss_end} kB",
        f"known findings (not failing here)={dict(run.findings.known)}",
        f"new findings={dict(run.findings.by_kind)}",
    ]
    return "\n".join(lines)


def dump_findings(run):
    path = os.path.join(tempfile.gettempdir(), f"corral-fuzz-findings-{run.seed}.json")
    with open(path, "w") as f:
        json.dump({"seed": run.seed, "findings": run.findings.items, "known": dict(run.findings.known)}, f, indent=1)
    return path


def short(f):
    return (f"[{f['kind']}] {f.get('method', '')} {f.get('path', '')[:160]} cat={f.get('cat')} "
            f"status={f.get('status')} body={f.get('body_preview', '')[:160]!r} -> {f.get('response', '')[:200]!r} {f.get('extra', '')[:300]}")


# The fuzzer's model owns every object it writes, so nothing else may write them: the API
# server alone, without controllers or scheduler (they have end-to-end tests of their own).
API_ONLY = ["--disable-controllers", "--disable-scheduler"]


@pytest.fixture(scope="module")
def fuzz_server():
    s = Server(extra_args=API_ONLY).start()
    yield s
    s.cleanup()


def test_fuzz_no_5xx_no_loss_server_survives(fuzz_server, tmp_path):
    server = fuzz_server
    rss_start = rss_kb(server)
    run = run_fuzz(server, SEED, REQUESTS, WORKERS, str(tmp_path))
    report = summary(run) + f"\nserver RSS at start={rss_start} kB"
    print("\n" + report)

    alive = server.proc.poll() is None
    problems = []
    if not alive:
        problems.append(f"server exited with {server.proc.returncode}:\n{server.logs()}")
    else:
        # Alive and answering, for a fresh client and for kubectl.
        t = Transport(server.port, run.ctx, run.anon_ctx)
        status, _, _ = t.send(Req("GET", "/readyz"))
        if status != 200:
            problems.append(f"/readyz {status} after the run")
        k = Kubectl(server)
        try:
            k.json("get", "namespace", run.workers[0].ns)
            # kubectl lists what was acknowledged. (A collection broken by the known
            # deep-unknown-field bug cannot be listed; take the next one.)
            for w in run.workers:
                p = k.run("get", "configmaps", "-n", w.ns, "-o", "json", check=False)
                if p.returncode != 0 and "recursion limit exceeded" in p.stderr:
                    continue
                if p.returncode != 0:
                    problems.append(f"kubectl get configmaps -n {w.ns}: {p.stderr}")
                    break
                have = {i["metadata"]["name"] for i in json.loads(p.stdout)["items"]}
                want = set(w.model.names("cm"))
                if not w.model.uncertain and have != want:
                    problems.append(f"kubectl get configmaps -n {w.ns}: {sorted(have)} != acknowledged {sorted(want)}")
                break
            else:
                problems.append("kubectl could list the configmaps of no namespace")
        finally:
            k.cleanup()
    if run.total < REQUESTS:
        problems.append(f"only {run.total} requests sent (want {REQUESTS})")
    # The generators really reached every verb and outcome (a broken generator fails loudly).
    if REQUESTS >= 10000:
        for cat in ["get", "list", "watch", "create", "update", "patch", "apply", "delete", "deletecollection",
                    "scale", "binding", "oversize", "yaml-bomb", "misc-path", "method", "anonymous"]:
            if run.cats[cat] == 0:
                problems.append(f"no {cat} requests were generated")
        for code in (200, 201, 400, 404, 409, 413, 415, 422):
            if run.statuses[code] == 0:
                problems.append(f"no request was answered {code}: the generators miss a whole class of input")
        acknowledged = sum(len(w.model.names(r.key)) for w in run.workers for r in NAMESPACED)
        if acknowledged < 100:
            problems.append(f"only {acknowledged} objects acknowledged at the end: the model checks checked little")
    if run.rss_max > RSS_LIMIT_KB:
        problems.append(f"server RSS reached {run.rss_max} kB")
    with open(server.log_path, "rb") as f:
        logs = f.read().decode(errors="replace")
    if "panicked" in logs:
        i = logs.index("panicked")
        problems.append("server log mentions a panic:\n" + logs[max(0, i - 1500):i + 1500])
    if run.findings.items or problems:
        path = dump_findings(run)
        seen = set()
        lines = []
        for f in run.findings.items:
            sig = (f["kind"], f.get("method"), f.get("cat"), f.get("status"))
            if sig not in seen:
                seen.add(sig)
                lines.append(short(f))
        pytest.fail(f"{report}\nfindings written to {path}\n" + "\n".join(lines[:60] + problems), pytrace=False)


class Replay:
    """What a known case's replay gets: requests on fresh connections, a namespace of its
    own, and the server's RSS."""

    def __init__(self, server, tmpdir):
        self.server = server
        self.ctx, _ = tls_contexts(server, tmpdir)
        self.ns = "known-" + uuid.uuid4().hex[:8]
        st = self.request("POST", "/api/v1/namespaces", json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}}))[0]
        assert st == 201, st
        # The fuzz CRD, when this runs without the fuzz test before it.
        st = self.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json.dumps(CRD))[0]
        assert st in (201, 409), st
        deadline = time.time() + 30
        while self.request("GET", f"/apis/{GROUP}/v1/namespaces/{self.ns}/widgets")[0] != 200:
            assert time.time() < deadline, "the fuzz CRD never became served"
            time.sleep(0.1)

    def connection(self):
        return http.client.HTTPSConnection("127.0.0.1", self.server.port, context=self.ctx, timeout=REQUEST_TIMEOUT)

    def request(self, method, path, body=None, ctype="application/json"):
        conn = self.connection()
        try:
            conn.request(method, path, body=body.encode() if isinstance(body, str) else body,
                         headers={"Content-Type": ctype, "Accept": "application/json"})
            r = conn.getresponse()
            return r.status, r.headers, r.read()
        finally:
            conn.close()

    def rss_kb(self):
        return rss_kb(self.server)

    def measured(self, method, path, body, ctype):
        """A request with its duration and the server's peak RSS growth while it ran."""
        base = self.rss_kb()
        peak = [base]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], self.rss_kb())
                done.wait(0.02)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        t0 = time.monotonic()
        try:
            st, _, data = self.request(method, path, body, ctype)
        finally:
            done.set()
            t.join()
        return st, time.monotonic() - t0, peak[0] - base, data


@pytest.fixture(scope="module")
def known_server():
    """A server for the replays: the fuzz run leaves collections broken by known bugs (a
    cluster-wide DELETE or list would trip over them)."""
    s = Server(extra_args=API_ONLY).start()
    yield s
    s.cleanup()


@pytest.mark.parametrize("case", KNOWN_5XX + KNOWN_DIVERGENCES, ids=lambda c: c["id"])
def test_known_bad_inputs(known_server, tmp_path, case):
    """Each input the fuzz run found to get a wrong answer, replayed: fails until the server
    answers it as a Kubernetes API server does."""
    r = Replay(known_server, str(tmp_path))
    err = case["replay"](r)
    assert known_server.proc.poll() is None, f"{case['id']}: the server died:\n{known_server.logs()}"
    assert err is None, f"{case['id']} ({case['what']}): {err}"
