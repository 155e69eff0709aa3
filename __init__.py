"""genvae: a plugin-based toolkit for VAE-family generative image models in PyTorch.

The repository's top level is this package: ``core/`` installs as ``genvae.core`` (the engine), ``plugins/``
as ``genvae.plugins`` (the built-in components), ``cli/`` as ``genvae.cli`` (the ``genvae`` command) and
``testing/`` as ``genvae.testing`` (the kit plugin authors test with). ``genvae.api`` is the one public
surface a plugin imports from.

The version below is the only place it is written: packaging reads it (``pyproject.toml``), and so do
``config.json`` files and reports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = ["__version__", "build_model", "compose_spec", "load_model", "train_run"]

if TYPE_CHECKING:
    from genvae.core.checkpoint import load_model
    from genvae.core.compose import compose_spec
    from genvae.core.model import build_model
    from genvae.core.training.run import train_run

_LAZY = {
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
