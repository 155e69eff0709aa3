"""LapCVAE mathematics, checked against values computed by hand (no mocks).

Each test pins one formula of the paper (Dorta et al. 2017) or of genvae's documented choices
(docs/lapcvae.md): the pyramid operators' exact outputs (REDUCE, EXPAND, the band h_k), the per-level
loss and its weights, which latents each level's decoder reads (eq. 11), what the M prior reads
(eq. 13, re-encoded reconstructions), the fixed-level sampler, editing, and the 0-255 RMSE of
``genvae evaluate``. The expected numbers are written out; the derivations are in the comments.
Models are tiny (16 px, 3 levels, latent 4 per level) and random unless a test sets weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import seeded_build
from PIL import Image

from genvae.core.checkpoint import save_model
from genvae.core.components import ForwardPass, Gaussian
from genvae.core.spec import ModelSpec
from genvae.plugins import laplacian as lap
from genvae.testing import random_images

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


def tiny(
    levels=3, channels=1, latent=(4,), prior="m-net", detach=True, lambdas=None, loss_options=None, condition="real"
) -> ModelSpec:
    kl = {"name": "kl", "options": {"group_weights": list(lambdas)} if lambdas is not None else {}}
    return ModelSpec.from_dict(
        {
            "image_size": 16,
            "channels": channels,
            "encoder": {
                "name": "laplacian",
                "options": {"levels": levels, "widths": [8], "max_width": 16, "condition": condition},
            },
            "transform": {"name": "laplacian", "options": {"latent_sizes": list(latent)}},
            "decoder": {"name": "laplacian", "options": {"widths": [8], "max_width": 16}},
            "prior": {"name": "m-net", "options": {"hidden": [8], "detach": detach}}
            if prior == "m-net"
            else {"name": prior},
            "losses": [{"name": "pyramid-mse", "options": dict(loss_options or {})}, kl],
            "train": {"batch_size": 4},
        }
    )


def constant_decoders(model, values):
    """Make level k's decoder output the constant values[k] (by level k, 0 = finest): zero its last conv's
    weights, set its bias. Then h_hat_k = values[k] whatever the latent."""
    with torch.no_grad():
        for k, value in enumerate(values):
            last = model.decoder.levels[k].net[-1]
            last.weight.zero_()
            last.bias.fill_(value)


def row(*values):
    return torch.tensor(values, dtype=torch.float32)


def as_1d(values):
    """A (1, 1, 1, n) image: a 1-D signal for the separable operators (one row)."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


# -- REDUCE: blur with [1, 4, 6, 4, 1]/16, keep the even pixels, borders replicated --------------------------------
# out[i] = sum_t k[t] x[clamp(2i + t - 2, 0, n - 1)], k = [1, 4, 6, 4, 1]/16 (per axis)


def test_reduce_of_an_impulse_is_the_kernel_at_the_even_taps():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 4, 4] = 1.0
    # out[i] = k[6 - 2i]: i = 1, 2, 3 -> k[4], k[2], k[0] = 1/16, 6/16, 1/16
    r = row(0, 1, 6, 1) / 16
    assert torch.equal(lap.blur_down(x)[0, 0], torch.outer(r, r))
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 3] = 1.0
    # odd position: out[i] = k[5 - 2i]: i = 1, 2 -> k[3], k[1] = 4/16, 4/16
    r = row(0, 4, 4, 0) / 16
    assert torch.equal(lap.blur_down(x)[0, 0], torch.outer(r, r))


def test_reduce_replicates_the_border():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 0, 0] = 1.0
    # out[0] = k[0] x[0] + k[1] x[0] + k[2] x[0] (indices -2, -1, 0 clamp to 0) = 11/16; out[1] = k[0] = 1/16.
    # (zero padding would give 6/16, reflection 6/16)
    r = row(11, 1, 0, 0) / 16
    assert torch.equal(lap.blur_down(x)[0, 0], torch.outer(r, r))


