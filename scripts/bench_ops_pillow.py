"""The operations `worker bench-ops` times, done the usual way in Pillow, on the same photo.

    python3 scripts/bench_ops_pillow.py PHOTO RUNS

Prints one JSON line per operation with the median milliseconds over RUNS, each on a fresh copy
of the decoded photo (copying is not timed). Pillow runs these single-threaded, as BackLess does.
"""
import io
import json
import statistics
import sys
import time

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

FONT = "worker/assets/fonts/DejaVuSans-Bold.ttf"


def watermark(im):
    # What `watermark:text=...,opacity=0.6` does: 5% of the shorter side, bottom right, a soft
    # shadow, alpha-composited.
    px = max(12, int(min(im.size) * 0.05))
    font = ImageFont.truetype(FONT, px)
    text = "BackLess sample"
    box = font.getbbox(text)
    w, h = box[2] - box[0], box[3] - box[1]
    margin = px // 2
    x, y = im.width - margin - w, im.height - margin - h
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    shadow = max(1, px // 16)
    draw.text((x + shadow, y + shadow), text, font=font, fill=(0, 0, 0, int(255 * 0.36)))
    draw.text((x, y), text, font=font, fill=(255, 255, 255, int(255 * 0.6)))
    return Image.alpha_composite(im.convert("RGBA"), layer).convert("RGB")


def encode(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def thumbnail(im):
    im.thumbnail((256, 256), Image.LANCZOS)
    return im


OPS = [
    ("resize_1200", lambda im: im.resize((1200, round(im.height * 1200 / im.width)), Image.LANCZOS)),
    ("thumbnail_256", thumbnail),
    ("watermark", watermark),
    ("grayscale", lambda im: im.convert("L")),
    ("blur_2", lambda im: im.filter(ImageFilter.GaussianBlur(2))),
    ("sharpen_1", lambda im: im.filter(ImageFilter.UnsharpMask(radius=1, percent=150, threshold=3))),
    ("brightness_1.3", lambda im: ImageEnhance.Brightness(im).enhance(1.3)),
    ("contrast_1.3", lambda im: ImageEnhance.Contrast(im).enhance(1.3)),
    ("encode_png", lambda im: encode(im, "PNG")),
    ("encode_jpeg_90", lambda im: encode(im, "JPEG", quality=90)),
    ("encode_webp_lossless", lambda im: encode(im, "WEBP", lossless=True)),
]


def main():
    photo, runs = sys.argv[1], int(sys.argv[2])
    data = open(photo, "rb").read()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        im = Image.open(io.BytesIO(data))
        im.load()
        times.append((time.perf_counter() - t) * 1e3)
    line = lambda op, ms: print(json.dumps({"tool": "pillow", "op": op, "ms": ms, "width": im.width, "height": im.height}))
    line("decode_jpeg", statistics.median(times))
    for name, fn in OPS:
        times = []
        for _ in range(runs):
            copy = im.copy()
            t = time.perf_counter()
            fn(copy)
            times.append((time.perf_counter() - t) * 1e3)
        line(name, statistics.median(times))


if __name__ == "__main__":
    main()
