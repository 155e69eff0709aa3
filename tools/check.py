"""Every check CI runs, in one command: lint, format, types, the generated reference, both test lanes.

    python tools/check.py                  # all of them, in this order (what .ci/run runs, via the README)
    python tools/check.py --only lint      # one (or several: --only lint,format)
    python tools/check.py --list           # the names

Each check runs with this interpreter (``python -m ruff``, ``python -m mypy``, ``python -m pytest``), so the
project's venv is what is checked. A failing check does not stop the others; the exit status is 1 if any
failed, and a table of each check's time and result ends the run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
EXAMPLE = "examples/genvae-plugin-example/genvae_plugin_example"
#: the test runs: two pytest-xdist workers (one per core of this project's machines), each test file on one worker
#: (module fixtures such as the third-party installs are built once)
PYTEST = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadfile"]

#: name -> (what it checks, the commands)
CHECKS: dict[str, tuple[str, list[list[str]]]] = {
    "lint": ("ruff check", [[PY, "-m", "ruff", "check", "."]]),
    "format": ("ruff format --check", [[PY, "-m", "ruff", "format", "--check", "."]]),
    "types": (
        "mypy: the package, the example plugin, the tests",
        [
            [PY, "-m", "mypy", "-p", "genvae"],
            [PY, "-m", "mypy", EXAMPLE],
            [PY, "-m", "mypy", "tests"],
        ],
    ),
    "reference": ("docs/api-reference.md matches the docstrings", [[PY, "tools/api_reference.py", "--check"]]),
    "fast": ("the fast test lane (pytest's default)", [[*PYTEST]]),
    "slow": (
        "the slow test lane: real processes, torchrun, the fuzz, the built package",
        [[*PYTEST, "-m", "slow"]],
    ),
}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--list"]:
        for name, (what, _) in CHECKS.items():
            print(f"{name:10} {what}")
        return 0
    names = list(CHECKS)
    if argv[:1] == ["--only"] and len(argv) == 2:
        names = [n.strip() for n in argv[1].split(",") if n.strip()]
        unknown = [n for n in names if n not in CHECKS]
        if unknown:
            print(f"tools/check.py: unknown check '{unknown[0]}'; checks: {', '.join(CHECKS)}", file=sys.stderr)
            return 2
    elif argv:
        print(__doc__, file=sys.stderr)
        return 2
    results = []
    for name in names:
        what, commands = CHECKS[name]
        print(f"== {name}: {what}", flush=True)
        start = time.perf_counter()
        ok = all(subprocess.run(command, cwd=ROOT).returncode == 0 for command in commands)
        results.append((name, ok, time.perf_counter() - start))
    print("\n== summary")
    for name, ok, seconds in results:
        print(f"{name:10} {'ok' if ok else 'FAILED':7} {seconds:7.1f} s")
    print(
        f"{'all':10} {'ok' if all(ok for _, ok, _ in results) else 'FAILED':7} {sum(s for _, _, s in results):7.1f} s"
    )
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
