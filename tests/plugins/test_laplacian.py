"""The ``laplacian`` plugin: pyramid operators, the level-conditional encoder/transform/decoder,
``pyramid-mse``, lambda per level, greedy training, presets and the ``edit``/``sample --fix-levels``
commands. Everything runs on tiny models (16 px, 2-3 levels, latent 4 per level, width 8)."""

from __future__ import annotations

import json
import random

import attrs
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import seeded_build
from PIL import Image

from genvae.core.checkpoint import load_model, save_model
from genvae.core.components import ForwardPass
from genvae.core.compose import compose_spec, preset_spec
from genvae.core.data import ImageData
from genvae.core.errors import BuildError, GenvaeError, OptionsError
from genvae.core.model import build_model
from genvae.core.spec import ModelSpec
from genvae.core.training import Trainer
from genvae.plugins import laplacian as lap
from genvae.testing import check_component, random_images

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


def tiny(
    levels=3, prior="m-net", kernel="binomial", size=16, channels=3, lambdas=None, recon="pyramid-mse", latent=(4,)
) -> ModelSpec:
    kl = {"name": "kl", "options": {"group_weights": list(lambdas)} if lambdas is not None else {}}
    return ModelSpec.from_dict(
        {
            "image_size": size,
            "channels": channels,
            "encoder": {
                "name": "laplacian",
                "options": {"levels": levels, "widths": [8], "max_width": 16, "kernel": kernel},
            },
            "transform": {"name": "laplacian", "options": {"latent_sizes": list(latent)}},
            "decoder": {"name": "laplacian", "options": {"widths": [8], "max_width": 16}},
            "prior": {"name": prior, "options": {"hidden": [8]}} if prior == "m-net" else {"name": prior},
            "losses": [{"name": recon}, kl],
            "train": {"batch_size": 4, "lr": 1e-3, "log_every": 1, "checkpoint_every": 1000},
        }
    )


def tiny_data(spec, n=8, seed=0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *spec.image_shape), generator=g, dtype=torch.uint8)
    return ImageData(images, "random test images")


# -- the pyramid operators ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", lap.KERNELS)
def test_decompose_then_reconstruct_is_exact(kernel):
    """Property: for random sizes divisible by 2^(K-1), random K, batch and channels, reconstruct(decompose(x))
    gives x back to float precision."""
    rng = random.Random(1234)
    g = torch.Generator().manual_seed(1234)
    for _ in range(40):
        levels = rng.randint(1, 5)
        unit = 2 ** (levels - 1)
        h, w = unit * rng.randint(1, 6), unit * rng.randint(1, 6)
        x = torch.rand(rng.randint(1, 3), rng.choice([1, 3]), h, w, generator=g) * 2 - 1
        hs = lap.decompose(x, levels, kernel)
        assert len(hs) == levels
        assert [tuple(t.shape[-2:]) for t in hs] == [(h >> k, w >> k) for k in range(levels)]
        back = lap.reconstruct(hs, kernel)
        assert back.shape == x.shape
        assert torch.allclose(back, x, atol=1e-5, rtol=0), (kernel, levels, h, w)
        # the coarsest level is the blurred image itself, and the sum of upsampled levels is the image
        assert torch.equal(hs[-1], lap.gaussian_pyramid(x, levels, kernel)[-1])
        if h == w:
            total = sum((lap.upsample_to(t, w, kernel) for t in hs), torch.zeros(()))
            assert torch.allclose(total, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel", lap.KERNELS)
def test_operators_preserve_constants_and_halve(kernel):
    x = torch.full((2, 3, 8, 8), 0.3)
    assert torch.allclose(lap.blur_down(x, kernel), torch.full((2, 3, 4, 4), 0.3))
    assert torch.allclose(lap.upsample(x, kernel), torch.full((2, 3, 16, 16), 0.3))
    hs = lap.decompose(x, 3, kernel)
    assert all(h.abs().max() < 1e-6 for h in hs[:-1])  # a flat image has no detail bands


def test_binomial_kernel_values():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 4, 4] = 1.0
    down = lap.blur_down(x)
    k = torch.tensor([1.0, 4, 6, 4, 1]) / 16
    assert torch.allclose(down[0, 0, 2, 1:4], k[[0, 2, 4]] * k[2])  # even taps of the separable 5-tap kernel
    with pytest.raises(ValueError, match="even"):
        lap.blur_down(torch.zeros(1, 1, 5, 5))
    with pytest.raises(ValueError, match="divisible"):
        lap.decompose(torch.zeros(1, 1, 12, 12), 4)


