#!/usr/bin/env python3
"""Reference foreground colours from pymatting, for the foreground test in worker/tests/it/golden.rs.

    python3 worker/tests/golden/make_foreground.py

Needs: pip install pymatting pillow numpy. For each photo it takes the photo and U²-NetP's mask
(the golden mask next to this script, worker/tests/golden/u2netp/<photo>.mask.png, so the
alpha is exactly the one onnxruntime gives) and writes

  worker/tests/golden/foreground/<photo>.fg.png   pymatting.estimate_foreground_ml(image, alpha)
                                                  with its defaults, rounded to 8-bit RGB
"""
import os

import numpy as np
from PIL import Image
from pymatting import estimate_foreground_ml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PHOTOS = os.path.join(ROOT, "worker", "tests", "fixtures", "photos")
GOLDEN = os.path.join(ROOT, "worker", "tests", "golden")


def main():
    out_dir = os.path.join(GOLDEN, "foreground")
    os.makedirs(out_dir, exist_ok=True)
    for name in ["astronaut", "chelsea"]:
        image = np.asarray(Image.open(os.path.join(PHOTOS, f"{name}.png")).convert("RGB"), dtype=np.float64) / 255.0
        alpha = np.asarray(Image.open(os.path.join(GOLDEN, "u2netp", f"{name}.mask.png")).convert("L"), dtype=np.float64) / 255.0
        fg = estimate_foreground_ml(image, alpha)
        Image.fromarray(np.clip(np.round(fg * 255.0), 0, 255).astype(np.uint8)).save(os.path.join(out_dir, f"{name}.fg.png"))
        print(name, fg.shape, float(fg.min()), float(fg.max()))


if __name__ == "__main__":
    main()
