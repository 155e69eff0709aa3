"""``beta-tc``: the KL's three parts by hand with torch.distributions (both estimators), their exact sum, what a batch
of identical images and correlated codes give, the weights, the gradient, the refused compositions, the preset at
three sizes and the CLI end to end."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import one_line
from torch import distributions as D

import genvae.api as api
from genvae.core.components import Gaussian
from genvae.core.compose import apply_sets, compose_spec, preset_spec
from genvae.core.errors import BuildError
from genvae.core.model import build_model
from genvae.plugins.beta_tc import BetaTCLoss, decompose
from genvae.testing import check_component, invoke_cli, plugin_registry

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["image_size=16", "channels=3", "encoder.width=8", "encoder.depth=2", "decoder.width=8", "decoder.depth=2"]


def posterior_and_z(batch: int = 4, shape: tuple[int, ...] = (2, 3), seed: int = 0) -> tuple[Gaussian, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(batch, *shape, generator=g, dtype=torch.float64)
    logvar = torch.randn(batch, *shape, generator=g, dtype=torch.float64) * 0.5
    q = Gaussian(mean, logvar)
    return q, mean + torch.exp(0.5 * logvar) * torch.randn(batch, *shape, generator=g, dtype=torch.float64)


def standard_log_p(z: torch.Tensor) -> torch.Tensor:
    return D.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)


def by_hand(q: Gaussian, z: torch.Tensor, n: int, estimator: str) -> tuple[list[float], list[float], list[float]]:
    """The three parts per image with double loops over torch.distributions.Normal densities (not log densities)."""
    batch = z.shape[0]
    mean, std, flat = q.mean.flatten(1), q.std.flatten(1), z.flatten(1)
    dims = flat.shape[1]

    def weight(i: int, j: int) -> float:
        if estimator == "mws":
            return 1.0 / (n * batch)
        return 1.0 / n if i == j else (n - 1) / (n * (batch - 1))

    def density(i: int, j: int, d: int) -> float:
        return D.Normal(mean[j, d], std[j, d]).log_prob(flat[i, d]).exp().item()

    mi, tc, dim_kl = [], [], []
    for i in range(batch):
        log_q_zx = sum(math.log(density(i, i, d)) for d in range(dims))
        q_z = sum(weight(i, j) * math.prod(density(i, j, d) for d in range(dims)) for j in range(batch))
        log_marginals = sum(math.log(sum(weight(i, j) * density(i, j, d) for j in range(batch))) for d in range(dims))
        log_p = sum(D.Normal(0.0, 1.0).log_prob(flat[i, d]).item() for d in range(dims))
        mi.append(log_q_zx - math.log(q_z))
        tc.append(math.log(q_z) - log_marginals)
        dim_kl.append(log_marginals - log_p)
    return mi, tc, dim_kl


# -- the mathematics ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_each_part_matches_a_hand_computation(estimator):
    q, z = posterior_and_z()
    parts = decompose(q, z, standard_log_p(z), 50, estimator)
    for got, want in zip(parts, by_hand(q, z, 50, estimator), strict=True):
        assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_the_parts_sum_to_log_q_minus_log_p_exactly(estimator):
    q, z = posterior_and_z(batch=6, shape=(5,), seed=3)
    log_p = standard_log_p(z)
    mi, tc, dim_kl = decompose(q, z, log_p, 1000, estimator)
    assert torch.allclose(mi + tc + dim_kl, q.log_prob(z) - log_p, atol=1e-12)


def test_identical_images_have_no_mi_and_no_tc_under_stratified_sampling():
    """One posterior repeated: the stratified weights sum to 1, so q(z) is q(z|x) itself; MWS is off by log N."""
    q, z = posterior_and_z(batch=1, shape=(3,), seed=1)
    batch, n, dims = 5, 100, 3
    same = Gaussian(q.mean.expand(batch, -1), q.logvar.expand(batch, -1))
    z = same.rsample()
    log_p = standard_log_p(z)
    mi, tc, dim_kl = decompose(same, z, log_p, n, "mss")
    assert torch.allclose(mi, torch.zeros(batch, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(tc, torch.zeros(batch, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(dim_kl, same.log_prob(z) - log_p, atol=1e-10)
    mi, tc, _ = decompose(same, z, log_p, n, "mws")
    assert torch.allclose(mi, torch.full((batch,), math.log(n), dtype=torch.float64), atol=1e-10)
    assert torch.allclose(tc, torch.full((batch,), (dims - 1) * math.log(n), dtype=torch.float64), atol=1e-10)


def test_tc_is_larger_for_correlated_codes_than_for_independent_ones():
    """Narrow posteriors at means with two equal dimensions have a larger total correlation than at independent
    means; the MI and dimension-wise KL do not see the dependence the same way."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(256, 1, generator=g, dtype=torch.float64)
    correlated = torch.cat([a, a], 1)
    independent = torch.cat([a, torch.randn(256, 1, generator=g, dtype=torch.float64)], 1)
    logvar = torch.full_like(correlated, math.log(0.1**2))
    torch.manual_seed(0)
    tcs = []
    for means in (correlated, independent):
        q = Gaussian(means, logvar)
        z = q.rsample()
        tcs.append(decompose(q, z, standard_log_p(z), 256, "mss")[1].mean().item())
    assert tcs[0] > tcs[1] + 1.0


