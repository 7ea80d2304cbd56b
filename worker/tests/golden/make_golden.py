#!/usr/bin/env python3
"""Golden outputs from onnxruntime on the original ONNX files, for worker/tests/it/golden.rs.

    python3 worker/tests/golden/make_golden.py --photos          # (re)make the photo fixtures
    python3 worker/tests/golden/make_golden.py u2netp [u2net isnet]

Needs: pip install onnxruntime numpy pillow (and scikit-image for --photos). The ONNX files are
the ones scripts/fetch-models.sh leaves in models/. For each model and photo it writes, under
worker/tests/golden/<model>/:

  <photo>.input.png   the photo resized to the model's input as the reference tool does it
                      (rembg: Pillow LANCZOS to 320x320; imgly IS-Net: bilinear to 1024x1024)
  <photo>.output.png  the network output (first ONNX output), 16-bit grayscale, value * 65535
  <photo>.mask.png    the final 8-bit mask at the photo's size (rembg: min-max rescale,
                      truncate to u8, LANCZOS back; IS-Net: round to u8, bilinear back)
"""
import os
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PHOTOS = os.path.join(ROOT, "worker", "tests", "fixtures", "photos")
GOLDEN = os.path.join(ROOT, "worker", "tests", "golden")

REMBG = dict(size=320, resample=Image.LANCZOS, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
MODELS = {
    "u2netp": dict(REMBG, kind="rembg"),
    "u2net": dict(REMBG, kind="rembg"),
    "isnet": dict(size=1024, resample=Image.BILINEAR, kind="imgly"),
}


def make_photos():
    """Small copies of scikit-image's public-domain sample photos (odd sizes on purpose)."""
    from skimage import data

    os.makedirs(PHOTOS, exist_ok=True)
    for name, size in [("astronaut", (256, 256)), ("chelsea", (301, 200))]:
        img = Image.fromarray(getattr(data, name)()).convert("RGB")
        img.resize(size, Image.LANCZOS).save(os.path.join(PHOTOS, name + ".png"), optimize=True)


def preprocess(img, cfg):
    im = img.convert("RGB").resize((cfg["size"], cfg["size"]), cfg["resample"])
    x = np.array(im)
    if cfg["kind"] == "rembg":
        x = x / np.max(x)
        t = np.zeros(x.shape)
        for c in range(3):
            t[:, :, c] = (x[:, :, c] - cfg["mean"][c]) / cfg["std"][c]
    else:
        t = (x.astype(np.float32) - 128.0) / 256.0
    return im, np.expand_dims(t.transpose((2, 0, 1)), 0).astype(np.float32)


def postprocess(pred, img, cfg):
    if cfg["kind"] == "rembg":
        ma, mi = np.max(pred), np.min(pred)
        pred = (pred - mi) / (ma - mi)
        mask = Image.fromarray((pred * 255).astype("uint8"), mode="L")
    else:
        mask = Image.fromarray(np.clip(pred * 255, 0, 255).round().astype("uint8"), mode="L")
    return mask.resize(img.size, cfg["resample"])


def main(models):
    import onnxruntime as ort

    for model in models:
        cfg = MODELS[model]
        sess = ort.InferenceSession(os.path.join(ROOT, "models", model + ".onnx"), providers=["CPUExecutionProvider"])
        out_dir = os.path.join(GOLDEN, model)
        os.makedirs(out_dir, exist_ok=True)
        for photo in sorted(os.listdir(PHOTOS)):
            stem = os.path.splitext(photo)[0]
            img = Image.open(os.path.join(PHOTOS, photo))
            resized, tensor = preprocess(img, cfg)
            pred = sess.run(None, {sess.get_inputs()[0].name: tensor})[0][0, 0]
            resized.save(os.path.join(out_dir, stem + ".input.png"), optimize=True)
            q = np.clip(np.round(pred.astype(np.float64) * 65535), 0, 65535).astype(np.uint16)
            Image.fromarray(q).save(os.path.join(out_dir, stem + ".output.png"), optimize=True)
            postprocess(pred, img, cfg).save(os.path.join(out_dir, stem + ".mask.png"), optimize=True)
            print(f"{model}/{stem}: output range [{pred.min():.4f}, {pred.max():.4f}]")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args == ["--photos"]:
        make_photos()
    else:
        main(args or ["u2netp"])
