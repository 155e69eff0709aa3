"""``genvae``: compose, train, sample and inspect VAE-family models from the command line.

Errors caused by input are one line on stderr with exit status 1; ``genvae --debug ...`` shows the
traceback instead. Plugins add commands through the ``genvae_register_commands`` hook.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from genvae.cli.commands import (
    COUNT,
    SAMPLE_BATCH,
    SEED,
    FiniteFloat,
    console,
    data_options,
    err_console,
    load_for_inference,
    load_image,
    registry,
    terms_text,
)
from genvae.core.components import COMPONENT_KINDS
from genvae.core.errors import GenvaeError, one_line, shorten

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

MESSAGE_LIMIT = 400  # characters of one error line; longer messages are cut


def print_error(message: str) -> None:
    """``Error: <message>`` on one line of stderr; the message is printed as text (no rich markup)."""
    err_console.print("[bold red]Error:[/] ", end="", highlight=False, soft_wrap=True)
    err_console.print(one_line(message, MESSAGE_LIMIT - len("Error: ")), markup=False, highlight=False,
                      soft_wrap=True, emoji=False)


def _stopped(signum: int) -> str:
    """What a stop signal did, as the shell says it: ``Interrupted`` (SIGINT) or ``Terminated`` (SIGTERM)."""
    return "Terminated" if signum == getattr(signal, "SIGTERM", None) else "Interrupted"


class GenvaeGroup(click.Group):
    """A command group whose every error is one line (``--debug`` shows the traceback).

    Input errors exit 1, usage errors (click's) exit 2, a run stopped by SIGINT/SIGTERM exits
    128 + the signal's number after writing its checkpoint.
    """

    def invoke(self, ctx: click.Context):
        from genvae.cli.progress import terminal_progress
        from genvae.core.training import TrainingStopped

        try:
            with terminal_progress(err_console):  # the engine's progress reports as bars on a terminal
                return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except TrainingStopped as exc:
            err_console.print(one_line(str(exc)), markup=False, highlight=False, soft_wrap=True)
            ctx.exit(128 + exc.signum)
        except GenvaeError as exc:
            if ctx.meta.get("genvae.debug"):
                raise
            print_error(str(exc))
            ctx.exit(1)
        except KeyboardInterrupt as exc:  # a second stop signal, or one before training's own handler was in place
            signum = getattr(exc, "signum", signal.SIGINT)
            err_console.print(f"{_stopped(signum)}; nothing was written after the last checkpoint (resume with "
                              "--resume).")
            ctx.exit(128 + signum)
        except OSError as exc:  # a path the file system refuses (too long, permission denied, read-only ...)
            if ctx.meta.get("genvae.debug"):
                raise
            where = f": {str(exc.filename)[:80]}" if exc.filename else ""
            print_error(f"{exc.strerror or type(exc).__name__}{where}")
            ctx.exit(1)
        except Exception as exc:  # an internal error: still one line unless --debug
            if ctx.meta.get("genvae.debug"):
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            print_error(f"internal error {type(exc).__name__}: {first[:200]} (rerun with --debug for the traceback)")
            ctx.exit(1)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """click's standalone mode, but usage errors are one line too."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else (prog_name or "genvae")
            print_error(f"{exc.format_message()} (see {where} --help)")
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            print_error(exc.format_message())
            sys.exit(exc.exit_code)
        except (click.exceptions.Abort, KeyboardInterrupt) as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            err_console.print(f"{_stopped(signum)}.")
            sys.exit(128 + signum)
        sys.exit(code if isinstance(code, int) else 0)


MAX_SAMPLES = 10_000
SAMPLE_COUNT = click.IntRange(1, MAX_SAMPLES)


@click.group(cls=GenvaeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.option("--max-memory", metavar="SIZE", help="Refuse models estimated to need more memory than this "
              "(e.g. 16G; default: half the available memory; also GENVAE_MAX_MEMORY).")
@click.version_option(package_name="genvae")
@click.pass_context
def cli(ctx: click.Context, debug: bool, max_memory: str | None) -> None:
    """genvae: plugin-based VAE-family generative image models."""
    ctx.meta["genvae.debug"] = debug
    if max_memory is not None:
        from genvae.core.budget import parse_limit

        parse_limit(max_memory, where="--max-memory")  # a one-line error now, not at the first model load
        os.environ["GENVAE_MAX_MEMORY"] = max_memory


# -- list-plugins ----------------------------------------------------------------------------------


@cli.command("list-plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_plugins(as_json: bool) -> None:
    """Plugins with their status and the components, datasets, presets and commands they provide."""
    reg = registry()
    commands = plugin_commands(reg)
    plugins = [
        {
            "name": p.name,
            "module": p.module,
            "distribution": p.distribution,
            "version": p.version,
            "builtin": p.builtin,
            "status": p.status,
            "error": p.error,
            "provides": {k: sorted(v) for k, v in p.provides.items()}
            | ({"command": commands[p.name]} if p.name in commands else {}),
        }
        for p in reg.plugins.values()
    ]
    presets = [{"name": n, "plugin": e.plugin, "help": e.help} for n, e in sorted(reg.entries["preset"].items())]
    if as_json:
        click.echo(json.dumps({"plugins": plugins, "presets": presets}, indent=2))
        return
    table = Table(title="genvae plugins", show_lines=False)
    for col in ("plugin", "distribution", "source", "status", "provides"):
        table.add_column(col)
    for p in plugins:
        dist = f"{p['distribution'] or '?'} {p['version'] or ''}".strip()
        status = {"loaded": "[green]loaded[/]", "disabled": "[yellow]disabled[/]"}.get(
            p["status"], f"[red]{p['status']}[/]: {p['error']}"
        )
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in p["provides"].items())
        table.add_row(p["name"], dist, "built-in" if p["builtin"] else "third-party", status, provides)
    console.print(table)
    ptable = Table(title="presets")
    for col in ("preset", "plugin", "description"):
        ptable.add_column(col)
    for p in presets:
        ptable.add_row(p["name"], p["plugin"], p["help"])
    console.print(ptable)


@cli.command("describe")
@click.argument("kind", type=click.Choice(COMPONENT_KINDS))
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def describe(kind: str, name: str, as_json: bool) -> None:
    """A component's purpose, options (type, default, help), capabilities; a decoder's output space; for losses,
    role, phases and branches."""
    import inspect

    import attrs

    from genvae.core.options import describe_options
    from genvae.core.registry import KIND_NAMES

    entry = registry().get(kind, name)
    cls = entry.obj
    def type_text(t) -> str:
        if isinstance(t, str) or getattr(t, "__origin__", None) is not None:
            return str(t).replace("typing.", "")
        return getattr(t, "__name__", str(t))

    types = {a.name: type_text(a.type) for a in attrs.fields(cls.Options)}
    info = {
        "kind": kind, "name": name, "plugin": entry.plugin, "summary": inspect.getdoc(cls) or "",
        "options": [{"name": n, "type": types.get(n), "default": d, "help": h}
                    for n, d, h in describe_options(cls.Options)],
        "provides": sorted(getattr(cls, "provides", ())), "requires": sorted(getattr(cls, "requires", ())),
    }
    if kind == "loss":
        info.update(role=cls.role, phases=list(cls.phases), branches=list(cls.branches),
                    phase_order=list(cls.phase_order), may_skip=cls.may_skip)
    if kind == "decoder":
        info["output"] = cls.output
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    console.print(f"[bold]{KIND_NAMES[kind]} '{name}'[/] (plugin {entry.plugin}): {info['summary']}",
                  highlight=False)
    extra = [f"{k}: {', '.join(info[k])}" for k in ("provides", "requires", "phases", "branches") if info.get(k)]
    if kind == "decoder":
        extra.insert(0, f"output space: {info['output']}")
    if kind == "loss":
        extra.insert(0, f"role: {info['role']}")
    if extra:
        console.print(" | ".join(extra), highlight=False)
    table = Table(title="options")
    for col in ("option", "type", "default", "help"):
        table.add_column(col)
    for o in info["options"]:
        table.add_row(o["name"], o["type"] or "", o["default"], o["help"])
    console.print(table)


# -- build / info ----------------------------------------------------------------------------------


def _updates_text(updates) -> str:
    """A step's updates as ``mi@posterior, model@prior:fresh, discriminator`` (the branch only where it is not all)."""
    return ", ".join(u["phase"] + (f"@{u['branch']}" if u["branch"] != "all" else "") + (":fresh" if u["fresh"] else "")
                     for u in updates)


def _param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def print_summary(model, title: str) -> None:
    from genvae.core.registry import KIND_NAMES

    spec = model.spec
    table = Table(title=title)
    for col in ("component", "name", "parameters", "options"):
        table.add_column(col)
    for comp in model.components().values():
        kind = KIND_NAMES.get(comp.kind, comp.kind)
        from genvae.core.options import options_to_dict

        opts = ", ".join(f"{k}={shorten(v, 60) if isinstance(v, dict) else v}"
                         for k, v in options_to_dict(comp.options).items())
        label = comp.name if comp.kind != "loss" else f"{comp.name} (weight {comp.weight:g})"
        table.add_row(kind, label, f"{_param_count(comp):,}", opts)
    console.print(table)
    layout = model.layout
    groups = f", {layout.num_groups} {layout.group_label}s of {layout.group_sizes[0]}" if layout.num_groups > 1 else ""
    console.print(
        f"image {spec.channels}x{spec.image_size}x{spec.image_size} | latent {list(layout.shape)} "
        f"({layout.numel} values{groups}) | decoder input {list(model.transform.output_shape)} | "
        f"updates: {_updates_text(model.updates(spec.train.schedule))}"
    )
    generator = sum(_param_count(m) for m in model.transform.generation_modules()) + _param_count(model.decoder)
    autoencoder = sum(_param_count(m) for m in (model.encoder, model.transform, model.decoder))
    console.print(f"parameters: {_param_count(model):,} in all | encoder + latent transform + decoder: "
                  f"{autoencoder:,} | generator side (latent generation + decoder): {generator:,}")


@cli.command()
@click.option("--preset", help="A named recipe (genvae list-plugins shows them).")
@click.option("--encoder", help="Encoder name; alone, it brings its counterpart decoder and latent transform.")
@click.option("--decoder", help="Decoder name.")
@click.option("--prior", help="Prior name (default: normal).")
@click.option("--transform", help="Latent transform name (fc, conv, ...).")
@click.option("--loss", "losses", help="Comma list of losses, NAME or NAME:WEIGHT; mse and kl are added if "
              "no reconstruction or divergence loss is named.")
@click.option("--image-size", type=click.IntRange(1, 8192), help="Square image size in pixels.")
@click.option("--channels", type=click.Choice(["1", "3"]), help="Image channels, 1 or 3.")
@click.option("--set", "sets", multiple=True, metavar="KIND.OPTION=VALUE",
              help="Override an option: encoder.width=32, loss.kl.weight=0.5, train.lr=3e-4 (repeatable).")
@click.option("--stage1", type=click.Path(file_okay=False, exists=True),
              help="A trained model the new one builds on (--preset stage2): sets encoder.stage1.")
@click.option("-o", "--output", "folder", required=True, type=click.Path(file_okay=False),
              help="Model folder to write (config.json + model.safetensors).")
@click.option("--force", is_flag=True, help="Replace the model in an existing genvae model folder (only files genvae "
              "wrote there are removed; other folders are never built into).")
def build(preset, encoder, decoder, prior, transform, losses, image_size, channels, sets, stage1, folder,
          force) -> None:
    """Compose a model from components, check it, and write a freshly initialised model folder."""
    from genvae.core.checkpoint import CONFIG, HISTORY, WEIGHTS, save_model
    from genvae.core.compose import compose_spec
    from genvae.core.folder import ModelFolder, lock_folder
    from genvae.core.model import build_model
    from genvae.core.training import seed_everything

    out = Path(folder)
    ModelFolder(out).check_can_build_into()
    if (out / CONFIG).exists() and not force:
        raise GenvaeError(f"{out} already holds a model; choose another -o folder or pass --force")
    if stage1 is not None:  # a model that builds on a trained one (Stage2): its encoder's stage1 option
        sets = (*sets, f"encoder.stage1={json.dumps(str(stage1))}")
    spec = compose_spec(preset=preset, encoder=encoder, transform=transform, decoder=decoder, prior=prior,
                        losses=losses, image_size=image_size, channels=int(channels) if channels else None,
                        sets=sets, registry=registry())
    seed_everything(spec.train.seed)
    model = build_model(spec, registry())
    out.mkdir(parents=True, exist_ok=True)
    with lock_folder(out):
        mf = ModelFolder(out)
        mf.check_can_build_into()  # again, now that no other genvae process can change it
        if (out / CONFIG).exists() and not force:
            raise GenvaeError(f"{out} already holds a model; choose another -o folder or pass --force")
        mf.check_outputs([CONFIG, WEIGHTS, HISTORY])  # a file of the user's at one of them: refused, nothing changed
        mf.remove_orphans()
        if force:
            mf.remove_all(keep=(CONFIG, WEIGHTS))  # replaced atomically below
        save_model(model, out)
        _record_command(out)
    print_summary(model, f"built {out}" + (f" from preset '{spec.preset}'" if spec.preset else ""))


@cli.command()
@click.argument("folder", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the resolved spec as JSON.")
def info(folder, as_json) -> None:
    """Show a model folder: its components, parameter counts, latent and training state."""
    from genvae.core.checkpoint import latest_checkpoint, load_model

    model = load_model(folder, registry=registry())
    if as_json:
        click.echo(json.dumps(model.resolved_spec().to_dict(), indent=2))
        return
    print_summary(model, f"model {folder}")
    last = latest_checkpoint(folder)
    console.print(f"last checkpoint: {last.name if last else 'none (not trained yet)'}")


# -- train -----------------------------------------------------------------------------------------


@cli.command()
@click.argument("folder", type=click.Path())
@data_options
@click.option("--epochs", type=COUNT, help="Passes over the data.")
@click.option("--max-steps", type=COUNT, help="Stop after this many steps in total.")
@click.option("--batch-size", type=COUNT, help="Images per step.")
@click.option("--lr", type=FiniteFloat(positive=True), help="Learning rate of the model phase.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--amp", is_flag=True, default=None, help="Mixed precision (CUDA).")
@click.option("--channels-last", is_flag=True, default=None, help="Channels-last memory layout (faster convs on GPUs).")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the encoder, transform and "
              "decoder.")
@click.option("--seed", type=SEED, help="Seed of every random stream.")
@click.option("--flip/--no-flip", default=None, help="Random horizontal flips.")
@click.option("--checkpoint-every", type=COUNT, help="Steps between checkpoints.")
@click.option("--log-every", type=COUNT, help="Steps between metric lines.")
@click.option("--logger", "loggers", metavar="NAME[,NAME]", help="Experiment loggers besides metrics.jsonl: "
              "tensorboard, mlflow, or a plugin's (genvae list-plugins).")
@click.option("--set", "sets", multiple=True, metavar="train.OPTION=VALUE", help="Any training option.")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint (same step, same RNG streams).")
@click.option("--restart", is_flag=True, help="Discard genvae's checkpoints, metrics and sample grids in the folder "
              "and train on from model.safetensors (checked before anything is deleted).")
@click.option("--report", "write_report", is_flag=True, help="Write FOLDER/report.html at the end (genvae report).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(folder, data, data_root, download, epochs, max_steps, batch_size, lr, device, amp, channels_last, compile_,
          seed, flip, checkpoint_every, log_every, loggers, sets, resume, restart, write_report, quiet) -> None:
    """Train a model folder; checkpoints, metrics.jsonl and a sample grid per epoch go into it.

    Ctrl-C or SIGTERM stops at the next step with a checkpoint (a second Ctrl-C aborts at once);
    one process at a time may train a folder.
    """
    from genvae.cli.report import REPORT
    from genvae.core.folder import ModelFolder
    from genvae.core.training import train_run

    folder = Path(folder)
    overrides = {k: v for k, v in dict(epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, amp=amp,
                                       channels_last=channels_last, compile=compile_, seed=seed, flip=flip,
                                       checkpoint_every=checkpoint_every, log_every=log_every).items()
                 if v is not None}
    if loggers is not None:
        overrides["loggers"] = tuple(name.strip() for name in loggers.split(",") if name.strip())
    with _RunDisplay(quiet, resume) as display:
        result = train_run(folder, data=data, data_root=data_root, download=download, overrides=overrides,
                           sets=sets, device=device, resume=resume, restart=restart, command=_command_record(),
                           extra_outputs=(REPORT,) if write_report else (), registry=registry(),
                           on_start=display.start, on_log=display.log)
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
        self.bar: Progress | None = None
        self.task: TaskID | None = None
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
            err_console.print(f"skipped {len(images.skipped)} unreadable file(s), e.g. {images.skipped[0]}",
                              markup=False, highlight=False)
        if self.resume and not run.resumed:
            err_console.print("no checkpoint to resume from; starting at step 0")
        processes = f" | {trainer.dist.world_size} processes ({trainer.dist.backend})" if trainer.dist else ""
        console.print(f"training {run.folder} on {images.source} ({len(images)} images) | {trainer.device}{processes} "
                      f"| step {run.start} -> {run.total} | batch {trainer.batch_size} | updates: {run.updates_text}",
                      markup=False, highlight=False)
        if run.start < run.total and not self.quiet and console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[terms]}"), console=console)
            self.bar.start()
            self.task = self.bar.add_task("train", total=run.total, completed=run.start, terms="")

    def log(self, record: dict) -> None:
        if self.silent:
            return
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=record["step"], terms=terms_text(record))
        else:
            click.echo(f"step {record['step']}/{self.total}  {terms_text(record)}")


