"""The command line: click's CliRunner for the commands, real subprocesses for the console script."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import SETS, run
from PIL import Image

from genvae.cli.main import cli
from genvae.core.registry import get_registry


@pytest.fixture
def model_dir(tmp_path) -> Path:
    run("build", "--preset", "cvae", *SETS, "-o", tmp_path / "m")
    return tmp_path / "m"


def test_list_plugins_table_and_json():
    out = run("list-plugins").output
    for name in ("fc", "conv", "normal", "mse", "bce", "gaussian", "kl", "shapes", "vae", "cvae"):
        assert name in out
    data = json.loads(run("list-plugins", "--json").output)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["fc"]["provides"] == {"encoder": ["fc"], "transform": ["fc"], "decoder": ["fc"], "preset": ["vae"]}
    assert by_name["kl"]["builtin"] and by_name["kl"]["status"] == "loaded"
    assert {"vae", "cvae"} <= {p["name"] for p in data["presets"]}


def test_build_writes_model_folder_and_summary(model_dir):
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    config = json.loads((model_dir / "config.json").read_text())
    assert config["encoder"] == {
        "name": "conv",
        "options": {"width": 8, "depth": 2, "max_width": 256, "activation": "lrelu", "batch_norm": True},
    }
    out = run("info", model_dir).output
    assert "latent [2, 4, 4]" in out and "generator side" in out


def test_build_from_encoder_alone(tmp_path):
    out = run(
        "build",
        "--encoder",
        "fc",
        "--image-size",
        "16",
        "--set",
        "encoder.hidden=[32]",
        "--set",
        "decoder.hidden=[32]",
        "-o",
        tmp_path / "m",
    ).output
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert [config[k]["name"] for k in ("encoder", "transform", "decoder", "prior")] == ["fc", "fc", "fc", "normal"]
    assert [loss["name"] for loss in config["losses"]] == ["mse", "kl"]
    assert "parameters" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--encoder", "nope"], "unknown encoder 'nope'; known: conv, "),
        (["--encoder", "fc", "--decoder", "conv"], "decoder 'conv': needs a spatial input"),
        (["--encoder", "fc", "--transform", "conv"], "latent transform 'conv': needs spatial features"),
        (["--preset", "vea"], "did you mean 'vae'"),
        (["--preset", "vae", "--loss", "msee"], "unknown loss 'msee'; did you mean 'mse'"),
        (["--preset", "vae", "--set", "encoder.widht=3"], "unknown option 'widht' for encoder 'fc'"),
        (["--preset", "cvae", "--image-size", "20"], "not divisible by 2^depth"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, message):
    result = run("build", *args, "-o", tmp_path / "m", ok=False)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "m" / "config.json").exists()


def test_debug_shows_the_traceback(tmp_path):
    from genvae.core.errors import UnknownNameError

    with pytest.raises(UnknownNameError):
        CliRunner().invoke(
            cli, ["--debug", "build", "--encoder", "nope", "-o", str(tmp_path / "m")], catch_exceptions=False
        )


def test_build_refuses_to_overwrite(model_dir):
    result = run("build", "--preset", "cvae", *SETS, "-o", model_dir, ok=False)
    assert result.exit_code == 1 and "already holds a model" in result.output


def test_train_sample_reconstruct_evaluate(model_dir, tmp_path):
    out = run("train", model_dir, "--max-steps", "6", "--batch-size", "16", "--log-every", "3").output
    assert "step 6/6" in out
    result = run("train", model_dir, "--max-steps", "8", ok=False)
    assert result.exit_code == 1 and "--resume" in result.output
    out = run("train", model_dir, "--max-steps", "9", "--batch-size", "16", "--resume").output
    assert "step 6 -> 9" in out
    assert (model_dir / "checkpoints" / "step-00000009").is_dir()
    run("sample", model_dir, "-n", "16", "-o", tmp_path / "s.png")
    assert Image.open(tmp_path / "s.png").size == (4 * 18 + 2, 4 * 18 + 2)
    run("reconstruct", model_dir, "-n", "8", "-o", tmp_path / "r.png")
    assert Image.open(tmp_path / "r.png").size == (8 * 18 + 2, 2 * 18 + 2)
    out = run("evaluate", model_dir, "--metrics", "rmse", "--limit", "64", "-o", tmp_path / "e.json").stdout
    result = json.loads(out)  # stdout is the JSON report; the table goes to stderr
    assert result["images"] == 64 and 0 < result["models"][0]["metrics"]["rmse"]["rmse"] < 255
    assert json.loads((tmp_path / "e.json").read_text()) == result


def test_the_run_header_names_the_data_and_its_count_once(model_dir, tmp_path):
    """It read 'on folder D (16 images) (16 images)': the folder's source carried the count too."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(16):
        Image.new("RGB", (16, 16), (i * 15, 0, 0)).save(data / f"{i}.png")
    out = run("train", model_dir, "--data", data, "--max-steps", "1", "--batch-size", "8", "--quiet").output
    header = next(line for line in out.splitlines() if line.startswith("training "))
    assert header.startswith(f"training {model_dir} on folder {data} (16 images) | cpu | "), header
    assert " | step 0 -> 1 | batch 8 | " in header and header.count("images)") == 1, header