# -- conformance ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name"),
    [("encoder", "laplacian"), ("transform", "laplacian"), ("decoder", "laplacian"), ("loss", "pyramid-mse")],
)
def test_conformance(kind, name):
    check_component(kind, name, spec=tiny(levels=3))


def test_conformance_variants():
    # bilinear kernel, 2 levels, grey, normal prior, unequal latent sizes
    check_component(
        "encoder", "laplacian", spec=tiny(levels=2, prior="normal", kernel="bilinear", channels=1, latent=(6, 3))
    )
    # the kit's own partners for the encoder (the counterparts, image-level mse)
    check_component("encoder", "laplacian", {"levels": 2, "widths": [8], "max_width": 8})


# -- the composed model --------------------------------------------------------------------------------------------


def test_layout_is_coarsest_first_and_decoder_rebuilds_the_pyramid():
    model = seeded_build(tiny(levels=3, latent=(5, 4, 3), prior="normal"), train=True)
    layout = model.layout
    assert layout.group_label == "level"
    assert layout.group_sizes == (5, 4, 3)  # coarsest (level 2) first
    assert model.transform.sizes == [3, 4, 5]  # by level k, 0 = finest
    model.eval()
    x = random_images(model.spec)
    with torch.no_grad():
        fwd = model(x, sample=False)
    targets, preds, recon = fwd.pyramid.targets, fwd.pyramid.predictions, fwd.pyramid.reconstructions
    assert [t.shape[-1] for t in targets] == [16, 8, 4] == [p.shape[-1] for p in preds]
    assert torch.allclose(recon[0], lap.reconstruct(preds))
    assert model.decoder.output == "image"  # x_hat is the rebuilt image itself, clamped; no tanh applied
    assert torch.equal(fwd.x_hat, recon[0].clamp(-1, 1))
    # pyramid-mse: per level the summed squared error, scaled by the level's area ratio 4^k, summed over levels
    per_level = [(p - t).pow(2).flatten(1).sum(1).mean() for p, t in zip(preds, targets, strict=True)]
    expect = sum(4**k * e for k, e in enumerate(per_level))
    assert torch.allclose(model.phase_terms(fwd, "model")["pyramid-mse"], expect)
    data = model.spec.to_dict()
    data["losses"][0]["options"] = {"level_scale": "none", "level_weights": [0.5, 1, 2]}
    plain = seeded_build(ModelSpec.from_dict(data), train=True)
    plain.eval()
    with torch.no_grad():
        terms = plain.phase_terms(plain(x, sample=False), "model")
    expect = sum(w * e for w, e in zip([2, 1, 0.5], per_level, strict=True))  # weights coarsest first
    assert torch.allclose(terms["pyramid-mse"], expect)
    # level k's decoder input depends on z_k..z_K only: changing z_0 (the finest) leaves coarser levels alone
    z = fwd.z.clone()
    z2 = z.clone()
    z2[:, -3:] += 1.0  # the last group is the finest level
    with torch.no_grad():
        a, b = model.transform.generate(z), model.transform.generate(z2)
    sizes = model.decoder.u_sizes
    assert torch.equal(a[:, sizes[0] :], b[:, sizes[0] :]) and not torch.equal(a[:, : sizes[0]], b[:, : sizes[0]])


