"""``iwae``: the importance-weighted bound against a hand computation with torch.distributions (Bernoulli and
Gaussian likelihoods, through a flow, MIWAE's groups), k = 1 as the negative ELBO, the bound tightening with k,
where its gradient goes, the logged ELBO, and the objective role (no default mse/kl) on the command line."""

from __future__ import annotations

import json
import math

import attrs
import pytest
import torch
import torch.nn.functional as F
from helpers import one_line, run, seeded_build, sets
from torch import distributions as D
from torch import nn

import genvae.api as api
from genvae.api import BuildError, LossSpec, OptionsError, Trainer, build_model, compose_spec
from genvae.plugins.iwae import IWAELoss
from genvae.testing import check_component, plugin_registry

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["image_size=16", "encoder.width=8", "encoder.depth=2", "decoder.width=8", "decoder.depth=2"]
LATENT = 3


def iwae_model(*extra: str, transform: str = "fc", train: bool = True):
    latent = (
        [f"transform.latent_dim={LATENT}"]
        if transform == "fc"
        else [f'transform.base_options={{"latent_dim": {LATENT}}}', "transform.length=2"]
    )
    spec = compose_spec(encoder="conv", transform=transform, losses="iwae", sets=[*SMALL, *latent, *extra])
    return seeded_build(spec, train=train)


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def by_hand(fwd, log_q: torch.Tensor, likelihood: str = "bernoulli", sigma: float = 1.0) -> torch.Tensor:
    """log w per draw and image with torch.distributions: log p(x|z) + log N(z; 0, I) - log q(z|x)."""
    multi = fwd.multi
    if likelihood == "bernoulli":
        p = torch.sigmoid(2 * multi.decoder_output)  # tanh logits a: the Bernoulli mean is sigmoid(2a)
        t = (fwd.x + 1) / 2  # the pixels in [0, 1] are the targets, as bce reads them
        log_px = (t * torch.log(p) + (1 - t) * torch.log1p(-p)).flatten(2).sum(2)
    else:
        log_px = D.Independent(D.Normal(multi.x_hat, sigma), 3).log_prob(fwd.x)
    log_pz = D.Independent(D.Normal(torch.zeros(LATENT), torch.ones(LATENT)), 1).log_prob(multi.z)
    return log_px + log_pz - log_q


def base_log_q(fwd) -> torch.Tensor:
    q = D.Independent(D.Normal(fwd.posterior.mean, fwd.posterior.std), 1)
    return q.log_prob(fwd.multi.z0)


def test_bound_by_hand_bernoulli():
    model = iwae_model("loss.iwae.k=3")
    torch.manual_seed(1)
    fwd = model(images())
    assert fwd.multi is not None and fwd.multi.k == 3
    log_w = by_hand(fwd, base_log_q(fwd))
    expected = -(torch.logsumexp(log_w, 0) - math.log(3)).mean()
    terms = model.phase_terms(fwd, "model")
    assert list(terms) == ["iwae"]
    assert torch.allclose(terms["iwae"], expected, atol=1e-4, rtol=1e-6)
    # the ELBO of the same draws is logged, never summed into the objective
    assert fwd.logged["iwae.elbo"].item() == pytest.approx(log_w.mean().item(), rel=1e-5)


def test_bound_by_hand_gaussian_and_weight():
    model = iwae_model("loss.iwae.k=2", "loss.iwae.likelihood=gaussian", "loss.iwae.sigma=0.3", "loss.iwae.weight=0.5")
    torch.manual_seed(2)
    fwd = model(images())
    log_w = by_hand(fwd, base_log_q(fwd), "gaussian", 0.3)
    expected = -0.5 * (torch.logsumexp(log_w, 0) - math.log(2)).mean()
    assert torch.allclose(model.phase_terms(fwd, "model")["iwae"], expected, atol=1e-4, rtol=1e-6)


def test_miwae_averages_m_bounds_of_k():
    model = iwae_model("loss.iwae.k=2", "loss.iwae.m=3")
    assert model.posterior_samples == 6
    torch.manual_seed(3)
    fwd = model(images())
    log_w = by_hand(fwd, base_log_q(fwd))  # (6, B): groups of draws 0-1, 2-3, 4-5
    groups = torch.stack([torch.logsumexp(log_w[2 * j : 2 * j + 2], 0) - math.log(2) for j in range(3)])
    assert torch.allclose(model.phase_terms(fwd, "model")["iwae"], -groups.mean(), atol=1e-4, rtol=1e-6)
    # not one bound of 6
    assert not torch.allclose(
        model.phase_terms(fwd, "model")["iwae"], -(torch.logsumexp(log_w, 0) - math.log(6)).mean()
    )


