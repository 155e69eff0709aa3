"""The ``gaussian`` plugin: Gaussian likelihood with a learned or fixed observation variance."""

from __future__ import annotations

import pytest
import torch
from helpers import forward_pass
from torch.distributions import Normal

from genvae.core.model import build_model
from genvae.testing import check_component, random_images, tiny_spec

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


@pytest.mark.parametrize(
    "options",
    [None, {"learn_variance": False}, {"per_channel": True, "init_logvar": 0.5}, {"reduction": "mean"}],
)
def test_conformance(options):
    check_component("loss", "gaussian", options)


def _loss(options=None, weight=1.0, channels=3):
    model = build_model(tiny_spec("loss", "gaussian", options, weight=weight, channels=channels))
    return model, model.losses["gaussian"]


def test_nll_matches_torch_normal():
    model, loss = _loss({"init_logvar": -1.3})
    x = random_images(model.spec)
    fwd = model(x)
    std = torch.exp(0.5 * torch.tensor(-1.3))
    expected = -Normal(fwd.x_hat, std).log_prob(x).flatten(1).sum(1).mean()
    assert torch.allclose(loss(fwd, "model")["gaussian"], expected, rtol=1e-5)


def test_per_channel_nll_matches_torch_normal():
    model, loss = _loss({"per_channel": True})
    with torch.no_grad():
        loss.logvar.copy_(torch.tensor([-1.0, 0.0, 0.5]).view(1, 3, 1, 1))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    x_hat = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    std = torch.exp(0.5 * torch.tensor([-1.0, 0.0, 0.5])).view(1, 3, 1, 1)
    expected = -Normal(x_hat, std).log_prob(x).flatten(1).sum(1).mean()
    assert torch.allclose(loss(forward_pass(model, x, x_hat), "model")["gaussian"], expected, rtol=1e-5)


def test_mean_reduction_and_weight():
    model, loss = _loss({"reduction": "mean", "init_logvar": 0.0}, weight=3.0)
    x = torch.zeros(2, 3, 16, 16)
    x_hat = torch.full_like(x, 0.5)
    expected = 3.0 * -Normal(x_hat, 1.0).log_prob(x).mean()
    assert torch.allclose(loss(forward_pass(model, x, x_hat), "model")["gaussian"], expected, rtol=1e-6)


def test_learned_variance_is_a_parameter_that_gets_a_gradient():
    model, loss = _loss()
    assert isinstance(loss.logvar, torch.nn.Parameter)
    assert loss.logvar.shape == (1, 1, 1, 1)
    assert loss.logvar.item() == pytest.approx(-2.0)
    assert any(p is loss.logvar for p in model.parameters())
    fwd = model(random_images(model.spec))
    loss(fwd, "model")["gaussian"].backward()
    assert loss.logvar.grad is not None and loss.logvar.grad.abs().item() > 0
    assert "losses.gaussian.logvar" in model.state_dict()


def test_learned_variance_moves_towards_the_residual_variance():
    model, loss = _loss({"init_logvar": 0.0})
    x = torch.zeros(1, 3, 16, 16)
    x_hat = torch.full_like(x, 0.1)  # residual variance 0.01: the optimum is log(0.01)
    optimizer = torch.optim.Adam([loss.logvar], lr=0.1)
    for _ in range(200):
        optimizer.zero_grad()
        loss(forward_pass(model, x, x_hat), "model")["gaussian"].backward()
        optimizer.step()
    assert loss.logvar.item() == pytest.approx(torch.log(torch.tensor(0.01)).item(), abs=0.1)


def test_fixed_variance_is_a_buffer():
    model, loss = _loss({"learn_variance": False, "init_logvar": -0.5})
    assert not isinstance(loss.logvar, torch.nn.Parameter)
    assert not list(loss.parameters())
    assert dict(loss.named_buffers())["logvar"].item() == pytest.approx(-0.5)
    assert "losses.gaussian.logvar" in model.state_dict()  # saved with the model
    fwd = model(random_images(model.spec))
    loss(fwd, "model")["gaussian"].backward()
    assert loss.logvar.grad is None


def test_per_channel_variance_shape_on_gray_images():
    _, loss = _loss({"per_channel": True}, channels=1)
    assert loss.logvar.shape == (1, 1, 1, 1)
    _, loss = _loss({"per_channel": True}, channels=3)
    assert loss.logvar.shape == (1, 3, 1, 1)
