"""``factor``: the dimension-wise permutation, the discriminator's loss and labels by hand, which parameters each
phase's term reaches, the phase and its optimiser, composition with cr-lstm and Laplacian latents (two training steps
each), the preset at three sizes and the CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from genvae.core.compose import apply_sets, preset_spec
from genvae.core.data import ImageData
from genvae.core.model import build_model
from genvae.core.spec import ModelSpec
from genvae.core.training import Trainer
from genvae.core.training.step import build_phases
from genvae.plugins.factor_vae import PHASE, FactorLoss, permute_dims
from genvae.testing import check_component, invoke_cli

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "image_size=16",
    "channels=3",
    "encoder.width=8",
    "encoder.depth=2",
    "decoder.width=8",
    "decoder.depth=2",
    "loss.factor.hidden=8",
    "loss.factor.depth=2",
]


def tiny_model(*extra: str):
    torch.manual_seed(0)
    return build_model(apply_sets(preset_spec("factor-vae"), [*TINY, *extra])).train()


def factor_of(model) -> FactorLoss:
    loss = model.losses["factor"]
    assert isinstance(loss, FactorLoss)
    return loss


# -- the permutation ---------------------------------------------------------------------------------------------
def test_permutation_keeps_each_dimensions_values_and_breaks_the_dependence():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(512, 1, generator=g)
    z = torch.cat([a, a, -a, torch.randn(512, 1, generator=g)], 1)  # three perfectly dependent columns
    perm = permute_dims(z, generator=torch.Generator().manual_seed(1))
    # each column is a permutation of itself: the same multiset of values
    assert torch.equal(perm.sort(0).values, z.sort(0).values)
    # the columns are shuffled independently: the joint dependence is gone
    corr = torch.corrcoef(perm.T)
    assert torch.corrcoef(z.T)[0, 1] == pytest.approx(1.0) and corr[0, 1].abs() < 0.15 and corr[0, 2].abs() < 0.15
    # ... and not all by the same permutation (which would keep the rows)
    assert not torch.equal(perm[:, 0], perm[:, 1])


# -- the discriminator phase -------------------------------------------------------------------------------------
def test_discriminator_loss_by_hand_joint_is_label_one():
    model = tiny_model()
    loss = factor_of(model)
    z = torch.randn(6, 16)
    torch.manual_seed(3)
    value = loss.discriminator_loss(z)
    torch.manual_seed(3)
    perm = permute_dims(z)
    d = loss.discriminator
    joint, permuted = d(z).squeeze(1), d(perm).squeeze(1)
    # -log sigmoid(l) for the joint samples (label 1), -log(1 - sigmoid(l)) for the permuted ones (label 0)
    by_hand = 0.5 * (-F.logsigmoid(joint).mean() - F.logsigmoid(-permuted).mean())
    assert value.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_the_discriminator_learns_to_tell_joint_from_permuted_and_then_estimates_tc():
    """On codes whose dimensions are strongly dependent, a trained discriminator gives a positive TC estimate
    (joint = label 1: l > 0 on joint samples); on independent codes its estimate stays near zero."""
    model = tiny_model("loss.factor.hidden=32")
    loss = factor_of(model)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(loss.discriminator.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(300):
        a = torch.randn(128, 1, generator=g)
        z = torch.cat([a.expand(-1, 8), torch.randn(128, 8, generator=g)], 1)
        opt.zero_grad()
        loss.discriminator_loss(z).backward()
        opt.step()
    a = torch.randn(512, 1, generator=g)
    z = torch.cat([a.expand(-1, 8), torch.randn(512, 8, generator=g)], 1)
    with torch.no_grad():
        assert loss.logits(z).mean() > 1.0 and loss.logits(permute_dims(z)).mean() < -1.0


def test_each_phase_term_reaches_only_its_own_parameters():
    model = tiny_model()
    loss = factor_of(model)
    fwd = model(torch.rand(8, 3, 16, 16) * 2 - 1)
    term = loss(fwd, "model")["factor"]
    term.backward(retain_graph=True)
    assert all(p.grad is None for p in loss.discriminator.parameters())  # the discriminator is fixed here
    for part in (model.encoder, model.transform):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    model.zero_grad(set_to_none=True)
    loss(fwd, PHASE)["d"].backward()
    assert all(p.grad is not None for p in loss.discriminator.parameters())
    assert all(p.grad is None for p in (*model.encoder.parameters(), *model.transform.parameters()))


def test_model_term_is_gamma_times_the_mean_logit_and_logged():
    model = tiny_model("loss.factor.gamma=2.5")
    loss = factor_of(model)
    fwd = model(torch.rand(8, 3, 16, 16) * 2 - 1)
    logits = loss.discriminator(fwd.z.flatten(1)).squeeze(1)
    assert loss(fwd, "model")["factor"].item() == pytest.approx(2.5 * logits.mean().item(), rel=1e-5)
    assert fwd.logged["factor.tc"].item() == pytest.approx(logits.mean().item(), rel=1e-5)


def test_the_discriminator_has_its_own_phase_after_the_model_and_its_learning_rate():
    model = tiny_model()
    assert model.phases == ["model", PHASE]
    spec = model.spec.with_train(phase_lr={PHASE: 1e-4}).train
    phases = {p.name: p for p in build_phases(model, spec, torch.device("cpu"))}
    owned = {id(p) for p in factor_of(model).discriminator.parameters()}
    assert {id(p) for p in phases[PHASE].params} == owned
    assert not owned & {id(p) for p in phases["model"].params}
    assert phases[PHASE].optimizer.param_groups[0]["lr"] == 1e-4


def test_options_are_validated():
    with pytest.raises(Exception, match="depth"):
        tiny_model("loss.factor.depth=0")
    with pytest.raises(Exception, match="gamma"):
        tiny_model("loss.factor.gamma=-1")


def test_conformance():
    check_component("loss", "factor", {"hidden": 8, "depth": 2})


# -- composition: any latent layout, flattened --------------------------------------------------------------------
FACTOR = {"name": "factor", "options": {"hidden": 8, "depth": 2, "gamma": 6.0}}


def cr_lstm_spec() -> ModelSpec:
    stack = {"width": 4, "max_width": 16}
    return ModelSpec.from_dict(
        {
            "image_size": 16,
            "channels": 3,
            "encoder": {"name": "cr-lstm", "options": stack},
            "transform": {"name": "cr-lstm", "options": {"latent_channels": 8, "steps": 4, "hidden": 16, "layers": 1}},
            "decoder": {"name": "cr-lstm", "options": stack},
            "losses": [{"name": "mse"}, {"name": "kl"}, FACTOR],
            "train": {"batch_size": 8, "lr": 1e-3, "log_every": 1, "checkpoint_every": 1000, "max_steps": 2},
        }
    )


def laplacian_spec() -> ModelSpec:
    return ModelSpec.from_dict(
        {
            "image_size": 16,
            "channels": 3,
            "encoder": {"name": "laplacian", "options": {"levels": 3, "widths": [8], "max_width": 16}},
            "transform": {"name": "laplacian", "options": {"latent_sizes": [4]}},
            "decoder": {"name": "laplacian", "options": {"widths": [8], "max_width": 16}},
            "prior": {"name": "m-net", "options": {"hidden": [8]}},
            "losses": [{"name": "pyramid-mse"}, {"name": "kl"}, FACTOR],
            "train": {"batch_size": 4, "lr": 1e-3, "log_every": 1, "checkpoint_every": 1000, "max_steps": 2},
        }
    )


@pytest.mark.parametrize("make", [cr_lstm_spec, laplacian_spec], ids=["cr-lstm", "laplacian"])
def test_trains_two_steps_on_other_latent_layouts(make, tmp_path, tiny_data):
    spec = make()
    torch.manual_seed(0)
    model = build_model(spec)
    loss = factor_of(model)
    assert loss.discriminator[0].in_features == model.layout.numel  # the whole latent, flattened
    before = {k: v.clone() for k, v in loss.discriminator.state_dict().items()}
    data = ImageData(tiny_data.images[:8], "tiny")
    Trainer(model, tmp_path, data, spec.train, torch.device("cpu")).fit()
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all("factor.tc" in line and f"{PHASE}/total" in line for line in lines)
    after = loss.discriminator.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the discriminator phase trained it


# -- the preset --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [16, 32, 64])
def test_preset_builds_at_the_usual_sizes(size):
    spec = apply_sets(preset_spec("factor-vae"), [f"image_size={size}", "channels=3"])
    build_model(spec)
    assert [s.name for s in spec.losses] == ["bce", "kl", "factor"]


def test_preset_trains_and_samples_from_the_cli(tmp_path):
    args = [a for s in TINY for a in ("--set", s)]
    out = invoke_cli(["build", "--preset", "factor-vae", *args, "-o", tmp_path / "m"])
    assert out.exit_code == 0, out.output
    run = invoke_cli(["train", tmp_path / "m", "--max-steps", "2", "--batch-size", "8", "--quiet"])
    assert run.exit_code == 0, run.output
    out = invoke_cli(["sample", tmp_path / "m", "-n", "4", "-o", tmp_path / "s.png"])
    assert out.exit_code == 0 and (tmp_path / "s.png").is_file(), out.output
