#!/usr/bin/env python3
"""Reference alpha mattes from pymatting, for the matting test in worker/tests/it/golden.rs.

    python3 worker/tests/golden/make_matting.py

Needs: pip install pymatting pillow numpy scipy. For each photo it takes the photo and U²-NetP's
mask (the golden mask next to this script, worker/tests/golden/u2netp/<photo>.mask.png), builds
the trimap exactly as rembg's `alpha_matting_cutout` does (mask > 240 subject, mask < 10
background, each eroded by a 10x10 square, the background with border_value=1) and writes

  worker/tests/golden/matting/<photo>.trimap.png   that trimap (255 / 0 / 128)
  worker/tests/golden/matting/<photo>.alpha.png    pymatting.estimate_alpha_cf(image, trimap)
                                                   with its defaults, rounded to 8 bits
"""
import os

import numpy as np
from PIL import Image
from pymatting import estimate_alpha_cf
from scipy.ndimage import binary_erosion

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PHOTOS = os.path.join(ROOT, "worker", "tests", "fixtures", "photos")
GOLDEN = os.path.join(ROOT, "worker", "tests", "golden")


def trimap_of(mask):
    structure = np.ones((10, 10), dtype=np.uint8)
    is_fg = binary_erosion(mask > 240, structure=structure)
    is_bg = binary_erosion(mask < 10, structure=structure, border_value=1)
    trimap = np.full(mask.shape, dtype=np.uint8, fill_value=128)
    trimap[is_fg] = 255
    trimap[is_bg] = 0
    return trimap


def main():
    out_dir = os.path.join(GOLDEN, "matting")
    os.makedirs(out_dir, exist_ok=True)
    for name in ["astronaut", "chelsea"]:
        image = np.asarray(Image.open(os.path.join(PHOTOS, f"{name}.png")).convert("RGB"))
        mask = np.asarray(Image.open(os.path.join(GOLDEN, "u2netp", f"{name}.mask.png")).convert("L"))
        trimap = trimap_of(mask)
        alpha = estimate_alpha_cf(image / 255.0, trimap / 255.0)
        Image.fromarray(trimap).save(os.path.join(out_dir, f"{name}.trimap.png"))
        Image.fromarray(np.clip(np.round(alpha * 255.0), 0, 255).astype(np.uint8)).save(
            os.path.join(out_dir, f"{name}.alpha.png")
        )
        print(name, image.shape, int((trimap == 128).sum()), "unknown")


if __name__ == "__main__":
    main()
