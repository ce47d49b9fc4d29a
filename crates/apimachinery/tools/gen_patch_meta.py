#!/usr/bin/env python3
"""Generate crates/apimachinery/data/patch_meta.json from the Go API types of Kubernetes.

The strategic-merge-patch metadata of the built-in kinds lives in struct tags of the Go
types (`patchStrategy:"merge" patchMergeKey:"name"`). This script reads those types straight
out of bare git mirrors of kubernetes/api, kubernetes/apimachinery and (optionally)
kubernetes/apiextensions-apiserver at one tag, and writes a compact JSON table:

    {
      "source": {...},                       # where the data came from
      "kinds": ["io.k8s.api.apps.v1.Deployment", ...],
      "types": {
        "io.k8s.api.core.v1.PodSpec": {
          "containers": {"type": "io.k8s.api.core.v1.Container", "list": true,
                         "strategy": "merge", "key": "name"},
          ...
        }
      }
    }

Only fields that lead to struct types or carry a patch strategy get entries, and only types
reachable from the kinds are kept. Types with a custom MarshalJSON (Time, Quantity,
IntOrString, RawExtension, JSON...) are opaque scalars for patching and get no entries.

It only READS the sources (via `git show`); it is never run at build time. Usage:

    python3 tools/gen_patch_meta.py \
        --api-git /path/kubernetes+api/repo \
        --apimachinery-git /path/kubernetes+apimachinery/repo \
        [--apiextensions-git /path/kubernetes+apiextensions-apiserver/repo] \
        --tag v0.33.13 --out data/patch_meta.json
"""

import argparse
import json
import re
import subprocess
import sys

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from go_source import Package, brace_body, git, load_package, matching_bracket, parse_fields, strip_comments  # noqa: F401

# Go package directories corral serves, per repository key. Kinds are taken from these.
API_GROUPS = [
    "core/v1", "apps/v1", "batch/v1", "networking/v1", "discovery/v1",
    "autoscaling/v1", "autoscaling/v2", "coordination/v1", "events/v1",
    "rbac/v1", "policy/v1",
]
META_DIR = "pkg/apis/meta/v1"
APIEXT_DIR = "pkg/apis/apiextensions/v1"

GO_BUILTINS = {
    "string", "bool", "byte", "rune", "int", "int8", "int16", "int32", "int64",
    "uint", "uint8", "uint16", "uint32", "uint64", "float32", "float64", "uintptr",
    "interface{}", "any", "error",
}


