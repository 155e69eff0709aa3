"""The ``mse`` plugin: squared-error reconstruction loss."""

from __future__ import annotations

import pytest
import torch
from helpers import forward_pass

from genvae.core.errors import OptionsError
from genvae.core.model import build_model
from genvae.testing import check_component, random_images, tiny_spec

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


@pytest.mark.parametrize("options", [None, {"reduction": "mean"}])
def test_conformance(options):
    check_component("loss", "mse", options)


def test_conformance_on_an_fc_model():
    check_component("loss", "mse", spec=tiny_spec("loss", "mse", encoder="fc", transform="fc", decoder="fc"))


def _loss(options=None, weight=1.0):
    spec = tiny_spec("loss", "mse", options, weight=weight)
    model = build_model(spec)
    return model, model.losses["mse"]


def test_value_by_hand_sum_reduction():
    model, loss = _loss()
    x = torch.zeros(2, 3, 16, 16)
    x_hat = torch.full((2, 3, 16, 16), 0.5)
    x_hat[1] = -0.25
    # per image: sum of squared errors; then the batch mean
    expected = (0.25 * 3 * 16 * 16 + 0.0625 * 3 * 16 * 16) / 2
    value = loss(forward_pass(model, x, x_hat), "model")["mse"]
    assert value.dim() == 0
    assert value.item() == pytest.approx(expected)


def test_value_by_hand_mean_reduction():
    model, loss = _loss({"reduction": "mean"})
    x = torch.zeros(2, 3, 16, 16)
    x_hat = torch.full((2, 3, 16, 16), 0.5)
    x_hat[1] = -0.25
    assert loss(forward_pass(model, x, x_hat), "model")["mse"].item() == pytest.approx((0.25 + 0.0625) / 2)


def test_value_matches_torch_on_a_real_pass():
    model, loss = _loss()
    x = random_images(model.spec)
    fwd = model(x)
    expected = torch.nn.functional.mse_loss(fwd.x_hat, x, reduction="sum") / x.shape[0]
    assert torch.allclose(loss(fwd, "model")["mse"], expected, rtol=1e-5)


def test_weight_multiplies_the_term():
    model, loss = _loss(weight=2.5)
    x = torch.zeros(1, 3, 16, 16)
    x_hat = torch.full((1, 3, 16, 16), 0.1)
    assert loss(forward_pass(model, x, x_hat), "model")["mse"].item() == pytest.approx(2.5 * 0.01 * 768, rel=1e-5)


def test_gradient_with_respect_to_the_reconstruction():
    model, loss = _loss()
    x = random_images(model.spec, batch=2)
    x_hat = torch.zeros_like(x, requires_grad=True)
    loss(forward_pass(model, x, x_hat), "model")["mse"].backward()
    assert x_hat.grad is not None and torch.allclose(x_hat.grad, 2 * (x_hat - x).detach() / 2)


def test_role_and_phase():
    _, loss = _loss()
    assert loss.role == "reconstruction"
    assert loss.phases == ("model",)


def test_unknown_reduction_is_refused():
    with pytest.raises(OptionsError) as info:
        build_model(tiny_spec("loss", "mse", {"reduction": "median"}))
    assert "loss 'mse'" in str(info.value) and "\n" not in str(info.value)
