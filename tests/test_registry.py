"""The plugin manager and registry: built-ins, disabling, broken plugins, conflicts, unknown names."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from genvae.core.errors import GenvaeError, UnknownNameError
from genvae.core.model import build_model
from genvae.core.registry import PluginManager, get_registry
from genvae.plugins import BUILTIN_PLUGINS
from genvae.testing import tiny_spec

#: the engine's own built-ins, every one of which must load
CORE_PLUGINS = [f"genvae.plugins.{n}" for n in ("fc", "conv", "normal", "mse", "bce", "gaussian", "kl")]
PROVIDES = {
    "fc": {"encoder": ["fc"], "transform": ["fc"], "decoder": ["fc"], "preset": ["vae"]},
    "conv": {"encoder": ["conv"], "transform": ["conv"], "decoder": ["conv"], "preset": ["cvae"]},
    "normal": {"prior": ["normal"]},
    "mse": {"loss": ["mse"]},
    "bce": {"loss": ["bce"]},
    "gaussian": {"loss": ["gaussian"]},
    "kl": {"loss": ["kl"]},
}

HEADER = """
from genvae.core.components import Encoder, Loss
from genvae.core.hookspecs import hookimpl
"""


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """Write a real plugin module into tmp_path (on sys.path); returns its module name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("GENVAE_DISABLE_PLUGINS", raising=False)
    written: list[str] = []

    def write(name: str, body: str) -> str:
        (tmp_path / f"{name}.py").write_text(HEADER + textwrap.dedent(body))
        importlib.invalidate_caches()
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def load(*extra: str):
    return PluginManager().load([*CORE_PLUGINS, *extra], entry_points=False)


# -- built-ins -------------------------------------------------------------------------------------------


def test_builtins_load(monkeypatch):
    monkeypatch.delenv("GENVAE_DISABLE_PLUGINS", raising=False)
    registry = PluginManager().load(BUILTIN_PLUGINS, entry_points=False)
    for name, provides in PROVIDES.items():
        record = registry.plugins[name]
        assert record.status == "loaded", (name, record.error)
        assert record.builtin and record.error is None
        assert record.module == f"genvae.plugins.{name}"
        for kind, names in provides.items():
            assert set(names) <= set(record.provides[kind])
            for n in names:
                assert registry.get(kind, n).plugin == name
    assert {"fc", "conv"} <= set(registry.names("encoder"))
    assert registry.names("loss") == sorted(registry.names("loss"))


def test_builtin_summaries_come_from_docstrings():
    registry = load()
    assert registry.get("encoder", "fc").help == "Flattened image -> MLP -> feature vector."
    assert registry.get("preset", "vae").help.startswith("standard VAE")


def test_process_registry_is_cached():
    assert get_registry() is get_registry()
    assert "fc" in get_registry().names("encoder")


def test_disable_plugins(monkeypatch):
    monkeypatch.setenv("GENVAE_DISABLE_PLUGINS", " bce , gaussian,")
    registry = PluginManager().load(CORE_PLUGINS, entry_points=False)
    assert registry.plugins["bce"].status == "disabled"
    assert registry.plugins["gaussian"].status == "disabled"
    assert registry.plugins["mse"].status == "loaded"
    with pytest.raises(UnknownNameError) as info:
        registry.get("loss", "bce")
    assert "known: kl, mse" in str(info.value)
    # everything else still works
    build_model(tiny_spec("loss", "mse", registry=registry), registry)


def test_disable_a_plugin_that_is_not_builtin(plugin_module, monkeypatch):
    name = plugin_module(
        "genvae_test_extra",
        """
        class Extra(Encoder):
            '''An encoder nobody wants.'''
            name = "extra"

        @hookimpl
        def genvae_register_encoders(register):
            register(Extra)
    """,
    )
    assert "extra" in load(name).names("encoder")
    monkeypatch.setenv("GENVAE_DISABLE_PLUGINS", "genvae-test-extra")
    registry = load(name)
    assert registry.plugins["genvae-test-extra"].status == "disabled"
    assert "extra" not in registry.names("encoder")


# -- broken plugins ----------------------------------------------------------------------------------------


def test_plugin_whose_register_hook_raises_is_recorded(plugin_module):
    name = plugin_module(
        "genvae_test_broken",
        """
        class Half(Encoder):
            '''Registered just before the plugin fails.'''
            name = "half"

        @hookimpl
        def genvae_register_encoders(register):
            register(Half)

        @hookimpl
        def genvae_register_losses(register):
            raise RuntimeError("boom in register\\nsecond line")
    """,
    )
    registry = load(name)
    record = registry.plugins["genvae-test-broken"]
    assert record.status == "failed"
    assert record.error == "RuntimeError: boom in register"
    # nothing of the failed plugin is registered, not even what it registered before failing
    assert "half" not in registry.names("encoder")
    # the other plugins still work
    assert all(registry.plugins[n].status == "loaded" for n in PROVIDES)
    model = build_model(tiny_spec("encoder", "fc", registry=registry), registry)
    assert model.encoder.name == "fc"


