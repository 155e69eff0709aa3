"""The training loop: one forward pass per step, then the step's updates, each with its phase's optimiser.

A step's updates follow ``train.schedule``: by default (``one-pass``) one update per phase, in the
losses' phase order, on one forward pass; a schedule may instead step a phase several times on
different branches (posterior, prior), recomputing a branch with the current weights first
(``fresh``), as the crVAE authors' code does. Everything that depends on the plugins (phases,
updates, parameter groups, learning rates, gradient clamps) is resolved once in
``Trainer.__init__``; a step does the same fixed work whatever the number of plugins, and it never
waits for the device: loss values are accumulated on the device and read back only every
``log_every`` steps.
"""

from __future__ import annotations

import json
import math
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genvae.core import checkpoint as ckpt
from genvae.core.components import Pass
from genvae.core.distributed import Distributed, init_distributed, process_device, rank_seed
from genvae.core.errors import CheckpointError, GenvaeError, Interrupted, shorten
from genvae.core.folder import ModelFolder, as_model_folder, lock_folder
from genvae.core.model import MODEL_PHASE, GenerativeModel
from genvae.core.options import MAX_SEED
from genvae.core.registry import Registry
from genvae.core.resume import RANK_RNG, RUNNING, ResumeState, read_resume_state
from genvae.core.resume import validate_trainer_state as validate_trainer_state  # (its home before genvae.core.resume)
from genvae.core.spec import TrainConfig

SAMPLE_SEED = 1234  # sample grids use their own RNG stream, so they never shift training's
SAMPLE_GRID = 64  # images in the sample grid each epoch ends with


