"""The ``genvae`` command line (click command groups, rich output).

``main`` is the console script's entry point. It imports the command line inside a guard, so a
Ctrl-C while Python is still importing torch and the plugins ends with one line, not a traceback.
"""

import sys


def main() -> None:
    try:
        from genvae.cli.main import main as run

        run()
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        sys.exit(130)