def test_reduce_of_a_ramp_and_a_constant():
    x = torch.arange(8.0).repeat(8, 1).view(1, 1, 8, 8)  # x[., j] = j
    # interior: the symmetric kernel keeps a ramp, out[i] = 2i; borders replicated:
    # out[0] = (0 + 4*0 + 6*0 + 4*1 + 2)/16 = 6/16; out[3] = (4 + 4*5 + 6*6 + 4*7 + 7)/16 = 95/16
    expect = row(0.375, 2, 4, 5.9375).repeat(4, 1)
    assert torch.equal(lap.blur_down(x)[0, 0], expect)
    assert torch.equal(lap.blur_down(x.transpose(-1, -2))[0, 0], expect.T)
    c = torch.full((2, 3, 8, 8), 0.25)
    assert torch.equal(lap.blur_down(c), torch.full((2, 3, 4, 4), 0.25))


# -- EXPAND: zero insertion, then 2 * [1, 4, 6, 4, 1]/16 per axis, borders replicated -------------------------------
# out[2i] = (x[i-1] + 6 x[i] + x[i+1]) / 8, out[2i+1] = (x[i] + x[i+1]) / 2


def test_expand_of_an_impulse_is_the_doubled_kernel():
    up = lap.upsample(as_1d([0, 1, 0, 0]))
    assert up.shape == (1, 1, 2, 8)
    expect = row(1, 4, 6, 4, 1, 0, 0, 0) / 8  # [1, 4, 6, 4, 1]/8 centred on pixel 2 = 2 * 1
    assert torch.equal(up[0, 0], expect.repeat(2, 1))  # a 1-pixel-high image: both new rows are equal
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = 1.0
    assert torch.equal(lap.upsample(x)[0, 0], torch.outer(expect, expect))  # separable


def test_expand_of_a_ramp_and_at_the_border():
    # even: (x[i-1] + 6x[i] + x[i+1])/8 with x[-1] = x[0], x[4] = x[3]: 1/8, 1, 2, 23/8; odd: 1/2, 3/2, 5/2, 3
    assert torch.equal(lap.upsample(as_1d([0, 1, 2, 3]))[0, 0, 0], row(0.125, 0.5, 1, 1.5, 2, 2.5, 2.875, 3))
    # border impulse: out[0] = (1 + 6 + 0)/8, out[1] = (1 + 0)/2, out[2] = 1/8
    assert torch.equal(lap.upsample(as_1d([1, 0, 0, 0]))[0, 0, 0], row(7, 4, 1, 0, 0, 0, 0, 0) / 8)
    assert torch.equal(lap.upsample(torch.full((1, 2, 4, 4), -0.5)), torch.full((1, 2, 8, 8), -0.5))


def test_laplacian_band_is_b_minus_expanded_coarser_b():
    x = torch.arange(8.0).repeat(2, 1).view(1, 1, 2, 8)  # a 2x8 ramp, levels = 2
    bs = lap.gaussian_pyramid(x, 2)
    b1 = row(0.375, 2, 4, 5.9375).view(1, 4)  # REDUCE of the ramp (test above); a constant along H
    assert torch.equal(bs[1][0, 0], b1)
    # u(b_1): even (x[i-1] + 6x[i] + x[i+1])/8 = 0.578125, 2.046875, 3.9921875, 5.6953125;
    # odd (x[i] + x[i+1])/2 = 1.1875, 3, 4.96875, 5.9375
    u1 = row(0.578125, 1.1875, 2.046875, 3, 3.9921875, 4.96875, 5.6953125, 5.9375)
    hs = lap.decompose(x, 2)
    assert torch.equal(hs[0][0, 0], (torch.arange(8.0) - u1).repeat(2, 1))  # h_0 = b_0 - u(b_1)
    assert torch.equal(hs[0][0, 0, 0], row(-0.578125, -0.1875, -0.046875, 0, 0.0078125, 0.03125, 0.3046875, 1.0625))
    assert torch.equal(hs[1], bs[1])  # h_K = b_K
    # and the decoder rebuilds x_k = h_k + u(x_{k+1}), x_K = h_K
    xs = lap.reconstruct_levels(hs)
    assert torch.equal(xs[1], hs[1]) and torch.equal(xs[0], hs[0] + lap.upsample(hs[1]))


# -- the per-level loss and the lambdas ----------------------------------------------------------------------------


