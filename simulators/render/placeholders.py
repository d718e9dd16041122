"""Stand-in photos for the placeholder-image hosts (picsum.photos, via.placeholder.com), made
locally and deterministically: the asset proxy answers their URLs with these, offline."""

from __future__ import annotations

import hashlib
import io
import re
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

_PICSUM_PATH = re.compile(
    r"^/(?:(?:id|seed)/(?P<key>[\w-]+)/)?(?P<w>\d{1,5})(?:/(?P<h>\d{1,5}))?(?:\.(?:jpg|jpeg|png|webp))?/?$"
)
_PLACEHOLDER_PATH = re.compile(r"^/(?P<w>\d{1,5})(?:x(?P<h>\d{1,5}))?(?:\.(?:png|jpg|jpeg|gif|webp))?/?$")
MAX_PLACEHOLDER_SIDE = 5000  # picsum's own limit


@lru_cache(maxsize=64)
def placeholder_png(key: str, width: int, height: int) -> bytes:
    """A deterministic stand-in photo for picsum.photos: a diagonal two-colour gradient with a
    pale disc, colours derived from the image key, so the same URL always gives the same pixels."""
    digest = hashlib.sha256(key.encode()).digest()
    top = np.array([60 + digest[0] % 140, 60 + digest[1] % 140, 60 + digest[2] % 140], dtype=np.float32)
    bottom = np.array([20 + digest[3] % 80, 20 + digest[4] % 80, 20 + digest[5] % 80], dtype=np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = ((xs / max(width - 1, 1) + ys / max(height - 1, 1)) / 2)[..., None]
    image = Image.fromarray((top * (1 - t) + bottom * t).astype(np.uint8), "RGB")
    radius = max(2, min(width, height) // 6)
    cx, cy = width * (0.25 + (digest[6] % 50) / 100), height * 0.35
    ImageDraw.Draw(image).ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(245, 235, 200))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def placeholder_size(host: str, path: str) -> tuple[str, int, int] | None:
    """(key, width, height) for a placeholder-image URL we serve, else None."""
    if host in ("picsum.photos", "fastly.picsum.photos"):
        match = _PICSUM_PATH.match(path)
        key = match and (match["key"] or "default")
    elif host == "via.placeholder.com":
        match = _PLACEHOLDER_PATH.match(path)
        key = "via-placeholder"
    else:
        return None
    if not match:
        return None
    width = int(match["w"])
    height = int(match["h"] or width)
    if not (1 <= width <= MAX_PLACEHOLDER_SIDE and 1 <= height <= MAX_PLACEHOLDER_SIDE):
        return None
    return key, width, height
