"""Data-parallel training under torchrun: 2 processes on the CPU with gloo.

Checks that the replicas stay identical (every phase: model, discriminator, MI head), that the losses match a
single process on the same global batch, that only rank 0 writes, and that --resume under torchrun continues
exactly where a straight run would be.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent
TINY_FC = ["--preset", "vae", "--set", "image_size=16", "--set", "encoder.hidden=[64]", "--set", "decoder.hidden=[64]"]
TINY_GAN = [
    "--preset",
    "crvae-gan-small",
    "--set",
    "image_size=16",
    "--set",
    "encoder.width=8",
    "--set",
    "decoder.width=8",
    "--set",
    "loss.adv.widths=[8,16]",
]

pytestmark = [
    pytest.mark.slow,  # torchrun processes: the slow lane
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="this PyTorch build has no gloo backend",
    ),
]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "GENVAE_LOAD_PLUGINS": ""}


def launch(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command in its own process group; on a timeout the whole group (torchrun's workers too) is killed."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def torchrun(*args, cwd: Path) -> subprocess.CompletedProcess:
    result = launch(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *map(str, args)],
        cwd=cwd,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def build(genvae_exe, folder: Path, spec_args: list[str]) -> None:
    subprocess.run([*genvae_exe, "build", *spec_args, "-o", str(folder)], check=True, env=env(), capture_output=True)


def run_worker(model: Path, out: Path, steps: int, batch: int, *, processes: int) -> None:
    args = [HERE / "ddp_worker.py", model, out, steps, batch]
    if processes == 2:
        torchrun(*args, cwd=out.parent)
    else:
        result = launch([sys.executable, *map(str, args)])
        assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("spec_args", [TINY_FC, TINY_GAN], ids=["vae", "crvae-gan"])
def test_replicas_stay_identical_and_match_one_process(tmp_path, genvae_exe, spec_args):
    build(genvae_exe, tmp_path / "m", spec_args)
    run_worker(tmp_path / "m", tmp_path / "two", steps=4, batch=16, processes=2)
    run_worker(tmp_path / "m", tmp_path / "one", steps=4, batch=16, processes=1)
    r0, r1 = load_file(tmp_path / "two" / "rank0.safetensors"), load_file(tmp_path / "two" / "rank1.safetensors")
    params = {name for name, _ in _param_names(tmp_path / "m")}
    assert params and params <= set(r0)
    start = load_file(tmp_path / "m" / "model.safetensors")
    for name in params:  # every phase's parameters, bit for bit the same on both replicas
        assert torch.equal(r0[name], r1[name]), name
    moved = [n for n in params if not torch.equal(r0[n], start[n])]
    assert len(moved) == len(params), "every parameter was trained"
    # the optimiser stepped with the mean of the two processes' gradients, on both
    g0, g1 = load_file(tmp_path / "two" / "grads0.safetensors"), load_file(tmp_path / "two" / "grads1.safetensors")
    stepped = [k for k in g0 if k.startswith("stepped/")]
    assert stepped
    for key in stepped:
        name = key.removeprefix("stepped/")
        mean = (g0["local/" + name] + g1["local/" + name]) / 2
        assert torch.equal(g0[key], g1[key]), name
        torch.testing.assert_close(g0[key], mean, rtol=1e-5, atol=1e-7)
    assert any(
        not torch.equal(g0["local/" + k.removeprefix("stepped/")], g1["local/" + k.removeprefix("stepped/")])
        for k in stepped
    ), "the two processes saw different images"
    two = json.loads((tmp_path / "two" / "rank0.json").read_text())
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    # the losses match one process on the same global batch: exactly up to the noise draws, which differ
    first_two, first_one = two[0], one[0]
    totals = [k for k in first_one if k.endswith("/total")]
    assert totals
    for key in totals:  # the first step's losses, before any update
        assert first_two[key] == pytest.approx(first_one[key], rel=0.05, abs=0.02), key

    # both ranks logged the same averaged values
    def losses(records):
        return [{k: v for k, v in r.items() if k not in ("images_per_s", "wall_time")} for r in records]

    assert losses(json.loads((tmp_path / "two" / "rank1.json").read_text())) == losses(two)


def _param_names(folder: Path):
    from genvae.api import load_model

    return load_model(folder, device="cpu").named_parameters()


def test_torchrun_cli_writes_once_and_resumes_exactly(tmp_path, genvae_exe):
    build(genvae_exe, tmp_path / "a", TINY_FC)
    subprocess.run(["cp", "-r", str(tmp_path / "a"), str(tmp_path / "b")], check=True)
    common = ["-m", "genvae.cli", "train"]
    flags = ["--device", "cpu", "--batch-size", "16", "--log-every", "2", "--quiet"]
    straight = torchrun(*common, "a", "--max-steps", "6", "--checkpoint-every", "3", *flags, cwd=tmp_path)
    assert "2 processes (gloo)" in straight.stdout and straight.stdout.count("done at step 6") == 1
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 6]  # rank 0 alone wrote the log
    ckpt = tmp_path / "a" / "checkpoints" / "step-00000006"
    trainer = json.loads((ckpt / "trainer.json").read_text())
    assert trainer["world_size"] == 2
    states = load_file(ckpt / "optimizer.safetensors")
    assert not torch.equal(states["rng@rank1/torch"], states["rng/torch"])  # each process draws its own noise
    # the same run in two launches: 3 steps, then --resume to 6
    torchrun(*common, "b", "--max-steps", "3", "--checkpoint-every", "3", *flags, cwd=tmp_path)
    torchrun(*common, "b", "--resume", "--max-steps", "6", "--checkpoint-every", "3", *flags, cwd=tmp_path)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logged = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [2, 3, 4, 6]  # the first launch logs its last step too
    last_a = json.loads(lines[-1])
    assert {k: v for k, v in logged[-1].items() if k not in ("images_per_s", "wall_time")} == {
        k: v for k, v in last_a.items() if k not in ("images_per_s", "wall_time")
    }


def test_global_batch_must_split_evenly(tmp_path, genvae_exe):
    build(genvae_exe, tmp_path / "m", TINY_FC)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "genvae.cli",
        "train",
        "m",
        "--device",
        "cpu",
        "--batch-size",
        "15",
        "--max-steps",
        "1",
    ]
    result = launch(cmd, cwd=tmp_path)
    assert result.returncode != 0
    assert "batch size 15 is not a multiple of the 2 processes" in result.stdout + result.stderr


def test_commands_that_write_outside_the_trainer_refuse_torchrun(tmp_path, monkeypatch):
    from genvae.testing import invoke_cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    result = invoke_cli(["train-levels", tmp_path / "m", "--greedy", "--steps", "1"])
    assert result.exit_code != 0
    assert "genvae train-levels runs in one process, not under torchrun (2 processes)" in result.output
