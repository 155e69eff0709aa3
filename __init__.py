"""genvae: a plugin-based toolkit for VAE-family generative image models in PyTorch.

The repository's top level is this package: ``core/`` installs as ``genvae.core`` (the engine), ``plugins/``
as ``genvae.plugins`` (the built-in components), ``cli/`` as ``genvae.cli`` (the ``genvae`` command) and
``testing/`` as ``genvae.testing`` (the kit plugin authors test with). ``genvae.api`` is the one public
surface a plugin imports from.

From Python and notebooks (docs/python-api.md)::

    import genvae

    model = genvae.build(preset="cvae-vamp", folder="runs/first", force=True)
    genvae.train(model, steps=1536)               # the same run, bit for bit, as `genvae train runs/first`
    genvae.show(model.sample(64, seed=0))         # a grid, inline in a notebook
    genvae.evaluate(model, metrics=["rmse"])      # a typed result; .to_pandas() with pandas installed

These names (``build``, ``load``, ``train``, ``evaluate``, ``datasets``, ``report``, ``show``, ...) come from
``genvae.python_api`` and ``genvae.display``, imported on first use.

The version below is the only place it is written: packaging reads it (``pyproject.toml``), and so do
``config.json`` files and reports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = [
    "Evaluation",
    "Figure",
    "GenvaeError",
    "ImageGrid",
    "Model",
    "ModelScores",
    "Report",
    "TrainResult",
    "TrainingInterrupted",
    "__version__",
    "build",
    "build_model",
    "compose_spec",
    "dataset_names",
    "datasets",
    "evaluate",
    "load",
    "load_model",
    "report",
    "show",
    "train",
    "train_run",
]

if TYPE_CHECKING:
    from genvae.core.checkpoint import load_model
    from genvae.core.compose import compose_spec
    from genvae.core.errors import GenvaeError
    from genvae.core.model import build_model
    from genvae.core.training.run import train_run
    from genvae.display import Figure, ImageGrid, Report, show
    from genvae.python_api import (
        Evaluation,
        Model,
        ModelScores,
        TrainingInterrupted,
        TrainResult,
        build,
        dataset_names,
        datasets,
        evaluate,
        load,
        report,
        train,
    )

_PYTHON_API = (
    "Evaluation",
    "Model",
    "ModelScores",
    "TrainResult",
    "TrainingInterrupted",
    "build",
    "dataset_names",
    "datasets",
    "evaluate",
    "load",
    "report",
    "train",
)
_LAZY = {
    **dict.fromkeys(_PYTHON_API, "genvae.python_api"),
    **dict.fromkeys(("Figure", "ImageGrid", "Report", "show"), "genvae.display"),
    "GenvaeError": "genvae.core.errors",
    "build_model": "genvae.core.model",
    "compose_spec": "genvae.core.compose",
    "load_model": "genvae.core.checkpoint",
    "train_run": "genvae.core.training.run",
}


def __getattr__(name: str) -> Any:
    """The entry points import torch and the engine when first used, not on ``import genvae``."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'genvae' has no attribute {name!r}")
