"""The engine contracts of PLUGIN_API_VERSION 3, each as a plugin author uses it: a flow's log-determinant reaching
the KL, k posterior draws run as one batch, a loss that is the whole objective, logged-only values, typed pass
fields, one prior interface (log p(z) per image), deterministic (quantising) transforms and the errors that name a
plugin that failed to load. Each test here fails on the 0.2 engine, which had none of these."""

from __future__ import annotations

import json
import math
import textwrap

import attrs
import pytest
import torch
from helpers import TINY_CVAE, error_line, one_line, run, seeded_build
from torch import distributions as D

import genvae.api as api
from genvae.testing import plugin_registry

pytestmark = pytest.mark.usefixtures("one_thread")

FC = ["image_size=16", "encoder.width=8", "encoder.depth=2", "decoder.width=8", "decoder.depth=2"]


def _fc_transform():
    return plugin_registry().component("transform", "fc")


class AffineFlowPlugin:
    """A transform with a flow z = 2 z0 + 1 (log|det| = D log 2 per image), built on the fc transform."""

    def __init__(self):
        base = _fc_transform()

        class AffineFlow(base):  # type: ignore[misc, valid-type]
            name = "affine-flow"

            def flow(self, z0, fwd=None):
                n = z0[0].numel()
                return 2 * z0 + 1, torch.full(z0.shape[:1], n * math.log(2.0), dtype=z0.dtype)

        self.cls = AffineFlow

    @api.hookimpl
    def genvae_register_transforms(self, register):
        register(self.cls)


class CountingLoss(api.Loss[api.NoOptions]):
    """A loss asking for 3 posterior draws, logging a diagnostic and reading a pass field."""

    name = "three-draws"
    role = "objective"
    FIELD: api.PassField[torch.Tensor] = api.PassField("three-draws.note")

    def posterior_samples(self) -> int:
        return 3

    def forward(self, fwd, phase):
        fwd.log("three-draws.diag", torch.tensor(123.0))
        assert fwd.multi is not None
        return {"three_draws": (fwd.multi.x_hat - fwd.x.unsqueeze(0)).pow(2).mean()}


class LossPlugin:
    @api.hookimpl
    def genvae_register_losses(self, register):
        register(CountingLoss)


def _spec(registry, **kw):
    return api.compose_spec(registry=registry, **kw)


def _build(spec, registry, train=True):
    torch.manual_seed(0)
    model = api.build_model(spec, registry)
    return model.train(train)


# -- posterior samples with a density ------------------------------------------------------------------------------
def test_flow_sample_log_q_and_kl_are_the_flows():
    reg = plugin_registry(AffineFlowPlugin())
    spec = _spec(reg, encoder="conv", transform="affine-flow", prior="normal", sets=[*FC, "transform.latent_dim=5"])
    model = _build(spec, reg)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    torch.manual_seed(1)
    fwd = model(x)
    assert torch.equal(fwd.z, 2 * fwd.z0 + 1)
    q = D.Independent(D.Normal(fwd.posterior.mean, fwd.posterior.std), 1)
    # log q(z|x) = log q0(z0|x) - log|det| ; D = 5
    assert torch.allclose(fwd.log_q, q.log_prob(fwd.z0) - 5 * math.log(2.0), atol=1e-5)
    kl = model.losses["kl"]
    assert not kl.closed_form  # a flow: no closed form even with a Gaussian prior
    p = D.Independent(D.Normal(torch.zeros(5), torch.ones(5)), 1)
    expected = (fwd.log_q - p.log_prob(fwd.z)).mean()
    assert torch.allclose(kl(fwd, "model")["kl"], expected, atol=1e-5)
    # encode() goes through the flow: its mean is the flow of the base mean, so sample --from never skips it
    model.eval()
    encoded = model.encode(x)
    assert torch.allclose(encoded.mean, 2 * model.transform.posterior(model.encoder(x)).mean + 1)
    z, log_q = encoded.rsample_with_log_prob(7)
    assert z.shape == (7, 4, 5) and log_q.shape == (7, 4)


def test_fresh_draws_carry_the_flows_log_q():
    reg = plugin_registry(AffineFlowPlugin())
    spec = _spec(reg, encoder="conv", transform="affine-flow", sets=[*FC, "transform.latent_dim=3"])
    model = _build(spec, reg)
    fwd = model(torch.rand(2, 3, 16, 16) * 2 - 1)
    z, log_q = fwd.draws(4)
    z0 = (z - 1) / 2
    assert torch.allclose(log_q, fwd.posterior.log_prob(z0) - 3 * math.log(2.0), atol=1e-5)


