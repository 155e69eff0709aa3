"""Model folders and checkpoints: round trips, atomic writes, and one-line errors for bad files."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from helpers import one_line

from genvae.core import checkpoint as ckpt
from genvae.core.checkpoint import (
    CONFIG,
    WEIGHTS,
    atomic_write,
    load_model,
    load_spec,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_model,
)
from genvae.core.errors import CheckpointError, GenvaeError
from genvae.core.model import build_model
from genvae.core.spec import ModelSpec
from genvae.testing import random_images

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


def small_spec(**changes) -> ModelSpec:
    data = {
        "encoder": {"name": "conv", "options": {"width": 8, "depth": 2}},
        "transform": {"name": "conv", "options": {"latent_channels": 2}},
        "decoder": {"name": "conv", "options": {"width": 8, "depth": 2}},
        "losses": [{"name": "mse"}, {"name": "gaussian", "weight": 0.5}, {"name": "kl"}],
        "image_size": 16,
    }
    data.update(changes)
    return ModelSpec.from_dict(data)


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = build_model(small_spec())
    with torch.no_grad():
        m.train()
        m(random_images(m.spec))  # batch-norm statistics move away from their initial values
    return m.eval()


@pytest.fixture
def folder(tmp_path, model) -> Path:
    path = tmp_path / "model"
    save_model(model, path)
    return path


# -- model folders ------------------------------------------------------------------------------------------


def test_round_trip(model, folder):
    loaded = load_model(folder).eval()
    assert list(loaded.state_dict()) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = random_images(model.spec)
    with torch.no_grad():
        a, b = model(x, sample=False), loaded(x, sample=False)
    assert torch.equal(a.x_hat, b.x_hat)
    assert torch.equal(a.posterior.mean, b.posterior.mean)
    assert loaded.resolved_spec() == model.resolved_spec()


def test_config_holds_the_resolved_spec_and_version(model, folder):
    from genvae.api import __version__

    config = json.loads((folder / CONFIG).read_text())
    assert config["genvae_version"] == __version__
    assert config["encoder"]["options"]["max_width"] == 256  # defaults made explicit
    assert [loss["name"] for loss in config["losses"]] == ["mse", "gaussian", "kl"]
    assert config["losses"][1]["weight"] == 0.5
    assert load_spec(folder) == model.resolved_spec()


def test_save_leaves_no_temporary_files(model, folder):
    files = [".genvae-manifest.json", CONFIG, WEIGHTS]
    assert sorted(p.name for p in folder.iterdir()) == files
    save_model(model, folder)  # overwriting too
    assert sorted(p.name for p in folder.iterdir()) == files


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "data.json"
    target.write_text("old")

    def fail(f):
        f.write(b"half-writ")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_atomic_write_creates_folders(tmp_path):
    target = tmp_path / "a" / "b" / "x.txt"
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["x.txt"]


# -- broken folders ------------------------------------------------------------------------------------------


def test_truncated_weights(folder):
    weights = folder / WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    message = one_line(info)
    assert str(weights) in message and "corrupt or truncated" in message


@pytest.mark.parametrize("content", [b"", b"\x00\x01", b"not a safetensors file at all, but long enough"])
def test_garbage_weights(folder, content):
    (folder / WEIGHTS).write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    assert "corrupt or truncated" in one_line(info)


def test_missing_weights(folder):
    (folder / WEIGHTS).unlink()
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    assert one_line(info) == f"{folder / WEIGHTS} is missing"


def test_missing_config(folder):
    (folder / CONFIG).unlink()
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    assert one_line(info) == f"{folder / CONFIG} is missing"


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage", b""])
def test_garbage_config(folder, content):
    (folder / CONFIG).write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    message = one_line(info)
    assert str(folder / CONFIG) in message and "not valid JSON" in message


def test_config_that_is_not_a_spec(folder):
    (folder / CONFIG).write_text("[1, 2, 3]")
    with pytest.raises(CheckpointError, match="does not hold a model spec"):
        load_model(folder)
    (folder / CONFIG).write_text('{"encoder": "fc"}')
    with pytest.raises(GenvaeError) as info:
        load_model(folder)
    assert "missing 'transform'" in one_line(info)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "nowhere")
    assert "does not exist" in one_line(info)


def test_weights_of_another_model(folder):
    config = json.loads((folder / CONFIG).read_text())
    config["transform"]["options"]["latent_channels"] = 3
    (folder / CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    assert "does not match the model in config.json" in one_line(info)


@pytest.mark.slow
def test_a_folder_whose_name_is_not_utf8_loads(tmp_path, genvae_exe):
    """Named with bytes (b'm\\xff'): it was built, then info, sample and train called its good weights corrupt."""
    import subprocess

    folder = os.fsencode(tmp_path) + b"/m\xff"
    sets = [
        a
        for s in ("image_size=16", "encoder.width=8", "encoder.depth=2", "decoder.width=8", "decoder.depth=2")
        for a in ("--set", s)
    ]
    env = {**os.environ, "GENVAE_LOAD_PLUGINS": ""}
    commands: list[list[str | bytes]] = [
        ["build", "--preset", "cvae", *sets, "-o", folder],
        ["info", folder],
        ["sample", folder, "-n", "2", "-o", str(tmp_path / "s.png")],
        ["train", folder, "--max-steps", "2", "--batch-size", "4", "--quiet"],
    ]
    for args in commands:
        result = subprocess.run([*genvae_exe, *args], capture_output=True, timeout=300, env=env)
        assert result.returncode == 0, (args[0], result.stderr.decode(errors="replace"))
    path = Path(os.fsdecode(folder))
    latest = ckpt.latest_checkpoint(path)
    assert latest is not None and latest.name == "step-00000002"
    assert load_model(path) is not None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX)")
def test_weights_that_are_not_a_regular_file(folder, tmp_path):
    """A FIFO is named as one (it was 'missing'), and is never opened blocking; a symlink is not followed."""
    (folder / WEIGHTS).unlink()
    os.mkfifo(folder / WEIGHTS)
    with pytest.raises(CheckpointError) as info:
        load_model(folder)  # O_NONBLOCK: a regression would hang here, not return
    assert one_line(info) == (
        f"{folder / WEIGHTS} is not a regular file (a FIFO); genvae reads weights only from regular files"
    )
    (folder / WEIGHTS).unlink()
    (folder / WEIGHTS).mkdir()
    with pytest.raises(CheckpointError, match="is not a regular file \\(a folder\\)"):
        load_model(folder)
    (folder / WEIGHTS).rmdir()
    save_model(build_model(small_spec()), tmp_path / "other")
    (folder / WEIGHTS).symlink_to(tmp_path / "other" / WEIGHTS)
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    assert one_line(info).startswith(f"{folder / WEIGHTS} is a symlink; genvae reads weights only from regular files")


@pytest.mark.parametrize("dtype", [torch.float64, torch.uint8, torch.float16])
def test_weights_of_another_dtype_are_refused(folder, dtype):
    """They used to be cast into the float32 parameters without a word."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / WEIGHTS))
    name = "decoder.net.0.weight" if "decoder.net.0.weight" in state else sorted(state)[0]
    state[name] = state[name].to(dtype)
    save_file(state, str(folder / WEIGHTS))
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    shown = str(dtype).removeprefix("torch.")
    assert one_line(info) == (
        f"{folder / WEIGHTS}: tensor '{name}' is {shown}, the model's is float32; genvae loads "
        "weights of the model's own dtype only"
    )


