# Shared by bench/pod_start.sh and bench/density.sh (sourced): builds the release server and
# the test images, installs crun if missing, makes a temp dir, and on exit (also on failure
# or Ctrl-C) runs `podbench.py cleanup`, which removes every pod, process, mount, network
# namespace, bridge and cgroup the run made, then deletes the temp dir.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
NAME=${BENCH_NAME:-pods}

log() { echo "[$NAME-bench $(date +%H:%M:%S)] $*" >&2; }

[ "$(id -u)" = 0 ] || { log "needs root (namespaces, cgroups, bridges)"; exit 1; }

TMP=$(mktemp -d /tmp/corral-$NAME-bench.XXXXXX)
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "${SERVER_LOG:-}" ] && cp "$TMP/server.log" "$SERVER_LOG" 2>/dev/null || true
    if ! python3 "$ROOT/bench/podbench.py" cleanup --tmp "$TMP"; then
        log "cleanup left something behind (listed above); temp dir kept: $TMP"
        exit 1
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

if ! command -v crun >/dev/null; then
    log "installing crun (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q crun >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q crun >/dev/null
    }
fi

if [ -n "${CORRAL_BIN:-}" ]; then
    log "using $CORRAL_BIN (not building)"
else
    log "building corral (release, target dir $TARGET)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release -q -p corral --bin corral)
fi
# A private copy, so a concurrent rebuild cannot swap the binary (and the shims) mid-run.
cp "${CORRAL_BIN:-$TARGET/release/corral}" "$TMP/corral"
python3 "$ROOT/tests/images/build.py" "$TMP/images" >/dev/null
log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(crun --version | head -1)"
