"""What the Python API shows: image grids and reports that display inline in a notebook, and progress.

Everything here renders through IPython's rich display protocol (``_repr_png_``, ``_repr_html_``), so a notebook
shows it when it is the value of a cell and nothing needs Jupyter installed: a script can ``.save(path)`` the
same objects. Plots are matplotlib Figures drawn outside pyplot (:mod:`genvae.core.report`), so a notebook's own
``%matplotlib inline`` plots are untouched.

Progress of a training run (and of the engine's long work: decoding a data set, evaluating) is drawn where the
code runs: an HTML progress bar updated in place in a Jupyter kernel, a rich bar on a terminal, one plain line
per metrics line elsewhere (a log file, CI).
"""

from __future__ import annotations

import html
import io
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

#: how many images :func:`show` puts in a grid when given more (a data set of 60,000 images)
MAX_SHOWN = 256


class ImageGrid:
    """Images as one grid, shown inline in a notebook (``_repr_png_``) and written with :meth:`save`.

    ``images``: (N, C, H, W) uint8 (0..255) or float in [0, 1] (as ``Model.sample`` returns them), or one image
    (C, H, W); ``nrow`` images per row (default: a square grid)."""

    def __init__(self, images: torch.Tensor, nrow: int | None = None, title: str | None = None):
        from genvae.core.data import as_uint8_images

        self.images = as_uint8_images(images.unsqueeze(0) if images.dim() == 3 else images, "images to show")
        self.nrow = nrow
        self.title = title

    def png(self) -> bytes:
        """The grid as PNG bytes (marked as genvae's, as every grid genvae writes)."""
        from genvae.core.images import grid_writer

        buf = io.BytesIO()
        grid_writer(self.images, ".png", self.nrow)(buf)
        return buf.getvalue()

    def _repr_png_(self) -> bytes:
        """The grid as PNG bytes, for IPython's display."""
        return self.png()

    def save(self, path: str | Path) -> Path:
        """Write the grid (the extension picks the format: png, jpg, webp, bmp, tif); a file genvae did not write
        is never replaced."""
        from genvae.core.images import save_grid

        save_grid(self.images, path, nrow=self.nrow)
        return Path(path)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        label = f"{self.title}: " if self.title else ""
        return f"<ImageGrid {label}{len(self)} images {c}x{h}x{w}>"


def show(images: Any, nrow: int | None = None, title: str | None = None) -> ImageGrid:
    """A grid of images to display inline: a tensor (uint8, or float in [0, 1]), an
    :class:`~genvae.core.data.ImageData` (``genvae.datasets(...)``), or a list of such tensors; at most
    ``MAX_SHOWN`` images (the first ones)."""
    from genvae.core.data import ImageData
    from genvae.core.errors import GenvaeError

    if isinstance(images, ImageData):
        images = images.images
    elif isinstance(images, list | tuple):
        images = torch.cat([i.unsqueeze(0) if i.dim() == 3 else i for i in images])
    if not isinstance(images, torch.Tensor):
        raise GenvaeError(f"show: expected an image tensor or genvae.datasets(...) images, got {type(images).__name__}")
    return ImageGrid(images[:MAX_SHOWN], nrow, title)


class Figure:
    """A PNG plot (loss curves, a term over several runs) shown inline (``_repr_png_``) or saved."""

    def __init__(self, png: bytes, title: str = ""):
        self.data = png
        self.title = title

    def _repr_png_(self) -> bytes:
        return self.data

    def save(self, path: str | Path) -> Path:
        """Write the PNG atomically; a file genvae did not write is never replaced."""
        from genvae.core.files import atomic_write
        from genvae.core.images import check_image_output

        check_image_output(Path(path))
        atomic_write(Path(path), lambda f: f.write(self.data))
        return Path(path)

    def __repr__(self) -> str:
        return f"<Figure {self.title}>" if self.title else "<Figure>"


class Report:
    """The report page of one or several model folders (what ``genvae report`` writes), shown inline in a notebook
    (``_repr_html_``) and written with :meth:`save`."""

    def __init__(self, page: str, folders: Sequence[Path]):
        self.html = page
        self.folders = list(folders)

    def _repr_html_(self) -> str:
        # the page is a whole document; a notebook shows it in an iframe so that its CSS stays its own
        return (
            '<iframe style="width:100%;height:640px;border:1px solid #ddd" sandbox="allow-same-origin" '
            f'srcdoc="{html.escape(self.html, quote=True)}"></iframe>'
        )

    def save(self, path: str | Path) -> Path:
        """Write the page; an existing file is replaced only when genvae wrote it."""
        from genvae.core.report import write_page

        write_page(self.html, Path(path))
        return Path(path)

    def __repr__(self) -> str:
        return f"<Report of {', '.join(str(f) for f in self.folders)}>"


