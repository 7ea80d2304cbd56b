#!/usr/bin/env python3
"""Cold start, ours vs rembg's, same ONNX weights, in one run (see scripts/bench-coldstart.sh).

    python3 scripts/bench_coldstart.py WORKER_BIN REMBG_BIN MODEL [RUNS]

For each run, each measured from the moment the process is spawned:
- `worker serve` -> `/readyz` answers 200 (database migrated, model mapped and packed, one
  warm-up inference run);
- `rembg s` (its HTTP server, `u2net_custom` / `dis_custom` with `model_path` = our ONNX file)
  -> its first `POST /api/remove` answered: rembg creates its session on the first request, so
  that is when it is ready; also when it first answers HTTP at all;
- the CLIs, process start -> exit with the cut-out written: `worker remove` vs `rembg i`.
Prints one JSON line per run and a median summary.
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import requests

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
PHOTO = os.path.join(ROOT, "worker/tests/fixtures/photos/astronaut.png")
REMBG_SESSION = {"u2netp": "u2net_custom", "u2net": "u2net_custom", "isnet": "dis_custom"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(proc, check, timeout=300):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            if check():
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{proc.args[0]} not ready after {timeout} s")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def worker_ready_ms(worker, model, threads):
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, BACKLESS_WORKER_ADDR=f"127.0.0.1:{port}",
                   BACKLESS_DATABASE_URL=f"sqlite://{tmp}/backless.db?mode=rwc",
                   BACKLESS_STORAGE_URL=f"file://{tmp}/objects", BACKLESS_MODELS=model,
                   BACKLESS_MODELS_DIR=os.path.join(ROOT, "models"), RAYON_NUM_THREADS=str(threads),
                   RUST_LOG="warn")
        t0 = time.perf_counter()
        proc = subprocess.Popen([worker, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/readyz"
            wait_until(proc, lambda: requests.get(url, timeout=2).status_code == 200)
            return (time.perf_counter() - t0) * 1e3
        finally:
            stop(proc)


def rembg_ready_ms(rembg, model, threads):
    # rembg loads a custom model only from inside its home (point it at ours), and reads `extras`
    # from the query string.
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), REMBG_HOME=os.path.join(ROOT, "models"))
    extras = json.dumps({"model_path": os.path.join(ROOT, "models", model + ".onnx")})
    with open(PHOTO, "rb") as f:
        photo = f.read()
    t0 = time.perf_counter()
    proc = subprocess.Popen([rembg, "s", "--host", "127.0.0.1", "--port", str(port), "--no-ui", "-l", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(proc, lambda: requests.get(base + "/api", timeout=2).status_code == 200)
        listening = (time.perf_counter() - t0) * 1e3
        r = requests.post(base + "/api/remove", files={"file": ("a.png", photo, "image/png")},
                          data={"model": REMBG_SESSION[model]}, params={"extras": extras}, timeout=300)
        if r.status_code != 200 or not r.content.startswith(b"\x89PNG"):
            raise RuntimeError(f"rembg answered {r.status_code}: {r.content[:200]!r}")
        return listening, (time.perf_counter() - t0) * 1e3
    finally:
        stop(proc)


def cli_ms(argv, env):
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.perf_counter() - t0) * 1e3


def main():
    worker, rembg, model = sys.argv[1], sys.argv[2], sys.argv[3]
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    threads = int(os.environ.get("THREADS", os.cpu_count()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            ours = worker_ready_ms(worker, model, threads)
            listening, first = rembg_ready_ms(rembg, model, threads)
            ours_cli = cli_ms([worker, "remove", PHOTO, "-o", os.path.join(tmp, f"w{i}"), "--model", model,
                               "--models-dir", os.path.join(ROOT, "models")],
                              dict(os.environ, RAYON_NUM_THREADS=str(threads)))
            extras = json.dumps({"model_path": os.path.join(ROOT, "models", model + ".onnx")})
            rembg_cli = cli_ms([rembg, "i", "-m", REMBG_SESSION[model], "-x", extras, PHOTO,
                                os.path.join(tmp, f"r{i}.png")],
                               dict(os.environ, OMP_NUM_THREADS=str(threads), REMBG_HOME=os.path.join(ROOT, "models")))
            row = {"model": model, "run": i, "worker_ready_ms": round(ours), "rembg_listening_ms": round(listening),
                   "rembg_ready_ms": round(first), "worker_cli_ms": round(ours_cli), "rembg_cli_ms": round(rembg_cli)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k.endswith("_ms")}
    print(json.dumps({"model": model, "median": med,
                      "ready_ratio": round(med["worker_ready_ms"] / med["rembg_ready_ms"], 3),
                      "cli_ratio": round(med["worker_cli_ms"] / med["rembg_cli_ms"], 3)}), flush=True)


if __name__ == "__main__":
    main()