# -- the loss in a model -----------------------------------------------------------------------------------------
def model_with(*extra: str) -> api.GenerativeModel:
    torch.manual_seed(0)
    model = build_model(apply_sets(preset_spec("beta-tcvae"), [*TINY, *extra]))
    return model.train()


def test_the_term_weights_each_part_and_logs_them():
    model = model_with(
        "loss.beta-tc.alpha=2", "loss.beta-tc.beta=3", "loss.beta-tc.gamma=5", "loss.beta-tc.dataset_size=40"
    )
    fwd = model(torch.rand(4, 3, 16, 16) * 2 - 1)
    loss = model.losses["beta-tc"]
    assert isinstance(loss, BetaTCLoss)
    term = loss(fwd, "model")["beta-tc"]
    mi, tc, dim_kl = decompose(fwd.posterior, fwd.z, fwd.prior.log_prob(fwd.z), 40, "mws")
    assert term.item() == pytest.approx((2 * mi + 3 * tc + 5 * dim_kl).mean().item(), rel=1e-5)
    for name, part in (("mi", mi), ("tc", tc), ("dim_kl", dim_kl)):
        assert fwd.logged[f"beta-tc.{name}"].item() == pytest.approx(part.mean().item(), rel=1e-5)
    # with unit weights the term is the Monte Carlo KL at the pass's z
    unit = model_with("loss.beta-tc.beta=1")
    fwd = unit(torch.rand(4, 3, 16, 16) * 2 - 1)
    kl = (fwd.log_q - fwd.prior.log_prob(fwd.z)).mean()
    assert unit.losses["beta-tc"](fwd, "model")["beta-tc"].item() == pytest.approx(kl.item(), rel=1e-5)


def test_the_gradient_reaches_the_encoder_and_the_transform():
    model = model_with()
    fwd = model(torch.rand(4, 3, 16, 16) * 2 - 1)
    model.losses["beta-tc"](fwd, "model")["beta-tc"].backward()
    for part in (model.encoder, model.transform):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert all(p.grad is None for p in model.decoder.parameters())


def _flow_registry():
    base = plugin_registry().component("transform", "fc")

    class AffineFlow(base):  # type: ignore[misc, valid-type]
        name = "affine-flow"

        def flow(self, z0, fwd=None):
            return 2 * z0 + 1, torch.full(z0.shape[:1], z0[0].numel() * math.log(2.0))

    class Point(base):  # type: ignore[misc, valid-type]
        name = "point"
        stochastic = False

    class Plugin:
        @api.hookimpl
        def genvae_register_transforms(self, register):
            register(AffineFlow)
            register(Point)

    return plugin_registry(Plugin())


@pytest.mark.parametrize(
    ("transform", "prior", "needle"),
    [
        ("affine-flow", "normal", "loss 'beta-tc': minibatch-weighted sampling needs q(z|x)'s density at other images"),
        ("point", "normal", "loss 'beta-tc': latent transform 'point' is deterministic"),
        ("fc", "vamp", "loss 'beta-tc': the dimension-wise KL needs a prior that factorises over the latent"),
    ],
)
def test_refused_compositions_are_one_line_build_errors(transform, prior, needle):
    reg = _flow_registry()
    spec = compose_spec(
        encoder="conv",
        transform=transform,
        prior=prior,
        losses="bce,beta-tc",
        registry=reg,
        sets=[*TINY, "transform.latent_dim=4"],
    )
    with pytest.raises(BuildError) as info:
        build_model(spec, reg)
    assert needle in one_line(info)


def test_options_are_validated():
    with pytest.raises(Exception, match="estimator"):
        model_with("loss.beta-tc.estimator=exact")
    with pytest.raises(Exception, match="dataset_size"):
        model_with("loss.beta-tc.dataset_size=0")


def test_conformance():
    check_component("loss", "beta-tc", {"estimator": "mss"})


# -- the preset --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [16, 32, 64])
def test_preset_builds_at_the_usual_sizes(size):
    spec = apply_sets(preset_spec("beta-tcvae"), [f"image_size={size}", "channels=3"])
    model = build_model(spec)
    assert [s.name for s in spec.losses] == ["bce", "beta-tc"] and model.layout.numel == 16


def test_preset_trains_and_samples_from_the_cli(tmp_path):
    args = [a for s in TINY for a in ("--set", s)]
    out = invoke_cli(["build", "--preset", "beta-tcvae", *args, "-o", tmp_path / "m"])
    assert out.exit_code == 0, out.output
    run = invoke_cli(["train", tmp_path / "m", "--max-steps", "2", "--batch-size", "8", "--quiet"])
    assert run.exit_code == 0, run.output
    assert "beta-tc.tc" in (tmp_path / "m" / "metrics.jsonl").read_text()
    out = invoke_cli(["sample", tmp_path / "m", "-n", "4", "-o", tmp_path / "s.png"])
    assert out.exit_code == 0 and (tmp_path / "s.png").is_file(), out.output
