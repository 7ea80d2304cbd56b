#!/usr/bin/env bash
# Candle vs onnxruntime on the same weights, same photo, same thread count, in one run.
#
#   scripts/bench-model.sh [u2netp u2net isnet]   (default: every model present in models/)
#
# Needs the models imported (scripts/fetch-models.sh) and `pip install onnxruntime numpy pillow`.
# Builds the worker in release mode (PROFILE=dev to reuse the test build). Each runtime runs in its own process, one after the other,
# so peak memory is per runtime. Prints ms per image and the ratio candle / onnxruntime, by wall
# time and by the process's CPU time per forward pass (the one to read on a shared machine; with
# THREADS=1 it is exact, with more both runtimes' idle spinning counts).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
photo="${PHOTO:-worker/tests/fixtures/photos/astronaut.png}"
runs="${RUNS:-5}"
threads="${THREADS:-$(nproc)}"
if [ $# -eq 0 ]; then
  for m in u2netp u2net isnet; do [ -f "models/$m.safetensors" ] && [ -f "models/$m.onnx" ] && set -- "$@" "$m"; done
fi
# PROFILE=dev reuses the test build (dependencies and the worker are built at opt-level 3 there too);
# WORKER_BIN=path uses that binary and builds nothing.
profile="${PROFILE:-release}"
if [ -z "${WORKER_BIN:-}" ]; then
  cargo build --quiet --profile "$profile" -p backless-worker --bin worker
fi
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
worker="${WORKER_BIN:-${CARGO_TARGET_DIR:-$root/target}/$dir/worker}"
printf '%-8s %-6s %12s %12s %8s %13s %10s %9s %14s %14s %9s %9s\n' model size "candle ms" "ort ms" ratio "candle cpu ms" "ort cpu ms" "cpu ratio" "candle pipe" "ort pipe" "candle MB" "ort MB"
for m in "$@"; do
  c=$(RAYON_NUM_THREADS="$threads" "$worker" bench "$photo" --model "$m" --models-dir models --runs "$runs")
  o=$(python3 scripts/bench_onnxruntime.py "$m" "$photo" "$runs" "$threads")
  python3 - "$c" "$o" <<'PY'
import json, sys
c, o = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{c['model']:<8} {c['input_size']:<6} {c['forward_ms']:12.0f} {o['forward_ms']:12.0f} "
      f"{c['forward_ms'] / o['forward_ms']:7.2f}x {c['forward_cpu_ms']:13.0f} {o['forward_cpu_ms']:10.0f} "
      f"{c['forward_cpu_ms'] / o['forward_cpu_ms']:8.2f}x {c['pipeline_ms']:14.0f} {o['pipeline_ms']:14.0f} "
      f"{c['peak_rss_mib']:9.0f} {o['peak_rss_mib']:9.0f}")
PY
done
