"""``genvae.testing``: a conformance kit that checks a component honours its contract.

Every check is a plain function that raises :class:`AssertionError` with a message naming the
component and what is wrong, so it works under pytest (or any runner) without importing pytest.
A plugin's test suite typically needs one line per component::

    from genvae.testing import check_component

    def test_my_encoder():
        check_component("encoder", "my-encoder", {"width": 8})

The component under test is placed among small partners by :func:`tiny_spec` (16 px images, the
partners' own ``test_options``), so a whole check runs in well under a second on a CPU. The kit
names no plugin: partners are found in the registry. Components that
are not installed (a plugin under development) are tested through :func:`plugin_registry`::

    registry = plugin_registry(my_plugin_module)
    check_component("loss", "my-loss", registry=registry)

The checks, each usable alone:

* :func:`check_registered`: the name resolves to a class of the right kind, with a docstring
  summary, attrs options and (encoders) counterparts that exist.
* :func:`check_options_roundtrip`: options -> dict -> JSON -> options gives the same instance;
  every option has a help text; unknown options are refused with one line.
* :func:`check_shapes`: the model builds; features, posterior, z, u, logits and x_hat have the
  declared shapes; x_hat is in [-1, 1]; the prior samples the latent's shape; loss terms are
  finite scalars (``Loss.SKIP`` flags: one-element bools); the prior keeps fixed groups.
* :func:`check_serialisation`: ``save_model``/``load_model`` give an identical ``state_dict``,
  resolved spec and outputs (eval mode, posterior mean) and leave no temporary files.
* :func:`check_gradients`: after one forward and a backward of every phase, each trainable
  parameter of the component gets a finite gradient and at least one is non-zero; a loss's own
  terms move some parameter.
* :func:`check_determinism`: two builds under one seed give identical weights, loss terms and
  gradients for the same input and torch seed.
* :func:`check_spec_roundtrip`: the spec and the resolved spec survive ``to_dict`` -> JSON ->
  ``from_dict``, and rebuilding from the resolved spec resolves to itself.
* :func:`check_sensitivity`: every term of a loss changes when the images and random draws change
  (a term computed from constants fails); for other kinds, x_hat changes with the images.
* :func:`check_branches`: a loss keeps to the branches of ``train.schedule``: posterior-update terms
  take no gradient from the prior samples, prior-update terms none from the posterior pass, and
  its ``all`` terms are those of its branches together.

:func:`check_component` runs them all (``skip=("determinism",)`` leaves some out). Every check
takes ``kind, name, options=None`` or a ready ``spec=``, plus ``registry=`` and ``seed=``. No
check changes the caller's global torch RNG state, and each runs on one torch thread.

Helpers: :func:`tiny_spec` (the spec the checks use; also a quick way to get a small model
around a component), :func:`build_tiny` (build under a seed), :func:`random_images` (a fixed
batch in [-1, 1]), :func:`plugin_registry` (built-ins plus given plugin objects or modules, no
entry points) and :func:`single_thread` (a context manager for fast tiny-model tests).
"""

from __future__ import annotations

import functools
import json
import tempfile
import typing
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import torch

from genvae.core.components import (
    COMPONENT_BASES,
    COMPONENT_KINDS,
    MODEL_PART_KINDS,
    Component,
    Gaussian,
    Loss,
)
from genvae.core.compose import DEFAULT_LOSSES, with_default_losses
from genvae.core.errors import GenvaeError, OptionsError
from genvae.core.options import options_from_dict, options_to_dict
from genvae.core.registry import KIND_NAMES, PluginManager, PluginRecord, Registry, get_registry
from genvae.core.spec import ComponentSpec, LossSpec, ModelSpec, TrainConfig

__all__ = [
    "CHECKS",
    "build_tiny",
    "check_component",
    "check_determinism",
    "check_gradients",
    "check_options_roundtrip",
    "check_registered",
    "check_serialisation",
    "check_shapes",
    "check_spec_roundtrip",
    "genvae_cli",
    "invoke_cli",
    "plugin_registry",
    "random_images",
    "single_thread",
    "tiny_spec",
]

KINDS = COMPONENT_KINDS
BASES: dict[str, type[Component]] = {base.kind: base for base in COMPONENT_BASES}
LOSS_ROLES = ("reconstruction", "divergence", "adversarial", "auxiliary")
BATCH = 4  # > 1, so batch norm has statistics to use in train mode

_TINY_TRAIN = TrainConfig(batch_size=BATCH, epochs=1, checkpoint_every=10, log_every=1)


# -- small helpers ----------------------------------------------------------------------------------


def _label(kind: str, name: str) -> str:
    return f"{KIND_NAMES.get(kind, kind)} '{name}'"


def _fail(message: str) -> AssertionError:
    return AssertionError(message)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise _fail(f"unknown component kind '{kind}'; kinds: {', '.join(KINDS)}")


@contextmanager
def single_thread():
    """Run torch on one intra-op thread, restoring the count afterwards.

    The conformance models are tiny: extra threads only add synchronisation, and on a busy
    machine (parallel test runs, CI) they make a check ten times slower. Every check runs so.
    """
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def _one_thread(func):
    """Run a check on one thread; a crash inside the model becomes an AssertionError naming the component."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with single_thread():
            try:
                return func(*args, **kwargs)
            except (RuntimeError, ValueError, IndexError, KeyError, TypeError) as exc:
                kind = kwargs.get("kind", args[0] if args else "?")
                name = kwargs.get("name", args[1] if len(args) > 1 else "?")
                first = (str(exc).strip().splitlines() or [""])[0]
                raise _fail(f"{_label(kind, name)}: {func.__name__} crashed: {type(exc).__name__}: {first}") from exc

    return wrapper


@contextmanager
def _rng(seed: int):
    """Run with torch's global RNG seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _lookup(kind: str, name: str, registry: Registry) -> Any:
    _check_kind(kind)
    try:
        return registry.get(kind, name)
    except GenvaeError as exc:
        raise _fail(str(exc)) from exc


