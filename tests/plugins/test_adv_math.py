"""``adv``'s mathematics, checked against hand computation: the discriminator's BCE with real = 1 and
fake = 0, the non-saturating generator loss -log D(G(z)), which parameters each phase's loss reaches
(the VAE-GAN baseline's encoder gets no GAN gradient), the authors' minibatch discrimination, the
baseline's learning rates, and a tiny adversarial run whose discriminator beats chance."""

from __future__ import annotations

import math

import pytest
import torch

from genvae.core.compose import compose_spec
from genvae.core.data import ImageData
from genvae.core.model import build_model
from genvae.core.training import Trainer
from genvae.core.training.step import build_phases
from genvae.plugins.adv import MinibatchDiscrimination

# 16-px versions of the paper's presets: small widths, every mathematical setting of the preset kept
TINY = [
    "image_size=16",
    "channels=3",
    "encoder.width=4",
    "encoder.max_width=16",
    "decoder.width=4",
    "decoder.max_width=16",
    "loss.adv.widths=[8,8]",
    "loss.adv.head_hidden=16",
    "loss.adv.minibatch_kernels=4",
    "loss.adv.minibatch_dims=3",
    "train.batch_size=8",
]
TINY_FC = [*TINY, "transform.latent_dim=8"]
TINY_CR = [*TINY, "transform.hidden=16", "transform.layers=1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


def tiny(preset: str, *sets: str, seed: int = 0):
    base = TINY_FC if "vae-gan" in preset and "crvae" not in preset else TINY_CR
    if preset.startswith("crvae-gan") and "no-mi" not in preset:
        base = [*base, "loss.mi.hidden=8"]
    torch.manual_seed(seed)
    return build_model(compose_spec(preset=preset, sets=[*base, *sets]))


def x_batch(n=8, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def grads(term, params):
    """Gradients of term w.r.t. params; None where the term does not reach a parameter."""
    return torch.autograd.grad(term, list(params), retain_graph=True, allow_unused=True)


def reached(term, module) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in grads(term, module.parameters()))


def untouched(term, module) -> bool:
    return all(g is None or not g.any() for g in grads(term, module.parameters()))


def log_sigmoid(t):
    return torch.log(1.0 / (1.0 + torch.exp(-t)))  # written out: no BCE helper of torch's


# -- the discriminator's loss ---------------------------------------------------------------------------------


def test_discriminator_loss_is_bce_with_real_one_and_fake_zero():
    """d = -(sum over real log D(x) + sum over fakes log(1 - D(x~))) / n, on the batch the loss says it builds."""
    model = tiny("vae-gan-small", "loss.adv.dropout=0", "loss.adv.mix=[0.75,0.125,0.125]")
    adv = model.losses["adv"]
    with torch.no_grad():
        adv.head.out.bias.fill_(2.0)  # D leans towards "real": a label swap changes d by ~1
    model.train()
    fwd = model(x_batch())
    d = model.phase_terms(fwd, "discriminator")["adv.d"]
    x_prior = fwd.prior_sample().x
    assert adv.batch_counts(8) == (6, 1, 1)
    batch = torch.cat([fwd.x[:6], fwd.x_hat[6:7], x_prior[7:8]]).detach()
    with torch.no_grad():
        logits = adv.discriminate(batch)
    expected = -(log_sigmoid(logits[:6]).sum() + torch.log(1 - torch.sigmoid(logits[6:])).sum()) / 8
    swapped = -(torch.log(1 - torch.sigmoid(logits[:6])).sum() + log_sigmoid(logits[6:]).sum()) / 8
    assert abs(expected.item() - swapped.item()) > 0.5  # the check below tells the labels apart
    assert d.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize(
    "logit, threshold, skipped",
    [
        (4.0, 0.3, True),  # all called real: wrong on the 2 fakes of 8, error rate 0.25
        (4.0, 0.2, False),
        (-4.0, 0.7, False),  # all called fake: wrong on the 6 real images, error rate 0.75
        (-4.0, 0.8, True),
    ],
)
def test_skip_rule_counts_errors_against_real_one_fake_zero(logit, threshold, skipped):
    model = tiny("vae-gan-small", f"loss.adv.skip_below={threshold}", "loss.adv.mix=[0.75,0.125,0.125]")
    head = model.losses["adv"].head
    with torch.no_grad():
        head.out.weight.zero_()
        head.out.bias.fill_(logit)
    model.train()
    (flag,) = model.update_terms(model(x_batch()), "discriminator")[1]
    assert bool(flag) is skipped


def test_discriminator_loss_reaches_the_discriminator_only():
    model = tiny("crvae-gan-no-mi", "loss.adv.dropout=0")
    model.train()
    fwd = model(x_batch())
    d = model.phase_terms(fwd, "discriminator")["adv.d"]
    adv = model.losses["adv"]
    assert reached(d, adv.trunk) and reached(d, adv.head)
    for part in (model.encoder, model.transform, model.decoder):
        assert all(g is None for g in grads(d, part.parameters()))  # fakes detached: not even a zero gradient
    # and its optimiser holds exactly the discriminator: the model phase's holds none of it
    phases = {p.name: p for p in build_phases(model, model.spec.train, torch.device("cpu"))}
    assert {id(p) for p in phases["discriminator"].params} == {id(p) for p in adv.parameters()}
    assert {id(p) for p in phases["model"].params}.isdisjoint({id(p) for p in adv.parameters()})


# -- the generator's loss ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["crvae-gan-no-mi", "vae-gan-small"])
def test_generator_loss_is_non_saturating(preset):
    """g = beta * mean(-log D(x~)) on reconstructions and on prior samples, not beta * mean(log(1 - D(x~)))."""
    model = tiny(preset, "loss.adv.dropout=0")
    adv = model.losses["adv"]
    with torch.no_grad():
        adv.head.out.bias.fill_(-3.0)  # D is confident the fakes are fake: the two forms differ by ~3
    model.train()
    fwd = model(x_batch())
    model.phase_terms(fwd, "discriminator")
    terms = model.phase_terms(fwd, "model")
    beta = adv.options.beta
    assert beta == {"crvae-gan-no-mi": 0.0125, "vae-gan-small": 0.05}[preset]
    f_recon, f_prior = fwd.fake_features.by_branch.values()
    for key, features in (("adv.g_recon", f_recon), ("adv.g_prior", f_prior)):
        with torch.no_grad():
            logits = adv.head(features)
        assert logits.mean() < -2
        expected = beta * (-log_sigmoid(logits)).mean()
        assert terms[key].item() == pytest.approx(expected.item(), rel=1e-5), key
        assert terms[key].item() > beta * 2.5  # -log D(x~) is large where D(x~) is small


def test_generator_terms_reach_the_generator_and_the_crvae_gan_encoder():
    model = tiny("crvae-gan-no-mi", "loss.adv.dropout=0")
    model.train()
    fwd = model(x_batch())
    model.phase_terms(fwd, "discriminator")
    terms = model.phase_terms(fwd, "model")
    for key in ("adv.g_recon", "adv.g_prior"):
        assert reached(terms[key], model.decoder) and reached(terms[key], model.transform.gen), key
    assert reached(terms["adv.g_recon"], model.encoder)  # crVAE-GAN: the GAN gradient reaches the encoder
    assert untouched(terms["adv.g_prior"], model.encoder)  # prior samples never see the encoder


def bn_statistics(m: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Copies of a batch norm's running mean, running variance and batch count."""
    assert m.running_mean is not None and m.running_var is not None and m.num_batches_tracked is not None
    return m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()


def test_vae_gan_encoder_gets_no_gan_gradient():
    """The authors' f_vae_encoder: reconstruction + KL gradients only; decoder and fc Linear z -> u get the GAN's."""
    model = tiny("vae-gan-small", "loss.adv.dropout=0")
    assert model.losses["adv"].options.gan_to_encoder is False
    model.train()
    fwd = model(x_batch())
    model.phase_terms(fwd, "discriminator")  # makes the prior samples (a generation pass of its own)
    norms = [m for m in model.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    running = [bn_statistics(m) for m in norms]
    terms = model.phase_terms(fwd, "model")
    gan = terms["adv.g_recon"] + terms["adv.g_prior"]
    encoder_side = [*model.encoder.parameters(), *model.transform.to_params.parameters()]
    assert all(g is None or not g.any() for g in grads(gan, encoder_side))
    assert reached(gan, model.decoder) and reached(gan, model.transform.from_z)
    assert reached(terms["mse"] + terms["kl"], model.encoder)
    assert any(g is not None and g.any() for g in grads(terms["mse"], model.transform.to_params.parameters()))
    # the reconstructions the GAN judges are x_hat's values, and judging them left the BN statistics alone
    regenerated = model.losses["adv"].generator_reconstructions(fwd)
    assert torch.allclose(regenerated, fwd.x_hat, atol=1e-6)
    for m, (mean, var, count) in zip(norms, running, strict=True):
        now_mean, now_var, now_count = bn_statistics(m)
        assert torch.equal(now_mean, mean) and torch.equal(now_var, var)
        assert torch.equal(now_count, count)


def test_gan_to_encoder_gives_the_baseline_encoder_the_gan_gradient():
    model = tiny("vae-gan-small", "loss.adv.dropout=0", "loss.adv.gan_to_encoder=true")
    model.train()
    fwd = model(x_batch())
    model.phase_terms(fwd, "discriminator")
    assert reached(model.phase_terms(fwd, "model")["adv.g_recon"], model.encoder)


# -- learning rates ------------------------------------------------------------------------------------------------


def lrs(model) -> dict[str, dict[str, float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        phase.name: {names[id(p)]: g["lr"] for g in phase.optimizer.param_groups for p in g["params"]}
        for phase in build_phases(model, model.spec.train, torch.device("cpu"))
    }


@pytest.mark.parametrize("preset, lr", [("vae-gan", 3e-4), ("vae-gan-small", 1e-3)])
def test_vae_gan_discriminator_runs_at_half_the_lr(preset, lr):
    """train_test_baseline.lua: optimStateGan at LR/2 for the whole discriminator, head and trunk."""
    by_phase = lrs(tiny(preset))
    assert all(v == pytest.approx(lr / 2) for v in by_phase["discriminator"].values())
    assert any(".trunk." in n for n in by_phase["discriminator"]) and any(
        ".head." in n for n in by_phase["discriminator"]
    )
    assert by_phase["model"]["decoder.net.0.weight"] == pytest.approx(lr)


def test_crvae_gan_trunk_at_half_the_lr_head_at_the_lr():
    by_phase = lrs(tiny("crvae-gan"))
    d = by_phase["discriminator"]
    assert all(v == pytest.approx(1.5e-4) for n, v in d.items() if ".trunk." in n)
    assert all(v == pytest.approx(3e-4) for n, v in d.items() if ".head." in n)
    assert len(d) == len(list(tiny("crvae-gan").losses["adv"].parameters()))


# -- minibatch discrimination ---------------------------------------------------------------------------------------


def test_minibatch_discrimination_by_hand():
    """o(x_i) = (1/n) sum_j exp(-||M_i - M_j||_1) over the whole batch, the sample itself included."""
    mbd = MinibatchDiscrimination(2, kernels=1, dims=2)
    with torch.no_grad():
        mbd.T.copy_(torch.eye(2))  # M_i = x_i
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])  # L1 distances: 1 (0-1), 2 (0-2), 3 (1-2)
    e = math.exp
    expected = torch.tensor([(1 + e(-1) + e(-2)) / 3, (e(-1) + 1 + e(-3)) / 3, (e(-2) + e(-3) + 1) / 3])
    out = mbd(x)
    assert torch.equal(out[:, :2], x)
    assert torch.allclose(out[:, 2], expected, atol=1e-6)


def test_minibatch_discrimination_kernels_start_uniform_in_one_over_32():
    """The authors' layer is an nn.Linear (no bias) of 1024 inputs: Torch initialises it uniform in +-1/sqrt(1024)."""
    torch.manual_seed(0)
    t = MinibatchDiscrimination(1024, kernels=100, dims=5).T.detach()
    assert t.shape == (1024, 500)
    assert t.abs().max() <= 1 / 32 and t.abs().max() > 0.99 / 32
    assert t.std().item() == pytest.approx(1 / 32 / math.sqrt(3), rel=0.02)
    assert abs(t.mean().item()) < 1e-3


# -- a tiny adversarial run -----------------------------------------------------------------------------------------


def images(n, seed) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(base, size=16, mode="bilinear", align_corners=False) * 2 - 1


def discriminator_accuracy(model, x) -> float:
    """The share of a mixed batch (real, reconstructions, prior samples) the discriminator labels right."""
    adv = model.losses["adv"]
    n = x.shape[0]
    real, recon, _ = adv.batch_counts(n)
    model.eval()
    try:
        with torch.no_grad():
            fakes = torch.cat([model(x, sample=False).x_hat[real : real + recon], model.sample(n)[real + recon :]])
            logits = adv.discriminate(torch.cat([x[:real], fakes]))
    finally:
        model.train()
    labels = torch.cat([torch.ones(real), torch.zeros(n - real)])
    return ((logits > 0).float() == labels).float().mean().item()


def test_tiny_adversarial_run_trains_a_discriminator_above_chance(tmp_path):
    """30 steps of vae-gan-small at 16 px through the Trainer: the discriminator learns which images are real."""
    model = tiny(
        "vae-gan-small",
        "loss.adv.dropout=0",
        "loss.adv.skip_below=0",
        "train.batch_size=16",
        'train.phase_lr={"discriminator": 0.003}',
    )
    data = ImageData(images=((images(16, 0) + 1) * 127.5).round().to(torch.uint8), source="test")
    trainer = Trainer(model, tmp_path / "m", data, model.spec.train, torch.device("cpu"))
    held_out = images(16, 1)
    before = discriminator_accuracy(model, held_out)
    train = images(16 * 30, 2)
    for i in range(30):
        trainer.train_step(train[16 * i : 16 * (i + 1)])
    after = discriminator_accuracy(model, held_out)
    assert before <= 0.625
    assert after >= 0.875, f"discriminator accuracy {before} -> {after}"


@pytest.mark.parametrize("spatial", [True, False])
def test_torch7_dropout_scales_at_evaluation_not_in_training(spatial):
    """Torch7's nn.SpatialDropout / nn.Dropout(p, true): kept values pass unscaled while training (each is x or 0),
    and evaluation multiplies by 1 - p, so the expected activation matches training's."""
    from genvae.plugins.adv import Torch7Dropout

    drop = Torch7Dropout(0.5, spatial)
    x = torch.arange(1.0, 2 * 3 * 4 * 4 + 1).view(2, 3, 4, 4)
    drop.eval()
    assert torch.equal(drop(x), x * 0.5)
    drop.train()
    torch.manual_seed(0)
    y = drop(x)
    assert ((y == x) | (y == 0)).all() and (y == 0).any() and (y == x).any()
    if spatial:  # whole channels are dropped
        per_channel = (y == 0).flatten(2)
        assert (per_channel.all(2) | ~per_channel.any(2)).all()
