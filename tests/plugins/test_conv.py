"""The ``conv`` plugin: strided conv encoder/decoder, the spatial latent and the ``cvae`` preset."""

from __future__ import annotations

import pytest
import torch
from helpers import one_line

from genvae.core.compose import preset_spec
from genvae.core.errors import BuildError, OptionsError
from genvae.core.model import build_model
from genvae.core.spec import ModelSpec
from genvae.core.training.step import build_phases
from genvae.testing import check_component, random_images, tiny_spec

SMALL = {"width": 8, "depth": 2, "max_width": 16}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


def small(image_size=16, **parts) -> ModelSpec:
    base = {
        "encoder": {"name": "conv", "options": dict(SMALL)},
        "transform": {"name": "conv", "options": {"latent_channels": 2}},
        "decoder": {"name": "conv", "options": dict(SMALL)},
        "losses": ["mse", "kl"],
        "image_size": image_size,
    }
    base.update(parts)
    return ModelSpec.from_dict(base)


def one_line_build_error(spec: ModelSpec) -> str:
    with pytest.raises(BuildError) as info:
        build_model(spec)
    return one_line(info)


# -- conformance -----------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [SMALL, {"width": 4, "depth": 3, "batch_norm": False, "activation": "relu"}])
def test_encoder_conformance(options):
    check_component("encoder", "conv", options)


@pytest.mark.parametrize("options", [{"latent_channels": 2}, {"latent_channels": 3, "kernel": 1}])
def test_transform_conformance(options):
    check_component("transform", "conv", options)


@pytest.mark.parametrize("options", [SMALL, {"width": 4, "batch_norm": False, "activation": "elu"}])
def test_decoder_conformance(options):
    check_component("decoder", "conv", options)


def test_conformance_spec_uses_conv_partners():
    spec = tiny_spec("encoder", "conv", SMALL)
    assert (spec.transform.name, spec.decoder.name) == ("conv", "conv")


# -- mechanics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, shape",
    [
        ({"width": 8, "depth": 2}, (16, 4, 4)),
        ({"width": 4, "depth": 3}, (16, 2, 2)),
        ({"width": 8, "depth": 3, "max_width": 16}, (16, 2, 2)),
        ({"width": 8, "depth": 1}, (8, 8, 8)),
    ],
)
def test_encoder_output_shape(options, shape):
    model = build_model(small(encoder={"name": "conv", "options": options}))
    assert model.encoder.output_shape == shape
    x = random_images(model.spec)
    assert model.encoder(x).shape == (x.shape[0], *shape)


def test_encoder_refuses_image_size_not_divisible_by_two_to_the_depth():
    message = one_line_build_error(small(image_size=20, encoder={"name": "conv", "options": {"depth": 3}}))
    assert message.startswith("encoder 'conv': ")
    assert "20x20" in message and "2^depth = 8" in message


def test_latent_layout_is_spatial_with_one_group():
    model = build_model(small(transform={"name": "conv", "options": {"latent_channels": 3}}))
    assert model.transform.layout.shape == (3, 4, 4)
    assert model.transform.layout.num_groups == 1
    assert model.transform.output_shape == model.encoder.output_shape == (16, 4, 4)


def test_latent_refuses_vector_features():
    spec = small(encoder={"name": "fc", "options": {"hidden": [16]}})
    message = one_line_build_error(spec)
    assert "latent transform 'conv'" in message and "encoder 'fc'" in message


def test_decoder_refuses_vector_input():
    spec = small(
        encoder={"name": "fc", "options": {"hidden": [16]}},
        transform={"name": "fc", "options": {"latent_dim": 4}},
    )
    message = one_line_build_error(spec)
    assert message.startswith("decoder 'conv': ")
    assert "latent transform 'fc'" in message and "[16]" in message


def test_decoder_refuses_sizes_it_cannot_reach_by_doubling():
    spec = small(transform={"name": "fc", "options": {"latent_dim": 4, "output_shape": [8, 3, 3]}})
    message = one_line_build_error(spec)
    assert "decoder 'conv'" in message and "3x3" in message and "16x16" in message


def test_decoder_counts_upsamplings_from_its_input():
    # u already has the image's size: no transposed convolution, only the output layer.
    spec = small(transform={"name": "fc", "options": {"latent_dim": 4, "output_shape": [4, 16, 16]}})
    model = build_model(spec)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.decoder.modules())
    # u at 2x2: three doublings to 16 px, whatever the decoder's depth option says.
    spec = small(transform={"name": "fc", "options": {"latent_dim": 4, "output_shape": [8, 2, 2]}})
    model = build_model(spec)
    ups = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(ups) == 3
    assert model(random_images(spec)).x_hat.shape == (4, 3, 16, 16)


def test_even_kernel_is_refused():
    spec = small(transform={"name": "conv", "options": {"kernel": 2}})
    with pytest.raises(OptionsError, match="kernel must be odd"):
        build_model(spec)


def test_one_channel_images():
    model = build_model(small(channels=1))
    assert model.encoder.net[0].in_channels == 1
    assert model.sample(2).shape == (2, 1, 16, 16)


# -- the cvae preset ------------------------------------------------------------------------------------


def test_cvae_preset_builds_and_trains():
    spec = preset_spec("cvae")
    assert (spec.encoder.name, spec.transform.name, spec.decoder.name) == ("conv", "conv", "conv")
    torch.manual_seed(0)
    model = build_model(spec)
    assert model.transform.layout.shape == (2, 4, 4)  # 32 latent values at 32 px
    phases = build_phases(model, spec.train, torch.device("cpu"))
    assert [p.name for p in phases] == ["model"]
    optimizer = phases[0].optimizer
    x = random_images(spec, batch=8)
    losses = []
    model.train()
    for _ in range(30):
        total = sum(model.phase_terms(model(x), "model").values(), torch.zeros(()))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0], losses
