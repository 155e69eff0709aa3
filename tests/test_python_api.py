"""The Python API (genvae.build/load/train/evaluate/datasets, Model): the same runs as the command line, bit for
bit; one-line GenvaeErrors, never an exit; Ctrl-C leaves a resumable checkpoint; images in [0, 1]; data in memory.

Tiny 16-px models, a dozen steps: the file takes a few seconds."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
from pathlib import Path

import pytest
import torch
from helpers import SETS, TINY_CVAE, one_line, run

import genvae
from genvae.core.errors import DataError, GenvaeError

pytestmark = pytest.mark.usefixtures("one_thread")

#: TINY_CVAE as keyword options of genvae.build
TINY = {k.replace(".", "__"): json.loads(v) for k, v in (s.split("=") for s in TINY_CVAE)}
STEPS = 12


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def terms(folder: Path) -> list[dict]:
    """metrics.jsonl without its clock (wall time, images per second)."""
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("wall_time", "images_per_s")} for r in lines]


def test_python_and_cli_runs_of_the_same_preset_and_seed_write_identical_weights(tmp_path):
    run("build", "--preset", "cvae", *SETS, "--set", "train.seed=7", "-o", tmp_path / "cli")
    run("train", tmp_path / "cli", "--max-steps", STEPS, "--log-every", 4)
    built = genvae.build("cvae", **TINY, train__seed=7)  # in memory, then trained into a folder
    assert built.folder is None
    result = genvae.train(built, folder=tmp_path / "py", steps=STEPS, log_every=4, progress=False)
    into = genvae.build("cvae", **TINY, sets=["train.seed=7"], folder=tmp_path / "py2")  # written by build
    genvae.train(into, steps=STEPS, log_every=4, progress=False)

    cli = sha256(tmp_path / "cli" / "model.safetensors")
    assert sha256(tmp_path / "py" / "model.safetensors") == cli
    assert sha256(tmp_path / "py2" / "model.safetensors") == cli
    assert terms(tmp_path / "py") == terms(tmp_path / "cli") == terms(tmp_path / "py2")
    assert (result.start, result.step, result.folder) == (0, STEPS, tmp_path / "py")
    assert result.metrics["step"] == STEPS and result.metrics["mse"] == terms(tmp_path / "cli")[-1]["mse"]
    # the model object holds the trained weights: those of the folder
    saved = genvae.load(tmp_path / "cli").module.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in built.module.state_dict().items())
    assert result.model is built and built.folder == tmp_path / "py"
    # a run started from Python is recorded for the report as a command is
    history = (tmp_path / "py" / "commands.jsonl").read_text()
    assert "python: genvae.build('cvae'" in history and "python: genvae.train(" in history
    # a different seed is a different model
    first, other = genvae.build("cvae", **TINY, train__seed=7), genvae.build("cvae", **TINY, train__seed=8)
    assert first.module.state_dict().keys() == other.module.state_dict().keys()
    assert not all(torch.equal(v, other.module.state_dict()[k]) for k, v in first.module.state_dict().items())


def test_errors_are_one_line_genvae_errors_never_an_exit(tmp_path, tiny_data):
    cases = [
        lambda: genvae.build("no-such-preset"),
        lambda: genvae.build("cvae", encoder__no_such_option=1),
        lambda: genvae.train(genvae.build("cvae", **TINY), steps=1, progress=False),  # no folder
        lambda: genvae.load(tmp_path / "missing"),
        lambda: genvae.datasets("no-such-data"),
        lambda: genvae.datasets(torch.full((2, 3, 8, 8), 2.0)),  # float images outside [0, 1]
        lambda: genvae.evaluate(tmp_path / "m", metrics=["no-such-metric"]),
        lambda: genvae.train(tmp_path / "m", steps=1, device="cuda:99", progress=False),
    ]
    genvae.build("cvae", **TINY, folder=tmp_path / "m")
    for case in cases:
        with pytest.raises(GenvaeError) as caught:
            case()
        one_line(caught)
    with pytest.raises(DataError, match="float images are expected in \\[0, 1\\]"):
        genvae.datasets(torch.full((2, 3, 8, 8), -0.5))
    # a folder that holds a model is not built over, and keeps its model
    before = sha256(tmp_path / "m" / "model.safetensors")
    with pytest.raises(GenvaeError, match="already holds a model; choose another folder or pass force=True"):
        genvae.build("cvae", **TINY, train__seed=3, folder=tmp_path / "m")
    assert sha256(tmp_path / "m" / "model.safetensors") == before
    genvae.train(tmp_path / "m", data=tiny_data, steps=2, progress=False)
    with pytest.raises(
        GenvaeError, match="has a checkpoint at step-00000002; pass resume=True to continue it or restart=True"
    ):
        genvae.train(tmp_path / "m", data=tiny_data, steps=4, progress=False)


def test_ipython_shows_a_genvae_error_as_its_line_unless_debugging(monkeypatch):
    with pytest.raises(GenvaeError) as caught:
        genvae.build("no-such-preset")
    monkeypatch.delenv("GENVAE_DEBUG", raising=False)
    assert caught.value._render_traceback_() == [f"UnknownNameError: {caught.value}"]  # what IPython prints
    stopped = genvae.TrainingInterrupted("stopped by SIGINT at step 3; ...", 3, Path("m"))
    assert stopped._render_traceback_() == ["TrainingInterrupted: stopped by SIGINT at step 3; ..."]
    monkeypatch.setenv("GENVAE_DEBUG", "1")
    assert not hasattr(caught.value, "_render_traceback_")  # IPython then shows the traceback


def _sigint_at(step: int):
    """A callback that sends this process SIGINT (a notebook's interrupt) at the metrics line of ``step``."""

    def callback(record: dict) -> None:
        if record["step"] == step:
            signal.raise_signal(signal.SIGINT)

    return callback


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_keyboard_interrupt_leaves_a_checkpoint_that_resumes_exactly(tmp_path, tiny_data):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal or a kernel
    try:
        genvae.build("cvae", **TINY, folder=tmp_path / "whole")
        whole = genvae.train(tmp_path / "whole", data=tiny_data, steps=STEPS, log_every=2, progress=False)
        model = genvae.build("cvae", **TINY, folder=tmp_path / "cut")
        seen: list[dict] = []
        with pytest.raises(KeyboardInterrupt) as caught:
            genvae.train(
                model, data=tiny_data, steps=STEPS, log_every=2, callbacks=[_sigint_at(4), seen.append], progress=False
            )
        stopped = caught.value
        assert isinstance(stopped, genvae.TrainingInterrupted) and isinstance(stopped, KeyboardInterrupt)
        assert stopped.step == 4 and stopped.folder == tmp_path / "cut"  # the step boundary after the signal
        assert "resume=True" in str(stopped) and "\n" not in str(stopped)
        assert (tmp_path / "cut" / "checkpoints" / "step-00000004").is_dir()
        # the model object holds the checkpoint's weights
        at_stop = genvae.load(tmp_path / "cut").module.state_dict()
        assert all(torch.equal(v, at_stop[k]) for k, v in model.module.state_dict().items())
        result = genvae.train(model, data=tiny_data, steps=STEPS, log_every=2, resume=True, progress=False)
        assert (result.start, result.step) == (4, whole.step) and whole.step > 4
        assert sha256(tmp_path / "cut" / "model.safetensors") == sha256(tmp_path / "whole" / "model.safetensors")
        assert [r["step"] for r in seen] == [2, 4]  # callbacks see every metrics line
    finally:
        signal.signal(signal.SIGINT, previous)


def test_data_as_a_tensor_a_dataset_a_name_or_a_folder(tmp_path, tiny_data):
    from PIL import Image
    from torch.utils.data import TensorDataset

    model = genvae.build("cvae", **TINY)
    floats = tiny_data.images.float() / 255.0
    as_tensor = genvae.datasets(floats, model=model)
    assert torch.equal(as_tensor.images, tiny_data.images)  # float [0, 1] -> the same uint8
    as_dataset = genvae.datasets(TensorDataset(floats, torch.zeros(len(floats))), model=model)
    assert torch.equal(as_dataset.images, tiny_data.images)  # (image, label) pairs
    for i in range(3):
        Image.fromarray(tiny_data.images[i].permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
    from_folder = genvae.datasets(tmp_path, model=model)
    assert torch.equal(from_folder.images, tiny_data.images[:3])
    named = genvae.datasets("shapes", image_size=16, channels=3, split="test")
    assert named.images.shape[1:] == (3, 16, 16) and "shapes" in genvae.dataset_names()
    grey = genvae.datasets(tiny_data.images[:, :1, :14, :14], image_size=16, channels=1)  # 14 -> 16: padded
    assert torch.equal(grey.images[:, :, 1:15, 1:15], tiny_data.images[:, :1, :14, :14])
    assert int(grey.images[:, :, 0].max()) == 0
    # train reads a tensor or a Dataset as it reads --data
    result = genvae.train(model, data=floats, folder=tmp_path / "t", steps=2, log_every=1, progress=False)
    assert result.step == 2
    genvae.train(model, data=TensorDataset(floats), steps=3, log_every=1, resume=True, progress=False)
    assert json.loads((tmp_path / "t" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3


def test_encode_decode_reconstruct_and_sample_in_0_1(tiny_data):
    model = genvae.build("cvae", **TINY)
    x = tiny_data.images[:6].float() / 255.0
    z = model.encode(x)
    assert z.shape == (6, *model.latent_shape)
    recon = model.reconstruct(x)
    assert recon.shape == x.shape and recon.dtype == torch.float32 and recon.device.type == "cpu"
    assert 0.0 <= float(recon.min()) and float(recon.max()) <= 1.0
    # the model's own output, mapped from [-1, 1] to [0, 1]
    model.module.eval()
    with torch.no_grad():
        raw = model.module.forward(x * 2 - 1, sample=False).x_hat
    assert raw is not None
    torch.testing.assert_close(recon, raw * 0.5 + 0.5)
    torch.testing.assert_close(model.decode(z), recon, atol=1e-5, rtol=0)  # decode(encode(x)) is reconstruct(x)
    torch.testing.assert_close(model.reconstruct(tiny_data.images[:6]), recon)  # uint8 in, the same
    torch.testing.assert_close(model.reconstruct(x[0]), recon[:1])  # one image (C, H, W)
    # samples: reproducible by seed, different across seeds, the caller's random streams untouched
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = model.sample(8, seed=1)
    assert torch.equal(torch.rand(3), before)
    assert torch.equal(model.sample(8, seed=1), a) and not torch.equal(model.sample(8, seed=2), a)
    assert a.shape == (8, *model.image_shape) and 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    for bad in (
        lambda: model.reconstruct(x[:, :, :8]),
        lambda: model.decode(torch.zeros(2, 3)),
        lambda: model.sample(0),
    ):
        with pytest.raises(GenvaeError):
            bad()


def test_evaluate_is_typed_and_gives_the_numbers_of_genvae_evaluate(tmp_path):
    a = genvae.build("cvae", **TINY, folder=tmp_path / "a")
    b = genvae.build("cvae", **TINY, train__seed=5)  # in memory
    result = genvae.evaluate({"a": a, "b": b}, metrics=["rmse"], limit=16)
    assert isinstance(result, genvae.Evaluation) and [s.model for s in result.scores] == ["a", "b"]
    assert all(isinstance(s, genvae.ModelScores) for s in result.scores) and result.images == 16
    assert result["a"]["rmse"]["rmse"] != result["b"]["rmse"]["rmse"]
    cli = json.loads(run("evaluate", tmp_path / "a", "--metrics", "rmse", "--limit", 16).stdout.splitlines()[-1])
    assert cli["models"][0]["metrics"] == result["a"]
    assert genvae.evaluate(a, metrics="rmse", limit=16).scores[0].model == str(tmp_path / "a")
    assert "<table>" in result._repr_html_() and "RMSE" in str(result)
    pd = pytest.importorskip("pandas")
    frame = result.to_pandas()
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["a", "b"]
    assert frame.loc[frame.index[0], "b"] == result["b"]["rmse"]["rmse"]


def test_grids_plots_and_reports_display_inline(tmp_path, tiny_data):
    from PIL import Image

    model = genvae.build("cvae", **TINY, folder=tmp_path / "m")
    genvae.train(model, data=tiny_data, steps=3, log_every=1, progress=False, report=True)  # as train --report
    assert "genvae report" in (tmp_path / "m" / "report.html").read_text()
    assert "report.html" in (tmp_path / "m" / ".genvae-manifest.json").read_text()
    grid = model.show_samples(6, nrow=3)
    png = grid._repr_png_()
    assert png.startswith(b"\x89PNG") and Image.open(__import__("io").BytesIO(png)).size == (3 * 18 + 2, 2 * 18 + 2)
    assert len(genvae.show(tiny_data)) == 40 and genvae.show(model.sample(2)).images.dtype == torch.uint8
    assert model.curves()._repr_png_().startswith(b"\x89PNG") and [r["step"] for r in model.history()] == [1, 2, 3]
    page = genvae.report(model, data=tiny_data)
    assert "<iframe" in page._repr_html_() and "genvae report" in page.html and "Reconstructions" in page.html
    page.save(tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text() == page.html
    with pytest.raises(GenvaeError, match="this model has none yet"):
        genvae.build("cvae", **TINY).curves()


def test_progress_lines_outside_a_notebook(tmp_path, tiny_data, capsys):
    genvae.build("cvae", **TINY, folder=tmp_path / "m")
    genvae.train(tmp_path / "m", data=tiny_data, steps=2, log_every=1, progress="text")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"training {tmp_path / 'm'} on tiny test images (40 images)")
    assert out[1].startswith("step 1/2  mse ") and out[2].startswith("step 2/2  mse ")
    genvae.train(tmp_path / "m", data=tiny_data, steps=3, resume=True, progress=False)
    assert capsys.readouterr().out == ""


GUIDE = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"


def guide_blocks() -> list[str]:
    """The ```python blocks of docs/python-api.md's user guide (above the generated reference), in order."""
    import re

    guide = GUIDE.read_text(encoding="utf-8").split("<!-- reference: generated")[0]  # tools/api_reference.py's MARKER
    return re.findall(r"```python\n(.*?)```", guide, flags=re.S)


def test_the_guide_shows_every_call_in_an_example():
    import inspect

    code = "\n".join(guide_blocks())
    calls = [n for n in genvae.__all__ if n[0].islower() and n not in ("build_model", "compose_spec", "load_model")]
    calls = [n for n in calls if n not in ("train_run", "__version__")]
    assert [n for n in calls if f"genvae.{n}(" not in code] == []
    for cls in (genvae.Model, genvae.Evaluation):
        methods = [n for n, v in vars(cls).items() if inspect.isfunction(v) and not n.startswith("_")]
        assert [n for n in methods if f".{n}(" not in code and n not in ("parameters_count",)] == [], cls


@pytest.mark.slow
def test_the_guides_examples_run(tmp_path):
    """Every ```python block of the guide, in order, in one fresh interpreter (the guide trains for real: ~1 min)."""
    import subprocess
    import sys

    script = tmp_path / "guide.py"
    script.write_text("\n".join(guide_blocks()), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs" / "compare.html").is_file() and (tmp_path / "runs" / "two-models.png").is_file()
