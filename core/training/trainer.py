"""The trainer: the loop over epochs and steps of one run, and where its results go.

It composes the seams of training, each readable alone: the step (:mod:`.step`: phases, updates,
backward passes), the batch feeder (:mod:`.feeder`), the metrics sink (:mod:`.metrics`: device-side
sums, log lines, divergence) and the run state (:mod:`.state`: checkpoints with every random stream,
``--resume``). What is left here is the order of things: a step, its bookkeeping, a log line or a
checkpoint when due, a sample grid at each epoch's end, and a stop at a step boundary on SIGINT or
SIGTERM. :func:`genvae.core.training.run.train_run` owns the life of a run around it (validation, the
folder's lock, restart and resume); a :class:`Trainer` only trains.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from genvae.core import checkpoint as ckpt
from genvae.core.data import ImageData
from genvae.core.decode import to_model_range
from genvae.core.distributed import Distributed, rank_seed
from genvae.core.errors import GenvaeError, Interrupted
from genvae.core.folder import ModelFolder, as_model_folder, lock_folder
from genvae.core.model import GenerativeModel
from genvae.core.precision import uses_channels_last
from genvae.core.registry import Registry
from genvae.core.spec import TrainConfig
from genvae.core.training.feeder import BatchFeeder
from genvae.core.training.metrics import MetricsSink, cut_metrics
from genvae.core.training.state import (
    ResumeState,
    apply_resume_state,
    read_resume_state,
    rng_by_rank,
    run_state,
)
from genvae.core.training.step import StepRunner, apply_freeze, lr_factor

SAMPLE_SEED = 1234  # sample grids use their own RNG stream, so they never shift training's
SAMPLE_GRID = 64  # images in the sample grid each epoch ends with


def sample_grid_budget(model: GenerativeModel, n: int = SAMPLE_GRID) -> dict[str, Any]:
    """What an epoch's sample grid is drawn beside (``genvae.core.inference.draw_samples`` keywords): the
    run's gradients and optimiser states, and the grid it writes. At large image sizes the grid, not the
    training batch, is a run's peak: it is drawn in chunks that fit the memory limit."""
    from genvae.core.budget import TRAINING_COPIES, grid_bytes

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "held": (TRAINING_COPIES - 1) * weights + grid_bytes(model, n),
        "command": "train's sample grid",
        "holding": f"the optimiser's state and the grid of {n} images",
    }


class TrainingStopped(GenvaeError):
    """SIGINT or SIGTERM stopped training at a step boundary; a consistent checkpoint was written."""

    def __init__(self, signum: int, step: int, folder: Path):
        self.signum, self.step = signum, step
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}; checkpoint written to {folder} (continue with --resume)")


