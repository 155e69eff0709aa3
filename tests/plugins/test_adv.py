"""``adv``: the discriminator, its phase and batch mix, the skip rule, the generator terms, learned similarity."""

from __future__ import annotations

import json
import math

import attrs
import pytest
import torch

from genvae.core import checkpoint as ckpt
from genvae.core.components import Loss
from genvae.core.compose import preset_spec
from genvae.core.data import ImageData
from genvae.core.model import build_model
from genvae.core.spec import ComponentSpec, LossSpec, ModelSpec
from genvae.core.training import Trainer
from genvae.core.training.step import build_phases
from genvae.plugins.adv import AdversarialLoss
from genvae.testing import check_component

ADV = {"widths": [8, 8], "head_hidden": 16, "minibatch_kernels": 4, "minibatch_dims": 3}
CR = {"latent_channels": 8, "steps": 4, "hidden": 16, "layers": 1}
STACK = {"width": 4, "max_width": 16}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


def gan_spec(adv=None, mi=None, transform=None, **train) -> ModelSpec:
    losses = [
        LossSpec("mse", options={"reduction": "mean"}),
        LossSpec("kl", 1e-3),
        LossSpec("adv", options={**ADV, **(adv or {})}),
    ]
    if mi is not None:
        losses.append(LossSpec("mi", options={"hidden": 8, **mi}))
    return ModelSpec(
        encoder=ComponentSpec("cr-lstm", STACK),
        transform=transform or ComponentSpec("cr-lstm", CR),
        decoder=ComponentSpec("cr-lstm", STACK),
        losses=losses,
        image_size=16,
        channels=3,
        train={"batch_size": 8, "lr": 1e-3, "log_every": 1, "checkpoint_every": 100, **train},
    )


def adv_of(model) -> AdversarialLoss:
    loss = model.losses["adv"]
    assert isinstance(loss, AdversarialLoss)
    return loss


def images(n=16, seed=0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 4, 4, generator=g)
    pixels = torch.nn.functional.interpolate(base, size=16, mode="bilinear", align_corners=False)
    return ImageData(images=(pixels * 255).round().to(torch.uint8).contiguous(), source="test images")


def trainer(spec, folder) -> Trainer:
    torch.manual_seed(0)
    model = build_model(spec)
    ckpt.save_model(model, folder)
    return Trainer(model, folder, images(), spec.train, torch.device("cpu"))


def snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- conformance ------------------------------------------------------------------------------------------


def test_conformance():
    check_component("loss", "adv", ADV)  # with the skip rule on (a bool flag in the discriminator phase)


def test_conformance_without_the_skip_rule():
    check_component("loss", "adv", {**ADV, "skip_below": 0})


def test_conformance_with_learned_similarity():
    check_component("loss", "adv", {**ADV, "similarity_layer": 2})


def test_conformance_without_the_gan_gradient_to_the_encoder():
    check_component("loss", "adv", {**ADV, "gan_to_encoder": False})


# -- structure ----------------------------------------------------------------------------------------------


def test_paper_discriminator():
    model = build_model(preset_spec("crvae-gan-no-mi"))
    adv = adv_of(model)
    convs = [m for m in adv.trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
        (3, 64, 5),
        (64, 128, 5),
        (128, 256, 5),
        (256, 256, 3),
    ]
    assert adv.trunk_shape == (256, 4, 4)
    assert (adv.head.linear.in_features, adv.head.linear.out_features) == (4096, 1024)
    assert adv.head.out.in_features == 1024 + 100
    assert adv.batch_counts(128) == (64, 32, 32)
    assert model.phases == ["discriminator", "model"]