def _command_record() -> dict:
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


def _record_command(folder: Path) -> None:
    """Append this command to FOLDER/commands.jsonl."""
    from genvae.core.checkpoint import HISTORY
    from genvae.core.folder import ModelFolder
    from genvae.core.training.metrics import append_json_line

    append_json_line(ModelFolder(folder), HISTORY, _command_record())


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


# -- report / plot ---------------------------------------------------------------------------------


@cli.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="The HTML page to write.")
@data_options
def report(folders, output, data, data_root, download) -> None:
    """One self-contained HTML page per set of model folders: components, loss curves (several folders overlay),
    every epoch's samples, reconstructions, evaluation scores, commands and config."""
    from genvae.cli.report import build_report, write_page

    page = build_report([Path(f) for f in folders], data=data, data_root=data_root, download=download)
    write_page(page, Path(output))
    console.print(f"wrote the report of {len(folders)} model(s) to {output}")


@cli.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--term", required=True, help="The logged term to plot, e.g. kl, mse, model/total, adv.d.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The PNG file to write.")
@click.option("--x", "x_axis", type=click.Choice(["step", "time"]), default="step", show_default=True,
              help="What the x axis counts: optimisation steps, or wall-clock minutes since each run's first "
                   "logged line.")
def plot(folders, term, output, x_axis) -> None:
    """One plot of a logged term over the steps (or wall-clock time) of one or several runs (overlaid), as a PNG."""
    from genvae.cli.report import plot_png
    from genvae.core.files import atomic_write
    from genvae.core.images import check_image_output

    if not str(output).lower().endswith(".png"):
        raise GenvaeError(f"plot -o {output}: the plot is a PNG file; name it something.png")
    check_image_output(Path(output))
    png = plot_png([Path(f) for f in folders], term, x_axis)
    atomic_write(Path(output), lambda f: f.write(png))
    console.print(f"wrote {term} of {len(folders)} run(s) to {output}")