# -- k posterior samples, one batch ------------------------------------------------------------------------------
def test_k_draws_run_once_as_one_batch_and_are_shaped_k_b():
    reg = plugin_registry(LossPlugin())
    spec = _spec(reg, encoder="conv", losses="three-draws", sets=[*TINY_CVAE])
    assert [s.name for s in spec.losses] == ["three-draws"]  # the whole objective: no mse, no kl added
    model = _build(spec, reg)
    assert model.posterior_samples == 3
    rows = []
    model.decoder.register_forward_hook(lambda m, inp, out: rows.append(inp[0].shape[0]))
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    fwd = model(x)
    assert rows == [12]  # one decoder call on the (k*B) batch: batch norms see one batch
    multi = fwd.multi
    assert multi.k == 3 and multi.z.shape == (3, 4, 2, 4, 4) and multi.x_hat.shape == (3, 4, 3, 16, 16)
    assert torch.equal(multi.z[0], fwd.z) and torch.equal(multi.x_hat[0], fwd.x_hat)
    assert not torch.equal(multi.z[0], multi.z[1])  # independent draws
    assert torch.allclose(multi.log_q, fwd.posterior.log_prob(multi.z0))
    # eval: one draw, the mean
    model.eval()
    assert model(x, sample=False).multi is None or model.posterior_samples == 3


def test_train_posterior_samples_option_draws_k():
    spec = api.compose_spec(preset="cvae", sets=[*TINY_CVAE, "train.posterior_samples=2"])
    model = seeded_build(spec, train=True)
    fwd = model(torch.rand(3, 3, 16, 16) * 2 - 1)
    assert fwd.multi is not None and fwd.multi.z.shape[:2] == (2, 3)


# -- objective-owning losses, logged-only values ---------------------------------------------------------------------
def test_build_says_which_defaults_it_added(tmp_path):
    out = run("build", "--encoder", "conv", "-o", tmp_path / "m", "--set", "image_size=16").output
    assert "added default loss(es): mse (reconstruction), kl (divergence)" in out
    out = run("build", "--encoder", "conv", "--loss", "mse,kl", "-o", tmp_path / "n", "--set", "image_size=16").output
    assert "added default" not in out


def test_an_objective_loss_replaces_the_presets_reconstruction_and_divergence():
    reg = plugin_registry(LossPlugin())
    spec = api.compose_spec(preset="cvae", losses="three-draws", registry=reg, sets=TINY_CVAE)
    assert [s.name for s in spec.losses] == ["three-draws"]


def test_logged_values_reach_metrics_but_not_the_objective(tmp_path, tiny_data):
    reg = plugin_registry(LossPlugin())
    spec = api.compose_spec(encoder="conv", losses="three-draws", registry=reg, sets=[*TINY_CVAE, "train.log_every=1"])
    model = _build(spec, reg)
    config = model.spec.with_train(batch_size=8, max_steps=3, log_every=1).train
    api.Trainer(model, tmp_path, tiny_data, config, torch.device("cpu")).fit()
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines and all(line["three-draws.diag"] == 123.0 for line in lines)
    from genvae.cli.report import terms_of

    assert "three-draws.diag" in terms_of(lines)  # the report plots it beside the terms
    for line in lines:  # the total is the objective's terms alone
        assert line["model/total"] == pytest.approx(line["three-draws.three_draws"], rel=1e-5)


# -- typed pass data -------------------------------------------------------------------------------------------
def test_pass_fields_are_typed_keys_of_the_pass(tiny_spec):
    model = seeded_build(tiny_spec)
    fwd = model(torch.zeros(1, 3, 16, 16), sample=False)
    note: api.PassField[str] = api.PassField("test.note")
    assert fwd.get(note) is None
    with pytest.raises(KeyError, match="test.note"):
        fwd[note]
    fwd[note] = "hello"
    assert fwd[note] == "hello" and fwd.get(note) == "hello"
    assert fwd.get(api.PassField("test.note")) is None  # a field is its object, not its name


