"""genvae as a user installs it, and a plugin author's type check. Slow lane (``pytest -m slow``).

By hand, from the repository root (about a minute on 2 CPU cores: 58 s, over half of it the two mypy runs):

    .venv/bin/python -m pytest tests/test_packaging.py -m slow -p no:cacheprovider -v

What it does, all in temporary folders:

1. ``python -m build --no-isolation`` writes the sdist, then the wheel built from that sdist; ``twine check
   --strict`` passes both. The wheel holds exactly genvae's packages (every git-tracked module of the package
   folders, and each package's ``py.typed``) and nothing else of the repository; the sdist holds what building
   needs (pyproject.toml, README.md, LICENSE, the modules) and no venv, build folder or test suite.
2. A fresh venv (``python -m venv``, no pip, nothing downloaded): a ``.pth`` file in its site-packages appends
   this interpreter's site-packages folders, so torch and the other dependencies (and pip, pytest, mypy) are
   found there. A path added by a ``.pth`` line does not have the ``.pth`` files inside it processed, so this
   environment's editable genvae (``__editable__.genvae-*.pth``) stays out of sight: ``import genvae`` there
   resolves to the wheel, installed with ``pip install --no-deps --no-index`` (checked).
3. In that venv: ``genvae list-plugins`` (every built-in loaded), a tiny conv VAE built and trained for three
   steps, and the example plugin (examples/genvae-plugin-example) installed, not editable, with its tests run
   against the installed genvae and the installed plugin.
4. ``mypy`` on the example plugin's package, against genvae installed (a) from the wheel (the venv above) and
   (b) editable in strict mode (this environment, as README's install command makes it): exit 0, no
   ``import-not-found``, and mypy's log shows which copy of ``genvae.api`` it read.

The negative, not part of the suite: installed editable in setuptools' default (lenient) mode, genvae is found
at run time through an import hook that mypy does not run, so mypy cannot see it. Measured once (a copy of the
working tree, ``pip install --no-deps --no-build-isolation -e .`` in a venv like the one above, then
``python -m mypy examples/genvae-plugin-example/genvae_plugin_example``): exit 1, ``genvae_plugin_example/
__init__.py:26: error: Cannot find implementation or library stub for module named "genvae.api"
[import-not-found]``, "Found 1 error in 1 file (checked 1 source file)", while ``import genvae.api`` worked.
That is why the install commands say ``--config-settings editable_mode=strict``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "genvae-plugin-example"
#: genvae's packages and the repository folders they are (the repository's top level is genvae itself)
PACKAGES = {
    "genvae": "",
    "genvae.core": "core",
    "genvae.core.training": "core/training",
    "genvae.plugins": "plugins",
    "genvae.plugins.cr_lstm": "plugins/cr_lstm",
    "genvae.plugins.laplacian": "plugins/laplacian",
    "genvae.cli": "cli",
    "genvae.testing": "testing",
}
NOT_PACKAGED = ("tests", "docs", "benchmarks", "examples", "tools", "build", "dist", ".venv", ".ci")
TINY = [
    "image_size=16",
    "encoder.width=8",
    "encoder.depth=2",
    "decoder.width=8",
    "decoder.depth=2",
    "transform.latent_channels=2",
]


def run(
    args: list, *, cwd: Path = REPO, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run a command; a non-zero exit fails the test with the command and the end of its output."""
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, args))} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def clean_env() -> dict[str, str]:
    """This environment without what would change where Python, mypy or genvae look for code."""
    drop = ("PYTHONPATH", "PYTHONHOME", "MYPYPATH", "GENVAE_LOAD_PLUGINS", "GENVAE_DISABLE_PLUGINS")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PYTHONDONTWRITEBYTECODE": "1"}


#: the package's own modules at the repository's top level (the folders' files are git's tracked ones)
TOP_LEVEL = {"__init__.py", "api.py", "python_api.py", "display.py", "py.typed"}


