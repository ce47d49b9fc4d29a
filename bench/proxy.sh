#!/usr/bin/env bash
# Node proxy: corral's Service proxy (L7 and L4) against HAProxy, same backends, same
# machine, same run.
#
#   bash bench/proxy.sh
#
# Two nginx backends (one worker each, keep-alive, no access log, a 128-byte static body)
# on 127.0.0.2 and 127.0.0.3; a corral server (API + node agent + proxy in one process) on a
# service range, bridge and pod range of its own, with selector-less Services whose
# EndpointSlices list the two backends; HAProxy with the same two backends, round robin, in
# http mode and in tcp mode. wrk drives each path: the backend directly, HAProxy L7/L4,
# corral L7/L4. Then the time from a VirtualService change to traffic following it. A
# second server with the same objects and --disable-proxy idles beside the first, so the
# proxy's share of the process's RSS can be told apart.
# `bench/proxybench.py` measures and prints JSON lines and a Markdown summary with
# corral/HAProxy ratios. See bench/README.md.
#
# Knobs (environment): DURATION=10 (seconds per wrk run) CONNS=50 (connections of the
# throughput runs) ROUNDS=3 (paced and max runs per path, alternating, median kept)
# MID_CONNS=4 (the fixed-concurrency run CPU is also taken at) FLIPS=10 (VirtualService
# changes) HAPROXY_THREADS (default: nproc) CARGO_TARGET_DIR RESULTS=FILE (append the JSON)
# CORRAL_BIN=FILE (use that binary instead of building) SERVER_LOG=FILE (keep the server log).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

