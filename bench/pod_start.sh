#!/usr/bin/env bash
# Pod start latency: corral's node agent vs crun, same image, same machine, same run.
#
#   bash bench/pod_start.sh
#
# Starts `corral server` with its node agent on a bridge and pod range of its own, creates
# COUNT pods (busybox-web httpd) BATCH at a time through the API, and takes for each the
# time from sending the create to a watch showing it Running, and to its httpd accepting a
# TCP connection on the pod IP; then the same number of crun containers of the same image,
# each with what the agent makes for a pod (overlay rootfs, netns + veth on a bridge,
# /etc files, cgroup), time to `crun run --detach` returning and to httpd accepting.
# corral and crun batches alternate, so both see the same machine load. Prints JSON and a
# table with corral/crun ratios. See bench/README.md.
#
# Knobs (environment): COUNT=100 BATCH=10 ROUNDS=1 CARGO_TARGET_DIR RESULTS=FILE
# CORRAL_BIN=FILE (use that binary instead of building) CORRAL_LOG (the server's log filter,
# e.g. info,corral_agent=debug,corral_runtime=debug for per-pod timings) SERVER_LOG=FILE (keep it).
BENCH_NAME=pod-start
source "$(dirname "$0")/pods_common.sh"
OUT=$(python3 "$ROOT/bench/podbench.py" start --tmp "$TMP" --corral "$TMP/corral" --images "$TMP/images" \
    --count "${COUNT:-100}" --batch "${BATCH:-10}" --rounds "${ROUNDS:-1}")
echo "$OUT"
[ -n "${RESULTS:-}" ] && head -n 1 <<<"$OUT" >>"$RESULTS"
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
