"""``top-down``: the two-layer prior p(z2) p(z1|z2) against torch.distributions by hand, what each group's density
depends on (gradients), per-draw conditioning, ancestral and partial sampling, the ``fc`` transform's ``groups``,
refusals and the ``two-layer-vae`` preset end to end."""

from __future__ import annotations

import pytest
import torch
from helpers import one_line, sets
from torch import distributions as D

from genvae.core.compose import compose_spec
from genvae.core.errors import BuildError
from genvae.core.model import build_model
from genvae.plugins.top_down import TopDownDistribution
from genvae.testing import check_component, invoke_cli

pytestmark = pytest.mark.usefixtures("one_thread")

ZOO_16 = ["image_size=16", "encoder.width=8", "decoder.width=8", "encoder.depth=2", "decoder.depth=2"]
TINY = [*ZOO_16, "transform.latent_dim=6", "prior.hidden=[5]"]  # z2: 3 values, z1: 3 values


def td_model(*extra: str, train: bool = True):
    torch.manual_seed(0)
    model = build_model(compose_spec(preset="two-layer-vae", sets=[*TINY, *extra]))
    with torch.no_grad():  # the head starts at zero (p(z1|z2) = N(0, I)); make it depend on z2
        for p in model.prior.net.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return model.train(train)


def by_hand(dist: TopDownDistribution, z: torch.Tensor) -> torch.Tensor:
    """log N(z2; 0, I) + log N(z1; mu(z2), sigma^2(z2)) with torch.distributions, one image at a time."""
    out = []
    for row in z.reshape(-1, z.shape[-1]):
        z2, z1 = row[: dist.upper], row[dist.upper :]
        mean, logvar = dist.net(z2.unsqueeze(0))[0].chunk(2)
        upper = D.Independent(D.Normal(torch.zeros(3), torch.ones(3)), 1).log_prob(z2)
        lower = D.Independent(D.Normal(mean, torch.exp(0.5 * logvar)), 1).log_prob(z1)
        out.append(upper + lower)
    return torch.stack(out).view(z.shape[:-1])


def test_log_prob_matches_torch_distributions_per_image_and_per_draw():
    model = td_model()
    dist = model.prior.distribution()
    z = torch.randn(4, 6)
    assert torch.allclose(dist.log_prob(z), by_hand(dist, z), atol=1e-5)
    draws = torch.randn(3, 4, 6)  # each draw's z1 is conditioned on its own z2
    assert dist.log_prob(draws).shape == (3, 4)
    assert torch.allclose(dist.log_prob(draws), by_hand(dist, draws), atol=1e-5)


def test_starts_as_a_standard_normal():
    torch.manual_seed(0)
    model = build_model(compose_spec(preset="two-layer-vae", sets=TINY))
    z = torch.randn(5, 6)
    standard = D.Independent(D.Normal(torch.zeros(6), torch.ones(6)), 1).log_prob(z)
    assert torch.allclose(model.prior.distribution().log_prob(z), standard, atol=1e-6)


def test_upper_density_ignores_z1_and_lower_density_depends_on_z2():
    model = td_model()
    dist = model.prior.distribution()
    z = torch.randn(4, 6, requires_grad=True)
    upper_only = dist.log_prob(z) - dist.conditional(z[:, :3]).log_prob(z[:, 3:])
    (grad,) = torch.autograd.grad(upper_only.sum(), [z])
    assert torch.all(grad[:, 3:] == 0) and torch.allclose(grad[:, :3], -z[:, :3])  # d/dz2 log N(z2; 0, I)
    lower = dist.conditional(z[:, :3]).log_prob(z[:, 3:])
    (grad,) = torch.autograd.grad(lower.sum(), [z])
    assert grad[:, :3].abs().sum() > 0 and grad[:, 3:].abs().sum() > 0


def test_kl_is_the_monte_carlo_estimate_and_reaches_the_prior_network():
    model = td_model()
    fwd = model(torch.rand(4, 1, 16, 16) * 2 - 1)
    q = fwd.posterior
    log_q = D.Independent(D.Normal(q.mean, q.std), 1).log_prob(fwd.z)
    expected = (log_q - by_hand(model.prior.distribution(), fwd.z)).mean()
    kl = model.phase_terms(fwd, "model")["kl"]
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5)
    grads = torch.autograd.grad(kl, list(model.prior.net.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)


def test_sampling_is_ancestral_and_keeps_fixed_groups():
    model = td_model(train=False)
    prior = model.prior
    torch.manual_seed(0)
    z = prior.sample(4000, model, "cpu")
    assert z.shape == (4000, 6)
    z2, z1 = z[:, :3], z[:, 3:]
    assert z2.mean(0).abs().max() < 0.1 and (z2.std(0) - 1).abs().max() < 0.1  # z2 ~ N(0, I)
    cond = prior.distribution().conditional(z2)
    standardised = (z1 - cond.mean) / cond.std  # z1 ~ p(z1 | its own z2): standard normal once standardised
    assert standardised.mean(0).abs().max() < 0.1 and (standardised.std(0) - 1).abs().max() < 0.1
    fixed = torch.randn(1, 6)
    one = prior.sample(500, model, "cpu", fixed=fixed, fixed_groups=1)
    assert torch.equal(one[:, :3], fixed[:, :3].expand(500, -1))
    cond = prior.distribution().conditional(fixed[:, :3])
    assert torch.allclose(one[:, 3:].mean(0), cond.mean[0], atol=4 * cond.std.max().item() / 500**0.5)
    assert torch.equal(prior.sample(3, model, "cpu", fixed=fixed, fixed_groups=2), fixed.expand(3, -1))


def test_fc_groups_split_the_latent_and_default_to_one():
    model = td_model()
    assert model.layout.group_sizes == (3, 3)
    plain = build_model(compose_spec(preset="vae-mog", sets=ZOO_16))
    assert plain.layout.group_sizes == (16,)
    with pytest.raises(Exception) as err:
        build_model(compose_spec(preset="two-layer-vae", sets=[*ZOO_16, "transform.latent_dim=7"]))
    assert "groups 2 must divide latent_dim 7" in one_line(err)


def test_refuses_a_latent_without_two_groups():
    with pytest.raises(BuildError) as err:
        build_model(compose_spec(preset="vae-mog", prior="top-down", sets=ZOO_16))
    assert "needs a latent of two groups" in one_line(err) and "transform.groups=2" in str(err.value)


def test_conformance():
    spec = compose_spec(preset="two-layer-vae", sets=[*TINY, "channels=3"])
    check_component("prior", "top-down", spec=spec)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_preset_builds(size):
    build_model(compose_spec(preset="two-layer-vae", sets=[f"image_size={size}", "channels=3"]))


def test_cli_build_train_sample(tmp_path):
    assert invoke_cli(["build", "--preset", "two-layer-vae", *sets(ZOO_16), "-o", tmp_path / "m"]).exit_code == 0
    run = invoke_cli(["train", tmp_path / "m", "--max-steps", "2", "--batch-size", "8", "--quiet"])
    assert run.exit_code == 0, run.output
    out = invoke_cli(["sample", tmp_path / "m", "-n", "4", "-o", tmp_path / "s.png"])
    assert out.exit_code == 0 and (tmp_path / "s.png").is_file(), out.output
