"""The engine's declared contracts: typed capabilities checked at build time, decoder output spaces, the skip
rule, references kept out of the module tree, and the typed ForwardPass fields the paper plugins exchange."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genvae.api import BuildError, Decoder, Loss, build_model, hookimpl
from genvae.core.capabilities import (
    DISCRIMINATOR,
    MI_TARGET,
    PYRAMID,
    Capability,
    DiscriminatorTrunk,
    PyramidDecoder,
    protocol_members,
)
from genvae.core.components import OUTPUT_SPACES
from genvae.core.spec import ComponentSpec, LossSpec, ModelSpec
from genvae.testing import plugin_registry, random_images

SMALL_CONV = {"width": 8, "depth": 2, "max_width": 16}


class HalfTrunk(Loss):
    """Provides the discriminator capability but has no fake_features: its protocol is not met."""

    name = "half-trunk"
    provides = frozenset({DISCRIMINATOR})

    def __init__(self, options, ctx, weight=1.0):
        super().__init__(options, ctx, weight)
        self.trunk = nn.Identity()
        self.trunk_shape = (3, 16, 16)

    def forward(self, fwd, phase):
        return {}


class BernoulliDecoder(Decoder):
    """A conv-shaped decoder whose output are Bernoulli logits."""

    name = "bernoulli-out"
    output = "bernoulli"

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        c_in, _ = self.upsampling_plan(ctx)
        self.net = nn.Sequential(nn.Upsample(scale_factor=4), nn.Conv2d(c_in, ctx.image_shape[0], 1))

    def forward(self, u, fwd=None):
        return self.net(u)


class ImageDecoder(BernoulliDecoder):
    """Outputs the image itself."""

    name = "image-out"
    output = "image"

    def forward(self, u, fwd=None):
        return torch.tanh(self.net(u))


class OddDecoder(BernoulliDecoder):
    """Declares an output space that does not exist."""

    name = "odd-out"
    output = "sigmoid"


class SilentSkipper(Loss):
    """Returns a skip flag without declaring may_skip."""

    name = "silent-skipper"

    def forward(self, fwd, phase):
        return {"zero": fwd.x_hat.sum() * 0.0, Loss.SKIP: torch.tensor(True)}


class Referrer(Loss):
    """Keeps a reference to the decoder with Component.refer."""

    name = "referrer"

    def attach(self, model):
        self.refer("_decoder", model.decoder)

    def forward(self, fwd, phase):
        return {"zero": fwd.x_hat.sum() * 0.0}


class Plugin:
    @hookimpl
    def genvae_register_decoders(self, register):
        register(BernoulliDecoder)
        register(ImageDecoder)
        register(OddDecoder)

    @hookimpl
    def genvae_register_losses(self, register):
        register(HalfTrunk)
        register(SilentSkipper)
        register(Referrer)


@pytest.fixture(scope="module")
def registry():
    return plugin_registry(Plugin())


def spec(decoder="conv", losses=("mse", "kl")) -> ModelSpec:
    return ModelSpec(
        encoder=ComponentSpec("conv", SMALL_CONV),
        transform=ComponentSpec("conv", {"latent_channels": 2}),
        decoder=ComponentSpec(decoder, SMALL_CONV if decoder == "conv" else {}),
        losses=tuple(LossSpec(n) for n in losses),
        image_size=16,
        channels=3,
        train={"batch_size": 4},
    )


# -- capabilities ---------------------------------------------------------------------------------------------


def test_a_capability_is_its_name_and_knows_its_protocols():
    assert DISCRIMINATOR == "discriminator" and PYRAMID == "pyramid" and MI_TARGET == "mi-target"
    assert DISCRIMINATOR.protocols == {"loss": DiscriminatorTrunk}
    assert protocol_members(DiscriminatorTrunk) == [
        "trunk",
        "trunk_shape",
        "trunk_layers",
        "fake_features",
        "layer_features",
        "discriminate",
    ]
    assert protocol_members(PyramidDecoder) == ["num_levels", "levels", "decode_level"]
    custom = Capability("my-cap", "a test capability")
    assert custom == "my-cap" and custom.missing_members(object()) == []


def test_a_provider_without_its_protocols_members_is_refused_at_build(registry):
    with pytest.raises(BuildError) as exc:
        build_model(spec(losses=("mse", "kl", "half-trunk")), registry)
    assert str(exc.value) == (
        "loss 'half-trunk' provides 'discriminator' but lacks trunk_layers, fake_features, "
        "layer_features, discriminate of its protocol (DiscriminatorTrunk)"
    )


def test_the_built_in_providers_meet_their_protocols():
    from genvae.core.compose import preset_spec

    model = build_model(preset_spec("lapcvae-small"), check=False)
    for part in (model.encoder, model.transform, model.decoder):
        assert PYRAMID in part.provides and PYRAMID.missing_members(part) == []
        assert isinstance(part, PYRAMID.protocols[part.kind])
    gan = build_model(
        ModelSpec.from_dict(
            {
                "image_size": 16,
                "channels": 1,
                "encoder": {"name": "cr-lstm", "options": {"width": 4, "max_width": 16}},
                "transform": {"name": "cr-lstm", "options": {"latent_channels": 8, "steps": 4, "hidden": 8}},
                "decoder": {"name": "cr-lstm", "options": {"width": 4, "max_width": 16}},
                "losses": [
                    {"name": "mse"},
                    {"name": "kl"},
                    {"name": "adv", "options": {"widths": [4, 8], "head_hidden": 8, "minibatch_kernels": 2}},
                    {"name": "mi", "options": {"hidden": 4}},
                ],
            }
        )
    )
    assert isinstance(gan.losses["adv"], DiscriminatorTrunk) and MI_TARGET in gan.transform.provides
    assert gan.losses["mi"]._mode == "transform"  # auto: the transform provides mi-target


def test_adv_and_mi_share_the_fake_features_through_the_typed_pass_field():
    from genvae.core.compose import apply_sets, preset_spec

    s = apply_sets(preset_spec("crvae-gan-small"), ["image_size=16", "loss.adv.dropout=0"])
    model = build_model(s, check=False)
    model.train()
    fwd = model(torch.rand(4, 1, 16, 16) * 2 - 1)
    assert fwd.fake_features is None and fwd.extras == {}
    model.phase_terms(fwd, "model")
    assert fwd.fake_features is not None and fwd.fake_features.update == 0
    assert set(fwd.fake_features.by_branch) == {"recon", "prior"}
    assert fwd.extras == {}  # nothing the paper plugins exchange goes through string keys


# -- decoder output spaces ------------------------------------------------------------------------------------


def test_each_output_space_maps_the_decoders_output_to_x_hat():
    a = torch.tensor([-3.0, -0.5, 0.0, 2.0])
    assert torch.allclose(OUTPUT_SPACES["tanh"](a), torch.tanh(a))
    assert torch.allclose(OUTPUT_SPACES["bernoulli"](a), 2 * torch.sigmoid(a) - 1, atol=1e-7)
    assert OUTPUT_SPACES["image"](a) is a


def test_the_model_applies_the_decoders_declared_space(registry):
    for name, to_image in (("bernoulli-out", lambda o: 2 * torch.sigmoid(o) - 1), ("image-out", lambda o: o)):
        model = build_model(spec(decoder=name, losses=("mse", "kl")), registry)
        model.eval()
        fwd = model(random_images(model.spec), sample=False)
        assert torch.allclose(fwd.x_hat, to_image(fwd.decoder_output), atol=1e-6)
        assert torch.allclose(model.generate(fwd.z)[1], fwd.x_hat, atol=1e-6)


def test_bce_reads_logits_in_the_decoders_space(registry):
    import torch.nn.functional as F

    for name, scale in (("conv", 2.0), ("bernoulli-out", 1.0)):
        model = build_model(spec(decoder=name, losses=("bce", "kl")), registry)
        fwd = model(random_images(model.spec))
        target = (fwd.x + 1) / 2
        expect = F.binary_cross_entropy_with_logits(scale * fwd.decoder_output, target, reduction="none").flatten(1)
        assert torch.allclose(model.phase_terms(fwd, "model")["bce"], expect.sum(1).mean())
        # the Bernoulli mean the loss uses is the model's x_hat, mapped to [0, 1]
        assert torch.allclose(torch.sigmoid(scale * fwd.decoder_output), (fwd.x_hat + 1) / 2, atol=1e-6)


def test_bce_refuses_a_decoder_without_logits_at_build(registry):
    with pytest.raises(BuildError) as exc:
        build_model(spec(decoder="image-out", losses=("bce", "kl")), registry)
    assert "loss 'bce': needs logits, but decoder 'image-out' outputs the 'image' space" in str(exc.value)


def test_an_unknown_output_space_is_refused(registry):
    with pytest.raises(BuildError, match="decoder 'odd-out' declares output space 'sigmoid'; known: tanh, bernoulli"):
        build_model(spec(decoder="odd-out"), registry)


# -- the skip rule, references --------------------------------------------------------------------------------


def test_a_skip_flag_needs_may_skip(registry):
    with pytest.raises(BuildError) as exc:
        build_model(spec(losses=("mse", "kl", "silent-skipper")), registry)
    assert "returns a skip flag 'skip_step' but does not declare may_skip = True" in str(exc.value)


def test_refer_keeps_a_reference_out_of_the_module_tree(registry):
    model = build_model(spec(losses=("mse", "kl", "referrer")), registry)
    parts: tuple[torch.nn.Module, ...] = (model.encoder, model.transform, model.decoder)
    loss = model.losses["referrer"]
    assert loss._decoder is model.decoder
    assert not any(k.startswith("losses.referrer.") for k in model.state_dict())
    assert list(loss.children()) == []
    n = sum(p.numel() for p in model.parameters())
    assert n == sum(p.numel() for m in parts for p in m.parameters())


def test_phase_order_is_declared_on_the_loss_base():
    assert Loss.phase_order == () and Loss.may_skip is False
    from genvae.plugins.adv import AdversarialLoss

    assert AdversarialLoss.phase_order == ("discriminator", "model") and AdversarialLoss.may_skip


# -- what the CLI shows about the contracts -----------------------------------------------------------------------


def test_list_plugins_shows_each_plugins_commands_and_describe_the_output_space():
    import json

    from genvae.testing import invoke_cli

    result = invoke_cli(["list-plugins", "--json"])
    assert result.exit_code == 0, result.output
    commands = {p["name"]: p["provides"].get("command") for p in json.loads(result.output)["plugins"]}
    assert commands["laplacian"] == ["edit", "train-levels"] and commands["neighbours"] == ["neighbours"]
    assert commands["cr-lstm"] == ["draw", "traverse"] and commands["fc"] is None
    lap = json.loads(invoke_cli(["describe", "decoder", "laplacian", "--json"]).output)
    assert lap["output"] == "image" and lap["provides"] == ["pyramid"]
    assert json.loads(invoke_cli(["describe", "decoder", "conv", "--json"]).output)["output"] == "tanh"
    adv = json.loads(invoke_cli(["describe", "loss", "adv", "--json"]).output)
    assert adv["may_skip"] is True and adv["phase_order"] == ["discriminator", "model"]