# -- optimizer state -----------------------------------------------------------------------------------------


def _adam_after_a_step(model):
    params = list(model.parameters())
    optimizer = torch.optim.Adam(
        [{"params": params[:2], "lr": 1e-3}, {"params": params[2:], "lr": 5e-4}], betas=(0.8, 0.95)
    )
    state = model(random_images(model.spec))
    sum(model.phase_terms(state, "model").values()).backward()
    optimizer.step()
    return optimizer


def test_optimizer_round_trip_through_files(tmp_path, model):
    model.train()
    torch.manual_seed(0)
    twin = copy.deepcopy(model)
    optimizer = _adam_after_a_step(model)
    tensors, meta = optimizer_to_tensors("model", optimizer)
    assert tensors and all(torch.is_tensor(t) for t in tensors.values())
    # through the files a checkpoint uses: safetensors + JSON
    ckpt.write_tensors(tmp_path / "optimizer.safetensors", tensors)
    ckpt.write_json(tmp_path / "meta.json", meta)
    restored = optimizer_from_tensors(
        "model", ckpt.read_tensors(tmp_path / "optimizer.safetensors"), ckpt.read_json(tmp_path / "meta.json")
    )
    twin.load_state_dict(model.state_dict())
    params = list(twin.parameters())
    other = torch.optim.Adam([{"params": params[:2], "lr": 0.1}, {"params": params[2:], "lr": 0.1}])
    other.load_state_dict(restored)

    original, loaded = optimizer.state_dict(), other.state_dict()
    assert original["state"].keys() == loaded["state"].keys()
    for idx, values in original["state"].items():
        assert values.keys() == loaded["state"][idx].keys()
        for key, value in values.items():
            assert torch.equal(value, loaded["state"][idx][key]), (idx, key)
    for a, b in zip(original["param_groups"], loaded["param_groups"], strict=True):
        assert {k: list(v) if isinstance(v, tuple) else v for k, v in a.items()} == {
            k: list(v) if isinstance(v, tuple) else v for k, v in b.items()
        }

    # and the next step is identical
    x = random_images(model.spec, seed=1)
    for m, opt in ((model, optimizer), (twin, other)):
        opt.zero_grad()
        torch.manual_seed(1)
        sum(m.phase_terms(m(x), "model").values()).backward()
        opt.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_optimizer_tensors_are_namespaced(model):
    model.train()
    optimizer = _adam_after_a_step(model)
    tensors, _ = optimizer_to_tensors("disc", optimizer)
    assert all(k.startswith("disc/") for k in tensors)
    assert optimizer_from_tensors("model", tensors, {"param_groups": []})["state"] == {}


