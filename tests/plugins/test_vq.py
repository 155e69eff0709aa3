"""``vq``: the VQ-VAE's quantising transform (nearest codes, straight-through gradient, the EMA update by hand, the
data start), its loss (commitment and code-book terms and where their gradients go, the categorical prior's NLL),
the ``categorical`` prior against torch.distributions, build-time refusals and the ``vq-vae`` preset end to end."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import one_line, sets
from torch import distributions as D

from genvae.core.components import ForwardPass
from genvae.core.compose import compose_spec
from genvae.core.errors import BuildError
from genvae.core.model import build_model
from genvae.plugins.vq import VQ, CategoricalCodes, VQLatent, codes_to_vectors, nearest_codes
from genvae.testing import check_component, invoke_cli

pytestmark = pytest.mark.usefixtures("one_thread")

ZOO_16 = ["image_size=16", "encoder.width=8", "decoder.width=8", "encoder.depth=2", "decoder.depth=2"]
TINY = [*ZOO_16, "transform.codes=4", "transform.code_dim=2"]  # latent 2x4x4 from 4 codes


def vq_model(*extra: str, train: bool = True, prior: str | None = None):
    torch.manual_seed(0)
    model = build_model(compose_spec(preset="vq-vae", prior=prior, sets=[*TINY, *extra]))
    return model.train(train)


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# -- quantisation -------------------------------------------------------------------------------------------------
def test_nearest_code_assignment_on_hand_made_codes():
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-2.0, -2.0]])
    # one image, a 1x4 grid of 2-d vectors: nearest are codes 1, 2, 3, 0
    z = torch.tensor([[[[0.9, 0.1, -1.5, 0.2]], [[0.2, 0.8, -1.0, 0.1]]]])  # (1, 2, 1, 4)
    indices = nearest_codes(z, codebook)
    assert indices.tolist() == [[[1, 2, 3, 0]]]
    assert torch.equal(codes_to_vectors(indices, codebook), codebook[[1, 2, 3, 0]].t().reshape(1, 2, 1, 4))


def test_flow_quantises_with_the_straight_through_gradient_to_the_encoder():
    model = vq_model("transform.update=gradient")
    fwd = model(images())
    data = fwd[VQ]
    codebook = model.transform.codebook
    assert torch.equal(fwd.z0, fwd.posterior.mean)  # deterministic: z0 is the mean, z_e
    assert torch.allclose(fwd.z, codes_to_vectors(data.indices, codebook), atol=1e-6)  # the value is z_q
    assert torch.equal(data.indices, nearest_codes(fwd.z0.detach(), codebook))
    # d z / d z_e is the identity: a gradient on z reaches z_e (and the encoder) unchanged
    g = torch.randn_like(fwd.z)
    (grad_z_e,) = torch.autograd.grad(fwd.z, [fwd.z0], g, retain_graph=True)
    assert torch.equal(grad_z_e, g)
    fwd.x_hat.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_ema_update_equals_the_hand_computation_for_one_step():
    model = vq_model("transform.init=normal", "transform.decay=0.9", "transform.epsilon=0.1", train=False)
    tr: VQLatent = model.transform
    e0 = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0], [-3.0, 0.0]])
    tr.codebook.copy_(e0)
    tr.embed_sum.copy_(e0)  # N = 1 for each code and m = e: the start
    z_e = torch.tensor([[0.2, 0.0], [-0.2, 0.2], [1.4, 0.8], [0.0, 0.1]]).t().reshape(1, 2, 1, 4)  # codes 0, 0, 1, 0
    tr.flow(z_e, ForwardPass(model, images()[:1]))  # eval mode: no update
    assert torch.equal(tr.codebook, e0)
    tr.train()
    z, _ = tr.flow(z_e, ForwardPass(model, images()[:1]))  # one training pass's flow: one update
    assert torch.equal(z, e0[[0, 0, 1, 0]].t().reshape(1, 2, 1, 4))  # quantised with the codes before the update
    gamma, eps, k = 0.9, 0.1, 4
    n_j = torch.tensor([3.0, 1.0, 0.0, 0.0])
    s_j = torch.tensor([[0.2 - 0.2 + 0.0, 0.0 + 0.2 + 0.1], [1.4, 0.8], [0.0, 0.0], [0.0, 0.0]])
    big_n = gamma * 1.0 + (1 - gamma) * n_j
    m = gamma * e0 + (1 - gamma) * s_j
    total = big_n.sum()
    smoothed = (big_n + eps) / (total + k * eps) * total
    assert torch.allclose(tr.cluster_size, big_n)
    assert torch.allclose(tr.embed_sum, m)
    assert torch.allclose(tr.codebook, m / smoothed.unsqueeze(1), atol=1e-6)
    # an unused code barely moves (N and m decay together)
    assert torch.allclose(tr.codebook[2], e0[2], rtol=0.05)


def test_ema_buffers_move_only_in_training_passes():
    model = vq_model(train=False)
    before = model.transform.codebook.clone()
    model(images())
    assert torch.equal(model.transform.codebook, before)
    model.train()
    model(images())
    assert not torch.equal(model.transform.codebook, before)


def test_data_start_puts_every_code_on_an_encoder_output_once():
    model = vq_model("transform.codes=6", train=False)
    assert not bool(model.transform.started)
    model.train()
    with torch.no_grad():
        z_e = model.transform.posterior(model.encoder(images())).mean
        started = model.transform.codebook.clone()
        model.transform.data_start(z_e)
    flat = z_e.movedim(1, -1).reshape(-1, z_e.shape[1])
    assert not torch.equal(model.transform.codebook, started)
    assert torch.cdist(model.transform.codebook, flat).min(1).values.max() < 1e-5
    assert bool(model.transform.started)


def test_perplexity_and_usage_are_logged_not_summed():
    model = vq_model()
    fwd = model(images())
    counts = torch.bincount(fwd[VQ].indices.flatten(), minlength=4).float()
    p = counts / counts.sum()
    expected = math.exp(-sum(v * math.log(v) for v in p.tolist() if v > 0))
    assert fwd.logged["vq.perplexity"].item() == pytest.approx(expected, rel=1e-5)
    assert fwd.logged["vq.usage"].item() == pytest.approx((counts > 0).float().mean().item())
    assert not any(k.startswith("vq.perplexity") for k in model.phase_terms(fwd, "model"))


# -- the loss -----------------------------------------------------------------------------------------------------
def test_commitment_value_and_that_its_gradient_reaches_only_the_encoder():
    model = vq_model("transform.update=gradient", "loss.vq.beta=0.3", prior="normal")
    fwd = model(images())
    data = fwd[VQ]
    terms = model.losses["vq"](fwd, "model")
    assert set(terms) == {"commitment", "codebook"}
    by_hand = 0.3 * (data.z_e - data.z_q).pow(2).sum((1, 2, 3)).mean()
    assert terms["commitment"].item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert terms["codebook"].item() == pytest.approx((by_hand / 0.3).item(), rel=1e-6)
    enc = list(model.encoder.parameters())
    book = model.transform.codebook
    g_enc = torch.autograd.grad(terms["commitment"], enc, retain_graph=True, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in g_enc)
    assert torch.autograd.grad(terms["commitment"], [book], retain_graph=True, allow_unused=True)[0] is None
    g_book = torch.autograd.grad(terms["codebook"], [book], retain_graph=True)[0]
    assert g_book.abs().sum() > 0
    g_enc = torch.autograd.grad(terms["codebook"], enc, allow_unused=True)
    assert all(g is None for g in g_enc)


def test_ema_model_has_no_codebook_term_and_the_codebook_is_a_buffer():
    model = vq_model()
    assert set(model.losses["vq"](model(images()), "model")) == {"commitment", "prior_nll"}
    assert "transform.codebook" not in dict(model.named_parameters())
    assert "transform.codebook" in model.state_dict()


# -- the categorical prior ----------------------------------------------------------------------------------------
def test_categorical_log_prob_matches_torch_categorical():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)  # 6 positions (2x3 grid), 4 codes
    codebook = torch.randn(4, 3, generator=g)
    indices = torch.randint(4, (5, 2, 3), generator=g)
    z = codes_to_vectors(indices, codebook)  # (5, 3, 2, 3)
    expected = D.Categorical(logits=logits).log_prob(indices.flatten(1)).sum(1)
    dist = CategoricalCodes(logits, codebook)
    assert torch.allclose(dist.log_prob(z), expected, atol=1e-6)
    draws = torch.stack([z, z.flip(0)])  # (2, 5, ...): leading draw dims
    assert torch.allclose(dist.log_prob(draws), torch.stack([expected, expected.flip(0)]), atol=1e-6)


def test_prior_starts_uniform_and_its_nll_term_trains_only_the_logits():
    model = vq_model()
    fwd = model(images())
    positions = math.prod(model.layout.shape[1:])
    assert fwd.prior.log_prob(fwd.z).tolist() == pytest.approx([-positions * math.log(4)] * 4)
    nll = model.losses["vq"](fwd, "model")["prior_nll"]
    assert nll.item() == pytest.approx(positions * math.log(4), rel=1e-6)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(nll, list(params.values()), allow_unused=True)
    moved = {name for name, g in zip(params, grads, strict=True) if g is not None and g.abs().sum() > 0}
    assert moved == {"prior.logits"}


def test_prior_samples_are_codes_drawn_with_the_prior_frequencies():
    model = vq_model(train=False)
    with torch.no_grad():
        model.prior.logits.copy_(torch.log(torch.tensor([0.7, 0.1, 0.1, 0.1])).expand_as(model.prior.logits))
    torch.manual_seed(0)
    z = model.prior.sample(500, model, "cpu")
    assert z.shape == (500, *model.layout.shape)
    book = model.transform.codebook
    indices = nearest_codes(z, book)
    assert torch.allclose(codes_to_vectors(indices, book), z)
    assert (indices == 0).float().mean().item() == pytest.approx(0.7, abs=0.02)


def test_refusals_are_one_line():
    with pytest.raises(BuildError) as err:
        build_model(compose_spec(preset="vae-mog", prior="categorical", sets=ZOO_16))
    assert "the 'vq' transform; latent transform 'fc'" in one_line(err)
    with pytest.raises(BuildError) as err:
        build_model(compose_spec(preset="vq-vae", losses="bce,kl", sets=TINY))
    assert "deterministic" in one_line(err)
    with pytest.raises(BuildError) as err:
        build_model(compose_spec(preset="cvae", losses="mse,vq", sets=ZOO_16))
    assert "needs the 'vq' latent transform" in one_line(err)
    with pytest.raises(Exception) as bad:
        vq_model("transform.update=adam")
    assert "update" in one_line(bad) and "ema" in str(bad.value)


def test_mog_prior_on_vq_refuses_through_kl_and_builds_with_vq_loss():
    with pytest.raises(BuildError) as err:
        build_model(compose_spec(preset="vq-vae", prior="mog", losses="bce,kl", sets=TINY))
    assert "deterministic" in one_line(err)
    model = build_model(compose_spec(preset="vq-vae", prior="mog", sets=TINY))
    assert set(model.losses["vq"](model.train()(images()), "model")) == {"commitment"}


def test_conformance_both_updates():
    for update in ("ema", "gradient"):
        spec = compose_spec(preset="vq-vae", sets=[*TINY, "channels=3", f"transform.update={update}"])
        check_component("transform", "vq", spec=spec)
        check_component("prior", "categorical", spec=spec)
        # the prior's NLL is P log K for any codes while its logits are uniform, as they start: a constant there
        check_component("loss", "vq", spec=spec, skip=("sensitivity",))


@pytest.mark.parametrize("size", [16, 32, 64])
def test_preset_builds(size):
    build_model(compose_spec(preset="vq-vae", sets=[f"image_size={size}", "channels=3"]))


def test_cli_build_train_sample(tmp_path):
    assert invoke_cli(["build", "--preset", "vq-vae", *sets(ZOO_16), "-o", tmp_path / "m"]).exit_code == 0
    run = invoke_cli(["train", tmp_path / "m", "--max-steps", "2", "--batch-size", "8", "--quiet"])
    assert run.exit_code == 0, run.output
    out = invoke_cli(["sample", tmp_path / "m", "-n", "4", "-o", tmp_path / "s.png"])
    assert out.exit_code == 0 and (tmp_path / "s.png").is_file(), out.output
