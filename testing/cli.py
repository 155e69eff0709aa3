"""The command line as a plugin's tests see it: the ``genvae`` group with every installed plugin's commands, run in
this process."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def genvae_cli():
    """The ``genvae`` click group with every installed plugin's commands, as the console script builds it."""
    from genvae.cli.main import add_plugin_commands, cli

    add_plugin_commands()
    return cli


def invoke_cli(args: Iterable[str], **kwargs: Any):
    """Run ``genvae ARGS`` in this process, as a user would, and return click's result (``exit_code``,
    ``output``): for testing a plugin's command. ``kwargs`` go to ``CliRunner.invoke`` (e.g. ``input=``)."""
    from click.testing import CliRunner

    return CliRunner().invoke(genvae_cli(), [str(a) for a in args], **kwargs)
