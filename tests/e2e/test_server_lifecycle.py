"""Starting, stopping and restarting `corral server`: first start creates the PKI and the
kubeconfig, later starts reuse them and keep every object, a locked data dir is refused,
SIGTERM is a clean exit and kill -9 loses nothing acknowledged."""

import os
import signal
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
        assert s.stop() == 0, s.logs()

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
