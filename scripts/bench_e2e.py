#!/usr/bin/env python3
"""End to end on embedded defaults: `backless-dev` (web + worker + Cloud Tasks emulator, SQLite,
local storage) started on free ports, photos uploaded through the public API one after another.

    python3 scripts/bench_e2e.py WORKER_BIN stages  [--model u2netp] [--megapixels 1] [--runs 5]
    python3 scripts/bench_e2e.py WORKER_BIN memory  [--model u2netp] [--images 200]
    python3 scripts/bench_e2e.py WORKER_BIN scaling [--model u2netp] [--sizes 1,6,12,24]

`stages`: upload -> `done` for a photo of that size, broken down by the job's own event times
(`elapsed_ms` of each stage since the job was created) plus the client's view of the upload.
`memory`: resident memory of the process after each of N photos in a row (the curve), from
/proc/PID/status. `scaling`: a fresh process per photo size; peak resident memory after one
photo minus the peak after start-up (model loaded), i.e. the per-image working memory.

Prints JSON lines. Photos are made from the repo's fixture photos (public domain), resized.
"""
import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import requests
from PIL import Image

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
PHOTOS = [os.path.join(ROOT, "worker/tests/fixtures/photos", p) for p in ("astronaut.png", "chelsea.png")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo_bytes(index, megapixels):
    """A JPEG of about `megapixels` MP from fixture `index`, 4:3."""
    img = Image.open(PHOTOS[index % len(PHOTOS)]).convert("RGB")
    h = int((megapixels * 1e6 * 3 / 4) ** 0.5)
    w = int(h * 4 / 3)
    img = img.resize((w, h), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class Service:
    """`backless-dev` in a temporary data folder; `with Service(...) as s:`."""

    def __init__(self, worker, model):
        self.worker, self.model = worker, model

    def __enter__(self):
        self.tmp = tempfile.TemporaryDirectory()
        port, emu, wport = free_port(), free_port(), free_port()
        env = dict(os.environ)
        env.update({
            "BACKLESS_WEB_ADDR": f"127.0.0.1:{port}",
            "BACKLESS_WORKER_ADDR": f"127.0.0.1:{wport}",
            "BACKLESS_EMULATOR_PORT": str(emu),
            "BACKLESS_DATABASE_URL": f"sqlite://{self.tmp.name}/backless.db?mode=rwc",
            "BACKLESS_STORAGE_URL": f"file://{self.tmp.name}/objects",
            "BACKLESS_MODELS": self.model,
            "BACKLESS_MODELS_DIR": os.path.join(ROOT, "models"),
            "BACKLESS_MAX_LIVE_JOBS_PER_CLIENT": "1000",
            # One client uploading back to back (about 3 photos a second with U²-NetP) is the
            # load being measured, not abuse to be limited.
            "BACKLESS_RATE_LIMIT_PER_IP": "0",
            "BACKLESS_RATE_LIMIT_PER_CLIENT": "0",
            "RUST_LOG": "warn",
        })
        self.proc = subprocess.Popen([self.worker], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{port}"
        self.worker_url = f"http://127.0.0.1:{wport}"
        self.http = requests.Session()
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if self.http.get(self.worker_url + "/readyz", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"backless-dev exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError("backless-dev did not become ready")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.tmp.cleanup()

    def rss_kib(self):
        return status_kib(self.proc.pid, "VmRSS")

    def hwm_kib(self):
        return status_kib(self.proc.pid, "VmHWM")

    def run_job(self, data):
        """Upload, follow the events to `done`, fetch the result, delete. Returns timings."""
        t0 = time.perf_counter()
        r = self.http.post(self.url + "/v1/jobs", files={"file": ("photo.jpg", data, "image/jpeg")},
                           data={"model": self.model})
        r.raise_for_status()
        created = r.json()
        uploaded_ms = (time.perf_counter() - t0) * 1e3
        job, auth = created["job"], {"Authorization": "Bearer " + created["token"]}
        stages = {}
        with self.http.get(self.url + f"/v1/jobs/{job['id']}/events", headers=auth, stream=True) as ev:
            for line in ev.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    e = json.loads(line[5:])
                    stages[e["stage"]] = e["elapsed_ms"]
                    if e["stage"] in ("done", "failed"):
                        break
        done_ms = (time.perf_counter() - t0) * 1e3
        if "done" not in stages:
            raise RuntimeError(f"job did not finish: {stages}")
        res = self.http.get(self.url + f"/v1/jobs/{job['id']}/result", headers=auth)
        res.raise_for_status()
        self.http.delete(self.url + f"/v1/jobs/{job['id']}", headers=auth)
        return {"client_upload_ms": round(uploaded_ms, 1), "client_done_ms": round(done_ms, 1),
                "stages_ms": stages, "result_bytes": len(res.content)}


def stages(args):
    data = photo_bytes(0, args.megapixels)
    with Service(args.dev_binary, args.model) as s:
        s.run_job(data)  # warm: first-touch of buffers, connection set-up
        for _ in range(args.runs):
            print(json.dumps({"mode": "stages", "model": args.model, "megapixels": args.megapixels,
                              **s.run_job(data)}), flush=True)


def memory(args):
    photos = [photo_bytes(i, mp) for i, mp in enumerate([0.5, 1, 2, 1])]
    with Service(args.dev_binary, args.model) as s:
        print(json.dumps({"mode": "memory", "image": 0, "rss_mib": s.rss_kib() / 1024,
                          "peak_mib": s.hwm_kib() / 1024}), flush=True)
        for i in range(1, args.images + 1):
            r = s.run_job(photos[i % len(photos)])
            print(json.dumps({"mode": "memory", "image": i, "rss_mib": round(s.rss_kib() / 1024, 1),
                              "peak_mib": round(s.hwm_kib() / 1024, 1),
                              "done_ms": r["client_done_ms"]}), flush=True)
        # The worker hands memory back once no job has finished for 2 s (server::trim_when_idle).
        time.sleep(3)
        print(json.dumps({"mode": "memory", "image": "idle", "rss_mib": round(s.rss_kib() / 1024, 1),
                          "peak_mib": round(s.hwm_kib() / 1024, 1)}), flush=True)


def scaling(args):
    for mp in [float(x) for x in args.sizes.split(",")]:
        data = photo_bytes(0, mp)
        with Service(args.dev_binary, args.model) as s:
            base = s.hwm_kib()
            r = s.run_job(data)
            peak = s.hwm_kib()
            print(json.dumps({"mode": "scaling", "model": args.model, "megapixels": mp,
                              "ready_peak_mib": round(base / 1024, 1), "peak_mib": round(peak / 1024, 1),
                              "working_mib": round((peak - base) / 1024, 1),
                              "done_ms": r["client_done_ms"]}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dev_binary", metavar="backless-dev")
    p.add_argument("mode", choices=["stages", "memory", "scaling"])
    p.add_argument("--model", default="u2netp")
    p.add_argument("--megapixels", type=float, default=1.0)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--sizes", default="1,6,12,24")
    args = p.parse_args()
    {"stages": stages, "memory": memory, "scaling": scaling}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
