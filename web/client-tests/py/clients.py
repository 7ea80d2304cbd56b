"""Two PyPI remove.bg clients, unchanged, pointed at BackLess by their module-level base URL.

usage: clients.py BASE_URL KEY PHOTO PHOTO_URL OUT_DIR    (exit status 0: every check passed)

- `removebg` (RemoveBg): a file (multipart) and base64 (form) with bg_color, and a URL (form).
- `remove-bg-api` (remove_bg_api): the account (GET /v1.0/account), a file, channels=alpha,
  format=zip (color.jpg + alpha.png), and a wrong key (403, raised by the client as
  ApiErrorCode403).
"""

import base64
import io
import os
import shutil
import struct
import sys
import zipfile

import remove_bg_api
import removebg.removebg as removebg_module

base, key, photo, photo_url, out = sys.argv[1:6]


def png_info(data):
    """(width, height, colour type) from a PNG's IHDR."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    width, height, _depth, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, colour


def check(name, cond, detail=""):
    print(("ok  " if cond else "FAIL"), name, detail, flush=True)
    if not cond:
        sys.exit(1)


# removebg: its endpoint is a module constant.
removebg_module.API_ENDPOINT = base + "/v1.0/removebg"
rb = removebg_module.RemoveBg(key, os.path.join(out, "removebg-error.log"))
local = os.path.join(out, "photo.png")
shutil.copy(photo, local)
rb.remove_background_from_img_file(local, size="regular")
with open(local + "_no_bg.png", "rb") as f:
    w, h, colour = png_info(f.read())
check("removebg: file -> RGBA PNG within 0.25 MP", colour == 6 and w * h <= 250_000, (w, h, colour))

with open(photo, "rb") as f:
    b64 = base64.b64encode(f.read()).decode()
coloured = os.path.join(out, "coloured.jpg")
rb.remove_background_from_base64_img(b64, size="regular", new_file_name=coloured, bg_color="81d4fa")
with open(coloured, "rb") as f:
    check("removebg: base64 + bg_color -> JPEG (format auto)", f.read(3) == b"\xff\xd8\xff")

from_url = os.path.join(out, "from-url.png")
rb.remove_background_from_img_url(photo_url, size="regular", new_file_name=from_url)
with open(from_url, "rb") as f:
    check("removebg: image_url -> PNG", png_info(f.read())[2] == 6)

# remove-bg-api: its base URL is a module constant; the constructor reads the account.
remove_bg_api.API_URL = base + "/v1.0"
api = remove_bg_api.RemoveBg(key)
before = api.account.balance()
check("remove-bg-api: account balance is a number", isinstance(before, (int, float)), before)
result = api.remove_bg_file(photo, raw=True)
check("remove-bg-api: file -> PNG", png_info(result)[2] == 6)
with open(photo, "rb") as f:
    mask = api.remove_bg_bytes(f.read(), data={"channels": "alpha", "size": "preview"})
check("remove-bg-api: channels=alpha -> greyscale PNG mask", png_info(mask)[2] == 0, png_info(mask))
with open(photo, "rb") as f:
    archive = api.remove_bg_bytes(f.read(), data={"format": "zip", "size": "preview"})
with zipfile.ZipFile(io.BytesIO(archive)) as z:
    names = z.namelist()
    check("remove-bg-api: format=zip -> color.jpg and alpha.png", names == ["color.jpg", "alpha.png"], names)
    colour_jpeg, alpha_png = z.read("color.jpg"), z.read("alpha.png")
check("remove-bg-api: the zip's color.jpg is a JPEG", colour_jpeg[:3] == b"\xff\xd8\xff")
aw, ah, acolour = png_info(alpha_png)
check("remove-bg-api: the zip's alpha.png is a grey matte within 0.25 MP", acolour == 0 and aw * ah <= 250_000, (aw, ah))
check(
    "remove-bg-api: the local balance went down by the credits charged",
    api.account.balance() == before - 3,
    (before, api.account.balance()),
)
try:
    remove_bg_api.RemoveBg("not-a-valid-key-0000")
    check("remove-bg-api: wrong key refused", False)
except remove_bg_api.Errors.ApiErrorCode403:
    check("remove-bg-api: wrong key -> 403", True)
