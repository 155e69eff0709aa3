"""Write docs/api-reference.md from the docstrings of genvae.api, the public plugin API.

    python tools/api_reference.py           # (re)write the page
    python tools/api_reference.py --check   # exit 1 when the page differs from what the docstrings give

Names are grouped by the engine module that defines them; each gets its signature (functions, classes) or
value (constants) and its docstring.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "api-reference.md"
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


def main(argv: list[str]) -> int:
    text = render()
    if argv[:1] == ["--check"]:
        current = PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""
        if current != text:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python tools/api_reference.py")
            return 1
        return 0
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)} ({text.count('### ')} names)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
