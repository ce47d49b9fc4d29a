#!/usr/bin/env bash
# Scheduler throughput: pods bound end to end per second through a real corral server.
#
#   bash bench/scheduler.sh
#
# Builds the release server and the sched_bench example (crates/scheduler/examples),
# starts `corral server` on a fresh temp data dir with its own scheduler and controllers
# disabled, then sched_bench creates NODES nodes (32 cpu / 128Gi / 110 pods, no agent),
# starts corral's scheduler in its own process (a client of the API over HTTPS, as
# kube-scheduler is), creates PODS pods from CREATORS concurrent clients and watches until
# every pod is bound. Prints pods bound per second end to end (first create to last bound
# seen by the watch), the scheduler's own decisions per second of algorithm time, and the
# ratio to 810 pods/s, the upstream scheduler_perf gate (no real kube-scheduler can run on
# this machine, so that published number stands in for the peer).
#
# Knobs (environment): NODES=5000 PODS=50000 CREATORS=32 CARGO_TARGET_DIR (default
# ./target) RESULTS=FILE (append the JSON line there too).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NODES=${NODES:-5000}
PODS=${PODS:-50000}
CREATORS=${CREATORS:-32}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

log() { echo "[sched-bench $(date +%H:%M:%S)] $*" >&2; }

TMP=$(mktemp -d /tmp/corral-sched-bench.XXXXXX)
SERVER_PID=""
cleanup() {
    local rc=$?
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    if [ "$rc" != 0 ]; then
        log "failed (exit $rc); last server log lines:"
        tail -n 20 "$TMP/server.log" >&2 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "building (release)"
# One invocation for both, so that cargo unifies features once (two invocations with
# different package sets rebuild shared dependencies each time).
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release -q -p corral -p corral-scheduler \
    --bin corral --example sched_bench)
# Copies, so that a concurrent rebuild cannot swap the binaries during the run.
cp "$TARGET/release/corral" "$TMP/corral"
cp "$TARGET/release/examples/sched_bench" "$TMP/sched_bench"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
FLAGS=()
HELP=$("$TMP/corral" server --help)
grep -q -- --disable-scheduler <<<"$HELP" && FLAGS+=(--disable-scheduler)
grep -q -- --disable-controllers <<<"$HELP" && FLAGS+=(--disable-controllers)
grep -q -- --disable-agent <<<"$HELP" && FLAGS+=(--disable-agent)
log "starting corral server on 127.0.0.1:$PORT ${FLAGS[*]}"
"$TMP/corral" server --data-dir "$TMP/data" --https-port "$PORT" "${FLAGS[@]}" >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 600); do [ -s "$TMP/data/kubeconfig.yaml" ] && break; sleep 0.1; done
[ -s "$TMP/data/kubeconfig.yaml" ] || { log "no kubeconfig after 60 s"; exit 1; }

log "nodes=$NODES pods=$PODS creators=$CREATORS"
START=$(date +%s)
RESULT=$("$TMP/sched_bench" "$TMP/data/kubeconfig.yaml" "$NODES" "$PODS" "$CREATORS")
log "wall time $(( $(date +%s) - START )) s"
echo "$RESULT"
[ -n "${RESULTS:-}" ] && echo "$RESULT" >>"$RESULTS"
python3 - "$RESULT" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(f"| nodes | pods | bound | created/s | bound end to end/s | vs 810/s | decisions/s (algorithm time) | mean e2e latency |")
print(f"|---|---|---|---|---|---|---|---|")
print(f"| {r['nodes']:,} | {r['pods']:,} | {r['bound']:,} | {r['creates_per_second']:,.0f} | "
      f"{r['e2e_pods_per_second']:,.0f} | {r['ratio_vs_810']:.2f} | "
      f"{r['decisions_per_second_of_algorithm_time']:,.0f} | {r['e2e_latency_mean_ms']:,.0f} ms |")
PY
