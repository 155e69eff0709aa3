"""From command-line choices to a spec: counterparts, default losses, ``name:weight``, unknown names."""

from __future__ import annotations

import pytest

from genvae.core.compose import compose_spec, parse_losses, preset_spec
from genvae.core.errors import GenvaeError, OptionsError, UnknownNameError
from genvae.core.model import build_model
from genvae.core.spec import ComponentSpec, LossSpec

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


def names(spec) -> tuple:
    return (spec.encoder.name, spec.transform.name, spec.decoder.name, spec.prior.name)


def loss_list(spec) -> list:
    return [(s.name, s.weight) for s in spec.losses]


# -- --encoder alone ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["fc", "conv"])
def test_encoder_alone_brings_its_counterparts_and_default_losses(encoder):
    spec = compose_spec(encoder=encoder)
    assert names(spec) == (encoder, encoder, encoder, "normal")
    assert loss_list(spec) == [("mse", 1.0), ("kl", 1.0)]
    assert spec.preset is None
    assert all(spec.component(k).options == {} for k in ("encoder", "transform", "decoder", "prior"))


def test_encoder_with_a_named_transform_keeps_the_counterpart_decoder():
    spec = compose_spec(encoder="conv", transform="fc")
    assert names(spec) == ("conv", "fc", "conv", "normal")


def test_named_decoder_and_prior_win():
    spec = compose_spec(encoder="conv", decoder="fc", prior="normal")
    assert names(spec) == ("conv", "conv", "fc", "normal")


def test_composed_specs_build():
    spec = compose_spec(
        encoder="conv", image_size=16, sets=["encoder.width=8", "encoder.depth=2", "decoder.width=8", "decoder.depth=2"]
    )
    model = build_model(spec)
    assert model.layout.shape == (16, 4, 4)
    assert list(model.losses) == ["mse", "kl"]


# -- losses ------------------------------------------------------------------------------------------------


def test_a_reconstruction_loss_replaces_the_default_one():
    assert loss_list(compose_spec(encoder="fc", losses="bce")) == [("bce", 1.0), ("kl", 1.0)]
    assert loss_list(compose_spec(encoder="fc", losses="gaussian")) == [("gaussian", 1.0), ("kl", 1.0)]


def test_a_divergence_replaces_the_default_one():
    assert loss_list(compose_spec(encoder="fc", losses="kl:0.5")) == [("mse", 1.0), ("kl", 0.5)]


def test_name_and_weight():
    spec = compose_spec(encoder="fc", losses="bce:2,kl:0.1")
    assert loss_list(spec) == [("bce", 2.0), ("kl", 0.1)]
    assert loss_list(compose_spec(encoder="fc", losses=["mse:3", "kl"])) == [("mse", 3.0), ("kl", 1.0)]


def test_parse_losses():
    assert parse_losses(None) == []
    assert parse_losses("") == []
    assert parse_losses(" mse , kl:0.5 ,") == [LossSpec("mse"), LossSpec("kl", 0.5)]
    assert parse_losses(["mse,kl:1e-2", "adv:0.01"]) == [LossSpec("mse"), LossSpec("kl", 0.01), LossSpec("adv", 0.01)]


@pytest.mark.parametrize("text", ["kl:heavy", "kl:", "mse:1:2"])
def test_bad_weight(text):
    if text == "kl:":  # an empty weight means the default
        assert parse_losses(text) == [LossSpec("kl")]
        return
    with pytest.raises(OptionsError) as info:
        parse_losses(text)
    message = str(info.value)
    assert "\n" not in message and f"loss '{text}'" in message and "kl:0.5" in message


def test_preset_losses_are_kept_and_reweighted():
    spec = compose_spec(preset="vae", losses="kl:0.5")
    assert loss_list(spec) == [("mse", 1.0), ("kl", 0.5)]
    spec = compose_spec(preset="vae", losses="bce")
    assert loss_list(spec) == [("bce", 1.0), ("kl", 1.0)]  # a named reconstruction replaces the preset's
    spec = compose_spec(preset="vae", losses="gaussian,kl:0.5")
    assert loss_list(spec) == [("gaussian", 1.0), ("kl", 0.5)]


# -- presets -------------------------------------------------------------------------------------------------


def test_preset_alone_is_the_preset():
    assert compose_spec(preset="cvae") == preset_spec("cvae")


def test_preset_with_another_encoder_takes_its_counterparts():
    spec = compose_spec(preset="vae", encoder="conv")
    assert names(spec) == ("conv", "conv", "conv", "normal")
    assert spec.encoder == ComponentSpec("conv")  # the preset's fc options do not carry over
    assert spec.preset == "vae"
    assert spec.train == preset_spec("vae").train


def test_description_names_what_replaced_the_presets_components():
    base = preset_spec("cvae-vamp").description
    assert compose_spec(preset="cvae-vamp").description == base  # nothing changed, nothing added
    assert compose_spec(preset="cvae-vamp", sets=["transform.latent_dim=8"]).description == base  # options only
    changed = compose_spec(preset="cvae-vamp", prior="normal", losses="bce").description
    assert changed == f"{base} (changed from preset 'cvae-vamp': prior normal; losses bce,kl)"
    assert compose_spec(preset="cvae-vamp", prior="vamp").description == base  # the preset's own choice


def test_preset_keeps_its_options_for_the_same_encoder():
    spec = compose_spec(preset="cvae", encoder="conv")
    assert spec.encoder == preset_spec("cvae").encoder
    assert spec.transform == preset_spec("cvae").transform


def test_image_size_channels_and_sets():
    spec = compose_spec(preset="vae", image_size=16, channels=1, sets=["transform.latent_dim=8", "train.lr=0.01"])
    assert (spec.image_size, spec.channels) == (16, 1)
    assert spec.transform.options["latent_dim"] == 8
    assert spec.train.lr == 0.01


def test_bad_channels():
    with pytest.raises(OptionsError, match="--channels must be 1 or 3, got 2"):
        compose_spec(encoder="fc", channels=2)


def test_nothing_chosen():
    with pytest.raises(GenvaeError, match="--preset NAME or --encoder NAME"):
        compose_spec()


# -- unknown names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, start, suggestion",
    [
        ({"encoder": "fcc"}, "unknown encoder 'fcc'", "fc"),
        ({"encoder": "fc", "transform": "con"}, "unknown latent transform 'con'", "conv"),
        ({"encoder": "fc", "decoder": "vonc"}, "unknown decoder 'vonc'", None),
        ({"encoder": "fc", "prior": "norml"}, "unknown prior 'norml'", "normal"),
        ({"encoder": "fc", "losses": "mse,kll"}, "unknown loss 'kll'", "kl"),
        ({"preset": "vea"}, "unknown preset 'vea'", "vae"),
    ],
)
def test_unknown_names_list_the_known_ones(kwargs, start, suggestion):
    with pytest.raises(UnknownNameError) as info:
        compose_spec(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(start)
    assert "known: " in message
    listing = message.split("known: ", 1)[1].split("; ", 1)[0]
    shown, _, rest = listing.partition(" and ")
    names = shown.split(", ")
    # every known name is listed, in order, or counted in "and N more" (long lists are cut: core/errors.name_list)
    assert names == list(info.value.known)[: len(names)]
    assert rest == ("" if len(names) == len(info.value.known) else f"{len(info.value.known) - len(names)} more")
    if suggestion:
        assert f"did you mean '{suggestion}'?" in message
