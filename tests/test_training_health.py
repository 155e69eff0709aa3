"""Training-health diagnostics (issue 21): the discriminator's accuracy per kind of image, each phase's gradient
norm, learning-rate warm-ups, a time budget, the class histogram per epoch, and the coverage / spectrum metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch

from genvae.core import checkpoint as ckpt
from genvae.core.compose import apply_sets, compose_spec, preset_spec
from genvae.core.data import ImageData
from genvae.core.errors import GenvaeError
from genvae.core.model import build_model
from genvae.core.spec import ModelSpec
from genvae.core.training import Trainer, seed_everything
from genvae.core.training.step import StepRunner, warmup_factor
from genvae.plugins.adv import AdversarialLoss
from genvae.plugins.classifier import Classifier, save_classifier
from genvae.plugins.metrics import class_shares_of, radial_power, spectrum_ratios

TINY_GAN = ["image_size=16", "transform.latent_dim=8", "loss.adv.widths=[8,8]", "loss.adv.head_hidden=16"]


def tiny_gan_spec(*extra: str) -> ModelSpec:
    return apply_sets(preset_spec("vae-gan-small"), [*TINY_GAN, *extra])


@pytest.fixture
def grey_data() -> ImageData:
    g = torch.Generator().manual_seed(0)
    base = torch.rand(32, 1, 4, 4, generator=g)
    images = torch.nn.functional.interpolate(base, size=16, mode="bilinear", align_corners=False)
    return ImageData(images=(images * 255).round().to(torch.uint8).contiguous(), source="grey test images")


def trainer_for(spec: ModelSpec, folder, data: ImageData, **train) -> Trainer:
    spec = spec.with_train(**{"batch_size": 8, "log_every": 2, "checkpoint_every": 100, **train})
    seed_everything(spec.train.seed)
    model = build_model(spec)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt.save_model(model, folder)
    return Trainer(model, folder, data, spec.train, torch.device("cpu"))


def metrics_lines(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / ckpt.METRICS).read_text().splitlines()]


# -- the discriminator's accuracy ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("bias", "expect"), [(50.0, (1.0, 0.0, 0.0)), (-50.0, (0.0, 1.0, 1.0))])
def test_discriminator_accuracy_per_kind_of_image(bias, expect):
    """A discriminator that calls everything real is right on every real image and wrong on every fake; one that
    calls everything fake the other way round. Logged, never summed into the discriminator's total."""
    torch.manual_seed(0)
    model = build_model(tiny_gan_spec())
    adv = model.losses["adv"]
    assert isinstance(adv, AdversarialLoss)
    with torch.no_grad():
        adv.head.out.weight.zero_()
        adv.head.out.bias.fill_(bias)
    fwd = model(torch.rand(8, 1, 16, 16) * 2 - 1)
    terms, _ = model.update_terms(fwd, "discriminator")
    got = tuple(fwd.logged[k].item() for k in ("adv.acc_real", "adv.acc_recon", "adv.acc_prior"))
    assert got == expect
    assert set(terms) == {"adv.d"}  # the accuracies are not loss terms
    # mix 1/2, 1/4, 1/4 of 8: the BCE of 4 real and 4 fake logits at +-50
    wrong = 4 if bias > 0 else 4
    assert terms["adv.d"].item() == pytest.approx(wrong / 8 * 50.0, rel=1e-4)


# -- gradient norms -----------------------------------------------------------------------------------------------
def test_each_phase_logs_its_gradient_norm_before_clipping():
    torch.manual_seed(0)
    spec = tiny_gan_spec().with_train(grad_clip_norm=1e-3, grad_norms="on", batch_size=8)
    model = build_model(spec)
    runner = StepRunner(model, spec.train, torch.device("cpu"))
    record = runner.run(torch.rand(8, 1, 16, 16) * 2 - 1, 0, 0)
    for phase in runner.phases:
        clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in phase.params if p.grad is not None]))
        logged = record[f"{phase.name}/grad_norm"]
        assert logged.item() > 10 * 1e-3  # the logged norm is the one the losses asked for ...
        assert clipped.item() == pytest.approx(1e-3, rel=1e-3)  # ... the step then clipped it to 1e-3
    assert {"model/grad_norm", "discriminator/grad_norm"} <= set(record)


def test_gradient_norm_equals_the_norm_of_the_gradients():
    torch.manual_seed(0)
    spec = tiny_gan_spec().with_train(grad_norms="on", batch_size=8)
    model = build_model(spec)
    runner = StepRunner(model, spec.train, torch.device("cpu"))
    record = runner.run(torch.rand(8, 1, 16, 16) * 2 - 1, 0, 0)
    model_phase = next(p for p in runner.phases if p.name == "model")
    by_hand = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model_phase.params if p.grad is not None))
    assert record["model/grad_norm"].item() == pytest.approx(by_hand, rel=1e-5)


