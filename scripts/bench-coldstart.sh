#!/usr/bin/env bash
# Cold start: our worker vs rembg's server on the same ONNX weights, in one run.
#
#   scripts/bench-coldstart.sh [u2netp u2net isnet]   (default: every model present in models/)
#
# Ours: `worker serve` spawned -> /readyz 200 (SQLite migrated, model mapped and packed, one
# warm-up inference). rembg: `rembg s` spawned -> its first /api/remove answered (rembg builds its
# session on the first request), with `u2net_custom` / `dis_custom` pointed at models/<m>.onnx.
# Also both CLIs, process start -> cut-out written. RUNS=3 and THREADS=$(nproc) by default.
# rembg is pip-installed into a virtual environment under $BACKLESS_CACHE (~/.cache/backless).
# PROFILE=dev reuses the test build; WORKER_BIN=path uses that binary and builds nothing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
runs="${RUNS:-3}"
export THREADS="${THREADS:-$(nproc)}"
cache="${BACKLESS_CACHE:-$HOME/.cache/backless}"
venv="$cache/rembg-venv"
if [ ! -x "$venv/bin/rembg" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "rembg[cpu,cli]"
fi
if [ $# -eq 0 ]; then
  for m in u2netp u2net isnet; do [ -f "models/$m.safetensors" ] && [ -f "models/$m.onnx" ] && set -- "$@" "$m"; done
fi
profile="${PROFILE:-release}"
if [ -z "${WORKER_BIN:-}" ]; then
  cargo build --quiet --profile "$profile" -p backless-worker --bin worker
fi
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
worker="${WORKER_BIN:-${CARGO_TARGET_DIR:-$root/target}/$dir/worker}"
for m in "$@"; do
  python3 scripts/bench_coldstart.py "$worker" "$venv/bin/rembg" "$m" "$runs"
done
