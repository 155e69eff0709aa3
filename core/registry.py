"""The plugin manager and the registry of everything plugins provide.

Built-in plugins (``genvae.plugins.BUILTIN_PLUGINS``) are registered explicitly; third-party
ones come from the ``genvae`` entry-point group. Each plugin is imported and asked to register
in isolation: one that fails is recorded with its error and every command keeps working.

Environment: ``GENVAE_LOAD_PLUGINS`` (comma list of third-party plugin names to load; empty loads
none) and ``GENVAE_DISABLE_PLUGINS`` (comma list of plugin names, built-in or not, to skip).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as metadata
import os
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal, overload

import attrs
import pluggy

from genvae.core import hookspecs
from genvae.core.components import (
    COMPONENT_BASES,
    KIND_LABELS,
    Component,
    Decoder,
    Encoder,
    LatentTransform,
    Loss,
    Prior,
)
from genvae.core.errors import GenvaeError, UnknownNameError

ENTRY_POINT_GROUP = "genvae"
COMPONENT_HOOKS = {base.kind: base.hook for base in COMPONENT_BASES}
#: how messages name each kind: the components' labels, plus the two other things plugins register
KIND_NAMES = {
    **KIND_LABELS,
    "dataset": "dataset",
    "preset": "preset",
    "metric": "metric",
    "features": "feature network",
    "logger": "logger",
}
#: the hooks of the kinds registered by name (``register(name, obj, help=..., **extra)``)
NAMED_HOOKS = {
    "dataset": "genvae_register_datasets",
    "preset": "genvae_register_presets",
    "metric": "genvae_register_metrics",
    "features": "genvae_register_feature_networks",
    "logger": "genvae_register_loggers",
}


@attrs.define
class PluginRecord:
    """What list-plugins shows about one plugin."""

    name: str
    module: str
    builtin: bool
    distribution: str | None = None
    version: str | None = None
    status: str = "loaded"  # loaded | failed | disabled
    error: str | None = None
    provides: dict[str, list[str]] = attrs.field(factory=dict)


@attrs.define
class Entry:
    """One registered thing: a component class, a dataset loader or a preset spec."""

    kind: str
    name: str
    obj: Any
    plugin: str
    help: str = ""
    #: what a named registration adds beyond help (a dataset's ``labels`` loader, a metric's ``needs``)
    extra: dict[str, Any] = attrs.field(factory=dict)


class Registry:
    """Components, datasets and presets by kind and name, each remembering its plugin."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Entry]] = {k: {} for k in KIND_NAMES}
        self.conflicts: dict[tuple[str, str], list[str]] = {}
        self.plugins: dict[str, PluginRecord] = {}
        self.command_plugins: list[Any] = []
        self.hooks: pluggy.PluginManager | None = None  # the plugin manager the plugins are registered with

    def add_commands(self, record: PluginRecord, plugin: Any, cli: Any) -> None:
        """Run ``plugin``'s ``genvae_register_commands`` hook on the click group ``cli`` (pluggy's dispatch)."""
        assert self.hooks is not None
        call_hook(self.hooks, plugin, "genvae_register_commands", cli=cli)

    # -- lookup ------------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: str, name: str) -> Entry:
        if (kind, name) in self.conflicts:
            owners = " and ".join(f"'{p}'" for p in self.conflicts[(kind, name)])
            raise GenvaeError(
                f"{KIND_NAMES[kind]} '{name}' is registered by both plugins {owners}; "
                "disable one with GENVAE_DISABLE_PLUGINS"
            )
        try:
            return self.entries[kind][name]
        except KeyError:
            raise UnknownNameError(KIND_NAMES[kind], name, self.entries[kind], self.failed_note()) from None

    def failed_note(self) -> str:
        """The plugins that failed to load, with their errors, as one clause (empty when all loaded): what an
        unknown component or command adds, since the name may be one such a plugin provides."""
        failed = [r for r in self.plugins.values() if r.status == "failed"]
        if not failed:
            return ""
        listed = ", ".join(f"'{r.name}' ({(r.error or 'failed')[:120]})" for r in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        return f"plugin(s) that failed to load and may provide it: {listed}{more} (genvae list-plugins)"

    @overload
    def component(self, kind: Literal["encoder"], name: str) -> type[Encoder]: ...
    @overload
    def component(self, kind: Literal["transform"], name: str) -> type[LatentTransform]: ...
    @overload
    def component(self, kind: Literal["decoder"], name: str) -> type[Decoder]: ...
    @overload
    def component(self, kind: Literal["prior"], name: str) -> type[Prior]: ...
    @overload
    def component(self, kind: Literal["loss"], name: str) -> type[Loss]: ...
    @overload
    def component(self, kind: str, name: str) -> type[Component]: ...
    def component(self, kind: str, name: str) -> type[Component]:
        """The component class registered as ``name`` for ``kind`` (register() admits only that kind's classes)."""
        return self.get(kind, name).obj

    # -- registration ------------------------------------------------------------------------
    def _add(self, staged: list[Entry]) -> None:
        for entry in staged:
            existing = self.entries[entry.kind].get(entry.name)
            if existing is not None and existing.plugin != entry.plugin:
                self.conflicts.setdefault((entry.kind, entry.name), [existing.plugin]).append(entry.plugin)
                continue
            self.entries[entry.kind][entry.name] = entry


def _component_register(kind: str, plugin: str, staged: list[Entry]) -> Callable:
    def register(cls: Any, name: str | None = None) -> type:
        from genvae.core.components import Component

        if not (isinstance(cls, type) and issubclass(cls, Component)):
            raise TypeError(f"register() takes a Component subclass, got {cls!r}")
        cls = typing.cast("type[Component]", cls)
        if cls.kind != kind:
            raise TypeError(f"{cls.__name__} is a {cls.kind or 'component without kind'}, registered as {kind}")
        name = name or cls.name
        if not name:
            raise TypeError(f"{cls.__name__} has no name")
        staged.append(Entry(kind, name, cls, plugin, cls.summary()))
        return cls

    return register


def _named_register(kind: str, plugin: str, staged: list[Entry]) -> Callable:
    def register(name: str, obj: Any, help: str = "", **extra: Any) -> Any:
        staged.append(Entry(kind, name, obj, plugin, help, dict(extra)))
        return obj

    return register


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [p.strip() for p in value.split(",") if p.strip()]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class PluginManager:
    """Loads plugins and fills a :class:`Registry` from their register hooks."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.registry.hooks = self.pm

    def load(self, builtin: Iterable[str], entry_points: bool = True) -> Registry:
        disabled = set(_env_list("GENVAE_DISABLE_PLUGINS") or [])
        for module_name in builtin:
            name = module_name.rsplit(".", 1)[-1].replace("_", "-")
            record = PluginRecord(
                name=name, module=module_name, builtin=True, distribution="genvae", version=_version("genvae")
            )
            self._load_one(record, functools.partial(importlib.import_module, module_name), disabled)
        if entry_points:
            only = _env_list("GENVAE_LOAD_PLUGINS")
            for ep in _entry_points():
                if only is not None and ep.name not in only:
                    continue
                dist = getattr(ep, "dist", None)
                record = PluginRecord(
                    name=ep.name,
                    module=ep.value,
                    builtin=False,
                    distribution=dist.metadata["Name"] if dist is not None else None,
                    version=dist.version if dist is not None else None,
                )
                self._load_one(record, ep.load, disabled)
        return self.registry

    def _load_one(self, record: PluginRecord, load: Callable[[], Any], disabled: set[str]) -> None:
        registry = self.registry
        if record.name in registry.plugins:
            record.status, record.error = "failed", f"a plugin named '{record.name}' is already loaded"
            registry.plugins[f"{record.name} ({record.module})"] = record
            return
        registry.plugins[record.name] = record
        if record.name in disabled:
            record.status = "disabled"
            return
        try:
            plugin = load()
            misspelled = sorted(
                n
                for n in dir(plugin)
                if n.startswith("genvae_") and callable(getattr(plugin, n)) and not hasattr(hookspecs, n)
            )
            if misspelled:
                known = ", ".join(n for n in dir(hookspecs) if n.startswith("genvae_register_"))
                raise AttributeError(f"unknown hook '{misspelled[0]}'; known hooks: {known}")
            self.pm.register(plugin, name=record.name)
        except (Exception, SystemExit) as exc:  # a broken plugin must not break genvae
            record.status, record.error = "failed", _first_line(exc)
            return
        staged: list[Entry] = []
        try:
            for kind, hook_name in COMPONENT_HOOKS.items():
                self._call(plugin, hook_name, register=_component_register(kind, record.name, staged))
            for kind, hook_name in NAMED_HOOKS.items():
                self._call(plugin, hook_name, register=_named_register(kind, record.name, staged))
        except Exception as exc:
            self.pm.unregister(plugin)
            record.status, record.error = "failed", _first_line(exc)
            return
        registry._add(staged)
        for entry in staged:
            record.provides.setdefault(entry.kind, []).append(entry.name)
            if (entry.kind, entry.name) in registry.conflicts:
                others = [p for p in registry.conflicts[(entry.kind, entry.name)] if p != record.name]
                record.error = f"{KIND_NAMES[entry.kind]} '{entry.name}' is also registered by plugin '{others[0]}'"
                record.status = "conflict"
        if hasattr(plugin, "genvae_register_commands"):
            registry.command_plugins.append((record, plugin))

    def _call(self, plugin: Any, hook_name: str, **kwargs: Any) -> None:
        """Call ``plugin``'s implementation of one hook through pluggy's own dispatch (a caller over that plugin
        alone, so its ``register`` callback is bound to it)."""
        call_hook(self.pm, plugin, hook_name, **kwargs)


def call_hook(pm: pluggy.PluginManager, plugin: Any, hook_name: str, **kwargs: Any) -> None:
    """``plugin``'s implementation of ``hook_name`` called through pluggy (validation, ordering, wrappers), with
    every other registered plugin left out."""
    others = [p for p in pm.get_plugins() if p is not plugin]
    pm.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs)


def _entry_points():
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


_REGISTRY: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        from genvae.plugins import BUILTIN_PLUGINS

        _REGISTRY = PluginManager().load(BUILTIN_PLUGINS)
    return _REGISTRY
