"""examples/notebooks/quickstart.ipynb, executed end to end in a real Jupyter kernel (nbclient + ipykernel, the
``notebook`` extra): no cell errs, and the grids, plots, tables, progress bars and the report are there as
notebook outputs (image/png, text/html).

The default lane runs it with 4 training steps per model (``GENVAE_QUICKSTART_STEPS``); the slow lane with 150, half
the notebook's own 300, so that every cell trains for real within the lane's budget."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="the notebook extra: pip install -e '.[notebook]'")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "notebooks" / "quickstart.ipynb"


def execute(tmp_path: Path, steps: int | None, timeout: int) -> object:
    """The notebook executed in a fresh python3 kernel with its working folder ``tmp_path``; the executed copy is
    written there too (for a look when a check fails)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = {"GENVAE_LOAD_PLUGINS": os.environ.get("GENVAE_LOAD_PLUGINS", "")}
    if steps is not None:
        env["GENVAE_QUICKSTART_STEPS"] = str(steps)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = nbclient.NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        )
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        nbformat.write(nb, tmp_path / "executed.ipynb")
    return nb


def check_outputs(nb, tmp_path: Path) -> None:
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), "a cell did not run"
    outputs = [o for c in code for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert errors == [], errors[0].get("ename", "") + ": " + errors[0].get("evalue", "") if errors else ""
    stderr = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr
    pngs = [o for o in outputs if "data" in o and "image/png" in o.data]
    # the data grid, curves, samples, reconstructions, the two priors' samples, the user's own matplotlib plot
    assert len(pngs) >= 6, f"{len(pngs)} images"
    html = [o.data["text/html"] for o in outputs if "data" in o and "text/html" in o.data]
    assert any("<progress" in h for h in html), "no progress bar"
    assert any("genvae report" in h and "<iframe" in h for h in html), "no report"
    assert any("vamp" in h and "normal" in h and "<table>" in h for h in html), "no comparison table"
    assert "decode(encode(x)) vs reconstruct(x): max difference" in "".join(
        o.get("text", "") for o in outputs if o.output_type == "stream"
    )
    for folder in ("quickstart-vamp", "quickstart-normal"):
        assert (tmp_path / "runs" / folder / "model.safetensors").is_file()


def test_the_quickstart_notebook_runs_in_a_kernel_with_a_few_steps(tmp_path):
    nb = execute(tmp_path, steps=4, timeout=180)
    check_outputs(nb, tmp_path)


@pytest.mark.slow
def test_the_quickstart_notebook_runs_in_a_kernel_and_trains_for_real(tmp_path):
    """Every cell as written, with 150 steps per model instead of the notebook's 300: the same code paths (epochs,
    checkpoints, resume) at half the cost, which keeps tools/check.py under 10 minutes on 2 cores."""
    nb = execute(tmp_path, steps=150, timeout=900)
    check_outputs(nb, tmp_path)
    history = (tmp_path / "runs" / "quickstart-vamp" / "metrics.jsonl").read_text().splitlines()
    assert len(history) > 5  # it trained for real: 150 steps, then the resumed 37


@pytest.mark.slow
def test_interrupting_the_kernel_stops_training_with_a_checkpoint_that_resumes(tmp_path):
    """A notebook's interrupt button (SIGINT to the kernel) mid-run: the cell ends with TrainingInterrupted, one
    line naming the step, and the checkpoint there resumes."""
    import time

    from jupyter_client.manager import start_new_kernel

    import genvae

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        build = "encoder__width=8, encoder__depth=2, decoder__width=8, decoder__depth=2, transform__latent_channels=2"
        msg_id = kc.execute(
            f"import genvae\nm = genvae.build('cvae', image_size=16, {build}, folder='m')\n"
            "genvae.train(m, steps=100000, log_every=1, progress='text')"
        )
        interrupted, error, deadline = False, None, time.monotonic() + 300
        while time.monotonic() < deadline:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream" and "step 3/" in content.get("text", "") and not interrupted:
                km.interrupt_kernel()
                interrupted = True
            elif kind == "error":
                error = content
            elif kind == "status" and content["execution_state"] == "idle":
                break
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert interrupted and error is not None
    assert error["ename"] == "TrainingInterrupted", error
    assert "stopped by SIGINT at step" in error["evalue"] and "resume=True" in error["evalue"]
    assert error["traceback"] == [f"TrainingInterrupted: {error['evalue']}"]  # one line, no traceback
    step = int(error["evalue"].split(" at step ")[1].split(";")[0])
    assert (tmp_path / "m" / "checkpoints" / f"step-{step:08d}").is_dir()
    result = genvae.train(tmp_path / "m", steps=step + 2, log_every=1, resume=True, progress=False)
    assert (result.start, result.step) == (step, step + 2)
