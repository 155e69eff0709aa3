"""Write docs/api-reference.md from the docstrings of genvae.api, the public plugin API, and the reference part of
docs/python-api.md from those of the Python API (``genvae.build``, ``genvae.Model``, ...).

    python tools/api_reference.py           # (re)write both
    python tools/api_reference.py --check   # exit 1 when either differs from what the docstrings give

In api-reference.md names are grouped by the engine module that defines them; each gets its signature
(functions, classes) or value (constants) and its docstring. python-api.md is a user guide written by hand down
to its ``MARKER`` line; below it, each name of ``genvae.__all__`` (the functions, then the classes with their
public methods and properties) gets its signature and docstring.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "api-reference.md"
PYTHON_PAGE = ROOT / "docs" / "python-api.md"
#: the line of docs/python-api.md below which the reference is generated
MARKER = "<!-- reference: generated from the docstrings by python tools/api_reference.py; do not edit below -->"
#: how each defining module is headed on the page, in this order
SECTIONS = {
    "genvae.core.hookspecs": "Hooks and their register callbacks",
    "genvae.core.components": "Components and what flows between them",
    "genvae.core.capabilities": "Capabilities (typed data one component hands another)",
    "genvae.core.options": "Options and their validators",
    "genvae.core.layers": "Layers and building blocks",
    "genvae.core.spec": "Model specs",
    "genvae.core.model": "Models",
    "genvae.core.compose": "Composing specs",
    "genvae.core.registry": "The registry",
    "genvae.core.checkpoint": "Model folders on disk",
    "genvae.core.folder": "Writing into a model folder",
    "genvae.core.data": "Data sets",
    "genvae.core.decode": "Reading images",
    "genvae.core.images": "Writing images",
    "genvae.core.inference": "Running a model within the memory limit",
    "genvae.core.budget": "Memory sizes",
    "genvae.core.evaluation": "Evaluation",
    "genvae.core.loggers": "Experiment loggers",
    "genvae.core.training.run": "Training runs",
    "genvae.core.training.trainer": "The trainer",
    "genvae.core.training.metrics": "Metrics lines",
    "genvae.core.errors": "Errors",
    "genvae.cli.commands": "Commands a plugin adds",
    "genvae.api": "The contract itself",
    "genvae": "The contract itself",
}


def _home(name: str, value) -> str:
    module = getattr(value, "__module__", None) if (inspect.isclass(value) or inspect.isfunction(value)) else None
    if module in SECTIONS:
        return module
    import genvae.api

    source = inspect.getsource(genvae.api)
    for line in source.splitlines():  # a constant: the module it is imported from
        if line.startswith("from genvae") and " import " in line:
            current = line.split()[1]
        if line.strip().rstrip(",") == name or f" {name}," in line or line.endswith(f" {name}"):
            if "current" in locals() and current in SECTIONS:
                return current
    return "genvae.api"


def _signature(name: str, value) -> str:
    if inspect.isclass(value) or inspect.isfunction(value):
        try:
            sig = str(inspect.signature(value))
        except (TypeError, ValueError):
            sig = "(...)"
        kind = "class" if inspect.isclass(value) else "def"
        return f"{kind} {name}{sig}"
    if isinstance(value, dict) and not all(isinstance(v, str | int | float | bool | tuple) for v in value.values()):
        return f"{name}: dict[{', '.join(repr(k) for k in value)}]"
    if isinstance(value, str | int | float | bool | tuple | frozenset | dict) or value is None:
        text = repr(value)
        if len(text) > 100:
            text = text[:97] + "..."
        return f"{name} = {text}"
    return f"{name}: {type(value).__module__}.{type(value).__qualname__}"  # no repr: it may hold an address


def _constant_doc(name: str, module: str) -> str:
    """The ``#:`` comment lines above ``NAME = ...`` (or the comment beside it) in the defining module."""
    import importlib

    try:
        lines = inspect.getsource(importlib.import_module(module)).splitlines()
    except (OSError, TypeError, ImportError):
        return ""
    for i, line in enumerate(lines):
        if line.startswith((f"{name} =", f"{name}: ")):
            above = []
            j = i - 1
            while j >= 0 and lines[j].startswith("#:"):
                above.insert(0, lines[j][2:].strip())
                j -= 1
            if above:
                return " ".join(above)
            return line.split("  # ", 1)[1].strip() if "  # " in line else ""
    return ""


