"""LapCVAE paper features beyond the first version: the 128x128 five-level preset, the encoder conditioned on
the coarser levels' reconstructions (paper Figure 3, option ``condition=reconstruction``) and gradient-domain
(Poisson) compositing for ``genvae edit --blend poisson``. Hand-computed expectations, no mocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import seeded_build
from PIL import Image

from genvae.cli.models import latent_text
from genvae.core.checkpoint import save_model
from genvae.core.components import LatentLayout
from genvae.core.compose import preset_spec
from genvae.core.model import build_model
from genvae.core.spec import ModelSpec
from genvae.plugins import laplacian as lap
from genvae.testing import check_component, random_images

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


def tiny(condition="real", channels=3, prior="m-net") -> ModelSpec:
    return ModelSpec.from_dict(
        {
            "image_size": 16,
            "channels": channels,
            "encoder": {
                "name": "laplacian",
                "options": {"levels": 3, "widths": [8], "max_width": 16, "condition": condition},
            },
            "transform": {"name": "laplacian", "options": {"latent_sizes": [4]}},
            "decoder": {"name": "laplacian", "options": {"widths": [8], "max_width": 16}},
            "prior": {"name": "m-net", "options": {"hidden": [8]}} if prior == "m-net" else {"name": prior},
            "losses": [{"name": "pyramid-mse"}, {"name": "kl"}],
            "train": {"batch_size": 4},
        }
    )


# -- the paper's 128x128 model ----------------------------------------------------------------------------------------


def test_lapcvae_128_preset_has_the_papers_five_levels_and_latent_sizes():
    spec = preset_spec("lapcvae-128")
    assert (spec.image_size, spec.channels, spec.prior.name) == (128, 3, "m-net")
    model = build_model(spec, check=False)  # about 22 M parameters: built for real, no dry run
    enc, tr = model.encoder, model.transform
    assert enc.num_levels == 5
    assert [enc.image_size >> k for k in range(5)] == [128, 64, 32, 16, 8]
    # nz = [128, 128, 64, 64, 64] in the paper's level order k = 0 (128x128) ... 4 (8x8); coarsest first here
    assert tr.sizes == [128, 128, 64, 64, 64]
    assert model.layout.group_sizes == (64, 64, 64, 128, 128) and model.layout.numel == 448
    # genvae build's summary names each level's size (it once said "5 levels of 64" for these 448 values)
    assert latent_text(model.layout) == "[448] (448 values, 5 levels of 64, 64, 64, 128, 128)"
    assert latent_text(LatentLayout((16, 4, 4), (64, 64, 64, 64), "time step")) == (
        "[16, 4, 4] (256 values, 4 time steps of 64)"
    )
    assert [s.options.get("group_weights") for s in spec.losses if s.name == "kl"] == [lap.PAPER_LAMBDAS_128]
    assert len(model.prior.levels) == 4  # an M network for every level but the coarsest
    x = torch.zeros(1, 3, 128, 128)
    model.eval()
    with torch.no_grad():
        fwd = model(x, sample=False)
    assert [p.shape[-1] for p in fwd.pyramid.predictions] == [128, 64, 32, 16, 8]
    assert fwd.x_hat.shape == (1, 3, 128, 128)


# -- encoder conditioning: the real coarser image or the coarser levels' reconstruction --------------------------------


def level_inputs(model, x):
    """What each level's conv encoder receives in one pass, captured by forward pre-hooks."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        level.register_forward_pre_hook(lambda mod, args, k=k: seen.setdefault(k, args[0].detach().clone()))
        for k, level in enumerate(model.encoder.levels)
    ]
    try:
        with torch.no_grad():
            fwd = model(x, sample=False)
    finally:
        for h in hooks:
            h.remove()
    return seen, fwd


def test_default_conditioning_is_the_real_coarser_image():
    model = seeded_build(tiny())
    assert model.encoder.options.condition == "real"
    x = random_images(model.spec, batch=2)
    seen, fwd = level_inputs(model, x)
    bs = lap.gaussian_pyramid(x, 3)
    for k in (0, 1):
        assert torch.equal(seen[k][:, 3:], lap.upsample(bs[k + 1]))
        assert torch.equal(fwd.pyramid.condition[k], bs[k + 1])
    assert seen[2].shape[1] == 3 and fwd.pyramid.condition[2] is None


