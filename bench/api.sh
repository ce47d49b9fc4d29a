#!/usr/bin/env bash
# corral API benchmarks, each against a real peer (Debian's etcd) measured in the same run.
#
#   bash bench/api.sh
#
# Builds the release server and bench/loadgen, starts corral and etcd on fresh temp data
# dirs, measures ready time, idle RSS and idle CPU, then runs: creates (vs etcd puts),
# watch fan-out (vs etcd's gateway watch), and LIST with many objects (vs etcd range),
# and prints a summary with corral/etcd ratios. Everything it starts is stopped and every
# temp dir removed on exit, also on failure or Ctrl-C.
#
# Knobs (environment): CREATE_COUNT=10000 CONCURRENCY=50 WATCHERS=1000 WATCH_RATE=1000
# WATCH_SECONDS=10 WATCH_OBJECTS=10 LIST_COUNT=100000 LOADGEN_TARGET_DIR=/work/target-bench
# RESULTS=FILE (also keep the raw JSON lines there) SKIP_ETCD=1 (no peer, no ratios).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CREATE_COUNT=${CREATE_COUNT:-10000}
CONCURRENCY=${CONCURRENCY:-50}
WATCHERS=${WATCHERS:-1000}
WATCH_RATE=${WATCH_RATE:-1000}
WATCH_SECONDS=${WATCH_SECONDS:-10}
WATCH_OBJECTS=${WATCH_OBJECTS:-10}
LIST_COUNT=${LIST_COUNT:-100000}
LOADGEN_TARGET_DIR=${LOADGEN_TARGET_DIR:-/work/target-bench}
SKIP_ETCD=${SKIP_ETCD:-0}

log() { echo "[api-bench $(date +%H:%M:%S)] $*" >&2; }

