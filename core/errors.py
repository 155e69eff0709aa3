"""User-facing errors: each carries a one-line message that says what was wrong and what is accepted."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GenvaeError(Exception):
    """An error caused by input (names, options, files): the CLI prints it as one line, no traceback."""


class UnknownNameError(GenvaeError):
    """A name (plugin, component, preset, dataset) that nothing provides."""

    def __init__(self, what: str, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        listing = ", ".join(known) if known else "none"
        super().__init__(f"unknown {what} '{name}'; {hint}known: {listing}")
        self.name = name
        self.known = known


class OptionsError(GenvaeError):
    """Options that a component's options class rejects."""


class BuildError(GenvaeError):
    """A composition whose components cannot work together, found at build time."""


class CheckpointError(GenvaeError):
    """A model folder or checkpoint that is missing, incomplete or corrupt."""


class DataError(GenvaeError):
    """Training data that cannot be found, read or used."""
