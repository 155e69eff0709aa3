"""``mi``'s mathematics, against hand computation: the per-step weights [0.1, 1.5, 1.5, 1.25, 0.1, 0.1, 1, 1]
in time-step order, the regression target u detached, the values of both phases (kappa, both branches),
and which parameters each phase's term reaches."""

from __future__ import annotations

import pytest
import torch

from genvae.core.compose import compose_spec, preset_spec
from genvae.core.model import build_model
from genvae.core.training.step import build_phases

# the authors' per-step MI weights (train_test_lstm.lua: channels 1-8 x0.1, 9-24 x1.5, 25-32 x1.25, 33-48 x0.1,
# 49-64 x1), written out here, not imported: a reordered constant in the code must fail these tests
AUTHORS_MI = [0.1, 1.5, 1.5, 1.25, 0.1, 0.1, 1.0, 1.0]

# crvae-gan at 16 px: 8 time steps kept, latent 8x4x4 (one channel, 16 values, per step)
TINY = [
    "image_size=16",
    "encoder.width=4",
    "encoder.max_width=16",
    "decoder.width=4",
    "decoder.max_width=16",
    "transform.latent_channels=8",
    "transform.hidden=16",
    "transform.layers=1",
    "loss.adv.widths=[8,8]",
    "loss.adv.head_hidden=16",
    "loss.adv.minibatch_kernels=4",
    "loss.adv.minibatch_dims=3",
    "loss.adv.dropout=0",
    "loss.adv.skip_below=0",
    "loss.mi.hidden=8",
    "train.batch_size=8",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


def tiny(*sets: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(compose_spec(preset="crvae-gan", sets=[*TINY, *sets]))


def x_batch(n=8, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def step_weights(weights, model) -> torch.Tensor:
    """Each element of u (8x4x4, step t = channel t) weighted by its step's weight, written out."""
    return torch.tensor(weights).view(8, 1, 1).expand(*model.transform.output_shape)


def grads(term, params):
    return torch.autograd.grad(term, list(params), retain_graph=True, allow_unused=True)


def reached(term, module) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in grads(term, module.parameters()))


# -- the weights ---------------------------------------------------------------------------------------------------


def test_paper_presets_carry_the_authors_weights_in_step_order():
    spec = preset_spec("crvae-gan")
    (mi,) = [s for s in spec.losses if s.name == "mi"]
    assert list(mi.options["group_weights"]) == AUTHORS_MI
    assert mi.options["kappa"] == 0.02 and mi.options["weighted_branches"] == "both"
    # the default for an 8-step target is the same
    default = tiny("loss.mi.group_weights=[]").losses["mi"]
    assert torch.equal(default.element_weights, step_weights(AUTHORS_MI, tiny()))


@pytest.mark.parametrize("step", range(8))
def test_error_of_one_step_by_hand(step):
    """An error of 1 on step t's 16 values only: mean over the 128 values of w_t * 1 = w_t / 8."""
    mi = tiny().losses["mi"]
    target = torch.randn(2, 8, 4, 4)
    prediction = target.clone()
    prediction[:, step] += 1.0
    assert mi.error(prediction, target).item() == pytest.approx(AUTHORS_MI[step] / 8, rel=1e-6)
    assert mi.error(prediction, target, weighted=False).item() == pytest.approx(1 / 8, rel=1e-6)


# -- the values of both phases ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("branches", ["both", "recon"])
def test_phase_values_by_hand(branches):
    """mi phase: weighted MSE of the head on detached images; model phase: kappa times the same on the
    shared trunk features; the prior branch unweighted only with weighted_branches=recon."""
    model = tiny(f"loss.mi.weighted_branches={branches}")
    model.train()
    mi, adv = model.losses["mi"], model.losses["adv"]
    fwd = model(x_batch())
    model.phase_terms(fwd, "discriminator")
    q = model.phase_terms(fwd, "mi")["mi.q"]
    term = model.phase_terms(fwd, "model")["mi"]
    z_p, u_p, x_p = fwd.prior_sample()
    bias = model.transform.gen.bias
    t_recon, t_prior = (fwd.u - bias).detach(), (u_p - bias).detach()  # u without its bias
    w = step_weights(AUTHORS_MI, model)
    w_prior = w if branches == "both" else torch.ones_like(w)
    with torch.no_grad():
        p_recon = mi.head(adv.trunk(fwd.x_hat))
        p_prior = mi.head(adv.trunk(x_p))
    expected = (w * (p_recon - t_recon) ** 2).mean() + (w_prior * (p_prior - t_prior) ** 2).mean()
    assert q.item() == pytest.approx(expected.item(), rel=1e-5)
    assert term.item() == pytest.approx(0.02 * expected.item(), rel=1e-5)


# -- what each phase's term reaches -----------------------------------------------------------------------------------


def test_target_is_detached():
    """The regression target u carries no gradient: the mi phase's term reaches nothing of the generator, and
    the model phase's gradient at u is exactly what flows back through the image x_hat = dec(u)."""
    model = tiny()
    model.train()
    fwd = model(x_batch())
    model.phase_terms(fwd, "discriminator")
    q = model.phase_terms(fwd, "mi")["mi.q"]
    for tensor in (fwd.u, fwd.z):
        assert torch.autograd.grad(q, tensor, retain_graph=True, allow_unused=True)[0] is None
    for part in (model.encoder, model.transform, model.decoder):
        assert all(g is None for g in grads(q, part.parameters()))
    term = model.phase_terms(fwd, "model")["mi"]
    (at_u,) = torch.autograd.grad(term, fwd.u, retain_graph=True)
    (at_image,) = torch.autograd.grad(term, fwd.x_hat, retain_graph=True)
    (through_image,) = torch.autograd.grad(fwd.x_hat, fwd.u, at_image, retain_graph=True)
    assert at_u.abs().sum() > 0
    assert torch.allclose(at_u, through_image, rtol=1e-4, atol=1e-9)


def test_mi_phase_trains_head_and_trunk_the_model_phase_the_generator():
    model = tiny()
    model.train()
    mi, adv = model.losses["mi"], model.losses["adv"]
    fwd = model(x_batch())
    model.phase_terms(fwd, "discriminator")
    q = model.phase_terms(fwd, "mi")["mi.q"]
    assert reached(q, mi.head) and reached(q, adv.trunk)
    assert all(g is None for g in grads(q, adv.head.parameters()))
    term = model.phase_terms(fwd, "model")["mi"]
    for part in (model.decoder, model.transform.gen, model.encoder):  # the crVAE-GAN code: to the encoder too
        assert reached(term, part)
    phases = {p.name: {id(x) for x in p.params} for p in build_phases(model, model.spec.train, torch.device("cpu"))}
    assert phases["mi"] == {id(p) for p in (*mi.head.parameters(), *adv.trunk.parameters())}
    assert phases["model"].isdisjoint({id(p) for p in (*mi.parameters(), *adv.parameters())})


def test_a_zero_weight_step_gets_no_gradient_in_either_branch():
    model = tiny("loss.mi.group_weights=[0,1,1,1,1,1,1,1]")
    mi = model.losses["mi"]
    model.train()
    fwd = model(x_batch())
    model.phase_terms(fwd, "discriminator")
    model.phase_terms(fwd, "model")
    f_recon, f_prior = fwd.fake_features.by_branch.values()
    for features, target in ((f_recon, fwd.u), (f_prior, fwd.prior_sample().u)):
        prediction = mi.head(features.detach())
        (g,) = torch.autograd.grad(mi.error(prediction, target.detach()), prediction)
        assert not g[:, 0].any() and g[:, 1:].abs().sum() > 0
