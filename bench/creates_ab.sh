#!/bin/bash
# Creates alone, for A/B runs of server binaries: a release server (no agent, no proxy) on
# a fresh data dir, `corral-loadgen creates` (COUNT ConfigMaps of 1 KiB, 50 clients, one
# HTTPS/1.1 keep-alive connection each), its JSON line printed; then the idle RSS and CPU
# of a fresh server (VmRSS 5 s after ready, utime+stime over the next 10 s).
#
#   bash bench/creates_ab.sh SERVER_BIN...      # COUNT=20000 LOADGEN_TARGET_DIR=...
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${LOADGEN_TARGET_DIR:-$ROOT/target}
(cd "$ROOT/bench/loadgen" && CARGO_TARGET_DIR=$TARGET cargo build --release -q)
LG=$TARGET/release/corral-loadgen
start() { # bin dir -> PID, PORT
    PORT=$((30000 + RANDOM % 10000))
    "$1" server --data-dir "$2/data" --https-port "$PORT" --disable-agent --disable-proxy >"$2/server.log" 2>&1 &
    PID=$!
    "$LG" wait-ready --server "https://127.0.0.1:$PORT" --kubeconfig "$2/data/kubeconfig.yaml" --path /readyz --timeout-ms 60000 >/dev/null
}
stop() { kill "$PID"; wait "$PID" || true; rm -rf "$1"; }
for bin in "$@"; do
    D=$(mktemp -d /tmp/corral-creates.XXXX)
    start "$bin" "$D"
    echo "$bin $("$LG" creates --kubeconfig "$D/data/kubeconfig.yaml" --count "${COUNT:-20000}" --concurrency 50)"
    stop "$D"
    D=$(mktemp -d /tmp/corral-idle.XXXX)
    start "$bin" "$D"
    sleep 5
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status")
    t0=$(awk '{print $14 + $15}' "/proc/$PID/stat")
    sleep 10
    t1=$(awk '{print $14 + $15}' "/proc/$PID/stat")
    echo "$bin idle: rss_kib=$rss cpu_ticks_over_10s=$((t1 - t0))"
    stop "$D"
done
