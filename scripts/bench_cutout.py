#!/usr/bin/env python3
"""Cut-outs of whole photos, `worker remove` vs `rembg p`, same ONNX weights, in one run.

    python3 scripts/bench_cutout.py --rembg REMBG_BIN --onnx MODEL.onnx --models-dir DIR
        [--worker WORKER_BIN] [--model u2netp] [--photos N] [--megapixels MP] [--runs R]
        [--small N] [--small-megapixels MP] [--threads T] [--keep]

Run it through scripts/bench-cutout.sh, which sets up rembg's virtual environment (this script
needs numpy and Pillow, which rembg brings) and the model files.

The photos are made here, in a temporary folder deleted at the end (unless --keep): each fixture under
worker/tests/fixtures/photos upscaled with Pillow's LANCZOS to about MP megapixels (keeping its
aspect ratio) and saved as JPEG quality 92; photo i is fixture i mod F, mirrored and/or cropped a
little differently for each round through the fixtures, so no two photos are byte-identical.

Each tool runs as one process over the whole folder of photos (`worker remove DIR -o OUT`,
`rembg p DIR OUT`), measured by GNU time: wall, user and system seconds and peak RSS. So the
per-photo numbers include each tool's start-up (imports, model load) spread over the photos.
Start-up alone is timed too, as the same command on an empty folder just before (both tools load
the model before looking for photos); "after start-up" is the wall time less that, per photo.
With several runs the table shows medians, and the order of the two tools alternates per run.
Then, on the last run's PNGs: the agreement of the masks (IoU of alpha > 127, mean |alpha
difference|) and, for each tool, how many fully transparent pixels still carry colour.
"""
import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from importlib import metadata

import numpy as np
from PIL import Image, ImageOps

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
FIXTURES = os.path.join(ROOT, "worker", "tests", "fixtures", "photos")
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# rembg's session for each of our models' ONNX files (see scripts/bench_coldstart.py).
REMBG_SESSION = {"u2netp": "u2net_custom", "u2net": "u2net_custom", "isnet": "dis_custom"}
TIME = "/usr/bin/time"