def test_the_decoders_clamp_passes_gradient_where_it_clamps():
    model = seeded_build(tiny(), train=True)
    u = torch.randn(2, *model.transform.output_shape) * 50.0  # big inputs: the rebuilt image leaves [-1, 1]
    u.requires_grad_(True)
    fwd = ForwardPass(model, None)  # type: ignore[arg-type]  # no images: the latent side only
    out = model.decoder(u, fwd)
    assert fwd.pyramid is not None  # the decoder filled it
    recon = fwd.pyramid.reconstructions[0]
    assert torch.equal(out, recon.clamp(-1, 1)) and (recon.abs() > 1).any()
    (g_out,) = torch.autograd.grad(out.sum(), u, retain_graph=True)
    (g_recon,) = torch.autograd.grad(recon.sum(), u)
    assert torch.allclose(g_out, g_recon)  # straight-through: the clamp does not cut the gradient


def test_wrong_lambda_length_is_refused():
    with pytest.raises(BuildError, match="3 group_weights given.*2 level") as info:
        build_model(tiny(levels=2, lambdas=[10, 0.1, 0.01]))
    assert "\n" not in str(info.value)
    # the right length builds and weights the KL per level, coarsest first
    model = seeded_build(tiny(levels=3, lambdas=[10, 0.1, 0.01], prior="normal"), train=True)
    weights = model.losses["kl"].element_weights
    assert torch.allclose(weights, torch.tensor([10.0] * 4 + [0.1] * 4 + [0.01] * 4))


def test_bad_compositions_are_one_line_errors():
    with pytest.raises(BuildError, match="laplacian.*not divisible by 2\\^\\(levels-1\\) = 8"):
        build_model(tiny(levels=4, size=20))
    with pytest.raises(BuildError, match="widths lists 2 values for 3 levels"):
        build_model(
            ModelSpec.from_dict({**tiny().to_dict(), "decoder": {"name": "laplacian", "options": {"widths": [8, 8]}}})
        )
    spec = compose_spec(preset="cvae", decoder="laplacian", image_size=16)
    with pytest.raises(BuildError, match="decoder 'laplacian': needs the 'laplacian' latent transform"):
        build_model(spec)
    with pytest.raises(OptionsError, match="kernel"):
        build_model(
            ModelSpec.from_dict({**tiny().to_dict(), "encoder": {"name": "laplacian", "options": {"kernel": "gauss"}}})
        )
    spec = compose_spec(preset="cvae", losses="pyramid-mse", image_size=16)
    with pytest.raises(BuildError, match="pyramid-mse"):
        build_model(spec)


def test_presets_build_with_equal_total_latent():
    totals = {}
    for name in ("lapcvae-small", "lapcvae-no-m-small", "lapcvae-vae-small", "lapcvae", "lapcvae-no-m", "lapcvae-vae"):
        spec = preset_spec(name)
        model = build_model(spec, check=name.endswith("small"))
        totals[name] = model.layout.numel
    assert totals["lapcvae-small"] == totals["lapcvae-no-m-small"] == totals["lapcvae-vae-small"] == 48
    assert totals["lapcvae"] == totals["lapcvae-no-m"] == totals["lapcvae-vae"] == 256
    paper = preset_spec("lapcvae")
    assert (paper.image_size, paper.encoder.options["levels"], paper.prior.name) == (64, 4, "m-net")
    assert [s.options.get("group_weights") for s in paper.losses if s.name == "kl"] == [lap.PAPER_LAMBDAS]
    assert preset_spec("lapcvae-no-m").prior.name == "normal"
    # --encoder laplacian brings the lapcvae preset; --prior m-net keeps it
    spec = compose_spec(encoder="laplacian", prior="m-net")
    assert (spec.preset, spec.transform.name, spec.decoder.name, spec.prior.name) == (
        "lapcvae",
        "laplacian",
        "laplacian",
        "m-net",
    )


# -- greedy training ------------------------------------------------------------------------------------------------


def _snapshot(model, prefixes):
    return {k: v.clone() for k, v in model.state_dict().items() if any(k.startswith(p + ".") for p in prefixes)}


