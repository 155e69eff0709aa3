"""``zoo``: the model-zoo presets (the shared ZOO NETWORK, each model's prior and losses) build at 16, 32 and 64 px and
train at 16 px from the command line; the benchmark's evaluator (benchmarks/model_zoo.py) computes the ELBO, the
IWAE bound, the reconstruction MSE and FID exactly as defined, on tiny models. pythae is never imported here."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from helpers import run
from torch import distributions as D

from genvae.api import compose_spec
from genvae.core.model import GenerativeModel, build_model
from genvae.plugins.vamp import VampMixture
from genvae.plugins.zoo import PRESETS, ZOO_NETWORK

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)

TINY = ["image_size=16", "encoder.width=4", "encoder.depth=2", "decoder.width=4", "decoder.depth=2"]


def zoo_module() -> ModuleType:
    """benchmarks/model_zoo.py (not a package: benchmarks/ is not installed), loaded from its file."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "model_zoo.py"
    spec = importlib.util.spec_from_file_location("genvae_model_zoo_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mz() -> ModuleType:
    return zoo_module()


def tiny(preset: str, *extra: str) -> GenerativeModel:
    torch.manual_seed(0)
    return build_model(compose_spec(preset=preset, sets=[*TINY, *extra])).eval()


# -- the presets ---------------------------------------------------------------------------------------------------


def test_presets_share_the_zoo_network_and_differ_where_the_model_does():
    for name, (spec, _) in PRESETS.items():
        for key in ("image_size", "channels", "encoder", "transform", "decoder", "train"):
            assert spec[key] == ZOO_NETWORK[key], (name, key)
    assert PRESETS["conv-vae"][0]["losses"] == [{"name": "bce"}, {"name": "kl"}]
    assert PRESETS["conv-vae"][0]["prior"] == {"name": "normal"}
    assert PRESETS["beta-vae"][0]["losses"][1] == {"name": "kl", "options": {"beta": 4.0}}
    assert PRESETS["vae-vamp"][0]["prior"] == {"name": "vamp", "options": {"components": 50}}


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("size", [16, 32, 64])
def test_preset_builds_at_each_size(preset: str, size: int):
    model = build_model(compose_spec(preset=preset, sets=[f"image_size={size}"]))
    assert model.spec.image_shape == (1, size, size)
    assert model.layout.shape == (16,)
    assert model.decoder.output == "tanh"


def test_beta_vae_weights_the_closed_form_kl_by_four():
    model = tiny("beta-vae")
    fwd = model(torch.rand(3, 1, 16, 16) * 2 - 1)
    q = D.Normal(fwd.posterior.mean, fwd.posterior.std)
    kl = D.kl_divergence(q, D.Normal(0.0, 1.0)).sum(1).mean()
    assert model.phase_terms(fwd, "model")["kl"].item() == pytest.approx(4.0 * kl.item(), rel=1e-5)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_trains_two_steps_from_the_command_line(preset: str, tmp_path: Path):
    folder = tmp_path / preset
    run("build", "--preset", preset, "-o", folder, *[a for s in TINY for a in ("--set", s)])
    out = run("train", folder, "--max-steps", "2", "--batch-size", "4", "--quiet").output
    assert "done at step 2" in out
    assert (folder / "model.safetensors").exists()


# -- the benchmark's evaluator ---------------------------------------------------------------------------------------


def test_bernoulli_log_likelihood_matches_torch(mz: ModuleType):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 1, 4, 4, generator=g)
    x = (torch.rand(2, 1, 4, 4, generator=g) > 0.5).float()
    expected = D.Bernoulli(logits=logits).log_prob(x.expand_as(logits)).flatten(2).sum(-1)
    assert torch.allclose(mz.bernoulli_log_likelihood(logits, x), expected, atol=1e-5)


def test_iwae_bound_is_the_log_mean_weight(mz: ModuleType):
    log_w = torch.log(torch.tensor([[1.0, 2.0], [3.0, 2.0]]))  # (k=2, B=2)
    assert torch.allclose(mz.iwae_bound(log_w), torch.log(torch.tensor([2.0, 2.0])))
    assert torch.allclose(mz.iwae_bound(torch.full((5, 3), -7.0)), torch.full((3,), -7.0))


