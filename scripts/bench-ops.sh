#!/usr/bin/env bash
# Each image operation on a 12-megapixel photo, BackLess (`worker bench-ops`) vs Pillow on the
# same photo, in one run. Prints ms per operation and the ratio BackLess / Pillow (below 1:
# BackLess is faster).
#
#   scripts/bench-ops.sh          (RUNS=5; PROFILE=dev reuses the test build; PHOTO=your.jpg)
#
# The photo: a fixture upscaled to 4000x3000 and saved as JPEG (quality 92) with Pillow, unless
# PHOTO names one. Installs Pillow with pip when missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
runs="${RUNS:-5}"
python3 -c 'import PIL' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check pillow
cache="${BACKLESS_CACHE:-$HOME/.cache/backless}/bench"
mkdir -p "$cache"
photo="${PHOTO:-$cache/chelsea-12mp.jpg}"
if [ ! -f "$photo" ]; then
  python3 - "$photo" <<'PY'
import sys
from PIL import Image
Image.open("worker/tests/fixtures/photos/chelsea.png").convert("RGB").resize((4000, 3000), Image.LANCZOS).save(sys.argv[1], quality=92)
PY
fi
# WORKER_BIN=path uses that binary and builds nothing.
profile="${PROFILE:-release}"
if [ -z "${WORKER_BIN:-}" ]; then
  cargo build --quiet --profile "$profile" -p backless-worker --bin worker
fi
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
worker="${WORKER_BIN:-${CARGO_TARGET_DIR:-$root/target}/$dir/worker}"
ours=$(RAYON_NUM_THREADS=1 "$worker" bench-ops "$photo" --runs "$runs")
theirs=$(python3 scripts/bench_ops_pillow.py "$photo" "$runs")
python3 - "$ours" "$theirs" <<'PY'
import json, sys
ours = {d["op"]: d for d in map(json.loads, sys.argv[1].splitlines())}
theirs = {d["op"]: d for d in map(json.loads, sys.argv[2].splitlines())}
first = next(iter(ours.values()))
print(f"photo {first['width']}x{first['height']} ({first['width'] * first['height'] / 1e6:.1f} MP)")
print(f"{'operation':<22} {'BackLess ms':>12} {'Pillow ms':>10} {'ratio':>7}")
for op, d in ours.items():
    p = theirs[op]["ms"]
    print(f"{op:<22} {d['ms']:12.1f} {p:10.1f} {d['ms'] / p:6.2f}x")
PY
