"""A training run as a core service: :func:`train_run` owns one run's life, whoever starts it.

``genvae train``, the Laplacian plugin's staged training and the Python API all call it; the command
line only parses its options and prints. A run goes through the same stages every time:

1. **validate**: the model folder, the settings, the data, the memory budget and, with ``resume``, the
   whole checkpoint are checked before anything in the folder is touched;
2. **lock** the folder (one writer at a time), then check every output the run will write (no link,
   nothing genvae did not write), and only then **restart** (delete genvae's old checkpoints, metrics
   and grids) or **resume** (apply the checked state);
3. **save** the run's settings in ``config.json`` and **train** (:class:`~.trainer.Trainer`): metrics,
   grids and checkpoints as it goes, a final checkpoint and ``model.safetensors`` at the end;
4. **release** the lock and the process group, however the run ended.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import attrs
import torch

from genvae.core import checkpoint as ckpt
from genvae.core.distributed import init_distributed, process_device, shutdown
from genvae.core.errors import GenvaeError, shorten
from genvae.core.folder import ModelFolder, as_model_folder, check_not_in_use, lock_folder
from genvae.core.model import GenerativeModel
from genvae.core.options import MAX_SEED
from genvae.core.registry import Registry
from genvae.core.training.metrics import append_json_line
from genvae.core.training.trainer import SAMPLE_GRID, Trainer, sample_grid_budget


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (N an existing device) -> a torch device, or a one-line error."""
    shown = name if len(name) <= 40 else name[:37] + "..."
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = re.fullmatch(r"cuda(?::(\d{1,4}))?", name)
    if name != "cpu" and match is None:
        raise GenvaeError(f"--device {shown!r}: expected auto, cpu, cuda or cuda:N")
    if match is not None:
        if not torch.cuda.is_available():
            raise GenvaeError(f"--device {shown}: no CUDA device is available here; use --device cpu or auto")
        index = int(match.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise GenvaeError(
                f"--device {shown}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's random streams; a seed outside 0..2**64-1 is refused (torch would reduce it)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise GenvaeError(f"seed {shorten(seed, 30)}: a seed is an integer in 0..2**64-1")
    random.seed(seed)
    torch.manual_seed(seed)


def prepare_training(
    model: GenerativeModel,
    folder: str | Path | ModelFolder,
    *,
    data: Any = None,
    data_root: str | None = None,
    download: bool = False,
    overrides: dict | None = None,
    sets: Sequence[str] = (),
    device: str = "auto",
    registry: Registry | None = None,
) -> Trainer:
    """A :class:`Trainer` for ``model`` writing into ``folder``, everything checked and nothing written yet: the
    model's training settings with ``overrides`` (TrainConfig fields; a value of None is an option not given, which
    keeps the model's setting) and ``sets`` (``train.OPTION=VALUE``) applied and sized against the memory budget,
    every random stream seeded, the data loaded at the model's image size. The run's settings are the trainer's
    (``trainer.config``); the model's own spec is left as it is.
    """
    from genvae.core.budget import check_budget
    from genvae.core.compose import apply_sets
    from genvae.core.data import load_data
    from genvae.core.inference import sample_chunks
    from genvae.core.registry import get_registry

    registry = registry or get_registry()
    bad = [s for s in sets if not s.startswith("train.")]
    if bad:
        raise GenvaeError(
            f"train --set '{bad[0][:60]}': only train.OPTION=VALUE here; change a model with genvae build"
        )
    dev = process_device(resolve_device(device))
    dist = init_distributed(dev)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    spec = apply_sets(model.spec.with_train(**given), sets)
    check_budget(spec, registry)  # e.g. a larger batch: config.json must stay loadable after this run
    for name in spec.train.loggers:  # an unknown logger is refused before anything is loaded or written
        registry.get("logger", name)
    sample_chunks(model, SAMPLE_GRID, **sample_grid_budget(model))  # each epoch's grid: refused now, not then
    seed_everything(spec.train.seed)
    images = load_data(
        data,
        image_size=spec.image_size,
        channels=spec.channels,
        split="train",
        root=data_root,
        download=download,
        registry=registry,
    )
    return Trainer(model, folder, images, spec.train, dev, dist=dist, registry=registry)


@attrs.frozen
class RunStart:
    """What a run is about to do, handed to ``on_start`` once everything is checked and before the first step."""

    folder: Path
    trainer: Trainer
    start: int  # the step it starts from (0, or the checkpoint's with resume)
    total: int  # the step it ends at
    resumed: bool  # whether a checkpoint was resumed (False also when resume found none)

    @property
    def updates_text(self) -> str:
        """A step's updates as ``mi@posterior, model@prior:fresh, discriminator`` (the branch only where not all)."""
        return ", ".join(
            u.phase.name + (f"@{u.branch}" if u.branch != "all" else "") + (":fresh" if u.fresh else "")
            for u in self.trainer.updates
        )

    @property
    def header(self) -> str:
        """The run's first line, as the command line and the Python API print it: folder, data, device (and
        processes under torchrun), steps, batch and the step's updates."""
        trainer, images = self.trainer, self.trainer.data
        processes = f" | {trainer.dist.world_size} processes ({trainer.dist.backend})" if trainer.dist else ""
        return (
            f"training {self.folder} on {images.source} ({len(images)} images) | {trainer.device}{processes} "
            f"| {self.compute_text} | step {self.start} -> {self.total} | batch {trainer.batch_size} "
            f"| updates: {self.updates_text}"
        )

    @property
    def compute_text(self) -> str:
        return compute_text(self.trainer)


def compute_text(trainer: Trainer) -> str:
    """How a run's networks compute, for its first line and the report's commands: ``bf16 autocast (--amp auto:
    the CPU has AVX512-BF16), channels-last, compile off``."""
    layout = "channels-last" if trainer.channels_last else "contiguous layout"
    return f"{trainer.model.precision.reason}, {layout}, compile {'on' if trainer.config.compile else 'off'}"


@attrs.frozen
class RunResult:
    """How a run ended (it raised otherwise): the step it started from and reached, and its last metrics line."""

    folder: Path
    start: int
    step: int
    metrics: dict[str, Any]
    is_main: bool  # whether this process wrote the folder (under torchrun only rank 0 does)


def train_run(
    folder: str | Path | ModelFolder,
    *,
    model: GenerativeModel | None = None,
    data: Any = None,
    data_root: str | None = None,
    download: bool = False,
    overrides: dict | None = None,
    sets: Sequence[str] = (),
    device: str = "auto",
    resume: bool = False,
    restart: bool = False,
    fresh: bool = False,
    command: dict | None = None,
    extra_outputs: Sequence[str] = (),
    registry: Registry | None = None,
    on_start: Callable[[RunStart], None] | None = None,
    on_log: Callable[[dict], None] | None = None,
) -> RunResult:
    """Train the model folder ``folder`` for one run: validate, lock, restart or resume, train, save, release.

    ``model`` trains an already loaded model (its weights are not read from the folder: a stage of a larger
    run); otherwise the folder's own model is loaded. ``resume`` continues from the latest checkpoint
    (checked completely first); ``restart`` deletes genvae's checkpoints, metrics and grids first; ``fresh``
    empties the folder of every file genvae wrote there (a stage folder run again). A folder with a
    checkpoint needs one of them. ``command`` (``{"command": ..., "time": ...}``) is appended to the folder's
    ``commands.jsonl``; ``extra_outputs`` are files the caller will write into the folder afterwards (a report),
    checked with the run's own. ``on_start`` receives a :class:`RunStart` before the first step, ``on_log``
    every metrics line. Raises :class:`~genvae.core.errors.GenvaeError` (one line) for anything wrong, before
    anything is written.
    """
    from genvae.core.checkpoint import CHECKPOINTS, CLASSES, HISTORY, METRICS, SAMPLES, latest_checkpoint, load_model

    mf = as_model_folder(folder)
    if resume and restart:
        raise GenvaeError("--resume and --restart exclude each other")
    if fresh and (resume or restart):
        raise GenvaeError("a fresh run (a stage folder emptied first) neither resumes nor restarts")
    check_not_in_use(mf)  # a folder another run is training says so, not what its files look like meanwhile
    if fresh:
        mf.check_can_build_into()
    last = latest_checkpoint(mf)
    if last is not None and not (resume or restart or fresh):
        raise GenvaeError(
            f"{mf.path} has a checkpoint at {last.name}; pass --resume to continue it or --restart "
            "to discard checkpoints and metrics"
        )
    if model is None:
        model = load_model(mf.path, device="cpu", registry=registry)
    trainer = prepare_training(
        model,
        mf,
        data=data,
        data_root=data_root,
        download=download,
        overrides=overrides,
        sets=sets,
        device=device,
        registry=registry,
    )
    state = trainer.read_resume_state() if resume else None  # the whole checkpoint, checked before anything
    trainer.on_log = on_log
    main = trainer.is_main  # under torchrun only rank 0 writes
    try:
        with lock_folder(mf) if main else nullcontext():
            start = trainer.resume(state) if resume else 0
            outputs = [*((HISTORY,) if command is not None else ()), *extra_outputs]
            # every output of the run is checked (links, files genvae did not write) before anything is deleted
            trainer.prepare_folder(cut_metrics_to_step=False, start=start, extra=outputs)
            if main and restart:
                mf.remove(
                    f for f in mf.files() if f in (METRICS, CLASSES) or f.startswith((f"{CHECKPOINTS}/", f"{SAMPLES}/"))
                )
            if main and fresh:
                mf.remove_all()
            if trainer.dist is not None:
                trainer.dist.barrier()  # rank 0 has prepared the folder before any process goes on
            if main:
                ckpt.save_model(trainer.model, mf, train=trainer.config)  # the run's settings, in config.json
                if command is not None:  # with how it computes (the report shows it under the command)
                    append_json_line(mf, HISTORY, {**command, "compute": compute_text(trainer)})
            total = trainer.total_steps()
            if on_start is not None:
                on_start(RunStart(mf.path, trainer, start, total, resume and start > 0))
            if start >= total:
                return RunResult(mf.path, start, start, {}, main)
            metrics = trainer.fit()
    finally:
        shutdown()  # leave the process group (a no-op for one process)
    return RunResult(mf.path, start, trainer.step, metrics, main)
