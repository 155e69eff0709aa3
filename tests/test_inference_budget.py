"""The memory limit covers the batch each command runs: commands chunk to stay under it, or refuse in one line.

Model folders are built with the real CLI (width-1 conv VAEs, whose kernels' scratch dominates their memory);
what a command runs through the model is observed with a forward pre-hook on every module (real tensors only,
not the meta device the estimates run on), and its output is compared with the same command without a limit.
Two runs are real processes whose resident-set growth is measured against the limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner
from helpers import error_line
from PIL import Image
from torch import nn

from genvae.core import budget
from genvae.core.budget import (
    RUNTIME_BYTES,
    BudgetError,
    format_size,
    grid_bytes,
    image_bytes,
    inference_batch,
    inference_estimate,
)
from genvae.core.checkpoint import load_model, load_spec
from genvae.core.meta import conv_workspace
from genvae.testing import genvae_cli

W1 = ["--set", "encoder.width=1", "--set", "decoder.width=1", "--set", "train.batch_size=1"]
SHALLOW = ["--set", "encoder.depth=1", "--set", "decoder.depth=1"]


def invoke(*args, limit: str | None = None):
    env = {"GENVAE_MAX_MEMORY": limit} if limit is not None else {"GENVAE_MAX_MEMORY": "off"}
    return CliRunner().invoke(genvae_cli(), [str(a) for a in args], env=env)


@contextlib.contextmanager
def batches(kind: type[nn.Module] = nn.ConvTranspose2d, training: bool = False, size: int | None = None):
    """The batch sizes real (not meta) tensors enter every ``kind`` module with, in eval (or training) mode
    (only inputs ``size`` pixels wide, when given)."""
    seen: list[int] = []

    def hook(module, args):
        x = args[0] if args else None
        if (
            isinstance(module, kind)
            and torch.is_tensor(x)
            and not x.is_meta
            and module.training == training
            and (size is None or x.shape[-1] == size)
        ):
            seen.append(int(x.shape[0]))

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Model folders built by the real CLI: width-1 RGB at 64 px (depth 3), width-1 grey at 256 px (depth 1);
    a data folder of 16 images."""
    root = tmp_path_factory.mktemp("inference-budget")
    for name, size, extra in (("m64", 64, []), ("g256", 256, ["--channels", "1", *SHALLOW])):
        result = invoke("build", "--preset", "cvae", "--image-size", size, *W1, *extra, "-o", root / name)
        assert result.exit_code == 0, result.output
    data = root / "data"
    data.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(16):
        pixels = torch.randint(0, 256, (64, 64, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(data / f"{i:02d}.png")
    return root


def limit_for(folder, what: str, images: int, held: int = 0, program=None) -> str:
    """A limit under which ``images`` images of ``what`` fit beside ``held`` bytes, and no more."""
    est = inference_estimate(load_spec(folder), what, program=program)
    return str(est.batch_bytes(images) + held)


# -- the chunk size ---------------------------------------------------------------------------------


def four_mib_per_image(model, batch: int):
    """A program whose only memory is 4 MiB per image (1024 x 1024 float32), fixed part none."""
    return torch.zeros(batch, 1024, 1024)


def test_the_chunk_size_by_hand(folders):
    spec = load_spec(folders / "m64")
    est = inference_estimate(spec, "four-mib", program=four_mib_per_image)
    assert (est.fixed_bytes, est.per_image_bytes) == (0, 4 * 2**20)
    assert est.image_bytes == 5 * 2**20  # the kernels' margin: 5/4
    weights = sum(
        t.numel() * t.element_size()
        for t in (*load_model(folders / "m64").parameters(), *load_model(folders / "m64").buffers())
    )
    base = weights + RUNTIME_BYTES
    assert est.batch_bytes(0) == base and est.batch_bytes(3) == base + 15 * 2**20
    held = 7 * 2**20

    def chunk(requested: int, fit: int) -> int:
        return inference_batch(
            spec, requested, what="four-mib", program=four_mib_per_image, held=held, limit=base + held + fit * 5 * 2**20
        )

    assert chunk(10, 23) == 10  # all fit
    assert chunk(23, 23) == 23
    assert chunk(64, 23) == 16  # cut: a multiple of 8
    assert chunk(64, 7) == 4  # ... of 4 when fewer than 8 fit
    assert chunk(64, 3) == 2
    assert chunk(64, 1) == 1
    with pytest.raises(BudgetError) as info:
        inference_batch(
            spec,
            64,
            what="four-mib",
            program=four_mib_per_image,
            held=held,
            holding="the grid",
            command="sample",
            limit=base + held + 5 * 2**20 - 1,
        )
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        f"sample needs about {format_size(base + 5 * 2**20 + held)} even one image at a time "
        f"({format_size(base + 5 * 2**20)} to run the model on one 3x64x64 image, "
        f"{format_size(held)} for the grid), over the limit of "
    )
    assert message.endswith("lower the sizes, or raise the limit with --max-memory / GENVAE_MAX_MEMORY")


def test_off_sizes_nothing(folders, monkeypatch):
    monkeypatch.setenv("GENVAE_MAX_MEMORY", "off")
    assert inference_batch(load_spec(folders / "m64"), 10**9, what="never-measured", program=print) == 10**9


def test_a_convolutions_scratch_by_hand():
    x = torch.zeros(2, 8, 512, 512, device="meta")
    w = torch.zeros(16, 8, 3, 3, device="meta")
    y = torch.nn.functional.conv2d(x, w, padding=1)
    args = (x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    conv = torch.ops.aten.convolution.default
    # PyTorch's own kernel: im2col, 8 x 3 x 3 values a pixel. Only this flag changes (mkldnn.flags() would set
    # allow_tf32 too); ignore[assignment]: torch's stub types the attribute as the ContextProp that sets it
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    try:
        assert conv_workspace(conv, args, y) == 2 * 8 * 9 * 512 * 512 * 4
    finally:
        torch.backends.mkldnn.enabled = enabled
    if torch.backends.mkldnn.is_available():  # oneDNN: the 16 output channels in one 16-channel block
        assert conv_workspace(conv, args, y) == 2 * 16 * 512 * 512 * 4
    grey = (x[:, :1], w[:1, :1], None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)  # 1 channel: 16 in the block
    assert conv_workspace(conv, grey, y[:, :1]) == 2 * 16 * 512 * 512 * 4
    assert conv_workspace(torch.ops.aten.add.Tensor, (x, x), x) == 0


# -- sample ---------------------------------------------------------------------------------------------

PROCESS = r"""
import json, sys
from genvae.cli.main import add_plugin_commands, cli
from genvae.core.budget import estimate
from genvae.core.compose import compose_spec
import PIL.PngImagePlugin  # noqa: F401 - what writing a grid imports

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

add_plugin_commands()
estimate(compose_spec(preset="cvae", sets=["image_size=8", "encoder.depth=1", "decoder.depth=1"]))  # meta imports
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak resident set starts again here: the interpreter and its imports are the baseline
base, code = status("VmRSS:"), 0
try:
    cli.main(sys.argv[1:], prog_name="genvae")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"growth": status("VmHWM:") - base, "code": code}), file=sys.stderr)
"""


def genvae_process(*args, limit: str, timeout: float = 120) -> tuple[dict, str]:
    """``genvae ARGS`` in a process of its own; (its exit code and resident-set growth over the interpreter's
    baseline, its stderr without that record)."""
    env = {**os.environ, "GENVAE_MAX_MEMORY": limit}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROCESS), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    *lines, record = out.stderr.strip().splitlines()
    return json.loads(record), "\n".join(lines)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.slow
def test_sample_64_in_a_process_stays_under_the_limit(folders, tmp_path):
    # grey 256 px, width 1: the training batch (1 image) and the build's dry run (2) fit 180 MB; 64 images at once
    # take over 300 MB on top of the interpreter (a 16-channel block of 256 x 256 floats each, in the last conv)
    folder = folders / "g256"
    spec = load_spec(folder)
    limit = 180 * 2**20
    assert budget.estimate(spec).training_bytes < limit
    assert inference_estimate(spec, "generate").batch_bytes(64) > 2 * limit
    record, err = genvae_process("sample", folder, "-n", 64, "-o", tmp_path / "s.png", limit=str(limit))
    assert record["code"] == 0, err
    assert record["growth"] < limit, format_size(record["growth"])
    with Image.open(tmp_path / "s.png") as img:
        assert img.size == (8 * 258 + 2, 8 * 258 + 2) and img.mode == "L"  # 64 images, 8 x 8


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.slow
def test_sample_10000_at_a_large_size_is_refused_before_any_work(folders, tmp_path):
    record, err = genvae_process(
        "sample", folders / "g256", "-n", 10_000, "-o", tmp_path / "s.png", limit="1G", timeout=60
    )
    assert record["code"] == 1
    line = error_line(err)
    assert re.match(
        r"Error: sample needs about [\d.]+ GB even one image at a time \(.* to run the model on one "
        r"1x256x256 image, [\d.]+ GB for the 10,000 images and the grid it writes\), over the limit of "
        r"1\.0 GB \(GENVAE_MAX_MEMORY\); lower the sizes",
        line,
    ), line
    assert record["growth"] < 64 * 2**20, format_size(record["growth"])  # the model ran on 2 images: its dry run
    assert not (tmp_path / "s.png").exists()


def test_sample_in_chunks_writes_the_same_grid(folders, tmp_path):
    folder = folders / "m64"
    limit = limit_for(folder, "generate", 8, held=grid_bytes(load_spec(folder), 64) + 2**20)
    with batches() as seen:
        result = invoke("sample", folder, "-n", 64, "-o", tmp_path / "chunked.png", limit=limit)
    assert result.exit_code == 0, result.output
    assert seen and max(seen) < 64 and set(seen) - {2} == {8}, seen  # the dry run's 2, then chunks of 8
    assert invoke("sample", folder, "-n", 64, "-o", tmp_path / "whole.png").exit_code == 0
    assert (tmp_path / "chunked.png").read_bytes() == (tmp_path / "whole.png").read_bytes()


# -- reconstruct, evaluate, report ------------------------------------------------------------------------


def test_reconstruct_in_chunks(folders, tmp_path):
    folder, data = folders / "m64", folders / "data"
    spec = load_spec(folder)
    limit = limit_for(folder, "reconstruct", 4, held=image_bytes(spec, 16, 6) + grid_bytes(spec, 32))
    with batches(nn.Conv2d) as seen:
        chunked = invoke("reconstruct", folder, "--data", data, "-n", 16, "-o", tmp_path / "c.png", limit=limit)
    assert chunked.exit_code == 0, chunked.output
    assert max(seen) < 16, seen
    whole = invoke("reconstruct", folder, "--data", data, "-n", 16, "-o", tmp_path / "w.png")
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "w.png").read_bytes()
    assert chunked.output.replace("c.png", "w.png") == whole.output  # the same pixel MSE