def tracked_package_files() -> set[str]:
    """The wheel's expected contents: every git-tracked file of the package folders, as installed paths."""
    proc = run(["git", "ls-files", "-z", "--", *[p for p in PACKAGES.values() if p]])
    files = {f for f in proc.stdout.split("\0") if f} | TOP_LEVEL
    assert all(f.endswith((".py", "py.typed")) for f in files), sorted(f for f in files if not f.endswith(".py"))
    return {f"genvae/{f}" for f in files}


# -- 1. build ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel) of the working tree; the wheel is built from the sdist, as ``python -m build`` does."""
    pytest.importorskip("build", reason="the dev extra's 'build' is not installed")
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, REPO], env=clean_env())
    (sdist,) = out.glob("genvae-*.tar.gz")
    (wheel,) = out.glob("genvae-*-py3-none-any.whl")
    return sdist, wheel


def test_twine_check_passes(dist):
    pytest.importorskip("twine", reason="the dev extra's 'twine' is not installed")
    proc = run([sys.executable, "-m", "twine", "check", "--strict", *dist])
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_the_wheel_holds_exactly_the_packages(dist):
    _, wheel = dist
    names = zipfile.ZipFile(wheel).namelist()
    version = wheel.name.split("-")[1]
    info = f"genvae-{version}.dist-info/"
    assert {n.split("/")[0] + "/" for n in names} == {"genvae/", info}
    assert {n for n in names if n.startswith("genvae/")} == tracked_package_files()
    packages = {str(Path(n).parent).replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert packages == set(PACKAGES)
    for package in PACKAGES:
        assert f"{package.replace('.', '/')}/py.typed" in names, package
    assert not [n for n in names if n.split("/")[1] in NOT_PACKAGED]
    assert f"{info}licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"{info}METADATA").decode()
    assert "License-Expression: MIT" in metadata and "Classifier: Typing :: Typed" in metadata
    assert re.search(r"^Project-URL: Homepage, https://", metadata, re.M), metadata[:2000]
    assert f"Version: {version}" in metadata and re.search(
        r'^__version__ = "' + re.escape(version) + '"$', (REPO / "__init__.py").read_text(), re.M
    )


def test_the_sdist_holds_what_building_needs(dist):
    sdist, _ = dist
    top = sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.removeprefix(top + "/") for n in tar.getnames()}
    assert {"pyproject.toml", "README.md", "LICENSE", "PKG-INFO", *TOP_LEVEL} <= names
    assert {f.removeprefix("genvae/") for f in tracked_package_files()} <= names
    assert not [n for n in names if n.split("/")[0] in NOT_PACKAGED]


# -- 2. a fresh environment -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_env(dist, tmp_path_factory) -> dict:
    """A venv that sees this environment's dependencies, not its genvae; the wheel installed there."""
    root = tmp_path_factory.mktemp("fresh")
    venv.EnvBuilder(with_pip=False).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    outer = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()])
    (purelib / "outer-env.pth").write_text("".join(f"{p}\n" for p in outer))  # plain paths: no .pth inside run
    env = clean_env()
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", dist[1]], env=env)
    return {"root": root, "python": python, "bin": python.parent, "purelib": purelib, "env": env}


def test_genvae_resolves_to_the_installed_wheel(fresh_env):
    probe = "import genvae, importlib.metadata as m; print(genvae.__file__); print(m.version('genvae'))"
    where, version = run([fresh_env["python"], "-c", probe], cwd=fresh_env["root"], env=fresh_env["env"]).stdout.split()
    assert Path(where) == fresh_env["purelib"] / "genvae" / "__init__.py"
    import genvae

    assert version == genvae.__version__


def test_list_plugins_loads_every_builtin(fresh_env):
    from genvae.plugins import BUILTIN_PLUGINS

    proc = run([fresh_env["bin"] / "genvae", "list-plugins", "--json"], cwd=fresh_env["root"], env=fresh_env["env"])
    plugins = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}
    expected = {m.rsplit(".", 1)[-1].replace("_", "-") for m in BUILTIN_PLUGINS}
    assert len(expected) == len(BUILTIN_PLUGINS) > 20
    assert {n: (p["status"], p["builtin"], p["distribution"]) for n, p in plugins.items() if n in expected} == {
        n: ("loaded", True, "genvae") for n in expected
    }