def random_images(spec: ModelSpec, batch: int = BATCH, seed: int = 0) -> torch.Tensor:
    """A fixed batch (batch, C, H, W) of uniform noise in [-1, 1] for ``spec``'s image shape."""
    g = torch.Generator().manual_seed(seed + 7919)
    return torch.rand(batch, *spec.image_shape, generator=g) * 2.0 - 1.0


def build_tiny(spec: ModelSpec, registry: Registry | None = None, seed: int = 0):
    """Build ``spec`` with torch seeded by ``seed`` (the caller's RNG state is kept)."""
    from genvae.core.model import build_model

    with _rng(seed):
        return build_model(spec, registry or get_registry())


def _component_of(model, kind: str, name: str) -> Component:
    comp = model.losses[name] if kind == "loss" else getattr(model, kind)
    if comp.name != name:
        raise _fail(f"the spec's {KIND_NAMES[kind]} is '{comp.name}', not the component under test '{name}'")
    return comp


def _spec_has(spec: ModelSpec, kind: str, name: str) -> bool:
    if kind == "loss":
        return any(s.name == name for s in spec.losses)
    return spec.component(kind).name == name


def _options_in(spec: ModelSpec, kind: str, name: str) -> dict[str, Any]:
    if kind == "loss":
        return dict(next(s.options for s in spec.losses if s.name == name))
    return dict(spec.component(kind).options)


def _resolve(kind, name, options, spec, registry) -> tuple[ModelSpec, dict[str, Any]]:
    """The spec a check runs on: the given one (which must contain the component) or tiny_spec."""
    if spec is None:
        spec = tiny_spec(kind, name, options, registry=registry)
    elif not _spec_has(spec, kind, name):
        raise _fail(f"the given spec does not contain {_label(kind, name)}")
    return spec, _options_in(spec, kind, name)


