"""Watch semantics over raw HTTPS: from a resourceVersion, on one object, with label
selectors (objects entering and leaving the selection), bookmarks and timeouts; no event
lost, duplicated or reordered."""

import http.client
import json
import threading
import time

import pytest

from test_bad_input import Raw


@pytest.fixture(scope="module")
def raw(server):
    return Raw(server)


def cm(name, labels=None, data=None):
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": labels or {}}, "data": data or {}}


def stream(raw, path, until=None, timeout=10):
    """Read watch events until the server closes the stream or `until(events)` is true."""
    conn = http.client.HTTPSConnection("127.0.0.1", raw.port, context=raw.ctx, timeout=timeout)
    conn.request("GET", path, headers={"Accept": "application/json"})
    r = conn.getresponse()
    assert r.status == 200, r.read()
    events = []
    buf = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        chunk = r.read1(65536) if hasattr(r, "read1") else r.read(1)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                events.append(json.loads(line))
        if until and until(events):
            break
    conn.close()
    return events


def test_watch_from_resource_version_sees_every_change_in_order(raw, ns):
    base = f"/api/v1/namespaces/{ns}/configmaps"
    code, body, _ = raw.request("POST", base, body=cm("a"))
    rv0 = body["metadata"]["resourceVersion"]
    written = []
    for i in range(20):
        code, body, _ = raw.request("PATCH", f"{base}/a", body=json.dumps({"data": {"i": str(i)}}),
                                    ctype="application/merge-patch+json")
        assert code == 200
        written.append(body["metadata"]["resourceVersion"])
    raw.request("DELETE", f"{base}/a")
    # Only `a`: the namespace's kube-root-ca.crt may be published at any moment.
    events = stream(raw, f"{base}?watch=true&fieldSelector=metadata.name%3Da&resourceVersion={rv0}&timeoutSeconds=3",
                    until=lambda evs: any(e["type"] == "DELETED" for e in evs))
    types = [e["type"] for e in events]
    assert types == ["MODIFIED"] * 20 + ["DELETED"]
    rvs = [e["object"]["metadata"]["resourceVersion"] for e in events]
    assert rvs[:20] == written
    assert [int(r) for r in rvs] == sorted(int(r) for r in rvs)
    assert [e["object"]["data"]["i"] for e in events[:20]] == [str(i) for i in range(20)]


def test_watch_without_resource_version_starts_with_current_state(raw, ns):
    base = f"/api/v1/namespaces/{ns}/configmaps"
    for n in ["x", "y"]:
        raw.request("POST", base, body=cm(n))
    events = stream(raw, f"{base}?watch=true&timeoutSeconds=1")
    got = [(e["type"], e["object"]["metadata"]["name"]) for e in events]
    assert [g for g in got if g[1] != "kube-root-ca.crt"] == [("ADDED", "x"), ("ADDED", "y")]


def test_label_selector_transitions(raw, ns):
    base = f"/api/v1/namespaces/{ns}/configmaps"
    code, body, _ = raw.request("POST", base, body=cm("s", labels={"tier": "a"}))
    rv = body["metadata"]["resourceVersion"]
    raw.request("PATCH", f"{base}/s", body='{"metadata":{"labels":{"tier":"b"}}}', ctype="application/merge-patch+json")
    raw.request("PATCH", f"{base}/s", body='{"metadata":{"labels":{"tier":"a"}}}', ctype="application/merge-patch+json")
    raw.request("PATCH", f"{base}/s", body='{"data":{"k":"v"}}', ctype="application/merge-patch+json")
    raw.request("DELETE", f"{base}/s")
    events = stream(raw, f"{base}?watch=true&labelSelector=tier%3Da&resourceVersion={rv}&timeoutSeconds=2")
    # Leaving the selection is a DELETED, entering it again an ADDED, as upstream.
    assert [e["type"] for e in events] == ["DELETED", "ADDED", "MODIFIED", "DELETED"]


def test_single_object_watch_and_bookmarks(raw, ns):
    base = f"/api/v1/namespaces/{ns}/configmaps"
    raw.request("POST", base, body=cm("one"))
    code, body, _ = raw.request("POST", base, body=cm("other"))
    rv = body["metadata"]["resourceVersion"]

    def writer():
        time.sleep(0.3)
        raw.request("PATCH", f"{base}/other", body='{"data":{"a":"1"}}', ctype="application/merge-patch+json")
        raw.request("PATCH", f"{base}/one", body='{"data":{"a":"1"}}', ctype="application/merge-patch+json")

    t = threading.Thread(target=writer)
    t.start()
    events = stream(raw, f"{base}?watch=true&fieldSelector=metadata.name%3Done&allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds=3")
    t.join()
    real = [e for e in events if e["type"] != "BOOKMARK"]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in real] == [("MODIFIED", "one")]
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks, "an idle watch with allowWatchBookmarks gets bookmarks"
    assert bookmarks[-1]["object"]["kind"] == "ConfigMap"
    assert int(bookmarks[-1]["object"]["metadata"]["resourceVersion"]) >= int(rv)


def test_timeout_closes_stream(raw, ns):
    start = time.time()
    stream(raw, f"/api/v1/namespaces/{ns}/configmaps?watch=true&timeoutSeconds=1", timeout=10)
    assert time.time() - start < 5


def test_table_watch_events_carry_rows(raw, ns):
    base = f"/api/v1/namespaces/{ns}/configmaps"
    raw.request("POST", base, body=cm("tbl", data={"a": "1"}))
    conn = http.client.HTTPSConnection("127.0.0.1", raw.port, context=raw.ctx, timeout=10)
    conn.request("GET", f"{base}?watch=true&timeoutSeconds=1&fieldSelector=metadata.name%3Dtbl",
                 headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"})
    lines = [l for l in conn.getresponse().read().splitlines() if l.strip()]
    ev = json.loads(lines[0])
    assert ev["object"]["kind"] == "Table"
    assert ev["object"]["rows"][0]["cells"][:2] == ["tbl", 1]
