"""The ``m-net`` prior: conformance, dependence on the re-encoded coarser posterior, the coarse-to-fine
sampler, the build-time refusal without pyramid levels, the stop-gradient and retraining M alone."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from helpers import seeded_build

from genvae.core.components import ForwardPass, Gaussian
from genvae.core.compose import compose_spec
from genvae.core.data import ImageData
from genvae.core.errors import BuildError
from genvae.core.model import build_model
from genvae.core.spec import ModelSpec
from genvae.core.training import Trainer
from genvae.plugins import laplacian as lap
from genvae.testing import check_component, random_images

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


def tiny(levels=3, detach=True, lambdas=None, size=16) -> ModelSpec:
    kl = {"name": "kl", "options": {"group_weights": list(lambdas)} if lambdas is not None else {}}
    return ModelSpec.from_dict(
        {
            "image_size": size,
            "channels": 3,
            "encoder": {"name": "laplacian", "options": {"levels": levels, "widths": [8], "max_width": 16}},
            "transform": {"name": "laplacian", "options": {"latent_sizes": [4]}},
            "decoder": {"name": "laplacian", "options": {"widths": [8], "max_width": 16}},
            "prior": {"name": "m-net", "options": {"hidden": [8], "detach": detach}},
            "losses": [{"name": "pyramid-mse"}, kl],
            "train": {"batch_size": 4, "log_every": 1, "checkpoint_every": 1000},
        }
    )


def prior_for(model, z):
    """The m-net prior of a pass whose latent is z (decoded, so the prior sees its reconstruction)."""
    fwd = ForwardPass(model, None)  # type: ignore[arg-type]  # no images: the latent side only
    fwd.posterior = Gaussian(z, torch.zeros_like(z))
    fwd.z = z
    fwd.u = model.transform.generate(z, fwd)
    fwd.decoder_output = model.decoder(fwd.u, fwd)
    return model.prior(fwd)


def test_conformance():
    check_component("prior", "m-net", spec=tiny(levels=3))


def test_conformance_without_stop_gradient():
    check_component("prior", "m-net", spec=tiny(levels=2, detach=False), skip=("registered", "options", "spec"))


def test_prior_depends_on_the_coarser_posterior_only():
    model = seeded_build(tiny(levels=3))
    tr = model.transform
    torch.manual_seed(1)
    z = torch.randn(2, tr.layout.numel)
    with torch.no_grad():
        base = prior_for(model, z)
        means, logvars = tr.split_levels(base.mean), tr.split_levels(base.logvar)
        # the coarsest level keeps N(0, I)
        assert torch.equal(means[2], torch.zeros_like(means[2])) and torch.equal(logvars[2], torch.zeros(2, 4))
        assert not base.standard
        for k in (1, 0):  # change the coarser level's latent: level k's prior moves
            zs = tr.split_levels(z.clone())
            zs[k + 1] = zs[k + 1] + 1.0
            moved = prior_for(model, tr.join_levels(zs))
            m, lv = tr.split_levels(moved.mean), tr.split_levels(moved.logvar)
            assert not torch.allclose(m[k], means[k]) and not torch.allclose(lv[k], logvars[k])
            for j in range(k + 1, 3):  # priors of the changed level and coarser ones do not move
                assert torch.equal(m[j], means[j]) and torch.equal(lv[j], logvars[j])
        # it is the re-encoded reconstruction that matters: M_k applied to q_{k+1}(reconstruction)
        fwd = ForwardPass(model, None)  # type: ignore[arg-type]  # no images: the latent side only
        fwd.posterior = Gaussian(z, torch.zeros_like(z))
        fwd.u = tr.generate(z, fwd)
        model.decoder(fwd.u, fwd)
        assert fwd.pyramid is not None  # the decoder filled it
        preds, recon = fwd.pyramid.predictions, fwd.pyramid.reconstructions
        mu, lv = model.prior.reencode(1, preds[1], recon[2])
        expect_mean, expect_logvar = model.prior.levels[0](mu, lv)
        assert torch.allclose(means[0], expect_mean) and torch.allclose(logvars[0], expect_logvar)
        assert torch.allclose(recon[1], preds[1] + lap.upsample(recon[2]))


def test_kl_is_between_two_gaussians():
    model = seeded_build(tiny(levels=2))
    x = random_images(model.spec)
    with torch.no_grad():
        fwd = model(x, sample=False)
        q, p = fwd.posterior, fwd.prior
        expect = 0.5 * (p.logvar - q.logvar + (q.logvar.exp() + (q.mean - p.mean) ** 2) / p.logvar.exp() - 1)
        assert torch.allclose(model.phase_terms(fwd, "model")["kl"], expect.sum(1).mean(), rtol=1e-5)


def test_m_net_without_pyramid_is_a_build_error():
    spec = compose_spec(preset="cvae", prior="m-net", image_size=16)
    with pytest.raises(BuildError) as info:
        build_model(spec)
    message = str(info.value)
    assert "prior 'm-net' requires 'pyramid'" in message and "laplacian" in message and "\n" not in message


def test_m_net_without_pyramid_cli_one_line(tmp_path):
    from genvae.cli.main import cli

    result = CliRunner().invoke(cli, ["build", "--preset", "cvae", "--prior", "m-net", "-o", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "requires 'pyramid'" in result.output and len(result.output.strip().splitlines()) <= 2


def test_sampler_matches_the_training_prior():
    """With S_0 forced to a near-zero deviation, the sampled finest latent must equal the prior mean that
    forward() computes for the sampled coarser latents: both paths re-encode the same reconstruction."""
    model = seeded_build(tiny(levels=3))
    tr = model.transform
    with torch.no_grad():
        last = model.prior.levels[0].S[-1]
        last.weight.zero_()
        last.bias.fill_(-40.0)
        z = model.prior.sample(5, model, "cpu")
        assert z.shape == (5, tr.layout.numel)
        prior = prior_for(model, z)
    assert torch.allclose(tr.split_levels(z)[0], tr.split_levels(prior.mean)[0], atol=1e-4)


def test_sampler_keeps_fixed_levels():
    model = seeded_build(tiny(levels=3))
    tr = model.transform
    fixed = torch.randn(1, tr.layout.numel)
    for k in range(4):
        with torch.no_grad():
            z = model.prior.sample(6, model, "cpu", fixed=fixed, fixed_groups=k)
        assert z.shape == (6, tr.layout.numel)
        mask = tr.layout.group_mask(range(k))
        assert torch.equal(z[:, mask], fixed[:, mask].expand(6, -1))
        if k < 3:  # the finer levels vary between samples
            assert (z[:, ~mask].std(0) > 0).all()


def test_stop_gradient_of_the_re_encoding():
    """KL of the finest level only: with detach the coarser levels get no gradient from it; without, they do."""
    for detach in (True, False):
        torch.manual_seed(0)
        model = build_model(tiny(levels=2, detach=detach, lambdas=[0.0, 1.0]))
        model.train()
        fwd = model(random_images(model.spec))
        model.phase_terms(fwd, "model")["kl"].backward()
        coarse = [p.grad for p in model.decoder.levels[1].parameters()]
        reached = any(g is not None and g.abs().sum() > 0 for g in coarse)
        assert reached == (not detach)
        assert all(p.grad is not None for p in model.prior.parameters())


def test_re_encoding_does_not_touch_batch_norm_statistics():
    """The prior re-encodes level 1 in eval mode: one training pass updates its statistics once, not twice."""
    model = build_model(tiny(levels=3, size=32))
    model.train()
    enc = model.encoder.levels[1]
    tracked = [k for k in enc.state_dict() if k.endswith("num_batches_tracked")]
    assert tracked
    fwd = model(random_images(model.spec))
    assert fwd.prior is not None and not fwd.prior.standard
    assert all(enc.state_dict()[k].item() == 1 for k in tracked)
    assert all(m.training for m in model.modules())  # train mode restored after the re-encoding


def test_retrain_m_changes_only_the_prior(tmp_path):
    spec = tiny(levels=3)
    torch.manual_seed(0)
    model = build_model(spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randint(0, 256, (8, *spec.image_shape), dtype=torch.uint8)
    config = spec.with_train(max_steps=3, train_only=["prior"]).train
    Trainer(model, tmp_path, ImageData(images, "random"), config, torch.device("cpu")).fit()
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value) == (not key.startswith("prior.")), key