def sample_grid_budget(model: GenerativeModel, n: int = SAMPLE_GRID) -> dict[str, Any]:
    """What an epoch's sample grid is drawn beside (``genvae.core.inference.draw_samples`` keywords): the
    run's gradients and optimiser states, and the grid it writes. At large image sizes the grid, not the
    training batch, is a run's peak: it is drawn in chunks that fit the memory limit."""
    from genvae.core.budget import TRAINING_COPIES, grid_bytes

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"held": (TRAINING_COPIES - 1) * weights + grid_bytes(model, n), "command": "train's sample grid",
            "holding": f"the optimiser's state and the grid of {n} images"}


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
            raise GenvaeError(f"--device {shown}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's random streams; a seed outside 0..2**64-1 is refused (torch would reduce it)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise GenvaeError(f"seed {shorten(seed, 30)}: a seed is an integer in 0..2**64-1")
    random.seed(seed)
    torch.manual_seed(seed)


class Update:
    """One update of a step: a phase's optimiser stepped on the terms of one branch."""

    __slots__ = ("phase", "branch", "fresh", "repeated")

    def __init__(self, phase: Phase, branch: str, fresh: bool, repeated: bool):
        self.phase, self.branch, self.fresh, self.repeated = phase, branch, fresh, repeated


def graph_nodes(total: torch.Tensor) -> set:
    """The autograd nodes a backward pass from ``total`` goes through, the parameters' accumulators left out
    (every update may reach those; they keep nothing that a backward pass frees)."""
    seen: set = set()
    stack = [total.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return {node for node in seen if type(node).__name__ != "AccumulateGrad"}


def shared_graphs(graphs: list[set]) -> list[bool]:
    """For each update's graph: does a later update of the step go through any of it again (so its backward pass
    must keep it)?"""
    later: set = set()
    keep = [False] * len(graphs)
    for i in range(len(graphs) - 1, -1, -1):
        keep[i] = not graphs[i].isdisjoint(later)
        later |= graphs[i]
    return keep


def plan_updates(model: GenerativeModel, config: TrainConfig, phases: list[Phase]) -> list[Update]:
    """The step's updates from ``config.schedule`` (checked against the model), for the phases that have
    parameters to train."""
    by_name = {p.name: p for p in phases}
    plan = [u for u in model.updates(config.schedule) if u["phase"] in by_name]
    counts = Counter(u["phase"] for u in plan)
    return [Update(by_name[u["phase"]], u["branch"], u["fresh"], counts[u["phase"]] > 1) for u in plan]


def _merge_logged(logged: list[tuple[Update, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """One step's logged values: a name two updates both produce (``mi.q``, ``model/total``) is logged once per
    update as ``name@branch`` (``mi.q@prior``, ``model@prior/total``); every other name stays as it is."""
    seen: set[str] = set()
    twice: set[str] = set()
    for _, record in logged:
        for key in record:
            (twice if key in seen else seen).add(key)
    merged: dict[str, torch.Tensor] = {}
    for update, record in logged:
        for key, value in record.items():
            if key in twice:
                head, slash, tail = key.partition("/")
                key = f"{head}@{update.branch}{slash}{tail}"
            merged[key] = value
    return merged


class Phase:
    """One optimisation phase: its optimiser, parameter groups with base learning rates, clamps."""

    def __init__(self, name: str, optimizer: torch.optim.Optimizer, clamps: list[tuple[list[nn.Parameter], float]],
                 params: list[nn.Parameter]):
        self.name = name
        self.optimizer = optimizer
        self.clamps = clamps
        self.params = params
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]


def _prefixed(model: GenerativeModel, method: str) -> dict[str, float]:
    """Component defaults (``lr_multipliers``/``grad_clamps``) keyed by full module path."""
    out: dict[str, float] = {}
    for prefix, comp in model.components().items():
        path = prefix.replace("loss.", "losses.")
        for sub, value in getattr(comp, method)().items():
            out[f"{path}.{sub}" if sub else path] = value
    return out


def _match(name: str, table: dict[str, float]) -> float | None:
    best = None
    for prefix, value in table.items():
        if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, value)
    return None if best is None else best[1]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def is_frozen(name: str, config: TrainConfig) -> bool:
    """Whether a parameter or module path is held fixed by ``freeze``/``train_only``."""
    if any(_under(name, p) for p in config.freeze):
        return True
    if config.train_only:
        trained = any(_under(name, p) for p in config.train_only)
        ancestor = any(p.startswith(name + ".") for p in config.train_only) or name == ""
        return not (trained or ancestor)
    return False


def apply_freeze(model: GenerativeModel, config: TrainConfig, grads: bool = True) -> list[nn.Parameter]:
    """Frozen parameters get no gradient; frozen modules run in eval mode (BN statistics stay).

    Returns the parameters it switched off, so the caller can switch them back on afterwards."""
    switched: list[nn.Parameter] = []
    if not (config.freeze or config.train_only):
        return switched
    for name, p in model.named_parameters() if grads else ():
        if is_frozen(name, config) and p.requires_grad:
            p.requires_grad_(False)
            switched.append(p)
    for name, module in model.named_modules():
        if name and is_frozen(name, config):
            module.eval()
    return switched


def build_phases(model: GenerativeModel, config: TrainConfig, device: torch.device) -> list[Phase]:
    multipliers = {**_prefixed(model, "lr_multipliers"), **config.lr_multipliers}
    clamp_table = {**_prefixed(model, "grad_clamps"), **config.grad_clamp}
    owned = model.phase_modules()
    owned_ids = {id(p) for mods in owned.values() for m in mods for p in m.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    tables = ((config.lr_multipliers, "lr_multipliers"), (config.grad_clamp, "grad_clamp"),
              (dict.fromkeys(config.freeze), "freeze"), (dict.fromkeys(config.train_only), "train_only"))
    for table, what in tables:
        for prefix in table:
            if not any(n == prefix or n.startswith(prefix + ".") for n in names.values()):
                raise GenvaeError(f"train.{what}: no parameters under '{prefix}'; module paths look like "
                                  f"{', '.join(sorted({n.rsplit('.', 2)[0] for n in names.values()})[:6])}")
    phases = []
    for phase in model.phases:
        if phase == MODEL_PHASE:
            params = [p for p in model.parameters() if id(p) not in owned_ids and p.requires_grad]
        else:
            seen: set[int] = set()
            params = []
            for m in owned.get(phase, []):
                for p in m.parameters():
                    if id(p) not in seen and p.requires_grad:
                        seen.add(id(p))
                        params.append(p)
        params = [p for p in params if not is_frozen(names[id(p)], config)]
        if not params:
            continue
        lr = config.phase_lr.get(phase, config.lr)
        groups: dict[float, list[nn.Parameter]] = {}
        for p in params:
            groups.setdefault(_match(names[id(p)], multipliers) or 1.0, []).append(p)
        kwargs: dict[str, Any] = {"betas": config.betas, "weight_decay": config.weight_decay}
        if device.type == "cuda":
            kwargs["fused"] = True
        optimizer = torch.optim.Adam([{"params": ps, "lr": lr * mult} for mult, ps in groups.items()], **kwargs)
        clamps: dict[float, list[nn.Parameter]] = {}
        for p in params:
            value = _match(names[id(p)], clamp_table)
            if value is not None:
                clamps.setdefault(value, []).append(p)
        phases.append(Phase(phase, optimizer, [(ps, v) for v, ps in clamps.items()], params))
    return phases


def lr_factor(config: TrainConfig, epoch: int) -> float:
    if config.lr_schedule == "step":
        return config.lr_gamma ** (epoch // config.lr_step_epochs)
    if config.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, config.epochs) / max(config.epochs, 1)))
    return 1.0


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
    DEVICE_DATA_LIMIT = 4 * 2**30

    def __init__(self, model: GenerativeModel, folder: str | Path | ModelFolder, data, config: TrainConfig,
                 device: torch.device, on_log: Callable[[dict], None] | None = None,
                 dist: Distributed | None = None, registry: Registry | None = None):
        from genvae.core.data import to_model_range

        self.model = model.to(device)
        self.files = as_model_folder(folder)  # every write and deletion in the folder goes through it
        self.folder = self.files.path
        self.config = config
        self.device = device
        self.data = data  # the dataset (source, skipped files); its images are self.images
        self.on_log = on_log
        self.to_model_range = to_model_range
        if config.amp and device.type != "cuda":
            raise GenvaeError("--amp needs a CUDA device (mixed precision runs on CUDA only); drop --amp on CPU")
        n = len(data)
        if n == 0:
            raise GenvaeError("the training data holds no images")
        # Small uint8 datasets live on the device: batches are gathered there, no copy per step.
        images = data.images
        if device.type == "cuda" and images.numel() < self.DEVICE_DATA_LIMIT:
            images = images.to(device)
        self.images = images
        # Batches gathered on the host go to a GPU from pinned memory, without blocking; they are gathered one
        # step ahead, in a thread, while the device computes (or, on the CPU, while a memory-mapped cache is read).
        self.pin = images.device.type == "cpu" and device.type == "cuda"
        self.batch_size = min(config.batch_size, n)  # the global batch: all processes together
        self.batches_per_epoch = n // self.batch_size
        self.dist = dist
        self.local_batch = self.batch_size
        if dist is not None:
            if self.batch_size % dist.world_size:
                raise GenvaeError(f"batch size {self.batch_size} is not a multiple of the {dist.world_size} processes; "
                                  "--batch-size is the global batch, split evenly between them")
            self.local_batch = self.batch_size // dist.world_size
            # identical replicas: rank 0's weights and buffers everywhere, then each rank its own noise
            dist.broadcast_([*self.model.parameters(), *self.model.buffers()])
            if dist.rank:
                seed_everything(rank_seed(config.seed, dist.rank))
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if config.compile:  # in place: the modules keep their names, so checkpoints are as without it
            for module in (self.model.encoder, self.model.transform, self.model.decoder):
                module.compile()
        self.phases = build_phases(self.model, config, device)
        self.updates = plan_updates(self.model, config, self.phases)
        self.amp_dtype = None
        self.scaler = None
        if config.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.amp_dtype == torch.float16:
                self.scaler = torch.amp.GradScaler("cuda")
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.running: dict[str, torch.Tensor] = {}
        self.running_count = 0
        # First step whose loss terms were not finite (-1: none); kept on the device, read at log time.
        self.first_nonfinite = torch.full((), -1, dtype=torch.long, device=device)
        self.checked_step = 0  # the last step at which the terms were known to be finite
        self.stop = StopRequest()
        self.registry = registry
        self.loggers: list = []  # opened by fit, on the process that writes the folder
        # Per update: keep the graph after its backward pass? Found on the first step (see shared_graphs); a kept
        # graph holds every activation of the step until its end, which costs memory and, on the CPU, time.
        last = len(self.updates) - 1
        self.retain: list[bool] | None = [i < last for i in range(len(self.updates))] if (
            config.retain_graph == "always") else None

    # -- the hot path -------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def train_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        model = self.model

        def forward() -> Pass:
            with self._autocast():
                state = model(x)
            state.step, state.epoch = self.step, self.epoch
            return state

        state = forward()
        last = len(self.updates) - 1
        probe: list[set] | None = [] if self.retain is None else None  # the first step: keep all, note the graphs
        logged: list[tuple[Update, dict[str, torch.Tensor]]] = []
        for i, update in enumerate(self.updates):
            phase = update.phase
            if update.fresh:  # recompute the branch with the weights as the previous updates left them
                if update.branch == "prior":
                    state.new_prior_sample()
                else:
                    state = forward()
            state.branch, state.update = update.branch, i
            with self._autocast():
                terms, skip = model.update_terms(state, phase.name)
            record: dict[str, torch.Tensor] = {}
            logged.append((update, record))
            if skip:  # the one host sync a loss may ask for: only losses that declare may_skip, when their rule is on
                flag = torch.stack([f.reshape(()) for f in skip]).any()
                skipped = bool(flag if self.dist is None else self.dist.any(flag))  # every replica skips alike
                record[f"{phase.name}/skipped"] = torch.tensor(float(skipped), device=x.device)
            if not terms:  # nothing on this branch this step (e.g. every term switched off)
                continue
            values = iter(terms.values())
            total = next(values)
            for value in values:
                total = total + value
            if skip and skipped:  # logged like any step, so every term keeps one value per step
                record.update({k: v.detach() for k, v in terms.items()})
                record[f"{phase.name}/total"] = total.detach()
                continue
            phase.optimizer.zero_grad(set_to_none=True)
            if probe is not None:
                probe.extend([set()] * (i - len(probe)))  # updates with nothing to backpropagate this step
                probe.append(graph_nodes(total))
                retain = i < last
            else:
                retain = self.retain[i]  # type: ignore[index]
            try:
                (total if self.scaler is None else self.scaler.scale(total)).backward(retain_graph=retain)
            except RuntimeError as exc:
                if "second time" not in str(exc):
                    raise
                raise GenvaeError(
                    f"update {i + 1} ({update.phase.name}@{update.branch}) went back through a graph an earlier update "
                    "of the step had freed, which it did not on the first step; train with --set "
                    "train.retain_graph=always (resume from the last checkpoint)") from None
            if self.dist is not None:  # the gradient of the mean over the global batch, on every replica
                self.dist.average_([p.grad for p in phase.params if p.grad is not None])
            if self.scaler is not None:  # after the average: an overflow on any replica skips the step on all
                self.scaler.unscale_(phase.optimizer)
            for params, value in phase.clamps:
                nn.utils.clip_grad_value_(params, value)
            if self.config.grad_clip_norm is not None:
                nn.utils.clip_grad_norm_(phase.params, self.config.grad_clip_norm)
            if self.scaler is not None:
                self.scaler.step(phase.optimizer)
                if update.repeated:  # this optimiser steps again in this step: unscale_ needs an update() between
                    self.scaler.update()
            else:
                phase.optimizer.step()
            # detached: what is returned must not keep this step's graph alive into the next step
            record.update({k: v.detach() for k, v in terms.items()})
            record[f"{phase.name}/total"] = total.detach()
        if self.scaler is not None:
            self.scaler.update()
        if probe is not None:
            probe.extend([set()] * (len(self.updates) - len(probe)))
            self.retain = shared_graphs(probe)
        if len(logged) == 1:
            return logged[0][1]
        return _merge_logged(logged)

    def _host_batch(self, perm: torch.Tensor, b: int) -> torch.Tensor:
        """The uint8 images of batch ``b`` of the epoch, where the data lives (pinned when bound for a GPU)."""
        start = b * self.batch_size + (self.dist.rank * self.local_batch if self.dist is not None else 0)
        idx = perm[start : start + self.local_batch]  # this process's share of the global batch
        images = self.images[idx]
        return images.pin_memory() if self.pin else images

    def _batch(self, perm: torch.Tensor, b: int, host: torch.Tensor | None = None) -> torch.Tensor:
        if host is None:
            host = self._host_batch(perm, b)
        x = self.to_model_range(host.to(self.device, non_blocking=True))
        if self.memory_format is not torch.contiguous_format:
            x = x.contiguous(memory_format=self.memory_format)
        if self.config.flip:
            flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
            x = torch.where(flip, x.flip(3), x)
        return x

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((self.config.seed * 1_000_003 + epoch) % 2**64)
        return torch.randperm(len(self.images), generator=g).to(self.images.device)

    # -- the loop -----------------------------------------------------------------------------------
    def total_steps(self) -> int:
        steps = self.config.epochs * self.batches_per_epoch
        return min(steps, self.config.max_steps) if self.config.max_steps else steps

    def _set_lr(self) -> None:
        factor = lr_factor(self.config, self.epoch)
        for phase in self.phases:
            for group, base in zip(phase.optimizer.param_groups, phase.base_lrs, strict=True):
                group["lr"] = base * factor

    def fit(self) -> dict[str, float]:
        """Train until ``epochs`` or ``max_steps``; returns the last logged metrics.

        Holds the folder's lock throughout. SIGINT/SIGTERM stop at the next step boundary with a
        checkpoint (:class:`TrainingStopped`); non-finite terms or weights stop with
        :class:`~genvae.core.checkpoint.DivergedError` before anything diverged is written.
        """
        with lock_folder(self.files) if self.is_main else nullcontext(), self.stop:
            return self._fit()

    @property
    def is_main(self) -> bool:
        """Whether this process writes the folder (the only process, or rank 0 of a torchrun launch)."""
        return self.dist is None or self.dist.is_main

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

    def check_outputs(self, start: int, extra: Sequence[str] = ()) -> None:
        """Before a run starting at step ``start`` touches anything: every file it may write (config, weights,
        metrics, the sample grids and checkpoints of its steps, its loggers' folders, and ``extra``) is absent or
        genvae's, reached through real folders; anything else is refused in one line. Rank 0's job."""
        if not self.is_main:
            return
        mf = self.files
        mf.check_outputs([ckpt.CONFIG, ckpt.WEIGHTS, ckpt.METRICS, *extra])
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

    def prepare_folder(self, cut_metrics_to_step: bool = True, start: int | None = None,
                       extra: Sequence[str] = ()) -> None:
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

    def _fit(self) -> dict[str, float]:
        self.prepare_folder()
        total = self.total_steps()
        last: dict[str, float] = {}
        self.model.train()
        frozen = apply_freeze(self.model, self.config)
        tick, tick_step = time.perf_counter(), self.step
        self.checked_step = self.step
        stopping = False
        if self.config.loggers and self.is_main:
            from genvae.core.loggers import open_loggers
            from genvae.core.registry import get_registry

            self.loggers = open_loggers(self.config.loggers, self.files, self.model.resolved_spec().to_dict(),
                                        self.registry or get_registry())
        on_host = self.images.device.type == "cpu"
        loader = ThreadPoolExecutor(1, thread_name_prefix="genvae-batches") if on_host else None
        try:
            while self.step < total and self.epoch < self.config.epochs and not stopping:
                self._set_lr()
                perm = self._permutation(self.epoch)
                ahead = None if loader is None else loader.submit(self._host_batch, perm, self.batch_in_epoch)
                while self.batch_in_epoch < self.batches_per_epoch and self.step < total:
                    host = None if ahead is None else ahead.result()
                    x = self._batch(perm, self.batch_in_epoch, host)
                    if loader is not None and self.batch_in_epoch + 1 < self.batches_per_epoch:
                        ahead = loader.submit(self._host_batch, perm, self.batch_in_epoch + 1)
                    terms = self.train_step(x)
                    self.batch_in_epoch += 1
                    self.step += 1
                    self._accumulate(terms)
                    synced = False
                    if self.step % self.config.log_every == 0 or self.step == total:
                        now = time.perf_counter()
                        last = self._log((self.step - tick_step) * self.batch_size / max(now - tick, 1e-9))
                        tick, tick_step, synced = time.perf_counter(), self.step, True
                    if self.step % self.config.checkpoint_every == 0 and self.step < total:
                        self.save_checkpoint()
                        synced = True
                    stopping = self._stopping(synced)
                    if stopping:
                        break
                if self.batch_in_epoch >= self.batches_per_epoch:
                    self.save_samples(self.epoch + 1)
                    self.epoch += 1
                    self.batch_in_epoch = 0
        finally:  # the model leaves training as it came: a later run may train other parts
            if loader is not None:
                loader.shutdown(wait=True, cancel_futures=True)
            if self.loggers:
                from genvae.core.loggers import record_logs

                for logger in self.loggers:
                    logger.close()
                self.loggers = []
                record_logs(self.files)
            for p in frozen:
                p.requires_grad_(True)
        if stopping and self.stop.signum is not None:
            self.save_checkpoint()
            raise TrainingStopped(self.stop.signum, self.step, self.folder)
        if self.batch_in_epoch:  # stopped mid-epoch: still leave a grid of where training got to
            self.save_samples(self.epoch + 1, name=f"step-{self.step:08d}")
        self.save_checkpoint()
        return last

    def _accumulate(self, terms: dict[str, torch.Tensor]) -> None:
        """Running sums of the loss terms, on the device (one fused add; no host sync)."""
        values = [v.detach().float() for v in terms.values()]
        if self.running.keys() == terms.keys():
            torch._foreach_add_([self.running[k] for k in terms], values)
        else:  # the first step of a log window (or a step whose terms differ)
            for k, d in zip(terms, values, strict=True):
                self.running[k] = self.running[k] + d if k in self.running else d.clone()
        self.running_count += 1
        # remember the first step with a non-finite term, without a host sync
        finite = torch.isfinite(torch.stack([d.reshape(()) for d in values]).sum())
        self.first_nonfinite = torch.where(finite | (self.first_nonfinite >= 0), self.first_nonfinite,
                                           self.step)

    def check_finite(self) -> None:
        """Raise :class:`DivergedError` naming every non-finite term of the window (one host sync)."""
        if self.dist is not None:  # every replica decides alike
            self.dist.max_(self.first_nonfinite)
        bad = sorted(k for k, v in self.running.items() if not math.isfinite(float(v)))
        if self.dist is not None and bool(self.dist.any(torch.tensor(bool(bad), device=self.device))) and not bad:
            bad = ["loss terms (on another process)"]
        if bad or int(self.first_nonfinite) >= 0:
            raise self._diverged(bad or ["loss terms"])
        self.checked_step = self.step

    def _diverged(self, bad: list[str]) -> ckpt.DivergedError:
        last = ckpt.latest_checkpoint(self.files)
        kept = f"the last finite checkpoint {last.name} is kept" if last else "no checkpoint was written"
        first = int(self.first_nonfinite)
        # config.json records the settings of the latest run, so a plain --resume would take the same rate again
        return ckpt.DivergedError(
            f"training diverged at step {first if first >= 0 else self.step}: non-finite {', '.join(bad)}; "
            f"nothing from the diverged state was saved, {kept}; config.json keeps this run's settings "
            f"(lr {self.config.lr:g}): pass a lower --lr with --resume or --restart"
        )

    def _log(self, images_per_s: float) -> dict[str, float]:
        if self.dist is not None:  # the mean over every process's images
            self.dist.average_(list(self.running.values()))
            self.dist.max_(self.first_nonfinite)
        values = {k: (v / self.running_count).item() for k, v in self.running.items()}
        record = {
            "step": self.step,
            "epoch": self.epoch,
            "lr": self.config.lr * lr_factor(self.config, self.epoch),  # the model phase's base rate
            **{k: round(v, 6) for k, v in values.items()},
            "images_per_s": round(images_per_s, 1),
            "wall_time": round(time.time(), 3),  # Unix seconds: reports put steps and wall-clock side by side
        }
        bad = sorted(k for k, v in values.items() if not math.isfinite(v))
        for k in bad:
            record[k] = None  # JSON has no NaN; the error names the terms
        self.running, self.running_count = {}, 0
        if self.is_main:
            append_json_line(self.files, ckpt.METRICS, record)
            for logger in self.loggers:
                logger.log_metrics(record, self.step)
        if self.on_log is not None and not bad:
            self.on_log(record)
        if bad:
            raise self._diverged(bad)
        self.checked_step = self.step
        return record

    @torch.no_grad()
    def save_samples(self, epoch: int, n: int = SAMPLE_GRID, name: str | None = None) -> Path:
        from genvae.core.data import grid_writer
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
        self.model.train(was_training)
        apply_freeze(self.model, self.config, grads=False)  # frozen modules back to eval mode
        self.files.subdir(ckpt.SAMPLES)
        self.files.write(rel, grid_writer(images, ".png"))
        for logger in self.loggers:
            logger.log_image(rel.removesuffix(".png"), self.folder / rel, self.step)
        return self.folder / rel

    # -- checkpoints --------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """A checkpoint at a step boundary: weights, optimiser states, RNG streams and the open log window.

        Checks first that every loss term since the last check was finite (one host sync); a
        diverged run raises :class:`DivergedError` and writes nothing.
        """
        self.check_finite()
        self._sync_buffers()
        if self.dist is not None:  # the open log window as its mean over the processes (exact: sums are linear)
            self.dist.average_(list(self.running.values()))
        rng_by_rank = self._rng_by_rank()
        if not self.is_main:
            return ckpt.latest_checkpoint(self.files) or self.folder
        optim_tensors: dict[str, torch.Tensor] = {}
        optim_meta = {}
        for phase in self.phases:
            tensors, meta = ckpt.optimizer_to_tensors(phase.name, phase.optimizer)
            optim_tensors.update(tensors)
            optim_meta[phase.name] = meta
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        optim_tensors.update({f"rng/{k}": v for k, v in rng.items()})
        optim_tensors.update(rng_by_rank)
        optim_tensors.update({f"{RUNNING}{k}": v.reshape(()) for k, v in self.running.items()})
        trainer = {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "batch_size": self.batch_size,
            "optimizers": optim_meta,
            "python_random": _py_random_state(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "running_count": self.running_count,
            "running_terms": list(self.running),
            "world_size": self.dist.world_size if self.dist is not None else 1,
        }
        path = ckpt.write_checkpoint(self.files, self.step, self.model.state_dict(), optim_tensors, trainer,
                                     self.config.keep_checkpoints)
        ckpt.save_model(self.model, self.files)
        return path

    def _rng_by_rank(self) -> dict[str, torch.Tensor]:
        """Under torchrun, every process's random streams (collected on rank 0), so a resume is exact."""
        if self.dist is None:
            return {}
        out = {}
        states = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        for kind, state in states.items():
            where = self.device if self.dist.backend == "nccl" else torch.device("cpu")
            for rank, got in enumerate(self.dist.gather(state.to(where))):
                if rank:
                    out[RANK_RNG.format(rank=rank, kind=kind)] = got.cpu()
        return out

    def _restore_rank_rng(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        """This process's own random streams; a checkpoint from another number of processes has none for it, and
        the process starts a fresh stream of its own."""
        assert self.dist is not None
        key = RANK_RNG.format(rank=self.dist.rank, kind="torch")
        if key not in tensors:
            seed_everything(rank_seed(self.config.seed + step, self.dist.rank))
            return
        torch.set_rng_state(tensors[key].cpu())
        cuda = RANK_RNG.format(rank=self.dist.rank, kind="cuda")
        if cuda in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors[cuda].cpu(), self.device)

    def read_resume_state(self) -> ResumeState | None:
        """The latest checkpoint, read and checked completely against this run (model, phases, batch size, data);
        None when there is none. Writes nothing: ``genvae train --resume`` calls it before it touches the folder."""
        return read_resume_state(self.files, self.model, self.phases, batch_size=self.batch_size,
                                 num_images=len(self.images), device=self.device)

    def resume(self, state: ResumeState | None = None) -> int:
        """Continue from the latest checkpoint; returns its step (0 when there is none).

        ``state`` is what :meth:`read_resume_state` returned; it is read again when it is not given or is no longer
        the latest checkpoint. Applying a checked state cannot fail half-way."""
        if state is None or state.path != ckpt.latest_checkpoint(self.files):
            state = self.read_resume_state()
        if state is None:
            return 0
        tensors, trainer = state.tensors, state.trainer
        ckpt.load_weights(self.model, state.path / ckpt.WEIGHTS, self.device, state=state.weights)
        try:
            for phase in self.phases:
                phase.optimizer.load_state_dict(state.optimizers[phase.name])
            torch.set_rng_state(tensors["rng/torch"].cpu())
            if "rng/cuda" in tensors and self.device.type == "cuda":
                torch.cuda.set_rng_state(tensors["rng/cuda"].cpu(), self.device)
            if self.dist is not None and self.dist.rank:
                self._restore_rank_rng(tensors, trainer["step"])
            _set_py_random_state(trainer["python_random"])
            if self.scaler is not None and trainer.get("scaler"):
                self.scaler.load_state_dict(trainer["scaler"])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:  # a check missed something
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise CheckpointError(f"{state.path} does not match this model's training state ({first})") from None
        self.running = {k: tensors[f"{RUNNING}{k}"].float().reshape(()).to(self.device)
                        for k in trainer.get("running_terms", [])}
        self.running_count = int(trainer.get("running_count", 0)) if self.running else 0
        self.step, self.epoch, self.batch_in_epoch = trainer["step"], trainer["epoch"], trainer["batch_in_epoch"]
        return self.step


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def append_json_line(folder: ModelFolder, rel: str, record: dict) -> None:
    """Append one JSON line to a file of genvae's with a single write (a crash can tear only the last line)."""
    folder.append(rel, (json.dumps(record, allow_nan=False) + "\n").encode())


def cut_metrics(folder: ModelFolder, step: int) -> int:
    """Keep the lines of ``metrics.jsonl`` up to ``step`` (the step training restarts from), drop a torn
    last line; returns how many lines were dropped. Rewritten atomically, only when something changes;
    a ``metrics.jsonl`` genvae did not write is refused, never rewritten."""
    if folder.lstat(ckpt.METRICS) is None:
        return 0
    folder.check_outputs([ckpt.METRICS])
    data = folder.read(ckpt.METRICS, 1 << 40) or b""
    kept: list[bytes] = []
    dropped = 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            ok = isinstance(record, dict) and _is_count(record.get("step")) and record["step"] <= step
        except ValueError:
            ok = False
        if ok:
            kept.append(line)
        else:
            dropped += 1
    if dropped or (data and not data.endswith(b"\n")):
        folder.write_bytes(ckpt.METRICS, b"".join(line + b"\n" for line in kept))
    return dropped


def _py_random_state() -> list:
    version, state, gauss = random.getstate()
    return [version, list(state), gauss]


def _set_py_random_state(data: list) -> None:
    version, state, gauss = data
    random.setstate((version, tuple(state), gauss))


def prepare_training(model: GenerativeModel, folder: str | Path | ModelFolder, *, data: str | None = None,
                     data_root: str | None = None, download: bool = False, overrides: dict | None = None,
                     sets: Sequence[str] = (), device: str = "auto", registry: Registry | None = None) -> Trainer:
    """The one way a run is set up (``genvae train``, a plugin's staged training): the model's training
    settings with ``overrides`` (TrainConfig fields) and ``sets`` (``train.OPTION=VALUE``) applied and checked
    against the memory budget, every random stream seeded, the data loaded at the model's image size, and a
    :class:`Trainer` writing into ``folder``. The model's spec records the settings; nothing is written yet.
    Everything is validated before the caller touches the folder (the Trainer only creates it)."""
    from genvae.core.budget import check_budget
    from genvae.core.compose import apply_sets
    from genvae.core.data import load_data
    from genvae.core.inference import sample_chunks
    from genvae.core.registry import get_registry

    registry = registry or get_registry()
    bad = [s for s in sets if not s.startswith("train.")]
    if bad:
        raise GenvaeError(f"train --set '{bad[0][:60]}': only train.OPTION=VALUE here; change a model with genvae "
                          "build")
    dev = process_device(resolve_device(device))
    dist = init_distributed(dev)
    spec = apply_sets(model.spec.with_train(**(overrides or {})), sets)
    check_budget(spec, registry)  # e.g. a larger batch: config.json must stay loadable after this run
    for name in spec.train.loggers:  # an unknown logger is refused before anything is loaded or written
        registry.get("logger", name)
    model.spec = spec
    sample_chunks(model, SAMPLE_GRID, **sample_grid_budget(model))  # each epoch's grid: refused now, not then
    seed_everything(spec.train.seed)
    images = load_data(data, image_size=spec.image_size, channels=spec.channels, split="train", root=data_root,
                       download=download, registry=registry)
    return Trainer(model, folder, images, spec.train, dev, dist=dist, registry=registry)