@pytest.mark.parametrize(("scale", "expect"), [("image", 608.0), ("none", 80.0)])
def test_pyramid_mse_exact_value_with_level_weights(scale, expect):
    """A constant image a = 0.2 has h_0 = h_1 = 0 and h_2 = 0.2 (16, 8, 4 px); the decoders output the
    constants 0.5, 0.5, 1.2, so the squared errors per pixel are 0.25, 0.25, 1.0. Weights [2, 1, 0.5] are
    coarsest first: w_2 = 2, w_1 = 1, w_0 = 0.5.
    level_scale=none:  0.5*256*0.25 + 1*64*0.25 + 2*16*1.0            = 32 + 16 + 32  = 80
    level_scale=image: the same sums times 4^k: 32*1 + 16*4 + 32*16    = 32 + 64 + 512 = 608"""
    model = seeded_build(tiny(loss_options={"level_weights": [2, 1, 0.5], "level_scale": scale}, prior="normal"))
    constant_decoders(model, [0.5, 0.5, 1.2])
    x = torch.full((2, 1, 16, 16), 0.2)
    with torch.no_grad():
        fwd = model(x, sample=False)
        terms = model.phase_terms(fwd, "model")
    assert all(t.abs().max().item() < 1e-6 for t in fwd.pyramid.targets[:2])  # a flat image: no bands
    assert torch.allclose(terms["pyramid-mse"], torch.tensor(expect), rtol=1e-5)


def test_kl_lambda_goes_to_its_level():
    """kl.group_weights are coarsest first. Latent sizes (5, 4, 3) coarsest first: level 2 has 5 dims, level 1 4,
    level 0 3. Posterior means 1, 2, 10 by level (2, 1, 0), variance 1, prior N(0, I): KL per dim = mean^2/2.
    lambda [10, 0.1, 0.01]: 10*5*0.5 + 0.1*4*2 + 0.01*3*50 = 25 + 0.8 + 1.5 = 27.3"""
    model = seeded_build(tiny(latent=(5, 4, 3), prior="normal", lambdas=[10, 0.1, 0.01]))
    tr = model.transform
    assert tr.sizes == [3, 4, 5]
    means = [torch.full((2, 3), 10.0), torch.full((2, 4), 2.0), torch.full((2, 5), 1.0)]  # by level k
    fwd = ForwardPass(model, None)  # type: ignore[arg-type]  # no images: the latent side only
    mean = tr.join_levels(means)
    fwd.posterior = Gaussian(mean, torch.zeros_like(mean))
    fwd.prior = model.prior(fwd)
    assert torch.allclose(model.losses["kl"](fwd, "model")["kl"], torch.tensor(27.3), rtol=1e-6)


# -- eq. 11: level k's decoder reads z_k ... z_K ------------------------------------------------------------------


def test_each_level_decodes_from_itself_and_all_coarser_latents_only():
    model = seeded_build(tiny(latent=(3, 4, 5)))
    tr = model.transform
    torch.manual_seed(1)
    zs = [torch.randn(2, n, requires_grad=True) for n in tr.sizes]  # by level k
    fwd = ForwardPass(model, None)  # type: ignore[arg-type]  # no images: the latent side only
    model.decoder(tr.generate(tr.join_levels(zs)), fwd)
    for name in ("predictions", "reconstructions"):  # the band h_hat_k, and x_hat_k = h_hat_k + u(x_hat_{k+1})
        for k, out in enumerate(getattr(fwd.pyramid, name)):
            grads = torch.autograd.grad(out.pow(2).sum(), zs, retain_graph=True, allow_unused=True)
            reads = [g is not None and g.abs().sum().item() > 0 for g in grads]
            assert reads == [j >= k for j in range(3)], (name, k, reads)


def test_changing_a_coarser_latent_changes_the_finer_level_and_not_the_reverse():
    model = seeded_build(tiny())
    tr, dec = model.transform, model.decoder
    torch.manual_seed(2)
    z = torch.randn(2, tr.layout.numel)
    with torch.no_grad():
        base = [dec.decode_level(k, tr.level_u(k, tr.split_levels(z))) for k in range(3)]
        for j in range(3):
            zs = tr.split_levels(z)
            zs[j] = zs[j] + 1.0
            moved = [dec.decode_level(k, tr.level_u(k, zs)) for k in range(3)]
            for k in range(3):
                assert torch.equal(moved[k], base[k]) == (j < k), (j, k)  # level k moves iff j >= k


