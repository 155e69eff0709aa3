"""The ``genvae`` command line (click command groups, rich output).

``main`` is the console script's entry point. While it imports torch, the command line and the plugins, a
Ctrl-C is only recorded (a library's bare ``except:`` could otherwise swallow the KeyboardInterrupt, and the
command would run on as if nothing had happened); once everything is loaded, a recorded Ctrl-C ends the
command with one line and exit status 130, before it has done anything.
"""

import signal
import sys


def main() -> None:
    caught: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    deferring = previous is not signal.SIG_IGN  # an ignored SIGINT (a background job) stays ignored
    if deferring:
        signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        from genvae.cli.main import add_plugin_commands, cli

        add_plugin_commands()
    except KeyboardInterrupt:  # a Ctrl-C before the deferral was in place
        caught.append(signal.SIGINT)
    finally:
        if deferring:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if caught:
        sys.stderr.write("Interrupted.\n")
        sys.exit(130)
    cli(prog_name="genvae")
