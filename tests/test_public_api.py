"""One public plugin surface: ``genvae.api``. Plugins, built-in or not, import nothing else of genvae.

The built-in plugins are held to what a third party has, so the public surface is tested by the code that
uses it: a plugin module may import ``genvae.api`` and its own plugin package, and nothing else of genvae.
The engine (``genvae.core``) imports no command-line library (click, rich), and every public name is in the
reference generated from the docstrings (docs/api-reference.md).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import genvae.api

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "genvae-plugin-example"
PLUGIN_FILES = sorted((ROOT / "plugins").rglob("*.py")) + sorted(
    p for p in EXAMPLE.rglob("*.py") if "build" not in p.parts
)


def own_package(path: Path) -> str:
    """The package a plugin module may import from besides genvae.api: its own plugin (one module or a package)."""
    if EXAMPLE in path.parents:
        return "genvae_plugin_example"
    rel = path.relative_to(ROOT / "plugins")
    return "genvae.plugins" if len(rel.parts) == 1 else f"genvae.plugins.{rel.parts[0]}"


def outside_imports(path: Path, own: str) -> list[str]:
    """Every import in ``path`` of a genvae module other than ``genvae.api`` (and ``own``'s own modules)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else ([node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
        )
        for name in names:
            if not name.startswith("genvae") or name == "genvae.api" or name.startswith("genvae_plugin_example"):
                continue
            if "tests" in path.parts and name == "genvae.testing":
                continue  # a plugin's tests use the public test kit too
            if own != "genvae.plugins" and (name == own or name.startswith(own + ".")):
                continue  # a module of its own plugin package
            found.append(name)
    return found


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_api(path):
    assert outside_imports(path, own_package(path)) == []


def test_the_scan_finds_what_it_forbids(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from genvae.cli.main import console\nimport genvae.cli\nfrom genvae.core.data import load_data\n"
        "from genvae.plugins.conv import up_stack\nfrom genvae.api import Encoder\n"
        "from genvae.plugins.laplacian.pyramid import upsample\n"
    )
    assert outside_imports(bad, "genvae.plugins.laplacian") == [
        "genvae.cli.main",
        "genvae.cli",
        "genvae.core.data",
        "genvae.plugins.conv",
    ]
    assert outside_imports(bad, "genvae.plugins")[-1] == "genvae.plugins.laplacian.pyramid"


def test_every_public_name_exists_and_is_in_the_generated_reference():
    reference = (ROOT / "docs" / "api-reference.md").read_text(encoding="utf-8")
    missing = [name for name in genvae.api.__all__ if not hasattr(genvae.api, name)]
    assert missing == []
    undocumented = [name for name in genvae.api.__all__ if f"### `{name}`" not in reference]
    assert undocumented == [], f"not in docs/api-reference.md (python tools/api_reference.py): {undocumented}"


def test_the_generated_reference_is_up_to_date():
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "api_reference.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_renamed_names_still_work_with_a_deprecation_warning():
    import genvae.core

    with pytest.warns(DeprecationWarning, match="ForwardPass from genvae.api"):
        old = genvae.core.Pass
    assert old is genvae.api.ForwardPass
    with pytest.warns(DeprecationWarning, match="genvae.api.ForwardPass"):
        assert genvae.api.Pass is genvae.api.ForwardPass
    with pytest.warns(DeprecationWarning, match="import data_options from genvae.api"):
        from genvae.core.commands import data_options
    assert data_options is genvae.api.data_options
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert genvae.api.Encoder is genvae.api.Encoder  # a current name warns of nothing


def builtin_names() -> set[str]:
    """Every name a built-in plugin registers (components, presets, datasets)."""
    from genvae.testing import plugin_registry

    registry = plugin_registry()
    return {name for kind in registry.entries for name in registry.names(kind)}


def string_constants(path: Path) -> set[str]:
    return {
        node.value
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def test_the_conformance_kit_names_no_built_in_plugin():
    names = builtin_names()
    assert {"conv", "fc", "normal", "mse", "kl", "laplacian"} <= names  # what the scan looks for
    from genvae.testing import CHECKS

    found = set()
    for path in sorted((ROOT / "testing").glob("*.py")):
        found |= string_constants(path) - set(CHECKS)  # the check named "shapes" is no plugin
    assert sorted(found & names) == []


def test_the_core_names_no_built_in_component_beyond_the_spec_defaults():
    """The core knows no concrete plugin; the only names it holds are the defaults a spec falls back on."""
    # ModelSpec's default prior; the default reconstruction and divergence losses; the default dataset
    allowed = {"normal", "mse", "kl", "shapes"}
    found = {}
    for path in sorted((ROOT / "core").rglob("*.py")):
        hits = string_constants(path) & (builtin_names() - allowed)
        if hits:
            found[path.name] = sorted(hits)
    assert found == {}


def test_the_core_imports_no_command_line_library():
    """click and rich belong to genvae.cli; the engine reports progress through genvae.core.progress."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "core").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for block in ast.walk(tree):  # names imported for type annotations only are no dependency
            if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING":
                block.body = []
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            )
            bad = [n for n in names if n.split(".")[0] in ("click", "rich") or n.startswith("genvae.cli")]
            if bad:
                found.setdefault(str(path.relative_to(ROOT)), []).extend(bad)
    assert found == {}