def test_gradient_norms_are_on_for_several_phases_and_off_for_one(tiny_spec):
    gan = tiny_gan_spec()
    assert StepRunner(build_model(gan), gan.train, torch.device("cpu")).grad_norms
    assert not StepRunner(build_model(tiny_spec), tiny_spec.train, torch.device("cpu")).grad_norms
    on = tiny_spec.with_train(grad_norms="on")
    assert StepRunner(build_model(on), on.train, torch.device("cpu")).grad_norms


# -- learning-rate warm-up ----------------------------------------------------------------------------------------
def test_warmup_factor_by_step():
    stages = ((10, 0.02), (30, 0.2))
    assert [warmup_factor(stages, s) for s in (0, 9, 10, 29, 30, 1000)] == [0.02, 0.02, 0.2, 0.2, 1.0, 1.0]
    assert warmup_factor((), 0) == 1.0


def test_the_authors_discriminator_warmup_scales_only_the_warmed_parameters():
    """adam_gan.lua: the GAN head at lr/50 for 10 updates, lr/5 up to 30; the trunk (lr/2 in crVAE-GAN) untouched."""
    spec = tiny_gan_spec("loss.adv.trunk_lr=0.5", "loss.adv.d_warmup=head").with_train(phase_lr={"discriminator": 1e-3})
    model = build_model(spec)
    runner = StepRunner(model, spec.train, torch.device("cpu"))
    disc = next(p for p in runner.phases if p.name == "discriminator")
    adv = model.losses["adv"]
    assert isinstance(adv, AdversarialLoss)
    head_ids = {id(p) for p in adv.head.parameters()}

    def rates(step: int) -> tuple[set[float], set[float]]:
        runner.set_lr(1.0, step) if step == 0 else runner.warm_up(step)
        head: set[float] = set()
        rest: set[float] = set()
        for group in disc.optimizer.param_groups:
            (head if id(group["params"][0]) in head_ids else rest).add(round(group["lr"], 12))
        return head, rest

    assert rates(0) == ({2e-5}, {5e-4})
    assert rates(9) == ({2e-5}, {5e-4})
    assert rates(10) == ({2e-4}, {5e-4})
    assert rates(30) == ({1e-3}, {5e-4})
    assert runner.warmup_until == 30
    runner.warm_up(31)  # over: nothing changes any more
    assert rates(30) == ({1e-3}, {5e-4})


@pytest.mark.parametrize(("preset", "warmed"), [("crvae-gan", "head"), ("vae-gan", "all")])
def test_the_paper_presets_warm_up_the_discriminator_as_the_authors(preset, warmed):
    """crVAE-GAN warms up the GAN head only (its trunk steps with plain Adam); the VAE-GAN baseline all of it."""
    spec = preset_spec(preset)
    spec = apply_sets(spec, ["image_size=32", "transform.latent_dim=64"] if preset == "vae-gan" else ["image_size=32"])
    model = build_model(spec)
    runner = StepRunner(model, spec.train, torch.device("cpu"))
    disc = next(p for p in runner.phases if p.name == "discriminator")
    names = {id(p): n for n, p in model.named_parameters()}
    for group, stages in zip(disc.optimizer.param_groups, disc.warmups, strict=True):
        name = names[id(group["params"][0])]
        expect = ((10, 0.02), (30, 0.2)) if warmed == "all" or name.startswith("losses.adv.head") else ()
        assert stages == expect, name
    assert runner.warmup_until == 30


@pytest.mark.parametrize(
    "value", ['{"losses.adv": [[30, 0.2], [10, 0.02]]}', '{"losses.adv": [[10, 0]]}', '{"losses.adv": [10, 0.02]}']
)
def test_bad_warmups_are_refused_in_one_line(value):
    with pytest.raises(
        GenvaeError, match=r"train option 'lr_warmup': expected a mapping .*\[until_step, factor\]"
    ) as info:
        compose_spec(preset="vae-gan-small", sets=[f"train.lr_warmup={value}"])
    assert "\n" not in str(info.value) and "got {'losses.adv'" in str(info.value)


def test_a_warmup_under_no_parameters_is_refused():
    spec = tiny_gan_spec().with_train(lr_warmup={"losses.nothing": [[10, 0.1]]})
    with pytest.raises(GenvaeError, match="train.lr_warmup: no parameters under 'losses.nothing'"):
        StepRunner(build_model(spec), spec.train, torch.device("cpu"))


