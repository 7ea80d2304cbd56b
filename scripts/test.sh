#!/usr/bin/env bash
# Run every BackLess test on a fresh machine: install what the tests need, fetch the default
# model, then `cargo test` over the whole workspace. `.ci/run` calls exactly this.
#
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

step "Python packages for the conformance tests (official Cloud Tasks client)"
python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt

step "Formatting"
cargo fmt --all --check

step "Build (tests and binaries, one feature set)"
cargo test --workspace --no-run "$@"

step "Default model (U²-NetP), imported by our own importer"
WORKER_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/worker" scripts/fetch-models.sh u2netp

step "Tests"
cargo test --workspace --no-fail-fast "$@"
