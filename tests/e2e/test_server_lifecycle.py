"""Starting, stopping and restarting `corral server`: first start creates the PKI and the
kubeconfig, later starts reuse them and keep every object, a locked data dir is refused,
SIGTERM is a clean exit and kill -9 loses nothing acknowledged."""

import os
import signal
import time
import urllib.request
import subprocess

from conftest import Kubectl, Server, corral_binary


def test_first_start_creates_pki_and_restart_keeps_state():
    s = Server().start()
    try:
        for f in ["kubeconfig.yaml", "pki/ca.crt", "pki/server.crt", "pki/admin.crt", "pki/admin.key"]:
            assert os.path.exists(os.path.join(s.data_dir, f)), f
        assert "kubeconfig" in s.logs()
        k = Kubectl(s)
        k("create", "configmap", "keep", "--from-literal=a=1")
        ca_before = open(os.path.join(s.data_dir, "pki/ca.crt")).read()
        # SIGTERM stops everything promptly: a controller queue left open once made every
        # stop wait out a 5 s timeout.
        t0 = time.time()
        assert s.stop() == 0, s.logs()
        assert time.time() - t0 < 4, f"shutdown took {time.time() - t0:.1f} s"

        s.start()
        assert open(os.path.join(s.data_dir, "pki/ca.crt")).read() == ca_before
        assert k.json("get", "cm", "keep")["data"] == {"a": "1"}

        # kill -9: every acknowledged write survives.
        for i in range(20):
            k("create", "configmap", f"k{i}")
        s.stop(sig=signal.SIGKILL)
        s.start()
        names = k("get", "cm", "-o", "name").split()
        for i in range(20):
            assert f"configmap/k{i}" in names
        k.cleanup()
    finally:
        s.cleanup()


def test_second_server_on_same_dir_is_refused():
    s = Server().start()
    try:
        p = subprocess.run(
            [corral_binary(), "server", "--data-dir", s.data_dir, "--https-port", "0"],
            capture_output=True, text=True, timeout=30,
        )
        assert p.returncode != 0
        assert "in use by another corral server" in p.stderr
        # The first server is unharmed.
        k = Kubectl(s)
        k("get", "ns")
        k.cleanup()
    finally:
        s.cleanup()


def test_datastore_endpoint_without_etcd_support_is_clear():
    s = Server(extra_args=["--datastore-endpoint", "http://127.0.0.1:1"])
    s.start(wait=False)
    code = s.proc.wait(timeout=30)
    assert code != 0
    out = open(s.log_path, errors="replace").read()
    assert "--datastore-endpoint" in out and "etcd" in out
    s.cleanup()


def test_join_tokens_authenticate_until_deleted_and_cacerts_matches(server, kubectl):
    """`corral token create` makes a bootstrap token Secret; its bearer part authenticates
    (kubectl --token); the hash in the printed token is the sha256 of /cacerts; deleting
    the Secret revokes it."""
    import hashlib
    import ssl as _ssl
    import subprocess as sp

    from conftest import corral_binary

    out = sp.run([corral_binary(), "token", "create", "--data-dir", server.data_dir, "--ttl", "1h"],
                 capture_output=True, text=True, check=True).stdout.strip()
    assert out.startswith("K10") and "::" in out
    ca_hash, bearer = out[3:].split("::")
    ctx = _ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = _ssl.CERT_NONE
    with urllib.request.urlopen(server.url + "/cacerts", context=ctx) as r:
        assert hashlib.sha256(r.read()).hexdigest() == ca_hash
    args = ["--kubeconfig", "/dev/null", "--server", server.url, "--insecure-skip-tls-verify", "--token"]
    ok = sp.run(["kubectl", *args, bearer, "get", "ns", "default", "-o", "name"], capture_output=True, text=True)
    assert ok.returncode == 0 and "namespace/default" in ok.stdout, ok.stderr
    bad = sp.run(["kubectl", *args, bearer[:-1] + "x", "get", "ns"], capture_output=True, text=True)
    assert bad.returncode != 0 and "Unauthorized" in bad.stderr
    kubectl("delete", "secret", "-n", "kube-system", "bootstrap-token-" + bearer.split(".")[0])
    deadline = time.time() + 10
    while time.time() < deadline:
        r = sp.run(["kubectl", *args, bearer, "get", "ns"], capture_output=True, text=True)
        if r.returncode != 0:
            break
        time.sleep(0.2)
    assert "Unauthorized" in r.stderr
