"""Every function of the built-in plugins is fully annotated: each parameter and the return.

The plugins are the worked examples of the public API (``genvae.api``), so their signatures say what each hook
receives and what each component method takes and gives. The scan reads the source with ``ast``: every function,
method and nested function, with ``*args``/``**kwargs`` and keyword-only parameters; only the first parameter of a
method named ``self`` or ``cls`` may go without a type. ``core/`` and ``testing/`` are not fully annotated yet, so
only ``plugins/`` is held to it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: the folders held to it
ANNOTATED = ("plugins",)


def unannotated(source: str, filename: str = "<source>") -> list[str]:
    """``file:line name (what is missing)`` for every function in ``source`` missing an annotation."""
    found: list[str] = []

    def visit(node: ast.AST, in_class: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = child.args
                positional = [*args.posonlyargs, *args.args]
                missing = [
                    a.arg
                    for i, a in enumerate(positional)
                    if a.annotation is None and not (i == 0 and in_class and a.arg in ("self", "cls"))
                ]
                missing += [a.arg for a in args.kwonlyargs if a.annotation is None]
                if args.vararg is not None and args.vararg.annotation is None:
                    missing.append("*" + args.vararg.arg)
                if args.kwarg is not None and args.kwarg.annotation is None:
                    missing.append("**" + args.kwarg.arg)
                if child.returns is None:
                    missing.append("return")
                if missing:
                    found.append(f"{filename}:{child.lineno} {child.name} ({', '.join(missing)})")
                visit(child, in_class=False)
            else:
                visit(child, in_class=in_class or isinstance(child, ast.ClassDef))

    visit(ast.parse(source, filename), in_class=False)
    return found


def files() -> list[Path]:
    return [path for folder in ANNOTATED for path in sorted((ROOT / folder).rglob("*.py"))]


def test_every_plugin_function_is_fully_annotated() -> None:
    missing = [
        hit for path in files() for hit in unannotated(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert missing == [], f"{len(missing)} functions lack annotations:\n" + "\n".join(missing)


def test_the_scan_finds_what_it_forbids() -> None:
    source = """
def ok(a: int, *rest: str, key: int = 1, **extra: float) -> None: ...
def no_return(a: int): ...
def no_param(a, b: int) -> int: ...
def star(*args, **kwargs) -> None: ...
def kw_only(*, key) -> None: ...
def positional_only(a, /) -> None: ...
def outer() -> None:
    def inner(x): ...
class Thing:
    def method(self, x: int) -> None: ...
    @classmethod
    def make(cls) -> Thing: ...
    def bad(self, x) -> None: ...
    def self_not_first(x, self) -> None: ...
    async def later(self): ...
    class Inner:
        def deeper(self, y): ...
def self_outside_a_class(self) -> None: ...
"""
    assert [hit.split(" ", 1)[1] for hit in unannotated(source)] == [
        "no_return (return)",
        "no_param (a)",
        "star (*args, **kwargs)",
        "kw_only (key)",
        "positional_only (a)",
        "inner (x, return)",
        "bad (x)",
        "self_not_first (x, self)",
        "later (return)",
        "deeper (y, return)",
        "self_outside_a_class (self)",
    ]


@pytest.mark.parametrize("folder", ANNOTATED)
def test_the_scan_reads_every_folder(folder: str) -> None:
    assert any((ROOT / folder).rglob("*.py"))
