"""Image completion by latent optimisation: the masks, the objective's terms, and that it completes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from genvae.api import build_model, save_model
from genvae.core.compose import apply_sets, preset_spec
from genvae.core.errors import GenvaeError
from genvae.plugins import completion as c
from genvae.plugins.adv import AdversarialLoss
from genvae.testing import invoke_cli, tiny_spec


def test_named_masks_occlude_the_stated_region():
    lower = c.named_mask("lower", 8)[0, 0]
    assert lower[:4].eq(1).all() and lower[4:].eq(0).all()
    right = c.named_mask("right-half", 8)[0, 0]
    assert right[:, :4].eq(1).all() and right[:, 4:].eq(0).all()
    center = c.named_mask("center", 8)[0, 0]
    assert center[2:6, 2:6].eq(0).all() and center.sum() == 64 - 16
    upper, left = c.named_mask("upper", 8)[0, 0], c.named_mask("left-half", 8)[0, 0]
    assert torch.equal(upper, lower.flip(0)) and torch.equal(left, right.flip(1))
    eyes, mouth = c.named_mask("eyes", 64)[0, 0], c.named_mask("mouth", 64)[0, 0]
    assert eyes[19:32, 10:54].eq(0).all() and eyes[:19].eq(1).all() and eyes[32:].eq(1).all()
    assert mouth[40:52, 18:46].eq(0).all() and mouth[:40].eq(1).all()
    blocks = c.named_mask("blocks", 16, seed=3)
    assert torch.equal(blocks, c.named_mask("blocks", 16, seed=3)) and not torch.equal(
        blocks, c.named_mask("blocks", 16, seed=4)
    )
    assert 0 < (blocks == 0).sum() <= c.BLOCKS * 16
    with pytest.raises(GenvaeError, match="unknown mask 'nose'; masks: lower, upper"):
        c.named_mask("nose", 8)


def test_a_mask_file_marks_the_occluded_part_in_white(tmp_path):
    img = Image.new("L", (8, 8), 0)
    img.paste(255, (0, 0, 8, 3))  # top three rows white
    img.save(tmp_path / "m.png")
    m = c.mask_from_file(tmp_path / "m.png", 8)[0, 0]
    assert m[:3].eq(0).all() and m[3:].eq(1).all()


def test_the_objective_is_masked_error_plus_prior_plus_discriminator_term():
    s = apply_sets(
        preset_spec("vae-gan-small"), ["image_size=16", "transform.latent_dim=8", "loss.adv.minibatch_kernels=0"]
    )
    torch.manual_seed(0)
    model = build_model(s).eval()
    z = torch.randn(2, *model.layout.shape)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    m = c.named_mask("lower", 16)
    with torch.no_grad():
        value, x_hat = c.objective(model, z, x, m, gamma=0.3, tau=2.0)
        adv = model.losses["adv"]
        assert isinstance(adv, AdversarialLoss)
        logits = adv.discriminate(x_hat).reshape(-1)
    rec = ((x_hat - x) * m).pow(2).flatten(1).sum(1)
    expect = rec + 0.3 * 0.5 * z.pow(2).sum(1) + 2.0 * torch.log(1 - torch.sigmoid(logits))
    assert torch.allclose(value, expect, atol=1e-4)
    # without a discriminator (or tau = 0) only the first two terms
    assert torch.allclose(c.objective(model, z, x, m, 0.3, 0.0)[0], rec + 0.15 * z.pow(2).sum(1), atol=1e-5)


def trained_vae(steps: int = 200):
    """An fc VAE trained briefly on 16x16 images of one bright square at random places."""
    torch.manual_seed(0)
    model = build_model(
        tiny_spec(
            "encoder",
            "fc",
            {"hidden": [64]},
            image_size=16,
            channels=1,
            transform={"name": "fc", "options": {"latent_dim": 4}},
            decoder={"name": "fc", "options": {"hidden": [64]}},
        )
    )
    g = torch.Generator().manual_seed(0)

    def batch(n):
        x = -torch.ones(n, 1, 16, 16)
        for i, (r, col) in enumerate(torch.randint(0, 10, (n, 2), generator=g).tolist()):
            x[i, :, r : r + 6, col : col + 6] = 1.0
        return x

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        fwd = model(batch(32))
        loss = sum(model.phase_terms(fwd, "model").values(), torch.zeros(()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), batch(6)


def test_completion_lowers_the_error_where_occluded_and_matches_what_is_visible(one_thread):
    model, x = trained_vae()
    m = c.named_mask("right-half", 16)
    before = c.complete(model, x, m, starts=4, steps=0, seed=1)
    after = c.complete(model, x, m, starts=4, steps=150, lr=0.05, gamma=0.01, seed=1)

    def err(out, region):
        return ((out["completion"] - x).pow(2) * region).sum() / (region.sum() * len(x))

    assert err(after, m) < 0.5 * err(before, m)  # the visible half is matched
    assert err(after, 1 - m) < err(before, 1 - m)  # and the occluded half follows from it
    assert (after["objective"] <= before["objective"]).all()
    assert torch.equal(after["composite"] * m, x * m)  # the composite keeps the visible input
    assert torch.equal(after["composite"] * (1 - m), after["completion"] * (1 - m))
    assert not model.training and all(p.requires_grad for p in model.parameters())  # the model is left as it was


def test_the_best_start_is_kept_per_image():
    model, x = trained_vae(steps=20)
    m = c.named_mask("center", 16)
    out = c.complete(model, x[:2], m, starts=3, steps=5, seed=2)
    with torch.no_grad():
        value, _ = c.objective(model, out["latents"], x[:2], m, 0.1, 1.0)
    assert torch.allclose(value, out["objective"], atol=1e-4)
    # without steps the starts are the seeded draws: the kept one is each image's lowest
    out = c.complete(model, x[:3], m, starts=4, steps=0, seed=5)
    z = c.random_starts(3, 4, tuple(model.layout.shape), seed=5)
    with torch.no_grad():
        every, _ = c.objective(model, z, x[:3].repeat(4, 1, 1, 1), m, 0.1, 1.0)
    best = every.view(4, 3).min(0).values
    assert torch.allclose(out["objective"], best, atol=1e-5) and (every.view(4, 3).max(0).values > best).all()


@pytest.mark.parametrize("preset", ["crvae-gan-small", "vae-gan-small"])
@pytest.mark.slow
def test_the_complete_command_with_every_named_mask(preset, tmp_path):
    smaller = ["transform.latent_dim=16"] if preset == "vae-gan-small" else []
    s = apply_sets(preset_spec(preset), ["image_size=16", *smaller])
    torch.manual_seed(0)
    save_model(build_model(s), tmp_path / "m")
    for mask in c.MASKS:
        out = tmp_path / f"{mask}.png"
        result = invoke_cli(
            [
                "complete",
                tmp_path / "m",
                "--data",
                "shapes",
                "-n",
                "2",
                "--mask",
                mask,
                "--steps",
                "2",
                "--starts",
                "2",
                "-o",
                out,
                "--device",
                "cpu",
            ]
        )
        assert result.exit_code == 0, (mask, result.output)
        assert "with the discriminator term" in result.output
        assert Image.open(out).size == (2 * 18 + 2, 3 * 18 + 2)  # rows: truth, occluded, completed


def test_a_mask_that_hides_nothing_is_refused(tmp_path):
    torch.manual_seed(0)
    save_model(build_model(tiny_spec("encoder", "fc", image_size=16, channels=1)), tmp_path / "m")
    Image.new("L", (16, 16), 0).save(tmp_path / "none.png")
    result = invoke_cli(["complete", tmp_path / "m", "--mask", tmp_path / "none.png", "-o", tmp_path / "o.png"])
    assert result.exit_code == 1 and "occludes nothing" in result.output
    assert F.softplus(torch.tensor(0.0)) > 0  # (softplus is what log(1 - D) becomes; see the objective test)


def _tiny_vae_gan():
    s = apply_sets(
        preset_spec("vae-gan-small"),
        ["image_size=16", "transform.latent_dim=8", "loss.adv.widths=[8,8]", "loss.adv.head_hidden=16"],
    )
    torch.manual_seed(0)
    return build_model(s).eval()


def test_discriminate_each_judges_every_image_as_a_batch_of_one():
    model = _tiny_vae_gan()
    adv = model.losses["adv"]
    assert isinstance(adv, AdversarialLoss) and adv.head.minibatch is not None
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        each = adv.discriminate_each(x)
        alone = torch.cat([adv.discriminate(x[i : i + 1]) for i in range(5)])
        together = adv.discriminate(x)
    assert torch.allclose(each, alone, atol=1e-6)
    # minibatch discrimination couples the batch: judged together, the logits differ (so the test above can fail)
    assert not torch.allclose(together, alone, atol=1e-4)
    # and the objective uses the per-image logits
    z = torch.randn(5, *model.layout.shape)
    m = c.named_mask("lower", 16)
    with torch.no_grad():
        value, x_hat = c.objective(model, z, x, m, gamma=0.0, tau=1.0)
        rec = ((x_hat - x) * m).pow(2).flatten(1).sum(1)
        expect = rec - torch.nn.functional.softplus(adv.discriminate_each(x_hat))
    assert torch.allclose(value, expect, atol=1e-5)


def test_an_image_completed_alone_or_in_a_batch_gives_the_same_result():
    """Each image's objective is its own: its starts come from seed + its index and the discriminator judges it
    alone, so image i of a batch (seed s) equals that image completed alone with seed s + i."""
    model = _tiny_vae_gan()
    torch.manual_seed(1)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    m = c.named_mask("lower", 16)

    def complete(images: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        return c.complete(model, images, m, starts=2, steps=15, lr=0.05, gamma=0.1, tau=1.0, seed=seed)

    together = complete(x, 7)
    for i in range(3):
        alone = complete(x[i : i + 1], 7 + i)
        assert torch.allclose(alone["latents"], together["latents"][i : i + 1], atol=1e-5)
        assert torch.allclose(alone["completion"], together["completion"][i : i + 1], atol=1e-5)
        assert torch.allclose(alone["objective"], together["objective"][i : i + 1], atol=1e-4)
    # the starts of image i do not depend on the batch it comes with
    starts = c.random_starts(3, 2, (8,), seed=7)
    assert torch.equal(starts.view(2, 3, 8)[:, 2], torch.randn(2, 8, generator=torch.Generator().manual_seed(9)))
