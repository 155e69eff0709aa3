"""Deprecated since genvae 0.2 (goes in 0.3): the command helpers moved to :mod:`genvae.cli.commands`; a plugin
imports them from :mod:`genvae.api`. Every name here still works, with a ``DeprecationWarning``."""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    module = importlib.import_module("genvae.cli.commands")  # by name: the engine itself imports no command line
    if name.startswith("__") or not hasattr(module, name):
        raise AttributeError(f"module 'genvae.core.commands' has no attribute {name!r}")
    warnings.warn(
        f"genvae.core.commands is deprecated since genvae 0.2 and goes in 0.3; import {name} from genvae.api",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(module, name)