def _doc(name: str, value, module: str) -> str:
    if inspect.isclass(value) or inspect.isfunction(value):
        return (inspect.getdoc(value) or "").strip()
    return _constant_doc(name, module)


def render() -> str:
    import genvae.api

    groups: dict[str, list[str]] = {}
    homes: dict[str, str] = {}
    for name in sorted(genvae.api.__all__, key=str.lower):
        value = getattr(genvae.api, name)
        homes[name] = _home(name, value)
        groups.setdefault(homes[name], []).append(name)
    lines = [
        "# genvae.api reference",
        "",
        "Generated from the docstrings by `python tools/api_reference.py`; do not edit by hand (a test checks it",
        "is up to date). Everything a plugin imports comes from `genvae.api`; `PLUGIN_API_VERSION` is "
        f"{genvae.api.PLUGIN_API_VERSION}. How to write a plugin: [writing-a-plugin.md](writing-a-plugin.md).",
        "",
    ]
    order = list(dict.fromkeys(SECTIONS.values()))
    by_title: dict[str, list[str]] = {}
    for module, names in groups.items():
        by_title.setdefault(SECTIONS.get(module, "The contract itself"), []).extend(names)
    for title in order:
        names = sorted(by_title.get(title, []), key=str.lower)
        if not names:
            continue
        lines += [f"## {title}", ""]
        for name in names:
            value = getattr(genvae.api, name)
            lines += [f"### `{name}`", "", "```python", _signature(name, value), "```", ""]
            doc = _doc(name, value, homes[name])
            if doc:
                lines += [doc, ""]
    return "\n".join(lines).rstrip() + "\n"


def _member_lines(cls: type) -> list[str]:
    """The public methods and properties a class defines itself (not those it inherits), each a signature and its
    docstring, in the order of the source."""
    lines: list[str] = []
    for name, value in vars(cls).items():
        if name.startswith("_") or not (inspect.isfunction(value) or isinstance(value, property)):
            continue
        if isinstance(value, property):
            signature, doc = f"{cls.__name__}.{name}  # property", inspect.getdoc(value) or ""
        else:
            signature = f"{cls.__name__}.{name}{inspect.signature(value)}"
            signature = signature.replace("(self, ", "(").replace("(self)", "()")
            doc = inspect.getdoc(value) or ""
        lines += [f"##### `{cls.__name__}.{name}`", "", "```python", signature, "```", ""]
        if doc:
            lines += [doc, ""]
    return lines


def render_python(guide: str) -> str:
    """docs/python-api.md: ``guide`` (the page down to and including ``MARKER``), then the reference of every name
    in ``genvae.__all__`` but ``__version__``: functions first, then classes with their members."""
    import genvae

    names = [n for n in genvae.__all__ if n != "__version__"]
    values = {n: getattr(genvae, n) for n in names}
    functions = sorted((n for n in names if not inspect.isclass(values[n])), key=str.lower)
    classes = sorted((n for n in names if inspect.isclass(values[n])), key=str.lower)
    lines = [guide.rstrip("\n"), ""]
    for title, group in (("Functions", functions), ("Classes", classes)):
        lines += [f"### {title}", ""]
        for name in group:
            value = values[name]
            module = getattr(value, "__module__", "")
            lines += [f"#### `genvae.{name}`", "", f"From `{module}`.", "", "```python", _signature(name, value), "```"]
            lines.append("")
            doc = (inspect.getdoc(value) or "").strip()
            if doc:
                lines += [doc, ""]
            if inspect.isclass(value) and module.startswith("genvae.") and not issubclass(value, BaseException):
                lines += _member_lines(value)
    return "\n".join(lines).rstrip() + "\n"


def _guide() -> str:
    """docs/python-api.md down to and including its ``MARKER`` line."""
    text = PYTHON_PAGE.read_text(encoding="utf-8") if PYTHON_PAGE.exists() else ""
    if MARKER not in text:
        raise SystemExit(f"{PYTHON_PAGE.relative_to(ROOT)} has no line {MARKER!r} to generate the reference below")
    return text[: text.index(MARKER) + len(MARKER)]


def main(argv: list[str]) -> int:
    pages = {PAGE: render(), PYTHON_PAGE: render_python(_guide())}
    if argv[:1] == ["--check"]:
        stale = [p for p, text in pages.items() if (p.read_text(encoding="utf-8") if p.exists() else "") != text]
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python tools/api_reference.py")
        return 1 if stale else 0
    for path, text in pages.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)} ({text.count('### ')} names)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
