"""Progress of long work in the engine (decoding a data set, evaluating), shown by whoever runs it.

The engine never draws a bar itself: it calls :func:`report` with a task name, the work done and the work
in all. The command line installs a reporter that draws rich bars on a terminal; a notebook may install
one that draws widgets; with none installed, reports go nowhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

#: ``reporter(task, done, total)``: ``task`` names the work ("decoding 4,096 images"), ``done`` of ``total``
Reporter = Callable[[str, int, int], None]

_reporter: ContextVar[Reporter | None] = ContextVar("genvae_progress", default=None)


def report(task: str, done: int, total: int) -> None:
    """Tell the installed reporter (if any) that ``done`` of ``total`` units of ``task`` are done."""
    reporter = _reporter.get()
    if reporter is not None:
        reporter(task, done, total)


@contextlib.contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Send the engine's progress reports to ``reporter`` while the block runs (None: nowhere)."""
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)
