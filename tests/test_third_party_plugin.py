"""A real third-party plugin, installed with pip and found through its entry point. No mocks.

(Over 500 lines on purpose: every test shares the one set of real installs this module builds.)

Once per module, the example package (examples/genvae-plugin-example) and two deliberately broken
distributions are built and installed with ``pip install --no-deps --no-build-isolation --target``
into temporary folders: each gets a real ``*.dist-info`` holding a real ``genvae`` entry point.
Then one fresh ``python`` process per environment (default, GENVAE_DISABLE_PLUGINS=resnet,
GENVAE_LOAD_PLUGINS= and with the broken distributions), ``PYTHONPATH`` pointing at those folders,
reports what the registry loaded, builds and trains models, and runs ``genvae`` commands; discovery
goes through ``importlib.metadata`` exactly as it does for a user. The processes run two at a time
(importing torch dominates), and the tests below only read their reports.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a real distribution built and installed with pip: the slow lane


REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "genvae-plugin-example"
BUILTIN_CORE = ("fc", "conv", "normal", "mse", "bce", "gaussian", "kl")  # built-ins these tests rely on

try:
    import genvae.cli.main  # noqa: F401

    CLI_IMPORT_ERROR = None
except ImportError as exc:  # the CLI is optional for the engine-level checks
    CLI_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

needs_cli = pytest.mark.skipif(
    CLI_IMPORT_ERROR is not None, reason=f"genvae.cli cannot be imported ({CLI_IMPORT_ERROR})"
)

# -- distributions written for these tests ---------------------------------------------------------

BROKEN_CODE = '''
"""A plugin that cannot be imported, as when one of its dependencies is missing."""

raise ImportError("genvae-broken-plugin needs the library 'not_installed_anywhere'")
'''

HALFWAY_CODE = '''
"""A plugin whose genvae_register_encoders registers one encoder, then raises."""

import click

from genvae.core.hookspecs import hookimpl
from genvae.plugins.conv import ConvDecoder, ConvEncoder


class HalfwayEncoder(ConvEncoder):
    """Registered just before the hook raises: must not become visible."""

    name = "halfway"


class HalfwayDecoder(ConvDecoder):
    name = "halfway"


@hookimpl
def genvae_register_encoders(register):
    register(HalfwayEncoder)
    raise RuntimeError("halfway encoder registration exploded")


@hookimpl
def genvae_register_decoders(register):
    register(HalfwayDecoder)


@hookimpl
def genvae_register_presets(register):
    register("halfway-vae", {"encoder": "halfway", "transform": "conv", "decoder": "halfway"})


@hookimpl
def genvae_register_commands(cli):
    cli.add_command(click.Command("halfway-command", callback=lambda: None))
'''

LATE_FAIL_CODE = '''
"""A plugin whose component hooks succeed and whose last hook (presets) raises."""

from genvae.core.hookspecs import hookimpl
from genvae.plugins.conv import ConvDecoder, ConvEncoder, ConvLatent


class LateEncoder(ConvEncoder):
    name = "late"


class LateLatent(ConvLatent):
    name = "late"


class LateDecoder(ConvDecoder):
    name = "late"


@hookimpl
def genvae_register_encoders(register):
    register(LateEncoder)


@hookimpl
def genvae_register_transforms(register):
    register(LateLatent)


@hookimpl
def genvae_register_decoders(register):
    register(LateDecoder)


@hookimpl
def genvae_register_presets(register):
    raise ValueError("late preset registration failed")
'''


def _write_dist(root: Path, dist: str, modules: dict[str, str], entry_points: dict[str, str]) -> Path:
    """A minimal setuptools project: one package per module, entry points in the ``genvae`` group."""
    src = root / dist
    for module, code in modules.items():
        (src / module).mkdir(parents=True)
        (src / module / "__init__.py").write_text(textwrap.dedent(code).lstrip())
    eps = "\n".join(f'{name} = "{module}"' for name, module in entry_points.items())
    packages = ", ".join(f'"{m}"' for m in modules)
    (src / "pyproject.toml").write_text(
        "[build-system]\n"
        'requires = ["setuptools>=68"]\n'
        'build-backend = "setuptools.build_meta"\n\n'
        "[project]\n"
        f'name = "{dist}"\n'
        'version = "0.0.1"\n'
        'dependencies = ["genvae"]\n\n'
        "[project.entry-points.genvae]\n"
        f"{eps}\n\n"
        "[tool.setuptools]\n"
        f"packages = [{packages}]\n"
    )
    return src


def _pip_install(targets: dict[Path, list[Path]]) -> None:
    """``pip install --target`` each folder's projects; the pip runs go in parallel.

    The build uses this environment's setuptools (``--no-build-isolation``, nothing downloaded).
    Where setuptools is not installed (a Python 3.12+ venv), pip sets up an isolated build
    environment instead, which needs the package index.
    """
    offline = importlib.util.find_spec("setuptools") is not None
    flags = ["--no-build-isolation", "--no-index"] if offline else []
    procs = []
    for target, projects in targets.items():
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            *flags,
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--quiet",
            "--target",
            str(target),
            *map(str, projects),
        ]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"pip install failed:\n{output}"


class Sites:
    """The install folders: ``good`` holds the example plugin, ``bad`` the broken distributions."""

    def __init__(self, base: Path):
        self.base = base
        self.good = base / "site-good"
        self.bad = base / "site-bad"
        self.cwd = base / "cwd"  # an empty working directory, so nothing is importable from it


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> Sites:
    s = Sites(tmp_path_factory.mktemp("third_party_plugins"))
    s.cwd.mkdir()
    src = s.base / "src"
    # Build from a copy: an in-tree setuptools build would leave build/ and *.egg-info in the repo.
    example = shutil.copytree(
        EXAMPLE,
        src / EXAMPLE.name,
        ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "tests"),
    )
    broken = _write_dist(
        src, "genvae-broken-plugin", {"genvae_broken_plugin": BROKEN_CODE}, {"broken": "genvae_broken_plugin"}
    )
    halfway = _write_dist(
        src,
        "genvae-halfway-plugins",
        {"genvae_halfway_plugin": HALFWAY_CODE, "genvae_late_fail_plugin": LATE_FAIL_CODE},
        {"halfway": "genvae_halfway_plugin", "late-fail": "genvae_late_fail_plugin"},
    )
    _pip_install({s.good: [example], s.bad: [broken, halfway]})
    return s


# -- running genvae in fresh processes -------------------------------------------------------------

PROBE = r"""
import contextlib
import io
import json
import sys