@pytest.mark.parametrize(
    "body, error",
    [
        (
            "raise ImportError('needs a package that is not installed')",
            "ImportError: needs a package that is not installed",
        ),
        ("def broken(:\n    pass", "SyntaxError"),
        (
            """
        @hookimpl
        def genvae_register_losses(register):
            register(object)
        """,
            "TypeError: register() takes a Component subclass",
        ),
        (
            """
        class Enc(Encoder):
            '''An encoder.'''
            name = "enc"

        @hookimpl
        def genvae_register_losses(register):
            register(Enc)
        """,
            "TypeError: Enc is a encoder, registered as loss",
        ),
        (
            """
        class Nameless(Loss):
            '''No name.'''

        @hookimpl
        def genvae_register_losses(register):
            register(Nameless)
        """,
            "TypeError: Nameless has no name",
        ),
    ],
    ids=["import-error", "syntax-error", "not-a-component", "wrong-kind", "no-name"],
)
def test_broken_plugins_are_isolated(plugin_module, body, error):
    name = plugin_module("genvae_test_bad", body)
    registry = load(name)
    record = registry.plugins["genvae-test-bad"]
    assert record.status == "failed"
    assert record.error.startswith(error)
    assert "\n" not in record.error
    assert all(registry.plugins[n].status == "loaded" for n in PROVIDES)


def test_missing_plugin_module_is_recorded():
    registry = load("genvae_no_such_module_here")
    record = registry.plugins["genvae-no-such-module-here"]
    assert record.status == "failed" and record.error.startswith("ModuleNotFoundError")
    assert "fc" in registry.names("encoder")


def test_same_plugin_name_twice():
    registry = PluginManager().load([*CORE_PLUGINS, "genvae.plugins.fc"], entry_points=False)
    assert registry.plugins["fc"].status == "loaded"
    duplicate = registry.plugins["fc (genvae.plugins.fc)"]
    assert duplicate.status == "failed" and duplicate.error is not None and "already loaded" in duplicate.error


# -- conflicts ---------------------------------------------------------------------------------------------

TWIN = """
class Twin(Encoder):
    '''One of two.'''
    name = "twin"

@hookimpl
def genvae_register_encoders(register):
    register(Twin)
"""


def test_two_plugins_registering_one_name(plugin_module):
    first = plugin_module("genvae_test_first", TWIN)
    second = plugin_module("genvae_test_second", TWIN)
    registry = load(first, second)
    with pytest.raises(GenvaeError) as info:
        registry.get("encoder", "twin")
    message = str(info.value)
    assert "\n" not in message
    assert "encoder 'twin'" in message
    assert "'genvae-test-first'" in message and "'genvae-test-second'" in message
    assert "GENVAE_DISABLE_PLUGINS" in message
    assert registry.plugins["genvae-test-second"].status == "conflict"
    assert "genvae-test-first" in registry.plugins["genvae-test-second"].error
    # unrelated names are unaffected
    assert registry.get("encoder", "fc").plugin == "fc"


def test_conflict_with_a_builtin_name_is_reported_and_disabling_resolves_it(plugin_module, monkeypatch):
    name = plugin_module(
        "genvae_test_mse",
        """
        class OtherMSE(Loss):
            '''Another mse.'''
            name = "mse"
            role = "reconstruction"

        @hookimpl
        def genvae_register_losses(register):
            register(OtherMSE)
    """,
    )
    registry = load(name)
    with pytest.raises(GenvaeError, match="loss 'mse' is registered by both plugins 'mse' and 'genvae-test-mse'"):
        registry.get("loss", "mse")
    with pytest.raises(GenvaeError):
        build_model(tiny_spec("loss", "kl"), registry)
    monkeypatch.setenv("GENVAE_DISABLE_PLUGINS", "genvae-test-mse")
    registry = load(name)
    assert registry.get("loss", "mse").plugin == "mse"


def test_a_plugin_may_register_its_own_alias(plugin_module):
    name = plugin_module(
        "genvae_test_alias",
        """
        from genvae.plugins.fc import FCEncoder

        @hookimpl
        def genvae_register_encoders(register):
            register(FCEncoder, name="mlp")
    """,
    )
    registry = load(name)
    assert registry.component("encoder", "mlp") is registry.component("encoder", "fc")
    spec = tiny_spec("encoder", "mlp", {"hidden": [16]}, registry=registry)
    model = build_model(spec, registry)
    assert model.encoder.name == "mlp"  # the registered name, not the class's


# -- unknown names -------------------------------------------------------------------------------------------


def test_unknown_name_suggests_and_lists():
    registry = load()
    with pytest.raises(UnknownNameError) as info:
        registry.get("encoder", "conb")
    message = str(info.value)
    assert message == "unknown encoder 'conb'; did you mean 'conv'? known: conv, fc"
    assert info.value.name == "conb"
    assert info.value.known == ["conv", "fc"]


