"""``genvae report`` and ``genvae plot``: the commands. The page and the plots are drawn by
:mod:`genvae.core.report`, which the Python API (:class:`genvae.display.Report`) shares; its names are
re-exported here for the code that imported them from this module.
"""

from __future__ import annotations

from pathlib import Path

import click

from genvae.cli.commands import console, data_options
from genvae.core.errors import GenvaeError
from genvae.core.report import (  # noqa: F401 (re-exported: genvae.cli.report's names before the move)
    CSS,
    EVALUATION,
    GENERATOR,
    HEALTH_MARKERS,
    REPORT,
    build_report,
    classes_png,
    curves_png,
    is_health,
    paired_rows,
    plot_png,
    plot_term,
    read_classes,
    read_metrics,
    terms_of,
    write_page,
)

# -- report / plot ---------------------------------------------------------------------------------


@click.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "-o",
    "--output",
    default="report.html",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The HTML page to write.",
)
@data_options
def report(folders, output, data, data_root, download) -> None:
    """One self-contained HTML page per set of model folders: components, loss curves (several folders overlay),
    every epoch's samples, reconstructions, evaluation scores, commands and config."""
    page = build_report([Path(f) for f in folders], data=data, data_root=data_root, download=download)
    write_page(page, Path(output))
    console.print(f"wrote the report of {len(folders)} model(s) to {output}")


@click.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--term", required=True, help="The logged term to plot, e.g. kl, mse, model/total, adv.d.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The PNG file to write.")
@click.option(
    "--x",
    "x_axis",
    type=click.Choice(["step", "time"]),
    default="step",
    show_default=True,
    help="What the x axis counts: optimisation steps, or wall-clock minutes since each run's first logged line.",
)
def plot(folders, term, output, x_axis) -> None:
    """One plot of a logged term over the steps (or wall-clock time) of one or several runs (overlaid), as a PNG."""
    from genvae.core.files import atomic_write
    from genvae.core.images import check_image_output

    if not str(output).lower().endswith(".png"):
        raise GenvaeError(f"plot -o {output}: the plot is a PNG file; name it something.png")
    check_image_output(Path(output))
    png = plot_png([Path(f) for f in folders], term, x_axis)
    atomic_write(Path(output), lambda f: f.write(png))
    console.print(f"wrote {term} of {len(folders)} run(s) to {output}")


#: the commands this module adds to the genvae group
COMMANDS = [report, plot]