def test_reconstruction_conditioning_reads_the_coarser_reconstruction_not_the_real_image():
    """Decoders fixed to constant bands c_k = 0.1, -0.3, 0.5 (level 0, 1, 2): the composed coarser images are
    x_hat_2 = 0.5 and x_hat_1 = -0.3 + u(0.5) = 0.2, whatever the input; the real coarser images are not."""
    model = seeded_build(tiny(condition="reconstruction"))
    with torch.no_grad():
        for k, value in enumerate([0.1, -0.3, 0.5]):
            model.decoder.levels[k].net[-1].weight.zero_()
            model.decoder.levels[k].net[-1].bias.fill_(value)
    for seed in (1, 2):
        x = random_images(model.spec, batch=2, seed=seed)
        seen, fwd = level_inputs(model, x)
        assert torch.allclose(seen[1][:, 3:], torch.full((2, 3, 8, 8), 0.5))
        assert torch.allclose(seen[0][:, 3:], torch.full((2, 3, 16, 16), 0.2), atol=1e-6)
        assert torch.equal(seen[0][:, :3], fwd.pyramid.targets[0])  # h_0 itself is still the input's
        assert not torch.allclose(seen[0][:, 3:], lap.upsample(lap.gaussian_pyramid(x, 3)[1]), atol=0.05)


def test_reconstruction_conditioning_by_hand():
    """Random weights: level k's conditioning image is x_hat_{k+1} = h_hat_{k+1} + u(x_hat_{k+2}), each h_hat
    decoded (eq. 11) from the coarser levels' posterior means; changing a coarser decoder changes it."""
    model = seeded_build(tiny(condition="reconstruction"))
    enc, tr, dec = model.encoder, model.transform, model.decoder
    x = random_images(model.spec, batch=2)
    seen, fwd = level_inputs(model, x)
    hs = lap.decompose(x, 3)
    with torch.no_grad():
        z2 = tr.levels[2].to_params(enc.levels[2](hs[2]).flatten(1)).chunk(2, 1)[0]
        x2 = dec.levels[2](tr.levels[2].from_z(z2).view(-1, *dec.u_shapes[2]))
        inp1 = torch.cat([hs[1], lap.upsample(x2)], 1)
        z1 = tr.levels[1].to_params(enc.levels[1](inp1).flatten(1)).chunk(2, 1)[0]
        x1 = dec.levels[1](tr.levels[1].from_z(torch.cat([z1, z2], 1)).view(-1, *dec.u_shapes[1])) + lap.upsample(x2)
    assert torch.allclose(seen[1], inp1, atol=1e-6)
    assert torch.allclose(seen[0], torch.cat([hs[0], lap.upsample(x1)], 1), atol=1e-5)
    assert torch.allclose(fwd.pyramid.condition[0], x1, atol=1e-5)
    with torch.no_grad():
        dec.levels[1].net[-1].bias.add_(0.25)  # level 1's decoded band moves by 0.25 everywhere
    moved, _ = level_inputs(model, x)
    assert torch.equal(moved[1], seen[1])  # level 1 does not read its own decoder
    assert torch.allclose(moved[0][:, 3:], seen[0][:, 3:] + 0.25, atol=1e-5)


def test_reconstruction_conditioning_trains_and_keeps_batch_norm_statistics():
    """The conditioning image is an input (no gradient) computed in eval mode: one training pass updates each
    decoder level's batch-norm statistics once, and the loss trains every level."""
    torch.manual_seed(0)
    model = build_model(tiny(condition="reconstruction"))
    model.train()
    fwd = model(random_images(model.spec))
    assert all(c is None or not c.requires_grad for c in fwd.pyramid.condition)
    sum(model.phase_terms(fwd, "model").values(), torch.zeros(())).backward()
    for level in model.decoder.levels:
        counts = [v.item() for k, v in level.state_dict().items() if k.endswith("num_batches_tracked")]
        assert counts and all(c == 1 for c in counts)
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert all(m.training for m in model.modules())


def test_reconstruction_conditioning_conformance():
    check_component("encoder", "laplacian", spec=tiny(condition="reconstruction"))


# -- Poisson (gradient-domain) compositing ---------------------------------------------------------------------------