def test_a_flows_log_det_is_in_log_q():
    model = iwae_model("loss.iwae.k=3", transform="planar")
    torch.manual_seed(4)
    fwd = model(images())
    z, log_det = model.transform.flow(fwd.multi.z0.flatten(0, 1))
    assert torch.allclose(z.view(fwd.multi.z.shape), fwd.multi.z)
    log_w = by_hand(fwd, base_log_q(fwd) - log_det.view(3, -1))
    assert log_det.abs().min() > 0
    expected = -(torch.logsumexp(log_w, 0) - math.log(3)).mean()
    assert torch.allclose(model.phase_terms(fwd, "model")["iwae"], expected, atol=1e-4, rtol=1e-6)


@pytest.mark.parametrize("transform", ["fc", "radial"])
def test_one_sample_is_the_negative_elbo(transform):
    model = iwae_model("loss.iwae.k=1", transform=transform)
    spec = attrs.evolve(model.spec, losses=(LossSpec("iwae", options={"k": 1}), LossSpec("bce"), LossSpec("kl")))
    model = seeded_build(spec, train=True)
    assert model.posterior_samples == 1
    torch.manual_seed(5)
    fwd = model(images())
    assert fwd.multi is None  # one draw: the pass's own z
    terms = model.phase_terms(fwd, "model")
    mc_kl = model.losses["kl"].monte_carlo(fwd).mean()
    if transform == "radial":
        assert terms["kl"] == mc_kl  # a flow: the kl term is the Monte Carlo one
    assert torch.allclose(terms["iwae"], terms["bce"] + mc_kl, atol=1e-4, rtol=1e-6)


