"""``kl``'s mathematics against the closed form worked out by hand: KL(N(m, v) || N(0, 1)) =
0.5 (v + m^2 - 1 - log v) per element, summed over the latent, weighted per time step, averaged over
the batch; the general-Gaussian form; its gradients; the paper presets' per-step weights."""

from __future__ import annotations

import math

import pytest
import torch

from genvae.core.components import ForwardPass, Gaussian
from genvae.core.compose import compose_spec, preset_spec
from genvae.core.model import build_model
from genvae.plugins.kl import KLLoss

# crvae at 16 px, 8 time steps of one latent channel (16 values) each
TINY = [
    "image_size=16",
    "encoder.width=4",
    "encoder.max_width=16",
    "decoder.width=4",
    "decoder.max_width=16",
    "transform.latent_channels=8",
    "transform.hidden=16",
    "transform.layers=1",
]
WEIGHTS = [1.0, 0.5, 2.0, 0.25, 0.0, 3.0, 1.5, 0.75]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


def kl_loss(weights=WEIGHTS, weight=1.0):
    sets = [*TINY, f"loss.kl.group_weights={weights}", f"loss.kl.weight={weight}"]
    model = build_model(compose_spec(preset="crvae", sets=sets))
    return model, model.losses["kl"]


def posterior_pass(model, mean, logvar, prior=None):
    fwd = ForwardPass(model, torch.zeros(mean.shape[0], 3, 16, 16))
    fwd.posterior = Gaussian(mean, logvar)
    fwd.prior = prior if prior is not None else Gaussian.standard_like(fwd.posterior)
    return fwd


def test_standard_normal_closed_form_by_hand():
    """One non-zero element in four steps of sample 0; sample 1 equals the prior (KL 0)."""
    model, loss = kl_loss()
    mean = torch.zeros(2, 8, 4, 4)
    logvar = torch.zeros(2, 8, 4, 4)
    mean[0, 0, 1, 2] = 1.0  # step 1: 0.5 * (1 + 1 - 1 - 0) = 0.5
    logvar[0, 1, 0, 0] = math.log(2.0)  # step 2: 0.5 * (2 - 1 - log 2)
    mean[0, 2, 3, 3], logvar[0, 2, 3, 3] = -2.0, -1.0  # step 3: 0.5 * (e^-1 + 4 - 1 + 1)
    mean[0, 5, 2, 1], logvar[0, 5, 2, 1] = 0.5, 1.0  # step 6: 0.5 * (e + 0.25 - 1 - 1)
    per_step = {0: 0.5, 1: 0.5 * (1 - math.log(2.0)), 2: 0.5 * (math.exp(-1) + 4), 5: 0.5 * (math.e - 1.75)}
    expected = sum(WEIGHTS[t] * v for t, v in per_step.items()) / 2  # summed over the latent, batch mean
    value = loss(posterior_pass(model, mean, logvar), "model")["kl"]
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(
        loss.per_group(posterior_pass(model, mean, logvar)),
        torch.tensor([per_step.get(t, 0.0) / 2 for t in range(8)]),
        atol=1e-7,
    )


def test_loss_weight_multiplies_the_weighted_sum():
    model, loss = kl_loss(weight=0.25)
    mean = torch.zeros(1, 8, 4, 4)
    mean[0, 2, 0, 0] = 2.0  # step 3: 0.5 * 4 = 2, weight 2, loss weight 0.25
    assert loss(posterior_pass(model, mean, torch.zeros_like(mean)), "model")["kl"].item() == pytest.approx(1.0)


def test_general_gaussian_closed_form_by_hand():
    """KL(N(m1, v1) || N(m2, v2)) = 0.5 (log(v2 / v1) + (v1 + (m1 - m2)^2) / v2 - 1)."""
    model, loss = kl_loss([1.0] * 8)
    mean, logvar = torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 4, 4)
    prior_mean, prior_logvar = torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 4, 4)
    mean[0, 3, 1, 1], logvar[0, 3, 1, 1] = 1.0, math.log(0.5)
    prior_mean[0, 3, 1, 1], prior_logvar[0, 3, 1, 1] = -1.0, math.log(2.0)
    expected = 0.5 * (math.log(2.0 / 0.5) + (0.5 + 4.0) / 2.0 - 1.0)
    fwd = posterior_pass(model, mean, logvar, Gaussian(prior_mean, prior_logvar))
    assert loss(fwd, "model")["kl"].item() == pytest.approx(expected, rel=1e-6)


