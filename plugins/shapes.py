"""``shapes``: the built-in default dataset, drawn on the fly so that genvae runs with nothing downloaded.

Each image holds one filled circle, square or upright triangle in one of six bright colours, at a
random position and size, on black. The data set is kept this simple on purpose: five factors
(kind, colour, x, y, size) that a small convolutional VAE learns on a 2-core CPU in about three
minutes (the ``cvae-vamp`` preset), so a first run shows samples in which a person sees circles,
squares and triangles rather than colour blobs. Drawing is deterministic per split (train and test use different
seeds) and is done at up to 4x the size, then box-downsampled, for antialiased edges. Geometry is in
fractions of the image, so the data set looks the same at every image_size.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from genvae.api import DataError, DatasetLoader, RegisterNamed, hookimpl

SPLITS = {"train": (4096, 20240601), "test": (512, 20240602)}  # split -> (count, seed)
# Red, green, blue, yellow, cyan, magenta; each at least 100 grey levels above black, so shapes stay
# visible at channels=1.
PALETTE = ((230, 60, 60), (60, 200, 80), (70, 120, 255), (240, 210, 60), (60, 210, 220), (220, 90, 220))
KINDS = ("circle", "square", "triangle")


def _draw_one(rng: np.random.Generator, big: int) -> Image.Image:
    img = Image.new("RGB", (big, big), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    kind = KINDS[int(rng.integers(0, len(KINDS)))]
    fill = PALETTE[int(rng.integers(0, len(PALETTE)))]
    cx, cy = rng.uniform(0.35, 0.65, 2) * big
    size = rng.uniform(0.18, 0.32) * big  # radius of a circle; the others are scaled to look as big
    if kind == "circle":
        draw.ellipse((cx - size, cy - size, cx + size, cy + size), fill=fill)
    elif kind == "square":  # axis-aligned
        half = 0.85 * size
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    else:  # equilateral triangle, apex up (image y grows downwards)
        r = 1.2 * size
        angles = -np.pi / 2 + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        draw.polygon([(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a in angles], fill=fill)
    return img


def load_shapes(
    root: str | os.PathLike[str] | None = None,
    image_size: int = 32,
    channels: int = 3,
    split: str = "train",
    download: bool = False,
) -> torch.Tensor:
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
def genvae_register_datasets(register: RegisterNamed[DatasetLoader]) -> None:
    register(
        "shapes",
        load_shapes,
        help="built-in: 4096 train / 512 test procedural images, one coloured circle, square or "
        "triangle on black; needs no download",
    )
