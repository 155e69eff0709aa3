"""``train --resume`` checks the whole checkpoint against the model before it writes anything.

Each case trains a real model folder a few steps, damages one part of its checkpoint (with safetensors or
json, as a disk error or a hand edit would), then resumes it with different options: the run must stop with
one line naming the file and the key, and leave every file of the folder as it was (config.json is not
rewritten with the new options, metrics.jsonl is not cut, nothing is deleted). Before these checks, such a
checkpoint loaded and the run failed later, inside the first optimiser step, with ``internal error KeyError``
or ``RuntimeError``, after config.json had been rewritten.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import SETS, run, snapshot
from safetensors.torch import load_file, save_file

TRAIN = ["--max-steps", "4", "--batch-size", "8", "--log-every", "1", "--checkpoint-every", "4", "--quiet"]
# the resumed run asks for other settings: a config.json rewritten too early would show them
RESUME = ["--resume", "--max-steps", "8", "--batch-size", "8", "--lr", "5e-4", "--quiet"]
CKPT = Path("checkpoints") / "step-00000004"
OPTIM = CKPT / "optimizer.safetensors"
TRAINER = CKPT / "trainer.json"
FIRST_SHAPE = "[8, 3, 4, 4]"  # encoder.net.0.weight: parameter 0 of the model phase


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny conv VAE trained 4 steps, with its checkpoint at step 4 (copied for each test)."""
    folder = tmp_path_factory.mktemp("trained") / "m"
    run("build", "--preset", "cvae", *SETS, "-o", folder)
    run("train", folder, *TRAIN)
    return folder


@pytest.fixture
def folder(trained, tmp_path) -> Path:
    copy = tmp_path / "m"
    shutil.copytree(trained, copy)
    return copy


def edit_tensors(folder: Path, change: Callable[[dict[str, torch.Tensor]], None], rel: Path = OPTIM) -> None:
    tensors = load_file(str(folder / rel))
    change(tensors)
    save_file(tensors, str(folder / rel))


def edit_trainer(folder: Path, change: Callable[[dict], None]) -> None:
    data = json.loads((folder / TRAINER).read_text())
    change(data)
    (folder / TRAINER).write_text(json.dumps(data))


def drop(*keys: str) -> Callable[[dict], None]:
    def change(tensors: dict) -> None:
        for key in keys:
            del tensors[key]

    return change


def drop_phase(tensors: dict) -> None:
    for key in [k for k in tensors if k.startswith("model/")]:
        del tensors[key]


def put(key: str, value: torch.Tensor) -> Callable[[dict], None]:
    def change(tensors: dict) -> None:
        tensors[key] = value

    return change


def assert_refused(folder: Path, before: dict[str, bytes], stderr: str, code: int, *parts: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("Error: ") and len(line) <= 400 and "internal error" not in line, line
    for part in parts:
        assert part in line, line
    assert snapshot(folder) == before  # config.json, metrics.jsonl, model.safetensors, checkpoints: all as they were


# -- as real processes: the cases of the issue ---------------------------------------------------------------------

PROCESS_CASES = {
    "a removed key": (
        lambda f: edit_tensors(f, drop("model/0/exp_avg")),
        [f"{OPTIM}: 'model/0/exp_avg' is missing (phase 'model', parameter 0 of shape {FIRST_SHAPE})"],
    ),
    "a wrong shape": (
        lambda f: edit_tensors(f, put("model/0/exp_avg", torch.zeros(3))),
        [f"{OPTIM}: 'model/0/exp_avg' has shape [3], expected {FIRST_SHAPE}"],
    ),
    "a wrong dtype": (
        lambda f: edit_tensors(f, put("model/2/exp_avg_sq", torch.zeros(8, dtype=torch.int64))),
        [f"{OPTIM}: 'model/2/exp_avg_sq' is int64, expected a floating-point tensor"],
    ),
    "a truncated torch rng": (
        lambda f: edit_tensors(f, lambda t: t.update({"rng/torch": t["rng/torch"][:100]})),
        [f"{OPTIM}: 'rng/torch' is not a torch random state"],
    ),
    "a missing phase": (
        lambda f: edit_tensors(f, drop_phase),
        [f"{OPTIM}: 'model/0/step' is missing (phase 'model', parameter 0 of shape {FIRST_SHAPE})"],
    ),
}


@pytest.mark.parametrize("case", sorted(PROCESS_CASES))
@pytest.mark.slow
def test_damaged_checkpoint_is_refused_before_anything_is_written(folder, genvae_exe, case):
    damage, parts = PROCESS_CASES[case]
    damage(folder)
    before = snapshot(folder)
    result = subprocess.run(
        [*genvae_exe, "train", str(folder), *RESUME],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "GENVAE_LOAD_PLUGINS": ""},
    )
    assert_refused(folder, before, result.stderr, result.returncode, str(folder), *parts)


# -- in process: every other part of the trainer state -------------------------------------------------------------


def _groups(data: dict) -> None:
    groups = data["optimizers"]["model"]["param_groups"]
    groups.append({**groups[0], "params": groups[0]["params"][-1:]})
    groups[0]["params"] = groups[0]["params"][:-1]