log() { echo "[proxy-bench $(date +%H:%M:%S)] $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "skipped: needs root (cluster IPs on lo, the node agent's bridge)"
    exit 0
fi
for c in kubectl python3 ip; do
    command -v "$c" >/dev/null || { log "needs $c"; exit 1; }
done

missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (Debian packages)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

TMP=$(mktemp -d /tmp/corral-proxy-bench.XXXXXX)
# What cleanup must undo, filled in as things are made.
CORRAL_PIDS=() BRIDGES=() CGROUPS=() SVC_PREFIX=""
OTHER_PIDS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "${SERVER_LOG:-}" ] && cp "$TMP/server.log" "$SERVER_LOG" 2>/dev/null || true
    if [ "$rc" != 0 ]; then
        log "failed (exit $rc); last server log lines:"
        tail -n 20 "$TMP/server.log" >&2 2>/dev/null || true
        for f in "$TMP"/nginx-*/error.log "$TMP"/nginx-*/out.log "$TMP/haproxy.log"; do
            [ -s "$f" ] && { log "$f:"; tail -n 5 "$f" >&2; }
        done
    fi
    # The server removes the cluster IPs it put on lo when it stops on SIGTERM.
    for p in "${CORRAL_PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${CORRAL_PIDS[@]}"; do
        for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    for p in "${OTHER_PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${OTHER_PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    local left=()
    # Whatever a server that died uncleanly left of its service range on lo.
    if [ -n "$SVC_PREFIX" ]; then
        for a in $(ip -4 -o addr show dev lo | awk '{print $4}' | grep "^${SVC_PREFIX//./\\.}" || true); do
            ip addr del "$a" dev lo 2>/dev/null || left+=("lo address $a")
        done
    fi
    for b in "${BRIDGES[@]}"; do
        [ -e "/sys/class/net/$b" ] && { ip link del "$b" 2>/dev/null || left+=("bridge $b"); }
    done
    for c in "${CGROUPS[@]}"; do
        for d in /sys/fs/cgroup/"$c" /sys/fs/cgroup/*/"$c"; do
            [ -d "$d" ] && { rmdir "$d" 2>/dev/null || left+=("cgroup $d"); }
        done
    done
    if [ ${#left[@]} -gt 0 ]; then
        log "cleanup left: ${left[*]}; temp dir kept: $TMP"
        exit 1
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${CORRAL_BIN:-}" ]; then
    log "using $CORRAL_BIN (not building)"
else
    log "building corral (release, target dir $TARGET)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release -q -p corral --bin corral)
fi
# A private copy, so a concurrent rebuild cannot swap the binary mid-run.
cp "${CORRAL_BIN:-$TARGET/release/corral}" "$TMP/corral"

# wrk, HAProxy and the proxy each hold a descriptor per connection.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# A port free on all of the given loopback addresses.
free_port() {
    python3 - "$@" <<'EOF'
import socket, sys
for _ in range(100):
    with socket.socket() as s:
        s.bind((sys.argv[1], 0))
        port = s.getsockname()[1]
    try:
        for a in sys.argv[1:]:
            with socket.socket() as t:
                t.bind((a, port))
        print(port)
        break
    except OSError:
        pass
else:
    sys.exit("no free port")
EOF
}

# ---------------------------------------------------------------- backends: two nginx
BACKEND_PORT=$(free_port 127.0.0.2 127.0.0.3)
for b in a b; do
    ip=127.0.0.2
    [ $b = b ] && ip=127.0.0.3
    d=$TMP/nginx-$b
    mkdir -p "$d/www" "$d/tmp"
    # 128 bytes, the first one names the backend (the VirtualService test tells them apart).
    python3 -c "import sys; sys.stdout.write('$b' * 127 + '\n')" >"$d/www/index.html"
    cat >"$d/nginx.conf" <<EOF
daemon off;
user root;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    default_type text/plain;
    server {
        listen $ip:$BACKEND_PORT;
        root $d/www;
        location / { index index.html; }
    }
}
EOF
    nginx -e "$d/error.log" -p "$d" -c "$d/nginx.conf" >"$d/out.log" 2>&1 &
    OTHER_PIDS+=($!)
done

# ---------------------------------------------------------------- HAProxy
HAPROXY_THREADS=${HAPROXY_THREADS:-$(nproc)}
HA_L7=$(free_port 127.0.0.1)
HA_L4=$(free_port 127.0.0.1)
while [ "$HA_L4" = "$HA_L7" ]; do HA_L4=$(free_port 127.0.0.1); done
cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread $HAPROXY_THREADS
    maxconn 4096
defaults
    timeout connect 3s
    timeout client 120s
    timeout server 120s
listen l7
    mode http
    bind 127.0.0.1:$HA_L7
    balance roundrobin
    server a 127.0.0.2:$BACKEND_PORT
    server b 127.0.0.3:$BACKEND_PORT
listen l4
    mode tcp
    bind 127.0.0.1:$HA_L4
    balance roundrobin
    server a 127.0.0.2:$BACKEND_PORT
    server b 127.0.0.3:$BACKEND_PORT
EOF
haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
HAPROXY_PID=$!
OTHER_PIDS+=("$HAPROXY_PID")

# ---------------------------------------------------------------- corral
# A service range, bridge and pod range no other server on this host uses.
used=$(ip -4 -o addr show dev lo)
SVC_CIDR=""
for n in 250 $(seq 200 249 | shuf); do
    if ! grep -q " 10\.99\.$n\." <<<"$used"; then SVC_CIDR=10.99.$n.0/24; break; fi
done
[ -n "$SVC_CIDR" ] || { log "no free service range in 10.99.200-250.0/24"; exit 1; }
SVC_PREFIX=${SVC_CIDR%0/24}
# start_corral DIR [ARGS...]: a server with its node agent on a bridge, pod range and
# kubelet port of its own; sets STARTED_PID and STARTED_NODE.
start_corral() {
    local dir=$1 n=""
    shift
    for i in $(seq 1 250 | shuf); do
        [ -e "/sys/class/net/corral-p$i" ] || [[ " ${BRIDGES[*]} " == *" corral-p$i "* ]] ||
            { n=$i; break; }
    done
    STARTED_NODE=corral-pbench-$n
    BRIDGES+=("corral-p$n")
    CGROUPS+=("corral-$STARTED_NODE")
    "$TMP/corral" server --data-dir "$dir" --https-port "$(free_port 127.0.0.1)" \
        --node-name "$STARTED_NODE" --bridge "corral-p$n" --pod-cidr "10.247.$n.0/24" \
        --kubelet-port "$(free_port 127.0.0.1)" --node-ip 127.0.0.1 "$@" \
        >"$dir.log" 2>&1 &
    STARTED_PID=$!
    CORRAL_PIDS+=("$STARTED_PID")
    for _ in $(seq 600); do
        [ -f "$dir/kubeconfig.yaml" ] &&
            kubectl --kubeconfig "$dir/kubeconfig.yaml" get --raw /readyz >/dev/null 2>&1 && return
        kill -0 "$STARTED_PID" 2>/dev/null || { log "corral server exited; see $dir.log"; exit 1; }
        sleep 0.1
    done
    log "corral server not ready in 60 s"
    exit 1
}
mkdir -p "$TMP/data"
start_corral "$TMP/data" --service-cidr "$SVC_CIDR"
CORRAL_PID=$STARTED_PID NODE=$STARTED_NODE
ln -s data.log "$TMP/server.log"
export KUBECONFIG=$TMP/data/kubeconfig.yaml
log "corral pid $CORRAL_PID, node $NODE, services $SVC_CIDR;" \
    "haproxy pid $HAPROXY_PID ($HAPROXY_THREADS threads) on :$HA_L7 (http) :$HA_L4 (tcp);" \
    "nginx on 127.0.0.2/127.0.0.3:$BACKEND_PORT"

# Selector-less Services with hand-made EndpointSlices (the backends are not pods).
#   bench-http: port 80 named http (L7), both backends, ROUND_ROBIN as HAProxy's
#   bench-tcp:  port 80 named tcp (L4), both backends
#   bench-a / bench-b: one backend each; bench-route: the VirtualService test's front
svc() {  # name port-name
    cat <<EOF
---
apiVersion: v1
kind: Service
metadata: {name: $1, namespace: proxy-bench}
spec:
  ports: [{name: $2, port: 80, targetPort: $BACKEND_PORT, protocol: TCP}]
EOF
}
slice() {  # service port-name addresses...
    local s=$1 p=$2
    shift 2
    cat <<EOF
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: $s-1
  namespace: proxy-bench
  labels: {kubernetes.io/service-name: $s}
addressType: IPv4
ports: [{name: $p, port: $BACKEND_PORT, protocol: TCP}]
endpoints:
EOF
    for a in "$@"; do echo "  - {addresses: [\"$a\"], conditions: {ready: true}}"; done
}
{
    printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: proxy-bench}\n'
    svc bench-http http; slice bench-http http 127.0.0.2 127.0.0.3
    svc bench-tcp tcp; slice bench-tcp tcp 127.0.0.2 127.0.0.3
    svc bench-a http; slice bench-a http 127.0.0.2
    svc bench-b http; slice bench-b http 127.0.0.3
    svc bench-route http; slice bench-route http 127.0.0.2 127.0.0.3
    cat <<EOF
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bench-http, namespace: proxy-bench}
spec:
  host: bench-http
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bench-route, namespace: proxy-bench}
spec:
  hosts: [bench-route]
  http:
  - route:
    - destination: {host: bench-a}
EOF
} >"$TMP/objects.yaml"
kubectl apply -f "$TMP/objects.yaml" >/dev/null
# The same server and objects without the proxy (--disable-proxy), idle beside it: the
# difference in RSS is what the proxy holds, which one process's RSS cannot tell.
mkdir -p "$TMP/noproxy"
start_corral "$TMP/noproxy" --disable-proxy --service-cidr "$SVC_CIDR"
NOPROXY_PID=$STARTED_PID
kubectl --kubeconfig "$TMP/noproxy/kubeconfig.yaml" apply -f "$TMP/objects.yaml" >/dev/null
ip_of() { kubectl -n proxy-bench get svc "$1" -o jsonpath='{.spec.clusterIP}'; }

log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg);" \
    "$(nginx -v 2>&1 | cut -d' ' -f3); $(haproxy -v | head -1 | cut -d' ' -f1-3); wrk $(wrk -v 2>&1 | head -1 | cut -d' ' -f2)"
OUT=$(python3 "$ROOT/bench/proxybench.py" \
    --tmp "$TMP" --lua "$ROOT/bench/proxy_wrk.lua" --kubeconfig "$KUBECONFIG" \
    --corral-pid "$CORRAL_PID" --noproxy-pid "$NOPROXY_PID" --haproxy-pid "$HAPROXY_PID" --haproxy-threads "$HAPROXY_THREADS" \
    --direct "127.0.0.2:$BACKEND_PORT" \
    --haproxy-l7 "127.0.0.1:$HA_L7" --haproxy-l4 "127.0.0.1:$HA_L4" \
    --corral-l7 "$(ip_of bench-http):80" --corral-l4 "$(ip_of bench-tcp):80" \
    --route "$(ip_of bench-route):80" --namespace proxy-bench \
    --duration "${DURATION:-10}" --conns "${CONNS:-50}" --mid-conns "${MID_CONNS:-4}" \
    --rounds "${ROUNDS:-3}" --flips "${FLIPS:-10}")
echo "$OUT"
[ -n "${RESULTS:-}" ] && grep '^{' <<<"$OUT" >>"$RESULTS"
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
