#!/bin/bash
# List speed and server memory with many objects: api.sh's list step alone, for A/B runs
# of two server binaries. A release server (no agent, no proxy) on a fresh data dir, then
# `corral-loadgen list`: COUNT ConfigMaps (1 KiB) created over HTTP/2, 3 full LISTs and 3
# walks with limit=500; prints the loadgen's JSON line (RSS from /proc/PID/status).
#
#   bash bench/list_memory.sh [SERVER_BIN]        # COUNT=100000 ENVPFX="MALLOC_ARENA_MAX=2"
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${LOADGEN_TARGET_DIR:-$ROOT/target}
COUNT=${COUNT:-100000}
ENVPFX=${ENVPFX:-}
BIN=${1:-}
if [ -z "$BIN" ]; then
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release -q -p corral)
    BIN=$TARGET/release/corral
fi
(cd "$ROOT/bench/loadgen" && CARGO_TARGET_DIR=$TARGET cargo build --release -q)
LG=$TARGET/release/corral-loadgen
D=$(mktemp -d /tmp/corral-listbench.XXXX)
PORT=$((30000 + RANDOM % 10000))
# shellcheck disable=SC2086 # ENVPFX is a list of VAR=value words
env $ENVPFX "$BIN" server --data-dir "$D/data" --https-port "$PORT" --disable-agent --disable-proxy >"$D/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$D"' EXIT
"$LG" wait-ready --server "https://127.0.0.1:$PORT" --kubeconfig "$D/data/kubeconfig.yaml" --path /readyz --timeout-ms 60000 >/dev/null
"$LG" list --kubeconfig "$D/data/kubeconfig.yaml" --count "$COUNT" --concurrency 50 --proto h2 --pid "$PID" --page 500 --repeat 3
