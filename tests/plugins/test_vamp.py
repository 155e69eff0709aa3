"""``vamp``: the VampPrior mixture against torch.distributions, its Monte Carlo KL, the pseudo-inputs' path
through the encoder (one batch-norm update per step) and their gradient, sampling, and the CLI end to end."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import TINY_CVAE, sets
from torch import distributions as D

from genvae.core.components import Gaussian
from genvae.core.compose import compose_spec
from genvae.core.errors import BuildError
from genvae.core.model import build_model
from genvae.plugins.vamp import VampMixture
from genvae.testing import check_component, invoke_cli

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)

TINY = [*TINY_CVAE, "prior.components=3"]  # cvae: latent 2x2x2 (8 values)


def vamp_model(*extra):
    return build_model(compose_spec(preset="cvae", prior="vamp", sets=[*TINY, *extra]))


def test_mixture_log_prob_matches_torch_mixture_same_family():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(5, 2, 3, generator=g), torch.randn(5, 2, 3, generator=g) * 0.5
    z = torch.randn(7, 2, 3, generator=g)
    reference = D.MixtureSameFamily(
        D.Categorical(torch.ones(5)), D.Independent(D.Normal(mean.flatten(1), torch.exp(0.5 * logvar.flatten(1))), 1)
    )
    assert torch.allclose(VampMixture(Gaussian(mean, logvar)).log_prob(z), reference.log_prob(z.flatten(1)), atol=1e-5)


def test_one_component_is_that_gaussian():
    mean, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.0, math.log(4.0)]])
    z = torch.tensor([[1.0, 1.0]])
    by_hand = -0.5 * (2 * math.log(2 * math.pi) + math.log(4.0) + 0.25 + 4.0 / 4.0)
    assert VampMixture(Gaussian(mean, logvar)).log_prob(z).item() == pytest.approx(by_hand)


def test_kl_is_the_monte_carlo_estimate_at_the_pass_z():
    model = vamp_model()
    model.train()
    fwd = model(torch.rand(4, 3, 16, 16) * 2 - 1)
    q = fwd.posterior
    mixture = D.MixtureSameFamily(
        D.Categorical(torch.ones(3)),
        D.Independent(D.Normal(fwd.extra_posterior.mean.flatten(1), fwd.extra_posterior.std.flatten(1)), 1),
    )
    z = fwd.z.flatten(1)
    expected = D.Independent(D.Normal(q.mean.flatten(1), q.std.flatten(1)), 1).log_prob(z) - mixture.log_prob(z)
    expected = expected.mean()
    kl = model.phase_terms(fwd, "model")["kl"]
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5)
    # the pseudo-inputs learn from the KL term
    (grad,) = torch.autograd.grad(kl, [model.prior.pseudo])
    assert grad.abs().sum() > 0


def test_monte_carlo_average_converges_to_the_closed_form_for_one_component():
    """With K = 1 the mixture is one Gaussian: the average over many draws approaches the closed-form KL."""
    from genvae.core.components import ForwardPass

    model = vamp_model("prior.components=1", "loss.kl.mc_samples=3000")
    g = torch.Generator().manual_seed(1)
    q = Gaussian(torch.randn(2, 2, 2, 2, generator=g), torch.randn(2, 2, 2, 2, generator=g) * 0.3)
    p = Gaussian(torch.randn(1, 2, 2, 2, generator=g), torch.randn(1, 2, 2, 2, generator=g) * 0.3)
    fwd = ForwardPass(model, torch.zeros(2, 3, 16, 16))
    fwd.posterior, fwd.prior = q, VampMixture(p)
    torch.manual_seed(0)
    fwd.z = q.rsample()
    closed = q.kl(Gaussian(p.mean.expand_as(q.mean), p.logvar.expand_as(q.logvar))).flatten(1).sum(1)
    assert closed.min() > 1.0  # far enough apart that a wrong estimate shows
    estimate = model.losses["kl"].monte_carlo(fwd)
    assert torch.allclose(estimate, closed, rtol=0.05)


def batch_count(norm: torch.nn.modules.batchnorm._BatchNorm) -> int:
    assert norm.num_batches_tracked is not None
    return int(norm.num_batches_tracked.item())


def test_pseudo_inputs_share_the_batch_norm_update():
    model = vamp_model()
    norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms
    model.train()
    model(torch.rand(4, 3, 16, 16) * 2 - 1)
    assert all(batch_count(m) == 1 for m in norms)  # one update per forward, not two
    model.prior.sample(5, model, "cpu")  # sampling leaves the running statistics alone
    assert all(batch_count(m) == 1 for m in norms)


def test_sampling_keeps_fixed_groups_and_draws_near_a_component():
    model = vamp_model()
    model.eval()
    torch.manual_seed(0)
    z = model.prior.sample(64, model, "cpu")
    assert z.shape == (64, *model.layout.shape)
    centres = model.encode(model.prior.extra_inputs()).mean.flatten(1)
    nearest = torch.cdist(z.flatten(1), centres).min(1).values.mean()
    # draws sit around the components' means: closer than draws of a wide standard normal would
    assert nearest < torch.cdist(torch.randn(64, centres.shape[1]) * 3, centres).min(1).values.mean()
    fixed = torch.full((1, *model.layout.shape), 7.0)
    assert torch.equal(model.prior.sample(5, model, "cpu", fixed=fixed, fixed_groups=1), fixed.expand(5, -1, -1, -1))


def test_group_weights_need_a_factorised_prior():
    with pytest.raises(BuildError, match="group weights need a KL that factorises over the latent; prior 'vamp'"):
        vamp_model("loss.kl.group_weights=[1]")


def test_conformance():
    check_component("prior", "vamp", {"components": 3})


def test_cli_build_train_sample(tmp_path):
    args = sets(TINY)
    assert invoke_cli(["build", "--preset", "cvae", "--prior", "vamp", *args, "-o", tmp_path / "m"]).exit_code == 0
    run = invoke_cli(["train", tmp_path / "m", "--max-steps", "3", "--batch-size", "8", "--quiet"])
    assert run.exit_code == 0, run.output
    out = invoke_cli(["sample", tmp_path / "m", "-n", "4", "-o", tmp_path / "s.png"])
    assert out.exit_code == 0 and (tmp_path / "s.png").is_file(), out.output