# -- one prior interface -------------------------------------------------------------------------------------------
def test_gaussian_log_prob_is_per_image_and_matches_torch():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 2, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    q = api.Gaussian(mean, logvar)
    z = torch.randn(5, 3, 2, 4, generator=g)
    ref = D.Independent(D.Normal(mean, torch.exp(0.5 * logvar)), 2)
    assert torch.allclose(q.log_prob(z[0]), ref.log_prob(z[0]), atol=1e-5)
    assert torch.allclose(q.log_prob(z), ref.log_prob(z), atol=1e-5)  # (k, B)
    assert torch.allclose(q.log_density(z[0]), D.Normal(mean, torch.exp(0.5 * logvar)).log_prob(z[0]), atol=1e-5)
    assert isinstance(q, api.LatentDistribution)


def test_vamp_log_prob_matches_torch_mixture_with_draw_dims():
    spec = api.compose_spec(preset="cvae", prior="vamp", sets=[*TINY_CVAE, "prior.components=3"])
    model = seeded_build(spec)
    mixture = model.prior.mixture(model)
    comp = mixture.components
    mix = D.MixtureSameFamily(
        D.Categorical(logits=torch.zeros(3)),
        D.Independent(D.Normal(comp.mean.flatten(1), torch.exp(0.5 * comp.logvar.flatten(1))), 1),
    )
    z = torch.randn(2, 4, *comp.mean.shape[1:])
    assert torch.allclose(mixture.log_prob(z), mix.log_prob(z.flatten(2)), atol=1e-4)


# -- deterministic (quantising) transforms ----------------------------------------------------------------------------
class RoundingPlugin:
    def __init__(self):
        base = _fc_transform()

        class Rounding(base):  # type: ignore[misc, valid-type]
            name = "rounding"
            stochastic = False

            def flow(self, z0, fwd=None):
                return z0 + (torch.round(z0) - z0).detach(), None  # straight-through

        self.cls = Rounding

    @api.hookimpl
    def genvae_register_transforms(self, register):
        register(self.cls)


def test_a_deterministic_transform_takes_the_mean_and_refuses_kl():
    reg = plugin_registry(RoundingPlugin())
    spec = _spec(reg, encoder="conv", transform="rounding", losses="mse", sets=[*FC, "transform.latent_dim=4"])
    with pytest.raises(api.BuildError) as err:
        api.build_model(spec, reg)
    assert "deterministic" in one_line(err) and "'rounding'" in str(err.value)
    spec = attrs.evolve(spec, losses=(api.LossSpec("mse"),))
    model = _build(spec, reg)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    fwd = model(x)  # train mode, sample=True: still no noise
    assert torch.equal(fwd.z0, fwd.posterior.mean) and torch.equal(fwd.z, torch.round(fwd.posterior.mean))
    fwd.x_hat.sum().backward()  # the straight-through gradient reaches the encoder
    assert model.encoder.parameters().__next__().grad.abs().sum() > 0


# -- errors naming a plugin that failed to load ---------------------------------------------------------------
@pytest.fixture
def broken_dist(tmp_path, monkeypatch):
    """A real installed distribution whose genvae entry point fails to import."""
    (tmp_path / "genvae_broken_flow.py").write_text("raise ImportError('needs a library that is not installed')\n")
    info = tmp_path / "genvae_broken_flow-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: genvae-broken-flow\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[genvae]\nbroken-flow = genvae_broken_flow\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GENVAE_LOAD_PLUGINS", "broken-flow")
    from genvae.core.registry import get_registry

    get_registry(refresh=True)
    yield
    monkeypatch.undo()
    get_registry(refresh=True)


def test_unknown_component_names_the_failed_plugin(broken_dist):
    from genvae.core.registry import get_registry

    with pytest.raises(api.GenvaeError) as err:
        get_registry().component("transform", "flow")
    message = one_line(err)
    assert "unknown latent transform 'flow'" in message
    assert "'broken-flow' (ImportError: needs a library that is not installed)" in message


def test_unknown_command_names_the_failed_plugin(broken_dist):
    from click.testing import CliRunner

    from genvae.testing import genvae_cli

    result = CliRunner().invoke(genvae_cli(), ["flowify"], standalone_mode=True)
    assert result.exit_code == 2
    line = error_line(textwrap.dedent(result.output).strip(), "No such command", "'broken-flow'", "ImportError")
    assert line
