#!/usr/bin/env bash
# Runs every test of corral from a fresh checkout: builds the binary, runs the Rust unit,
# property and crash tests, then the end-to-end tests that drive the real binary with the
# real kubectl and the official Python client. Installs what the tests need by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# The etcd backend's tests need Debian's etcd (a server to test against) and protoc with
# protobuf's headers (to build the etcd client). Install them when we can; without them the
# etcd variants of the tests are skipped, saying so.
echo "== etcd"
etcd_tools() { command -v etcd >/dev/null && command -v protoc >/dev/null && [ -d /usr/include/google/protobuf ]; }
if ! etcd_tools && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      etcd-server protobuf-compiler libprotobuf-dev; } >/dev/null || echo "installing etcd failed" >&2
fi
ETCD_FEATURES=()
ETCD_PID=""
ETCD_DIR=""
stop_etcd() {
  if [ -n "$ETCD_PID" ]; then
    kill "$ETCD_PID" 2>/dev/null || true
    wait "$ETCD_PID" 2>/dev/null || true
  fi
  [ -z "$ETCD_DIR" ] || rm -rf "$ETCD_DIR"
}
trap stop_etcd EXIT
trap 'exit 130' INT TERM
if etcd_tools; then
  read -r ETCD_CLIENT_PORT ETCD_PEER_PORT < <(python3 -c 'import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
  ETCD_DIR=$(mktemp -d "${TMPDIR:-/tmp}/corral-test-etcd.XXXXXX")
  ETCD_URL="http://127.0.0.1:$ETCD_CLIENT_PORT"
  ETCD_PEER="http://127.0.0.1:$ETCD_PEER_PORT"
  etcd --name default --data-dir "$ETCD_DIR/data" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "$ETCD_PEER" --initial-advertise-peer-urls "$ETCD_PEER" \
    --initial-cluster "default=$ETCD_PEER" >"$ETCD_DIR/etcd.log" 2>&1 &
  ETCD_PID=$!
  etcd_up() { python3 -c "import urllib.request; urllib.request.urlopen('$ETCD_URL/health', timeout=1)" 2>/dev/null; }
  for _ in $(seq 150); do
    etcd_up || ! kill -0 "$ETCD_PID" 2>/dev/null && break
    sleep 0.1
  done
  etcd_up || { tail -20 "$ETCD_DIR/etcd.log" >&2; echo "etcd did not start" >&2; exit 1; }
  export CORRAL_TEST_ETCD="$ETCD_URL"
  # One feature set for the build and every test, so each crate compiles once.
  ETCD_FEATURES=(--features corral/etcd)
  echo "etcd $(etcd --version | head -1 | awk '{print $3}') at $CORRAL_TEST_ETCD"
else
  echo "etcd tests skipped: etcd-server, protobuf-compiler and libprotobuf-dev are not installed (they are installed when running as root with apt-get)"
fi

echo "== build"
cargo build -p corral --bin corral ${ETCD_FEATURES[@]+"${ETCD_FEATURES[@]}"}
export CORRAL_BIN="$CARGO_TARGET_DIR/debug/corral"

# Test images for the pods the node agent runs (and the runtime's tests): built from Debian's
# busybox-static, installed here when we are root and it is missing. The output is
# deterministic, so it lives with the other build artifacts.
echo "== test images"
if [ ! -x /bin/busybox ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static; } >/dev/null \
    || echo "installing busybox-static failed" >&2
fi
# The Ingress TLS test makes its certificate with openssl.
if ! command -v openssl >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl; } >/dev/null \
    || echo "installing openssl failed" >&2
fi
if [ -x /bin/busybox ]; then
  python3 tests/images/build.py "$CARGO_TARGET_DIR/test-images" >/dev/null
  export CORRAL_TEST_IMAGES="$CARGO_TARGET_DIR/test-images"
  echo "test images in $CORRAL_TEST_IMAGES"
else
  echo "pod tests will skip: /bin/busybox (Debian's busybox-static) is not installed"
fi

echo "== rust tests"
# With CORRAL_TEST_ETCD set, the store tests run on both backends.
cargo test --workspace ${ETCD_FEATURES[@]+"${ETCD_FEATURES[@]}"}

echo "== python environment"
VENV="${CORRAL_VENV:-$HOME/.cache/corral-venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt

if ! command -v kubectl >/dev/null; then
  echo "kubectl is required for the end-to-end tests" >&2
  exit 1
fi

echo "== end-to-end tests"
"$VENV/bin/python" -m pytest tests/e2e -q -p no:cacheprovider "$@"
