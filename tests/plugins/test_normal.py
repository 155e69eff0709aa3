"""The ``normal`` plugin: the standard Gaussian prior."""

from __future__ import annotations

import pytest
import torch

from genvae.core.components import Gaussian
from genvae.core.model import build_model
from genvae.testing import check_component, random_images, tiny_spec

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


def test_conformance():
    check_component("prior", "normal")


def test_conformance_on_a_spatial_latent():
    spec = tiny_spec("prior", "normal", encoder="conv", transform="conv", decoder="conv")
    check_component("prior", "normal", spec=spec)


@pytest.mark.parametrize("family", ["fc", "conv"])
def test_prior_is_standard_and_shaped_like_the_posterior(family):
    spec = tiny_spec("prior", "normal", encoder=family, transform=family, decoder=family)
    model = build_model(spec)
    fwd = model(random_images(spec))
    prior = fwd.prior
    assert isinstance(prior, Gaussian)
    assert prior.standard
    assert prior.mean.shape == prior.logvar.shape == fwd.posterior.mean.shape
    assert not prior.mean.any() and not prior.logvar.any()
    assert torch.equal(prior.std, torch.ones_like(prior.std))
    assert not list(model.prior.parameters())


def test_samples_are_standard_normal():
    spec = tiny_spec("prior", "normal", encoder="conv", transform="conv", decoder="conv")
    model = build_model(spec)
    torch.manual_seed(0)
    z = model.prior.sample(4000, model, "cpu")
    assert z.shape == (4000, *model.layout.shape)
    assert abs(z.mean().item()) < 0.02
    assert abs(z.std().item() - 1.0) < 0.02


def test_samples_follow_the_torch_seed():
    spec = tiny_spec("prior", "normal")
    model = build_model(spec)
    torch.manual_seed(3)
    a = model.prior.sample(5, model, "cpu")
    torch.manual_seed(3)
    b = model.prior.sample(5, model, "cpu")
    assert torch.equal(a, b)


def test_kl_against_the_prior_uses_the_closed_form():
    spec = tiny_spec("prior", "normal")
    model = build_model(spec)
    fwd = model(random_images(spec))
    general = Gaussian(fwd.prior.mean, fwd.prior.logvar)  # same numbers, general formula
    assert torch.allclose(fwd.posterior.kl(fwd.prior), fwd.posterior.kl(general), atol=1e-6)
