#!/usr/bin/env python3
"""onnxruntime on the original ONNX file, same photo and pre-processing as the golden fixtures.

    python3 scripts/bench_onnxruntime.py MODEL PHOTO [RUNS] [THREADS]

Prints one line of JSON like `worker bench`: median forward time on a fixed input tensor,
median rembg-style pipeline time (resize, normalise, run, min-max, mask resize, cut-out, PNG)
and peak memory.
"""
import io
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "worker", "tests", "golden"))
import make_golden  # noqa: E402  (the reference pre/post-processing)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from PIL import Image  # noqa: E402


def main():
    model, photo = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else os.cpu_count()
    root = make_golden.ROOT
    t0 = time.perf_counter()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(os.path.join(root, "models", model + ".onnx"), opts, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - t0) * 1e3
    cfg = make_golden.MODELS[model]
    img = Image.open(photo)
    img.load()
    _, tensor = make_golden.preprocess(img, cfg)
    feed = {sess.get_inputs()[0].name: tensor}

    def timed(f):
        t = time.perf_counter()
        f()
        return (time.perf_counter() - t) * 1e3

    first = timed(lambda: sess.run(None, feed))
    forward = statistics.median(timed(lambda: sess.run(None, feed)) for _ in range(runs))
    # CPU time per forward (see `worker bench`): robust to other load on the cores.
    c0 = time.process_time()
    for _ in range(runs):
        sess.run(None, feed)
    forward_cpu = (time.process_time() - c0) * 1e3 / runs

    def pipeline():
        im = Image.open(photo)
        _, x = make_golden.preprocess(im, cfg)
        pred = sess.run(None, {sess.get_inputs()[0].name: x})[0][0, 0]
        mask = make_golden.postprocess(pred, im, cfg)
        out = im.convert("RGB")
        out.putalpha(mask)
        out.save(io.BytesIO(), "PNG")

    pipe = statistics.median(timed(pipeline) for _ in range(runs))
    print(json.dumps({
        "runtime": "onnxruntime " + ort.__version__,
        "model": model,
        "input_size": cfg["size"],
        "threads": threads,
        "load_ms": load_ms,
        "first_forward_ms": first,
        "forward_ms": forward,
        "forward_cpu_ms": forward_cpu,
        "pipeline_ms": pipe,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
