"""``shapes``: the built-in default dataset, drawn on the fly so that genvae runs with nothing downloaded.

Each image holds 1-3 filled circles, rectangles or triangles in random colours on a random-colour
background. Drawing is deterministic per split (train and test use different seeds) and is done at
up to 4x the size, then box-downsampled, for antialiased edges. Geometry is in fractions of the
image, so the data set looks the same at every image_size.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from genvae.core.errors import DataError
from genvae.core.hookspecs import hookimpl

SPLITS = {"train": (4096, 20240601), "test": (512, 20240602)}  # split -> (count, seed)
MIN_LUMA_CONTRAST = 48  # a shape this close to its background in grey would vanish at channels=1


def _luma(c: np.ndarray) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    """A random colour visible against the background, in RGB and in grey."""
    for _ in range(32):
        c = rng.integers(0, 256, 3)
        if abs(_luma(c) - _luma(background)) >= MIN_LUMA_CONTRAST:
            break
    else:  # practically unreachable: fall back to the inverse of the background
        c = 255 - background
    return int(c[0]), int(c[1]), int(c[2])


def _draw_one(rng: np.random.Generator, big: int) -> Image.Image:
    background = rng.integers(0, 256, 3)
    img = Image.new("RGB", (big, big), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(0, 3))
        fill = _colour(rng, background)
        cx, cy = rng.uniform(0.2, 0.8, 2) * big
        if kind == 0:  # circle
            r = rng.uniform(0.1, 0.3) * big
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif kind == 1:  # axis-aligned rectangle
            hw, hh = rng.uniform(0.08, 0.3, 2) * big
            draw.rectangle((cx - hw, cy - hh, cx + hw, cy + hh), fill=fill)
        else:  # triangle: three vertices at spread-out angles around the centre
            r = rng.uniform(0.15, 0.35) * big
            angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
            angles += rng.uniform(-0.4, 0.4, 3)
            pts = [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a in angles]
            draw.polygon(pts, fill=fill)
    return img


def load_shapes(root=None, image_size: int = 32, channels: int = 3, split: str = "train",
                download: bool = False) -> torch.Tensor:
    """The shapes split as uint8 (N, channels, image_size, image_size); root and download are unused."""
    if split not in SPLITS:
        raise DataError(f"dataset 'shapes' has no split '{split}'; splits: {', '.join(SPLITS)}")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    count, seed = SPLITS[split]
    factor = max(1, min(4, 256 // image_size))  # supersampling, capped so big sizes stay fast
    big = image_size * factor
    rng = np.random.default_rng(seed)
    out = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
    for i in range(count):
        img = _draw_one(rng, big)
        if factor > 1:
            img = img.resize((image_size, image_size), Image.Resampling.BOX)
        out[i] = np.asarray(img)
    x = torch.from_numpy(out).permute(0, 3, 1, 2)
    if channels == 1:  # PIL's ITU-R 601-2 luma, as convert("L") does
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        x = (x.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    return x.contiguous()


@hookimpl
def genvae_register_datasets(register):
    register("shapes", load_shapes,
             help="built-in: 4096 train / 512 test procedural images of coloured shapes; needs no download")