def test_minibatch_discrimination_shape_and_batch_coupling():
    from genvae.plugins.adv import MinibatchDiscrimination

    mbd = MinibatchDiscrimination(6, kernels=4, dims=3)
    x = torch.randn(5, 6)
    out = mbd(x)
    assert out.shape == (5, 10) and torch.equal(out[:, :6], x)
    assert ((out[:, 6:] > 0) & (out[:, 6:] <= 1)).all()
    # a sample's features depend on the rest of the batch, and a permutation permutes them
    perm = torch.tensor([4, 2, 0, 1, 3])
    assert torch.allclose(mbd(x[perm]), out[perm], atol=1e-6)
    assert not torch.allclose(mbd(x[:3])[:, 6:], out[:3, 6:])


def test_trunk_trains_at_half_the_discriminator_lr():
    spec = gan_spec(phase_lr={"discriminator": 2e-3})
    model = build_model(spec)
    phases = {p.name: p for p in build_phases(model, spec.train, torch.device("cpu"))}
    names = {id(p): n for n, p in model.named_parameters()}
    lrs = {names[id(p)]: g["lr"] for g in phases["discriminator"].optimizer.param_groups for p in g["params"]}
    assert lrs["losses.adv.trunk.blocks.0.0.weight"] == pytest.approx(1e-3)
    assert lrs["losses.adv.head.linear.weight"] == pytest.approx(2e-3)
    model_params = {names[id(p)] for p in phases["model"].params}
    assert not any(n.startswith("losses.adv") for n in model_params)


# -- the terms ------------------------------------------------------------------------------------------------