# -- eq. 13: the M prior reads the re-encoded reconstruction ----------------------------------------------------------


def by_hand_posterior(model, j, h, coarser):
    """q_j by hand from the level modules: concat[h_j, u(x_{j+1})] -> conv encoder j -> linear head j."""
    enc, tr = model.encoder, model.transform
    inputs = h if coarser is None else torch.cat([h, lap.upsample(coarser)], dim=1)
    return tr.levels[j].to_params(enc.levels[j](inputs).flatten(1)).chunk(2, dim=1)


def by_hand_band(model, k, zs):
    """Eq. 11 by hand: level k's decoder on Linear(concat[z_k, ..., z_K])."""
    tr, dec = model.transform, model.decoder
    u = tr.levels[k].from_z(torch.cat(zs[k:], dim=1))
    return dec.levels[k](u.view(-1, *dec.u_shapes[k]))


def test_m_prior_is_R_and_S_of_the_re_encoded_reconstruction():
    model = seeded_build(tiny(channels=3))
    tr, prior = model.transform, model.prior
    x = random_images(model.spec, batch=3)
    with torch.no_grad():
        fwd = model(x, sample=False)
        zs = tr.split_levels(fwd.z)
        h2 = by_hand_band(model, 2, zs)
        h1 = by_hand_band(model, 1, zs)
        mu2, lv2 = by_hand_posterior(model, 2, h2, None)  # the coarsest reconstruction, re-encoded
        mu1, lv1 = by_hand_posterior(model, 1, h1, h2)  # level 1's band with the rebuilt x_hat_2 = h_hat_2
        means, logvars = tr.split_levels(fwd.prior.mean), tr.split_levels(fwd.prior.logvar)
        assert torch.allclose(means[1], prior.levels[1].R(mu2), atol=1e-6)
        assert torch.allclose(logvars[1], prior.levels[1].S(lv2), atol=1e-6)
        assert torch.allclose(means[0], prior.levels[0].R(mu1), atol=1e-6)
        assert torch.allclose(logvars[0], prior.levels[0].S(lv1), atol=1e-6)
        assert torch.equal(means[2], torch.zeros(3, 4)) and torch.equal(logvars[2], torch.zeros(3, 4))  # N(0, I)
        # not the real image's posterior: the re-encoded reconstruction differs from it
        real = tr.split_levels(fwd.posterior.mean)
        assert not torch.allclose(prior.levels[1].R(real[2]), means[1], atol=1e-3)


def test_m_prior_does_not_read_the_real_image():
    """Same latent, different real images in the pass: the prior is the same (it only sees the decoded z)."""
    model = seeded_build(tiny(channels=3))
    x1, x2 = random_images(model.spec, batch=2, seed=1), random_images(model.spec, batch=2, seed=2)
    with torch.no_grad():
        fwd = model(x1, sample=False)
        other = ForwardPass(model, x2)
        other.features = model.encoder(x2, other)  # x2's pyramid and conditioning images in extras
        other.posterior = Gaussian(fwd.z, fwd.posterior.logvar)  # ... but x1's latent
        other.z = fwd.z
        other.u = model.transform.generate(other.z, other)
        model.decoder(other.u, other)
        moved = model.prior(other)
    assert torch.equal(moved.mean, fwd.prior.mean) and torch.equal(moved.logvar, fwd.prior.logvar)


@pytest.mark.parametrize("detach", [True, False])
def test_m_prior_gradient_reach(detach):
    """KL of the finest level alone (lambda [0, 0, 1]). It always trains M_0 and level 0's encoder; with detach
    it stops at the re-encoded level 1 (its encoder, latent head and decoder get nothing, nor does M_1); without,
    it reaches them."""
    model = seeded_build(tiny(channels=3, detach=detach, lambdas=[0, 0, 1]), train=True)
    fwd = model(random_images(model.spec))
    model.phase_terms(fwd, "model")["kl"].backward()

    def reached(module):
        return any(p.grad is not None and p.grad.abs().sum().item() > 0 for p in module.parameters())

    assert reached(model.prior.levels[0]) and reached(model.encoder.levels[0])
    assert not reached(model.prior.levels[1])
    for part in (model.encoder.levels[1], model.transform.levels[1].to_params, model.decoder.levels[1]):
        assert reached(part) == (not detach)