TMP=$(mktemp -d /tmp/corral-api-bench.XXXXXX)
CORRAL_PID=""
ETCD_PID=""
stop_pid() { # pid: TERM, wait up to 10 s, then KILL
    local pid=$1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    stop_pid "$CORRAL_PID"
    stop_pid "$ETCD_PID"
    if [ "$rc" != 0 ]; then
        log "failed (exit $rc); last server log lines:"
        tail -n 20 "$TMP/corral.log" 2>/dev/null >&2 || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Many watch connections: raise the open-files limit for us and the servers we start.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "open files limit: $(ulimit -n)"

# ---------------------------------------------------------------- build
build_server() {
    local i
    for i in 1 2 3; do
        if (cd "$ROOT" && cargo build --release -p corral >"$TMP/build.log" 2>&1); then return 0; fi
        log "server build failed (try $i/3; others may be mid-edit), retrying in 60 s:"
        tail -n 5 "$TMP/build.log" >&2
        sleep 60
    done
    tail -n 40 "$TMP/build.log" >&2
    return 1
}
log "building corral (release)"
build_server
# Run a private copy, so a concurrent rebuild cannot swap the binary under the benchmark.
cp "$ROOT/target/release/corral" "$TMP/corral"
log "building loadgen (target dir $LOADGEN_TARGET_DIR)"
(cd "$ROOT/bench/loadgen" && CARGO_TARGET_DIR="$LOADGEN_TARGET_DIR" cargo build --release 2>"$TMP/loadgen-build.log") \
    || { tail -n 40 "$TMP/loadgen-build.log" >&2; exit 1; }
LOADGEN="$LOADGEN_TARGET_DIR/release/corral-loadgen"

if [ "$SKIP_ETCD" != 1 ] && ! command -v etcd >/dev/null; then
    log "installing Debian's etcd-server (the peer)"
    apt-get update -qq >/dev/null && apt-get install -y -qq etcd-server >/dev/null
fi

# ---------------------------------------------------------------- helpers
port_in_use() { # port -> 0 if something listens on it (checks /proc/net/tcp{,6})
    local hex
    hex=$(printf '%04X' "$1")
    awk -v p=":$hex" '$2 ~ p"$" && $4 == "0A" {found=1} END {exit !found}' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 20000))
        port_in_use "$p" || port_in_use $((p + 1)) || { echo "$p"; return; }
    done
}
now_ns() { date +%s%N; }
rss_mb() { awk '/^VmRSS:/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)
RESULTS_FILE="$TMP/results.jsonl"
: >"$RESULTS_FILE"
record() { # tag json -> results file and stdout
    local line
    line=$(printf '%s' "$2" | python3 -c 'import json,sys; d=json.load(sys.stdin); d["tag"]=sys.argv[1]; print(json.dumps(d))' "$1")
    echo "$line" >>"$RESULTS_FILE"
    echo "$line"
}
run_lg() { # tag subcommand args... : run the loadgen and record its JSON line
    local tag=$1
    shift
    local out
    log "$tag: corral-loadgen $*"
    if ! out=$("$LOADGEN" "$@" 2>"$TMP/lg-$tag.err"); then
        log "$tag failed:"
        tail -n 20 "$TMP/lg-$tag.err" >&2
        return 1
    fi
    record "$tag" "$out"
}

CORRAL_PORT=$(free_port)
CORRAL_DATA="$TMP/corral-data"
CORRAL_URL="https://127.0.0.1:$CORRAL_PORT"
KUBECONFIG_FILE="$CORRAL_DATA/kubeconfig.yaml"
start_corral() {
    local t0
    t0=$(now_ns)
    "$TMP/corral" server --data-dir "$CORRAL_DATA" --https-port "$CORRAL_PORT" >>"$TMP/corral.log" 2>&1 &
    CORRAL_PID=$!
    run_lg "$1" wait-ready --server "$CORRAL_URL" --kubeconfig "$KUBECONFIG_FILE" --path /readyz --since-ns "$t0" --timeout-ms 60000
}

ETCD_PORT=$(free_port)
ETCD_URL="http://127.0.0.1:$ETCD_PORT"
start_etcd() {
    local t0 peer=$((ETCD_PORT + 1))
    t0=$(now_ns)
    etcd --name bench --data-dir "$TMP/etcd-data" \
        --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "bench=http://127.0.0.1:$peer" >>"$TMP/etcd.log" 2>&1 &
    ETCD_PID=$!
    run_lg "$1" wait-ready --server "$ETCD_URL" --path /health --since-ns "$t0" --timeout-ms 60000
}

# ---------------------------------------------------------------- start, ready, idle
log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
start_corral corral-ready-fresh
[ "$SKIP_ETCD" = 1 ] || start_etcd etcd-ready-fresh
log "idle: 5 s settle, then RSS; CPU over the next 10 s"
sleep 5
idle_json() { # name pid -> json with rss after 5 s and cpu over 10 s (filled in later)
    printf '{"bench":"idle","server":"%s","rss_mb":%s' "$1" "$(rss_mb "$2")"
}
C_IDLE=$(idle_json corral "$CORRAL_PID")
c1=$(cpu_ticks "$CORRAL_PID")
if [ "$SKIP_ETCD" != 1 ]; then E_IDLE=$(idle_json etcd "$ETCD_PID"); e1=$(cpu_ticks "$ETCD_PID"); fi
sleep 10
c2=$(cpu_ticks "$CORRAL_PID")
record corral-idle "$C_IDLE,\"cpu_ms_per_10s\":$(((c2 - c1) * 1000 / CLK_TCK))}"
if [ "$SKIP_ETCD" != 1 ]; then
    e2=$(cpu_ticks "$ETCD_PID")
    record etcd-idle "$E_IDLE,\"cpu_ms_per_10s\":$(((e2 - e1) * 1000 / CLK_TCK))}"
fi

# ---------------------------------------------------------------- creates vs etcd puts
KC=(--server "$CORRAL_URL" --kubeconfig "$KUBECONFIG_FILE")
log "creates: warm-up"
"$LOADGEN" creates "${KC[@]}" --count 1000 --concurrency "$CONCURRENCY" >/dev/null 2>&1
[ "$SKIP_ETCD" = 1 ] || "$LOADGEN" etcd-puts --server "$ETCD_URL" --count 1000 --concurrency "$CONCURRENCY" >/dev/null 2>&1
for round in 1 2; do # alternate, so drift on a shared machine hits both sides alike
    run_lg "corral-creates-h1-$round" creates "${KC[@]}" --count "$CREATE_COUNT" --concurrency "$CONCURRENCY" --proto h1
    [ "$SKIP_ETCD" = 1 ] || run_lg "etcd-puts-$round" etcd-puts --server "$ETCD_URL" --count "$CREATE_COUNT" --concurrency "$CONCURRENCY"
done
run_lg corral-creates-h2 creates "${KC[@]}" --count "$CREATE_COUNT" --concurrency "$CONCURRENCY" --proto h2
run_lg corral-creates-token creates "${KC[@]}" --token-file "$CORRAL_DATA/pki/admin.token" --count "$CREATE_COUNT" --concurrency "$CONCURRENCY" --proto h1

# ---------------------------------------------------------------- watch fan-out
W=(--watchers "$WATCHERS" --rate "$WATCH_RATE" --seconds "$WATCH_SECONDS" --objects "$WATCH_OBJECTS" --drain-seconds 15)
run_lg corral-watch-h1 watch-fanout "${KC[@]}" "${W[@]}" --proto h1
run_lg corral-watch-h2 watch-fanout "${KC[@]}" "${W[@]}" --proto h2 --streams-per-conn 100
[ "$SKIP_ETCD" = 1 ] || run_lg etcd-watch etcd-watch --server "$ETCD_URL" "${W[@]}"
# A scaled-down point (a tenth of the watchers and of the rate) to see latency below saturation.
WS=(--watchers $((WATCHERS / 10)) --rate $((WATCH_RATE / 10)) --seconds "$WATCH_SECONDS" --objects "$WATCH_OBJECTS" --drain-seconds 15)
run_lg corral-watch-small watch-fanout "${KC[@]}" "${WS[@]}" --proto h1
[ "$SKIP_ETCD" = 1 ] || run_lg etcd-watch-small etcd-watch --server "$ETCD_URL" "${WS[@]}"

# ---------------------------------------------------------------- list with many objects
run_lg corral-list list "${KC[@]}" --count "$LIST_COUNT" --concurrency "$CONCURRENCY" --proto h2 --pid "$CORRAL_PID" --page 500 --repeat 3
[ "$SKIP_ETCD" = 1 ] || run_lg etcd-list etcd-list --server "$ETCD_URL" --count "$LIST_COUNT" --concurrency "$CONCURRENCY" --pid "$ETCD_PID" --page 500 --repeat 3

# ---------------------------------------------------------------- restart with everything stored
objects_note="after ${LIST_COUNT} list objects + the rest of the run"
t0=$(now_ns)
stop_pid "$CORRAL_PID"
record corral-shutdown "{\"bench\":\"shutdown\",\"ms\":$((($(now_ns) - t0) / 1000000)),\"note\":\"$objects_note\"}"
CORRAL_PID=""
start_corral corral-ready-restart
sleep 5
record corral-restart-idle "{\"bench\":\"idle\",\"server\":\"corral\",\"rss_mb\":$(rss_mb "$CORRAL_PID"),\"note\":\"5 s after restart, $objects_note\"}"

# ---------------------------------------------------------------- summary
if [ -n "${RESULTS:-}" ]; then cp "$RESULTS_FILE" "$RESULTS"; fi
python3 "$ROOT/bench/summary.py" "$RESULTS_FILE"