# -- sample / reconstruct --------------------------------------------------------------------------


def check_json_output(path: Path) -> None:
    """A JSON report may replace only a JSON file genvae wrote (it carries ``genvae_version``)."""
    from genvae.core.files import check_writable_file

    check_writable_file(path)
    if path.exists():
        try:
            ours = path.stat().st_size < 1 << 20 and "genvae_version" in json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError, TypeError):
            ours = False
        if not ours:
            raise GenvaeError(f"{path} exists and was not written by genvae; remove it or choose another path")


@cli.command()
@click.argument("folder", type=click.Path())
@click.option("-n", "count", default=64, show_default=True, type=SAMPLE_COUNT, help="Number of samples.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Image grid to write; the extension picks the format (png, jpg, webp, bmp, tif).")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--device", default="auto", show_default=True)
@click.option("--nrow", type=COUNT, help="Images per row (default: square grid).")
@click.option("--from", "source", type=click.Path(dir_okay=False, exists=True),
              help="An image whose coarse latent groups are kept (with --fix-levels).")
@click.option("--fix-levels", "--fix-groups", "fix", multiple=True, type=int,
              help="Keep the first K latent groups (coarsest pyramid levels / first time steps) of --from and "
              "sample the rest; repeat for one grid per K.")
def sample(folder, count, output, seed, device, nrow, source, fix) -> None:
    """Draw samples from the prior and write them as a grid (generated in chunks that fit the memory limit)."""
    import torch

    from genvae.core.budget import grid_bytes
    from genvae.core.decode import to_uint8
    from genvae.core.images import check_image_output, save_grid
    from genvae.core.inference import draw_samples

    if bool(source) != bool(fix):
        raise GenvaeError("--from IMAGE and --fix-levels K go together")
    out = Path(output)
    for k in fix if len(fix) > 1 else ():
        check_image_output(out.with_name(f"{out.stem}-fix{k}{out.suffix}"))
    check_image_output(out)
    model, dev = load_for_inference(folder, device, seed)
    shown = count + bool(fix)  # with --from, the input comes first
    budget: dict[str, Any] = {"held": grid_bytes(model, shown),
                              "holding": f"the {shown:,} images and the grid it writes"}
    if not fix:
        save_grid(draw_samples(model, count, dev, block=SAMPLE_BATCH, **budget), output, nrow=nrow)
        console.print(f"wrote {count} samples to {output}")
        return
    layout = model.layout
    bad = [k for k in fix if not 0 <= k <= layout.num_groups]
    if bad:
        raise GenvaeError(f"--fix-levels {bad[0]}: the model's latent has {layout.num_groups} "
                          f"{layout.group_label}s; use 0..{layout.num_groups}")
    x = load_image(source, model)
    with torch.no_grad():
        fixed = model.encode(x).mean
        for k in fix:
            # every latent drawn at once (block=count), as they always were
            images = draw_samples(model, count, dev, block=count, fixed=fixed, fixed_groups=k, **budget)
            path = out if len(fix) == 1 else out.with_name(f"{out.stem}-fix{k}{out.suffix}")
            save_grid(torch.cat([to_uint8(x.cpu()), images]), path, nrow=nrow)
            console.print(f"wrote {count} samples keeping {k} {layout.group_label}(s) of {source} to {path} "
                          "(first image: the input)")


