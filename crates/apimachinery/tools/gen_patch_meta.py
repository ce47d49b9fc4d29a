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


def git(git_dir, *args):
    return subprocess.run(["git", "--git-dir=" + git_dir, *args], check=True,
                          capture_output=True, text=True).stdout


def strip_comments(src):
    """Remove // and /* */ comments while leaving string and raw-string literals intact."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if c == "/" and i + 1 < n and src[i + 1] == "/":
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif c == "/" and i + 1 < n and src[i + 1] == "*":
            j = src.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c in "\"'`":
            j = i + 1
            while j < n and src[j] != c:
                if src[j] == "\\" and c != "`":
                    j += 1
                j += 1
            out.append(src[i:j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


class Package:
    """The type declarations of one Go package (all its non-test, non-generated files)."""

    def __init__(self, import_path, openapi_prefix):
        self.import_path = import_path
        self.prefix = openapi_prefix
        self.structs = {}      # name -> list of (names, type_expr, tag, imports)
        self.aliases = {}      # name -> (type_expr, imports) for non-struct named types
        self.opaque = set()    # types with a custom MarshalJSON

    def add_file(self, src):
        src = strip_comments(src)
        imports = parse_imports(src)
        for m in re.finditer(r"func\s*\(\s*\w*\s*\*?\s*(\w+)\s*\)\s*MarshalJSON\s*\(", src):
            self.opaque.add(m.group(1))
        for m in re.finditer(r"^type\s+(\w+)\s+(.*)$", src, re.M):
            name, rest = m.group(1), m.group(2).strip()
            if rest.startswith("struct"):
                body = brace_body(src, m.start(2) + src[m.start(2):].index("{"))
                self.structs[name] = (parse_fields(body), imports)
            else:
                # `type A = B` (a Go alias) resolves like `type A B`.
                self.aliases[name] = (rest.lstrip("= ").strip(), imports)


def parse_imports(src):
    """alias -> import path for one file."""
    imports = {}
    specs = []
    for m in re.finditer(r"^import\s*\((.*?)\)", src, re.M | re.S):
        specs.extend(m.group(1).strip().splitlines())
    for m in re.finditer(r"^import\s+(\w+\s+)?(\"[^\"]+\")", src, re.M):
        specs.append((m.group(1) or "") + m.group(2))
    for spec in specs:
        m = re.match(r"\s*(\w+|_|\.)?\s*\"([^\"]+)\"", spec)
        if not m:
            continue
        path = m.group(2)
        alias = m.group(1) or path.rsplit("/", 1)[-1]
        imports[alias] = path
    return imports


def brace_body(src, open_idx):
    depth = 0
    for j in range(open_idx, len(src)):
        if src[j] == "{":
            depth += 1
        elif src[j] == "}":
            depth -= 1
            if depth == 0:
                return src[open_idx + 1:j]
    raise ValueError("unbalanced braces")


def parse_fields(body):
    """Struct body -> list of (field names or [] when embedded, type expression, tag dict)."""
    fields = []
    for line in body.splitlines():
        line = line.strip()
        if not line:
            continue
        tag = {}
        m = re.search(r"`([^`]*)`\s*$", line)
        if m:
            tag = dict(re.findall(r'(\w+):"([^"]*)"', m.group(1)))
            line = line[:m.start()].strip()
        if re.search(r"\bstruct\s*\{", line):
            raise ValueError("anonymous struct fields are not supported: " + line)
        if re.match(r"^\*?[\w.]+$", line):
            fields.append(([], line, tag))  # embedded field
        else:
            names, typ = parse_names(line)
            fields.append((names, typ, tag))
    return fields


def parse_names(line):
    m = re.match(r"^(\w+(?:\s*,\s*\w+)*)\s+(.+)$", line)
    names = [n.strip() for n in m.group(1).split(",")]
    return names, m.group(2).strip()


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


def matching_bracket(t, open_idx):
    depth = 0
    for j in range(open_idx, len(t)):
        if t[j] == "[":
            depth += 1
        elif t[j] == "]":
            depth -= 1
            if depth == 0:
                return j
    raise ValueError("unbalanced brackets in " + t)


def load_package(universe, git_dir, tag, directory, import_path, prefix):
    pkg = Package(import_path, prefix)
    names = git(git_dir, "ls-tree", "--name-only", tag, directory + "/").split()
    for path in names:
        base = path.rsplit("/", 1)[-1]
        if (not base.endswith(".go") or base.endswith("_test.go") or base.startswith("zz_generated")
                or base.startswith("generated.") or "swagger_doc" in base):
            continue
        pkg.add_file(git(git_dir, "show", tag + ":" + path))
    universe.packages[import_path] = pkg
    return pkg


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
