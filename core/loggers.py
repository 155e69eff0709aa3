"""Experiment loggers: where a run's metrics, sample grids and configuration go besides ``metrics.jsonl``.

``metrics.jsonl`` is always written (resume and ``genvae report`` read it). Other loggers come from
plugins (``genvae_register_loggers``: ``register(name, open, help=...)``) and are chosen per run with
``genvae train --logger NAME,...`` (``train.loggers``). ``open(folder, config)`` returns a :class:`Logger`;
``folder`` is ``<model folder>/logs/<name>``, created for it, and ``config`` the model's resolved spec as a
dict. Loggers are called at log steps and when a sample grid is written, never on other steps, and only
by the process that writes the folder (rank 0 under torchrun).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from genvae.core.errors import GenvaeError

LOGS = "logs"


@runtime_checkable
class Logger(Protocol):
    """What a logger plugin's ``open`` returns."""

    def log_metrics(self, record: Mapping[str, Any], step: int) -> None:
        """One metrics line: ``step``, ``epoch``, ``lr``, every loss term (None where it was not finite),
        ``images_per_s``."""

    def log_image(self, tag: str, path: Path, step: int) -> None:
        """A sample grid genvae just wrote (a PNG file), e.g. ``tag="samples/epoch-0003"``."""

    def close(self) -> None:
        """The run ended (finished, stopped or failed): flush and release."""


def open_loggers(names: Sequence[str], folder, config: dict, registry) -> list[Logger]:
    """Open the named loggers for a run in ``folder`` (a path or ``ModelFolder``); an unknown name lists the known
    ones. Each logger's folder is checked just before its library opens it: a real folder inside the model folder
    (no link on the way) holding only files genvae's loggers wrote."""
    from genvae.core.folder import as_model_folder

    mf = as_model_folder(folder)
    loggers: list[Logger] = []
    for name in names:
        entry = registry.get("logger", name)  # UnknownNameError: one line with the known loggers
        mf.check_tree(f"{LOGS}/{name}")
        target = mf.subdir(f"{LOGS}/{name}")
        try:
            logger = entry.obj(folder=target, config=config)
        except ImportError as exc:
            raise GenvaeError(
                f"logger '{name}' (plugin '{entry.plugin}') needs a package that is not installed: "
                f"{exc.name or exc}; install genvae's extra: pip install 'genvae[{name}]'"
            ) from None
        if not isinstance(logger, Logger):
            raise GenvaeError(
                f"logger '{name}' (plugin '{entry.plugin}') returned {type(logger).__name__}, which "
                "lacks log_metrics, log_image or close"
            )
        loggers.append(logger)
    return loggers


def record_logs(folder) -> None:
    """Record what the loggers wrote under ``logs/`` in the folder's manifest, so genvae owns (and may later
    remove, with ``--restart`` or ``build --force``) exactly those files (walked without following links)."""
    from genvae.core.files import UnsafePathError
    from genvae.core.folder import as_model_folder

    mf = as_model_folder(folder)
    try:
        files = list(mf.walk_files(LOGS))
    except UnsafePathError:  # logs/ became a link while the run went on: nothing there is genvae's
        return
    if files:
        mf.record(*files)
