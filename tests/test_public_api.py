"""Plugins use only genvae's public surface: no ``genvae.cli`` import, no underscore name of another module.

The built-in plugins are held to what a third party has (``genvae.core``, ``genvae.core.commands`` for
commands, and the public names of other modules), so the public surface is tested by the code that uses it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import genvae.core
import genvae.core.capabilities
import genvae.core.commands
import genvae.core.evaluation

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_FILES = sorted((ROOT / "plugins").rglob("*.py")) + sorted(
    p for p in (ROOT / "examples").rglob("*.py") if "build" not in p.parts and "tests" not in p.parts
)


def private_imports(path: Path) -> list[str]:
    """Every import in ``path`` of the CLI's internals or of an underscore name from another module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("genvae.cli")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("genvae.cli"):
                found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_surface(path):
    assert private_imports(path) == []


def test_the_scan_finds_what_it_forbids(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from genvae.cli.main import console\nimport genvae.cli\n"
                   "from genvae.core.data import _load_folder\n")
    assert private_imports(bad) == ["genvae.cli.main", "genvae.cli", "genvae.core.data._load_folder"]


@pytest.mark.parametrize("module", [genvae.core, genvae.core.commands, genvae.core.capabilities,
                                    genvae.core.evaluation],
                         ids=lambda m: m.__name__)
def test_every_exported_name_exists_and_is_documented(module):
    docs = (ROOT / "docs" / "writing-a-plugin.md").read_text(encoding="utf-8")
    for name in module.__all__:
        assert hasattr(module, name), name
    missing = [name for name in module.__all__ if f"`{name}`" not in docs and f"{name}(" not in docs]
    assert missing == [], f"not in docs/writing-a-plugin.md: {missing}"


def builtin_names() -> set[str]:
    """Every name a built-in plugin registers (components, presets, datasets)."""
    from genvae.testing import plugin_registry

    registry = plugin_registry()
    return {name for kind in registry.entries for name in registry.names(kind)}


def string_constants(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_the_conformance_kit_names_no_built_in_plugin():
    names = builtin_names()
    assert {"conv", "fc", "normal", "mse", "kl", "laplacian"} <= names  # what the scan looks for
    from genvae.testing import CHECKS

    found = string_constants(ROOT / "testing" / "__init__.py") - set(CHECKS)  # the check named "shapes" is no plugin
    assert sorted(found & names) == []


def test_the_core_names_no_built_in_component_beyond_the_spec_defaults():
    """The core knows no concrete plugin; the only names it holds are the defaults a spec falls back on."""
    # ModelSpec's default prior; the default reconstruction and divergence losses; the default dataset
    allowed = {"normal", "mse", "kl", "shapes"}
    found = {}
    for path in sorted((ROOT / "core").glob("*.py")):
        hits = string_constants(path) & (builtin_names() - allowed)
        if hits:
            found[path.name] = sorted(hits)
    assert found == {}
