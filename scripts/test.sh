#!/usr/bin/env bash
# Runs every test of corral from a fresh checkout: builds the binary, runs the Rust unit,
# property and crash tests, then the end-to-end tests that drive the real binary with the
# real kubectl and the official Python client. Installs what the tests need by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== build"
cargo build --bin corral
export CORRAL_BIN="$CARGO_TARGET_DIR/debug/corral"

echo "== rust tests"
cargo test --workspace

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
