"""genvae neighbours: exact nearest-neighbour search (pixel L2 on 0-255) and the command's grid."""

from __future__ import annotations

import torch
from click.testing import CliRunner
from helpers import SETS
from PIL import Image

from genvae.plugins.neighbours import CHUNK, nearest
from genvae.testing import genvae_cli


def test_nearest_exact_values_and_order():
    images = torch.tensor(
        [[[[0, 0], [0, 0]]], [[[10, 0], [0, 0]]], [[[3, 4], [0, 0]]], [[[255, 255], [255, 255]]]], dtype=torch.uint8
    )
    samples = torch.tensor([[[[0, 0], [0, 0]]], [[[250, 255], [255, 255]]]], dtype=torch.uint8)
    dist, idx = nearest(samples, images, k=3)
    assert idx.tolist() == [[0, 2, 1], [3, 1, 2]]  # 240^2+3*255^2 < 247^2+251^2+2*255^2
    assert torch.allclose(dist[0], torch.tensor([0.0, 5.0, 10.0], dtype=torch.float64))
    assert dist[1, 0].item() == 5.0  # |250 - 255|
    assert nearest(samples, images, k=10)[1].shape == (2, 4)  # k is capped at the data size


def test_nearest_across_chunks_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (CHUNK + 37, 1, 2, 2), generator=g, dtype=torch.uint8)
    samples = images[[5, CHUNK + 20]].clone()
    samples[0, 0, 0, 0] = (int(samples[0, 0, 0, 0]) + 1) % 256
    dist, idx = nearest(samples, images, k=4)
    brute = torch.cdist(samples.flatten(1).double(), images.flatten(1).double())
    expect_d, expect_i = brute.topk(4, dim=1, largest=False)
    assert torch.allclose(dist, expect_d)
    assert idx[1, 0].item() == CHUNK + 20 and dist[1, 0].item() == 0.0
    assert torch.equal(dist, dist.sort(1).values)
    assert set(idx[0].tolist()) == set(expect_i[0].tolist())


def test_neighbours_command_writes_rows_of_sample_and_neighbours(tmp_path):
    cli = genvae_cli()
    runner = CliRunner()
    assert runner.invoke(cli, ["build", "--preset", "cvae", *SETS, "-o", str(tmp_path / "m")]).exit_code == 0
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        Image.new("RGB", (16, 16), (40 * i, 255 - 40 * i, 100)).save(data / f"{i}.png")
    result = runner.invoke(
        cli,
        ["neighbours", str(tmp_path / "m"), "--data", str(data), "-n", "3", "-k", "4", "-o", str(tmp_path / "n.png")],
    )
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "n.png").size == (5 * 18 + 2, 3 * 18 + 2)  # 1 sample + 4 neighbours per row
    assert "nearest-image RMS difference per pixel" in result.output
    bad = runner.invoke(cli, ["neighbours", str(tmp_path / "m"), "-k", "0", "-o", str(tmp_path / "x.png")])
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1
