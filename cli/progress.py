"""The engine's progress reports drawn as rich bars on a terminal's standard error (nothing elsewhere)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from genvae.core.progress import reporting


@contextlib.contextmanager
def terminal_progress(console: Console) -> Iterator[None]:
    """While the block runs, every :func:`genvae.core.progress.report` draws a bar per task on ``console`` when it
    is a terminal; a task's bar goes when it is done. Elsewhere (a pipe, a CI log) nothing is drawn."""
    if not console.is_terminal:
        yield
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def draw(task: str, done: int, total: int) -> None:
        if not tasks:
            bars.start()
        if task not in tasks:
            tasks[task] = bars.add_task(task, total=total)
        bars.update(tasks[task], completed=done, total=total)
        if done >= total:
            bars.remove_task(tasks.pop(task))

    try:
        with reporting(draw):
            yield
    finally:
        bars.stop()
