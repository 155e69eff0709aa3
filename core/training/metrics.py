"""The metrics sink: loss terms summed on the device, one log line every ``log_every`` steps, divergence caught.

A step hands its logged values over without waiting for the device: they are added to running sums on
the device (one fused add), and the first step with a non-finite term is remembered there too. Only a
log step (or a checkpoint) reads them back: the window's means become one line of ``metrics.jsonl``,
go to the experiment loggers and to the caller's ``on_log``; a non-finite term stops the run with a
:class:`~genvae.core.checkpoint.DivergedError` naming every such term, before anything diverged is
written.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from genvae.core import checkpoint as ckpt
from genvae.core.distributed import Distributed
from genvae.core.folder import ModelFolder
from genvae.core.spec import TrainConfig

#: a metrics line's keys that are not logged terms (the one list every reader of metrics.jsonl uses)
NOT_TERMS = ("step", "epoch", "lr", "images_per_s", "wall_time")
SPEED = "images_per_s"  # the run's throughput since the last line


def is_term(key: str) -> bool:
    """Whether a metrics line's key is a logged term (a loss term, a phase total, a diagnostic)."""
    return key not in NOT_TERMS


def terms_text(record: dict, sep: str = "  ") -> str:
    """A metrics line's terms, then its images/s, as ``mse 16.81  kl 20.58  ...  images_per_s 512``: what a
    progress line shows."""
    shown = [k for k in record if is_term(k) and isinstance(record[k], int | float)] + (
        [SPEED] if isinstance(record.get(SPEED), int | float) else []
    )
    return sep.join(f"{k} {record[k]:.4g}" for k in shown)


class MetricsSink:
    """The open log window of a run (device-side sums), its log lines and the divergence check."""

    def __init__(
        self, files: ModelFolder, config: TrainConfig, device: torch.device, dist: Distributed | None, is_main: bool
    ):
        self.files = files
        self.config = config
        self.device = device
        self.dist = dist
        self.is_main = is_main
        self.running: dict[str, torch.Tensor] = {}
        self.running_count = 0
        # First step whose loss terms were not finite (-1: none); kept on the device, read at log time.
        self.first_nonfinite = torch.full((), -1, dtype=torch.long, device=device)
        self.checked_step = 0  # the last step at which the terms were known to be finite
        self.loggers: list = []
        self.on_log: Callable[[dict], None] | None = None

    def accumulate(self, terms: dict[str, torch.Tensor], step: int) -> None:
        """Add one step's values to the window's sums, on the device (one fused add; no host sync)."""
        values = [v.detach().float() for v in terms.values()]
        if self.running.keys() == terms.keys():
            torch._foreach_add_([self.running[k] for k in terms], values)
        else:  # the first step of a log window (or a step whose terms differ)
            for k, d in zip(terms, values, strict=True):
                self.running[k] = self.running[k] + d if k in self.running else d.clone()
        self.running_count += 1
        # remember the first step with a non-finite term, without a host sync
        finite = torch.isfinite(torch.stack([d.reshape(()) for d in values]).sum())
        self.first_nonfinite = torch.where(finite | (self.first_nonfinite >= 0), self.first_nonfinite, step)

    def check_finite(self, step: int) -> None:
        """Raise :class:`DivergedError` naming every non-finite term of the window (one host sync)."""
        if self.dist is not None:  # every replica decides alike
            self.dist.max_(self.first_nonfinite)
        bad = sorted(k for k, v in self.running.items() if not math.isfinite(float(v)))
        if self.dist is not None and bool(self.dist.any(torch.tensor(bool(bad), device=self.device))) and not bad:
            bad = ["loss terms (on another process)"]
        if bad or int(self.first_nonfinite) >= 0:
            raise self.diverged(bad or ["loss terms"], step)
        self.checked_step = step

    def diverged(self, bad: list[str], step: int) -> ckpt.DivergedError:
        last = ckpt.latest_checkpoint(self.files)
        kept = f"the last finite checkpoint {last.name} is kept" if last else "no checkpoint was written"
        first = int(self.first_nonfinite)
        # config.json records the settings of the latest run, so a plain --resume would take the same rate again
        return ckpt.DivergedError(
            f"training diverged at step {first if first >= 0 else step}: non-finite {', '.join(bad)}; "
            f"nothing from the diverged state was saved, {kept}; config.json keeps this run's settings "
            f"(lr {self.config.lr:g}): pass a lower --lr with --resume or --restart"
        )

    def log(self, step: int, epoch: int, lr: float, images_per_s: float) -> dict[str, Any]:
        """The window's means as one metrics line: written, sent to the loggers and ``on_log``; a new window opens."""
        if self.dist is not None:  # the mean over every process's images
            self.dist.average_(list(self.running.values()))
            self.dist.max_(self.first_nonfinite)
        values = {k: (v / self.running_count).item() for k, v in self.running.items()}
        record: dict[str, Any] = {
            "step": step,
            "epoch": epoch,
            "lr": lr,  # the model phase's base rate
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
                logger.log_metrics(record, step)
        if self.on_log is not None and not bad:
            self.on_log(record)
        if bad:
            raise self.diverged(bad, step)
        self.checked_step = step
        return record

    def open_loggers(self, config: dict, registry) -> None:
        """The run's experiment loggers (``train.loggers``), on the process that writes the folder."""
        if self.config.loggers and self.is_main:
            from genvae.core.loggers import open_loggers

            self.loggers = open_loggers(self.config.loggers, self.files, config, registry)

    def close_loggers(self) -> None:
        """Flush and release the loggers, and record what they wrote as genvae's files."""
        if self.loggers:
            from genvae.core.loggers import record_logs

            for logger in self.loggers:
                logger.close()
            self.loggers = []
            record_logs(self.files)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def append_json_line(folder: ModelFolder, rel: str, record: dict) -> None:
    """Append one JSON line to a file of genvae's with a single write (a crash can tear only the last line)."""
    folder.append(rel, (json.dumps(record, allow_nan=False) + "\n").encode())


def cut_metrics(folder: ModelFolder, step: int, rel: str = ckpt.METRICS) -> int:
    """Keep the lines of ``metrics.jsonl`` (or another of the run's JSON-lines files, ``rel``) up to ``step`` (the
    step training restarts from), drop a torn last line; returns how many lines were dropped. Rewritten
    atomically, only when something changes; a file genvae did not write is refused, never rewritten."""
    if folder.lstat(rel) is None:
        return 0
    folder.check_outputs([rel])
    data = folder.read(rel, 1 << 40) or b""
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
        folder.write_bytes(rel, b"".join(line + b"\n" for line in kept))
    return dropped