def _tensors_equal(what: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise _fail(f"{what}: shapes differ, {list(a.shape)} vs {list(b.shape)}")
    if not torch.equal(a, b):
        diff = (a.detach().float() - b.detach().float()).abs().max().item()
        raise _fail(f"{what}: values differ (max abs difference {diff:.3g})")


def _terms_equal(what: str, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    if sorted(a) != sorted(b):
        raise _fail(f"{what}: loss terms differ, {sorted(a)} vs {sorted(b)}")
    for key in a:
        _tensors_equal(f"{what}, loss term '{key}'", a[key], b[key])


def _state_dicts_equal(what: str, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    if list(a) != list(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise _fail(f"{what}: state_dict keys differ (only in first: {only_a}; only in second: {only_b})")
    for key in a:
        _tensors_equal(f"{what}, state_dict['{key}']", a[key], b[key])


def _summed(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The terms a loss's phase minimises: all but its skip flag (``Loss.SKIP``, from a loss with ``may_skip``)."""
    return {k: v for k, v in terms.items() if k != Loss.SKIP}


def _all_terms(model, fwd) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for phase in model.phases:
        for key, value in model.phase_terms(fwd, phase).items():
            out[f"{phase}/{key}"] = value
    return out


# -- test registries and specs -------------------------------------------------------------------------


def genvae_cli():
    """The ``genvae`` click group with every installed plugin's commands, as the console script builds it."""
    from genvae.cli.main import add_plugin_commands, cli

    add_plugin_commands()
    return cli


def invoke_cli(args: Iterable[str], **kwargs: Any):
    """Run ``genvae ARGS`` in this process, as a user would, and return click's result (``exit_code``,
    ``output``): for testing a plugin's command. ``kwargs`` go to ``CliRunner.invoke`` (e.g. ``input=``)."""
    from click.testing import CliRunner

    return CliRunner().invoke(genvae_cli(), [str(a) for a in args], **kwargs)


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
            raise _fail(f"plugin {module} did not load ({record.status}): {record.error}")
    return manager.registry


def _partner(kind: str, name: str, registry: Registry) -> ComponentSpec:
    """A partner component with the small options it declares (``Component.test_options``)."""
    try:
        cls = registry.component(kind, name)
    except GenvaeError:  # the build reports it
        return ComponentSpec(name)
    known = {a.name for a in attrs.fields(cls.Options)}
    return ComponentSpec(name, {k: v for k, v in dict(cls.test_options).items() if k in known})


#: (encoder class, image size, channels) -> (feature rank, parameter count) of the encoder with its test options
_ENCODER_SIZES: dict[tuple[type, int, int], tuple[int, int] | None] = {}


def _encoder_size(cls: Any, image_size: int, channels: int) -> tuple[int, int] | None:
    key = (cls, image_size, channels)
    if key not in _ENCODER_SIZES:
        from genvae.core.components import BuildContext

        size = None
        try:
            options = options_from_dict(cls.Options, dict(cls.test_options), cls.name)
            with _rng(0):
                encoder = cls(options, BuildContext(image_shape=(channels, image_size, image_size)))
            size = (len(encoder.output_shape), sum(p.numel() for p in encoder.parameters()))
        except Exception:  # an encoder that cannot stand alone at this size is no plain partner
            pass
        _ENCODER_SIZES[key] = size
    return _ENCODER_SIZES[key]


def _plain_families(registry: Registry, image_size: int, channels: int) -> list[dict[str, str]]:
    """The partner families: [spatial, vector], each the smallest registered encoder (with its test options) whose
    counterpart transform and decoder exist and none of the three provides or requires a capability; a rank
    with no such family is left out. Families of genvae's own plugins come first, so what else is installed
    does not change the partners."""
    found: dict[int, tuple[tuple[bool, int], dict[str, str]]] = {}
    for family, members in _registered_families(registry):
        if any(m.provides or m.requires for m in members):
            continue
        size = _encoder_size(members[0], image_size, channels)
        if size is None or size[0] not in (1, 3):
            continue
        record = registry.plugins.get(registry.get("encoder", family["encoder"]).plugin)
        rank, key = size[0], (not (record is not None and record.builtin), size[1])
        if rank not in found or key < found[rank][0]:
            found[rank] = (key, family)
    return [found[rank][1] for rank in (3, 1) if rank in found]


def _provide_capabilities(spec: ModelSpec, registry: Registry) -> ModelSpec:
    """Add registered losses that provide capabilities the spec's components require."""
    losses = list(spec.losses)
    for _ in range(4):
        classes = [registry.component(k, spec.component(k).name) for k in MODEL_PART_KINDS]
        classes += [registry.component("loss", s.name) for s in losses]
        provided = {cap for c in classes for cap in getattr(c, "provides", ())}
        missing = sorted({need for c in classes for need in getattr(c, "requires", ())} - provided)
        if not missing:
            break
        added = False
        for need in missing:
            for name in registry.names("loss"):
                try:
                    cls = registry.component("loss", name)
                except GenvaeError:
                    continue
                if need in getattr(cls, "provides", ()) and all(s.name != name for s in losses):
                    losses.append(LossSpec(name, options=_partner("loss", name, registry).options))
                    added = True
                    break
        if not added:
            break
    return attrs.evolve(spec, losses=tuple(losses))


def _feature_rank(cls: Any, cspec: ComponentSpec, image_size: int, channels: int) -> int | None:
    """The rank of an encoder's declared output_shape, or None when it cannot be built alone."""
    from genvae.core.components import BuildContext

    try:
        options = options_from_dict(cls.Options, cspec.options, cspec.name)
        with _rng(0):
            encoder = cls(options, BuildContext(image_shape=(channels, image_size, image_size)))
        return len(encoder.output_shape)
    except Exception:  # the build in tiny_spec reports the real problem
        return None


def _registered_families(registry: Registry) -> list[tuple[dict[str, str], list[Any]]]:
    """Every registered encoder whose counterpart transform and decoder exist: ({kind: name}, [classes])."""
    out = []
    for enc_name in registry.names("encoder"):
        try:
            enc = registry.component("encoder", enc_name)
            counterparts = dict(getattr(enc, "counterparts", {}) or {})
            family = {"encoder": enc_name, "transform": counterparts.get("transform", ""),
                      "decoder": counterparts.get("decoder", "")}
            if not family["transform"] or not family["decoder"]:
                continue
            out.append((family, [registry.component(k, n) for k, n in family.items()]))
        except GenvaeError:
            continue
    return out


def _natural_families(kind: str, name: str, cls: type, registry: Registry) -> list[dict[str, str]]:
    """Encoder + counterpart transform/decoder families that suit ``cls`` (see tiny_spec)."""
    needs = set(getattr(cls, "requires", ()))
    out: list[dict[str, str]] = []
    for family, members in _registered_families(registry):
        provided = {cap for c in members for cap in getattr(c, "provides", ())}
        if family.get(kind) == name or (needs and needs & provided):
            out.append(family)
    return out


@_one_thread
def tiny_spec(
    kind: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    image_size: int = 16,
    channels: int = 3,
    registry: Registry | None = None,
    weight: float = 1.0,
    **overrides: Any,
) -> ModelSpec:
    """A small spec that places component ``kind``/``name`` (with ``options``) among small partners.

    The partners come from two plain families found in the registry: the smallest registered
    encoder (built with its ``test_options``) with spatial features, and the smallest with vector
    features, each with its ``counterparts`` transform and decoder, none of the three providing or
    requiring a capability (with the built-in plugins: ``conv`` and ``fc``). Every partner gets
    its own ``test_options``.

    * encoder: its ``counterparts`` transform/decoder, else the spatial family's (3-D
      features), else the vector family's;
    * transform: the spatial or vector family's encoder and decoder, whichever pair it builds with;
    * decoder: the spatial family's encoder + transform (spatial u), else the vector family's;
    * prior: the vector family (the spatial one if it needs a spatial latent);
    * loss (weight ``weight``): the spatial family, else the vector one, with the default
      reconstruction and divergence losses added for the roles it does not fill.

    After those come the natural families of registered encoders (an encoder with its
    counterpart transform and decoder) whose member is the component under test or that provide
    a capability it ``requires`` (e.g. a prior that needs a pyramid latent gets the encoder,
    transform and decoder that provide one). Losses that provide a capability some component
    ``requires`` are added from the registry.

    Candidate compositions are tried in that order and the first that builds is returned; when
    none builds, the first that the component itself refuses (its error starts with its name),
    else the first, is returned so that ``build_model`` reports why. ``overrides``
    replace any :class:`ModelSpec` field (``decoder="fc"``, ``losses=[...]``, ``train={...}``,
    ...) in every candidate; a partner named there by a plain name (``encoder="conv"``) also
    gets its ``test_options``. The prior, unless overridden, is ``ModelSpec``'s default.
    """
    registry = registry or get_registry()
    entry = _lookup(kind, name, registry)
    cls = entry.obj
    me = ComponentSpec(name, dict(options or {}))
    for part in MODEL_PART_KINDS:
        if isinstance(overrides.get(part), str):
            overrides[part] = _partner(part, overrides[part], registry)
    plain = _plain_families(registry, image_size, channels)
    families = tuple(plain)
    default_prior = attrs.fields(ModelSpec).prior.default

    def parts_of(chosen: Mapping[str, str]) -> dict[str, ComponentSpec]:
        return {k: _partner(k, n, registry) for k, n in chosen.items()}

    layouts: list[dict[str, ComponentSpec]] = []
    if kind == "encoder":
        counterparts = dict(getattr(cls, "counterparts", {}) or {})
        if _feature_rank(cls, me, image_size, channels) not in (None, 3):
            families = families[::-1]
        for family in families:
            chosen = {k: counterparts.get(k) or family[k] for k in ("transform", "decoder")}
            layouts.append({"encoder": me, **parts_of(chosen)})
    elif kind == "transform":
        pairs = [(a, a) for a in plain] + [(a, b) for a in plain for b in plain if a is not b]
        for enc_family, dec_family in pairs:
            chosen = {"encoder": enc_family["encoder"], "decoder": dec_family["decoder"]}
            layouts.append({"transform": me, **parts_of(chosen)})
    elif kind == "decoder":
        for family in plain:
            chosen = {"encoder": family["encoder"], "transform": family["transform"]}
            layouts.append({"decoder": me, **parts_of(chosen)})
    elif kind == "prior":
        for family in plain[::-1]:
            layouts.append({"prior": me, **parts_of(family)})
    else:
        for family in families:
            layouts.append(parts_of(family))
    # Fallbacks: the natural families of registered encoders (an encoder with its counterparts)
    # whose transform/decoder is the component under test, or that provide a capability it needs.
    for family in _natural_families(kind, name, cls, registry):
        parts = parts_of({k: v for k, v in family.items() if k != kind})
        layouts.append({**parts, kind: me} if kind != "loss" else parts)

    if kind == "loss":
        losses = with_default_losses([LossSpec(name, weight, dict(options or {}))], registry)
    else:
        losses = [LossSpec(DEFAULT_LOSSES["reconstruction"]), LossSpec(DEFAULT_LOSSES["divergence"])]

    candidates: list[ModelSpec] = []
    for parts in layouts:
        spec = ModelSpec(
            encoder=parts["encoder"],
            transform=parts["transform"],
            decoder=parts["decoder"],
            prior=parts.get("prior", default_prior),
            losses=tuple(losses),
            image_size=image_size,
            channels=channels,
            train=_TINY_TRAIN,
            description=f"conformance spec for {_label(kind, name)}",
        )
        if overrides:
            spec = attrs.evolve(spec, **overrides)
        spec = _provide_capabilities(spec, registry)
        if spec not in candidates:
            candidates.append(spec)

    from genvae.core.model import build_model

    label = _label(kind, name)
    if not candidates:
        raise _fail(f"{label}: no partners to test it among: the registry has no encoder with counterpart transform "
                    "and decoder (give a spec=, or a registry with built-in plugins)")
    refused_by_itself = None
    for spec in candidates:
        try:
            with _rng(0):
                build_model(spec, registry)
        except GenvaeError as exc:
            if refused_by_itself is None and str(exc).startswith(label):
                refused_by_itself = spec
            continue
        return spec
    return refused_by_itself or candidates[0]


# -- the checks -----------------------------------------------------------------------------------------


@_one_thread
def check_registered(kind: str, name: str, registry: Registry | None = None) -> type:
    """The name resolves (no conflict) to a loaded plugin's class of the right kind; returns the class."""
    registry = registry or get_registry()
    label = _label(kind, name)
    entry = _lookup(kind, name, registry)
    cls = entry.obj
    if not (isinstance(cls, type) and issubclass(cls, BASES[kind])):
        raise _fail(f"{label} is registered as {cls!r}, not a subclass of {BASES[kind].__name__}")
    cls = typing.cast(Any, cls)  # a component class of its kind, with that kind's class attributes
    if cls.kind != kind:
        raise _fail(f"{label}: class {cls.__name__} declares kind '{cls.kind}'")
    if not entry.help:
        raise _fail(f"{label}: class {cls.__name__} has no docstring; its first line is the summary list-plugins shows")
    record = registry.plugins.get(entry.plugin)
    if record is not None and record.status != "loaded":
        raise _fail(f"{label}: its plugin '{entry.plugin}' is {record.status}: {record.error}")
    if not attrs.has(cls.Options):
        raise _fail(f"{label}: Options ({cls.Options!r}) must be an attrs class (genvae.core.options.option fields)")
    for attr in ("provides", "requires"):
        value = getattr(cls, attr)
        if not isinstance(value, frozenset) or not all(isinstance(x, str) for x in value):
            raise _fail(f"{label}: {attr} must be a frozenset of capability names, got {value!r}")
    if kind == "encoder":
        counterparts = dict(getattr(cls, "counterparts", {}) or {})
        for key, other in counterparts.items():
            if key not in ("transform", "decoder", "preset"):
                raise _fail(f"{label}: counterparts key '{key}' is not one of transform, decoder, preset")
            try:
                registry.get(key, other)
            except GenvaeError as exc:
                raise _fail(f"{label}: its counterpart {key} '{other}' is not available: {exc}") from exc
    if kind == "loss":
        if cls.role not in LOSS_ROLES:
            raise _fail(f"{label}: role '{cls.role}' is not one of {', '.join(LOSS_ROLES)}")
        if not cls.phases or not all(isinstance(p, str) and p for p in cls.phases):
            raise _fail(f"{label}: phases must be a non-empty tuple of phase names, got {cls.phases!r}")
    return cls


@_one_thread
def check_options_roundtrip(
    kind: str, name: str, options: Mapping[str, Any] | None = None, registry: Registry | None = None
) -> Any:
    """Options -> ``options_to_dict`` -> JSON -> ``options_from_dict`` is the same instance.

    Also: every field has a help text, the class is frozen, unknown options are refused with a
    one-line :class:`OptionsError`. Returns the options instance.
    """
    registry = registry or get_registry()
    label = _label(kind, name)
    cls = _lookup(kind, name, registry).obj
    opt_cls = cls.Options
    if not attrs.has(opt_cls):
        raise _fail(f"{label}: Options must be an attrs class")
    fields = attrs.fields(opt_cls)
    no_help = [a.name for a in fields if not str(a.metadata.get("help", "")).strip()]
    if no_help:
        raise _fail(f"{label}: options without a help text: {', '.join(no_help)} (use genvae.core.options.option)")
    try:
        instance = options_from_dict(opt_cls, options, label)
    except OptionsError as exc:
        raise _fail(f"{label}: the options under test are refused: {exc}") from exc
    data = options_to_dict(instance)
    try:
        text = json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise _fail(f"{label}: options_to_dict gives a dict that is not JSON-ready ({exc}): {data!r}") from exc
    again = options_from_dict(opt_cls, json.loads(text), label)
    if again != instance:
        raise _fail(f"{label}: options do not survive a JSON round trip: {instance!r} became {again!r}")
    if options_to_dict(again) != data:
        raise _fail(f"{label}: options_to_dict is not stable: {data!r} vs {options_to_dict(again)!r}")
    if fields:
        try:
            setattr(instance, fields[0].name, getattr(instance, fields[0].name))
        except attrs.exceptions.FrozenInstanceError:
            pass
        else:
            raise _fail(f"{label}: Options must be frozen (@attrs.frozen); components share them")
    bogus = "no_such_option_xyz"
    try:
        options_from_dict(opt_cls, {**data, bogus: 1}, label)
    except OptionsError as exc:
        if "\n" in str(exc) or bogus not in str(exc):
            raise _fail(f"{label}: the error for an unknown option is not one line naming it: {exc!r}") from exc
    else:
        raise _fail(f"{label}: an unknown option was accepted")
    return instance


@_one_thread
def check_shapes(
    kind: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    spec: ModelSpec | None = None,
    registry: Registry | None = None,
    seed: int = 0,
) -> None:
    """The model builds and every tensor of a pass has its declared shape; x_hat lies in [-1, 1]."""
    registry = registry or get_registry()
    spec, _ = _resolve(kind, name, options, spec, registry)
    label = _label(kind, name)
    try:
        model = build_tiny(spec, registry, seed)
    except GenvaeError as exc:
        raise _fail(f"{label}: the conformance model does not build: {exc}") from exc
    _component_of(model, kind, name)
    x = random_images(spec, seed=seed)
    b = x.shape[0]
    layout = model.transform.layout
    enc, tr, dec = model.encoder, model.transform, model.decoder
    if model.layout is not layout:
        raise _fail(f"{label}: the model's layout is not the latent transform's")
    for attr, owner in (("output_shape", enc), ("output_shape", tr)):
        shape = getattr(owner, attr, None)
        if not isinstance(shape, tuple) or not all(isinstance(s, int) and s > 0 for s in shape):
            raise _fail(f"{_label(owner.kind, owner.name)}: {attr} must be a tuple of positive ints, got {shape!r}")

    def expect(what: str, tensor: Any, shape: tuple[int, ...]) -> None:
        if not torch.is_tensor(tensor):
            raise _fail(f"{label}: {what} is {type(tensor).__name__}, expected a tensor of shape {list(shape)}")
        if tuple(tensor.shape) != shape:
            raise _fail(f"{label}: {what} has shape {list(tensor.shape)}, expected {list(shape)}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise _fail(f"{label}: {what} has non-finite values")

    latent = (b, *layout.shape)
    with _rng(seed), torch.no_grad():
        for mode, sample in (("train", True), ("eval", False)):
            model.train(mode == "train")
            fwd = model(x, sample=sample)
            where = f"{mode} mode"
            if torch.is_tensor(fwd.features):
                expect(f"encoder '{enc.name}' features ({where})", fwd.features, (b, *enc.output_shape))
            if not isinstance(fwd.posterior, Gaussian):
                raise _fail(f"{label}: the posterior is {type(fwd.posterior).__name__}, not a Gaussian")
            expect(f"posterior mean ({where})", fwd.posterior.mean, latent)
            expect(f"posterior logvar ({where})", fwd.posterior.logvar, latent)
            expect(f"z ({where})", fwd.z, latent)
            expect(f"u ({where})", fwd.u, (b, *tr.output_shape))
            expect(f"decoder '{dec.name}' logits ({where})", fwd.decoder_output, (b, *spec.image_shape))
            expect(f"x_hat ({where})", fwd.x_hat, (b, *spec.image_shape))
            if fwd.x_hat.min() < -1 or fwd.x_hat.max() > 1:
                raise _fail(f"{label}: x_hat leaves [-1, 1] ({where})")
            prior = fwd.prior
            if not model.prior.gaussian:
                log_prob = getattr(prior, "log_prob", None)
                if log_prob is None:
                    raise _fail(f"{label}: prior '{model.prior.name}' (gaussian = False) returned "
                                f"{type(prior).__name__}, which has no log_prob(z)")
                expect(f"prior '{model.prior.name}' log_prob(z) ({where})", log_prob(fwd.z), (b,))
                parts: tuple[str, ...] = ()
            elif not isinstance(prior, Gaussian):
                raise _fail(f"{label}: prior '{model.prior.name}' returned {type(prior).__name__}, not a Gaussian "
                            "(set gaussian = False on a prior that returns another distribution)")
            else:
                parts = ("mean", "logvar")
            for part in parts:
                value = getattr(prior, part)
                try:
                    ok = torch.broadcast_shapes(value.shape, latent) == latent
                except RuntimeError:
                    ok = False
                if not ok:
                    raise _fail(
                        f"{label}: prior '{model.prior.name}' {part} has shape {list(value.shape)}, which does "
                        f"not broadcast to the posterior's {list(latent)} ({where})"
                    )
            for phase in model.phases:
                terms, flags = model.update_terms(fwd, phase)
                for value in flags:
                    if not torch.is_tensor(value) or value.numel() != 1 or value.dtype != torch.bool:
                        raise _fail(f"{label}: a skip flag ({phase} phase) must be a one-element bool tensor, "
                                    f"got {value!r}")
                for key, value in terms.items():
                    if not torch.is_tensor(value) or value.dim() != 0 or not value.is_floating_point():
                        raise _fail(f"{label}: loss term '{key}' ({phase} phase) must be a float scalar tensor, "
                                    f"got {value!r}")
                    if not torch.isfinite(value):
                        raise _fail(f"{label}: loss term '{key}' ({phase} phase) is {value.item()} ({where})")
            if kind == "loss":
                loss = model.losses[name]
                for phase in loss.phases:
                    if not loss(fwd, phase):
                        raise _fail(f"{label}: returns no terms in its '{phase}' phase")
        model.eval()
        z = model.prior.sample(3, model, "cpu")
        expect(f"prior '{model.prior.name}' sample", z, (3, *layout.shape))
        for groups in sorted({1, layout.num_groups}):
            kept = model.prior.sample(3, model, "cpu", fixed=z[:1], fixed_groups=groups)
            expect(f"prior '{model.prior.name}' sample with {groups} fixed group(s)", kept, (3, *layout.shape))
            mask = layout.group_mask(range(groups)).expand_as(kept)
            if not torch.equal(kept[mask], z[:1].expand_as(kept)[mask]):
                raise _fail(f"{label}: prior '{model.prior.name}' does not keep the first {groups} "
                            f"{layout.group_label}(s) of `fixed` when sampling")
        u, images = model.generate(z)
        expect("u from generate()", u, (3, *tr.output_shape))
        expect("x_hat from generate()", images, (3, *spec.image_shape))
        samples = model.sample(2)
        expect("model.sample()", samples, (2, *spec.image_shape))
        if samples.min() < -1 or samples.max() > 1:
            raise _fail(f"{label}: samples leave [-1, 1]")
        encoded = model.encode(x)
        expect("encode() mean", encoded.mean, latent)


@_one_thread
def check_serialisation(
    kind: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    spec: ModelSpec | None = None,
    registry: Registry | None = None,
    seed: int = 0,
    folder: str | Path | None = None,
) -> None:
    """``save_model`` then ``load_model``: same state_dict, resolved spec and eval outputs; no temp files.

    ``folder`` is a new or empty folder to save into (default: a temporary one, removed after).
    """
    from genvae.core.checkpoint import CONFIG, WEIGHTS, load_model, load_spec, save_model
    from genvae.core.folder import MANIFEST

    registry = registry or get_registry()
    spec, _ = _resolve(kind, name, options, spec, registry)
    label = _label(kind, name)
    model = build_tiny(spec, registry, seed)
    x = random_images(spec, seed=seed)
    with _rng(seed), torch.no_grad():
        model.train()
        model(x)  # moves batch-norm statistics away from their initial values
    model.eval()

    def run(folder: Path) -> None:
        save_model(model, folder)
        extra = sorted(p.name for p in folder.iterdir() if p.name not in (CONFIG, WEIGHTS, MANIFEST))
        if extra:
            raise _fail(f"{label}: save_model left extra files in the model folder: {extra}")
        try:
            # a different seed than the build's: state kept outside the state_dict cannot match by luck,
            # and the caller's RNG stream is left as it was
            with _rng(seed + 7919):
                loaded = load_model(folder, registry=registry)
        except GenvaeError as exc:
            raise _fail(f"{label}: load_model fails on a folder save_model wrote: {exc}") from exc
        if load_spec(folder) != model.resolved_spec():
            raise _fail(f"{label}: config.json does not hold the resolved spec")
        if loaded.resolved_spec() != model.resolved_spec():
            raise _fail(f"{label}: the loaded model resolves to a different spec: {loaded.resolved_spec()!r}")
        _state_dicts_equal(f"{label}: after save/load", model.state_dict(), loaded.state_dict())
        loaded.eval()
        with torch.no_grad():
            with _rng(seed):
                a = model(x, sample=False)
                terms_a = _all_terms(model, a)
            with _rng(seed):
                b = loaded(x, sample=False)
                terms_b = _all_terms(loaded, b)
        what = f"{label}: after save/load (eval mode, posterior mean)"
        _tensors_equal(f"{what}, posterior mean", a.posterior.mean, b.posterior.mean)
        _tensors_equal(f"{what}, posterior logvar", a.posterior.logvar, b.posterior.logvar)
        _tensors_equal(f"{what}, x_hat", a.x_hat, b.x_hat)
        _terms_equal(what, terms_a, terms_b)

    if folder is not None:
        run(Path(folder))
    else:
        with tempfile.TemporaryDirectory(prefix="genvae-check-") as tmp:
            run(Path(tmp) / "model")


@_one_thread
def check_gradients(
    kind: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    spec: ModelSpec | None = None,
    registry: Registry | None = None,
    seed: int = 0,
) -> None:
    """One forward, then a backward of every phase's summed terms (as the trainer does).

    Every trainable parameter of the component under test must get a finite gradient, at least
    one of them non-zero; no parameter of the model may get a non-finite gradient. A loss must
    also move some parameter through its own terms alone.
    """
    registry = registry or get_registry()
    spec, _ = _resolve(kind, name, options, spec, registry)
    label = _label(kind, name)
    model = build_tiny(spec, registry, seed)
    comp = _component_of(model, kind, name)
    x = random_images(spec, seed=seed)
    model.train()
    with _rng(seed):
        fwd = model(x)
        phases = model.phases
        for i, phase in enumerate(phases):
            terms = _summed(model.phase_terms(fwd, phase))
            total = sum(terms.values()) if terms else None
            if torch.is_tensor(total) and total.requires_grad:
                total.backward(retain_graph=i < len(phases) - 1)
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        raise _fail(f"{label}: non-finite gradients in {', '.join(bad)}")
    params = [(n, p) for n, p in comp.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    if missing:
        raise _fail(
            f"{label}: parameters without a gradient after every phase's backward: {', '.join(missing)}; "
            "each trainable parameter must take part in some loss (or set requires_grad=False)"
        )
    if params and all(not p.grad.any() for _, p in params):
        raise _fail(f"{label}: every parameter's gradient is zero: {', '.join(n for n, _ in params)}")

    if kind == "loss":
        model.zero_grad(set_to_none=True)
        loss = model.losses[name]
        with _rng(seed):
            fwd = model(x)
            totals = []
            for phase in loss.phases:
                values = list(_summed(loss(fwd, phase)).values())
                if values:
                    totals.append(sum(values))
        trainable = [t for t in totals if torch.is_tensor(t) and t.requires_grad]
        if not trainable:
            raise _fail(f"{label}: its terms carry no gradient (are they computed from detached tensors?)")
        torch.stack(trainable).sum().backward()
        moved = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()]
        if not moved:
            raise _fail(f"{label}: its terms give a zero gradient to every parameter of the model")


@_one_thread
def check_determinism(
    kind: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    spec: ModelSpec | None = None,
    registry: Registry | None = None,
    seed: int = 0,
) -> None:
    """Two builds under one seed: identical weights, and identical terms and gradients for one input."""
    registry = registry or get_registry()
    spec, _ = _resolve(kind, name, options, spec, registry)
    label = _label(kind, name)
    first, second = build_tiny(spec, registry, seed), build_tiny(spec, registry, seed)
    _state_dicts_equal(f"{label}: two builds under seed {seed}", first.state_dict(), second.state_dict())
    x = random_images(spec, seed=seed)
    results = []
    for model in (first, second):
        model.train()
        with _rng(seed + 1):
            fwd = model(x)
            terms = _all_terms(model, fwd)
        trainable = [t for t in terms.values() if t.requires_grad]
        if trainable:
            torch.stack(trainable).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((fwd.x_hat.detach(), terms, grads))
    (xa, ta, ga), (xb, tb, gb) = results
    what = f"{label}: two builds, same input and torch seed"
    _tensors_equal(f"{what}, x_hat", xa, xb)
    _terms_equal(what, ta, tb)
    _state_dicts_equal(f"{what}, gradients", ga, gb)


@_one_thread
def check_spec_roundtrip(
    kind: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    spec: ModelSpec | None = None,
    registry: Registry | None = None,
    seed: int = 0,
) -> None:
    """The spec and the resolved spec survive ``to_dict`` -> JSON -> ``from_dict``; resolving is idempotent."""
    registry = registry or get_registry()
    spec, _ = _resolve(kind, name, options, spec, registry)
    label = _label(kind, name)
    data = spec.to_dict()
    if ModelSpec.from_dict(data) != spec:
        raise _fail(f"{label}: ModelSpec.from_dict(spec.to_dict()) differs from the spec")
    try:
        text = json.dumps(data, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise _fail(f"{label}: spec.to_dict() is not JSON-ready ({exc})") from exc
    if json.dumps(ModelSpec.from_dict(json.loads(text)).to_dict(), sort_keys=True) != text:
        raise _fail(f"{label}: the spec changes through a JSON round trip")
    model = build_tiny(spec, registry, seed)
    resolved = model.resolved_spec()
    try:
        text = json.dumps(resolved.to_dict(), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise _fail(f"{label}: the resolved spec is not JSON-ready ({exc}); options must be plain data") from exc
    back = ModelSpec.from_dict(json.loads(text))
    if back != resolved:
        raise _fail(f"{label}: the resolved spec changes through JSON: {resolved!r} became {back!r}")
    again = build_tiny(back, registry, seed).resolved_spec()
    if again != resolved:
        raise _fail(f"{label}: rebuilding from the resolved spec resolves differently: {again!r}")


@_one_thread
def check_sensitivity(
    kind: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    spec: ModelSpec | None = None,
    registry: Registry | None = None,
    seed: int = 0,
) -> None:
    """A loss's terms read their inputs: every term of every phase changes when the images and the random
    draws (z, prior samples, dropout) change. A term computed from constants, or from one tensor compared
    with itself, fails. Other kinds: x_hat changes with the images."""
    registry = registry or get_registry()
    spec, _ = _resolve(kind, name, options, spec, registry)
    label = _label(kind, name)
    model = build_tiny(spec, registry, seed)
    model.train()
    runs = []
    for offset in (0, 1):
        x = random_images(spec, seed=seed + offset)
        with _rng(seed + offset), torch.no_grad():
            fwd = model(x)
            if kind != "loss":
                runs.append({"x_hat": fwd.x_hat})
                continue
            loss = model.losses[name]
            runs.append({f"{phase}: {k}": v for phase in loss.phases for k, v in _summed(loss(fwd, phase)).items()})
    first, second = runs
    same = [k for k in first if k in second and torch.equal(first[k], second[k])]
    if same:
        raise _fail(f"{label}: {same[0]} is the same for two different batches (other images, other random draws); "
                    "a term must depend on what it measures")


@_one_thread
def check_branches(
    kind: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    spec: ModelSpec | None = None,
    registry: Registry | None = None,
    seed: int = 0,
) -> None:
    """A loss keeps to the branches of ``train.schedule``: on an update of the posterior branch its terms take
    no gradient from the prior samples, on a prior update none from the posterior pass (z, x_hat), and its
    terms on the ``all`` branch are those of its declared branches together (``Loss.branches``)."""
    if kind != "loss":
        return
    registry = registry or get_registry()
    spec, _ = _resolve(kind, name, options, spec, registry)
    label = _label(kind, name)
    model = build_tiny(spec, registry, seed)
    model.train()
    loss = model.losses[name]
    for phase in loss.phases:
        with _rng(seed):
            fwd = model(random_images(spec, seed=seed))
            terms: dict[str, dict[str, torch.Tensor]] = {}
            for i, branch in enumerate(("all", "posterior", "prior")):
                if branch == "all" or branch in loss.branches:
                    fwd.branch, fwd.update = branch, i
                    terms[branch] = _summed(loss(fwd, phase))
        union = {k for b, t in terms.items() if b != "all" for k in t}
        if set(terms["all"]) != union:
            raise _fail(f"{label}, phase '{phase}': terms on the all branch {sorted(terms['all'])} differ from those "
                        f"of its branches {', '.join(loss.branches)} together {sorted(union)}")
        drawn = fwd._prior_sample
        sources = {"posterior": [t for t in (drawn.u, drawn.x) if t.requires_grad] if drawn is not None else [],
                   "prior": [t for t in (fwd.z, fwd.u, fwd.x_hat) if torch.is_tensor(t) and t.requires_grad]}
        for branch, other in (("posterior", "prior samples"), ("prior", "posterior pass")):
            values = [v for v in terms.get(branch, {}).values() if v.requires_grad]
            if not values or not sources[branch]:
                continue
            grads = torch.autograd.grad(torch.stack(values).sum(), sources[branch], retain_graph=True,
                                        allow_unused=True)
            if any(g is not None and g.abs().sum() > 0 for g in grads):
                hint = "compute them only when fwd.wants(...) says" if branch in loss.branches and \
                    "prior" in loss.branches else "declare branches = (\"posterior\", \"prior\")"
                raise _fail(f"{label}, phase '{phase}': its terms on a {branch} update take gradient from the "
                            f"{other}; {hint}")


#: The checks check_component runs, by name (pass names in ``skip`` to leave some out).
CHECKS = ("registered", "options", "shapes", "serialisation", "gradients", "determinism", "spec", "sensitivity",
          "branches")


@_one_thread
def check_component(
    kind: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    spec: ModelSpec | None = None,
    registry: Registry | None = None,
    seed: int = 0,
    skip: Iterable[str] = (),
) -> ModelSpec:
    """Run every conformance check on component ``kind``/``name``; returns the spec checked.

    ``spec`` (which must contain the component) replaces :func:`tiny_spec`'s; ``options`` are
    then read from it. ``skip`` names checks from ``CHECKS`` to leave out.
    """
    _check_kind(kind)
    skip = set(skip)
    unknown = skip - set(CHECKS)
    if unknown:
        raise _fail(f"unknown checks to skip: {sorted(unknown)}; checks: {', '.join(CHECKS)}")
    registry = registry or get_registry()
    if "registered" not in skip:
        check_registered(kind, name, registry)
    spec, opts = _resolve(kind, name, options, spec, registry)
    if "options" not in skip:
        check_options_roundtrip(kind, name, opts, registry)
    common = {"spec": spec, "registry": registry, "seed": seed}
    if "shapes" not in skip:
        check_shapes(kind, name, **common)
    if "serialisation" not in skip:
        check_serialisation(kind, name, **common)
    if "gradients" not in skip:
        check_gradients(kind, name, **common)
    if "determinism" not in skip:
        check_determinism(kind, name, **common)
    if "spec" not in skip:
        check_spec_roundtrip(kind, name, **common)
    if "sensitivity" not in skip:
        check_sensitivity(kind, name, **common)
    if "branches" not in skip:
        check_branches(kind, name, **common)
    return spec

