"""Throwaway HTTP listener that records request bodies from kubectl (see README.md).

Logs every request to OUT/log.txt, saves each body as OUT/req<N>.bin, answers the discovery
GETs kubectl needs with minimal documents and everything else with a 500 Status.
Usage: python3 capture.py PORT OUT
"""
import json
import os
import socket
import sys
import threading

PORT, OUT = int(sys.argv[1]), sys.argv[2]
GROUPS = ["apps/v1", "batch/v1", "networking.k8s.io/v1", "policy/v1",
          "rbac.authorization.k8s.io/v1", "scheduling.k8s.io/v1"]
RESOURCES = {
    "/api/v1": [("pods", "Pod"), ("configmaps", "ConfigMap")],
    "/apis/apps/v1": [("deployments", "Deployment")],
}
counter = [0]
lock = threading.Lock()


def discovery(path):
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"]}
    if path == "/apis":
        gvs = [{"groupVersion": gv, "version": gv.split("/")[1]} for gv in GROUPS]
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [{"name": gv["groupVersion"].split("/")[0], "versions": [gv],
                            "preferredVersion": gv} for gv in gvs]}
    if path == "/api/v1" or (path.startswith("/apis/") and path.count("/") == 3):
        resources = [{"name": n, "singularName": n[:-1], "namespaced": True, "kind": k,
                      "verbs": ["get", "list", "create"]} for n, k in RESOURCES.get(path, [])]
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": path[len("/apis/"):] if path.startswith("/apis/") else "v1",
                "resources": resources}
    return None


def handle(conn):
    f = conn.makefile("rb")
    method, path = f.readline().decode().split()[:2]
    headers = {}
    while True:
        line = f.readline().decode()
        if line in ("\r\n", "\n", ""):
            break
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers.get("content-length", "0")))
    with lock:
        counter[0] += 1
        n = counter[0]
        with open(os.path.join(OUT, "log.txt"), "a") as log:
            log.write("%d %s %s ct=%s len=%d\n" % (n, method, path, headers.get("content-type"), len(body)))
        if body:
            with open(os.path.join(OUT, "req%d.bin" % n), "wb") as out:
                out.write(body)
    doc = discovery(path.split("?")[0]) if method == "GET" else None
    if doc is None:
        status, payload = "500 Internal Server Error", {"kind": "Status", "apiVersion": "v1",
                                                        "status": "Failure", "message": "capture", "code": 500}
    else:
        status, payload = "200 OK", doc
    data = json.dumps(payload).encode()
    conn.sendall(("HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                  "Connection: close\r\n\r\n" % (status, len(data))).encode() + data)
    conn.close()


def main():
    os.makedirs(OUT, exist_ok=True)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", PORT))
    s.listen(16)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
