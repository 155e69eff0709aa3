"""Build-time composition checks: every refusal is one line naming the components involved."""

from __future__ import annotations

import pytest
from helpers import registry_with_module

from genvae.core.errors import BuildError, GenvaeError, OptionsError, UnknownNameError
from genvae.core.model import build_model
from genvae.core.spec import ModelSpec
from genvae.testing import random_images

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)

CORE_PLUGINS = [f"genvae.plugins.{n}" for n in ("fc", "conv", "normal", "mse", "bce", "gaussian", "kl")]

PLUGIN = '''
import torch
from torch import nn

from genvae.core.components import Decoder, Encoder, Gaussian, LatentLayout, LatentTransform, Loss
from genvae.core.hookspecs import hookimpl


class NeedsDisc(Loss):
    """Needs a discriminator that another loss provides."""
    name = "needs-disc"
    requires = frozenset({"discriminator"})

    def forward(self, fwd, phase):
        return {"needs-disc": fwd.x_hat.pow(2).mean()}


class FakeAdv(Loss):
    """Provides a discriminator, trained in its own phase before the model's."""
    name = "fake-adv"
    role = "adversarial"
    provides = frozenset({"discriminator"})
    phases = ("model", "discriminator")
    phase_order = ("discriminator", "model")

    def __init__(self, options, ctx, weight=1.0):
        super().__init__(options, ctx, weight)
        self.disc = nn.Linear(3 * 16 * 16, 1)

    def owned_modules(self):
        return {"discriminator": self.disc}

    def forward(self, fwd, phase):
        if phase == "discriminator":
            return {"d": self.disc(fwd.x_hat.detach().flatten(1)).mean()}
        return {"g": -self.disc(fwd.x_hat.flatten(1)).mean()}


class Greedy(Loss):
    """Claims modules in the model phase."""
    name = "greedy"

    def __init__(self, options, ctx, weight=1.0):
        super().__init__(options, ctx, weight)
        self.extra = nn.Linear(2, 2)

    def owned_modules(self):
        return {"model": self.extra}

    def forward(self, fwd, phase):
        return {"greedy": fwd.x_hat.mean()}


class Crashing(Loss):
    """Fails on the dry run."""
    name = "crashing"

    def forward(self, fwd, phase):
        raise RuntimeError("shapes [2, 3] and [4] do not broadcast\\nmore detail")


class Liar(Encoder):
    """Declares features it does not produce."""
    name = "liar"

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        self.net = nn.Linear(3 * 16 * 16, 12)
        self.output_shape = (10,)

    def forward(self, x, fwd=None):
        return self.net(x.flatten(1))


class BadLatent(LatentTransform):
    """Declares a latent of 4 but its posterior has 5."""
    name = "bad-latent"

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        self.layout = LatentLayout((4,))
        self.output_shape = (8,)
        self.to_params = nn.Linear(ctx.encoder.output_shape[0], 10)
        self.from_z = nn.Linear(4, 8)

    def posterior(self, features, fwd=None):
        mean, logvar = self.to_params(features).chunk(2, dim=1)
        return Gaussian(mean, logvar)

    def generate(self, z, fwd=None):
        return self.from_z(z)


class ShortU(BadLatent):
    """Declares u of 8 values but generates 6."""
    name = "short-u"

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        self.to_params = nn.Linear(ctx.encoder.output_shape[0], 8)

    def generate(self, z, fwd=None):
        return self.from_z(z)[:, :6]


class SmallDecoder(Decoder):
    """Produces 8 x 8 images whatever the model's size."""
    name = "small"

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        self.net = nn.Linear(int(torch.tensor(ctx.transform.output_shape).prod()), 3 * 8 * 8)

    def forward(self, u, fwd=None):
        return self.net(u.flatten(1)).view(-1, 3, 8, 8)


@hookimpl
def genvae_register_encoders(register):
    register(Liar)


@hookimpl
def genvae_register_transforms(register):
    register(BadLatent)
    register(ShortU)


@hookimpl
def genvae_register_decoders(register):
    register(SmallDecoder)


@hookimpl
def genvae_register_losses(register):
    for cls in (NeedsDisc, FakeAdv, Greedy, Crashing):
        register(cls)
'''


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """The engine's built-ins plus a test plugin module written to a temporary folder."""
    folder = tmp_path_factory.mktemp("plugins")
    with registry_with_module(folder, "genvae_test_build_plugin", PLUGIN, CORE_PLUGINS) as registry:
        yield registry


