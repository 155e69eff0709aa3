"""Helpers the test files share: a tiny model's build arguments, the command line in-process, a folder's snapshot,
the one-line checks of error messages, seeded builds, hand-made forward passes and registries with a plugin module
written for the test.

Fixtures live in conftest.py; these are plain names, imported with ``from helpers import ...`` from tests/ and
tests/plugins/ (pyproject's pytest ``pythonpath`` holds tests/). genvae is imported inside the helpers, after
conftest.py has set the test environment."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

TINY_CVAE = [  # a 16-px conv VAE small enough to train in a blink
    "image_size=16",
    "encoder.width=8",
    "encoder.depth=2",
    "decoder.width=8",
    "decoder.depth=2",
    "transform.latent_channels=2",
]
#: TINY_CVAE as command-line options: ``genvae build --preset cvae *SETS``
SETS = [arg for s in TINY_CVAE for arg in ("--set", s)]


def sets(values: Collection[str]) -> list[str]:
    """``--set`` options for ``key=value`` strings."""
    return [arg for s in values for arg in ("--set", s)]


def run(*args: Any, ok: bool = True) -> Result:
    """``genvae ARGS`` in this process, with the plugins' commands as the console script has them; exceptions are
    not caught, so a crash shows its traceback. With ``ok`` the command must succeed."""
    from genvae.testing import genvae_cli

    result = CliRunner().invoke(genvae_cli(), [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def snapshot(folder: Path, skip: Collection[str] = ()) -> dict[str, bytes]:
    """Every entry under ``folder`` without following links, for 'nothing changed' checks: files by content, links
    by their target text, folders as ``b"<dir>"`` (keyed with a trailing ``/``), anything else (a FIFO, a device:
    never opened) as ``b"special"``. Entries named in ``skip`` (e.g. the lock file, which holds a pid) are left out."""
    out: dict[str, bytes] = {}
    for root, dirs, files in os.walk(folder):
        for name in files + dirs:
            if name in skip:
                continue
            path = Path(root, name)
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                out[rel] = b"link:" + os.readlink(path).encode()
            elif path.is_dir():
                out[rel + "/"] = b"<dir>"
            elif not path.is_file():
                out[rel] = b"special"
            else:
                out[rel] = path.read_bytes()
    return out


def one_line(error: BaseException | pytest.ExceptionInfo) -> str:
    """The message of an error a user sees (an exception, or pytest.raises' info): one line, not empty, under
    300 characters; returned for the test to match."""
    message = str(error.value if isinstance(error, pytest.ExceptionInfo) else error)
    assert "\n" not in message, message
    assert 0 < len(message) < 300, message
    return message


def error_line(result: Result | str, *needles: str) -> str:
    """The one ``Error:`` line a refused command prints on stderr (``result`` or its stderr text), at most 400
    characters and holding every needle."""
    stderr = result if isinstance(result, str) else result.stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and len(lines[0]) <= 400, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def seeded_build(spec, seed: int = 0, train: bool = False):
    """``build_model(spec)`` after ``torch.manual_seed(seed)``, so the test's later draws follow from the seed too;
    in eval mode unless ``train``."""
    import torch

    from genvae.core.model import build_model

    torch.manual_seed(seed)
    model = build_model(spec)
    model.train(train)
    return model


def forward_pass(model, x, x_hat=None, logits=None):
    """A ForwardPass of ``model`` on ``x`` with the decoder's output given, for a loss's value by hand: ``logits``
    (the decoder output) and ``x_hat`` (default: tanh of the logits)."""
    import torch

    from genvae.core.components import ForwardPass

    fwd = ForwardPass(model, x)
    if logits is not None:
        fwd.decoder_output = logits
    fwd.x_hat = x_hat if x_hat is not None else torch.tanh(logits)
    return fwd


@contextmanager
def registry_with_module(folder: Path, name: str, source: str, plugins: Iterable[str]) -> Iterator[Any]:
    """A registry of the ``plugins`` modules plus plugin module ``name``, written from ``source`` into ``folder``
    and imported from there as an installed one is (no entry points); the module is forgotten afterwards."""
    from genvae.core.registry import PluginManager

    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        registry = PluginManager().load([*plugins, name], entry_points=False)
    finally:
        sys.path.remove(str(folder))
    record = registry.plugins[name.replace("_", "-")]
    assert record.status == "loaded", record.error
    try:
        yield registry
    finally:
        sys.modules.pop(name, None)