# -- the fixed-level sampler (sample --from IMG --fix-levels K) -------------------------------------------------------


def deterministic_m(model):
    """S_k -> log-variance -40 everywhere (deviation 2e-9): a draw from M is its mean R_k(mu_{k+1})."""
    with torch.no_grad():
        for m in model.prior.levels:
            m.S[-1].weight.zero_()
            m.S[-1].bias.fill_(-40.0)


def by_hand_chain(model, fixed, keep):
    """Figure 2 by hand: keep the `keep` coarsest latents of `fixed`; every finer z_k = R_k(mu_{k+1}) where
    mu_{k+1} re-encodes the decoded level k+1 (band, conditioned on the rebuilt coarser image)."""
    tr, prior = model.transform, model.prior
    levels = tr.num_levels
    zs = [None] * levels
    given = tr.split_levels(fixed)
    rebuilt = mu = None
    for k in range(levels - 1, -1, -1):
        if levels - 1 - k < keep:
            zs[k] = given[k]
        else:
            zs[k] = prior.levels[k].R(mu)  # mu: the coarser level's re-encoding
        h = by_hand_band(model, k, zs)
        mu, _ = by_hand_posterior(model, k, h, rebuilt)
        rebuilt = h if rebuilt is None else h + lap.upsample(rebuilt)
    return tr.join_levels(zs)


@pytest.mark.parametrize("keep", [0, 1, 2, 3])
def test_sampler_keeps_the_coarsest_groups_and_draws_the_rest_through_M(keep):
    model = seeded_build(tiny(latent=(3, 4, 5)))
    tr = model.transform
    torch.manual_seed(3)
    fixed = torch.randn(1, tr.layout.numel)
    with torch.no_grad():
        if keep == 0:  # z_K ~ N(0, I), then M: check the chain from the drawn z_K
            deterministic_m(model)
            z = model.prior.sample(4, model, "cpu")
            expect = torch.cat([by_hand_chain(model, z[i : i + 1], 1) for i in range(4)])
        else:
            deterministic_m(model)
            z = model.prior.sample(4, model, "cpu", fixed=fixed, fixed_groups=keep)
            expect = by_hand_chain(model, fixed, keep).expand(4, -1)
    mask = tr.layout.group_mask(range(keep))
    assert torch.equal(z[:, mask], fixed[:, mask].expand(4, -1))  # the kept groups, exactly
    assert torch.allclose(z, expect, atol=1e-5)


def test_sampler_draws_free_levels_with_M_deviation():
    """With S_k = log 4 (deviation 2) everywhere, the free finest level's spread around R_0(mu_1) is 2, not 1."""
    model = seeded_build(tiny(latent=(4, 4, 64)))
    tr = model.transform
    with torch.no_grad():
        for m in model.prior.levels:
            m.S[-1].weight.zero_()
            m.S[-1].bias.fill_(float(np.log(4.0)))
        fixed = torch.randn(1, tr.layout.numel)
        torch.manual_seed(4)
        z = model.prior.sample(400, model, "cpu", fixed=fixed, fixed_groups=2)
        deterministic_m(model)
        centre = model.prior.sample(1, model, "cpu", fixed=fixed, fixed_groups=2)
    spread = (tr.split_levels(z)[0] - tr.split_levels(centre)[0]).std()
    assert 1.85 < spread.item() < 2.15


@pytest.fixture(scope="module")
def cli():
    from genvae.testing import genvae_cli

    return genvae_cli()