def test_evaluate_in_chunks(folders, tmp_path):
    folder, data = folders / "m64", folders / "data"
    spec = load_spec(folder)
    limit = limit_for(folder, "reconstruct", 4, held=image_bytes(spec, 16, 13))
    args = ("evaluate", folder, "--data", data, "--metrics", "rmse", "--batch-size", 16)
    with batches(nn.Conv2d) as seen:
        chunked = invoke(*args, limit=limit)
    assert chunked.exit_code == 0, chunked.output
    assert max(seen) < 16, seen
    whole = invoke(*args)
    assert json.loads(chunked.stdout)["models"] == json.loads(whole.stdout)["models"]
    refused = invoke(*args, limit=str(inference_estimate(spec, "reconstruct").batch_bytes(2)))  # loads; no room
    assert refused.exit_code == 1
    assert "evaluate needs about" in error_line(refused.stderr)


def test_report_draws_its_reconstructions_in_chunks(folders, tmp_path):
    folder, data = folders / "m64", folders / "data"
    spec = load_spec(folder)
    limit = limit_for(folder, "reconstruct", 4, held=image_bytes(spec, 32) + grid_bytes(spec, 32))
    with batches(nn.Conv2d) as seen:
        chunked = invoke("report", folder, "--data", data, "-o", tmp_path / "c.html", limit=limit)
    assert chunked.exit_code == 0, chunked.output
    assert max(seen) < 16, seen
    assert invoke("report", folder, "--data", data, "-o", tmp_path / "w.html").exit_code == 0
    page = (tmp_path / "c.html").read_text()
    assert "Reconstructions (rows: originals, reconstructions)" in page
    assert page == (tmp_path / "w.html").read_text()


