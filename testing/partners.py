"""Partners for a component under test: the small specs the checks run on (:func:`tiny_spec`).

The kit names no plugin. The partners are found in the registry: the smallest plain encoder families (an
encoder with its counterpart transform and decoder, none providing or requiring a capability), each member
with its own ``test_options``, then the families that provide what the component requires.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from genvae.core.components import MODEL_PART_KINDS
from genvae.core.compose import DEFAULT_LOSSES, with_default_losses
from genvae.core.errors import GenvaeError
from genvae.core.options import options_from_dict
from genvae.core.registry import Registry, get_registry
from genvae.core.spec import ComponentSpec, LossSpec, ModelSpec, TrainConfig
from genvae.testing._util import BATCH, fail, guarded, label_of, lookup, rng

_TINY_TRAIN = TrainConfig(batch_size=BATCH, epochs=1, checkpoint_every=10, log_every=1)


def _partner(kind: str, name: str, registry: Registry) -> ComponentSpec:
    """A partner component with the small options it declares (``Component.test_options``)."""
    try:
        cls: Any = registry.component(kind, name)  # a component class, with Options and test_options
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
            with rng(0):
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
        with rng(0):
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
            family = {
                "encoder": enc_name,
                "transform": counterparts.get("transform", ""),
                "decoder": counterparts.get("decoder", ""),
            }
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
    with guarded(kind, name, "tiny_spec"):
        return _tiny_spec(kind, name, options, image_size, channels, registry or get_registry(), weight, overrides)


def _tiny_spec(
    kind: str,
    name: str,
    options: Mapping[str, Any] | None,
    image_size: int,
    channels: int,
    registry: Registry,
    weight: float,
    overrides: dict[str, Any],
) -> ModelSpec:
    """tiny_spec's work, inside its guard (one thread; a crash in a candidate build names the component)."""
    entry = lookup(kind, name, registry)
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
            description=f"conformance spec for {label_of(kind, name)}",
        )
        if overrides:
            spec = attrs.evolve(spec, **overrides)
        spec = _provide_capabilities(spec, registry)
        if spec not in candidates:
            candidates.append(spec)

    from genvae.core.model import build_model

    label = label_of(kind, name)
    if not candidates:
        raise fail(
            f"{label}: no partners to test it among: the registry has no encoder with counterpart transform "
            "and decoder (give a spec=, or a registry with built-in plugins)"
        )
    refused_by_itself = None
    for spec in candidates:
        try:
            with rng(0):
                build_model(spec, registry)
        except GenvaeError as exc:
            if refused_by_itself is None and str(exc).startswith(label):
                refused_by_itself = spec
            continue
        return spec
    return refused_by_itself or candidates[0]
