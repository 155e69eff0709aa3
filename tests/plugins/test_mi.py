"""``mi``: needs adv's trunk, predicts u (cr-lstm) or z (fc), per-step weights, kappa, its own phase."""

from __future__ import annotations

import pytest
import torch

from genvae.core import checkpoint as ckpt
from genvae.core.data import ImageData
from genvae.core.errors import BuildError
from genvae.core.model import build_model
from genvae.core.spec import ComponentSpec, LossSpec, ModelSpec
from genvae.core.training import Trainer
from genvae.core.training.step import build_phases
from genvae.plugins.adv import AdversarialLoss
from genvae.plugins.mi import PAPER_WEIGHTS, MILoss
from genvae.testing import check_component

ADV = {"widths": [8, 8], "head_hidden": 16, "minibatch_kernels": 4, "minibatch_dims": 3, "skip_below": 0}
STACK = {"width": 4, "max_width": 16}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


def mi_of(model) -> MILoss:
    loss = model.losses["mi"]
    assert isinstance(loss, MILoss)
    return loss


def adv_of(model) -> AdversarialLoss:
    loss = model.losses["adv"]
    assert isinstance(loss, AdversarialLoss)
    return loss


def cr(steps=4, **extra):
    return ComponentSpec("cr-lstm", {"latent_channels": 8, "steps": steps, "hidden": 16, "layers": 1, **extra})


FC = ComponentSpec("fc", {"latent_dim": 12, "output_activation": "none"})


def spec_with(mi=None, adv=None, transform=None, with_adv=True, **train) -> ModelSpec:
    losses = [LossSpec("mse", options={"reduction": "mean"}), LossSpec("kl", 1e-3)]
    if with_adv:
        losses.append(LossSpec("adv", options={**ADV, **(adv or {})}))
    losses.append(LossSpec("mi", options={"hidden": 8, **(mi or {})}))
    return ModelSpec(
        encoder=ComponentSpec("cr-lstm", STACK),
        transform=transform or cr(),
        decoder=ComponentSpec("cr-lstm", STACK),
        losses=losses,
        image_size=16,
        channels=3,
        train={"batch_size": 8, "lr": 1e-3, "log_every": 1, "checkpoint_every": 100, **train},
    )


