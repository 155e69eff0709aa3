"""The report page in a real headless browser (Chromium from the system's packages): slow suite only.

apt-get install -y chromium && pytest -m long tests/test_report_browser.py
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from genvae.testing import invoke_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
TINY = ["--preset", "cvae", "--set", "image_size=16", "--set", "encoder.width=8", "--set", "decoder.width=8"]

pytestmark = [pytest.mark.long, pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install chromium)")]


def chromium(*args: str) -> subprocess.CompletedProcess:
    assert CHROMIUM is not None  # the module is skipped without it
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_page_loads_and_shows_both_runs(tmp_path):
    for name, lr in (("a", "1e-3"), ("b", "3e-4")):
        assert invoke_cli(["build", *TINY, "-o", tmp_path / name]).exit_code == 0
        assert (
            invoke_cli(
                [
                    "train",
                    tmp_path / name,
                    "--max-steps",
                    "20",
                    "--batch-size",
                    "16",
                    "--log-every",
                    "4",
                    "--lr",
                    lr,
                    "--quiet",
                    "--device",
                    "cpu",
                ]
            ).exit_code
            == 0
        )
    page = tmp_path / "report.html"
    assert invoke_cli(["report", tmp_path / "a", tmp_path / "b", "-o", page]).exit_code == 0
    dom = chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0
    for text in (
        "Loss curves",
        "Loss curves by wall-clock time",
        ">a</h2>",
        ">b</h2>",
        "Samples, every epoch",
        "Reconstructions",
        "Config",
    ):
        assert text in dom.stdout, text
    shot = tmp_path / "report.png"
    chromium("--window-size=1400,2000", f"--screenshot={shot}", page.as_uri())
    import numpy as np
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1400, 2000)
        rgb = img.convert("RGB")
        colours = rgb.resize((70, 100)).getcolors(70 * 100)
        curves = np.asarray(rgb.crop((0, 0, 1400, 600)), dtype=np.int32)  # the first curves, at the page's top
    assert colours is not None and len(colours) > 50  # curves, grids and text, not a blank page
    # both runs' curves are drawn there, overlaid: matplotlib's first two line colours, C0 and C1
    for name, colour in (("a", (31, 119, 180)), ("b", (255, 127, 14))):
        near = int((np.abs(curves - np.array(colour)).sum(-1) < 60).sum())
        assert near > 200, f"run {name}'s curves: {near} pixels of its colour"