def make_photos(folder, count, megapixels):
    """`count` JPEGs of about `megapixels` MP from the fixtures; returns [(name, (w, h))]."""
    fixtures = sorted(f for f in os.listdir(FIXTURES) if f.lower().endswith(IMAGE_EXT))
    if not fixtures:
        sys.exit(f"no photos in {FIXTURES}")
    os.makedirs(folder, exist_ok=True)
    made = []
    for i in range(count):
        name = fixtures[i % len(fixtures)]
        variant = i // len(fixtures)
        with Image.open(os.path.join(FIXTURES, name)) as src:
            img = ImageOps.exif_transpose(src).convert("RGB")
        if variant % 2:
            img = ImageOps.mirror(img)
        # Each further round through the fixtures: crop 1.5 % more off every edge (up to 15 %).
        inset = (variant // 2) % 11 * 0.015
        if inset:
            w, h = img.size
            dx, dy = round(w * inset), round(h * inset)
            img = img.crop((dx, dy, w - dx, h - dy))
        w, h = img.size
        scale = (megapixels * 1e6 / (w * h)) ** 0.5
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
        out = f"photo{i + 1:03d}-{os.path.splitext(name)[0]}.jpg"
        img.save(os.path.join(folder, out), "JPEG", quality=92)
        made.append((out, size))
    return made


def timed(argv, env, log):
    """Run argv under GNU time; returns wall s, user s, sys s, peak RSS KB and the exit code."""
    tfile = log + ".time"
    with open(log, "wb") as out:
        proc = subprocess.run([TIME, "-f", "%e %U %S %M", "-o", tfile, *argv], env=env,
                              stdout=out, stderr=subprocess.STDOUT)
    with open(tfile) as f:
        # The last line: GNU time writes "Command exited with non-zero status N" before it.
        wall, user, sys_, rss = f.read().strip().splitlines()[-1].split()
    return {"wall": float(wall), "cpu": float(user) + float(sys_), "user": float(user),
            "sys": float(sys_), "rss_kb": int(rss), "rc": proc.returncode}


def tail(path, lines=15):
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def outputs(folder, photos):
    """The PNG each photo should have produced (both tools name it <stem>.png)."""
    return [os.path.join(folder, os.path.splitext(name)[0] + ".png") for name, _ in photos]


def check_outputs(tool, folder, photos, res, log):
    missing = [p for p in outputs(folder, photos) if not os.path.isfile(p)]
    # rembg p prints a failed file's error and still exits 0: count its outputs too.
    if res["rc"] != 0 or missing:
        sys.exit(f"{tool}: exit code {res['rc']}, {len(missing)} of {len(photos)} output(s) missing "
                 f"(e.g. {missing[:1]}); its output ends with:\n{tail(log)}")


def run_set(label, photos_dir, photos, tools, runs, tmp):
    """Runs every tool `runs` times over photos_dir; returns {tool: [result per run]}."""
    results = {name: [] for name in tools}
    empty = os.path.join(tmp, "no-photos")
    os.makedirs(empty, exist_ok=True)
    for r in range(runs):
        order = list(tools) if r % 2 == 0 else list(reversed(tools))
        for name in order:
            # Start-up alone: the same command on an empty folder (both tools load the model
            # before they look for photos).
            argv, env = tools[name](empty, os.path.join(tmp, f"{label}-{name}-{r}-empty"))
            log = os.path.join(tmp, f"{label}-{name}-{r}-empty.log")
            start = timed(argv, env, log)
            check_outputs(name, empty, [], start, log)
            out = os.path.join(tmp, f"{label}-{name}-{r}")
            log = os.path.join(tmp, f"{label}-{name}-{r}.log")
            argv, env = tools[name](photos_dir, out)
            res = timed(argv, env, log)
            check_outputs(name, out, photos, res, log)
            res["bytes"] = sum(os.path.getsize(p) for p in outputs(out, photos))
            res["out"] = out
            res["startup"] = start["wall"]
            res["cpu"] = round(res["cpu"], 3)
            results[name].append(res)
            print(json.dumps({"set": label, "run": r, "tool": name, "photos": len(photos),
                              **{k: v for k, v in res.items() if k not in ("out", "rc")}}),
                  file=sys.stderr, flush=True)
    return results


def alpha_stats(path):
    with Image.open(path) as im:
        rgba = np.asarray(im.convert("RGBA"))
    alpha = rgba[..., 3]
    clear = alpha == 0
    coloured = int(np.count_nonzero(clear & rgba[..., :3].any(axis=-1)))
    return alpha, coloured, int(np.count_nonzero(clear))


def fmt_ratio(a, b):
    return f"{a / b:.2f}x" if b else "n/a"


def report(label, photos, results, runs):
    n = len(photos)
    sizes = sorted({f"{w}x{h}" for _, (w, h) in photos})
    mp = statistics.mean(w * h for _, (w, h) in photos) / 1e6
    print(f"\n### {label}: {n} photo(s), {mp:.2f} MP on average ({', '.join(sizes)}), JPEG q92"
          + (f", median of {runs} runs" if runs > 1 else ""))
    print()
    print("| tool | wall s/photo | CPU s/photo (user+sys) | peak RSS MB | output bytes/photo "
          "| start-up s | wall s/photo after start-up "
          "| wall ours/rembg | CPU ours/rembg | bytes ours/rembg | after start-up ours/rembg |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    med = {}
    for name, rs in results.items():
        med[name] = {k: statistics.median(r[k] for r in rs)
                     for k in ("wall", "cpu", "rss_kb", "bytes", "startup")}
        med[name]["steady"] = statistics.median(max(r["wall"] - r["startup"], 0.0) for r in rs)
    ours, theirs = med.get("ours"), med.get("rembg")
    for name, m in med.items():
        if name == "ours" and theirs:
            ratios = [fmt_ratio(ours[k], theirs[k]) for k in ("wall", "cpu", "bytes", "steady")]
        else:
            ratios = ["", "", "", ""]
        print(f"| {name} | {m['wall'] / n:.3f} | {m['cpu'] / n:.3f} | {m['rss_kb'] / 1024:.0f} "
              f"| {m['bytes'] / n:,.0f} | {m['startup']:.2f} | {m['steady'] / n:.3f} | "
              + " | ".join(ratios) + " |")
    if not ours:
        print("\n(ours skipped: no ratios)")

    # Masks and transparent colour, on the last run's PNGs.
    print()
    cols = ["photo"]
    if ours and theirs:
        cols += ["IoU alpha>127", "mean abs alpha diff"]
    cols += [f"{t}: alpha=0 px with RGB!=0" for t in results]
    print("| " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * (len(cols) - 1))
    ious = []
    for i, (name, _) in enumerate(photos):
        row = [name]
        stats = {t: alpha_stats(outputs(rs[-1]["out"], photos)[i]) for t, rs in results.items()}
        if ours and theirs:
            a, b = stats["ours"][0], stats["rembg"][0]
            if a.shape != b.shape:
                row += [f"size differs {a.shape[::-1]} vs {b.shape[::-1]}", ""]
            else:
                fa, fb = a > 127, b > 127
                union = np.count_nonzero(fa | fb)
                iou = np.count_nonzero(fa & fb) / union if union else 1.0
                ious.append(iou)
                diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()
                row += [f"{iou:.4f}", f"{diff:.2f}"]
        for t in results:
            _, coloured, clear = stats[t]
            row.append(f"{coloured:,} of {clear:,}")
        print("| " + " | ".join(row) + " |")
    if ious:
        print(f"\nIoU: mean {statistics.mean(ious):.4f}, min {min(ious):.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", default="", help="our worker binary; empty: rembg only")
    ap.add_argument("--rembg", required=True)
    ap.add_argument("--onnx", required=True, help="the ONNX file rembg runs (inside --models-dir)")
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--model", default="u2netp", choices=sorted(REMBG_SESSION))
    ap.add_argument("--photos", type=int, default=2)
    ap.add_argument("--megapixels", type=float, default=12.0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--small", type=int, default=0)
    ap.add_argument("--small-megapixels", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rembg-flags", default="", help="extra rembg p flags, e.g. -dc")
    ap.add_argument("--worker-flags", default="", help="extra worker remove flags, e.g. --keep-edge-colours")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()

    models_dir = os.path.abspath(args.models_dir)
    onnx = os.path.abspath(args.onnx)
    env_ours = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), RUST_LOG="warn")
    # rembg only loads a custom model from inside its home; U2NET_HOME, when set, wins over
    # REMBG_HOME, so drop it.
    env_rembg = dict(os.environ, OMP_NUM_THREADS=str(args.threads), REMBG_HOME=models_dir)
    env_rembg.pop("U2NET_HOME", None)
    extras = json.dumps({"model_path": onnx})

    tools = {}
    if args.worker:
        def ours(src, out):
            argv = [args.worker, "remove", src, "-o", out, "--model", args.model, "--models-dir", models_dir,
                    *shlex.split(args.worker_flags)]
            biggest = max(args.megapixels, args.small_megapixels)
            if biggest > 39:
                argv += ["--max-megapixels", str(biggest * 1.2)]
            return argv, env_ours
        tools["ours"] = ours

    def rembg(src, out):
        return ([args.rembg, "p", "-m", REMBG_SESSION[args.model], "-x", extras,
                 *shlex.split(args.rembg_flags), src, out], env_rembg)
    tools["rembg"] = rembg

    tmp = tempfile.mkdtemp(prefix="bench-cutout-")
    try:
        sets = []
        if args.photos > 0:
            sets.append(("large", args.photos, args.megapixels))
        if args.small > 0:
            sets.append(("small", args.small, args.small_megapixels))
        prepared = []
        for label, count, mp in sets:
            folder = os.path.join(tmp, f"{label}-photos")
            prepared.append((label, folder, make_photos(folder, count, mp)))
        try:
            versions = f"rembg {metadata.version('rembg')}, onnxruntime {metadata.version('onnxruntime')}"
        except metadata.PackageNotFoundError:  # the helper may run outside rembg's environment
            versions = "rembg (version unknown)"
        print(f"## Cut-out: `worker remove` vs `rembg p`, {args.model} ({os.path.basename(onnx)}), "
              f"{args.threads} thread(s) on {os.cpu_count()} core(s)")
        print(f"\n{versions}; ours: {args.worker or 'skipped'}; each tool is one process over the "
              "folder of photos, so per-photo numbers include its start-up; start-up = the same "
              "command on an empty folder.")
        for label, folder, photos in prepared:
            results = run_set(label, folder, photos, tools, args.runs, tmp)
            report(label, photos, results, args.runs)
    finally:
        if args.keep:
            print(f"\n(kept {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
