#!/usr/bin/env bash
# Mesh: a Service call that crosses nodes under mutual TLS (corral's node proxies and their
# HTTP/2 CONNECT tunnel) against two HAProxies doing the same (mTLS between them), same
# machine, same run. Two nodes on this host: `corral server` and a `corral agent` joined
# from a network namespace the script makes; two nginx pods on the joined node (an image
# built from Debian's nginx binary). See bench/meshbench.py and bench/README.md.
#
#   bash bench/mesh.sh          # DURATION=10 ROUNDS=3 CORRAL_BIN=FILE RESULTS=FILE
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
log() { echo "[mesh-bench $(date +%H:%M:%S)] $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "skipped: needs root (network namespaces, bridges, cgroups)"
    exit 0
fi
for c in kubectl python3 ip nsenter; do
    command -v "$c" >/dev/null || { log "needs $c"; exit 1; }
done
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (Debian packages)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

if [ -n "${CORRAL_BIN:-}" ]; then
    log "using $CORRAL_BIN (not building)"
    BIN=$CORRAL_BIN
else
    log "building the release binary"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release -q -p corral --bin corral)
    BIN=$TARGET/release/corral
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
python3 "$ROOT/bench/meshbench.py" --bin "$BIN" --duration "${DURATION:-10}" --rounds "${ROUNDS:-3}" | tee "$out"
if [ -n "${RESULTS:-}" ]; then
    cat "$out" >> "$RESULTS"
fi