def x_batch(n=8, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# -- conformance --------------------------------------------------------------------------------------------


def test_conformance_on_cr_lstm():
    check_component("loss", "mi", spec=spec_with())


def test_conformance_on_the_fc_baseline():
    check_component("loss", "mi", spec=spec_with(transform=FC))


def test_conformance_with_the_prior_branch_unweighted_and_paper_batch_norms():
    check_component("loss", "mi", spec=spec_with(mi={"weighted_branches": "recon", "bn_eps": 1e-6, "bn_momentum": 0.9}))


# -- composition --------------------------------------------------------------------------------------------


def test_mi_without_adv_is_refused_at_build():
    with pytest.raises(BuildError) as info:
        build_model(spec_with(with_adv=False))
    message = str(info.value)
    assert "\n" not in message
    assert "loss 'mi'" in message and "discriminator" in message and "loss 'adv'" in message


def test_mi_without_adv_is_refused_by_the_cli(tmp_path):
    from click.testing import CliRunner

    from genvae.cli.main import cli

    result = CliRunner().invoke(cli, ["build", "--preset", "crvae", "--loss", "mi", "-o", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "mi" in result.output and "adv" in result.output
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_trunk_is_shared_not_duplicated():
    model = build_model(spec_with())
    mi, adv = mi_of(model), adv_of(model)
    assert mi._adv is adv
    keys = list(model.state_dict())
    assert not any(k.startswith("losses.mi") and "trunk" in k for k in keys)
    assert any(k.startswith("losses.adv.trunk") for k in keys)
    assert {id(p) for p in mi.parameters()}.isdisjoint({id(p) for p in adv.trunk.parameters()})


# -- targets and weights -------------------------------------------------------------------------------------


def test_target_is_u_of_the_generation_lstm():
    model = build_model(spec_with())
    model.train()
    fwd = model(x_batch())
    target = mi_of(model).target(fwd.z, fwd.u)
    assert torch.allclose(target, model.transform.recurrent_u(fwd.z).detach(), atol=1e-6)  # u without its bias
    assert not target.requires_grad
    head = mi_of(model).head
    assert head is not None
    assert head(adv_of(model).trunk(fwd.x_hat)).shape == fwd.u.shape


def test_target_is_z_for_the_fc_baseline():
    model = build_model(spec_with(transform=FC))
    fwd = model(x_batch())
    assert torch.equal(mi_of(model).target(fwd.z, fwd.u), fwd.z.detach())
    assert mi_of(model).element_weights.shape == (12,)
    u_model = build_model(spec_with(transform=FC, mi={"target": "u"}))
    assert mi_of(u_model).element_weights.shape == u_model.transform.output_shape


def test_per_step_weights():
    eight = build_model(spec_with(transform=cr(steps=8)))
    layout = eight.layout
    assert torch.equal(mi_of(eight).element_weights.flatten(), layout.element_weights(PAPER_WEIGHTS))
    four = build_model(spec_with(mi={"group_weights": [0.0, 1.0, 0.0, 2.0]}))
    weights = mi_of(four).element_weights
    assert torch.equal(weights[four.layout.group_mask([0])], torch.zeros(32))
    assert torch.equal(weights[four.layout.group_mask([3])], torch.full((32,), 2.0))
    # a zero-weight step gives no gradient to the prediction of that step
    mi = mi_of(four)
    prediction = torch.randn(2, *four.layout.shape, requires_grad=True)
    (grad,) = torch.autograd.grad(mi.error(prediction, torch.zeros_like(prediction)), prediction)
    assert not grad[:, four.layout.group_mask([0, 2])].any() and grad[:, four.layout.group_mask([1])].all()
    with pytest.raises(BuildError, match="3 group_weights given"):
        build_model(spec_with(mi={"group_weights": [1.0, 1.0, 1.0]}))


def test_kappa_scales_the_generator_term():
    terms = {}
    for kappa in (0.02, 0.04):
        torch.manual_seed(0)
        model = build_model(spec_with(adv={"dropout": 0}, mi={"kappa": kappa}))
        model.train()
        torch.manual_seed(1)
        fwd = model(x_batch())
        model.phase_terms(fwd, "discriminator")
        terms[kappa] = model.phase_terms(fwd, "model")["mi"]
    assert terms[0.04].item() == pytest.approx(2 * terms[0.02].item(), rel=1e-5)


def test_both_branches_posterior_and_prior():
    model = build_model(spec_with(adv={"dropout": 0}))
    model.train()
    fwd = model(x_batch())
    mi = mi_of(model)
    pairs = mi.pairs(fwd)
    assert [p[0] for p in pairs] == ["recon", "prior"]
    assert pairs[1][1] is fwd.prior_sample().x  # the samples adv made, not a second generation
    only_prior = build_model(spec_with(mi={"on_recon": False}))
    assert [p[0] for p in mi_of(only_prior).pairs(only_prior(x_batch()))] == ["prior"]


# -- phases and training ---------------------------------------------------------------------------------------


def test_phases_and_what_they_train():
    spec = spec_with(phase_lr={"mi": 2e-3})
    model = build_model(spec)
    assert model.phases == ["discriminator", "mi", "model"]
    phases = {p.name: p for p in build_phases(model, spec.train, torch.device("cpu"))}
    names = {id(p): n for n, p in model.named_parameters()}
    mi_params = {names[id(p)]: g["lr"] for g in phases["mi"].optimizer.param_groups for p in g["params"]}
    assert mi_params["losses.mi.head.net.0.weight"] == pytest.approx(2e-3)
    assert mi_params["losses.adv.trunk.blocks.0.0.weight"] == pytest.approx(1e-3)  # the trunk's lr/2
    assert not any(n.startswith("losses.adv.head") for n in mi_params)
    assert not any(names[id(p)].startswith("losses.") for p in phases["model"].params)
    # without train_trunk the MI phase trains the head alone
    alone = build_model(spec_with(mi={"train_trunk": False}))
    (mi_phase,) = [p for p in build_phases(alone, spec.train, torch.device("cpu")) if p.name == "mi"]
    assert {n for n, _ in alone.named_parameters() if any(p is _ for p in mi_phase.params)} == {
        n for n, _ in alone.named_parameters() if n.startswith("losses.mi")
    }


def test_mi_trains_the_trunk_even_when_the_discriminator_is_skipped(tmp_path):
    spec = spec_with(adv={"skip_below": 0.6})
    torch.manual_seed(0)
    model = build_model(spec)
    adv = adv_of(model)
    with torch.no_grad():  # a constant discriminator: error rate 0.5 < 0.6, its update is skipped
        adv.head.out.weight.zero_()
        adv.head.out.bias.fill_(5.0)
    ckpt.save_model(model, tmp_path / "m")
    data = ImageData(images=((x_batch() + 1) * 127.5).round().to(torch.uint8), source="test")
    t = Trainer(model, tmp_path / "m", data, spec.train, torch.device("cpu"))
    head = {k: v.clone() for k, v in adv.head.state_dict().items()}
    trunk = {k: v.clone() for k, v in adv.trunk.state_dict().items()}
    mi = mi_of(model)
    assert mi.head is not None
    mi_head = {k: v.clone() for k, v in mi.head.state_dict().items()}
    terms = t.train_step(t.to_model_range(t.images))
    assert terms["discriminator/skipped"].item() == 1.0
    assert all(torch.equal(v, adv.head.state_dict()[k]) for k, v in head.items())
    assert not all(torch.equal(v, adv.trunk.state_dict()[k]) for k, v in trunk.items())
    assert not all(torch.equal(v, mi.head.state_dict()[k]) for k, v in mi_head.items())
    assert torch.isfinite(terms["mi.q"]) and torch.isfinite(terms["mi"])