def test_a_tiny_model_builds_and_trains_three_steps(fresh_env, tmp_path):
    genvae, env = fresh_env["bin"] / "genvae", fresh_env["env"]
    run(
        [genvae, "build", "--preset", "cvae", *[a for s in TINY for a in ("--set", s)], "-o", "M"],
        cwd=tmp_path,
        env=env,
    )
    run([genvae, "train", "M", "--max-steps", "3", "--batch-size", "4", "--quiet"], cwd=tmp_path, env=env)
    steps = [json.loads(line)["step"] for line in (tmp_path / "M" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 3
    assert (tmp_path / "M" / "checkpoints" / "step-00000003").is_dir()


@pytest.fixture(scope="module")
def example_installed(fresh_env) -> Path:
    """The example plugin installed (not editable) into the fresh venv, from a copy of its folder."""
    source = fresh_env["root"] / "genvae-plugin-example"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    run(
        [
            fresh_env["python"],
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--disable-pip-version-check",
            source,
        ],
        env=fresh_env["env"],
    )
    return source


def test_the_example_plugins_tests_pass_against_the_installed_genvae(fresh_env, example_installed):
    python, env = fresh_env["python"], fresh_env["env"]
    probe = "import genvae, genvae_plugin_example as p; print(genvae.__file__); print(p.__file__)"
    for where in run([python, "-c", probe], env=env).stdout.split():  # from the repository root, as pytest runs
        assert Path(where).is_relative_to(fresh_env["purelib"]), where
    # -o pythonpath=: the example's pytest settings put its own folder first; here the installed copy is tested
    proc = run(
        [
            python,
            "-m",
            "pytest",
            "examples/genvae-plugin-example/tests",
            "-p",
            "no:cacheprovider",
            "-o",
            "pythonpath=",
            "-q",
        ],
        env=env,
    )
    assert re.search(r"\b\d+ passed\b", proc.stdout) and " failed" not in proc.stdout, proc.stdout[-2000:]


# -- 4. the plugin author's mypy -------------------------------------------------------------------------------------


def mypy_on_the_example(python: Path, cwd: Path, target: str, env: dict[str, str], hint: str = "") -> Path:
    """mypy's verdict on the example plugin's package, asserted clean; returns the genvae/api.py it read."""
    proc = subprocess.run(
        [str(python), "-m", "mypy", "-v", "--cache-dir", os.devnull, target],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    verdict = proc.stdout.strip()
    assert proc.returncode == 0 and "import-not-found" not in verdict, (
        f"{verdict[-3000:] or proc.stderr[-3000:]}\n{hint}"
    )
    assert verdict.startswith("Success: no issues found"), verdict
    read = re.findall(r"^LOG:  Parsing (\S+) \(genvae\.api\)$", proc.stderr, re.M)
    assert len(read) == 1, read
    return Path(read[0])


def test_mypy_passes_on_the_example_plugin_against_genvae_from_the_wheel(fresh_env, example_installed):
    pytest.importorskip("mypy", reason="the dev extra's 'mypy' is not installed")
    api = mypy_on_the_example(fresh_env["python"], example_installed, "genvae_plugin_example", fresh_env["env"])
    assert api == fresh_env["purelib"] / "genvae" / "api.py"


def test_mypy_passes_on_the_example_plugin_against_the_strict_editable_install():
    pytest.importorskip("mypy", reason="the dev extra's 'mypy' is not installed")
    import genvae.api

    hint = "is genvae installed editable in strict mode? pip install -e '.[dev]' --config-settings editable_mode=strict"
    api = mypy_on_the_example(
        Path(sys.executable), REPO, "examples/genvae-plugin-example/genvae_plugin_example", clean_env(), hint
    )
    # strict mode links each module into build/__editable__.../genvae/: the file Python imports is what mypy reads
    assert api == Path(genvae.api.__file__) and api.samefile(REPO / "api.py")