@pytest.mark.parametrize("prior", ["m-net", "normal"])
def test_greedy_stage_leaves_frozen_levels_bit_identical(tmp_path, prior):
    spec = tiny(levels=3, prior=prior)
    model = seeded_build(spec, train=True)
    data = tiny_data(spec)
    stages = lap.greedy_stages(model)
    assert [name for name, _ in stages] == ["level-2", "level-1", "level-0"]  # coarsest first
    for name, paths in stages[:2]:
        k = int(name.split("-")[1])
        others = [p for j in range(3) if j != k for p in lap.level_paths(model, j)]
        before_frozen = _snapshot(model, others)
        before_trained = _snapshot(model, paths)
        assert any("running_mean" in key for key in before_frozen)  # batch-norm buffers are compared too
        lap.unfreeze(model)
        config = spec.with_train(max_steps=3, train_only=paths).train
        (tmp_path / name).mkdir()
        Trainer(model, tmp_path / name, data, config, torch.device("cpu")).fit()
        after = model.state_dict()
        for key, value in before_frozen.items():
            assert torch.equal(after[key], value), f"{name}: frozen {key} changed"
        changed = [key for key, value in before_trained.items() if not torch.equal(after[key], value)]
        assert any(key.startswith(f"encoder.levels.{k}.") for key in changed)
        assert any(key.startswith(f"decoder.levels.{k}.") for key in changed)
        if prior == "m-net" and k < 2:
            assert any(key.startswith(f"prior.levels.{k}.") for key in changed)


def test_frozen_finer_levels_send_no_gradient_to_the_trained_level():
    """While level K trains, the untrained finer levels' pyramid-mse terms (whose decoders read z_K) are left out."""
    model = seeded_build(tiny(levels=2, prior="normal", lambdas=[0.0, 0.0]), train=True)
    model.train()
    for name, p in model.named_parameters():
        p.requires_grad_(not any(name.startswith(f"{part}.levels.0.") for part in ("encoder", "transform", "decoder")))
    fwd = model(random_images(model.spec))
    terms = model.phase_terms(fwd, "model")
    sum(terms.values()).backward()
    expect = 4 * (fwd.pyramid.predictions[1] - fwd.pyramid.targets[1]).pow(2).flatten(1).sum(1).mean()
    assert torch.allclose(terms["pyramid-mse"], expect)  # the coarsest level's term alone (area ratio 4)
    grad_with_skip = model.transform.levels[1].to_params.weight.grad.clone()
    model.zero_grad()
    fwd = model(random_images(model.spec))
    full = sum(
        (p - t).pow(2).flatten(1).sum(1).mean()
        for p, t in zip(fwd.pyramid.predictions, fwd.pyramid.targets, strict=True)
    )
    full.backward()
    assert not torch.allclose(model.transform.levels[1].to_params.weight.grad, grad_with_skip)