# -- complete ---------------------------------------------------------------------------------------------


def test_complete_in_chunks(folders, tmp_path):
    from genvae.plugins.completion import completion_program

    folder, data = folders / "m64", folders / "data"
    spec = load_spec(folder)
    held = image_bytes(spec, 7 * 8) + grid_bytes(spec, 24) + 2**20
    limit = limit_for(folder, "complete", 2 * 2, held=held, program=completion_program)  # 2 images x 2 starts
    args = ("complete", folder, "--data", data, "-n", 8, "--starts", 2, "--steps", 3)
    with batches() as seen:
        chunked = invoke(*args, "-o", tmp_path / "c.png", limit=limit)
    assert chunked.exit_code == 0, chunked.output
    assert max(seen) <= 4 < 16, seen  # at most 2 images x 2 starts at once, not 8 x 2
    assert invoke(*args, "-o", tmp_path / "w.png").exit_code == 0
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "w.png").read_bytes()


# -- train --------------------------------------------------------------------------------------------------


def test_train_draws_its_epoch_grid_in_chunks(folders, tmp_path):
    import shutil

    from genvae.core.budget import TRAINING_COPIES

    spec = load_spec(folders / "m64")
    weights = sum(p.numel() * p.element_size() for p in load_model(folders / "m64").parameters())
    held = (TRAINING_COPIES - 1) * weights + grid_bytes(spec, 64) + image_bytes(spec, 64, 1) + 2**20
    limit = limit_for(folders / "m64", "generate", 8, held=held)
    grids = {}
    for name, lim in (("chunked", limit), ("whole", None)):
        shutil.copytree(folders / "m64", tmp_path / name)
        with batches() as seen:
            result = invoke(
                "train",
                tmp_path / name,
                "--data",
                folders / "data",
                "--epochs",
                1,
                "--batch-size",
                8,
                "--quiet",
                limit=lim,
            )
        assert result.exit_code == 0, result.output
        grids[name] = (tmp_path / name / "samples" / "epoch-0001.png").read_bytes()
        if name == "chunked":
            assert max(seen) < 64 and 8 in seen, seen  # the grid's 64 images, 8 at a time
    assert grids["chunked"] == grids["whole"]


