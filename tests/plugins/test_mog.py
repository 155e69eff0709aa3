"""``mog``: the learnable mixture-of-Gaussians prior against torch.distributions, the Monte Carlo KL's gradient to
its means, log-variances and weights, sampling (frequencies follow the weights; partial sampling is the exact
conditional), compositions and the ``vae-mog`` preset end to end."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import TINY_CVAE, one_line, sets
from torch import distributions as D

from genvae.core.compose import compose_spec
from genvae.core.errors import BuildError
from genvae.core.model import build_model
from genvae.plugins.mog import GaussianMixture
from genvae.testing import check_component, invoke_cli

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [*TINY_CVAE, "prior.components=3"]  # cvae at 16 px: latent 2x4x4
ZOO_16 = ["image_size=16", "encoder.width=8", "decoder.width=8", "encoder.depth=2", "decoder.depth=2"]


def reference(mixture: GaussianMixture) -> D.MixtureSameFamily:
    return D.MixtureSameFamily(
        D.Categorical(logits=mixture.logits),
        D.Independent(D.Normal(mixture.mean, torch.exp(0.5 * mixture.logvar)), 1),
    )


def random_mixture(k: int = 4, shape: tuple[int, ...] = (2, 3), seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    return GaussianMixture(
        torch.randn(k, generator=g), torch.randn(k, n, generator=g), torch.randn(k, n, generator=g) * 0.5, shape
    )


def test_log_prob_matches_mixture_same_family_with_and_without_draw_dims():
    mixture = random_mixture()
    z = torch.randn(5, 2, 3)
    assert mixture.log_prob(z).shape == (5,)
    assert torch.allclose(mixture.log_prob(z), reference(mixture).log_prob(z.flatten(1)), atol=1e-5)
    draws = torch.randn(3, 5, 2, 3)  # k draws per image
    assert mixture.log_prob(draws).shape == (3, 5)
    assert torch.allclose(mixture.log_prob(draws), reference(mixture).log_prob(draws.flatten(2)), atol=1e-5)


def test_one_component_by_hand():
    mixture = GaussianMixture(torch.zeros(1), torch.tensor([[0.5, -1.0]]), torch.tensor([[0.0, math.log(4.0)]]), (2,))
    by_hand = -0.5 * (2 * math.log(2 * math.pi) + math.log(4.0) + 0.25 + 4.0 / 4.0)
    assert mixture.log_prob(torch.tensor([[1.0, 1.0]])).item() == pytest.approx(by_hand)


def mog_model(*extra: str):
    torch.manual_seed(0)
    return build_model(compose_spec(preset="cvae", prior="mog", sets=[*TINY, *extra]))


def test_kl_is_monte_carlo_and_its_gradient_reaches_means_logvars_and_weights():
    model = mog_model()
    model.train()
    fwd = model(torch.rand(4, 3, 16, 16) * 2 - 1)
    q = fwd.posterior
    z = fwd.z.flatten(1)
    expected = D.Independent(D.Normal(q.mean.flatten(1), q.std.flatten(1)), 1).log_prob(z)
    expected = (expected - reference(model.prior.mixture()).log_prob(z)).mean()
    kl = model.phase_terms(fwd, "model")["kl"]
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5)
    prior = model.prior
    grads = torch.autograd.grad(kl, [prior.means, prior.logvars, prior.weights])
    assert all(g.abs().sum() > 0 for g in grads)


def test_sampling_frequencies_follow_the_weights():
    pi = torch.tensor([0.6, 0.3, 0.1])
    means = torch.tensor([[-10.0, 0.0], [0.0, 10.0], [10.0, 0.0]])
    mixture = GaussianMixture(pi.log(), means, torch.full((3, 2), math.log(0.01)), (2,))
    torch.manual_seed(0)
    z = mixture.sample(6000)
    which = torch.cdist(z, means).argmin(1)
    freq = torch.bincount(which, minlength=3).float() / 6000
    assert torch.allclose(freq, pi, atol=0.02)
    # the draws sit at their component's mean with its spread (0.1)
    assert (z - means[which]).std().item() == pytest.approx(0.1, rel=0.1)


def test_partial_sampling_draws_the_component_that_explains_the_kept_part():
    """Two far-apart components of equal weight: with the first element kept near component 1's mean, every draw's
    free element comes from component 1 (the conditional), never from component 0."""
    means = torch.tensor([[-5.0, -5.0], [5.0, 5.0]])
    mixture = GaussianMixture(torch.zeros(2), means, torch.full((2, 2), math.log(0.01)), (2,))
    mask = torch.tensor([True, False])
    torch.manual_seed(0)
    z = mixture.sample(200, fixed=torch.tensor([[4.9, 0.0]]), mask=mask)
    assert torch.all(z[:, 0] == 4.9)
    assert torch.all((z[:, 1] - 5.0).abs() < 1.0)


def test_prior_sample_keeps_fixed_groups():
    model = mog_model()
    z = model.prior.sample(64, model, "cpu")
    assert z.shape == (64, *model.layout.shape)
    fixed = torch.full((1, *model.layout.shape), 3.0)
    assert torch.equal(model.prior.sample(5, model, "cpu", fixed=fixed, fixed_groups=1), fixed.expand(5, -1, -1, -1))


def test_options_are_validated():
    with pytest.raises(Exception) as err:
        mog_model("prior.components=0")
    assert "components" in one_line(err)
    with pytest.raises(Exception) as err:
        mog_model("prior.init_spread=-1")
    assert "init_spread" in one_line(err)


def test_group_weights_are_refused():
    with pytest.raises(BuildError, match="prior 'mog' is not one diagonal Gaussian"):
        mog_model("loss.kl.group_weights=[1]")


def test_conformance():
    check_component("prior", "mog", {"components": 3})


CR_TINY = [
    "image_size=16",
    "encoder.width=4",
    "decoder.width=4",
    "encoder.max_width=8",
    "decoder.max_width=8",
    "transform.latent_channels=4",
    "transform.steps=2",
    "transform.hidden=8",
    "prior.components=2",
]


def test_composes_with_cr_lstm_once_the_per_step_kl_weights_go():
    """crvae weights the KL per time step, which a mixture's Monte Carlo KL cannot: refused in one line; without
    the weights the mixture spans all time steps and trains."""
    with pytest.raises(BuildError) as err:
        build_model(compose_spec(preset="crvae", prior="mog", sets=CR_TINY))
    assert "prior 'mog' is not one diagonal Gaussian" in one_line(err)
    model = build_model(compose_spec(preset="crvae", prior="mog", sets=[*CR_TINY, "loss.kl.group_weights=[]"]))
    model.train()
    terms = model.phase_terms(model(torch.rand(2, 3, 16, 16) * 2 - 1), "model")
    assert torch.isfinite(terms["kl"])
    terms["kl"].backward()
    assert model.prior.means.grad is not None and model.prior.means.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [16, 32, 64])
def test_preset_builds(size):
    build_model(compose_spec(preset="vae-mog", sets=[f"image_size={size}", "channels=3"]))


def test_cli_build_cvae_with_mog_and_preset_trains_and_samples(tmp_path):
    out = invoke_cli(["build", "--preset", "cvae", "--prior", "mog", *sets(TINY), "-o", tmp_path / "c"])
    assert out.exit_code == 0, out.output
    assert invoke_cli(["build", "--preset", "vae-mog", *sets(ZOO_16), "-o", tmp_path / "m"]).exit_code == 0
    run = invoke_cli(["train", tmp_path / "m", "--max-steps", "2", "--batch-size", "8", "--quiet"])
    assert run.exit_code == 0, run.output
    out = invoke_cli(["sample", tmp_path / "m", "-n", "4", "-o", tmp_path / "s.png"])
    assert out.exit_code == 0 and (tmp_path / "s.png").is_file(), out.output