def test_unknown_name_without_a_close_match():
    registry = load()
    with pytest.raises(UnknownNameError) as info:
        registry.get("transform", "zzzzzz")
    assert "did you mean" not in str(info.value)
    assert str(info.value).startswith("unknown latent transform 'zzzzzz'; known: ")


def test_unknown_name_of_a_kind_with_nothing_registered():
    registry = PluginManager().load([], entry_points=False)
    with pytest.raises(UnknownNameError, match="unknown dataset 'mnist'; known: none"):
        registry.get("dataset", "mnist")


# -- presets and datasets ---------------------------------------------------------------------------------------


def test_named_registrations(plugin_module):
    name = plugin_module(
        "genvae_test_named",
        """
        def loader(root, image_size, channels, split, download):
            raise NotImplementedError

        @hookimpl
        def genvae_register_datasets(register):
            register("noise", loader, help="random noise")

        @hookimpl
        def genvae_register_presets(register):
            register("tiny", {"encoder": "fc", "transform": "fc", "decoder": "fc"}, help="a tiny model")
    """,
    )
    registry = load(name)
    assert registry.get("dataset", "noise").help == "random noise"
    assert registry.get("preset", "tiny").obj["encoder"] == "fc"
    assert registry.plugins["genvae-test-named"].provides == {"dataset": ["noise"], "preset": ["tiny"]}


# -- entry points --------------------------------------------------------------------------------------------------


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch, plugin_module):
    """A third-party plugin installed as a distribution with a ``genvae`` entry point."""
    module = plugin_module(
        "genvae_test_ep_module",
        """
        class EPEncoder(Encoder):
            '''From an entry point.'''
            name = "from-ep"

        @hookimpl
        def genvae_register_encoders(register):
            register(EPEncoder)
    """,
    )
    dist = tmp_path / "genvae_test_ep-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: genvae-test-ep\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text(f"[genvae]\ntestep = {module}\n")
    importlib.invalidate_caches()
    return "testep"


def test_entry_point_plugins_load(installed_plugin, monkeypatch):
    monkeypatch.setenv("GENVAE_LOAD_PLUGINS", installed_plugin)
    registry = PluginManager().load(CORE_PLUGINS)
    record = registry.plugins[installed_plugin]
    assert record.status == "loaded", record.error
    assert not record.builtin
    assert (record.distribution, record.version) == ("genvae-test-ep", "1.2.3")
    assert registry.get("encoder", "from-ep").plugin == installed_plugin


def test_load_plugins_empty_loads_no_third_party_plugin(installed_plugin, monkeypatch):
    monkeypatch.setenv("GENVAE_LOAD_PLUGINS", "")
    registry = PluginManager().load(CORE_PLUGINS)
    assert installed_plugin not in registry.plugins
    assert "from-ep" not in registry.names("encoder")
    assert all(registry.plugins[n].status == "loaded" for n in PROVIDES)


def test_load_plugins_unset_loads_every_entry_point(installed_plugin, monkeypatch):
    monkeypatch.delenv("GENVAE_LOAD_PLUGINS", raising=False)
    registry = PluginManager().load(CORE_PLUGINS)
    assert registry.plugins[installed_plugin].status == "loaded"


def test_entry_point_plugin_can_be_disabled(installed_plugin, monkeypatch):
    monkeypatch.delenv("GENVAE_LOAD_PLUGINS", raising=False)
    monkeypatch.setenv("GENVAE_DISABLE_PLUGINS", installed_plugin)
    registry = PluginManager().load(CORE_PLUGINS)
    assert registry.plugins[installed_plugin].status == "disabled"
    assert "from-ep" not in registry.names("encoder")


def test_the_component_kinds_have_one_source_the_base_classes():
    """Each base class carries its kind, its label in messages and its hook; registry, spec, kit and CLI derive
    from them, and every hook exists in the hook specs."""
    from genvae.core import hookspecs
    from genvae.core.components import COMPONENT_BASES, COMPONENT_KINDS, MODEL_PART_KINDS, Loss
    from genvae.core.registry import COMPONENT_HOOKS, KIND_NAMES
    from genvae.core.spec import COMPONENT_KINDS as SPEC_KINDS
    from genvae.testing import BASES, KINDS

    assert COMPONENT_KINDS == ("encoder", "transform", "decoder", "prior", "loss") == KINDS
    assert MODEL_PART_KINDS == SPEC_KINDS == COMPONENT_KINDS[:-1]
    assert BASES == {base.kind: base for base in COMPONENT_BASES} and BASES["loss"] is Loss
    assert {k: KIND_NAMES[k] for k in COMPONENT_KINDS} == {b.kind: b.kind_label for b in COMPONENT_BASES}
    assert KIND_NAMES["transform"] == "latent transform"
    assert COMPONENT_HOOKS == {b.kind: b.hook for b in COMPONENT_BASES}
    assert all(callable(getattr(hookspecs, hook)) for hook in COMPONENT_HOOKS.values())
