"""The ``kl`` plugin: KL(q(z|x) || p(z)) with optional weights per latent group."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from genvae.core.components import BuildContext, ForwardPass, Gaussian, LatentLayout, LatentTransform
from genvae.core.errors import BuildError, OptionsError
from genvae.core.hookspecs import hookimpl
from genvae.core.model import build_model
from genvae.core.options import options_from_dict
from genvae.plugins.kl import KLLoss
from genvae.testing import check_component, plugin_registry, random_images, tiny_spec

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)

GROUPS = (2, 3, 1)


class GroupedLatent(LatentTransform):
    """A vector latent in groups of 2, 3 and 1 elements (a stand-in for a channel-recurrent latent)."""

    name = "grouped"

    def __init__(self, options, ctx: BuildContext):
        super().__init__(options, ctx)
        self.layout = LatentLayout((sum(GROUPS),), GROUPS, "step")
        self.output_shape = (8,)
        assert ctx.encoder is not None
        self.to_params = nn.Linear(math.prod(ctx.encoder.output_shape), 2 * sum(GROUPS))
        self.from_z = nn.Linear(sum(GROUPS), 8)

    def posterior(self, features, fwd=None):
        mean, logvar = self.to_params(features.flatten(1)).chunk(2, dim=1)
        return Gaussian(mean, logvar)

    def generate(self, z, fwd=None):
        return torch.relu(self.from_z(z))


class GroupedPlugin:
    @hookimpl
    def genvae_register_transforms(self, register):
        register(GroupedLatent)


@pytest.fixture(scope="module")
def registry():
    return plugin_registry(GroupedPlugin())


def grouped_spec(registry, group_weights=None, weight=1.0):
    options = {} if group_weights is None else {"group_weights": group_weights}
    return tiny_spec("loss", "kl", options, weight=weight, registry=registry, transform="grouped")


# -- conformance -----------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [None, {"group_weights": [0.5]}])
def test_conformance(options):
    check_component("loss", "kl", options)


def test_conformance_with_group_weights(registry):
    check_component("loss", "kl", spec=grouped_spec(registry, [1.0, 0.5, 0.0]), registry=registry)


def test_grouped_test_transform_conforms(registry):
    # the test double itself honours the transform contract (third-party path of the kit)
    spec = check_component("transform", "grouped", registry=registry)
    assert spec.decoder.name == "fc"  # vector u: the kit fell back to fc partners


# -- values ---------------------------------------------------------------------------------------------


def _reference(posterior: Gaussian, prior_mean=0.0, prior_std=1.0) -> torch.Tensor:
    """KL per latent element with torch.distributions, (B, numel)."""
    q = Normal(posterior.mean, torch.exp(0.5 * posterior.logvar))
    p = Normal(torch.as_tensor(prior_mean), torch.as_tensor(prior_std))
    return kl_divergence(q, p).flatten(1)


@pytest.mark.parametrize("family", ["fc", "conv"])
def test_matches_torch_kl_against_standard_normal(family):
    spec = tiny_spec("loss", "kl", encoder=family, transform=family, decoder=family)
    model = build_model(spec)
    fwd = model(random_images(spec))
    expected = _reference(fwd.posterior).sum(1).mean()
    assert torch.allclose(model.losses["kl"](fwd, "model")["kl"], expected, rtol=1e-5)


def test_matches_torch_kl_against_a_general_gaussian():
    spec = tiny_spec("loss", "kl")
    model = build_model(spec)
    fwd = model(random_images(spec))
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(fwd.posterior.mean.shape, generator=g)
    logvar = torch.randn(fwd.posterior.mean.shape, generator=g) * 0.5
    fwd.prior = Gaussian(mean, logvar)
    expected = _reference(fwd.posterior, mean, torch.exp(0.5 * logvar)).sum(1).mean()
    assert torch.allclose(model.losses["kl"](fwd, "model")["kl"], expected, rtol=1e-5)


def test_zero_for_a_posterior_equal_to_the_prior():
    spec = tiny_spec("loss", "kl")
    model = build_model(spec)
    fwd = ForwardPass(model, random_images(spec))
    fwd.posterior = Gaussian(torch.zeros(4, *model.layout.shape), torch.zeros(4, *model.layout.shape))
    fwd.prior = Gaussian.standard_like(fwd.posterior)
    assert model.losses["kl"](fwd, "model")["kl"].item() == 0.0


def test_loss_weight_multiplies():
    spec = tiny_spec("loss", "kl", weight=0.25)
    model = build_model(spec)
    fwd = model(random_images(spec), sample=False)
    expected = 0.25 * _reference(fwd.posterior).sum(1).mean()
    assert torch.allclose(model.losses["kl"](fwd, "model")["kl"], expected, rtol=1e-5)


# -- group weights ------------------------------------------------------------------------------------


def _kl_with(model, fwd, group_weights):
    cls = type(model.losses["kl"])
    options = options_from_dict(cls.Options, {"group_weights": group_weights}, "loss 'kl'")
    loss = cls(options, BuildContext(image_shape=model.spec.image_shape, transform=model.transform))
    return loss(fwd, "model")["kl"]


def test_group_weights_apply_per_group(registry):
    model = build_model(grouped_spec(registry, [1.0, 1.0, 1.0]), registry)
    fwd = model(random_images(model.spec), sample=False)
    per_element = _reference(fwd.posterior)
    per_group = torch.stack([part.sum(1) for part in per_element.split(list(GROUPS), dim=1)], 1).mean(0)
    total = model.losses["kl"](fwd, "model")["kl"]
    assert torch.allclose(total, per_group.sum(), rtol=1e-5)
    for g in range(len(GROUPS)):
        weights = [1.0] * len(GROUPS)
        weights[g] = 0.0
        # a zero weight removes exactly that group's KL
        assert torch.allclose(_kl_with(model, fwd, weights), total - per_group[g], rtol=1e-5, atol=1e-6)
    weighted = _kl_with(model, fwd, [0.5, 2.0, 0.0])
    assert torch.allclose(weighted, 0.5 * per_group[0] + 2.0 * per_group[1], rtol=1e-5)


def test_per_group_report(registry):
    model = build_model(grouped_spec(registry, [0.0, 0.0, 1.0]), registry)
    fwd = model(random_images(model.spec))
    kl = model.losses["kl"]
    assert isinstance(kl, KLLoss)
    report = kl.per_group(fwd)
    assert report.shape == (3,)
    # unweighted, whatever group_weights say; sums to the unweighted total
    assert torch.allclose(report.sum(), _reference(fwd.posterior).sum(1).mean(), rtol=1e-5)


def test_group_weights_on_a_one_group_latent_scale_everything():
    spec = tiny_spec("loss", "kl", {"group_weights": [0.5]})
    model = build_model(spec)
    fwd = model(random_images(spec), sample=False)
    expected = 0.5 * _reference(fwd.posterior).sum(1).mean()
    assert torch.allclose(model.losses["kl"](fwd, "model")["kl"], expected, rtol=1e-5)


def test_group_weights_are_not_saved():
    model = build_model(tiny_spec("loss", "kl", {"group_weights": [0.5]}))
    assert not any(k.startswith("losses.kl") for k in model.state_dict())


@pytest.mark.parametrize("weights", [[1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
def test_wrong_number_of_group_weights_is_a_build_error(registry, weights):
    with pytest.raises(BuildError) as info:
        build_model(grouped_spec(registry, weights), registry)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("loss 'kl': ")
    assert f"{len(weights)} group_weights" in message and "'grouped'" in message and "3 step" in message


def test_wrong_number_on_a_conv_latent():
    with pytest.raises(BuildError, match="2 group_weights given, but latent transform 'conv' has 1"):
        build_model(tiny_spec("loss", "kl", {"group_weights": [1, 1]}))


@pytest.mark.parametrize("weights", [[-1.0], "a,b"])
def test_bad_group_weights_are_options_errors(weights):
    with pytest.raises(OptionsError) as info:
        build_model(tiny_spec("loss", "kl", {"group_weights": weights}))
    assert "loss 'kl'" in str(info.value) and "\n" not in str(info.value)


def test_group_weights_from_the_command_line():
    kl = build_model(tiny_spec("loss", "kl")).losses["kl"]
    assert isinstance(kl, KLLoss)
    cls = type(kl)
    options = options_from_dict(cls.Options, {"group_weights": "[1, 0.5,0]"}, "loss 'kl'")
    assert options.group_weights == (1.0, 0.5, 0.0)


def test_alphas_weight_each_group_by_one_minus_alpha(registry):
    model = build_model(grouped_spec(registry), registry)
    fwd = model(random_images(model.spec), sample=False)
    per_element = _reference(fwd.posterior)
    per_group = torch.stack([part.sum(1) for part in per_element.split(list(GROUPS), dim=1)], 1).mean(0)
    kl = model.losses["kl"]
    assert isinstance(kl, KLLoss)
    cls = type(kl)
    options = options_from_dict(cls.Options, {"alphas": [0.0, 0.75, 1.0]}, "loss 'kl'")
    loss = cls(options, BuildContext(image_shape=model.spec.image_shape, transform=model.transform))
    expected = per_group[0] + 0.25 * per_group[1]
    assert torch.allclose(loss(fwd, "model")["kl"], expected, rtol=1e-5)
    with pytest.raises(OptionsError, match="not both"):
        options_from_dict(cls.Options, {"alphas": [0.5] * 3, "group_weights": [1] * 3}, "loss 'kl'")
    with pytest.raises(BuildError, match="2 alphas given"):
        build_model(tiny_spec("loss", "kl", {"alphas": [0.5, 0.5]}))
