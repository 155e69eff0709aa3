"""The ``bce`` plugin: Bernoulli likelihood of pixels in [0, 1], computed from the logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import forward_pass

from genvae.core.model import build_model
from genvae.testing import check_component, random_images, tiny_spec

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


@pytest.mark.parametrize("options", [None, {"reduction": "mean"}])
def test_conformance(options):
    check_component("loss", "bce", options)


def test_conformance_on_an_fc_model():
    check_component("loss", "bce", spec=tiny_spec("loss", "bce", encoder="fc", transform="fc", decoder="fc"))


def test_it_is_the_reconstruction_loss_of_its_spec():
    spec = tiny_spec("loss", "bce")
    assert [s.name for s in spec.losses] == ["bce", "kl"]  # no mse added next to it


def _loss(options=None, weight=1.0):
    model = build_model(tiny_spec("loss", "bce", options, weight=weight))
    return model, model.losses["bce"]


def test_equals_torch_bce_on_probabilities():
    model, loss = _loss()
    x = random_images(model.spec)
    fwd = model(x)
    target = (x + 1) / 2
    probs = (fwd.x_hat + 1) / 2
    expected = F.binary_cross_entropy(probs, target, reduction="sum") / x.shape[0]
    assert torch.allclose(loss(fwd, "model")["bce"], expected, rtol=1e-4)


def test_mean_reduction_and_weight():
    model, loss = _loss({"reduction": "mean"}, weight=0.5)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    logits = torch.randn(3, 3, 16, 16, generator=g)
    expected = 0.5 * F.binary_cross_entropy((torch.tanh(logits) + 1) / 2, (x + 1) / 2)
    assert torch.allclose(loss(forward_pass(model, x, logits=logits), "model")["bce"], expected, rtol=1e-4)


def test_binary_images_by_hand():
    model, loss = _loss()
    x = torch.ones(1, 3, 16, 16)  # white: target 1 everywhere
    logits = torch.zeros(1, 3, 16, 16)  # x_hat = 0: probability 1/2
    value = loss(forward_pass(model, x, logits=logits), "model")["bce"]
    assert value.item() == pytest.approx(768 * torch.log(torch.tensor(2.0)).item(), rel=1e-5)


def test_stable_for_saturated_logits():
    model, loss = _loss()
    x = torch.cat([torch.ones(1, 3, 16, 16), -torch.ones(1, 3, 16, 16)])
    logits = torch.cat([torch.full((1, 3, 16, 16), -60.0), torch.full((1, 3, 16, 16), 60.0)]).requires_grad_()
    value = loss(forward_pass(model, x, logits=logits), "model")["bce"]
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(120.0 * 768, rel=1e-4)  # -log sigmoid(-120) = 120 per pixel
    value.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().max() > 0


def test_minimised_by_the_right_image():
    model, loss = _loss()
    x = torch.full((1, 3, 16, 16), 0.2)
    best = torch.atanh(x)  # x_hat == x
    values = [loss(forward_pass(model, x, logits=best + d), "model")["bce"].item() for d in (-0.3, 0.0, 0.3)]
    assert values[1] < values[0] and values[1] < values[2]
