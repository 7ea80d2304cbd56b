#!/usr/bin/env bash
# Browser tests: the page in Debian's Chromium (driven by playwright-core, never a downloaded
# browser) against the real service (`backless-dev`). Expects the dev binary already built, e.g. by
# `cargo build -p backless-dev -p backless-worker` or scripts/test.sh, and the default model fetched.
#
#   scripts/test-browser.sh                       # run the tests
#   UPDATE_DOC_SCREENSHOTS=1 scripts/test-browser.sh   # also refresh docs/screenshots/
#
# Screenshots of each view land in ${CARGO_TARGET_DIR:-target}/browser-screenshots/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

if [ ! -x /usr/bin/chromium ]; then
  step "Chromium (Debian package)"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver
fi

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

step "playwright-core (npm ci)"
cd web/browser-tests
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error

step "Browser tests ($bin)"
export BACKLESS_DEV_BIN="$bin"
export SCREENSHOT_DIR="${SCREENSHOT_DIR:-$target/browser-screenshots}"
node --test --test-concurrency=1 tests/
echo "screenshots: $SCREENSHOT_DIR"

if [ "${UPDATE_DOC_SCREENSHOTS:-}" = 1 ]; then
  for view in upload waiting result result-phone failed invalid; do
    cp "$SCREENSHOT_DIR/$view.png" "$root/docs/screenshots/$view.png"
  done
  echo "docs/screenshots/ updated"
fi