def test_the_bound_tightens_with_k_on_average():
    # a sharp likelihood (sigma 0.05) makes the weights vary with z: a gap the test can see
    model = iwae_model("loss.iwae.k=600", "loss.iwae.likelihood=gaussian", "loss.iwae.sigma=0.05", train=False)
    loss = model.losses["iwae"]
    torch.manual_seed(6)
    fwd = model(images(8))
    log_w = loss.log_weights(fwd)
    assert log_w.shape == (600, 8)
    bounds = []
    for k in (1, 5, 50, 600):
        loss.options = attrs.evolve(loss.options, k=k, m=600 // k)  # the same draws, in groups of k
        bounds.append(loss.bound(log_w).mean().item())
    assert bounds == sorted(bounds) and bounds[-1] - bounds[0] > 1.0, bounds
    assert bounds[0] == pytest.approx(log_w.mean().item(), rel=1e-5)  # k = 1: the ELBO


def test_gradient_reaches_encoder_transform_and_decoder():
    model = iwae_model("loss.iwae.k=3", "transform.hidden=8", transform="iaf")
    torch.manual_seed(7)
    value = model.phase_terms(model(images()), "model")["iwae"]
    parts = {"encoder": model.encoder, "transform": model.transform, "decoder": model.decoder}
    for name, part in parts.items():
        params = [p for p in part.parameters() if p.requires_grad]
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    flow = list(model.transform.steps.parameters())
    assert all(g is not None for g in torch.autograd.grad(value, flow, retain_graph=True, allow_unused=True))


def test_gradient_reaches_vamp_pseudo_inputs():
    spec = compose_spec(
        encoder="conv",
        transform="fc",
        prior="vamp",
        losses="iwae",
        sets=[*SMALL, "transform.latent_dim=3", "prior.components=2"],
    )
    model = seeded_build(spec, train=True)
    value = model.phase_terms(model(images()), "model")["iwae"]
    (grad,) = torch.autograd.grad(value, [model.prior.pseudo])
    assert grad.abs().sum() > 0


class ImageDecoder(api.Decoder):
    """Outputs the image itself (no logits)."""

    name = "image-out"
    output = "image"

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        c_in, ups = self.upsampling_plan(ctx)
        self.net = nn.Sequential(nn.Upsample(scale_factor=2**ups), nn.Conv2d(c_in, ctx.image_shape[0], 1))

    def forward(self, u, fwd=None):
        return torch.tanh(self.net(u))


class ImagePlugin:
    @api.hookimpl
    def genvae_register_decoders(self, register):
        register(ImageDecoder)


def test_bernoulli_needs_logits_gaussian_does_not():
    reg = plugin_registry(ImagePlugin())
    sets_ = [*SMALL[:3], "transform.latent_dim=3"]
    spec = compose_spec(encoder="conv", transform="fc", decoder="image-out", losses="iwae", sets=sets_, registry=reg)
    with pytest.raises(BuildError) as err:
        build_model(spec, reg)
    assert "loss 'iwae': likelihood bernoulli needs logits, but decoder 'image-out'" in one_line(err)
    spec = compose_spec(
        encoder="conv",
        transform="fc",
        decoder="image-out",
        losses="iwae",
        sets=[*sets_, "loss.iwae.likelihood=gaussian"],
        registry=reg,
    )
    model = build_model(spec, reg).train()
    fwd = model(images())
    log_px = D.Independent(D.Normal(fwd.multi.x_hat, 1.0), 3).log_prob(fwd.x)
    loss = model.losses["iwae"]
    assert isinstance(loss, IWAELoss)
    assert torch.allclose(loss.log_likelihood(fwd.x, fwd.multi.decoder_output, fwd.multi.x_hat), log_px)


def test_bernoulli_reads_bernoulli_logits_unscaled():
    loss = iwae_model("loss.iwae.k=2").losses["iwae"]
    loss.scale = 1.0  # as for a decoder with output 'bernoulli'
    x, logits = images(2), torch.randn(3, 2, 3, 16, 16)
    t = (x + 1) / 2
    expected = (t * F.logsigmoid(logits) + (1 - t) * F.logsigmoid(-logits)).flatten(2).sum(2)
    assert torch.allclose(loss.log_likelihood(x, logits, torch.tanh(logits)), expected, atol=1e-4)


def test_options_are_validated():
    for bad, expect in (
        ("loss.iwae.k=0", "option 'k': expected a positive integer, got 0"),
        ("loss.iwae.m=-1", "option 'm': expected a positive integer, got -1"),
        ("loss.iwae.likelihood=poisson", "option 'likelihood': expected one of bernoulli, gaussian, got"),
        ("loss.iwae.sigma=0", "option 'sigma': expected a finite number > 0, got 0"),
    ):
        with pytest.raises(OptionsError) as err:
            iwae_model(bad)
        assert expect in one_line(err)


def test_conformance():
    check_component("loss", "iwae", {"k": 2})


def test_cli_adds_no_default_losses(tmp_path):
    out = run("build", "--encoder", "conv", "--loss", "iwae", *sets(SMALL), "-o", tmp_path / "m").output
    assert "added default" not in out
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert [s["name"] for s in config["losses"]] == ["iwae"]
    run("train", tmp_path / "m", "--max-steps", "2", "--batch-size", "8")
    lines = [json.loads(s) for s in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert lines and all("iwae.elbo" in line and line["model/total"] == line["iwae"] for line in lines)
    # a preset's reconstruction and divergence give way to the objective
    out = run(
        "build", "--preset", "vae-planar", "--loss", "iwae", "--set", "image_size=16", "-o", tmp_path / "p"
    ).output
    assert "added default" not in out
    assert [s["name"] for s in json.loads((tmp_path / "p" / "config.json").read_text())["losses"]] == ["iwae"]
    run("sample", tmp_path / "p", "-n", "4", "-o", tmp_path / "s.png")


@pytest.mark.parametrize("preset", ["iwae", "miwae"])
def test_presets_build_at_the_usual_sizes_and_train(preset, tmp_path, tiny_data):
    for size in (16, 32, 64):
        model = build_model(compose_spec(preset=preset, sets=[f"image_size={size}", "channels=3"]))
        assert [loss.name for loss in model.losses.values()] == ["iwae"]
    model = seeded_build(compose_spec(preset=preset, sets=["image_size=16", "channels=3"]), train=True)
    assert model.posterior_samples == {"iwae": 5, "miwae": 15}[preset]
    config = model.spec.with_train(batch_size=8, max_steps=2, log_every=1).train
    Trainer(model, tmp_path, tiny_data, config, torch.device("cpu")).fit()
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2