def _empty_log_window(folder: Path) -> None:
    edit_tensors(folder, put("trainer.running/mse", torch.tensor(1.0)))
    edit_trainer(folder, lambda d: d.update(running_terms=["mse"], running_count=0))


CASES = {
    "a state of a parameter the phase does not have": (
        lambda f: edit_tensors(f, put("model/99/exp_avg", torch.zeros(1))),
        [str(OPTIM), "'model/99/exp_avg' is not an optimiser state of this model's phase 'model'"],
    ),
    "an unknown key": (
        lambda f: edit_tensors(f, put("model/0/momentum", torch.zeros(8, 3, 4, 4))),
        [str(OPTIM), "'model/0/momentum' is not an optimiser state"],
    ),
    "a non-finite moment": (
        lambda f: edit_tensors(f, put("model/1/exp_avg", torch.full((8,), float("nan")))),
        [str(OPTIM), "'model/1/exp_avg' holds NaN or inf"],
    ),
    "a negative second moment": (
        lambda f: edit_tensors(f, put("model/1/exp_avg_sq", -torch.ones(8))),
        [str(OPTIM), "'model/1/exp_avg_sq' holds negative values"],
    ),
    "a step of the wrong shape": (
        lambda f: edit_tensors(f, put("model/1/step", torch.ones(2))),
        [str(OPTIM), "'model/1/step' has shape [2], expected []"],
    ),
    "a state trainer.json does not list": (
        lambda f: edit_trainer(f, lambda d: d["optimizers"]["model"]["with_state"].remove(3)),
        [str(OPTIM), "'model/3/exp_avg' is there, but trainer.json lists no state for parameter 3"],
    ),
    "other parameter groups": (
        lambda f: edit_trainer(f, _groups),
        [str(TRAINER), "the optimiser state of phase 'model' has 2 parameter group(s)", "this model's phase has 1"],
    ),
    "a permuted parameter group": (
        lambda f: edit_trainer(f, lambda d: d["optimizers"]["model"]["param_groups"][0]["params"].reverse()),
        [str(TRAINER), "parameter group 0 of phase 'model' lists parameters"],
    ),
    "a torch rng of another dtype": (
        lambda f: edit_tensors(f, lambda t: t.update({"rng/torch": t["rng/torch"].float()})),
        [str(OPTIM), "'rng/torch' is a torch.float32 tensor of shape [5056], expected a 1-D uint8 random state"],
    ),
    "a short Python random state": (
        lambda f: edit_trainer(f, lambda d: d["python_random"][1].pop()),
        [str(TRAINER), "'python_random' must hold Python's 625 state words"],
    ),
    "a Python random state out of range": (
        lambda f: edit_trainer(f, lambda d: d["python_random"][1].__setitem__(5, 2**40)),
        [str(TRAINER), "'python_random' must hold Python's 625 state words"],
    ),
    "a GradScaler state without its scale": (
        lambda f: edit_trainer(f, lambda d: d.update(scaler={"growth_factor": 2.0})),
        [str(TRAINER), "'scaler' must be null or a GradScaler state"],
    ),
    "a GradScaler scale of zero": (
        lambda f: edit_trainer(
            f,
            lambda d: d.update(
                scaler={
                    "scale": 0.0,
                    "growth_factor": 2.0,
                    "backoff_factor": 0.5,
                    "growth_interval": 2000,
                    "_growth_tracker": 0,
                }
            ),
        ),
        [str(TRAINER), "'scaler.scale' must be a finite number > 0"],
    ),
    "a lost log-window sum": (
        lambda f: edit_trainer(f, lambda d: d.update(running_terms=["mse"], running_count=1)),
        [str(OPTIM), "'trainer.running/mse' is missing"],
    ),
    "a log window of no steps": (_empty_log_window, [str(TRAINER), "'running_count' must be 1..4"]),
    "counters that do not fit the data": (
        lambda f: edit_trainer(f, lambda d: d.update(epoch=3)),
        [str(TRAINER), "'step' 4, 'epoch' 3 and 'batch_in_epoch' 4 do not fit this data"],
    ),
    "float64 weights": (
        lambda f: edit_tensors(
            f,
            lambda t: t.update({"encoder.net.0.weight": t["encoder.net.0.weight"].double()}),
            rel=CKPT / "model.safetensors",
        ),
        [str(CKPT / "model.safetensors"), "tensor 'encoder.net.0.weight' is float64, the model's is float32"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_part_of_the_trainer_state_is_checked(folder, case):
    damage, parts = CASES[case]
    damage(folder)
    before = snapshot(folder)
    result = run("train", folder, *RESUME, ok=False)
    assert_refused(folder, before, result.stderr, result.exit_code, *parts)


def test_an_intact_checkpoint_still_resumes_and_a_stateless_parameter_starts_fresh(folder):
    """A parameter Adam never stepped has no state (a phase whose updates were all skipped): that is no damage."""

    def forget(tensors: dict) -> None:
        for key in [k for k in tensors if k.startswith("model/5/")]:
            del tensors[key]

    edit_tensors(folder, forget)
    edit_trainer(folder, lambda d: d["optimizers"]["model"]["with_state"].remove(5))
    out = run("train", folder, *RESUME).output
    assert "step 4 -> 8" in out
    assert json.loads((folder / "config.json").read_text())["train"]["lr"] == 5e-4
