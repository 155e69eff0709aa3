"""The built-in ``shapes`` dataset: deterministic, varied, registered, fast, and needing nothing."""

from __future__ import annotations

import time

import pytest
import torch

from genvae.core.errors import DataError
from genvae.core.registry import get_registry
from genvae.plugins.shapes import load_shapes


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


def test_variety(train32):
    x, _ = train32
    f = x.float()
    assert f.std() > 40  # pixel values spread over the range
    assert f.mean((1, 2, 3)).std() > 15  # images differ in overall brightness / colour
    within = f[:256].flatten(1).std(1)
    assert (within > 5).all()  # every image has at least one visible shape on its background
    flat = x[:512].flatten(1)
    assert len({bytes(row.numpy()) for row in flat}) == 512  # no duplicates


def test_grey_channel_keeps_shapes_visible():
    g = load_shapes(image_size=16, channels=1, split="test")
    assert g.shape == (512, 1, 16, 16)
    assert (g.float().flatten(1).std(1) > 5).all()


def test_antialiased_edges(train32):
    """Supersampling leaves intermediate values at edges: more distinct values than flat colours."""
    x, _ = train32
    img = x[0, 0]
    assert len(torch.unique(img)) > 4


def test_unknown_split():
    with pytest.raises(DataError, match="no split 'val'.*train, test"):
        load_shapes(image_size=8, channels=3, split="val")
