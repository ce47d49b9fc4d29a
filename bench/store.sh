#!/usr/bin/env bash
# Store benchmark: durable 1 KiB puts with 1 and with 100 concurrent writers, throughput and
# p99 latency, corral's embedded store against Debian's etcd (3.4) run on the same machine
# in the same run. Both go through the same Store API (crates/store/examples/store_bench.rs;
# etcd through the etcd backend), with the same value size, keys and concurrency.
#
#   bash bench/store.sh
#
# Builds the example in release with `--features etcd`, then for each writer count runs the
# embedded store on a fresh directory and the same load against a fresh etcd (fresh data
# dir, free loopback ports), prints every result as a JSON line and a summary with
# corral/etcd ratios. Everything it starts is stopped and every temp dir removed on exit,
# also on failure or Ctrl-C.
#
# Knobs (environment): RUN_SECONDS=10 WRITERS="1 100" VALUE_SIZE=1024
# BENCH_TMP=/var/tmp (temp dirs go there: it must be a real disk, not a tmpfs, or fsync
# costs nothing) BENCH_TARGET_DIR=$CARGO_TARGET_DIR or ./target RESULTS=FILE (keep the JSON).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN_SECONDS=${RUN_SECONDS:-10}
WRITERS=${WRITERS:-1 100}
VALUE_SIZE=${VALUE_SIZE:-1024}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
BENCH_TARGET_DIR=${BENCH_TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}}

log() { echo "[store-bench $(date +%H:%M:%S)] $*" >&2; }

TMP=$(mktemp -d "$BENCH_TMP/corral-store-bench.XXXXXX")
ETCD_PID=""
stop_etcd() {
    [ -n "$ETCD_PID" ] || return 0
    kill -TERM "$ETCD_PID" 2>/dev/null || true
    wait "$ETCD_PID" 2>/dev/null || true
    ETCD_PID=""
}
cleanup() {
    local rc=$?
    stop_etcd
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- tools
if ! command -v etcd >/dev/null || ! command -v protoc >/dev/null || [ ! -d /usr/include/google/protobuf ]; then
    log "installing Debian's etcd-server (the peer) and protobuf (to build the etcd client)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server protobuf-compiler libprotobuf-dev >/dev/null
fi
ETCD_VERSION=$(etcd --version | awk '/etcd Version/ {print $3}')

log "building store_bench (release, --features etcd)"
(cd "$ROOT" && CARGO_TARGET_DIR="$BENCH_TARGET_DIR" cargo build -q --release -p corral-store \
    --features etcd --example store_bench)
# A copy, so that a concurrent rebuild cannot swap the binary during the run.
cp "$BENCH_TARGET_DIR/release/examples/store_bench" "$TMP/store_bench"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_etcd() { # name: a fresh etcd on a fresh data dir; sets ETCD_URL
    local name=$1 client peer
    client=$(free_port)
    peer=$(free_port)
    ETCD_URL="http://127.0.0.1:$client"
    etcd --name default --data-dir "$TMP/etcd-$name" \
        --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
        --listen-peer-urls "http://127.0.0.1:$peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "default=http://127.0.0.1:$peer" >>"$TMP/etcd.log" 2>&1 &
    ETCD_PID=$!
    for _ in $(seq 200); do
        python3 -c "import urllib.request; urllib.request.urlopen('$ETCD_URL/health', timeout=1)" 2>/dev/null && return 0
        kill -0 "$ETCD_PID" 2>/dev/null || break
        sleep 0.05
    done
    tail -20 "$TMP/etcd.log" >&2
    log "etcd did not start"
    exit 1
}

# ---------------------------------------------------------------- runs
RESULTS_FILE="$TMP/results.jsonl"
for w in $WRITERS; do
    log "embedded store, $w writer(s), ${RUN_SECONDS}s"
    mkdir "$TMP/embedded-$w"
    TMPDIR="$TMP/embedded-$w" "$TMP/store_bench" --writers "$w" --seconds "$RUN_SECONDS" \
        --value-size "$VALUE_SIZE" | tee -a "$RESULTS_FILE"
    rm -rf "$TMP/embedded-$w"

    log "etcd $ETCD_VERSION through the etcd backend, $w writer(s), ${RUN_SECONDS}s"
    start_etcd "$w"
    "$TMP/store_bench" --writers "$w" --seconds "$RUN_SECONDS" --value-size "$VALUE_SIZE" \
        --etcd "$ETCD_URL" | tee -a "$RESULTS_FILE"
    stop_etcd
    rm -rf "$TMP/etcd-$w"
done
[ -z "${RESULTS:-}" ] || cp "$RESULTS_FILE" "$RESULTS"

# ---------------------------------------------------------------- summary
python3 - "$RESULTS_FILE" "$ETCD_VERSION" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {(r["store"], r["writers"]): r for r in rows}
print()
print(f"durable {rows[0]['value_bytes']} B puts, corral embedded vs etcd {sys.argv[2]} (same Store API)")
print()
print("| writers | corral ops/s | etcd ops/s | throughput corral/etcd | corral p99 ms | etcd p99 ms | p99 corral/etcd |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for (store, w), c in sorted(by.items(), key=lambda kv: kv[0][1]):
    if store != "corral-embedded":
        continue
    e = by.get(("corral-etcd-backend", w))
    if not e:
        continue
    tr = c["ops_per_sec"] / e["ops_per_sec"] if e["ops_per_sec"] else float("inf")
    pr = c["p99_ms"] / e["p99_ms"] if e["p99_ms"] else float("inf")
    print(f"| {w} | {c['ops_per_sec']:.0f} | {e['ops_per_sec']:.0f} | {tr:.2f}x | "
          f"{c['p99_ms']:.2f} | {e['p99_ms']:.2f} | {pr:.2f}x |")
EOF
