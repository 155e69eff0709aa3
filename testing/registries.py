"""Registries for tests: the built-in plugins plus the ones under test, with no entry points read, so what else is
installed does not change what a test sees."""

from __future__ import annotations

from typing import Any

from genvae.core.registry import PluginManager, PluginRecord, Registry
from genvae.testing._util import fail


def plugin_registry(*plugins: Any, builtin: bool = True) -> Registry:
    """A fresh registry with the built-in plugins (unless ``builtin=False``) and ``plugins``.

    Each plugin is a module, a module name, or any object with ``@hookimpl`` functions/methods
    (e.g. an instance of a class defined in a test). Entry points are not read, so installed
    third-party plugins do not leak in. A plugin that fails to load raises AssertionError with
    the plugin's error.
    """
    import importlib

    from genvae.plugins import BUILTIN_PLUGINS

    manager = PluginManager()
    manager.load(BUILTIN_PLUGINS if builtin else [], entry_points=False)
    for i, plugin in enumerate(plugins):
        if isinstance(plugin, str):
            module, name = plugin, plugin.rsplit(".", 1)[-1].replace("_", "-")
            load = lambda m=plugin: importlib.import_module(m)  # noqa: E731
        else:
            module = getattr(plugin, "__name__", None) or type(plugin).__qualname__
            name = f"test-{module.rsplit('.', 1)[-1].replace('_', '-').lower()}-{i}"
            load = lambda p=plugin: p  # noqa: E731
        record = PluginRecord(name=name, module=module, builtin=False)
        manager._load_one(record, load, set())
        if record.status != "loaded":
            raise fail(f"plugin {module} did not load ({record.status}): {record.error}")
    return manager.registry
