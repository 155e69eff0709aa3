"""What a run looks like, as one self-contained HTML page or one PNG: the engine of ``genvae report`` and
``genvae plot``, and of the Python API's :class:`genvae.display.Report`.

The page inlines everything (plots and images as base64 PNG, CSS in the page), so it opens offline in any
browser and can be mailed as one file. Per model folder: the components with their parameter counts, a
curve of every logged term (steps on the bottom axis, wall-clock minutes on the top one), the sample grid
of every epoch (drawn from the same z each epoch, so their stability shows), reconstructions of a few
images, the scores of ``genvae evaluate -o DIR/evaluation.json`` when present, the commands that trained
it and its config. With several folders the same term's curves overlay in one plot, and the tables stand
side by side. Plots are drawn by matplotlib, imported when a plot is drawn, on Figures outside pyplot (no backend
is chosen, so a notebook's own plots are untouched).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from genvae.core.checkpoint import CLASSES, HISTORY, METRICS
from genvae.core.errors import GenvaeError
from genvae.core.training.metrics import is_term

GENERATOR = '<meta name="generator" content="genvae report">'  # marks the pages genvae may overwrite
EVALUATION = "evaluation.json"
REPORT = "report.html"  # what train --report writes into the model folder


def read_json_lines(path: Path, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The JSON objects of one of a run's JSON-lines files that ``keep`` accepts; a torn or foreign line is
    skipped, a missing file is empty."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and keep(record):
            records.append(record)
    return records


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl``'s records; a torn last line is skipped."""
    return read_json_lines(folder / METRICS, lambda record: isinstance(record.get("step"), int))


def terms_of(records: Sequence[dict]) -> list[str]:
    """Every loss term logged, phase totals after the terms, in first-seen order."""
    seen: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if is_term(key) and isinstance(value, int | float | type(None)):
                seen.setdefault(key, None)
    return sorted(seen, key=lambda k: (k.endswith("/total") or "/" in k, list(seen).index(k)))


#: logged values that describe how training goes rather than what it minimises: drawn under "Training health"
HEALTH_MARKERS = (".acc_", "/grad_norm", "/skipped")


def is_health(term: str) -> bool:
    """Whether a logged term is a training-health diagnostic (discriminator accuracy, gradient norm, skip rate)."""
    return any(marker in term for marker in HEALTH_MARKERS)


def read_classes(folder: Path) -> list[dict[str, Any]]:
    """``classes.jsonl``'s records (train.classifier's class histogram per epoch); a torn line is skipped."""
    return read_json_lines(
        folder / CLASSES, lambda record: isinstance(record.get("counts"), list) and bool(record["counts"])
    )


def classes_png(records: Sequence[dict]) -> bytes:
    """Mode coverage over training: each epoch's share of samples per class (a heat map), and the rarest
    class's share (a collapsed model leaves classes at 0)."""
    import numpy as np

    counts = np.array([r["counts"] for r in records], dtype=float)
    shares = counts / counts.sum(1, keepdims=True).clip(min=1)
    fig = _figure(figsize=(9, 3.2))
    heat, low = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    image = heat.imshow(shares.T, aspect="auto", cmap="viridis", vmin=0, interpolation="nearest")
    heat.set_xlabel("epoch")
    heat.set_ylabel("class")
    heat.set_xticks(range(len(records)), [str(r.get("epoch", i + 1)) for i, r in enumerate(records)], fontsize=7)
    heat.set_yticks(range(shares.shape[1]))
    heat.set_title("share of samples per class", fontsize=10)
    fig.colorbar(image, ax=heat)
    low.plot([r.get("epoch", i + 1) for i, r in enumerate(records)], shares.min(1), marker="o")
    low.axhline(1 / shares.shape[1], color="grey", linewidth=0.8, linestyle="--")
    low.set_ylim(bottom=0)
    low.set_title("rarest class's share (dashed: uniform)", fontsize=10)
    low.set_xlabel("epoch")
    low.grid(alpha=0.3)
    fig.tight_layout()
    return _figure_png(fig)