def _metric_list(value: str | None) -> list[str]:
    names = [m.strip() for m in (value or "").split(",") if m.strip()]
    return list(dict.fromkeys(names))


@cli.command()
@click.argument("folder", type=click.Path())
@data_options
@click.option("--metrics", "metrics", default=None, metavar="NAMES",
              help="Comma-separated metrics (genvae list-plugins lists them): rmse, fid, kid, is, pr. [default: rmse]")
@click.option("--metric", "metrics_alias", default=None, hidden=True, help="Same as --metrics.")
@click.option("--classifier", type=click.Path(), help="Feature network for fid/kid/is/pr: a folder from genvae "
              "train-classifier (or a local Inception-v3 .safetensors file).")
@click.option("--compare", "others", multiple=True, type=click.Path(), help="Another model folder, scored the same "
              "way beside FOLDER (repeatable).")
@click.option("--split", default="test", show_default=True, help="Dataset split (named datasets).")
@click.option("--limit", type=COUNT, help="Evaluate only the first N images.")
@click.option("--samples", "n_samples", type=COUNT, help="Samples per model for the sample metrics [default: as many "
              "as real images].")
@click.option("--batch-size", default=256, show_default=True, type=COUNT)
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the samples.")
@click.option("--device", default="auto", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the report as JSON here too.")
def evaluate(folder, data, data_root, download, metrics, metrics_alias, classifier, others, split, limit, n_samples,
             batch_size, seed, device, output) -> None:
    """Score models on a dataset: reconstruction RMSE and sample quality (FID, KID, IS, precision/recall) in a
    feature network's space; several models side by side with --compare. Prints a table and JSON."""
    from genvae.core.checkpoint import write_json
    from genvae.core.data import load_data
    from genvae.core.evaluation import EvalData, metric_needs, open_feature_network
    from genvae.core.progress import report as report_progress

    if metrics and metrics_alias:
        raise GenvaeError("give --metrics once (--metric is its old name)")
    names = _metric_list(metrics or metrics_alias or "rmse")
    reg = registry()
    known = reg.names("metric")
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise GenvaeError(f"unknown metric '{unknown[0] if unknown else ''}'; metrics: {', '.join(known)}")
    if output:
        check_json_output(Path(output))
    needs = metric_needs(names, reg)
    if "features" in needs and classifier is None:
        wanting = [n for n in names if "features" in reg.get("metric", n).extra.get("needs", ())]
        raise GenvaeError(f"{', '.join(wanting)} need a feature network: train one with genvae train-classifier "
                          "--data DATA -o CLF and pass --classifier CLF")
    folders = [folder, *others]
    results: list[dict[str, Any]] = []
    network, source, count = None, None, 0
    for path in folders:
        model, dev = load_for_inference(path, device, seed)
        if network is None and classifier is not None:
            network = open_feature_network(classifier, reg, dev)
        spec = model.spec
        images = load_data(data, image_size=spec.image_size, channels=spec.channels, split=split, root=data_root,
                           download=download, registry=reg)
        real = images.images if limit is None else images.images[:limit]
        source, count = images.source, len(real)

        def progress(task: str, done: int, total: int, where: str = str(path)) -> None:
            report_progress(f"evaluate {where}: {task}", done, total)

        batch = EvalData(model, real, dev, features=network, n_samples=n_samples or len(real),
                         batch_size=batch_size, seed=seed, progress=progress)
        scores: dict[str, dict[str, float]] = {}
        for name in names:
            scores[name] = reg.get("metric", name).obj(batch)
        results.append({"model": str(path), "metrics": scores, "samples": batch.n_samples if "samples" in needs
                        else 0})
    from genvae import __version__

    feature_label = network.label if network is not None else None
    labels = {}
    for name in names:
        label = reg.get("metric", name).extra.get("label", name)
        uses_features = "features" in reg.get("metric", name).extra.get("needs", ())
        labels[name] = f"{label} ({feature_label})" if uses_features and feature_label else label
    report = {"genvae_version": __version__, "data": source, "split": split, "images": count, "seed": seed,
              "feature_network": feature_label, "classifier": str(classifier) if classifier else None,
              "labels": labels, "models": results}
    if output:
        write_json(Path(output), report)
    table = Table(title=f"{source}, {count} images" + (f"; features: {feature_label}" if feature_label else ""))
    table.add_column("metric")
    for r in results:
        table.add_column(r["model"], justify="right")
    for name in names:
        for key in results[0]["metrics"][name]:
            row = [f"{labels[name]}: {key}" if key != name else labels[name]]
            row += [f"{r['metrics'][name][key]:.4g}" for r in results]
            table.add_row(*row)
    err_console.print(table)
    click.echo(json.dumps(report))


@cli.command()
@click.argument("folder", type=click.Path())
@data_options
@click.option("-n", "count", default=32, show_default=True, type=click.IntRange(1, 1024), help="Number of images.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Image grid to write; the extension picks the format (png, jpg, webp, bmp, tif).")
@click.option("--split", default="test", show_default=True, help="Dataset split (named datasets).")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--device", default="auto", show_default=True)
def reconstruct(folder, data, data_root, download, count, output, split, seed, device) -> None:
    """Reconstruct images (posterior mean): rows alternate originals and reconstructions."""
    from genvae.cli.report import paired_rows
    from genvae.core.budget import grid_bytes, image_bytes
    from genvae.core.data import load_data
    from genvae.core.decode import to_model_range, to_uint8
    from genvae.core.images import check_image_output, save_grid
    from genvae.core.inference import reconstruct_images

    check_image_output(Path(output))
    model, dev = load_for_inference(folder, device, seed)
    spec = model.spec
    images = load_data(data, image_size=spec.image_size, channels=spec.channels, split=split, root=data_root,
                       download=download, registry=registry())
    pixels = images.images[:count]
    n = len(pixels)
    # kept beside the model: the originals in [-1, 1], the pairs as uint8 and the grid they make
    held = image_bytes(model, n) + image_bytes(model, 2 * n, 1) + grid_bytes(model, 2 * n)
    x_hat = reconstruct_images(model, pixels, dev, held=held, holding=f"the {n:,} images and the grid it keeps")
    save_grid(paired_rows(pixels, to_uint8(x_hat)), output, nrow=8)
    mse = (x_hat - to_model_range(pixels)).pow(2).mean().item()
    console.print(f"wrote {n} reconstructions to {output} (pixel MSE {mse:.4f} in [-1, 1] units)")


# -- install / uninstall ---------------------------------------------------------------------------


def _pip(args: list[str]) -> None:
    code = subprocess.call([sys.executable, "-m", "pip", *args])
    if code:
        raise GenvaeError(f"pip {' '.join(args)} failed with exit status {code}")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("packages", nargs=-1, required=True)
def install(packages) -> None:
    """Install plugins (or any package) into genvae's own environment with pip."""
    _pip(["install", *packages])


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("packages", nargs=-1, required=True)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def uninstall(packages, yes) -> None:
    """Uninstall packages from genvae's environment with pip."""
    _pip(["uninstall", *(["-y"] if yes else []), *packages])


@cli.group("cache")
def cache_group() -> None:
    """The on-disk cache of decoded training images (GENVAE_CACHE; 'off' keeps images in memory)."""


def _cache_root() -> Path | None:
    """The image cache's folder, or None (after saying so) when GENVAE_CACHE=off."""
    from genvae.core import cache

    root = cache.cache_root()
    if root is None:
        console.print("the image cache is off (GENVAE_CACHE=off)")
    return root


@cache_group.command("list")
def cache_list() -> None:
    """What the cache holds: source, images, size on disk."""
    from genvae.core import cache

    root = _cache_root()
    if root is None:
        return
    found = cache.entries(root)
    table = Table("source", "images", "size", "folder", title=f"image cache {root}")
    for entry in found:
        n, c, h, w = entry["shape"]
        table.add_row(str(entry["source"]), f"{n:,} x {c}x{h}x{w}", f"{entry['bytes'] / 2**20:,.1f} MiB",
                      Path(entry["folder"]).name)
    console.print(table if found else f"the image cache {root} is empty")


@cache_group.command("clear")
def cache_clear() -> None:
    """Remove every cached data set (they are decoded again when next used)."""
    from genvae.core import cache

    root = _cache_root()
    if root is not None:
        console.print(f"removed {cache.clear(root)} cached data set(s) from {root}")


_plugin_commands_added = False


def add_plugin_commands() -> None:
    """Let plugins contribute commands (once per process); a plugin whose hook fails is marked failed, not fatal."""
    global _plugin_commands_added
    if _plugin_commands_added or os.environ.get("GENVAE_NO_PLUGIN_COMMANDS"):
        return
    _plugin_commands_added = True
    try:
        reg = registry()
    except Exception as exc:  # the CLI must start even when plugin loading is broken
        err_console.print(f"warning: plugins could not be loaded: {exc}")
        return
    for record, plugin in reg.command_plugins:
        try:
            reg.add_commands(record, plugin, cli)
        except Exception as exc:
            record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"


def plugin_commands(reg) -> dict[str, list[str]]:
    """The commands each plugin adds, by plugin name: its hook run on an empty group (a failing hook adds none)."""
    out: dict[str, list[str]] = {}
    for record, plugin in reg.command_plugins:
        probe = click.Group()
        try:
            reg.add_commands(record, plugin, probe)
        except Exception:  # add_plugin_commands marks the plugin failed
            continue
        if probe.commands:
            out[record.name] = sorted(probe.commands)
    return out


def main() -> None:
    add_plugin_commands()
    cli(prog_name="genvae")


if __name__ == "__main__":
    main()
