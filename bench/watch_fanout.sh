#!/bin/bash
# Watch fan-out alone, for A/B runs of server binaries: a release server (no agent, no
# proxy) on a fresh data dir and `corral-loadgen watch-fanout` with the given arguments
# (api.sh's: --watchers 1000 --rate 1000 --seconds 10 --objects 10 --drain-seconds 15
# --proto h1); prints the loadgen's JSON line.
#
#   LOADGEN_TARGET_DIR=/work/target-bench bash bench/watch_fanout.sh SERVER_BIN ARGS...
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${LOADGEN_TARGET_DIR:-$ROOT/target}
BIN=$1
shift
(cd "$ROOT/bench/loadgen" && CARGO_TARGET_DIR=$TARGET cargo build --release -q)
LG=$TARGET/release/corral-loadgen
D=$(mktemp -d /tmp/corral-watchbench.XXXX)
PORT=$((30000 + RANDOM % 10000))
"$BIN" server --data-dir "$D/data" --https-port "$PORT" --disable-agent --disable-proxy >"$D/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$D"' EXIT
"$LG" wait-ready --server "https://127.0.0.1:$PORT" --kubeconfig "$D/data/kubeconfig.yaml" --path /readyz --timeout-ms 60000 >/dev/null
"$LG" watch-fanout --kubeconfig "$D/data/kubeconfig.yaml" "$@"