def test_generator_terms_and_prior_samples_made_once():
    model = build_model(gan_spec(adv={"dropout": 0}))
    model.train()
    fwd = model(torch.rand(8, 3, 16, 16) * 2 - 1)
    d = model.phase_terms(fwd, "discriminator")
    z, u, x_prior = fwd.prior_sample()
    g = model.phase_terms(fwd, "model")
    assert fwd.prior_sample().x is x_prior  # the model phase reused the discriminator phase's samples
    assert set(d) == {"adv.d"} and {"adv.g_recon", "adv.g_prior", "mse", "kl"} <= set(g)
    assert x_prior.requires_grad and z.shape == (8, *model.layout.shape)
    # the discriminator phase sees detached fakes: its loss gives the generator no gradient
    grads = torch.autograd.grad(d["adv.d"], list(model.decoder.parameters()), allow_unused=True)
    assert all(gr is None for gr in grads)
    # the generator terms reach decoder, latent transform and encoder, scaled by beta
    g_total = g["adv.g_recon"] + g["adv.g_prior"]
    for part in (model.decoder, model.transform.gen, model.encoder):
        grads = torch.autograd.grad(g_total, list(part.parameters()), retain_graph=True, allow_unused=True)
        assert any(gr is not None and gr.abs().sum() > 0 for gr in grads)
    logits = adv_of(model).head(fwd.fake_features.by_branch["recon"])
    expected = 0.0125 * torch.nn.functional.softplus(-logits).mean()
    assert g["adv.g_recon"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_learned_similarity_term():
    model = build_model(gan_spec(adv={"similarity_layer": 1, "similarity_weight": 2.0}))
    model.train()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    fwd = model(x)
    terms = model.phase_terms(fwd, "model")
    adv = adv_of(model)
    with torch.no_grad():
        expected = 2.0 * (adv.trunk.layer_features(fwd.x_hat, 1) - adv.trunk.layer_features(x, 1)).pow(2).mean()
    assert terms["adv.similarity"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert adv.trunk.layer_features(x, 1).shape == (4, 8, 16, 16)  # the conv output, before pooling


# -- the skip rule ---------------------------------------------------------------------------------------------


def constant_discriminator(model, logit: float) -> None:
    """D says `logit` for every image: with the default mix (half real) its error rate is exactly 0.5."""
    head = adv_of(model).head
    with torch.no_grad():
        head.out.weight.zero_()
        head.out.bias.fill_(logit)


@pytest.mark.parametrize("threshold, skipped", [(0.6, True), (0.4, False)])
def test_skip_flag_follows_the_error_rate(threshold, skipped):
    model = build_model(gan_spec(adv={"skip_below": threshold}))
    constant_discriminator(model, 5.0)
    model.train()
    fwd = model(torch.rand(8, 3, 16, 16) * 2 - 1)
    terms, flags = model.update_terms(fwd, "discriminator")
    assert set(terms) == {"adv.d"} and len(flags) == 1  # the flag is not a term: declared by may_skip
    (flag,) = flags
    assert flag.dtype == torch.bool and flag.dim() == 0 and bool(flag) is skipped


def test_no_skip_flag_when_the_rule_is_off():
    model = build_model(gan_spec(adv={"skip_below": 0}))
    model.train()
    fwd = model(torch.rand(8, 3, 16, 16) * 2 - 1)
    terms, flags = model.update_terms(fwd, "discriminator")
    assert flags == [] and Loss.SKIP not in terms


@pytest.mark.parametrize("threshold, d_changes", [(0.6, False), (0.4, True)])
def test_trainer_skips_the_discriminator_update(tmp_path, threshold, d_changes):
    t = trainer(gan_spec(adv={"skip_below": threshold}), tmp_path / "m")
    constant_discriminator(t.model, 5.0)
    d_before, enc_before = snapshot(adv_of(t.model)), snapshot(t.model.encoder)
    x = t.to_model_range(t.images[:8])
    terms = t.train_step(x)
    assert terms["discriminator/skipped"].item() == float(not d_changes)
    assert same(snapshot(adv_of(t.model)), d_before) is not d_changes
    assert not same(snapshot(t.model.encoder), enc_before)  # the model phase still updates


# -- training -------------------------------------------------------------------------------------------------


def test_trains_all_phases(tmp_path):
    t = trainer(gan_spec(mi={}, max_steps=4, epochs=10, flip=True), tmp_path / "m")
    d_before = snapshot(adv_of(t.model).head)
    t.fit()
    lines = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    keys = {
        "adv.d",
        "discriminator/total",
        "discriminator/skipped",
        "mi.q",
        "mi/total",
        "mse",
        "kl",
        "adv.g_recon",
        "adv.g_prior",
        "mi",
        "model/total",
    }
    assert keys <= set(lines[-1])
    assert all(math.isfinite(v) for r in lines for k, v in r.items() if isinstance(v, float))
    assert not same(snapshot(adv_of(t.model).head), d_before) or all(r["discriminator/skipped"] == 1.0 for r in lines)
    assert list((tmp_path / "m" / "samples").glob("*.png"))
    # the checkpoint holds one optimiser state per phase and reloads into a fresh build
    resumed = trainer(gan_spec(mi={}, max_steps=6, epochs=10), tmp_path / "m")
    assert resumed.resume() == 4
    resumed.fit()
    assert resumed.step == 6


def test_metrics_average_each_term_when_the_discriminator_is_skipped_on_some_steps(tmp_path, monkeypatch):
    """Steps with and without a discriminator update have different terms; each logged mean stays its own."""
    spec = gan_spec(mi={}, max_steps=12, epochs=100, log_every=4)
    t = trainer(spec, tmp_path / "m")
    adv = adv_of(t.model)
    schedule = [2.0, 1e-9, 1e-9, 2.0] * 3  # skip_below 2: always skipped; 1e-9: trained unless D is perfect
    steps: list[dict[str, float]] = []
    original = t.train_step

    def record(x):
        adv.options = attrs.evolve(adv.options, skip_below=schedule[len(steps)])
        terms = original(x)
        steps.append({k: v.item() for k, v in terms.items()})
        return terms

    monkeypatch.setattr(t, "train_step", record)
    t.fit()
    assert [s["discriminator/skipped"] for s in steps] == [float(b > 1) for b in schedule]
    lines = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    for line, window in zip(lines, (steps[0:4], steps[4:8], steps[8:12]), strict=True):
        for key in ("mi.q", "mi/total", "mse", "kl", "adv.d", "adv.g_recon", "model/total"):
            assert line[key] == pytest.approx(sum(s[key] for s in window) / 4, rel=1e-4, abs=1e-6), key
