#!/usr/bin/env python3
"""Builds the test images the end-to-end tests use, from Debian's busybox-static.

    python3 tests/images/build.py OUTDIR [--busybox /bin/busybox]

writes three OCI image layout tarballs into OUTDIR:

    busybox-test.tar    docker.io/library/busybox:test
    busybox-web-1.tar   docker.io/library/busybox-web:1
    busybox-web-2.tar   docker.io/library/busybox-web:2

busybox:test is one layer: /bin/busybox with a symlink in /bin for each of its applets,
/etc/passwd and /etc/group with root and nobody, /root and /tmp. The two busybox-web
images share that layer and add one small layer each with /www/index.html ("web v1" or
"web v2"); they run `httpd -f -p 8080 -h /www` and expose 8080/tcp.

The output is deterministic (fixed times and owners, sorted entries, gzip without a
timestamp), so the same busybox gives the same digests on every run. The base layer is
gzip-compressed and the web layers are not, so an import exercises both media types.
Python 3 standard library only. If /bin/busybox is missing and we are root, Debian's
busybox-static is installed with apt-get.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile

MTIME = 946684800  # 2000-01-01T00:00:00Z
CREATED = "2000-01-01T00:00:00Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def oci_arch():
    m = platform.machine().lower()
    return {
        "x86_64": "amd64",
        "amd64": "amd64",
        "aarch64": "arm64",
        "arm64": "arm64",
        "i386": "386",
        "i686": "386",
        "armv7l": "arm",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    }.get(m, m)


def ensure_busybox(path):
    if os.path.isfile(path):
        return
    if path != "/bin/busybox" or os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit(f"{path} not found: install Debian's busybox-static (as root: apt-get install -y busybox-static)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "busybox-static"]
    if subprocess.run(cmd, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(cmd, env=env, check=True)
    if not os.path.isfile(path):
        sys.exit(f"{path} still missing after installing busybox-static")


class Tar:
    """An in-memory tar with fixed owners and times; entries are added in sorted order."""

    def __init__(self):
        self.entries = []  # (name, TarInfo, bytes or None)

    def _info(self, name, kind, mode):
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.mode = mode
        ti.mtime = MTIME
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        return ti

    def dir(self, name, mode=0o755):
        self.entries.append((name, self._info(name, tarfile.DIRTYPE, mode), None))

    def file(self, name, data, mode=0o644):
        ti = self._info(name, tarfile.REGTYPE, mode)
        ti.size = len(data)
        self.entries.append((name, ti, data))

    def symlink(self, name, target):
        ti = self._info(name, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.entries.append((name, ti, None))

    def bytes(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
            for _, ti, data in sorted(self.entries, key=lambda e: e[0]):
                t.addfile(ti, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def applets(busybox):
    out = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout
    names = sorted({a.strip() for a in out.split() if a.strip()})
    return [a for a in names if a != "busybox" and "/" not in a]


def base_layer(busybox):
    t = Tar()
    t.dir("bin")
    with open(busybox, "rb") as f:
        t.file("bin/busybox", f.read(), 0o755)
    for a in applets(busybox):
        t.symlink(f"bin/{a}", "busybox")
    t.dir("etc")
    t.file("etc/passwd", PASSWD.encode())
    t.file("etc/group", GROUP.encode())
    t.dir("root", 0o700)
    t.dir("tmp", 0o1777)
    return t.bytes()


def web_layer(version):
    t = Tar()
    t.dir("www")
    t.file("www/index.html", f"web {version}\n".encode())
    return t.bytes()


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def image_layout(name, tag, layers, runtime_config, history):
    """layers: list of (uncompressed tar, compress?). Returns the OCI layout as tar bytes."""
    blobs = {}
    layer_descs = []
    diff_ids = []
    for tar_bytes, compress in layers:
        diff_ids.append(digest(tar_bytes))
        blob = gzip.compress(tar_bytes, compresslevel=9, mtime=0) if compress else tar_bytes
        d = digest(blob)
        blobs[d] = blob
        layer_descs.append({"mediaType": OCI_LAYER_GZIP if compress else OCI_LAYER_TAR, "digest": d, "size": len(blob)})
    arch = oci_arch()
    config = canonical({
        "architecture": arch,
        "os": "linux",
        "created": CREATED,
        "config": runtime_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": h} for h in history],
    })
    blobs[digest(config)] = config
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest(config), "size": len(config)},
        "layers": layer_descs,
    })
    md = digest(manifest)
    blobs[md] = manifest
    index = canonical({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": md,
            "size": len(manifest),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {
                # containerd's full name, and the OCI tag (as `ctr export` writes them).
                "io.containerd.image.name": f"docker.io/library/{name}:{tag}",
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    })
    t = Tar()
    t.file("oci-layout", canonical({"imageLayoutVersion": "1.0.0"}))
    t.file("index.json", index)
    t.dir("blobs")
    t.dir("blobs/sha256")
    for d, blob in blobs.items():
        t.file("blobs/sha256/" + d.split(":", 1)[1], blob)
    return t.bytes(), md


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--busybox", default="/bin/busybox")
    args = ap.parse_args()
    ensure_busybox(args.busybox)
    os.makedirs(args.outdir, exist_ok=True)

    base = base_layer(args.busybox)
    shell = {"Env": [PATH_ENV], "Cmd": ["sh"]}
    web = {
        "Env": [PATH_ENV],
        "Cmd": ["httpd", "-f", "-p", "8080", "-h", "/www"],
        "ExposedPorts": {"8080/tcp": {}},
        "WorkingDir": "/www",
    }
    images = [
        ("busybox-test.tar", "busybox", "test", [(base, True)], shell, ["busybox-static"]),
        ("busybox-web-1.tar", "busybox-web", "1", [(base, True), (web_layer("v1"), False)], web,
         ["busybox-static", "www/index.html: web v1"]),
        ("busybox-web-2.tar", "busybox-web", "2", [(base, True), (web_layer("v2"), False)], web,
         ["busybox-static", "www/index.html: web v2"]),
    ]
    for filename, name, tag, layers, runtime, history in images:
        data, md = image_layout(name, tag, layers, runtime, history)
        path = os.path.join(args.outdir, filename)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        print(f"{path}\t{name}:{tag}\t{md}")


if __name__ == "__main__":
    main()
