"""Tests of the flow transform ``tanh-flow`` and the multi-sample loss ``renyi``: the log-determinant against
autograd's Jacobian, the Monte Carlo KL through the flow, the bound by hand with torch.distributions (alpha = 0
is genvae's own ``iwae`` bound, alpha = 1 the ELBO), the k draws it asks for, and genvae's conformance kit."""

from __future__ import annotations

import math

import genvae_plugin_example as plugin
import pytest
import torch
from torch import distributions as D
from torch.autograd.functional import jacobian

from genvae.api import ModelSpec, build_model, compose_spec, get_registry
from genvae.testing import check_component, plugin_registry

SMALL = ["image_size=16", "encoder.width=8", "encoder.depth=2", "decoder.width=8", "decoder.depth=2"]


@pytest.fixture(scope="module")
def registry():
    reg = get_registry()
    record = reg.plugins.get("resnet")
    if record is not None and record.status == "loaded" and record.module == plugin.__name__:
        return reg  # installed: found through the entry point
    return plugin_registry(plugin)


def build(registry, losses: str, *extra: str, train: bool = True):
    spec = compose_spec(
        encoder="conv",
        transform="tanh-flow",
        losses=losses,
        sets=[*SMALL, "transform.latent_dim=3", *extra],
        registry=registry,
    )
    torch.manual_seed(0)
    return build_model(spec, registry).train(train)


def images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_flow_log_det_is_the_jacobians(registry):
    transform = build(registry, "mse,kl").transform.double()
    with torch.no_grad():
        transform.s_raw.copy_(torch.tensor([-2.0, 0.5, 3.0]))
    z0 = torch.randn(4, 3, dtype=torch.float64) * 2
    z, log_det = transform.flow(z0)
    for row, value in zip(z0, log_det, strict=True):
        jac = jacobian(lambda v: transform.flow(v.unsqueeze(0))[0][0], row)
        assert value.item() == pytest.approx(torch.linalg.slogdet(jac).logabsdet.item(), abs=1e-10)
    assert (transform.scale() > -1).all() and not torch.equal(z, z0)


def test_kl_takes_the_flow(registry):
    model = build(registry, "mse,kl")
    fwd = model(images())
    kl = model.losses["kl"]
    assert not kl.closed_form  # a flow: the Monte Carlo estimate
    q0 = D.Independent(D.Normal(fwd.posterior.mean, fwd.posterior.std), 1)
    p = D.Independent(D.Normal(torch.zeros(3), torch.ones(3)), 1)
    _, log_det = model.transform.flow(fwd.z0)
    expected = (q0.log_prob(fwd.z0) - log_det - p.log_prob(fwd.z)).mean()
    assert torch.allclose(kl(fwd, "model")["kl"], expected, atol=1e-5)
    # encode() goes through the flow too
    model.eval()
    base_mean = model.transform.posterior(model.encoder(images())).mean
    assert torch.allclose(model.encode(images()).mean, model.transform.flow(base_mean)[0])


def by_hand(fwd) -> torch.Tensor:
    """log w per draw and image with torch.distributions (sigma 1)."""
    multi = fwd.multi
    log_px = D.Independent(D.Normal(multi.x_hat, 1.0), 3).log_prob(fwd.x)
    q0 = D.Independent(D.Normal(fwd.posterior.mean, fwd.posterior.std), 1)
    _, log_det = fwd.model.transform.flow(multi.z0.flatten(0, 1))
    log_q = q0.log_prob(multi.z0) - log_det.view(multi.k, -1)
    return log_px + D.Independent(D.Normal(torch.zeros(3), torch.ones(3)), 1).log_prob(multi.z) - log_q


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_renyi_bound_by_hand(registry, alpha):
    model = build(registry, "renyi", "loss.renyi.k=4", f"loss.renyi.alpha={alpha}")
    assert [loss.name for loss in model.losses.values()] == ["renyi"]  # the whole objective: no mse, no kl
    assert model.posterior_samples == 4
    fwd = model(images())
    log_w = by_hand(fwd)
    if alpha == 1.0:
        expected = -log_w.mean()
    else:
        expected = -((torch.logsumexp((1 - alpha) * log_w, 0) - math.log(4)) / (1 - alpha)).mean()
    assert torch.allclose(model.phase_terms(fwd, "model")["renyi"], expected, rtol=1e-5)
    assert fwd.logged["renyi.elbo"].item() == pytest.approx(log_w.mean().item(), rel=1e-5)


def test_alpha_zero_is_genvaes_iwae_bound(registry):
    """Beside genvae's built-in ``iwae`` (Gaussian likelihood, same sigma) on the same draws: the same value."""
    data = build(registry, "renyi").spec.to_dict()
    data["losses"] = [
        {"name": "renyi", "options": {"k": 3, "alpha": 0.0}},
        {"name": "iwae", "options": {"k": 3, "likelihood": "gaussian", "sigma": 1.0}},
    ]
    torch.manual_seed(0)
    model = build_model(ModelSpec.from_dict(data), registry).train()
    terms = model.phase_terms(model(images()), "model")
    assert torch.allclose(terms["renyi"], terms["iwae"], rtol=1e-5)


def test_conformance(registry):
    check_component("transform", "tanh-flow", {"latent_dim": 4}, registry=registry)
    check_component("loss", "renyi", {"k": 2}, registry=registry)