def html_table(rows: Sequence[Sequence[Any]], header: Sequence[str], caption: str = "") -> str:
    """A small HTML table (numbers to 4 significant digits), for the objects' ``_repr_html_``."""

    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        align = ' style="text-align:right"' if isinstance(value, int | float) else ""
        return f"<td{align}>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# -- progress -------------------------------------------------------------------------------------


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (IPython's ZMQ shell), where HTML output is shown."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except AttributeError:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


class _NotebookBar:
    """An HTML ``<progress>`` bar in one output area, updated in place (IPython display handles): no widget
    library needed, and what is left after the run is the final state."""

    MIN_INTERVAL = 0.25  # seconds between redraws, so a fast loop does not flood the kernel's output

    def __init__(self, label: str):
        from IPython.display import HTML, display

        self._html = HTML
        self.label = label
        self.handle = display(HTML(self._page(0, 1, "")), display_id=True)
        self.last = 0.0

    def _page(self, done: int, total: int, text: str) -> str:
        return (
            f'<div class="genvae-progress"><b>{html.escape(self.label)}</b> '
            f'<progress value="{done}" max="{max(total, 1)}" style="width:40%"></progress> '
            f"{done:,}/{total:,} <code>{html.escape(text)}</code></div>"
        )

    def update(self, done: int, total: int, text: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if force or done >= total or now - self.last >= self.MIN_INTERVAL:
            self.last = now
            if self.handle is not None:
                self.handle.update(self._html(self._page(done, total, text)))


def training_bar(start: int, total: int, console: Any = None) -> tuple[Any, Any]:
    """The rich bar a training run draws on a terminal, ``genvae train``'s and :func:`genvae.train`'s: steps done
    of all, time left and the last metrics line's terms (the task's ``terms`` field). Returned started, with its
    task at ``start`` of ``total``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[terms]}"),
        console=console,
    )
    bar.start()
    return bar, bar.add_task("train", total=total, completed=start, terms="")


class TrainProgress:
    """What a Python training run shows: ``mode`` ``"notebook"`` (an HTML bar), ``"terminal"`` (a rich bar),
    ``"text"`` (the run's header, then one line per metrics line) or ``"none"``; ``"auto"`` picks by where the
    code runs. Its :meth:`start` and :meth:`log` are the run's ``on_start`` and ``on_log``."""

    def __init__(self, mode: str | bool = "auto", out: Any = None):
        from genvae.core.errors import GenvaeError

        if mode is True:
            mode = "auto"
        elif mode is False or mode is None:
            mode = "none"
        if mode not in ("auto", "notebook", "terminal", "text", "none"):
            raise GenvaeError(f"progress={mode!r}: expected True, False, 'notebook', 'terminal', 'text' or 'none'")
        if mode == "auto":
            mode = "notebook" if in_notebook() else "terminal" if sys.stdout.isatty() else "text"
        self.mode = mode
        self.out = out
        self.total = 0
        self.bar: Any = None
        self.task: Any = None

    def _print(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def start(self, run: Any) -> None:
        """The header line (data, device, steps, batch, updates), then the bar."""
        if self.mode == "none" or not run.trainer.is_main:
            self.mode = "none"
            return
        self.total = run.total
        self._print(run.header)
        if run.start >= run.total:
            return
        if self.mode == "notebook":
            self.bar = _NotebookBar("train")
            self.bar.update(run.start, run.total, force=True)
        elif self.mode == "terminal":
            self.bar, self.task = training_bar(run.start, run.total)

    def log(self, record: dict) -> None:
        """One metrics line: the bar moves (its terms shown beside it), or one text line."""
        from genvae.core.training.metrics import terms_text

        if self.mode == "none":
            return
        if self.mode == "notebook" and self.bar is not None:
            self.bar.update(record["step"], self.total, terms_text(record))
        elif self.mode == "terminal" and self.bar is not None:
            self.bar.update(self.task, completed=record["step"], terms=terms_text(record))
        else:
            self._print(f"step {record['step']}/{self.total}  {terms_text(record)}")

    def close(self) -> None:
        if self.mode == "terminal" and self.bar is not None:
            self.bar.stop()
        self.bar = None


@contextmanager
def engine_progress(mode: str | bool = "auto") -> Iterator[None]:
    """While the block runs, the engine's progress reports (decoding a data set, evaluating) are drawn: HTML bars
    in a notebook, rich bars on a terminal's standard error, nothing elsewhere or with ``mode`` False."""
    from genvae.core.progress import reporting

    if mode is False or mode == "none" or mode is None:
        yield
        return
    if in_notebook() and mode in (True, "auto", "notebook"):
        bars: dict[str, _NotebookBar] = {}

        def draw(task: str, done: int, total: int) -> None:
            if task not in bars:
                bars[task] = _NotebookBar(task)
            bars[task].update(done, total)

        with reporting(draw):
            yield
        return
    if sys.stderr.isatty() and mode in (True, "auto", "terminal"):
        from rich.console import Console

        from genvae.cli.progress import terminal_progress

        with terminal_progress(Console(stderr=True)):
            yield
        return
    yield


__all__ = ["Figure", "ImageGrid", "MAX_SHOWN", "Report", "TrainProgress", "engine_progress", "in_notebook", "show"]