def grid_tiles(path, n, size=16, nrow=None):
    """The n tiles of a save_grid PNG (padding 2), as uint8 arrays."""
    arr = np.asarray(Image.open(path))
    nrow = nrow or n
    return [arr[2 + (i // nrow) * (size + 2) :][:size, 2 + (i % nrow) * (size + 2) :][:, :size] for i in range(n)]


def test_sample_fix_levels_command_keeps_the_input_levels(cli, tmp_path):
    """`genvae sample --from IMG --fix-levels 1` with a deterministic M: every sample is the decoded chain
    from the input's coarsest posterior mean."""
    from genvae.core.decode import to_uint8

    model = seeded_build(tiny())
    deterministic_m(model)
    save_model(model, tmp_path / "m")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / "in.png")
    out = tmp_path / "fix.png"
    result = CliRunner().invoke(
        cli,
        [
            "sample",
            str(tmp_path / "m"),
            "--from",
            str(tmp_path / "in.png"),
            "--fix-levels",
            "1",
            "-n",
            "2",
            "--nrow",
            "3",
            "-o",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    x = torch.from_numpy(np.asarray(Image.open(tmp_path / "in.png")).copy()).view(1, 1, 16, 16).float() / 127.5 - 1
    with torch.no_grad():
        expect = to_uint8(model.generate(by_hand_chain(model, model.encode(x).mean, 1))[1])[0, 0].numpy()
    tiles = grid_tiles(out, 3)
    for tile in tiles[1:]:
        assert np.abs(tile.astype(int) - expect.astype(int)).max() <= 1


# -- editing -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [1, 2])
def test_edit_keeps_the_painted_levels_and_composites_into_the_reconstruction(keep):
    model = seeded_build(tiny())
    tr = model.transform
    g = torch.Generator().manual_seed(5)
    x = torch.rand(1, 1, 16, 16, generator=g) * 2 - 1
    painted = x.clone()
    painted[..., 2:8, 2:14] = 0.9
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 8:, 4:12] = 1
    out = lap.edit_image(model, x, painted, mask, n=3, keep_levels=keep)
    kept = tr.layout.group_mask(range(keep))
    with torch.no_grad():
        from_painted = model.encode(painted).mean
        from_input = model.encode(x).mean
        recon = model.generate(from_input)[1]
        samples = model.generate(out["latents"])[1]
    assert torch.equal(out["latents"][:, kept], from_painted[:, kept].expand(3, -1))  # the painted levels
    assert not torch.allclose(from_painted[:, kept], from_input[:, kept], atol=1e-3)
    assert (out["latents"][:, ~kept].std(0) > 0).all()  # the finer levels are drawn
    assert torch.allclose(out["samples"], samples) and torch.allclose(out["reconstruction"], recon)
    soft = lap.soft_mask(mask)
    outside, inside = (soft == 0).expand(3, -1, -1, -1), (soft == 1).expand(3, -1, -1, -1)
    assert torch.allclose(out["composites"][outside], recon.expand(3, -1, -1, -1)[outside])
    assert torch.allclose(out["composites"][inside], samples.clamp(-1, 1)[inside])


# -- RMSE on the 0-255 scale (genvae evaluate --metric rmse) -------------------------------------------------------


def test_evaluate_rmse_exact_value(cli, tmp_path):
    """A model whose reconstruction is the constant grey 127 (coarsest band -1/255, the others 0), and three
    16x16 images: all 127 (error 0), all 117 (error 10 everywhere), and 127 with its top-left quarter at 167
    (error 40 on a quarter: sqrt(1600/4) = 20). Per image: 0, 10, 20; mean 10, std (n-1) 10. (One RMSE over all
    pixels would be sqrt((0 + 100 + 400)/3) = 12.9.)"""
    model = seeded_build(tiny())
    constant_decoders(model, [0.0, 0.0, -1.0 / 255.0])
    save_model(model, tmp_path / "m")
    data = tmp_path / "data"
    data.mkdir()
    quarter = np.full((16, 16), 127, np.uint8)
    quarter[:8, :8] = 167
    for name, img in (("a", np.full((16, 16), 127, np.uint8)), ("b", np.full((16, 16), 117, np.uint8)), ("c", quarter)):
        Image.fromarray(img).save(data / f"{name}.png")
    out = tmp_path / "rmse.json"
    result = CliRunner().invoke(
        cli,
        ["evaluate", str(tmp_path / "m"), "--data", str(data), "--metric", "rmse", "-o", str(out), "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["images"] == 3
    rmse = report["models"][0]["metrics"]["rmse"]
    assert rmse["rmse"] == pytest.approx(10.0, abs=1e-3)
    assert rmse["rmse_std"] == pytest.approx(10.0, abs=1e-3)
