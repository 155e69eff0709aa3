"""Stage2: the frozen Stage1 inside, the up-sampler's shapes, self-contained folders, and sampling end to end."""

from __future__ import annotations

import shutil

import pytest
import torch

from genvae.api import BuildError, build_model, load_model, save_model
from genvae.core.compose import apply_sets, compose_spec, preset_spec
from genvae.testing import check_component, invoke_cli


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    folder = tmp_path_factory.mktemp("s1") / "stage1"
    torch.manual_seed(0)
    model = build_model(apply_sets(preset_spec("vae-gan-small"), ["image_size=16", "transform.latent_dim=8"]))
    with torch.no_grad():  # weights unlike a fresh build's, so that copying them is visible
        for p in model.parameters():
            p.add_(0.01)
    save_model(model, folder)
    return folder


def stage2_spec(stage1, size=32):
    return compose_spec(
        preset="stage2-small",
        sets=[f'encoder.stage1="{stage1}"', f"image_size={size}", "decoder.width=4", "decoder.blocks=1"],
    )


def test_the_stage1_weights_are_copied_in_and_the_spec_recorded(stage1, tmp_path):
    model = build_model(stage2_spec(stage1))
    original = load_model(stage1)
    inner = model.encoder.stage1.state_dict()
    assert all(torch.equal(v, inner[k]) for k, v in original.state_dict().items())
    assert model.resolved_spec().encoder.options["spec"]["image_size"] == 16
    save_model(model, tmp_path / "s2")
    shutil.copytree(stage1, tmp_path / "gone")
    again = load_model(tmp_path / "s2")  # needs no Stage1 folder: the spec and weights are in the Stage2 folder
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_the_stage2_folder_loads_without_the_stage1_folder(stage1, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(stage1, copy)
    model = build_model(stage2_spec(copy))
    save_model(model, tmp_path / "s2")
    shutil.rmtree(copy)
    back = load_model(tmp_path / "s2")
    assert torch.equal(back.encoder.stage1.decoder.net[0].weight, model.encoder.stage1.decoder.net[0].weight)


def test_generation_is_stage1_then_stage2(stage1):
    model = build_model(stage2_spec(stage1)).eval()
    z = torch.randn(3, *model.layout.shape)
    with torch.no_grad():
        low = model.encoder.stage1.generate(z)[1]
        _, high = model.generate(z)
    assert low.shape == (3, 1, 16, 16) and high.shape == (3, 1, 32, 32)
    assert torch.allclose(high, torch.tanh(model.decoder(low)))
    # the encoder sees the image shrunk to Stage1's size
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model.encoder(x), model.encoder.stage1.encoder(torch.nn.functional.avg_pool2d(x, 2)))


@pytest.mark.slow
def test_training_changes_stage2_and_leaves_stage1(stage1, tmp_path):
    save_model(build_model(stage2_spec(stage1)), tmp_path / "s2")
    before = load_model(tmp_path / "s2")
    result = invoke_cli(
        ["train", tmp_path / "s2", "--max-steps", "3", "--batch-size", "8", "--quiet", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    after = load_model(tmp_path / "s2")
    sb, sa = before.state_dict(), after.state_dict()
    stage1_keys = [k for k in sb if k.startswith("encoder.stage1.") and sb[k].is_floating_point()]
    assert stage1_keys and all(torch.equal(sb[k], sa[k]) for k in stage1_keys)
    assert any(not torch.equal(sb[k], sa[k]) for k in sb if k.startswith("decoder."))
    assert any(not torch.equal(sb[k], sa[k]) for k in sb if k.startswith("losses.adv."))
    result = invoke_cli(["sample", tmp_path / "s2", "-n", "4", "-o", tmp_path / "s.png"])
    assert result.exit_code == 0 and (tmp_path / "s.png").is_file()


def test_the_build_command_takes_stage1(stage1, tmp_path):
    result = invoke_cli(
        [
            "build",
            "--preset",
            "stage2-small",
            "--stage1",
            stage1,
            "--set",
            "image_size=32",
            "--set",
            "decoder.width=4",
            "-o",
            tmp_path / "s2",
        ]
    )
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "s2").spec.encoder.options["stage1"] == str(stage1)


@pytest.mark.parametrize(
    "sets, message",
    [
        (
            ["image_size=24"],
            "the image size 24 must be a power-of-two multiple (x2, x4, ...) of Stage1's 16; e.g. --set image_size=32",
        ),
        (["channels=3"], "the Stage1 model makes 1-channel images; this model has 3"),
        (["decoder.factor=4"], "factor 4 takes 16x16 to 64x64, but the images are 32x32; set decoder.factor=2"),
    ],
)
def test_mismatched_sizes_are_refused_at_build(stage1, sets, message):
    with pytest.raises(BuildError) as exc:
        build_model(apply_sets(stage2_spec(stage1), sets))
    assert message in str(exc.value)


def test_without_a_stage1_folder_the_build_says_how():
    with pytest.raises(BuildError, match="needs a trained Stage1 model: genvae build --preset stage2 --stage1 DIR"):
        build_model(preset_spec("stage2-small"))


def test_the_stage2_decoder_conforms():
    check_component("decoder", "stage2", {"width": 4, "blocks": 1, "factor": 4})
