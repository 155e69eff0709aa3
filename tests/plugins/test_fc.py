"""The ``fc`` plugin: MLP encoder/decoder, the fully-connected latent and the ``vae`` preset."""

from __future__ import annotations

import pytest
import torch

from genvae.core.compose import preset_spec
from genvae.core.errors import BuildError, OptionsError
from genvae.core.model import build_model
from genvae.core.spec import ModelSpec
from genvae.core.training.step import build_phases
from genvae.testing import check_component, random_images, tiny_spec

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


def small(image_size=16, **parts) -> ModelSpec:
    base = {
        "encoder": {"name": "fc", "options": {"hidden": [32, 16]}},
        "transform": {"name": "fc", "options": {"latent_dim": 4}},
        "decoder": {"name": "fc", "options": {"hidden": [16]}},
        "losses": ["mse", "kl"],
        "image_size": image_size,
    }
    base.update(parts)
    return ModelSpec.from_dict(base)


# -- conformance -----------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{"hidden": [32, 16]}, {"hidden": [16], "batch_norm": True, "activation": "elu"}])
def test_encoder_conformance(options):
    check_component("encoder", "fc", options)


@pytest.mark.parametrize("options", [{"latent_dim": 4}, {"latent_dim": 3, "output_shape": [8, 4, 4]}])
def test_transform_conformance(options):
    check_component("transform", "fc", options)


@pytest.mark.parametrize("options", [{"hidden": [16]}, {"hidden": [16, 8], "batch_norm": True}])
def test_decoder_conformance(options):
    check_component("decoder", "fc", options)


def test_conformance_spec_uses_fc_partners():
    spec = tiny_spec("encoder", "fc", {"hidden": [16]})
    assert (spec.transform.name, spec.decoder.name, spec.prior.name) == ("fc", "fc", "normal")
    assert [s.name for s in spec.losses] == ["mse", "kl"]


# -- mechanics ---------------------------------------------------------------------------------------


def test_encoder_output_shape_is_last_hidden_width():
    model = build_model(small())
    assert model.encoder.output_shape == (16,)
    x = random_images(model.spec)
    assert model.encoder(x).shape == (x.shape[0], 16)


def test_latent_output_shape_mirrors_encoder_features():
    model = build_model(small())
    assert model.transform.output_shape == model.encoder.output_shape == (16,)
    assert model.transform.layout.shape == (4,)
    assert model.transform.layout.num_groups == 1


def test_latent_mirrors_spatial_features_of_a_conv_encoder():
    # The VAE-GAN baseline: conv stack, fc latent, conv decoder.
    spec = small(
        encoder={"name": "conv", "options": {"width": 8, "depth": 2}},
        decoder={"name": "conv", "options": {"width": 8, "depth": 2}},
    )
    model = build_model(spec)
    assert model.encoder.output_shape == (16, 4, 4)
    assert model.transform.output_shape == (16, 4, 4)
    fwd = model(random_images(spec))
    assert fwd.u.shape[1:] == (16, 4, 4)
    assert fwd.x_hat.shape[1:] == (3, 16, 16)


def test_latent_explicit_output_shape():
    spec = small(transform={"name": "fc", "options": {"latent_dim": 4, "output_shape": [2, 4, 4]}})
    model = build_model(spec)
    assert model.transform.output_shape == (2, 4, 4)
    assert model(random_images(spec)).u.shape[1:] == (2, 4, 4)


@pytest.mark.parametrize("shape", [[0], [4, -1]])
def test_latent_refuses_non_positive_output_shape(shape):
    spec = small(transform={"name": "fc", "options": {"output_shape": shape}})
    with pytest.raises(BuildError) as info:
        build_model(spec)
    message = str(info.value)
    assert "\n" not in message
    assert "latent transform 'fc': output_shape" in message and "must be positive" in message


def test_posterior_is_split_into_mean_and_logvar():
    model = build_model(small())
    features = torch.randn(5, 16)
    posterior = model.transform.posterior(features)
    params = model.transform.to_params(features)
    assert torch.equal(posterior.mean, params[:, :4])
    assert torch.equal(posterior.logvar, params[:, 4:])


def test_decoder_flattens_any_input_shape():
    # fc decoder after a spatial latent: u (C, H, W) is flattened.
    spec = small(
        encoder={"name": "conv", "options": {"width": 8, "depth": 2}},
        transform={"name": "conv", "options": {"latent_channels": 2}},
    )
    model = build_model(spec)
    assert model.decoder.net[0][0].in_features == 16 * 4 * 4
    assert model.reconstruct(random_images(spec)).shape == (4, 3, 16, 16)


def test_decoder_uses_reversed_hidden_widths():
    spec = small(decoder={"name": "fc", "options": {"hidden": [32, 8]}})
    model = build_model(spec)
    linears = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 8), (8, 32), (32, 3 * 16 * 16)]


def test_one_channel_images():
    spec = small(channels=1)
    model = build_model(spec)
    assert model.sample(3).shape == (3, 1, 16, 16)


@pytest.mark.parametrize(
    "options, word",
    [
        ({"hidden": []}, "hidden"),
        ({"hidden": [8, 0]}, "hidden"),
        ({"activation": "gelu"}, "activation"),
        ({"widths": [8]}, "widths"),
    ],
)
def test_bad_options_are_one_line(options, word):
    spec = small(encoder={"name": "fc", "options": options})
    with pytest.raises(OptionsError) as info:
        build_model(spec)
    message = str(info.value)
    assert "\n" not in message and "encoder 'fc'" in message and word in message


def test_options_from_the_command_line_are_converted():
    spec = small(
        encoder={"name": "fc", "options": {"hidden": "24,12", "batch_norm": "true"}},
        transform={"name": "fc", "options": {"latent_dim": 6.0}},
    )
    model = build_model(spec)
    assert model.encoder.options.hidden == (24, 12)
    assert model.encoder.options.batch_norm is True
    assert model.transform.layout.shape == (6,)


# -- the vae preset -------------------------------------------------------------------------------------


def _train_steps(spec: ModelSpec, steps: int, batch: int = 8) -> list[float]:
    torch.manual_seed(0)
    model = build_model(spec)
    phases = build_phases(model, spec.train, torch.device("cpu"))
    x = random_images(spec, batch=batch)
    losses = []
    model.train()
    for _ in range(steps):
        fwd = model(x)
        for i, phase in enumerate(phases):
            terms = model.phase_terms(fwd, phase.name)
            total = sum(terms.values(), torch.zeros(()))
            phase.optimizer.zero_grad(set_to_none=True)
            total.backward(retain_graph=i < len(phases) - 1)
            phase.optimizer.step()
            if phase.name == "model":
                losses.append(total.item())
    return losses


def test_vae_preset_builds_and_trains():
    spec = preset_spec("vae")
    assert spec.preset == "vae"
    assert (spec.encoder.name, spec.transform.name, spec.decoder.name, spec.prior.name) == ("fc", "fc", "fc", "normal")
    assert [s.name for s in spec.losses] == ["mse", "kl"]
    losses = _train_steps(spec, 30)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0], losses
