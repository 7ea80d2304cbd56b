#!/usr/bin/env bash
# Real remove.bg clients against the remove.bg-compatible API of the real service (`backless-dev`):
# the npm `remove.bg` client (npm ci), the PyPI `removebg` and `remove-bg-api` clients (pip, from
# scripts/requirements-test.txt), and 20 concurrent synchronous requests. Expects the dev binary
# built and the default model fetched, as scripts/test-browser.sh does.
#
#   scripts/test-clients.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

target="${CARGO_TARGET_DIR:-$root/target}"
bin="${BACKLESS_DEV_BIN:-$target/debug/backless-dev}"
worker="${WORKER_BIN:-$target/debug/worker}"
if [ ! -x "$bin" ]; then
  echo "error: $bin not found; build it first: cargo build -p backless-dev -p backless-worker" >&2
  exit 1
fi
if [ ! -f "${BACKLESS_MODELS_DIR:-$root/models}/u2netp.safetensors" ]; then
  step "Default model (U²-NetP)"
  WORKER_BIN="$worker" scripts/fetch-models.sh u2netp
fi

step "PyPI remove.bg clients"
python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt

step "npm remove.bg client (npm ci)"
cd web/client-tests
npm ci --no-audit --no-fund --loglevel=error

step "remove.bg clients against $bin"
export BACKLESS_DEV_BIN="$bin"
node --test --test-concurrency=1 tests/