def by_hand_log_weights(model: GenerativeModel, x01: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """log p(x|z) + log p(z) - log q(z|x) with torch.distributions, z = mean + std * eps, eps drawn as the engine
    draws it (k, B, latent)."""
    x = x01 * 2 - 1
    post = model.transform.posterior(model.encoder(x))
    torch.manual_seed(seed)
    z = post.mean + post.std * torch.randn(k, *post.mean.shape)
    log_q = D.Normal(post.mean, post.std).log_prob(z).sum(-1)
    log_p = D.Normal(0.0, 1.0).log_prob(z).sum(-1)
    logits = 2.0 * model.decoder(model.transform.generate(z.flatten(0, 1))).view(k, *x.shape)
    log_px = D.Bernoulli(logits=logits).log_prob(x01.expand_as(logits)).flatten(2).sum(-1)
    return log_px + log_p - log_q


@pytest.mark.parametrize("k", [1, 3])
def test_genvae_log_weights_are_the_elbo_integrand(mz: ModuleType, k: int):
    model = tiny("conv-vae")
    x01 = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    torch.manual_seed(5)
    got = mz.GenvaeScorer(model).log_weights(x01, k)
    assert got.shape == (k, 2)
    assert torch.allclose(got, by_hand_log_weights(model, x01, k, 5), atol=1e-3)


def test_genvae_log_weights_use_the_vamp_mixture(mz: ModuleType):
    model = tiny("vae-vamp", "prior.components=3")
    x01 = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    torch.manual_seed(7)
    got = mz.GenvaeScorer(model).log_weights(x01, 4)
    post = model.transform.posterior(model.encoder(x01 * 2 - 1))
    pseudo = model.transform.posterior(model.encoder(model.prior.extra_inputs()))
    torch.manual_seed(7)
    z = post.mean + post.std * torch.randn(4, *post.mean.shape)
    standard = by_hand_log_weights(model, x01, 4, 7)
    # the same draws: the difference is log p(z) under the mixture less log p(z) under N(0, I)
    shift = VampMixture(pseudo).log_prob(z) - D.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert shift.abs().max() > 0.1  # a mixture that is not N(0, I)
    assert torch.allclose(got, standard + shift, atol=1e-3)


def test_bounds_mse_and_their_order_on_a_tiny_model(mz: ModuleType):
    model = tiny("conv-vae")
    scorer = mz.GenvaeScorer(model)
    images = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    x = images.float() / 255
    torch.manual_seed(0)
    elbo = mz.elbo(scorer, images, batch=4)
    torch.manual_seed(0)
    with torch.no_grad():
        assert elbo == pytest.approx(float(scorer.log_weights(x, 1).mean()), rel=1e-5)
    # one call of 200 draws: the bound is the log mean weight of those draws, above their mean log weight (Jensen)
    torch.manual_seed(1)
    iwae = mz.iwae(scorer, images, 200, chunk=6 * 200)
    torch.manual_seed(1)
    with torch.no_grad():
        log_w = scorer.log_weights(x, 200)
    assert iwae == pytest.approx(float(mz.iwae_bound(log_w).mean()), rel=1e-5)
    assert iwae > float(log_w.mean())
    x = images.float() / 255
    recon = (model.reconstruct(x * 2 - 1) + 1) / 2  # reconstruct runs without gradient
    assert mz.reconstruction_mse(scorer, images, batch=4) == pytest.approx(F.mse_loss(recon, x).item(), rel=1e-5)
    # the chunking of draws and images does not change the bound's definition: k = 1 is the one-draw log-weight
    torch.manual_seed(0)
    one = mz.iwae(scorer, images[:2], 1, chunk=2)
    torch.manual_seed(0)
    with torch.no_grad():
        assert one == pytest.approx(float(scorer.log_weights(x[:2], 1).mean()), rel=1e-5)


def test_a_deterministic_decoder_output_has_no_bound(mz: ModuleType):
    model = tiny("conv-vae")
    model.decoder.output = "image"  # no logits: the Bernoulli bound is not defined
    scorer = mz.GenvaeScorer(model)
    assert not scorer.has_bound
    images = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    scores = mz.score(scorer, images, elbo_images=2, iwae_images=2, iwae_k=4)
    assert scores.elbo is None and scores.iwae is None and math.isfinite(scores.mse)


class PoolFeatures:
    """A feature network of 4x4 average pools (16 features of a 16x16 image): FID in it has a closed form."""

    label = "4x4 pools"
    image_shape = (1, 16, 16)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 4).flatten(1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def test_fid_is_genvae_fid_in_the_given_features(mz: ModuleType):
    real = torch.randint(0, 200, (64, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    real01 = real.float() / 255
    assert mz.fid(real, real01, PoolFeatures()) == pytest.approx(0.0, abs=1e-6)
    # every pixel 0.1 brighter: the features move by 0.2 (images in [-1, 1]), covariances stay: FID = 16 * 0.2^2
    assert mz.fid(real, real01 + 0.1, PoolFeatures()) == pytest.approx(16 * 0.2**2, rel=1e-4)
    # the real images' features given beforehand are used as they are
    shifted = PoolFeatures().features(real01 * 2 - 1).double() + 0.5
    assert mz.fid(real, real01, PoolFeatures(), shifted) == pytest.approx(16 * 0.5**2, rel=1e-4)


def test_rows_name_their_presets_and_pythae_models(mz: ModuleType):
    assert {"conv-vae", "beta-vae", "vae-vamp"} <= set(mz.ROWS)
    for name, row in mz.ROWS.items():
        assert row.preset == name
        assert row.peer is not None or row.note  # a row pythae cannot train says why


@pytest.mark.slow
def test_the_benchmark_runs_a_genvae_row_end_to_end(mz: ModuleType, tmp_path: Path):
    """The whole driver on Fashion-MNIST (the Debian package), genvae only, a handful of steps and draws."""
    from genvae.plugins.torchvision_data import DEBIAN_FASHION_MNIST

    if not Path(DEBIAN_FASHION_MNIST).is_dir():
        pytest.skip("Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)")
    clf = tmp_path / "clf"
    run("train-classifier", "--data", "fashion-mnist", "-o", clf, "--width", "4", "--epochs", "1", "--limit", "256")
    mz.main(
        ["--models", "conv-vae", "--frameworks", "genvae", "--steps", "4", "--elbo-images", "32", "--iwae-images", "2"]
        + ["--iwae-k", "8", "--fid-samples", "64", "--classifier", str(clf), "--out", str(tmp_path / "out")]
    )
    import json

    (row,) = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert row["model"] == "conv-vae" and row["iwae"] is not None and row["fid"] is not None