def spec(**parts) -> ModelSpec:
    data = {
        "encoder": {"name": "fc", "options": {"hidden": [16]}},
        "transform": {"name": "fc", "options": {"latent_dim": 4}},
        "decoder": {"name": "fc", "options": {"hidden": [16]}},
        "losses": ["mse", "kl"],
        "image_size": 16,
    }
    data.update(parts)
    return ModelSpec.from_dict(data)


def refusal(s: ModelSpec, registry=None, error=BuildError) -> str:
    with pytest.raises(error) as info:
        build_model(s, registry)
    message = str(info.value)
    assert "\n" not in message, message
    return message


CONV = {"width": 8, "depth": 2}


# -- shapes between neighbours ------------------------------------------------------------------------------


def test_fc_encoder_with_conv_transform():
    message = refusal(spec(transform="conv"))
    assert "encoder 'fc'" in message and "latent transform 'conv'" in message


def test_conv_transform_needs_a_conv_encoder_and_then_builds():
    build_model(spec(encoder={"name": "conv", "options": CONV}, transform="conv"))


def test_fc_transform_with_conv_decoder():
    message = refusal(spec(decoder={"name": "conv", "options": CONV}))
    assert "latent transform 'fc'" in message and "decoder 'conv'" in message


def test_conv_encoder_depth_against_image_size():
    message = refusal(spec(encoder={"name": "conv", "options": {"depth": 5}}))
    assert message.startswith("encoder 'conv': image size 16x16 is not divisible by 2^depth = 32")


def test_encoder_features_differ_from_its_declaration(registry):
    message = refusal(spec(encoder="liar"), registry)
    assert message == "encoder 'liar' declares features [10] but produces [12]"


def test_posterior_differs_from_the_declared_latent(registry):
    message = refusal(spec(transform="bad-latent"), registry)
    assert "latent transform 'bad-latent' declares latent [4] but its posterior has shape [5]" == message


def test_decoder_produces_the_wrong_image_size(registry):
    message = refusal(spec(decoder="small"), registry)
    assert message == "decoder 'small' produces images of shape [3, 8, 8], the model's images are [3, 16, 16]"


def test_transform_output_differs_from_its_declaration(registry):
    message = refusal(spec(transform="short-u"), registry)
    assert message == "latent transform 'short-u' declares output [8] but generates [6]"


def test_loss_failing_on_the_dry_run(registry):
    message = refusal(spec(losses=["mse", "kl", "crashing"]), registry)
    assert message.startswith("incompatible composition at loss 'crashing' (model phase)")
    assert message.endswith("shapes [2, 3] and [4] do not broadcast")


# -- losses --------------------------------------------------------------------------------------------------


def test_duplicate_loss():
    message = refusal(spec(losses=["mse", "kl", {"name": "mse", "weight": 2}]))
    assert message == "loss 'mse' is listed twice; give each loss once, with one weight"


def test_no_loss():
    assert "at least one loss" in refusal(spec(losses=[]))


def test_missing_capability_names_the_loss_and_the_capability(registry):
    message = refusal(spec(losses=["mse", "kl", "needs-disc"]), registry)
    assert message.startswith("loss 'needs-disc' requires 'discriminator'")
    assert "add loss 'fake-adv'" in message


def test_provided_capability_builds_and_orders_phases(registry):
    model = build_model(spec(losses=["mse", "kl", "fake-adv", "needs-disc"]), registry)
    assert model.phases == ["discriminator", "model"]
    owned = model.phase_modules()
    assert list(owned) == ["discriminator"] and owned["discriminator"][0] is model.losses["fake-adv"].disc
    fwd = model(random_images(model.spec))
    assert set(model.phase_terms(fwd, "discriminator")) == {"fake-adv.d"}
    assert set(model.phase_terms(fwd, "model")) == {"mse", "kl", "fake-adv.g", "needs-disc"}


