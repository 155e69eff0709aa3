"""The reconstruction losses against numbers worked out by hand: ``mse``, ``bce`` and ``gaussian``, each
with its reduction (``sum``: per image, then the batch mean; ``mean``: over every element), its weight,
and its gradient; the crVAE presets' pixel MSE is the mean (the authors' nn.MSECriterion)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import forward_pass

from genvae.core.compose import preset_spec
from genvae.core.model import build_model
from genvae.testing import tiny_spec

PIXELS = 3 * 16 * 16


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


def loss_of(name, options=None, weight=1.0):
    model = build_model(tiny_spec("loss", name, options, weight=weight))
    return model, model.losses[name]


def two_images(first: float, second: float) -> torch.Tensor:
    """Two constant 3x16x16 images."""
    return torch.stack([torch.full((3, 16, 16), first), torch.full((3, 16, 16), second)])


def value(model, loss, x, x_hat=None, logits=None):
    fwd = forward_pass(model, x, x_hat, logits if logits is not None else torch.atanh(x_hat))
    return loss(fwd, "model")[loss.name]


# -- mse -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reduction, expected",
    [
        ("sum", (0.09 + 0.25) * PIXELS / 2),  # errors 0.3 and -0.5 on every pixel: per-image sums, batch mean
        ("mean", (0.09 + 0.25) / 2),
    ],
)
def test_mse_by_hand(reduction, expected):
    model, loss = loss_of("mse", {"reduction": reduction}, weight=2.0)
    x, x_hat = two_images(0.1, 0.2), two_images(0.4, -0.3)
    assert value(model, loss, x, x_hat).item() == pytest.approx(2.0 * expected, rel=1e-5)


def test_mse_gradient_by_hand():
    model, loss = loss_of("mse", {"reduction": "mean"})
    x = two_images(0.1, 0.2)
    x_hat = two_images(0.4, -0.3).requires_grad_()
    value(model, loss, x, x_hat).backward()
    expected = 2 * (x_hat - x).detach() / (2 * PIXELS)  # d/dx_hat of mean((x_hat - x)^2)
    assert x_hat.grad is not None and torch.allclose(x_hat.grad, expected, rtol=1e-6)


def test_crvae_presets_use_the_mean_pixel_mse():
    for name in ("crvae", "crvae-gan", "crvae-gan-no-mi", "vae-gan", "crvae-gan-small", "vae-gan-small"):
        (mse,) = [s for s in preset_spec(name).losses if s.name == "mse"]
        assert mse.options["reduction"] == "mean" and mse.weight == 1.0, name


# -- bce ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction, scale", [("sum", PIXELS), ("mean", 1)])
def test_bce_by_hand(reduction, scale):
    """x = 0.5 is target 0.75; logits ln(3)/2 give p = sigmoid(ln 3) = 0.75 (the entropy of 0.75);
    x = -1 is target 0 and logits 0 give p = 0.5 (log 2)."""
    model, loss = loss_of("bce", {"reduction": reduction}, weight=0.5)
    x = two_images(0.5, -1.0)
    logits = two_images(math.log(3.0) / 2, 0.0)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    expected = 0.5 * scale * (entropy + math.log(2.0)) / 2
    assert value(model, loss, x, logits=logits).item() == pytest.approx(expected, rel=1e-5)


def test_bce_gradient_by_hand():
    """d/da of BCE(sigmoid(2a), t) = 2 (sigmoid(2a) - t), per pixel, / batch for the sum reduction."""
    model, loss = loss_of("bce")
    x = two_images(0.5, -1.0)
    logits = two_images(0.2, -0.4).requires_grad_()
    value(model, loss, x, logits=logits).backward()
    expected = 2 * (torch.sigmoid(2 * logits.detach()) - (x + 1) / 2) / 2
    assert logits.grad is not None and torch.allclose(logits.grad, expected, rtol=1e-5)


# -- gaussian --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction, scale", [("sum", PIXELS), ("mean", 1)])
def test_gaussian_by_hand(reduction, scale):
    """NLL per pixel 0.5 * ((x - x_hat)^2 / sigma^2 + log sigma^2 + log 2 pi), sigma^2 = e^-1."""
    model, loss = loss_of("gaussian", {"reduction": reduction, "init_logvar": -1.0, "learn_variance": False}, 3.0)
    x, x_hat = two_images(0.1, 0.2), two_images(0.4, -0.3)
    per_pixel = [0.5 * (err**2 * math.e - 1.0 + math.log(2 * math.pi)) for err in (0.3, -0.5)]
    expected = 3.0 * scale * sum(per_pixel) / 2
    assert value(model, loss, x, x_hat).item() == pytest.approx(expected, rel=1e-5)


def test_gaussian_variance_gradient_by_hand():
    """d/d(log sigma^2) of the mean NLL = 0.5 * (1 - mean squared error / sigma^2)."""
    model, loss = loss_of("gaussian", {"reduction": "mean", "init_logvar": 0.0})
    x, x_hat = two_images(0.1, 0.2), two_images(0.4, -0.3)
    value(model, loss, x, x_hat).backward()
    assert loss.logvar.grad.item() == pytest.approx(0.5 * (1 - (0.09 + 0.25) / 2), rel=1e-5)