# -- a time budget ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("clock", ["wall", "process"])
def test_max_time_ends_the_run_with_a_checkpoint(tmp_path, tiny_spec, tiny_data, clock):
    t = trainer_for(tiny_spec, tmp_path / "m", tiny_data, epochs=50, max_time=1e-6, time_clock=clock)
    t.fit()
    assert t.step == 1  # the budget was spent after the first step
    last = ckpt.latest_checkpoint(tmp_path / "m")
    assert last is not None and last.name == "step-00000001"
    assert metrics_lines(tmp_path / "m")[-1]["step"] == 1  # the last step is logged, as at any end
    assert (tmp_path / "m" / "samples" / "step-00000001.png").exists()


# -- the class histogram per epoch --------------------------------------------------------------------------------
def test_class_histogram_per_epoch_with_a_classifier(tmp_path, grey_data):
    torch.manual_seed(0)
    net = Classifier(1, 16, 3, width=2, features=4, label="toy classifier features")
    with torch.no_grad():  # a classifier that reads the mean brightness: class 0 dark, 1 middle, 2 bright
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
    config = {"feature_network": "genvae-classifier", "data_name": "toy", "classes": ["a", "b", "c"]}
    save_classifier(net, tmp_path / "clf", {**config, "image_size": 16, "channels": 1, "width": 2, "features": 4})
    t = trainer_for(
        tiny_gan_spec(), tmp_path / "m", grey_data, epochs=2, classifier=str(tmp_path / "clf"), class_samples=50
    )
    t.fit()
    lines = [json.loads(x) for x in (tmp_path / "m" / ckpt.CLASSES).read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2] and [line["step"] for line in lines] == [4, 8]
    assert all(line["counts"] == [50, 0, 0] for line in lines)  # the constant classifier's class for every sample
    # a resumed run starts the file again from its step
    from genvae.core.training.metrics import cut_metrics

    assert cut_metrics(t.files, 4, ckpt.CLASSES) == 1


def test_a_missing_classifier_is_refused_before_training(tmp_path, grey_data):
    with pytest.raises(GenvaeError, match="does not exist"):
        trainer_for(tiny_gan_spec(), tmp_path / "m", grey_data, classifier=str(tmp_path / "none"))


# -- coverage and spectrum ----------------------------------------------------------------------------------------
def test_class_shares_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [5.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert class_shares_of(logits).tolist() == [0.5, 0.25, 0.25]


def test_radial_power_of_stripes_by_hand():
    """Rows alternating +-0.5 on 8x8: all power sits at the vertical Nyquist frequency (|F|^2 = (64 * 0.5)^2 = 1024
    at one frequency), which lies at radius 4; the radius-4 bin averages it with the other frequencies there."""
    x = torch.full((1, 1, 8, 8), -0.5)
    x[0, 0, ::2] = 0.5
    power = radial_power(x)
    ring = sum(1 for i in range(-4, 4) for j in range(-4, 4) if round(math.hypot(i, j)) == 4)
    assert power[:4].abs().max().item() < 1e-9
    assert power[4].item() == pytest.approx(1024 / ring)


def test_spectrum_ratios_find_a_checkerboard_and_a_blur():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(16, 1, 16, 16, generator=g)
    assert torch.allclose(spectrum_ratios(real, real), torch.ones(4, dtype=torch.float64))
    stripes = torch.zeros(1, 1, 16, 16)
    stripes[..., ::2, :] = 0.5
    assert spectrum_ratios(real, real + stripes).max().item() > 2  # a periodic artefact: excess high frequencies
    blurred = torch.nn.functional.avg_pool2d(real, 3, 1, 1)
    assert spectrum_ratios(real, blurred).max().item() < 0.5  # a blur: too little of them


# -- the report ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_report_draws_training_health_apart_from_the_losses(tmp_path, grey_data):
    from genvae.cli.report import build_report, is_health, terms_of

    t = trainer_for(tiny_gan_spec(), tmp_path / "m", grey_data, max_steps=4)
    t.fit()
    terms = terms_of(metrics_lines(tmp_path / "m"))
    health = [term for term in terms if is_health(term)]
    assert {"adv.acc_real", "adv.acc_recon", "adv.acc_prior", "model/grad_norm", "discriminator/grad_norm"} <= set(
        health
    )
    assert "adv.d" not in health and "mse" not in health
    (tmp_path / "m" / ckpt.CLASSES).write_text('{"epoch": 1, "step": 4, "counts": [3, 1, 0]}\n')
    page = build_report([tmp_path / "m"])
    assert "<h2 id=health>Training health</h2>" in page and "Mode coverage: m" in page
