"""``planar``, ``radial``, ``iaf``: each flow's log-determinant against autograd's Jacobian, the invertibility
reparametrisations, IAF's autoregressive structure, the Monte Carlo KL through the flow, the base transform's
options, the flowed posterior mean of ``encode`` and ``sample --from``, and the compositions (VampPrior, adv)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import one_line, run, seeded_build, sets
from PIL import Image
from torch import distributions as D
from torch.autograd.functional import jacobian

from genvae.api import BuildError, compose_spec, load_model, save_grid, to_uint8
from genvae.plugins.flows import IAFStep, PlanarStep, RadialStep
from genvae.testing import check_component

pytestmark = pytest.mark.usefixtures("one_thread")

FLOWS = ("planar", "radial", "iaf")
SMALL = ["image_size=16", "encoder.width=8", "encoder.depth=2", "decoder.width=8", "decoder.depth=2"]


def flow_model(name: str, latent: int = 3, *extra: str, prior: str = "normal", train: bool = True):
    options = [f'transform.base_options={{"latent_dim": {latent}}}', "transform.length=3"]
    if name == "iaf":
        options.append("transform.hidden=8")
    spec = compose_spec(encoder="conv", transform=name, prior=prior, losses="bce,kl", sets=[*SMALL, *options, *extra])
    return seeded_build(spec, train=train)


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter from N(0, 1): far from the near-identity start, so a wrong term shows in the log-det."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def autograd_log_det(transform, z0: torch.Tensor) -> torch.Tensor:
    """log|det dz/dz0| per row from the full Jacobian of the flow on the flattened latent."""
    shape = z0.shape[1:]

    def f(row: torch.Tensor) -> torch.Tensor:
        return transform.flow(row.view(1, *shape))[0].flatten()

    return torch.stack([torch.linalg.slogdet(jacobian(f, row.flatten())).logabsdet for row in z0])


@pytest.mark.parametrize("name", FLOWS)
def test_log_det_is_the_jacobians(name):
    model = flow_model(name, latent=3)
    transform = model.transform.double()
    randomise(transform.steps, seed=1)
    z0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 1.5
    z, log_det = transform.flow(z0)
    assert z.shape == z0.shape and log_det.shape == (5,)
    assert torch.allclose(log_det, autograd_log_det(transform, z0), atol=1e-5)
    assert log_det.abs().max() > 0.1  # the steps do something: the comparison is not of zeros


@pytest.mark.parametrize("name", FLOWS)
def test_a_spatial_latent_flows_flattened(name):
    """Base ``conv``: the latent is (1, 2, 2) at 16 px with depth 2; the flow mixes all its values."""
    options = ["transform.base=conv", 'transform.base_options={"latent_channels": 1}', "transform.length=2"]
    if name == "iaf":
        options.append("transform.hidden=8")
    model = seeded_build(compose_spec(encoder="conv", transform=name, sets=[*SMALL, "encoder.depth=3", *options]))
    transform = model.transform.double()
    assert transform.layout.shape == (1, 2, 2)
    randomise(transform.steps, seed=3)
    z0 = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    z, log_det = transform.flow(z0)
    assert z.shape == z0.shape
    assert torch.allclose(log_det, autograd_log_det(transform, z0), atol=1e-5)


def test_planar_u_hat_keeps_it_invertible():
    step = PlanarStep(3).double()
    with torch.no_grad():
        step.w.copy_(torch.tensor([1.0, 2.0, -1.0]))
        step.u.copy_(-4.0 * step.w)  # w^T u = -24: without u_hat, det = 1 - 24 (1 - t^2) crosses zero
    wu_hat = step.w @ step.u_hat()
    assert wu_hat.item() == pytest.approx(-1.0 + math.log1p(math.exp(-24.0)), abs=1e-12)  # m(w^T u)
    z = torch.linspace(-3, 3, 50, dtype=torch.float64).unsqueeze(1) * step.w / 6  # through w^T z + b = 0
    _, log_det = step(z)
    assert torch.isfinite(log_det).all()


def test_radial_beta_stays_above_minus_alpha():
    step = RadialStep(4).double()
    with torch.no_grad():
        step.alpha_raw.fill_(0.3)
        step.beta_raw.fill_(-30.0)
    alpha, beta = step.alpha_beta()
    assert alpha.item() == pytest.approx(math.log1p(math.exp(0.3)))
    assert beta.item() == pytest.approx(-alpha.item() + math.log1p(math.exp(-30.0)), abs=1e-12)
    z = step.z_ref.detach() + torch.randn(20, 4, dtype=torch.float64) * torch.logspace(-3, 1, 20).unsqueeze(1)
    _, log_det = step(z)
    assert torch.isfinite(log_det).all()


def test_iaf_steps_are_autoregressive_in_alternating_order():
    first, second = IAFStep(4, 16, reverse=False).double(), IAFStep(4, 16, reverse=True).double()
    randomise(first, 5)
    randomise(second, 6)
    z = torch.randn(4, dtype=torch.float64)
    lower = jacobian(lambda v: first(v.unsqueeze(0))[0][0], z)
    upper = jacobian(lambda v: second(v.unsqueeze(0))[0][0], z)
    assert torch.equal(lower.triu(1), torch.zeros(4, 4)) and lower.tril(-1).abs().sum() > 0
    assert torch.equal(upper.tril(-1), torch.zeros(4, 4)) and upper.triu(1).abs().sum() > 0
    # the diagonal is sigma, whose logs sum to the log-det
    m, s = first.net(z.unsqueeze(0)).split(4, dim=1)
    assert torch.allclose(lower.diagonal(), torch.sigmoid(s[0]))
    assert torch.allclose(first(z.unsqueeze(0))[1], torch.log(torch.sigmoid(s)).sum(1))
    # the gated update: z' = sigma z + (1 - sigma) m
    sigma = torch.sigmoid(s[0])
    assert torch.allclose(first(z.unsqueeze(0))[0][0], sigma * z + (1 - sigma) * m[0])


def test_iaf_reverses_the_order_between_steps():
    """Two steps in opposite orders: every output depends on every input (one order would stay triangular)."""
    model = flow_model("iaf", latent=4)
    transform = model.transform.double()
    assert transform.options.length == 3
    randomise(transform.steps, seed=8)
    z0 = torch.randn(4, dtype=torch.float64)
    full = jacobian(lambda v: transform.flow(v.unsqueeze(0))[0][0], z0)
    assert (full.abs() > 1e-8).all()


def test_iaf_starts_with_the_forget_bias():
    step = IAFStep(3, 8, reverse=False)
    _, s = step.net(torch.zeros(1, 3)).split(3, dim=1)
    b = step.net[-1].bias
    assert isinstance(b, torch.Tensor)
    assert torch.equal(b[3:], torch.full((3,), 2.0))
    assert s[0, 0].item() == 2.0  # the first value in the order sees no input: its gate is the bias alone


@pytest.mark.parametrize("name", FLOWS)
def test_the_flow_changes_z_and_the_kl_takes_it(name):
    model = flow_model(name, latent=4)
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    torch.manual_seed(7)
    fwd = model(x)
    assert (fwd.z - fwd.z0).abs().min() > 0  # every value moved
    kl = model.losses["kl"]
    assert not kl.closed_form
    z, log_det = model.transform.flow(fwd.z0)
    assert torch.equal(z, fwd.z) and torch.allclose(log_det, fwd.log_det)
    q0 = D.Independent(D.Normal(fwd.posterior.mean, fwd.posterior.std), 1)
    p = D.Independent(D.Normal(torch.zeros(4), torch.ones(4)), 1)
    expected = (q0.log_prob(fwd.z0) - log_det - p.log_prob(fwd.z)).mean()
    assert torch.allclose(kl(fwd, "model")["kl"], expected, atol=1e-5)
    # the flow's parameters learn from the KL; the log-det is logged, not added to the objective
    grads = torch.autograd.grad(kl(fwd, "model")["kl"], list(model.transform.steps.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert fwd.logged[f"{name}.log_det"].item() == pytest.approx(fwd.log_det.mean().item(), rel=1e-5)


def test_encode_mean_is_the_flowed_base_mean():
    model = flow_model("planar", latent=4, train=False)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    base_mean = model.transform.posterior(model.encoder(x)).mean
    encoded = model.encode(x).mean
    assert torch.allclose(encoded, model.transform.flow(base_mean)[0])
    assert not torch.allclose(encoded, base_mean)


def test_base_options_are_checked_and_recorded():
    model = flow_model("radial", latent=5)
    expected = {"latent_dim": 5, "output_activation": "relu", "output_shape": [], "groups": 1}
    assert model.transform.options.base_options == expected
    assert model.layout.shape == (5,)
    resolved = json.loads(json.dumps(model.resolved_spec().to_dict()))
    assert resolved["transform"]["options"]["base_options"]["latent_dim"] == 5
    with pytest.raises(BuildError) as err:
        flow_model("planar", 3, 'transform.base_options={"latent_dims": 3}')
    assert "'latent_dims' is no option of latent transform 'fc'" in one_line(err) and "latent_dim" in str(err.value)
    with pytest.raises(BuildError) as err:
        flow_model("planar", -2)
    assert "latent_dim must be a positive integer, got -2" in one_line(err)
    with pytest.raises(BuildError) as err:
        flow_model("planar", 3, "transform.base=nope")
    assert one_line(err).startswith("latent transform 'planar': option base: unknown latent transform 'nope'")


def test_length_must_be_positive():
    from genvae.api import OptionsError

    with pytest.raises(OptionsError, match="option 'length': expected a positive integer, got 0"):
        flow_model("iaf", 3, "transform.length=0")


def test_flows_stack_through_the_base():
    spec = compose_spec(
        encoder="conv",
        transform="planar",
        sets=[*SMALL, "transform.length=1", "transform.base=radial", 'transform.base_options={"length": 2}'],
    )
    model = seeded_build(spec).double()
    inner = model.transform.base
    assert inner.name == "radial" and inner.base.name == "fc"
    z0 = torch.randn(2, inner.dim, dtype=torch.float64)
    z1, ld1 = inner.flow(z0)
    z2, ld2 = model.transform.steps[0](z1)
    z, log_det = model.transform.flow(z0)
    assert torch.equal(z, z2) and torch.allclose(log_det, ld1 + ld2)


@pytest.mark.parametrize("name", FLOWS)
def test_conformance(name):
    check_component("transform", name, {"length": 2, "base_options": {"latent_dim": 4}})


def test_flow_with_vamp_builds_trains_and_samples_from_the_flowed_mean(tmp_path):
    folder = tmp_path / "m"
    args = [*sets(SMALL), "--set", "prior.components=3", "--set", 'transform.base_options={"latent_dim": 4}']
    run("build", "--encoder", "conv", "--transform", "planar", "--prior", "vamp", *args, "-o", folder)
    out = run("train", folder, "--max-steps", "2", "--batch-size", "8").output
    assert "planar.log_det" in out
    lines = [json.loads(s) for s in (folder / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(line["kl"]) for line in lines)
    # sample --from keeps every latent group of the input: each sample is the decoded flowed mean
    source = tmp_path / "in.png"
    save_grid(torch.rand(1, 3, 16, 16) * 2 - 1, source)
    run("sample", folder, "--from", source, "--fix-levels", "1", "-n", "2", "-o", tmp_path / "s.png")
    model = load_model(folder, amp="config").eval()  # in the precision genvae sample runs it in
    from genvae.api import load_image

    x = load_image(source, model)
    with torch.no_grad():
        flowed = model.generate(model.encode(x).mean.expand(2, -1))[1]
        base = model.generate(model.transform.posterior(model.encoder(x)).mean.expand(2, -1))[1]
    for images, same in ((flowed, True), (base, False)):
        save_grid(torch.cat([to_uint8(x), to_uint8(images)]), tmp_path / "e.png")
        equal = np.array_equal(np.asarray(Image.open(tmp_path / "s.png")), np.asarray(Image.open(tmp_path / "e.png")))
        assert equal == same


def test_flow_composes_with_adv(tmp_path):
    folder = tmp_path / "g"
    small_adv = ["loss.adv.widths=[8,16]", "loss.adv.head_hidden=16", "loss.adv.minibatch_kernels=4"]
    args = sets([*SMALL, *small_adv, 'transform.base_options={"latent_dim": 4}', "transform.hidden=8"])
    run("build", "--encoder", "conv", "--transform", "iaf", "--loss", "bce,kl,adv", *args, "-o", folder)
    run("train", folder, "--max-steps", "2", "--batch-size", "8")
    lines = [json.loads(s) for s in (folder / "metrics.jsonl").read_text().splitlines()]
    assert lines and "adv.g_recon" in lines[-1] and "iaf.log_det" in lines[-1]


@pytest.mark.parametrize("preset", ["vae-planar", "vae-radial", "vae-iaf"])
def test_presets_build_at_the_usual_sizes_and_train(preset, tmp_path, tiny_data):
    from genvae.api import Trainer, build_model

    for size in (16, 32, 64):
        spec = compose_spec(preset=preset, sets=[f"image_size={size}", "channels=3"])
        model = build_model(spec)
        assert model.transform.name == preset.split("-")[1] and model.layout.shape == (16,)
    spec = compose_spec(preset=preset, sets=["image_size=16", "channels=3"])
    model = seeded_build(spec, train=True)
    config = model.spec.with_train(batch_size=8, max_steps=2, log_every=1).train
    Trainer(model, tmp_path, tiny_data, config, torch.device("cpu")).fit()
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2