import attrs

from genvae.core.errors import GenvaeError
from genvae.core.registry import get_registry

job = json.loads(sys.argv[1])
reg = get_registry()
out = {
    "plugins": {key: attrs.asdict(rec) for key, rec in reg.plugins.items()},
    "names": {kind: reg.names(kind) for kind in reg.entries},
    "command_plugins": [rec.name for rec, _ in reg.command_plugins],
    "lookups": {},
    "trained": {},
    "cli": [],
}
for kind, name in [("encoder", "resnet"), ("decoder", "resnet"), ("preset", "resnet-vae")]:
    try:
        entry = reg.get(kind, name)
        out["lookups"][f"{kind}:{name}"] = {"plugin": entry.plugin, "module": getattr(entry.obj, "__module__", None)}
    except GenvaeError as exc:
        out["lookups"][f"{kind}:{name}"] = {"error": f"{type(exc).__name__}: {exc}"}
if "genvae_plugin_example" in sys.modules:
    out["example_file"] = sys.modules["genvae_plugin_example"].__file__

for preset in job["train"]:  # build the preset and take 3 optimisation steps on random images
    import torch

    from genvae.core.compose import preset_spec
    from genvae.core.model import build_model

    torch.manual_seed(0)
    model = build_model(preset_spec(preset))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(4, *model.spec.image_shape) * 2 - 1
    losses = []
    for _ in range(3):
        fwd = model(x)
        loss = sum(model.phase_terms(fwd, "model").values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    out["trained"][preset] = {
        "losses": losses,
        "classes": {k: f"{type(c).__module__}.{type(c).__qualname__}" for k, c in model.components().items()},
        "features": list(fwd.features.shape),
        "latent": list(model.layout.shape),
        "x_hat": list(fwd.x_hat.shape),
    }

for argv in job["cli"]:  # the genvae command line, run as its console script runs it
    from genvae.cli.main import main

    sys.argv = ["genvae", *argv]
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out["cli"].append({"argv": argv, "code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()})

print("PROBE-JSON " + json.dumps(out))
"""


def _env(sites: Sites, with_bad: bool, env: dict[str, str]) -> dict[str, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("GENVAE_")}
    full["PYTHONPATH"] = os.pathsep.join([str(sites.good), *([str(sites.bad)] if with_bad else [])])
    full["PYTHONNOUSERSITE"] = "1"
    full.update(env)
    return full


def _start(sites: Sites, with_bad: bool = False, env: dict[str, str] | None = None, train=(), cli=()):
    job = {"train": list(train), "cli": [list(a) for a in cli] if CLI_IMPORT_ERROR is None else []}
    return subprocess.Popen(
        [sys.executable, "-c", PROBE, json.dumps(job)],
        cwd=sites.cwd,
        env=_env(sites, with_bad, env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(name: str, proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate(timeout=300)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("PROBE-JSON ")]
    assert proc.returncode == 0 and lines, f"{name} process failed:\n{stdout}\n{stderr}"
    result = json.loads(lines[-1].removeprefix("PROBE-JSON "))
    result["cli"] = {c["argv"][0]: c for c in result["cli"]}  # by command name
    return result


@pytest.fixture(scope="module")
def model_folder(sites) -> Path:
    return sites.base / "resnet-model"


@pytest.fixture(scope="module")
def runs(sites, model_folder) -> dict[str, dict]:
    """What each environment's process saw, by name; the second pair reads the folder the first built."""
    folder = str(model_folder)
    wave1 = {
        "default": _start(
            sites,
            train=("resnet-vae",),
            cli=(
                ["list-plugins", "--json"],
                ["build", "--preset", "resnet-vae", "-o", folder, "--force"],
                ["info", folder, "--json"],
            ),
        ),
        "broken": _start(
            sites,
            with_bad=True,
            train=("resnet-vae", "vae"),
            cli=(
                ["list-plugins", "--json"],
                ["--help"],
            ),
        ),
    }
    results = {name: _finish(name, proc) for name, proc in wave1.items()}
    wave2 = {
        "disabled": _start(
            sites,
            env={"GENVAE_DISABLE_PLUGINS": "resnet"},
            cli=(
                ["list-plugins", "--json"],
                ["info", folder, "--json"],
            ),
        ),
        "unselected": _start(sites, with_bad=True, env={"GENVAE_LOAD_PLUGINS": ""}, cli=(["list-plugins", "--json"],)),
    }
    results.update({name: _finish(name, proc) for name, proc in wave2.items()})
    return results


def _assert_builtins_loaded(plugins: dict) -> None:
    for name in BUILTIN_CORE:
        assert plugins[name]["status"] == "loaded", plugins[name]
        assert plugins[name]["builtin"] is True


def _assert_resnet_record(rec: dict) -> None:
    assert rec["status"] == "loaded", rec
    assert rec["error"] is None
    assert rec["builtin"] is False
    assert rec["module"] == "genvae_plugin_example"
    assert rec["distribution"] == "genvae-plugin-example"
    assert rec["version"] == "0.1.0"
    assert {k: sorted(v) for k, v in rec["provides"].items()} == {
        "encoder": ["resnet"],
        "decoder": ["resnet"],
        "transform": ["tanh-flow"],
        "loss": ["renyi"],
        "preset": ["resnet-vae"],
    }


def _assert_trained(result: dict) -> None:
    losses = result["losses"]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses), losses


# -- the installed example plugin ------------------------------------------------------------------


def test_pip_produced_a_real_distribution_with_the_entry_point(sites):
    (dist_info,) = sites.good.glob("genvae_plugin_example-0.1.0.dist-info")
    entry_points = (dist_info / "entry_points.txt").read_text()
    assert "[genvae]" in entry_points
    assert "resnet = genvae_plugin_example" in entry_points
    assert (sites.good / "genvae_plugin_example" / "__init__.py").is_file()


def test_example_plugin_is_loaded_as_third_party(runs, sites):
    result = runs["default"]
    _assert_resnet_record(result["plugins"]["resnet"])
    _assert_builtins_loaded(result["plugins"])
    # imported from the pip-installed copy, not from the source tree
    assert Path(result["example_file"]).resolve().is_relative_to(sites.good.resolve())


def test_example_components_and_preset_come_from_the_plugin(runs):
    result = runs["default"]
    for key in ("encoder:resnet", "decoder:resnet", "preset:resnet-vae"):
        assert result["lookups"][key]["plugin"] == "resnet", result["lookups"][key]
    assert result["lookups"]["encoder:resnet"]["module"] == "genvae_plugin_example"
    assert "resnet" in result["names"]["encoder"] and "resnet" in result["names"]["decoder"]
    assert "resnet-vae" in result["names"]["preset"]


def test_model_from_plugin_preset_trains(runs):
    result = runs["default"]["trained"]["resnet-vae"]
    _assert_trained(result)
    assert result["classes"]["encoder"] == "genvae_plugin_example.ResNetEncoder"
    assert result["classes"]["decoder"] == "genvae_plugin_example.ResNetDecoder"
    assert result["classes"]["transform"] == "genvae.plugins.conv.ConvLatent"  # the built-in spatial latent
    assert result["features"] == [4, 128, 4, 4]
    assert result["latent"] == [4, 4, 4]
    assert result["x_hat"] == [4, 3, 32, 32]


def test_disable_plugins_skips_the_example(runs):
    result = runs["disabled"]
    rec = result["plugins"]["resnet"]
    assert rec["status"] == "disabled"
    assert rec["builtin"] is False and rec["distribution"] == "genvae-plugin-example"
    assert rec["provides"] == {}
    assert "example_file" not in result  # not even imported
    for key in ("encoder:resnet", "decoder:resnet", "preset:resnet-vae"):
        assert result["lookups"][key]["error"].startswith("UnknownNameError: unknown"), result["lookups"][key]
    _assert_builtins_loaded(result["plugins"])


def test_empty_load_plugins_loads_no_third_party_plugin(runs):
    result = runs["unselected"]  # the broken distributions are installed too: none is even imported
    assert not {"resnet", "broken", "halfway", "late-fail"} & set(result["plugins"])
    assert all(rec["builtin"] for rec in result["plugins"].values()), result["plugins"]
    assert "example_file" not in result
    assert result["lookups"]["encoder:resnet"]["error"].startswith("UnknownNameError")
    _assert_builtins_loaded(result["plugins"])


# -- broken plugins are isolated -------------------------------------------------------------------


def test_plugin_failing_at_import_is_recorded_and_isolated(runs):
    result = runs["broken"]
    rec = result["plugins"]["broken"]
    assert rec["status"] == "failed"
    assert rec["error"] == "ImportError: genvae-broken-plugin needs the library 'not_installed_anywhere'"
    assert rec["builtin"] is False
    assert rec["distribution"] == "genvae-broken-plugin" and rec["version"] == "0.0.1"
    assert rec["provides"] == {}
    # everything else still loads, builds and trains
    _assert_builtins_loaded(result["plugins"])
    _assert_resnet_record(result["plugins"]["resnet"])
    _assert_trained(result["trained"]["resnet-vae"])
    _assert_trained(result["trained"]["vae"])


def test_failing_register_hook_is_not_half_applied(runs):
    result = runs["broken"]
    rec = result["plugins"]["halfway"]
    assert rec["status"] == "failed"
    assert rec["error"] == "RuntimeError: halfway encoder registration exploded"
    assert rec["provides"] == {}
    # the encoder registered before the raise, and the hooks after it, left no trace
    assert "halfway" not in result["names"]["encoder"]
    assert "halfway" not in result["names"]["decoder"]
    assert "halfway-vae" not in result["names"]["preset"]
    assert "halfway" not in result["command_plugins"]
    # a failure in a plugin's last hook discards what its earlier hooks registered
    late = result["plugins"]["late-fail"]
    assert late["status"] == "failed"
    assert late["error"] == "ValueError: late preset registration failed"
    assert late["provides"] == {}
    for kind in ("encoder", "transform", "decoder"):
        assert "late" not in result["names"][kind], kind
    _assert_builtins_loaded(result["plugins"])
    _assert_resnet_record(result["plugins"]["resnet"])


# -- the same through the command line -------------------------------------------------------------


def _cli(runs: dict, scenario: str, command: str) -> dict:
    return runs[scenario]["cli"][command]


def _list_plugins(runs: dict, scenario: str) -> dict:
    res = _cli(runs, scenario, "list-plugins")
    assert res["code"] == 0, res
    data = json.loads(res["stdout"])
    return {"plugins": {p["name"]: p for p in data["plugins"]}, "presets": {p["name"]: p for p in data["presets"]}}


@needs_cli
def test_cli_lists_the_example_plugin(runs):
    data = _list_plugins(runs, "default")
    _assert_resnet_record(data["plugins"]["resnet"])
    assert data["presets"]["resnet-vae"]["plugin"] == "resnet"
    _assert_builtins_loaded(data["plugins"])


@needs_cli
def test_cli_lists_disabled_and_unselected_plugins(runs):
    disabled = _list_plugins(runs, "disabled")
    assert disabled["plugins"]["resnet"]["status"] == "disabled"
    assert "resnet-vae" not in disabled["presets"]
    unselected = _list_plugins(runs, "unselected")
    assert "resnet" not in unselected["plugins"]
    assert all(p["builtin"] for p in unselected["plugins"].values())


@needs_cli
def test_cli_lists_failed_plugins_and_keeps_working(runs):
    data = _list_plugins(runs, "broken")
    plugins = data["plugins"]
    assert plugins["broken"]["status"] == "failed"
    assert "not_installed_anywhere" in plugins["broken"]["error"]
    assert plugins["halfway"]["status"] == "failed"
    assert "halfway encoder registration exploded" in plugins["halfway"]["error"]
    assert plugins["late-fail"]["status"] == "failed"
    _assert_resnet_record(plugins["resnet"])
    _assert_builtins_loaded(plugins)
    assert "halfway-vae" not in data["presets"]
    help_text = _cli(runs, "broken", "--help")
    assert help_text["code"] == 0 and "list-plugins" in help_text["stdout"]
    assert "halfway-command" not in help_text["stdout"]  # a failed plugin adds no command


@needs_cli
def test_cli_builds_a_model_folder_from_the_plugin_preset(runs, model_folder):
    build = _cli(runs, "default", "build")
    assert build["code"] == 0, build
    config = json.loads((model_folder / "config.json").read_text())
    assert config["preset"] == "resnet-vae"
    assert config["encoder"]["name"] == "resnet" and config["decoder"]["name"] == "resnet"
    info = _cli(runs, "default", "info")
    assert info["code"] == 0, info
    spec = json.loads(info["stdout"])
    assert spec["encoder"]["options"] == {"width": 32, "stages": 3, "blocks_per_stage": 1}
    # without the plugin the folder cannot be loaded, and the one-line error names what is missing
    info = _cli(runs, "disabled", "info")
    assert info["code"] == 1
    assert "'resnet'" in info["stderr"] and "Traceback" not in info["stderr"]