class Universe:
    def __init__(self):
        self.packages = {}  # import path -> Package

    def resolve(self, pkg, type_expr, imports, depth=0):
        """Classify a Go type expression: returns (shape, struct_name) where shape is one of
        'scalar', 'struct', 'list', 'map', and struct_name is the OpenAPI name of the struct
        (for 'struct') or of the element/value struct (for 'list'/'map'), else None."""
        t = type_expr.strip()
        while t.startswith("*"):
            t = t[1:].strip()
        if t == "[]byte":
            return ("scalar", None)
        if t.startswith("[]"):
            inner = self.resolve(pkg, t[2:], imports, depth + 1)
            return ("list", inner[1] if inner[0] == "struct" else None)
        if t.startswith("map["):
            close = matching_bracket(t, 3)
            inner = self.resolve(pkg, t[close + 1:], imports, depth + 1)
            return ("map", inner[1] if inner[0] == "struct" else None)
        if t in GO_BUILTINS:
            return ("scalar", None)
        if "." in t:
            alias, name = t.split(".", 1)
            target = self.packages.get(imports.get(alias, ""))
        else:
            name, target = t, pkg
        if target is None:
            return ("scalar", None)  # a package we do not model (time, resource, intstr...)
        if name in target.opaque:
            return ("scalar", None)
        if name in target.structs:
            return ("struct", target.prefix + name)
        if name in target.aliases:
            under, under_imports = target.aliases[name]
            shape = self.resolve(target, under, under_imports, depth + 1)
            return shape
        return ("scalar", None)

    def struct_fields(self, pkg, name):
        """Flattened JSON fields of a struct: list of (json name, type expr, tag, pkg, imports)."""
        raw, imports = pkg.structs[name]
        out = []
        for names, typ, tag in raw:
            json_tag = tag.get("json")
            json_name = json_tag.split(",")[0] if json_tag is not None else None
            if json_name == "-":
                continue
            if not names:
                # Embedded: encoding/json flattens it unless the json tag names it.
                if not json_name:
                    base = typ.lstrip("*")
                    if "." in base:
                        alias, emb = base.split(".", 1)
                        epkg = self.packages.get(imports.get(alias, ""))
                    else:
                        emb, epkg = base, pkg
                    if epkg is not None and emb in epkg.structs and emb not in epkg.opaque:
                        out.extend(self.struct_fields(epkg, emb))
                    continue
                names = [typ.lstrip("*").split(".")[-1]]
            for n in names:
                if not n[0].isupper():
                    continue
                out.append((json_name or n, typ, tag, pkg, imports))
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api-git", required=True)
    ap.add_argument("--apimachinery-git", required=True)
    ap.add_argument("--apiextensions-git")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    u = Universe()
    meta = load_package(u, args.apimachinery_git, args.tag, META_DIR,
                        "k8s.io/apimachinery/pkg/apis/meta/v1",
                        "io.k8s.apimachinery.pkg.apis.meta.v1.")
    served = []
    for g in API_GROUPS:
        group, version = g.split("/")
        served.append(load_package(u, args.api_git, args.tag, g, "k8s.io/api/" + g,
                                   "io.k8s.api.%s.%s." % (group, version)))
    sources = {
        "kubernetes/api": {"tag": args.tag, "commit": git(args.api_git, "rev-parse", args.tag + "^{commit}").strip(),
                           "paths": [g + "/*.go" for g in API_GROUPS]},
        "kubernetes/apimachinery": {"tag": args.tag,
                                    "commit": git(args.apimachinery_git, "rev-parse", args.tag + "^{commit}").strip(),
                                    "paths": [META_DIR + "/*.go"]},
    }
    if args.apiextensions_git:
        served.append(load_package(u, args.apiextensions_git, args.tag, APIEXT_DIR,
                                   "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1",
                                   "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1."))
        sources["kubernetes/apiextensions-apiserver"] = {
            "tag": args.tag,
            "commit": git(args.apiextensions_git, "rev-parse", args.tag + "^{commit}").strip(),
            "paths": [APIEXT_DIR + "/*.go"]}

    # Kinds: structs embedding metav1.TypeMeta inline (list kinds are never patched).
    kinds = []
    for pkg in served:
        for name, (raw, imports) in sorted(pkg.structs.items()):
            embeds_typemeta = any(not names and typ.endswith("TypeMeta") for names, typ, _ in raw)
            has_items = any("Items" in names for names, _, _ in raw)
            if embeds_typemeta and not (name.endswith("List") and has_items):
                kinds.append(pkg.prefix + name)

    by_name = {}
    for pkg in u.packages.values():
        for name in pkg.structs:
            by_name[pkg.prefix + name] = (pkg, name)

    types = {}
    queue = list(kinds)
    seen = set(queue)
    while queue:
        tname = queue.pop()
        pkg, name = by_name[tname]
        entries = {}
        for json_name, typ, tag, fpkg, imports in u.struct_fields(pkg, name):
            shape, struct_name = u.resolve(fpkg, typ, imports)
            entry = {}
            if struct_name:
                entry["type"] = struct_name
                if struct_name not in seen:
                    seen.add(struct_name)
                    queue.append(struct_name)
            if shape == "list":
                entry["list"] = True
            elif shape == "map":
                entry["map"] = True
            if tag.get("patchStrategy"):
                entry["strategy"] = tag["patchStrategy"]
            if tag.get("patchMergeKey"):
                entry["key"] = tag["patchMergeKey"]
            if struct_name or "strategy" in entry:
                entries[json_name] = entry
        types[tname] = entries

    # Drop entry-less types that are not kinds: the lookup treats unknown types the same way.
    kind_set = set(kinds)
    types = {k: v for k, v in sorted(types.items()) if v or k in kind_set}
    doc = {"source": sources, "kinds": sorted(kinds), "types": types}
    with open(args.out, "w") as f:
        # One type per line keeps the file compact yet diffable.
        f.write("{\n")
        f.write('"source": %s,\n' % json.dumps(sources, sort_keys=True, separators=(",", ":")))
        f.write('"kinds": %s,\n' % json.dumps(sorted(kinds), separators=(",", ":")))
        f.write('"types": {\n')
        items = list(types.items())
        for i, (k, v) in enumerate(items):
            sep = "," if i + 1 < len(items) else ""
            f.write("%s: %s%s\n" % (json.dumps(k), json.dumps(v, separators=(",", ":")), sep))
        f.write("}\n}\n")
    print("wrote %d kinds, %d types to %s" % (len(kinds), len(types), args.out), file=sys.stderr)


if __name__ == "__main__":
    main()
