"""User-facing errors: each carries a one-line message that says what was wrong and what is accepted."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable
from typing import Any

ELLIPSIS = "..."


def shorten(value: Any, limit: int = 60) -> str:
    """``repr(value)`` (a str too: quoted, newlines escaped), cut to ``limit`` chars ending in ``...``.

    Use it wherever a message echoes something the user supplied (an option value, an unknown name
    or key), so that a huge or multi-line value cannot flood the one-line error.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1000:
        text = f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"  # repr() refuses > 4300 digits
    else:
        try:
            text = repr(value)
        except Exception:  # a broken __repr__ must not hide the real error
            text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    limit = max(limit, len(ELLIPSIS) + 1)
    if len(text) <= limit:
        return text
    return text[: limit - len(ELLIPSIS)] + ELLIPSIS


def one_line(text: Any, limit: int = 400) -> str:
    """``text`` with all whitespace runs (newlines included) collapsed to one space, cut to ``limit`` chars."""
    line = " ".join(str(text).split())
    limit = max(limit, len(ELLIPSIS) + 1)
    if len(line) <= limit:
        return line
    return line[: limit - len(ELLIPSIS)] + ELLIPSIS


def error_text(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut to ``limit``; never a tuple of its args.

    attrs' validators raise ``ValueError(message, attribute, options, value)``, whose ``str`` is a
    tuple repr; a ``KeyError``'s ``str`` is the bare key.
    """
    args = exc.args
    if isinstance(exc, OSError):
        text = str(exc)
    elif isinstance(exc, KeyError) and len(args) == 1:
        text = f"missing key {shorten(args[0])}"
    elif args and (isinstance(args[0], str) or len(args) > 1):
        text = str(args[0])
    else:
        text = str(exc) if args else ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return one_line(lines[0], limit) if lines else type(exc).__name__


def name_list(names: Iterable[Any], most: int = 20, max_chars: int = 200) -> str:
    """``a, b, c`` -- at most ``most`` names and about ``max_chars`` chars, then ``and N more``; ``none`` if empty."""
    names = [str(n) for n in names]
    if not names:
        return "none"
    shown: list[str] = []
    length = 0
    for name in names:
        if len(shown) >= most or (shown and length + len(name) + 2 > max_chars):
            break
        shown.append(name)
        length += len(name) + 2
    rest = len(names) - len(shown)
    listing = ", ".join(shown)
    return f"{listing} and {rest} more" if rest else listing


def did_you_mean(name: Any, known: Iterable[Any]) -> str:
    """``did you mean 'x'? `` for the closest known name, or an empty string."""
    close = difflib.get_close_matches(str(name)[:200], [str(k) for k in known], n=1)
    return f"did you mean {shorten(close[0])}? " if close else ""


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM) that ends a command at once; genvae exits with status 128 + ``signum``.

    A KeyboardInterrupt, so that everything that cleans up after a Ctrl-C (temporary files, locks) does so for a
    SIGTERM too."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class OneLineInIPython:
    """An error IPython (a notebook, the IPython shell) shows as its one line, ``Name: message``, instead of a
    traceback, as the command line prints it; with ``GENVAE_DEBUG`` set in the environment the traceback is
    shown (IPython finds no ``_render_traceback_`` then)."""

    @property
    def _render_traceback_(self) -> Callable[[], list[str]]:
        if os.environ.get("GENVAE_DEBUG"):
            raise AttributeError("_render_traceback_")
        return lambda: [f"{type(self).__name__}: {one_line(str(self))}"]


class GenvaeError(OneLineInIPython, Exception):
    """An error caused by input (names, options, files): the CLI prints it as one line, no traceback, and so does
    IPython (a notebook) unless ``GENVAE_DEBUG`` is set."""


class UnknownNameError(GenvaeError):
    """A name (plugin, component, preset, dataset) that nothing provides."""

    def __init__(self, what: str, name: str, known: Iterable[str], failed: str = ""):
        known = sorted(known)
        hint = did_you_mean(name, known)
        listing = name_list(known, most=20, max_chars=250)
        # failed: the plugins that did not load (Registry.failed_note), one of which may be what provides it
        super().__init__(
            f"unknown {what} {shorten(str(name))}; {hint}known: {listing}{'; ' + failed if failed else ''}"
        )
        self.name = name
        self.known = known


class OptionsError(GenvaeError):
    """Options that a component's options class rejects."""


class BuildError(GenvaeError):
    """A composition whose components cannot work together, found at build time."""


class CheckpointError(GenvaeError):
    """A model folder or checkpoint that is missing, incomplete or corrupt."""


class DataError(GenvaeError):
    """Training data that cannot be found, read or used."""