def test_poisson_blend_of_an_offset_patch_is_the_background():
    """Source = background + 5: its gradients are the background's, so the blend is the background itself
    (alpha blending would paste the +5)."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 12, 12, generator=g)
    mask = torch.zeros(1, 1, 12, 12)
    mask[..., 3:9, 2:10] = 1
    assert torch.allclose(lap.poisson_blend(target + 5.0, target, mask), target, atol=1e-5)
    # a flat source over a ramp: a ramp is harmonic, so it is filled in from its boundary exactly
    ramp = torch.arange(12.0).repeat(12, 1).view(1, 1, 12, 12) / 12
    assert torch.allclose(lap.poisson_blend(torch.full_like(ramp, 3.0), ramp, mask), ramp, atol=1e-5)


def test_poisson_blend_hand_solved():
    """Two masked pixels p1 = (2, 2), p2 = (2, 3); target 0 except t(2, 4) = 6; source 0 except s(p1) = 1.
    4 f1 - f2 = 4 (s_p1 - s_q over 4 neighbours), 4 f2 - f1 = 6 + (0 - 1)  ->  f1 = 1.4, f2 = 1.6."""
    target = torch.zeros(1, 1, 5, 6)
    target[..., 2, 4] = 6.0
    source = torch.zeros(1, 1, 5, 6)
    source[..., 2, 2] = 1.0
    mask = torch.zeros(1, 1, 5, 6)
    mask[..., 2, 2:4] = 1
    out = lap.poisson_blend(source, target, mask)
    expect = target.clone()
    expect[..., 2, 2], expect[..., 2, 3] = 1.4, 1.6
    assert torch.allclose(out, expect, atol=1e-6)
    # at the image corner only 2 neighbours exist (Neumann border): 2 f - (2 + 6) = 0 -> f = 4
    target = torch.zeros(1, 1, 4, 4)
    target[..., 0, 1], target[..., 1, 0] = 2.0, 6.0
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 0, 0] = 1
    assert lap.poisson_blend(torch.zeros(1, 1, 4, 4), target, mask)[0, 0, 0, 0].item() == pytest.approx(4.0)


def interior_laplacian(f):
    """4 f_p - sum of the 4 neighbours, on the pixels that have all four (explicit slices)."""
    c = f[..., 1:-1, 1:-1]
    return 4 * c - f[..., :-2, 1:-1] - f[..., 2:, 1:-1] - f[..., 1:-1, :-2] - f[..., 1:-1, 2:]


def test_poisson_blend_solves_the_poisson_equation_in_the_mask():
    g = torch.Generator().manual_seed(1)
    source, target = torch.rand(3, 2, 20, 20, generator=g), torch.rand(3, 2, 20, 20, generator=g)
    mask = torch.zeros(1, 1, 20, 20)
    mask[..., 4:15, 3:12] = 1
    mask[..., 12:17, 10:18] = 1  # not a rectangle
    out = lap.poisson_blend(source, target, mask)
    inside = mask[..., 1:-1, 1:-1].bool().expand(3, 2, -1, -1)
    residual = (interior_laplacian(out.double()) - interior_laplacian(source.double()))[inside]
    assert residual.abs().max() < 1e-4
    assert torch.equal(out[(mask == 0).expand(3, 2, -1, -1)], target[(mask == 0).expand(3, 2, -1, -1)])
    # no mask: the target; everything masked (no boundary): the source
    assert torch.equal(lap.poisson_blend(source, target, torch.zeros_like(mask)), target)
    assert torch.allclose(lap.poisson_blend(source, target, torch.ones_like(mask)), source, atol=1e-6)


def test_edit_with_poisson_blend():
    model = seeded_build(tiny(channels=1))
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 1, 16, 16, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    out = lap.edit_image(model, x, mask=mask, n=2, blend="poisson")
    recon, samples, comp = out["reconstruction"], out["samples"], out["composites"]
    outside = (mask == 0).expand(2, -1, -1, -1)
    assert torch.equal(comp[outside], recon.expand(2, -1, -1, -1)[outside])
    inside = mask[..., 1:-1, 1:-1].bool().expand(2, -1, -1, -1)
    residual = (interior_laplacian(comp.double()) - interior_laplacian(samples.double()))[inside]
    assert residual.abs().max() < 1e-4  # composites are clamped to [-1, 1]; these stay inside
    with pytest.raises(Exception, match="blend"):
        lap.edit_image(model, x, mask=mask, n=2, blend="laplace")


def test_edit_command_blend_option(tmp_path):
    from genvae.testing import genvae_cli

    cli = genvae_cli()
    save_model(seeded_build(tiny(channels=1, condition="reconstruction")), tmp_path / "m")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / "in.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[8:, 4:12] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    args = [
        "edit",
        str(tmp_path / "m"),
        str(tmp_path / "in.png"),
        "--mask",
        str(tmp_path / "mask.png"),
        "-n",
        "2",
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(cli, [*args, "--blend", "poisson", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "composites.png").exists() and (tmp_path / "out" / "edit-01.png").exists()
    result = CliRunner().invoke(cli, [*args, "--blend", "median", "-o", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "median" in result.output