def test_loss_cannot_own_modules_in_the_model_phase(registry):
    message = refusal(spec(losses=["mse", "kl", "greedy"]), registry)
    assert "loss 'greedy' cannot own modules in the 'model' phase" == message


# -- names and options ---------------------------------------------------------------------------------------


def test_unknown_component():
    message = refusal(spec(decoder="deconv"), error=UnknownNameError)
    assert message.startswith("unknown decoder 'deconv'")


def test_unknown_option_lists_the_known_ones():
    message = refusal(spec(transform={"name": "fc", "options": {"latent": 4}}), error=OptionsError)
    assert message.startswith(
        "unknown option 'latent' for latent transform 'fc'; did you mean 'latent_dim'? known options: latent_dim"
    )


def test_invalid_option_value():
    message = refusal(spec(transform={"name": "fc", "options": {"latent_dim": 0}}), error=OptionsError)
    assert message == "latent transform 'fc' option 'latent_dim': expected a positive integer, got 0"


def test_every_refusal_is_a_genvae_error(registry):
    for s in (spec(transform="conv"), spec(losses=[]), spec(decoder="small"), spec(encoder="nope")):
        with pytest.raises(GenvaeError):
            build_model(s, registry)


def test_unchecked_build_skips_the_dry_run(registry):
    model = build_model(spec(decoder="small"), registry, check=False)
    assert model.decoder.name == "small"


def test_resolved_spec_makes_every_option_explicit():
    model = build_model(spec())
    resolved = model.resolved_spec()
    assert resolved.encoder.options == {"hidden": [16], "activation": "relu", "batch_norm": False}
    assert resolved.losses[1].name == "kl" and "group_weights" in resolved.losses[1].options
    assert build_model(resolved).resolved_spec() == resolved


def test_phase_order_does_not_depend_on_the_order_of_losses():
    import attrs

    from genvae.core.compose import preset_spec
    from genvae.core.model import build_model

    spec = preset_spec("crvae-gan-small")
    assert [s.name for s in spec.losses][-2:] == ["adv", "mi"]
    swapped = attrs.evolve(spec, losses=(*spec.losses[:-2], spec.losses[-1], spec.losses[-2]))
    a, b = build_model(spec, check=False), build_model(swapped, check=False)
    assert list(b.losses)[-2:] == ["mi", "adv"]
    assert a.phases == b.phases == ["discriminator", "mi", "model"]


def test_a_loss_term_that_is_not_a_scalar_is_refused_at_build_time():
    """Without this check a vector term passes build and fails in training with "grad can be implicitly
    created only for scalar outputs"."""
    import torch

    from genvae.core.components import Loss
    from genvae.core.errors import BuildError
    from genvae.core.model import build_model
    from genvae.testing import plugin_registry, tiny_spec

    class PerImageLoss(Loss):
        """Forgets the batch mean: one value per image."""

        name = "per-image"

        def forward(self, fwd, phase):
            return {"l1": (fwd.x_hat - fwd.x).abs().flatten(1).mean(1)}

    class IntegerLoss(PerImageLoss):
        """Counts instead of measuring."""

        name = "integer"

        def forward(self, fwd, phase):
            return {"n": torch.tensor(3)}

    class Plugin:
        from genvae.core.hookspecs import hookimpl

        @hookimpl
        def genvae_register_losses(self, register):
            register(PerImageLoss)
            register(IntegerLoss)

    registry = plugin_registry(Plugin())
    for name, got in (("per-image", "got shape [2], torch.float32"), ("integer", "got shape [], torch.int64")):
        spec = tiny_spec("loss", name, registry=registry)
        with pytest.raises(BuildError) as info:
            build_model(spec, registry)
        assert str(info.value) == (
            f"loss '{name}' (model phase): term '{'l1' if name == 'per-image' else 'n'}' "
            f"must be a 0-dim floating tensor (a scalar to minimise), {got}"
        )