def _figure(figsize: tuple[float, float]):
    """A matplotlib Figure of its own, outside pyplot: no backend is chosen and no global figure is left open, so a
    notebook's own plots (``%matplotlib inline``) are not disturbed; ``savefig`` draws it with Agg."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    # marked as genvae's (a PNG text chunk), so a later plot may replace it and nothing else
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": "genvae"})
    return buf.getvalue()


def plot_term(runs: dict[str, list[dict]], term: str, ax, x: str = "step") -> bool:
    """The curves of ``term`` for every run on ``ax``; False when no run logged it.

    ``x="step"``: steps on x, and wall-clock minutes on a top axis when there is one run (runs of
    different speeds share no such axis). ``x="time"``: wall-clock minutes since each run's first
    logged line on x, to compare runs by what they cost.
    """
    if x not in ("step", "time"):
        raise ValueError(f"x must be 'step' or 'time', got {x!r}")
    drawn = False
    for label, records in runs.items():
        if x == "step":
            points = [(r["step"], r[term]) for r in records if isinstance(r.get(term), int | float)]
        else:
            clocked = [r for r in records if isinstance(r.get("wall_time"), int | float)]
            start = clocked[0]["wall_time"] if clocked else 0.0
            points = [((r["wall_time"] - start) / 60, r[term]) for r in clocked if isinstance(r.get(term), int | float)]
        if points:
            ax.plot(*zip(*points, strict=True), label=label, linewidth=1.4)
            drawn = True
    ax.set_title(term, fontsize=10)
    ax.set_xlabel("step" if x == "step" else "wall-clock minutes (from the first logged line)")
    ax.grid(alpha=0.3)
    if len(runs) == 1 and x == "step":
        records = next(iter(runs.values()))
        timed = [(r["step"], r["wall_time"]) for r in records if isinstance(r.get("wall_time"), int | float)]
        if len(timed) >= 2:
            steps, times = zip(*timed, strict=True)
            start = times[0]
            minutes = [(t - start) / 60 for t in times]

            def to_min(x):
                import numpy as np

                return np.interp(x, steps, minutes)

            def to_step(m):
                import numpy as np

                return np.interp(m, minutes, steps)

            top = ax.secondary_xaxis("top", functions=(to_min, to_step))
            top.set_xlabel("wall-clock minutes", fontsize=8)
    if len(runs) > 1 and drawn:
        ax.legend(fontsize=7)
    return drawn


def curves_png(runs: dict[str, list[dict]], terms: Sequence[str], x: str = "step") -> bytes | None:
    """The curves of ``terms`` (up to three plots a row) as PNG bytes; None when there is no term."""
    if not terms:
        return None
    cols = min(3, len(terms))
    rows = math.ceil(len(terms) / cols)
    fig = _figure(figsize=(4.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, term in zip(axes.flat, terms, strict=False):
        plot_term(runs, term, ax, x)
    for ax in list(axes.flat)[len(terms) :]:
        ax.axis("off")
    fig.tight_layout()
    return _figure_png(fig)


def _img(data: bytes, alt: str, css: str = "") -> str:
    return f'<img alt="{html.escape(alt)}" class="{css}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _components(model) -> str:
    rows = []
    for prefix, comp in model.components().items():
        count = sum(p.numel() for p in comp.parameters())
        label = comp.name if comp.kind != "loss" else f"{comp.name} (weight {comp.weight:g})"
        rows.append(f"<tr><td>{html.escape(prefix)}</td><td>{html.escape(label)}</td><td class=num>{count:,}</td></tr>")
    total = sum(p.numel() for p in model.parameters())
    rows.append(f"<tr class=total><td>all</td><td></td><td class=num>{total:,}</td></tr>")
    return "<table><tr><th>component</th><th>name</th><th>parameters</th></tr>" + "".join(rows) + "</table>"


def paired_rows(x, x_hat, nrow: int = 8):
    """Originals and their reconstructions as alternating rows of ``nrow`` (one grid, ``save_grid(..., nrow)``)."""
    import torch

    rows = []
    for i in range(0, x.shape[0], nrow):
        rows += [x[i : i + nrow], x_hat[i : i + nrow]]
    return torch.cat(rows)


def _reconstructions(model, data, data_root, download, count: int = 16) -> bytes:
    import tempfile

    from genvae.core.budget import grid_bytes, image_bytes
    from genvae.core.data import load_data
    from genvae.core.decode import to_uint8
    from genvae.core.images import save_grid
    from genvae.core.inference import reconstruct_images

    spec = model.spec
    images = load_data(data, image_size=spec.image_size, channels=spec.channels, root=data_root, download=download)
    pixels = images.images[:count]
    held = image_bytes(model, 2 * len(pixels), 1) + grid_bytes(model, 2 * len(pixels))
    x_hat = reconstruct_images(model, pixels, "cpu", held=held, holding="the grid it draws", command="report")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recon.png"
        save_grid(paired_rows(pixels, to_uint8(x_hat)), path, nrow=8)
        return path.read_bytes()


def _evaluation(folder: Path) -> str:
    path = folder / EVALUATION
    if not path.exists():
        return (
            f"<p class=note>no {EVALUATION} (write one with <code>genvae evaluate {html.escape(str(folder))} -o "
            f"{html.escape(str(path))}</code>)</p>"
        )
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        scores = report["models"][0]["metrics"]  # genvae evaluate -o: this folder's model is the first
    except (ValueError, KeyError, IndexError, TypeError):
        return f"<p class=note>{EVALUATION} is not a genvae evaluate report</p>"
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td class=num>{_fmt(v)}</td></tr>" for k, v in scores.items())
    return f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return html.escape(str(value))


def _commands(folder: Path) -> str:
    lines = [
        record["command"] + (f"\n    # ran with {record['compute']}" if isinstance(record.get("compute"), str) else "")
        for record in read_json_lines(folder / HISTORY, lambda record: "command" in record)
    ]
    if not lines:
        return "<p class=note>no commands recorded</p>"
    return "<pre>" + "\n".join(html.escape(c) for c in lines) + "</pre>"


CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px} h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left} td.num{text-align:right}
tr.total td{font-weight:600}
.runs{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start} .run{flex:1;min-width:340px}
.grids{display:flex;gap:10px;flex-wrap:wrap} figure{margin:0} figcaption{font-size:12px;color:#555}
img.grid{width:220px;image-rendering:pixelated;border:1px solid #ccc} img.curves{max-width:100%}
pre{background:#f6f6f6;padding:8px;font-size:12px;overflow:auto;max-height:360px}
.note{color:#777;font-size:13px}
"""