def test_sample_with_fixed_groups(model_dir, tmp_path):
    img = tmp_path / "in.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(img)
    run(
        "sample",
        model_dir,
        "-n",
        "3",
        "--from",
        img,
        "--fix-levels",
        "1",
        "--fix-levels",
        "0",
        "-o",
        tmp_path / "f.png",
    )
    assert (tmp_path / "f-fix1.png").is_file() and (tmp_path / "f-fix0.png").is_file()
    result = run("sample", model_dir, "-n", "3", "--from", img, "--fix-levels", "5", "-o", tmp_path / "g.png", ok=False)
    assert result.exit_code == 1 and "has 1 groups" in result.output


def test_missing_and_corrupt_model_folders(tmp_path, model_dir):
    result = run("info", tmp_path / "nowhere", ok=False)
    assert result.exit_code == 1 and "does not exist" in result.output
    (model_dir / "model.safetensors").write_bytes(b"\x00" * 20)
    result = run("info", model_dir, ok=False)
    assert result.exit_code == 1 and "corrupt or truncated" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_console_script_real_process(tmp_path, genvae_exe):
    proc = subprocess.run(
        [*genvae_exe, "build", "--encoder", "nope", "-o", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("Error: unknown encoder 'nope'") and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_killed_training_resumes_from_last_checkpoint(tmp_path, genvae_exe):
    """SIGKILL mid-run (no chance to clean up), then --resume: the result equals an uninterrupted run."""
    from safetensors.torch import load_file

    common = ["--max-steps", "24", "--batch-size", "8", "--checkpoint-every", "4", "--log-every", "4", "--quiet"]
    subprocess.run(
        [*genvae_exe, "build", "--preset", "cvae", *SETS, "-o", str(tmp_path / "a")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    subprocess.run([*genvae_exe, "train", str(tmp_path / "a"), *common], check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(
        [*genvae_exe, "train", str(tmp_path / "b"), *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "b" / "checkpoints").glob("step-*")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted((tmp_path / "b" / "checkpoints").glob("step-*"))
    assert done, "no checkpoint was written before the kill"
    resumed_from = int(done[-1].name.split("-")[1])
    out = subprocess.run(
        [*genvae_exe, "train", str(tmp_path / "b"), *common, "--resume"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    assert f"step {resumed_from} -> 24" in out
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_describe_shows_options_with_types_defaults_and_help():
    runner = CliRunner()
    result = runner.invoke(cli, ["describe", "loss", "kl", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    options = {o["name"]: o for o in info["options"]}
    assert options["warmup"]["type"] == "str" and options["warmup"]["default"] == '"none"'
    assert options["warmup_steps"] == {
        "name": "warmup_steps",
        "type": "int",
        "default": "1000",
        "help": "steps of the linear warm-up, or the length of one cycle",
    }
    assert options["group_weights"]["type"] == "tuple[float, ...]"
    assert (info["role"], info["phases"], info["branches"]) == ("divergence", ["model"], ["posterior"])
    adv = json.loads(runner.invoke(cli, ["describe", "loss", "adv", "--json"]).output)
    assert adv["provides"] == ["discriminator"] and adv["branches"] == ["posterior", "prior"]
    table = runner.invoke(cli, ["describe", "encoder", "conv"])
    assert table.exit_code == 0 and "options" in table.output
    bad = runner.invoke(cli, ["describe", "loss", "kll"])
    known = ", ".join(sorted(get_registry().names("loss")))  # every installed loss: new plugins do not break it
    assert known.startswith("adv, bce, ") and ", kl, " in known
    assert bad.exit_code == 1 and bad.output.strip().splitlines() == [
        f"Error: unknown loss 'kll'; did you mean 'kl'? known: {known}"
    ]
