#!/usr/bin/env bash
# Run every BackLess test on a fresh machine: install what the tests need (PostgreSQL, Redis and
# Chromium from Debian's packages, the official Cloud Tasks Python client from pip), fetch the
# default model, then `cargo test` over the whole workspace and the browser tests in Chromium.
# `.ci/run` calls exactly this.
#
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

# Each step says how long the one before it took, and the run ends with every step's time:
# where CI's minutes go.
times=()
last=""
started=$SECONDS
step_end() {
  [ -n "$last" ] && times+=("$(printf '%5ds  %s' $((SECONDS - started)) "$last")")
  started=$SECONDS
}
step() {
  step_end
  last="$*"
  printf '\n==> %s\n' "$*"
}
trap 'step_end; [ ${#times[@]} -gt 0 ] && printf "\n==> time per step\n" && printf "%s\n" "${times[@]}"' EXIT

step "Python packages for the conformance tests (official Cloud Tasks client)"
python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt

step "PostgreSQL, Redis and s3s-fs (real servers for the production-backend tests)"
eval "$(scripts/test-services.sh)"

step "Formatting, and no import cycles between files"
cargo fmt --all --check
python3 scripts/check-imports.py

# One feature set for every step (the S3 backend included), so no later step rebuilds the
# dependency tree with other features: the S3 tests run with the rest, and the load, client and
# browser steps start the binaries this build made.
features="backless-web/s3"

step "Build (tests and binaries, one feature set)"
cargo test --workspace --features "$features" --no-run "$@"

step "Default model (U²-NetP), imported by our own importer"
WORKER_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/worker" scripts/fetch-models.sh u2netp

# The fuzz target functions run among them on stable, over the seed corpus and generated inputs
# (dev/tests/it/fuzz_corpus.rs), in this build: `scripts/fuzz.sh 60` runs real libFuzzer.
step "Tests (S3 storage and signed-URL redirects against a real S3-protocol server, the fuzz targets over their corpus among them)"
cargo test --workspace --features "$features" --no-fail-fast "$@"

step "Bounded load test: web + emulator + worker on PostgreSQL and Redis (no job lost, no 5xx)"
BUILD=0 scripts/load.sh short

step "remove.bg clients (npm and PyPI) and 20 concurrent synchronous requests"
BACKLESS_DEV_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/backless-dev" scripts/test-clients.sh

step "Browser tests (Debian Chromium, playwright-core)"
BACKLESS_DEV_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/backless-dev" scripts/test-browser.sh