class StopRequest:
    """SIGINT/SIGTERM ask training to stop at the next step boundary; a second signal aborts at once.

    Installed only while ``fit`` runs, and only in the main thread (signal handlers live there). A signal the
    process was started with ignored (SIGINT in a non-interactive shell's background job) stays ignored.
    """

    SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second signal: abort now, without writing anything
            raise Interrupted(signum)
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is signal.SIG_IGN:
                    continue  # started ignored (a shell's background job, nohup): keep it so, as Python does
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Trainer:
    """Trains a model in its folder: metrics, sample grids, checkpoints, exact resume."""

    #: uint8 data sets smaller than this (bytes) are moved to a GPU whole; larger ones stay on the host
    DEVICE_DATA_LIMIT = BatchFeeder.DEVICE_DATA_LIMIT

    def __init__(
        self,
        model: GenerativeModel,
        folder: str | Path | ModelFolder,
        data: ImageData,
        config: TrainConfig,
        device: torch.device,
        on_log: Callable[[dict], None] | None = None,
        dist: Distributed | None = None,
        registry: Registry | None = None,
    ):
        self.model = model.to(device)
        self.files = as_model_folder(folder)  # every write and deletion in the folder goes through it
        self.folder = self.files.path
        self.config = config
        self.device = device
        self.data = data  # the dataset (source, skipped files)
        self.dist = dist
        self.registry = registry
        self.to_model_range = to_model_range
        self.feeder = BatchFeeder(data, config, device, dist)
        if dist is not None:  # identical replicas: rank 0's weights and buffers everywhere, then each its own noise
            dist.broadcast_([*self.model.parameters(), *self.model.buffers()])
            if dist.rank:
                from genvae.core.training.run import seed_everything

                seed_everything(rank_seed(config.seed, dist.rank))
        #: the conv stacks' layout (train.channels_last resolved for this model); the batches follow it
        self.channels_last = uses_channels_last(config.channels_last, self.model)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.feeder.memory_format = torch.channels_last
        if config.compile:  # in place: the modules keep their names, so checkpoints are as without it
            for module in (self.model.encoder, self.model.transform, self.model.decoder):
                module.compile()
        self.model.posterior_samples = self.model.samples_needed(config)  # this run's k, as the step draws them
        self.steps = StepRunner(self.model, config, device, dist)
        self.sink = MetricsSink(self.files, config, device, dist, self.is_main)
        self.classifier = None  # train.classifier: mode coverage per epoch (classes.jsonl), opened before step one
        if config.classifier and self.is_main:
            from genvae.core.evaluation import open_feature_network
            from genvae.core.registry import get_registry

            self.classifier = open_feature_network(config.classifier, registry or get_registry(), device)
        self.sink.on_log = on_log
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.stop = StopRequest()

    # -- the seams, by the names a reader looks for ---------------------------------------------------
    @property
    def is_main(self) -> bool:
        """Whether this process writes the folder (the only process, or rank 0 of a torchrun launch)."""
        return self.dist is None or self.dist.is_main

    @property
    def phases(self):
        return self.steps.phases

    @property
    def updates(self):
        return self.steps.updates

    @property
    def retain(self):
        return self.steps.retain

    @property
    def scaler(self):
        return self.steps.scaler

    @property
    def images(self) -> torch.Tensor:
        return self.feeder.images

    @property
    def batch_size(self) -> int:
        """The global batch: all processes together."""
        return self.feeder.batch_size

    @property
    def batches_per_epoch(self) -> int:
        return self.feeder.batches_per_epoch

    @property
    def on_log(self) -> Callable[[dict], None] | None:
        """Called with each metrics line (a dict) as it is logged."""
        return self.sink.on_log

    @on_log.setter
    def on_log(self, value: Callable[[dict], None] | None) -> None:
        self.sink.on_log = value

    @property
    def running(self) -> dict[str, torch.Tensor]:
        """The open log window's sums, on the device."""
        return self.sink.running

    def train_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step on the batch ``x`` (see :class:`~genvae.core.training.step.StepRunner`)."""
        return self.steps.run(x, self.step, self.epoch)

    def total_steps(self) -> int:
        steps = self.config.epochs * self.batches_per_epoch
        return min(steps, self.config.max_steps) if self.config.max_steps else steps

    # -- before the first step ------------------------------------------------------------------------
    def check_outputs(self, start: int, extra: Sequence[str] = ()) -> None:
        """Before a run starting at step ``start`` touches anything: every file it may write (config, weights,
        metrics, the sample grids and checkpoints of its steps, its loggers' folders, and ``extra``) is absent or
        genvae's, reached through real folders; anything else is refused in one line. Rank 0's job."""
        if not self.is_main:
            return
        mf = self.files
        mf.check_outputs(
            [ckpt.CONFIG, ckpt.WEIGHTS, ckpt.METRICS, *((ckpt.CLASSES,) if self.classifier else ()), *extra]
        )
        total, per_epoch = self.total_steps(), max(self.batches_per_epoch, 1)
        epochs = range(start // per_epoch + 1, total // per_epoch + 1)
        for sub in (ckpt.SAMPLES, ckpt.CHECKPOINTS):
            if mf.lstat(sub) is not None:
                mf.subdir(sub)  # a link or a file in place of the folder is refused
        for entry in mf.entries(ckpt.SAMPLES):
            match = re.fullmatch(r"(epoch|step)-(\d+)\.png", entry.name)
            if match and int(match[2]) in (epochs if match[1] == "epoch" else range(start + 1, total + 1)):
                mf.check_outputs([f"{ckpt.SAMPLES}/{entry.name}"])
        for entry in mf.entries(ckpt.CHECKPOINTS):
            match = re.fullmatch(r"step-(\d+)", entry.name)
            if match and start < int(match[1]) <= total:
                mf.check_tree(f"{ckpt.CHECKPOINTS}/{entry.name}")
        for name in self.config.loggers:
            from genvae.core.loggers import LOGS

            mf.check_tree(f"{LOGS}/{name}")

    def prepare_folder(
        self, cut_metrics_to_step: bool = True, start: int | None = None, extra: Sequence[str] = ()
    ) -> None:
        """Before the first step: refuse outputs genvae may not write (:meth:`check_outputs`, from step
        ``start``, default the current step), remove orphaned temporary files, and cut ``metrics.jsonl`` back to
        the step training starts from (after :meth:`resume`). Rank 0's job."""
        if not self.is_main:
            return
        if self.files.prefix:
            self.files.subdir("")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.check_outputs(self.step if start is None else start, extra)
        self.files.remove_orphans()
        if cut_metrics_to_step:
            cut_metrics(self.files, self.step)
            cut_metrics(self.files, self.step, ckpt.CLASSES)

    # -- the loop -------------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train until ``epochs`` or ``max_steps``; returns the last logged metrics.

        Holds the folder's lock throughout. SIGINT/SIGTERM stop at the next step boundary with a
        checkpoint (:class:`TrainingStopped`); non-finite terms or weights stop with
        :class:`~genvae.core.checkpoint.DivergedError` before anything diverged is written.
        """
        with lock_folder(self.files) if self.is_main else nullcontext(), self.stop:
            return self._fit()

    def _stopping(self, synced: bool) -> bool:
        """Whether to stop at this step boundary. Under torchrun the processes agree first, at log and checkpoint
        steps only (a signal reaches them at different steps; a check every step would cost a collective)."""
        if self.dist is None:
            return self.stop.signum is not None
        if not synced:
            return False
        agreed = bool(self.dist.any(torch.tensor(self.stop.signum is not None, device=self.device)))
        if agreed and self.stop.signum is None:
            self.stop.signum = signal.SIGTERM  # another process was signalled: stop with it, checkpoint and all
        return agreed

    def _sync_buffers(self) -> None:
        """Average the replicas' floating-point buffers (BatchNorm running statistics) before they are read."""
        if self.dist is not None:
            self.dist.average_([b for b in self.model.buffers() if b.is_floating_point()])

    def _fit(self) -> dict[str, float]:
        if self.config.max_time and self.dist is not None:  # each process's clock would end it at another step
            raise GenvaeError("train.max_time stops a run of one process; under torchrun use --max-steps")
        self.prepare_folder()
        total = self.total_steps()
        last: dict[str, float] = {}
        self.model.train()
        frozen = apply_freeze(self.model, self.config)
        tick, tick_step = time.perf_counter(), self.step
        clock = time.process_time if self.config.time_clock == "process" else time.perf_counter
        deadline = clock() + self.config.max_time if self.config.max_time else None
        self.sink.checked_step = self.step
        stopping = False
        if self.is_main and self.config.loggers:
            from genvae.core.registry import get_registry

            self.sink.open_loggers(self.model.resolved_spec(self.config).to_dict(), self.registry or get_registry())
        try:
            while self.step < total and self.epoch < self.config.epochs and not stopping:
                self.steps.set_lr(lr_factor(self.config, self.epoch), self.step)
                for x in self.feeder.epoch(self.epoch, self.batch_in_epoch):
                    self.steps.warm_up(self.step)
                    terms = self.train_step(x)
                    self.batch_in_epoch += 1
                    self.step += 1
                    self.sink.accumulate(terms, self.step)
                    if deadline is not None and clock() >= deadline:  # the time budget is spent: end as at total
                        total = self.step
                    synced = False
                    if self.step % self.config.log_every == 0 or self.step == total:
                        now = time.perf_counter()
                        lr = self.config.lr * lr_factor(self.config, self.epoch)
                        last = self.sink.log(
                            self.step, self.epoch, lr, (self.step - tick_step) * self.batch_size / max(now - tick, 1e-9)
                        )
                        tick, tick_step, synced = time.perf_counter(), self.step, True
                    if self.step % self.config.checkpoint_every == 0 and self.step < total:
                        self.save_checkpoint()
                        synced = True
                    stopping = self._stopping(synced)
                    if stopping or self.step >= total:
                        break
                if self.batch_in_epoch >= self.batches_per_epoch:
                    self.save_samples(self.epoch + 1)
                    self.epoch += 1
                    self.batch_in_epoch = 0
        finally:  # the model leaves training as it came: a later run may train other parts
            self.feeder.close()
            self.sink.close_loggers()
            for p in frozen:
                p.requires_grad_(True)
        if stopping and self.stop.signum is not None:
            self.save_checkpoint()
            raise TrainingStopped(self.stop.signum, self.step, self.folder)
        if self.batch_in_epoch:  # stopped mid-epoch: still leave a grid of where training got to
            self.save_samples(self.epoch + 1, name=f"step-{self.step:08d}")
        self.save_checkpoint()
        return last

    def check_finite(self) -> None:
        """Raise :class:`DivergedError` naming every non-finite term of the open window (one host sync)."""
        self.sink.check_finite(self.step)

    # -- what a run leaves ----------------------------------------------------------------------------
    @torch.no_grad()
    def save_samples(self, epoch: int, n: int = SAMPLE_GRID, name: str | None = None) -> Path:
        """The grid of ``n`` prior samples (a seed of their own, so training's streams never shift) at an
        epoch's end, in ``samples/``; the loggers get it too."""
        from genvae.core.images import grid_writer
        from genvae.core.inference import draw_samples

        self._sync_buffers()
        rel = f"{ckpt.SAMPLES}/{name or f'epoch-{epoch:04d}'}.png"
        if not self.is_main:
            return self.folder / rel
        was_training = self.model.training
        self.model.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(SAMPLE_SEED)
            images = draw_samples(self.model, n, self.device, **sample_grid_budget(self.model, n))
        if self.classifier is not None:
            self.save_class_histogram(epoch)
        self.model.train(was_training)
        apply_freeze(self.model, self.config, grads=False)  # frozen modules back to eval mode
        self.files.subdir(ckpt.SAMPLES)
        self.files.write(rel, grid_writer(images, ".png"))
        for logger in self.sink.loggers:
            logger.log_image(rel.removesuffix(".png"), self.folder / rel, self.step)
        return self.folder / rel

    @torch.no_grad()
    def save_class_histogram(self, epoch: int) -> list[int]:
        """Mode coverage: the classifier's class counts over ``class_samples`` prior samples from a fixed z (the same
        every epoch), appended to ``classes.jsonl`` as ``{"epoch", "step", "counts"}``; the report draws them."""
        from genvae.core.evaluation import fit_to
        from genvae.core.inference import draw_samples
        from genvae.core.training.metrics import append_json_line

        assert self.classifier is not None
        n, counts = self.config.class_samples, None
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(SAMPLE_SEED + 1)
            done = 0
            while done < n:
                chunk = min(256, n - done)
                images = draw_samples(
                    self.model, chunk, self.device, dtype=torch.float32, **sample_grid_budget(self.model, chunk)
                )
                logits = self.classifier.logits(fit_to(images.to(self.device), self.classifier.image_shape))
                batch_counts = torch.bincount(logits.argmax(1), minlength=logits.shape[1]).cpu()
                counts = batch_counts if counts is None else counts + batch_counts
                done += chunk
        assert counts is not None
        listed = [int(c) for c in counts]
        append_json_line(self.files, ckpt.CLASSES, {"epoch": epoch, "step": self.step, "counts": listed})
        return listed

    def save_checkpoint(self) -> Path:
        """A checkpoint at a step boundary: weights, optimiser states, RNG streams and the open log window.

        Checks first that every loss term since the last check was finite (one host sync); a
        diverged run raises :class:`DivergedError` and writes nothing.
        """
        self.check_finite()
        self._sync_buffers()
        if self.dist is not None:  # the open log window as its mean over the processes (exact: sums are linear)
            self.dist.average_(list(self.sink.running.values()))
        ranks = rng_by_rank(self.dist, self.device)
        if not self.is_main:
            return ckpt.latest_checkpoint(self.files) or self.folder
        tensors, trainer = run_state(
            step=self.step,
            epoch=self.epoch,
            batch_in_epoch=self.batch_in_epoch,
            batch_size=self.batch_size,
            phases=self.phases,
            running=self.sink.running,
            running_count=self.sink.running_count,
            scaler=self.scaler,
            device=self.device,
            world_size=self.dist.world_size if self.dist is not None else 1,
            ranks=ranks,
        )
        path = ckpt.write_checkpoint(
            self.files, self.step, self.model.state_dict(), tensors, trainer, self.config.keep_checkpoints
        )
        ckpt.save_model(self.model, self.files, train=self.config)
        return path

    # -- resuming -------------------------------------------------------------------------------------
    def read_resume_state(self) -> ResumeState | None:
        """The latest checkpoint, read and checked completely against this run (model, phases, batch size, data);
        None when there is none. Writes nothing: a run calls it before it touches the folder."""
        return read_resume_state(
            self.files,
            self.model,
            self.phases,
            batch_size=self.batch_size,
            num_images=len(self.images),
            device=self.device,
        )

    def resume(self, state: ResumeState | None = None) -> int:
        """Continue from the latest checkpoint; returns its step (0 when there is none).

        ``state`` is what :meth:`read_resume_state` returned; it is read again when it is not given or is no longer
        the latest checkpoint. Applying a checked state cannot fail half-way."""
        if state is None or state.path != ckpt.latest_checkpoint(self.files):
            state = self.read_resume_state()
        if state is None:
            return 0
        apply_resume_state(
            state,
            self.model,
            self.phases,
            scaler=self.scaler,
            dist=self.dist,
            device=self.device,
            seed=self.config.seed,
        )
        from genvae.core.training.state import RUNNING

        trainer = state.trainer
        self.sink.running = {
            k: state.tensors[f"{RUNNING}{k}"].float().reshape(()).to(self.device)
            for k in trainer.get("running_terms", [])
        }
        self.sink.running_count = int(trainer.get("running_count", 0)) if self.sink.running else 0
        self.step, self.epoch, self.batch_in_epoch = trainer["step"], trainer["epoch"], trainer["batch_in_epoch"]
        return self.step
