"""``genvae train``: a run of the core training service (genvae.core.training.train_run), shown as it goes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from genvae.cli.commands import (
    COUNT,
    SEED,
    FiniteFloat,
    console,
    data_options,
    err_console,
    registry,
    terms_text,
)

#: genvae.core.precision.AMP_MODES, here without importing torch (tests/test_precision.py keeps them equal)
AMP_CHOICES = ("auto", "on", "bf16", "fp16", "off")


@click.command()
@click.argument("folder", type=click.Path())
@data_options
@click.option("--epochs", type=COUNT, help="Passes over the data.")
@click.option("--max-steps", type=COUNT, help="Stop after this many steps in total.")
@click.option(
    "--max-time",
    type=FiniteFloat(positive=True),
    metavar="SECONDS",
    help="Stop after this many seconds of this run (train.time_clock: wall, or process CPU seconds).",
)
@click.option("--batch-size", type=COUNT, help="Images per step.")
@click.option("--lr", type=FiniteFloat(positive=True), help="Learning rate of the model phase.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--amp",
    type=click.Choice(AMP_CHOICES),
    is_flag=False,
    flag_value="on",
    default=None,
    help="Mixed precision: auto (the default: bf16 on a CPU with AVX512-BF16/AMX or a GPU with bf16), bf16, "
    "fp16 (CUDA), off; a bare --amp is bf16 (fp16 on a GPU without bf16).",
)
@click.option(
    "--channels-last",
    type=click.Choice(("auto", "on", "off")),
    is_flag=False,
    flag_value="on",
    default=None,
    help="Channels-last layout of the conv stacks: auto (the default: on for models with 2-D convolutions), on, off.",
)
@click.option(
    "--compile", "compile_", is_flag=True, default=None, help="torch.compile the encoder, transform and decoder."
)
@click.option("--seed", type=SEED, help="Seed of every random stream.")
@click.option("--flip/--no-flip", default=None, help="Random horizontal flips.")
@click.option("--checkpoint-every", type=COUNT, help="Steps between checkpoints.")
@click.option("--log-every", type=COUNT, help="Steps between metric lines.")
@click.option(
    "--logger",
    "loggers",
    metavar="NAME[,NAME]",
    help="Experiment loggers besides metrics.jsonl: tensorboard, mlflow, or a plugin's (genvae list-plugins).",
)
@click.option(
    "--classifier",
    type=click.Path(),
    metavar="DIR",
    help="A feature network (genvae train-classifier): the class histogram of a fixed batch of samples per "
    "epoch, in classes.jsonl and the report (mode coverage).",
)
@click.option("--set", "sets", multiple=True, metavar="train.OPTION=VALUE", help="Any training option.")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint (same step, same RNG streams).")
@click.option(
    "--restart",
    is_flag=True,
    help="Discard genvae's checkpoints, metrics and sample grids in the folder "
    "and train on from model.safetensors (checked before anything is deleted).",
)
@click.option("--report", "write_report", is_flag=True, help="Write FOLDER/report.html at the end (genvae report).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(
    folder,
    data,
    data_root,
    download,
    epochs,
    max_steps,
    max_time,
    batch_size,
    lr,
    device,
    amp,
    channels_last,
    compile_,
    seed,
    flip,
    checkpoint_every,
    log_every,
    loggers,
    classifier,
    sets,
    resume,
    restart,
    write_report,
    quiet,
) -> None:
    """Train a model folder; checkpoints, metrics.jsonl and a sample grid per epoch go into it.

    Ctrl-C or SIGTERM stops at the next step with a checkpoint (a second Ctrl-C aborts at once);
    one process at a time may train a folder.
    """
    from genvae.cli.report import REPORT
    from genvae.core.folder import ModelFolder
    from genvae.core.training import train_run

    folder = Path(folder)
    overrides = dict(  # None: not given on the command line, the model's setting stays
        epochs=epochs,
        max_steps=max_steps,
        max_time=max_time,
        batch_size=batch_size,
        lr=lr,
        amp=amp,
        channels_last=channels_last,
        compile=compile_,
        seed=seed,
        flip=flip,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        classifier=classifier,
    )
    if loggers is not None:
        overrides["loggers"] = tuple(name.strip() for name in loggers.split(",") if name.strip())
    with _RunDisplay(quiet, resume) as display:
        result = train_run(
            folder,
            data=data,
            data_root=data_root,
            download=download,
            overrides=overrides,
            sets=sets,
            device=device,
            resume=resume,
            restart=restart,
            command=command_record(),
            extra_outputs=(REPORT,) if write_report else (),
            registry=registry(),
            on_start=display.start,
            on_log=display.log,
        )
    if not result.is_main:  # under torchrun only rank 0 prints
        return
    if result.step == result.start:
        console.print("nothing to do: the run already reached its last step (raise --max-steps or --epochs)")
        return
    console.print(f"done at step {result.step}: {terms_text(result.metrics, ', ')}")
    _print_run_summary(folder, result.start)
    if write_report:
        from genvae.cli.report import build_report

        page = build_report([folder], data=data, data_root=data_root, download=download)
        ModelFolder(folder).write_text(REPORT, page)  # recorded before it is written, as every genvae file is
        console.print(f"report: {folder / REPORT}")


class _RunDisplay:
    """What ``genvae train`` shows of a run: the header once it is checked, then a rich bar on a terminal (terms,
    images/s, the ETA) or one line per metrics line elsewhere (``--quiet`` too); nothing on torchrun's other
    ranks."""

    def __init__(self, quiet: bool, resume: bool):
        self.quiet, self.resume = quiet, resume
        self.bar: Any = None  # a rich Progress, once the run starts on a terminal
        self.task: Any = None
        self.total = 0
        self.silent = False

    def __enter__(self) -> _RunDisplay:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def start(self, run) -> None:
        trainer, images = run.trainer, run.trainer.data
        self.silent, self.total = not trainer.is_main, run.total
        if self.silent:
            return
        if images.skipped:
            err_console.print(
                f"skipped {len(images.skipped)} unreadable file(s), e.g. {images.skipped[0]}",
                markup=False,
                highlight=False,
            )
        if self.resume and not run.resumed:
            err_console.print("no checkpoint to resume from; starting at step 0")
        console.print(run.header, markup=False, highlight=False)
        if run.start < run.total and not self.quiet and console.is_terminal:
            from genvae.display import training_bar

            self.bar, self.task = training_bar(run.start, run.total, console)

    def log(self, record: dict) -> None:
        if self.silent:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=record["step"], terms=terms_text(record))
        else:
            click.echo(f"step {record['step']}/{self.total}  {terms_text(record)}")


def command_record() -> dict:
    """This command, as given on the command line, for the model folder's commands.jsonl (the report's
    "commands")."""
    import shlex
    import time

    from click.core import ParameterSource

    ctx = click.get_current_context()
    words = [ctx.command_path.split()[-1]]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif getattr(param, "is_flag", False):
            words.append(param.opts[0] if value else (param.secondary_opts or param.opts)[0])
        else:
            for item in value if getattr(param, "multiple", False) else [value]:
                words += [param.opts[0], str(item)]
    return {"command": "genvae " + " ".join(shlex.quote(w) for w in words), "time": round(time.time(), 3)}


def _print_run_summary(folder: Path, start: int) -> None:
    """A table of this run's terms: the first and last logged values, and the wall-clock time it took."""
    from genvae.cli.report import read_metrics, terms_of

    records = [r for r in read_metrics(folder) if r["step"] > start]
    if not records:
        return
    first, last = records[0], records[-1]
    table = Table(title=f"{folder}: steps {start} -> {last['step']}", title_justify="left")
    for col in ("term", f"step {first['step']}", f"step {last['step']}"):
        table.add_column(col, justify="left" if col == "term" else "right")
    for term in terms_of(records):
        table.add_row(term, *(f"{r[term]:.4g}" if isinstance(r.get(term), int | float) else "-" for r in (first, last)))
    if isinstance(first.get("wall_time"), int | float) and isinstance(last.get("wall_time"), int | float):
        table.caption = f"{last['wall_time'] - first['wall_time']:.1f} s between the first and last log lines"
    console.print(table)


#: the commands this module adds to the genvae group
COMMANDS = [train]
