#!/usr/bin/env bash
# Run BackLess on embedded defaults: fetch the default model if missing, then start the Cloud
# Tasks emulator, the worker and web in one process (SQLite in data/, images in data/objects,
# in-process progress events). Prints the URL to open. Settings: BACKLESS_* variables (README).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
models="${BACKLESS_MODELS:-u2netp}"
for m in ${models//,/ }; do
  [ -f "${BACKLESS_MODELS_DIR:-models}/$m.safetensors" ] || scripts/fetch-models.sh "$m"
done
exec cargo run --quiet -p backless-dev
