"""The built-in ``shapes`` dataset: deterministic, varied, registered, fast, and needing nothing."""

from __future__ import annotations

import time

import pytest
import torch

from genvae.core.errors import DataError
from genvae.core.registry import get_registry
from genvae.plugins.shapes import PALETTE, load_shapes


@pytest.fixture(scope="module")
def train32():
    start = time.perf_counter()
    x = load_shapes(image_size=32, channels=3, split="train")
    return x, time.perf_counter() - start


def test_registered_by_plugin_shapes():
    entry = get_registry().get("dataset", "shapes")
    assert entry.plugin == "shapes" and entry.obj is load_shapes and entry.help
    assert get_registry().plugins["shapes"].status == "loaded"


def test_train_shape_dtype_and_speed(train32):
    x, seconds = train32
    assert x.shape == (4096, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
    assert seconds < 10, f"shapes took {seconds:.1f}s for 4096 images at 32 px (meant to be < 3 s)"


def test_deterministic_per_split(train32):
    x, _ = train32
    test_a = load_shapes(image_size=32, channels=3, split="test")
    test_b = load_shapes(image_size=32, channels=3, split="test")
    assert test_a.shape == (512, 3, 32, 32)
    assert torch.equal(test_a, test_b)
    assert not torch.equal(test_a, x[:512])
    # Same draws, any size: the first images match in layout (mean colour), not just in count.
    small = load_shapes(image_size=16, channels=3, split="test")
    assert (small.float().mean((2, 3)) - test_a.float().mean((2, 3))).abs().max() < 12


def _coverage(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: its fill colour (the pixel at the centroid of the shape) and each pixel's coverage 0..1."""
    f = x.float()
    weight = f.sum(1)  # (N, H, W); zero on the black background
    n, h, w = weight.shape
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    total = weight.sum((1, 2))
    cy = ((weight * ys).sum((1, 2)) / total).round().long()
    cx = ((weight * xs).sum((1, 2)) / total).round().long()
    fill = f[torch.arange(n), :, cy, cx]  # (N, 3)
    return fill, weight / fill.sum(1).view(n, 1, 1)


def test_one_shape_of_the_palette_on_black(train32):
    x, _ = train32
    assert (x[:, :, [0, 0, -1, -1], [0, -1, 0, -1]] == 0).all()  # the four corners are background
    fill, _ = _coverage(x)
    palette = torch.tensor(PALETTE, dtype=torch.float32)
    nearest = torch.cdist(fill, palette).min(1)
    assert (nearest.values == 0).all()  # each shape's inside is exactly one palette colour
    counts = torch.bincount(nearest.indices, minlength=len(PALETTE)).float() / len(x)
    assert (counts > 0.12).all() and (counts < 0.22).all()  # every colour, about equally often
    flat = x[:512].flatten(1)
    assert len({bytes(row.numpy()) for row in flat}) == 512  # no duplicates


def test_circles_squares_and_triangles_equally_often(train32):
    """Area over (widest row x tallest column): pi/4 for a circle, 1 for a square, 1/2 for a triangle."""
    x, _ = train32
    _, cover = _coverage(x)
    ratio = cover.sum((1, 2)) / (cover.sum(2).amax(1) * cover.sum(1).amax(1))
    kinds = torch.bucketize(ratio, torch.tensor([0.64, 0.9]))  # 0 triangle, 1 circle, 2 square
    assert ((ratio - 0.5).abs() < 0.1).float().mean() > 0.3
    assert ((ratio - 0.785).abs() < 0.1).float().mean() > 0.3
    assert ((ratio - 1.0).abs() < 0.1).float().mean() > 0.3
    assert torch.bincount(kinds, minlength=3).min() > 0.3 * len(x)
    # one size scale for all: a square's half side is 0.85 and a triangle's circumradius 1.2 circle radii,
    # so their mean areas are (1.7^2 / pi) = 0.92 and (3 sqrt(3) / 4 * 1.2^2 / pi) = 0.60 of the circles'
    area = cover.sum((1, 2))
    circles = area[kinds == 1].mean()
    assert area[kinds == 2].mean() / circles == pytest.approx(0.92, abs=0.05)
    assert area[kinds == 0].mean() / circles == pytest.approx(0.60, abs=0.05)
    # triangles point up: their top half holds less than their bottom half
    triangles = cover[kinds == 0]
    weight_rows = triangles.sum(2)  # (n, H)
    centre = (weight_rows * torch.arange(32)).sum(1) / weight_rows.sum(1)
    top = torch.stack([r[: int(c)].sum() for r, c in zip(weight_rows, centre, strict=True)])
    assert (top < weight_rows.sum(1) / 2).float().mean() > 0.95


def test_positions_and_sizes_vary(train32):
    x, _ = train32
    _, cover = _coverage(x)
    area = cover.sum((1, 2))
    assert area.min() < 0.1 * 32 * 32 and area.max() > 0.25 * 32 * 32
    h = torch.arange(32).float()
    cy = (cover.sum(2) * h).sum(1) / area
    cx = (cover.sum(1) * h).sum(1) / area
    assert cx.std() > 2 and cy.std() > 2 and 14 < cx.mean() < 17.5


def test_antialiased_edges(train32):
    """Supersampling leaves intermediate values at edges: more distinct values than flat colours."""
    x, _ = train32
    img = x[0, 0]
    assert len(torch.unique(img)) > 4


def test_unknown_split():
    with pytest.raises(DataError, match="no split 'val'.*train, test"):
        load_shapes(image_size=8, channels=3, split="val")
