"""The ``genvae`` command line (click command groups, rich output).

``main`` is the console script's entry point. While it imports torch, the command line and the plugins, a
Ctrl-C or a SIGTERM is only recorded (a library's bare ``except:`` could otherwise swallow the
KeyboardInterrupt, and the default SIGTERM action would end the process without a word); once everything is
loaded, a recorded signal ends the command with one line (``Interrupted.`` or ``Terminated.``) and exit status
128 + its number, before it has done anything. From then on a SIGTERM raises
:class:`genvae.core.errors.Interrupted`, as a Ctrl-C raises KeyboardInterrupt, so every command ends on it with
one line and status 143 (training installs its own handler, which stops at a step boundary).
"""

import signal
import sys
from typing import Any

_STOP_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None)


def _terminate(signum, frame) -> None:
    from genvae.core.errors import Interrupted

    raise Interrupted(signum)


def main() -> None:
    caught: list[int] = []
    previous: dict[int, Any] = {}
    for sig in _STOP_SIGNALS:
        handler = signal.getsignal(sig)
        if handler is signal.SIG_IGN:  # an ignored signal (SIGINT in a background job) stays ignored
            continue
        previous[sig] = handler
        signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        from genvae.cli.main import add_plugin_commands, cli

        add_plugin_commands()
    except KeyboardInterrupt:  # a Ctrl-C before the deferral was in place
        caught.append(signal.SIGINT)
    finally:
        if signal.SIGINT in previous:
            handler = previous[signal.SIGINT]
            signal.signal(signal.SIGINT, handler if handler is not None else signal.default_int_handler)
    if caught:
        name = "Terminated" if caught[0] != signal.SIGINT else "Interrupted"
        sys.stderr.write(f"{name}.\n")
        sys.exit(128 + caught[0])
    for sig, handler in previous.items():  # SIGTERM: raise, unless the embedding process installed its own
        if sig != signal.SIGINT:
            signal.signal(sig, _terminate if handler in (signal.SIG_DFL, None) else handler)
    if caught:  # a SIGTERM in the instant between the two checks
        sys.stderr.write("Terminated.\n")
        sys.exit(128 + caught[0])
    cli(prog_name="genvae")
