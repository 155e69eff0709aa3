"""``mmd``: the unbiased MMD^2 against a hand double loop for both kernels, zero in expectation for equal
distributions and positive for different ones, the gradient reaching the encoder only, and the wae-mmd and info-vae
presets at three sizes and from the CLI."""

from __future__ import annotations

import math

import pytest
import torch

from genvae.core.compose import apply_sets, preset_spec
from genvae.core.model import build_model
from genvae.plugins.mmd import mmd2
from genvae.testing import check_component, invoke_cli

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["image_size=16", "channels=3", "encoder.width=8", "encoder.depth=2", "decoder.width=8", "decoder.depth=2"]
SCALES = (0.5, 2.0)


def kernel_by_hand(a: list[float], b: list[float], kernel: str) -> float:
    d = len(a)
    sq = sum((x - y) ** 2 for x, y in zip(a, b, strict=True))
    total = 0.0
    for s in SCALES:
        c = 2 * d * s
        total += c / (c + sq) if kernel == "imq" else math.exp(-sq / c)
    return total


def mmd_by_hand(x: list[list[float]], y: list[list[float]], kernel: str) -> float:
    n, m = len(x), len(y)
    xx = sum(kernel_by_hand(x[i], x[j], kernel) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(kernel_by_hand(y[i], y[j], kernel) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(kernel_by_hand(x[i], y[j], kernel) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_unbiased_estimate_matches_a_double_loop(kernel):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = torch.randn(4, 3, generator=g, dtype=torch.float64) * 2 + 1
    expected = mmd_by_hand(x.tolist(), y.tolist(), kernel)
    assert mmd2(x, y, kernel, SCALES).item() == pytest.approx(expected, rel=1e-10)
    assert expected > 0.01  # far enough apart that a wrong term shows


def test_imq_kernel_of_one_pair_in_closed_form():
    """Two points per side at distance^2 = 4 in d = 2, one scale s = 1: C = 4, k = C / (C + 4) = 1/2."""
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    y = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    # xx off-diagonal: 1/2; yy off-diagonal: 1; xy: (1 + 1 + 1/2 + 1/2) / 4 = 3/4
    assert mmd2(x, y, "imq", (1.0,)).item() == pytest.approx(0.5 + 1.0 - 2 * 0.75)


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_zero_in_expectation_for_equal_distributions_positive_otherwise(kernel):
    g = torch.Generator().manual_seed(0)
    same = torch.stack(
        [mmd2(torch.randn(16, 4, generator=g), torch.randn(16, 4, generator=g), kernel, SCALES) for _ in range(400)]
    )
    shifted = torch.stack(
        [
            mmd2(torch.randn(16, 4, generator=g) + 1.0, torch.randn(16, 4, generator=g), kernel, SCALES)
            for _ in range(400)
        ]
    )
    spread = same.std() / math.sqrt(len(same))
    assert same.mean().abs() < 4 * spread  # unbiased: the biased V-statistic would sit well above zero
    assert (same < 0).any()  # and so it can be negative
    assert shifted.mean() > same.mean() + 20 * spread


def tiny(preset: str, *extra: str):
    torch.manual_seed(0)
    return build_model(apply_sets(preset_spec(preset), [*TINY, *extra])).train()


def test_gradient_reaches_the_encoder_only_and_prior_samples_carry_none():
    model = tiny("wae-mmd", "loss.mmd.lam=3")
    fwd = model(torch.rand(8, 3, 16, 16) * 2 - 1)
    torch.manual_seed(5)
    term = model.losses["mmd"](fwd, "model")["mmd"]
    torch.manual_seed(5)
    y = model.prior.sample(8, model, "cpu")
    assert not y.requires_grad
    assert term.item() == pytest.approx(
        3 * mmd2(fwd.z.flatten(1), y.flatten(1), "imq", (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)).item(), rel=1e-5
    )
    term.backward()
    for part in (model.encoder, model.transform):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert all(p.grad is None for p in model.decoder.parameters())


def test_options_are_validated():
    with pytest.raises(Exception, match="kernel"):
        tiny("wae-mmd", "loss.mmd.kernel=laplace")
    with pytest.raises(Exception, match="scales"):
        tiny("wae-mmd", "loss.mmd.scales=[0, 1]")


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_conformance(kernel):
    check_component("loss", "mmd", {"kernel": kernel})


# -- the presets -------------------------------------------------------------------------------------------------
def test_presets_losses_and_the_infovae_mapping():
    assert [(s.name, s.weight) for s in preset_spec("wae-mmd").losses] == [("bce", 1.0), ("mmd", 1.0)]
    info = preset_spec("info-vae")
    assert [(s.name, s.weight) for s in info.losses] == [("bce", 1.0), ("kl", 1.0), ("mmd", 1.0)]  # alpha = 0
    assert info.losses[2].options["lam"] == 999.0  # alpha + lambda - 1, lambda = 1000


@pytest.mark.parametrize("preset", ["wae-mmd", "info-vae"])
@pytest.mark.parametrize("size", [16, 32, 64])
def test_presets_build_at_the_usual_sizes(preset, size):
    build_model(apply_sets(preset_spec(preset), [f"image_size={size}", "channels=3"]))


@pytest.mark.parametrize("preset", ["wae-mmd", "info-vae"])
def test_preset_trains_and_samples_from_the_cli(preset, tmp_path):
    args = [a for s in TINY for a in ("--set", s)]
    out = invoke_cli(["build", "--preset", preset, *args, "-o", tmp_path / "m"])
    assert out.exit_code == 0, out.output
    assert "added default" not in out.output  # mmd is the divergence: no kl added to wae-mmd
    run = invoke_cli(["train", tmp_path / "m", "--max-steps", "2", "--batch-size", "8", "--quiet"])
    assert run.exit_code == 0, run.output
    out = invoke_cli(["sample", tmp_path / "m", "-n", "4", "-o", tmp_path / "s.png"])
    assert out.exit_code == 0 and (tmp_path / "s.png").is_file(), out.output
