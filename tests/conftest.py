"""Shared fixtures: tiny models and tiny data, so the whole suite runs in minutes on 2 CPU cores."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import TINY_CVAE

# Under pytest-xdist the workers, and every process they start, share the machine's cores: one torch thread each.
# With more threads than cores, OpenMP's waiting threads in one process take the cores another process needs;
# bf16's many short parallel regions suffer most (a bf16 run beside another 2-thread process ran at a fifth of
# its float32 speed, and the slow lane's notebook and guide at 1/60 of their usual speed).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
# Plugins installed in the test environment by hand must not change what the tests see.
os.environ.setdefault("GENVAE_LOAD_PLUGINS", "")
# The decoded-image cache of the test run lives in a folder of its own, never in the user's ~/.cache, and goes
# with the run.
if "GENVAE_CACHE" not in os.environ:
    os.environ["GENVAE_CACHE"] = tempfile.mkdtemp(prefix="genvae-test-cache-")
    atexit.register(shutil.rmtree, os.environ["GENVAE_CACHE"], ignore_errors=True)


@pytest.fixture
def tiny_data():
    """40 random-but-structured 16x16 RGB images (uint8) as ImageData."""
    from genvae.core.data import ImageData

    g = torch.Generator().manual_seed(0)
    base = torch.rand(40, 3, 4, 4, generator=g)
    images = torch.nn.functional.interpolate(base, size=16, mode="bilinear", align_corners=False)
    return ImageData(images=(images * 255).round().to(torch.uint8).contiguous(), source="tiny test images")


@pytest.fixture
def tiny_spec():
    from genvae.core.compose import compose_spec

    return compose_spec(preset="cvae", sets=TINY_CVAE)


@pytest.fixture
def genvae_exe() -> list[str]:
    """The installed console script, or ``python -m genvae.cli`` beside this interpreter."""
    script = Path(sys.executable).with_name("genvae")
    return [str(script)] if script.exists() else [sys.executable, "-m", "genvae.cli"]


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (tiny models run faster so); the caller's setting is restored. A test file
    of tiny models runs all its tests so: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    from genvae.testing import single_thread

    with single_thread():
        yield
