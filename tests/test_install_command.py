"""``genvae install`` / ``genvae uninstall`` pip into genvae's own environment, for real.

The environment is a throwaway venv whose interpreter sees this one's packages (a ``.pth`` line adds
them as a site directory), so installing and removing the example plugin there leaves the test
environment untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real pip installs: the slow lane


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "genvae-plugin-example"


@pytest.fixture(scope="module")
def own_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("genvae-env")
    venv.EnvBuilder(with_pip=False).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    outer = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in dict.fromkeys(outer))
    Path(purelib, "outer-env.pth").write_text(lines)
    source = root / "example"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENVAE_", "PYTHONPATH"))}
    return python, Path(purelib), source, env


def genvae(own_env, *args, check=True):
    python, _, _, env = own_env
    proc = subprocess.run(
        [str(python), "-m", "genvae.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=own_env[2].parent,
    )
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def plugin_names(own_env) -> dict[str, dict]:
    data = json.loads(genvae(own_env, "list-plugins", "--json").stdout)
    return {p["name"]: p for p in data["plugins"]}


def test_install_then_uninstall_a_plugin(own_env):
    _, purelib, source, _ = own_env
    assert "resnet" not in plugin_names(own_env)
    genvae(own_env, "install", "--no-deps", "--no-build-isolation", "--no-index", str(source))
    assert any(p.name.startswith("genvae_plugin_example") and p.suffix == ".dist-info" for p in purelib.iterdir())
    record = plugin_names(own_env)["resnet"]
    assert (record["status"], record["builtin"], record["distribution"]) == ("loaded", False, "genvae-plugin-example")
    genvae(own_env, "uninstall", "-y", "genvae-plugin-example")
    assert "resnet" not in plugin_names(own_env)
    assert sys.prefix not in str(purelib)  # it really was the other environment


def test_failed_pip_is_one_line(own_env):
    proc = genvae(own_env, "install", "--no-index", "genvae-no-such-plugin-xyz", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: pip install")