# -- step checkpoints ----------------------------------------------------------------------------------------


def test_step_checkpoints(tmp_path, model):
    state = model.state_dict()
    for step in (10, 20, 30):
        ckpt.write_checkpoint(tmp_path, step, state, {}, {"step": step}, keep=2)
    dirs = ckpt.checkpoint_dirs(tmp_path)
    assert [d.name for d in dirs] == ["step-00000020", "step-00000030"]
    assert ckpt.latest_checkpoint(tmp_path) == dirs[-1]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-00000020", "step-00000030"]  # no temp dirs
    weights, optim, trainer = ckpt.read_checkpoint(dirs[-1])
    assert trainer == {"step": 30}
    assert optim == {}
    assert all(torch.equal(weights[k], v) for k, v in state.items())


def test_incomplete_checkpoint_is_ignored(tmp_path, model):
    ckpt.write_checkpoint(tmp_path, 5, model.state_dict(), {}, {"step": 5}, keep=3)
    (tmp_path / "checkpoints" / "step-00000009").mkdir()  # a crash left it without trainer.json
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step-00000005"
    assert ckpt.latest_checkpoint(tmp_path / "empty") is None


def test_bad_trainer_state(tmp_path, model):
    path = ckpt.write_checkpoint(tmp_path, 1, model.state_dict(), {}, {"step": 1}, keep=1)
    (path / "trainer.json").write_text('{"epoch": 3}')
    with pytest.raises(GenvaeError, match="is not a genvae trainer state"):
        ckpt.read_checkpoint(path)
