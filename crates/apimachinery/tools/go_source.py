"""Reading Go API types out of bare git mirrors of the Kubernetes repositories: the
parser the generators in this folder (gen_patch_meta.py, gen_proto_meta.py) share. It
understands just enough Go (type declarations, struct fields with tags, imports) for
k8s.io/api and k8s.io/apimachinery."""

import re
import subprocess

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
        self.group = None      # GroupName from register.go

    def add_file(self, src):
        src = strip_comments(src)
        imports = parse_imports(src)
        m = re.search(r"\bGroupName\s*=\s*\"([^\"]*)\"", src)
        if m:
            self.group = m.group(1)
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
