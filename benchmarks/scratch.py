"""Temporary folders for the benchmarks' runs (checkpoints, sample grids), removed when the benchmark exits."""

from __future__ import annotations

import atexit
import shutil
import tempfile


def scratch_folder(prefix: str) -> str:
    """A new temporary folder, removed (with what was written into it) when the process exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