# -- commands ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli():
    from genvae.testing import genvae_cli

    return genvae_cli()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lap") / "m"
    save_model(seeded_build(tiny(levels=3, channels=1), train=True), folder)
    images = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(images / f"{i}.png")
    painted = np.asarray(Image.open(images / "0.png")).copy()
    painted[2:8, 2:14] = 255
    Image.fromarray(painted).save(images.parent / "painted.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[8:, 4:12] = 255
    Image.fromarray(mask).save(images.parent / "mask.png")
    return folder, images


def test_sample_fix_levels_writes_a_grid_per_k(cli, model_dir, tmp_path):
    folder, images = model_dir
    out = tmp_path / "fix.png"
    result = CliRunner().invoke(
        cli,
        [
            "sample",
            str(folder),
            "--from",
            str(images / "0.png"),
            "--fix-levels",
            "1",
            "--fix-levels",
            "2",
            "-n",
            "4",
            "-o",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    for k in (1, 2):
        with Image.open(tmp_path / f"fix-fix{k}.png") as img:
            assert img.size[0] > 16


def test_edit_writes_composites(cli, model_dir, tmp_path):
    folder, images = model_dir
    for extra in (
        ["--coarse", str(images.parent / "painted.png")],
        ["--mask", str(images.parent / "mask.png"), "--keep-levels", "2"],
    ):
        out = tmp_path / extra[0].strip("-")
        result = CliRunner().invoke(
            cli, ["edit", str(folder), str(images / "0.png"), *extra, "-n", "3", "-o", str(out), "--device", "cpu"]
        )
        assert result.exit_code == 0, result.output
        names = {p.name for p in out.iterdir()}
        assert {
            "input.png",
            "reconstruction.png",
            "samples.png",
            "composites.png",
            "mask.png",
            "pyramid.png",
            "edit-00.png",
            "edit-02.png",
        } <= names
    result = CliRunner().invoke(cli, ["edit", str(folder), str(images / "0.png"), "-o", str(tmp_path / "x")])
    assert result.exit_code == 1 and "--coarse" in result.output


def test_edit_keeps_the_reconstruction_outside_the_mask(model_dir):
    folder, images = model_dir
    model = load_model(folder)
    model.eval()
    x = torch.rand(1, 1, 16, 16) * 2 - 1
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 8:, 8:] = 1
    out = lap.edit_image(model, x, mask=mask, n=3, keep_levels=1)
    assert out["samples"].shape == (3, 1, 16, 16)
    outside = lap.soft_mask(mask) == 0
    assert torch.allclose(out["composites"][:, outside[0]], out["reconstruction"][:, outside[0]].expand(3, -1))
    with pytest.raises(GenvaeError, match="keep-levels"):
        lap.edit_image(model, x, mask=mask, keep_levels=4)


def test_evaluate_rmse_json(cli, model_dir, tmp_path):
    folder, images = model_dir
    out = tmp_path / "rmse.json"
    result = CliRunner().invoke(
        cli, ["evaluate", str(folder), "--data", str(images), "--metric", "rmse", "-o", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    rmse = data["models"][0]["metrics"]["rmse"]
    assert set(rmse) == {"rmse", "rmse_std"} and data["images"] == 8 and data["labels"]["rmse"] == "RMSE (0-255)"
    assert 0 < rmse["rmse"] < 255


def test_train_levels_command(cli, model_dir, tmp_path):
    folder, images = model_dir
    work = tmp_path / "m"
    save_model(load_model(folder), work)
    before = load_model(work).state_dict()
    result = CliRunner().invoke(
        cli,
        [
            "train-levels",
            str(work),
            "--greedy",
            "--steps",
            "2",
            "--data",
            str(images),
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (work / "stages").iterdir()) == ["level-0", "level-1", "level-2"]
    after = load_model(work).state_dict()
    assert not torch.equal(before["decoder.levels.0.net.0.weight"], after["decoder.levels.0.net.0.weight"])
    result = CliRunner().invoke(
        cli,
        [
            "train-levels",
            str(work),
            "--retrain-m",
            "--steps",
            "2",
            "--data",
            str(images),
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    again = load_model(work).state_dict()
    for key, value in after.items():
        assert torch.equal(again[key], value) == (not key.startswith("prior.")), key


def test_a_vampprior_on_the_pyramid_keeps_the_bands_to_the_batch():
    """VampPrior's pseudo-inputs go through the encoder with the batch; the pyramid the losses read holds the
    batch's own bands only (before, pyramid-mse met 2 images against 2 + K bands and the build failed)."""
    spec = tiny(prior="vamp")
    spec = attrs.evolve(spec, prior=attrs.evolve(spec.prior, options={"components": 3}))
    model = build_model(spec).train()
    x = random_images(spec, batch=2)
    fwd = model(x)
    assert all(h.shape[0] == 2 for h in fwd.pyramid.targets + fwd.pyramid.blurred)
    assert all(c is None or c.shape[0] == 2 for c in fwd.pyramid.condition)
    assert fwd.extra_posterior.mean.shape[0] == 3
    bands = lap.decompose(x, 3, model.encoder.kernel)
    assert all(torch.equal(a, b) for a, b in zip(fwd.pyramid.targets, bands, strict=True))
