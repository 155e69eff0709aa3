"""Type-check genvae's own packages (core, cli, plugins, testing) with mypy.

The packages live at the repository's top level (core/ installs as genvae.core), so mypy is pointed at a
temporary tree of links named as they install: genvae/core -> core, and so on. Exit status is mypy's.

    python tools/typecheck.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "cli", "plugins", "testing")


def main() -> int:
    from mypy import api

    with tempfile.TemporaryDirectory(prefix="genvae-mypy-") as tmp:
        top = Path(tmp) / "genvae"
        top.mkdir()
        for name in PACKAGES:
            os.symlink(ROOT / name, top / name)
        config = str(ROOT / "pyproject.toml")
        out, err, status = api.run(["--config-file", config, "--cache-dir", os.devnull,
                                    *[str(top / name) for name in PACKAGES]])
    sys.stdout.write(out.replace(str(top) + os.sep, "genvae/"))
    sys.stderr.write(err)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
