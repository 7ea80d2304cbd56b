#!/usr/bin/env bash
# End to end on embedded defaults (`backless-dev`: web + worker + Cloud Tasks emulator, SQLite,
# local storage), through the public API, one photo after another.
#
#   scripts/bench-e2e.sh stages  [--model u2netp] [--megapixels 1] [--runs 5]
#   scripts/bench-e2e.sh memory  [--model u2netp] [--images 200]      (RSS after each photo)
#   scripts/bench-e2e.sh scaling [--model u2netp] [--sizes 1,6,12,24] (working memory per size)
#
# Needs the model imported (scripts/fetch-models.sh) and python3 with requests and pillow.
# PROFILE=dev reuses the test build instead of building release; DEV_BIN=path skips the build.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
profile="${PROFILE:-release}"
if [ -z "${DEV_BIN:-}" ]; then
  cargo build --quiet --profile "$profile" -p backless-dev
fi
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
exec python3 scripts/bench_e2e.py "${DEV_BIN:-${CARGO_TARGET_DIR:-$root/target}/$dir/backless-dev}" "$@"