def test_train_refuses_an_epoch_grid_that_cannot_fit_before_any_step(folders, tmp_path):
    import shutil

    shutil.copytree(folders / "g256", tmp_path / "g")
    spec = load_spec(tmp_path / "g")
    dry_run = budget._dry_run_bytes(spec, None)
    assert dry_run is not None  # it runs on meta
    limit = max(budget.estimate(spec).training_bytes, dry_run) + 2**20
    assert limit < inference_estimate(spec, "generate").batch_bytes(1) + grid_bytes(spec, 64)
    result = invoke("train", tmp_path / "g", "--data", folders / "data", "--epochs", 1, limit=str(limit))
    assert result.exit_code == 1
    assert "train's sample grid needs about" in error_line(result.stderr)
    assert not (tmp_path / "g" / "checkpoints").exists() and not (tmp_path / "g" / "metrics.jsonl").exists()


# -- edit, neighbours -------------------------------------------------------------------------------------


def test_edit_in_chunks(tmp_path):
    from genvae.plugins.laplacian.editing import edit_program

    folder = tmp_path / "lap"
    result = invoke("build", "--preset", "lapcvae-small", "--set", "train.batch_size=1", "-o", folder)
    assert result.exit_code == 0, result.output  # 32 px grey, 3 levels, m-net prior
    g = torch.Generator().manual_seed(0)
    Image.fromarray(torch.randint(0, 256, (32, 32), generator=g, dtype=torch.uint8).numpy()).save(tmp_path / "in.png")
    mask = torch.zeros(32, 32, dtype=torch.uint8)
    mask[16:, 8:24] = 255
    Image.fromarray(mask.numpy()).save(tmp_path / "mask.png")
    spec = load_spec(folder)
    # what loading the model needs (training its batch of 1, the dry run) leaves room for a few variants at once
    dry_run = budget._dry_run_bytes(spec, None)
    assert dry_run is not None  # it runs on meta
    limit = max(budget.estimate(spec).training_bytes, dry_run) + 2**16
    for blend in ("alpha", "poisson"):
        est = inference_estimate(spec, f"edit-{blend}", program=edit_program(blend))
        assert est.batch_bytes(64) > limit
        args = ("edit", folder, tmp_path / "in.png", "--mask", tmp_path / "mask.png", "-n", 64, "--blend", blend)
        with batches(nn.Conv2d, size=32) as seen:  # the full-size level: the input's encoding, the variants' decoding
            chunked = invoke(*args, "-o", tmp_path / f"c-{blend}", limit=str(limit))
        assert chunked.exit_code == 0, chunked.output
        assert 1 < max(seen) < 64, (blend, seen)
        assert invoke(*args, "-o", tmp_path / f"w-{blend}").exit_code == 0
        for name in ("samples", "composites", "edit-63"):
            assert (tmp_path / f"c-{blend}" / f"{name}.png").read_bytes() == (
                tmp_path / f"w-{blend}" / f"{name}.png"
            ).read_bytes(), (blend, name)


