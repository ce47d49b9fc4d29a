#!/usr/bin/env bash
# Density: what 100 running pods cost on one corral node, vs the same containers under crun.
#
#   bash bench/density.sh
#
# Starts `corral server` with its node agent, runs PODS busybox-web pods (10 at a time),
# and once all are Running and again after IDLE seconds idle reads RSS and PSS
# (/proc/PID/smaps_rollup) and CPU time (utime+stime) of the server process (the agent runs
# in it), of the `corral shim` processes and of the container processes; then deletes them
# and runs the same containers under crun (which has no daemon and leaves no process beside
# the container) for the same idle time. Prints JSON and per-pod numbers. See
# bench/README.md.
#
# Knobs (environment): PODS=100 IDLE=60 CARGO_TARGET_DIR RESULTS=FILE CORRAL_BIN=FILE.
BENCH_NAME=density
source "$(dirname "$0")/pods_common.sh"
OUT=$(python3 "$ROOT/bench/podbench.py" density --tmp "$TMP" --corral "$TMP/corral" --images "$TMP/images" \
    --count "${PODS:-100}" --idle "${IDLE:-60}")
echo "$OUT"
[ -n "${RESULTS:-}" ] && head -n 1 <<<"$OUT" >>"$RESULTS"
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
