"""``genvae``: compose, train, sample and inspect VAE-family models from the command line.

Errors caused by input are one line on stderr with exit status 1; ``genvae --debug ...`` shows the
traceback instead. Plugins add commands through the ``genvae_register_commands`` hook.
"""

from __future__ import annotations

import os
import signal
import sys

import click

from genvae.cli.commands import (
    err_console,
    registry,
)
from genvae.core.errors import GenvaeError, one_line

MESSAGE_LIMIT = 400  # characters of one error line; longer messages are cut


def print_error(message: str) -> None:
    """``Error: <message>`` on one line of stderr; the message is printed as text (no rich markup)."""
    err_console.print("[bold red]Error:[/] ", end="", highlight=False, soft_wrap=True)
    err_console.print(
        one_line(message, MESSAGE_LIMIT - len("Error: ")), markup=False, highlight=False, soft_wrap=True, emoji=False
    )


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
            err_console.print(
                f"{_stopped(signum)}; nothing was written after the last checkpoint (resume with --resume)."
            )
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

    def resolve_command(self, ctx: click.Context, args: list[str]):
        """click's lookup; an unknown command also names the plugins that failed to load (one may provide it)."""
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            from genvae.core.registry import get_registry

            note = get_registry().failed_note() if "No such command" in exc.message else ""
            if not note:
                raise
            raise click.UsageError(f"{exc.message}; {note}", ctx) from None

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


@click.group(cls=GenvaeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.option(
    "--max-memory",
    metavar="SIZE",
    help="Refuse models estimated to need more memory than this "
    "(e.g. 16G; default: half the available memory; also GENVAE_MAX_MEMORY).",
)
@click.version_option(package_name="genvae")
@click.pass_context
def cli(ctx: click.Context, debug: bool, max_memory: str | None) -> None:
    """genvae: plugin-based VAE-family generative image models."""
    ctx.meta["genvae.debug"] = debug
    if max_memory is not None:
        from genvae.core.budget import parse_limit

        parse_limit(max_memory, where="--max-memory")  # a one-line error now, not at the first model load
        os.environ["GENVAE_MAX_MEMORY"] = max_memory


from genvae.cli import inference, manage, models, report, training  # noqa: E402 (they use what is above)

for _module in (models, training, inference, report, manage):
    for _command in _module.COMMANDS:
        cli.add_command(_command)

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


def main() -> None:
    add_plugin_commands()
    cli(prog_name="genvae")


if __name__ == "__main__":
    main()