def test_poisson_blend_of_an_image_does_not_depend_on_its_batch():
    from genvae.plugins.laplacian.editing import poisson_blend

    g = torch.Generator().manual_seed(0)
    source, target = torch.rand(4, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g)
    source[1] = target[0] + 0.25  # a channel that converges at once, beside ones that take many steps
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 3:13, 2:11] = 1
    whole = poisson_blend(source, target, mask)
    assert all(torch.equal(whole[i : i + 1], poisson_blend(source[i : i + 1], target, mask)) for i in range(4))


def test_neighbours_in_chunks(folders, tmp_path):
    from genvae.plugins.neighbours import nearest_bytes

    folder, data = folders / "m64", folders / "data"
    spec = load_spec(folder)
    held = nearest_bytes(16, spec.image_shape, 16) + grid_bytes(spec, 16 * 4) + image_bytes(spec, 16 * 5, 1)
    limit = limit_for(folder, "generate", 4, held=held + 2**20)
    args = ("neighbours", folder, "--data", data, "-n", 16, "-k", 3)
    with batches() as seen:
        chunked = invoke(*args, "-o", tmp_path / "c.png", limit=limit)
    assert chunked.exit_code == 0, chunked.output
    assert max(seen) < 16, seen
    whole = invoke(*args, "-o", tmp_path / "w.png")
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "w.png").read_bytes()
    assert chunked.output.replace("c.png", "w.png") == whole.output


def test_loading_a_model_to_run_it_never_asks_for_its_training_memory(folders, tmp_path):
    """A load sizes the weights and the build's dry run; only training sizes the training footprint. Under a
    limit between the two, sample runs (in chunks) and train refuses in one line before any step."""
    from genvae.core.budget import check_load, estimate

    spec = load_spec(folders / "m64")
    big = spec.with_train(batch_size=512)  # a large training batch in the folder's config
    folder = tmp_path / "m"
    assert (
        invoke(
            "build", "--preset", "cvae", "--image-size", 64, *W1, "--set", "train.batch_size=512", "-o", folder
        ).exit_code
        == 0
    )
    training, loading = estimate(big).training_bytes, check_load(big, limit="1T")
    assert loading is not None and loading < training
    limit = str((loading + training) // 2)
    sampled = invoke("sample", folder, "-n", "8", "-o", tmp_path / "s.png", limit=limit)
    assert sampled.exit_code == 0, sampled.output
    trained = invoke("train", folder, "--max-steps", "1", "--data", folders / "data", limit=limit)
    assert trained.exit_code == 1 and "to train" in error_line(trained.output)
    assert not (folder / "checkpoints").exists()