def test_gradients_by_hand():
    """d/dm = w m / B and d/d(log v) = w (v - 1) / 2B: the KL pulls the posterior towards N(0, I)."""
    model, loss = kl_loss()
    mean = torch.full((2, 8, 4, 4), 0.3, requires_grad=True)
    logvar = torch.full((2, 8, 4, 4), 0.7, requires_grad=True)
    value = loss(posterior_pass(model, mean, logvar), "model")["kl"]
    g_mean, g_logvar = torch.autograd.grad(value, [mean, logvar])
    w = torch.tensor(WEIGHTS).view(1, 8, 1, 1)
    assert torch.allclose(g_mean, (w * 0.3 / 2).expand_as(mean), rtol=1e-6)
    assert torch.allclose(g_logvar, (w * (math.exp(0.7) - 1) / 4).expand_as(logvar), rtol=1e-6)


def test_paper_presets_weight_steps_1_to_3_by_3e4_and_4_to_8_by_2e4():
    for name in ("crvae", "crvae-gan", "crvae-gan-no-mi"):
        (kl,) = [s for s in preset_spec(name).losses if s.name == "kl"]
        assert list(kl.options["group_weights"]) == [3e-4] * 3 + [2e-4] * 5 and kl.weight == 1.0
    (kl,) = [s for s in preset_spec("vae-gan").losses if s.name == "kl"]
    assert kl.weight == 2e-4 and not kl.options.get("group_weights")
    # built: the weights follow the time steps in order
    model = build_model(compose_spec(preset="crvae", sets=TINY))
    loss = model.losses["kl"]
    assert isinstance(loss, KLLoss) and loss.element_weights is not None
    w = loss.element_weights.view(8, 16)
    assert torch.equal(w, torch.tensor([3e-4] * 3 + [2e-4] * 5).view(8, 1).expand(8, 16))


# -- weight over training: beta, linear and cyclical warm-up --------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "factors"),
    [
        ({"warmup": "none", "beta": 4.0}, {0: 4.0, 7: 4.0, None: 4.0}),
        ({"warmup": "linear", "warmup_steps": 10, "beta": 2.0}, {0: 0.0, 5: 1.0, 10: 2.0, 25: 2.0, None: 2.0}),
        (
            {"warmup": "cyclical", "warmup_steps": 10, "cycle_ratio": 0.5},
            {0: 0.0, 2: 0.4, 5: 1.0, 9: 1.0, 10: 0.0, 12: 0.4, 17: 1.0, None: 1.0},
        ),
    ],
)
def test_beta_and_warmup_factor_by_hand(options, factors):
    from genvae.plugins.kl import KLOptions

    o = KLOptions(**options)
    assert {s: o.factor(s) for s in factors} == pytest.approx(factors)


def test_the_term_follows_the_pass_step():
    sets = [
        *TINY,
        "loss.kl.warmup=linear",
        "loss.kl.warmup_steps=4",
        "loss.kl.beta=3",
        f"loss.kl.group_weights={[1.0] * 8}",
    ]
    model = build_model(compose_spec(preset="crvae", sets=sets))
    loss = model.losses["kl"]
    fwd = posterior_pass(model, torch.full((2, 8, 4, 4), 0.5), torch.zeros(2, 8, 4, 4))
    full = loss(fwd, "model")["kl"]  # step None: outside training, the final weight
    assert full.item() == pytest.approx(3 * 128 * 0.5 * 0.25)  # beta * elements * 0.5 m^2, weights 1
    for step, factor in ((0, 0.0), (1, 0.25), (3, 0.75), (4, 1.0), (100, 1.0)):
        fwd.step = step
        assert loss(fwd, "model")["kl"].item() == pytest.approx(factor * full.item())


def test_cycle_ratio_outside_0_1_is_refused():
    from genvae.core.errors import OptionsError

    with pytest.raises(OptionsError, match="cycle_ratio must lie in \\(0, 1\\], got 0.0"):
        build_model(compose_spec(preset="crvae", sets=[*TINY, "loss.kl.cycle_ratio=0"]))


def test_a_warmup_run_from_the_cli_logs_the_kl_rising_from_zero(tmp_path):
    import json

    from genvae.testing import invoke_cli

    sets = [
        "image_size=16",
        "encoder.width=8",
        "encoder.depth=2",
        "decoder.width=8",
        "decoder.depth=2",
        "transform.latent_channels=2",
        "loss.kl.warmup=linear",
        "loss.kl.warmup_steps=3",
    ]
    build = invoke_cli(["build", "--preset", "cvae", *[a for s in sets for a in ("--set", s)], "-o", tmp_path / "m"])
    assert build.exit_code == 0, build.output
    run = invoke_cli(["train", tmp_path / "m", "--max-steps", "5", "--batch-size", "8", "--log-every", "1", "--quiet"])
    assert run.exit_code == 0, run.output
    kl = [json.loads(line)["kl"] for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert kl[0] == 0.0 and all(k > 0 for k in kl[1:])  # factor 0, 1/3, 2/3, 1, 1