def build_report(folders: Sequence[Path], *, data=None, data_root=None, download=False) -> str:
    """The report page for ``folders``, as HTML text."""
    from genvae.core.checkpoint import load_model

    names = [f.name or str(f) for f in folders]
    if len(set(names)) < len(names):
        names = [str(f) for f in folders]
    runs = {name: read_metrics(folder) for name, folder in zip(names, folders, strict=True)}
    terms: list[str] = []
    for records in runs.values():
        terms += [t for t in terms_of(records) if t not in terms]
    title = html.escape(", ".join(names))
    parts = [
        f"<!doctype html><html><head><meta charset=utf-8>{GENERATOR}<title>genvae report: {title}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>genvae report: {html.escape(', '.join(names))}</h1>",
    ]
    health = [t for t in terms if is_health(t)]
    terms = [t for t in terms if not is_health(t)]
    curves = curves_png(runs, terms)
    parts.append("<h2 id=curves>Loss curves</h2>")
    parts.append(_img(curves, "loss curves", "curves") if curves else "<p class=note>no metrics.jsonl yet</p>")
    if len(runs) > 1 and curves:  # one step axis cannot carry several runs' clocks: a second set by time
        parts.append("<h2 id=curves-time>Loss curves by wall-clock time</h2>")
        parts.append(_img(curves_png(runs, terms, "time") or b"", "loss curves by wall-clock time", "curves"))
    coverage = {name: read_classes(folder) for name, folder in zip(names, folders, strict=True)}
    if health or any(coverage.values()):
        parts.append(
            "<h2 id=health>Training health</h2><p class=note>Logged, never part of the objective: the "
            "discriminator's accuracy on real images, reconstructions and prior samples (before its update), each "
            "phase's gradient norm (before clipping), the share of steps whose update was skipped, and, with "
            "<code>--classifier</code>, the classes of a fixed batch of samples at each epoch's end.</p>"
        )
        if health:
            parts.append(_img(curves_png(runs, health) or b"", "training health", "curves"))
        for name, records in coverage.items():
            if records:
                parts.append(f"<h3>Mode coverage: {html.escape(name)}</h3>")
                parts.append(_img(classes_png(records), f"class histogram per epoch of {name}", "curves"))
    columns = []
    for name, folder in zip(names, folders, strict=True):
        model = load_model(folder, device="cpu", amp="config")
        model.eval()
        col = [
            f"<div class=run><h2>{html.escape(name)}</h2>",
            f"<p>{html.escape(model.spec.description or model.spec.preset or '')}</p>",
            "<h3>Components</h3>",
            _components(model),
        ]
        last = runs[name][-1] if runs[name] else None
        if last:
            col.append(
                "<h3>Last logged values</h3><table>"
                + "".join(
                    f"<tr><td>{html.escape(k)}</td><td class=num>{_fmt(v)}</td></tr>"
                    for k, v in last.items()
                    if k != "wall_time"
                )
                + "</table>"
            )
        col.append("<h3>Evaluation</h3>" + _evaluation(folder))
        grids = sorted((folder / "samples").glob("*.png")) if (folder / "samples").is_dir() else []
        col.append(
            "<h3>Samples, every epoch (the same z each time)</h3><div class=grids>"
            + "".join(
                f"<figure>{_img(p.read_bytes(), p.stem, 'grid')}<figcaption>{html.escape(p.stem)}</figcaption></figure>"
                for p in grids
            )
            + "</div>"
            if grids
            else "<p class=note>no sample grids yet</p>"
        )
        try:
            recon = _reconstructions(model, data, data_root, download)
            col.append(
                "<h3>Reconstructions (rows: originals, reconstructions)</h3>" + _img(recon, "reconstructions", "grid")
            )
        except Exception as exc:  # the data may be elsewhere: the rest of the report still stands
            col.append(f"<h3>Reconstructions</h3><p class=note>not drawn: {html.escape(str(exc).splitlines()[0])}</p>")
        col.append("<h3>Commands</h3>" + _commands(folder))
        config = json.dumps(model.resolved_spec().to_dict(), indent=2)
        col.append(f"<h3>Config</h3><pre>{html.escape(config)}</pre></div>")
        columns.append("".join(col))
    parts.append("<div class=runs>" + "".join(columns) + "</div></body></html>")
    return "".join(parts)


def plot_png(folders: Sequence[Path], term: str, x: str = "step") -> bytes:
    """One plot of ``term`` over steps (or wall-clock minutes) for every folder (overlaid), as PNG bytes."""
    runs = {(f.name or str(f)): read_metrics(f) for f in folders}
    fig = _figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    if not plot_term(runs, term, ax, x):
        known = sorted({t for records in runs.values() for t in terms_of(records)})
        raise GenvaeError(f"no run logged '{term}'; logged terms: {', '.join(known) or 'none'}")
    return _figure_png(fig)


def write_page(text: str, path: Path) -> None:
    """Write the page atomically; an existing file is replaced only when genvae wrote it."""
    from genvae.core.files import atomic_write_text, check_writable_file

    check_writable_file(path)
    if path.exists():
        head = path.read_bytes()[:400].decode("utf-8", "replace")
        if GENERATOR not in head:
            raise GenvaeError(f"{path} exists and was not written by genvae report; remove it or choose another path")
    atomic_write_text(path, text)
