"""Tests of the ``resnet`` plugin: genvae's conformance kit plus a few checks of our own.

Run from this folder with ``pytest``. When the package is installed (``pip install -e .``), the
components come from the registry genvae builds from entry points; otherwise the module is
loaded as a plugin directly with ``genvae.testing.plugin_registry``.
"""

from __future__ import annotations

from pathlib import Path

import genvae_plugin_example as plugin
import pytest
import torch

from genvae.api import BuildError, ModelSpec, OptionsError, build_model, get_registry, preset_spec
from genvae.testing import check_component, check_shapes, plugin_registry, tiny_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def registry():
    reg = get_registry()
    record = reg.plugins.get("resnet")
    if record is not None and record.status == "loaded" and record.module == plugin.__name__:
        return reg  # installed: found through the entry point
    return plugin_registry(plugin)


def _spec(**fields) -> ModelSpec:
    base = {
        "image_size": 16,
        "encoder": {"name": "resnet", "options": {"width": 8, "stages": 2}},
        "transform": {"name": "conv", "options": {"latent_channels": 2}},
        "decoder": {"name": "resnet", "options": {"width": 8}},
        "losses": ["mse", "kl"],
    }
    return ModelSpec.from_dict({**base, **fields})


# -- the conformance kit ---------------------------------------------------------------------------


def test_encoder_conformance(registry):
    spec = check_component("encoder", "resnet", {"width": 8, "stages": 2, "blocks_per_stage": 1}, registry=registry)
    assert spec.transform.name == "conv" and spec.decoder.name == "resnet"  # its counterparts


def test_decoder_conformance(registry):
    check_component("decoder", "resnet", {"width": 8, "blocks_per_stage": 1}, registry=registry)


def test_decoder_with_explicit_stages_and_no_blocks(registry):
    spec = tiny_spec("decoder", "resnet", {"width": 8, "stages": 2, "blocks_per_stage": 0}, registry=registry)
    check_shapes("decoder", "resnet", spec=spec, registry=registry)


# -- our own checks ------------------------------------------------------------------------------


def test_entry_point_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["name"] == "genvae-plugin-example"
    assert project["project"]["entry-points"]["genvae"] == {"resnet": "genvae_plugin_example"}


def test_registered_components_and_preset(registry):
    assert registry.component("encoder", "resnet") is plugin.ResNetEncoder
    assert registry.component("decoder", "resnet") is plugin.ResNetDecoder
    assert plugin.ResNetEncoder.counterparts == {"decoder": "resnet", "transform": "conv"}
    entry = registry.get("preset", "resnet-vae")
    assert entry.help and entry.obj["encoder"]["name"] == "resnet"


def test_preset_shapes_at_32_px(registry):
    spec = preset_spec("resnet-vae", registry)
    assert spec.image_shape == (3, 32, 32)
    torch.manual_seed(0)
    model = build_model(spec, registry)
    assert model.encoder.output_shape == (128, 4, 4)  # width 32 doubled twice, 32 / 2^3
    assert model.layout.shape == (4, 4, 4)
    assert model.decoder.upsampling_stages == 3
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    fwd = model(x)
    assert fwd.features.shape == (2, 128, 4, 4)
    assert fwd.u.shape == (2, 128, 4, 4)
    assert fwd.decoder_output.shape == fwd.x_hat.shape == (2, 3, 32, 32)
    terms = model.phase_terms(fwd, "model")
    assert set(terms) == {"mse", "kl"} and all(torch.isfinite(v) for v in terms.values())


def test_blocks_per_stage(registry):
    model = build_model(
        _spec(encoder={"name": "resnet", "options": {"width": 8, "stages": 2, "blocks_per_stage": 3}}), registry
    )
    blocks = [m for m in model.encoder.modules() if isinstance(m, plugin.ResidualBlock)]
    assert len(blocks) == 2 * 3
    assert [b.body[0].in_channels for b in blocks] == [8, 8, 8, 16, 16, 16]
    assert sum(isinstance(m, plugin.ResidualBlock) for m in model.decoder.modules()) == 2  # default 1 per stage


def test_residual_skip_is_present():
    torch.manual_seed(0)
    block = plugin.ResidualBlock(4).eval()
    x = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(block(x), torch.relu(x))  # the body contributes ...
        last_bn = block.body[-1]
        assert isinstance(last_bn, torch.nn.BatchNorm2d)
        last_bn.weight.zero_()
        last_bn.bias.zero_()
        # ... and with the body silenced, what is left is the identity path: relu(x + 0)
        torch.testing.assert_close(block(x), torch.relu(x))


def test_decoder_refuses_vector_input(registry):
    spec = _spec(encoder={"name": "fc", "options": {"hidden": [16]}}, transform={"name": "fc"})
    with pytest.raises(BuildError, match=r"decoder 'resnet': needs a spatial input .* latent transform 'fc'"):
        build_model(spec, registry)


def test_decoder_refuses_sizes_not_reached_by_factors_of_2(registry):
    spec = _spec(transform={"name": "fc", "options": {"latent_dim": 4, "output_shape": [8, 3, 3]}})
    with pytest.raises(BuildError, match=r"decoder 'resnet': cannot upsample 3x3 to the image size 16x16"):
        build_model(spec, registry)


def test_decoder_refuses_wrong_stage_count(registry):
    spec = _spec(decoder={"name": "resnet", "options": {"stages": 3}})
    with pytest.raises(BuildError, match=r"decoder 'resnet': stages=3, but 4x4 reaches .* in 2"):
        build_model(spec, registry)


def test_encoder_refuses_indivisible_image_size(registry):
    spec = _spec(image_size=20, encoder={"name": "resnet", "options": {"stages": 3}})
    with pytest.raises(BuildError, match=r"encoder 'resnet': image size 20x20 is not divisible by 2\^stages = 8"):
        build_model(spec, registry)


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("encoder", {"width": 0}, "option 'width': expected a positive integer, got 0"),
        ("encoder", {"stages": 1.5}, "option 'stages': expected a positive integer, got 1.5"),
        ("encoder", {"blocks_per_stage": -1}, "option 'blocks_per_stage': expected an integer >= 0, got -1"),
        ("decoder", {"stages": 0}, "decoder 'resnet' option 'stages': stages must be a positive integer"),
        ("decoder", {"depth": 2}, "unknown option 'depth'"),
    ],
)
def test_invalid_options_are_one_line_errors(registry, kind, options, message):
    spec = _spec(**{kind: {"name": "resnet", "options": options}})
    with pytest.raises(OptionsError, match=message) as info:
        build_model(spec, registry)
    assert "\n" not in str(info.value)
