"""The ``tensorboard`` logger: a run's metrics, sample grids and configuration as TensorBoard event files.

``genvae train DIR --logger tensorboard`` writes to ``DIR/logs/tensorboard/``; look at it with
``tensorboard --logdir DIR/logs/tensorboard``. Needs the ``tensorboard`` package (``pip install
'genvae[tensorboard]'``); the writer is ``torch.utils.tensorboard.SummaryWriter``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from genvae.api import LoggerFactory, RegisterNamed, hookimpl

SKIP = ("step", "epoch", "wall_time")  # the axes, not curves


class TensorBoardLogger:
    def __init__(self, folder: Path, config: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter  # ImportError without the tensorboard package

        self.writer = SummaryWriter(log_dir=str(folder))
        self.writer.add_text("config", "```json\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log_metrics(self, record: Mapping[str, Any], step: int) -> None:
        for key, value in record.items():
            if key not in SKIP and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)

    def log_image(self, tag: str, path: Path, step: int) -> None:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
        self.writer.add_image(tag.split("/")[0], array, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


@hookimpl
def genvae_register_loggers(register: RegisterNamed[LoggerFactory]) -> None:
    register(
        "tensorboard",
        TensorBoardLogger,
        help="TensorBoard event files in DIR/logs/tensorboard (needs genvae[tensorboard])",
    )
