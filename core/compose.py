"""From command-line choices (preset, component names, ``--set`` overrides) to a :class:`ModelSpec`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from genvae.core.errors import GenvaeError, OptionsError
from genvae.core.options import parse_value
from genvae.core.registry import Registry, get_registry
from genvae.core.spec import COMPONENT_KINDS, ComponentSpec, LossSpec, ModelSpec

DEFAULT_LOSSES = {"reconstruction": "mse", "divergence": "kl"}


def parse_losses(text: str | Sequence[str] | None) -> list[LossSpec]:
    """``"mse,kl:0.5,adv"`` -> LossSpecs; ``name:weight`` sets a weight."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else [p for t in text for p in t.split(",")]
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, _, weight = item.partition(":")
        try:
            out.append(LossSpec(name.strip(), float(weight) if weight else 1.0))
        except ValueError:
            raise OptionsError(f"loss '{item}': the weight after ':' must be a number, e.g. kl:0.5") from None
    return out


def preset_spec(name: str, registry: Registry | None = None) -> ModelSpec:
    registry = registry or get_registry()
    entry = registry.get("preset", name)
    data = dict(entry.obj() if callable(entry.obj) else entry.obj)
    data.setdefault("preset", name)
    data.setdefault("description", entry.help)
    return ModelSpec.from_dict(data, where=f"preset '{name}'")


def with_default_losses(losses: list[LossSpec], registry: Registry, added: list[str] | None = None) -> list[LossSpec]:
    """``losses`` with ``mse`` first when none has the reconstruction role and ``kl`` last when none is a
    divergence (what ``genvae build --loss`` does, and what the conformance kit's tiny models get); nothing is
    added when a loss is the whole objective (role ``objective``: an IWAE bound, a WAE). The names added are
    appended to ``added``."""
    roles = {registry.component("loss", s.name).role for s in losses}
    if "objective" in roles:
        return list(losses)
    extra = [LossSpec(name) for role, name in DEFAULT_LOSSES.items() if role not in roles]
    if added is not None:
        added.extend(s.name for s in extra)
    recon = [s for s in extra if registry.component("loss", s.name).role == "reconstruction"]
    return [*recon, *losses, *[s for s in extra if s not in recon]]


def _amended_description(preset: ModelSpec, parts: dict[str, ComponentSpec], losses: list[LossSpec]) -> str:
    """The preset's description, plus the components chosen in its place (so it never describes a model
    the folder does not hold)."""
    changed = [
        f"{kind} {part.name}"
        for kind, part in parts.items()
        if (base := preset.component(kind)) is None or base.name != part.name
    ]
    if [s.name for s in losses] != [s.name for s in preset.losses]:
        changed.append("losses " + ",".join(s.name for s in losses))
    if not changed or not preset.description:
        return preset.description
    return f"{preset.description} (changed from preset '{preset.preset}': {'; '.join(changed)})"


def compose_spec(
    preset: str | None = None,
    encoder: str | None = None,
    transform: str | None = None,
    decoder: str | None = None,
    prior: str | None = None,
    losses: str | Sequence[str] | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    sets: Sequence[str] = (),
    registry: Registry | None = None,
    added_losses: list[str] | None = None,
) -> ModelSpec:
    """Resolve choices the way ``genvae build`` does (``added_losses`` receives the default losses it added).

    Start from the preset (or, with only ``--encoder X``, from X's own preset if it names one);
    a named encoder brings its counterpart decoder and transform unless those are named too;
    ``--loss`` adds losses to the preset's, and a reconstruction loss (mse) and a divergence
    (kl) are added when none is listed, unless a loss is the whole objective (which also takes the place of
    the preset's reconstruction and divergence losses); ``--set kind.option=value`` edits the result.
    """
    registry = registry or get_registry()
    if preset is None and encoder is None:
        raise GenvaeError("choose a model: --preset NAME or --encoder NAME (see genvae list-plugins)")
    enc_cls = registry.component("encoder", encoder) if encoder else None
    counterparts = dict(getattr(enc_cls, "counterparts", {}) or {})
    if preset is None and counterparts.get("preset"):
        preset = counterparts["preset"]
    if preset is not None:
        spec = preset_spec(preset, registry)
    else:
        spec = None
    chosen = {"encoder": encoder, "transform": transform, "decoder": decoder, "prior": prior}
    parts: dict[str, Any] = {}  # ComponentSpec by kind: ModelSpec's keyword arguments
    for kind in COMPONENT_KINDS:
        base = spec.component(kind) if spec is not None else None
        name = chosen[kind]
        if name is None and encoder is not None and kind in ("transform", "decoder"):
            if base is None or base.name != counterparts.get(kind, base.name):
                name = counterparts.get(kind)
        if name is None and base is not None:
            parts[kind] = base
            continue
        if name is None:
            name = "normal" if kind == "prior" else counterparts.get(kind)
        if name is None:
            raise GenvaeError(f"encoder '{encoder}' names no default {kind}; choose one with --{kind}")
        registry.component(kind, name)  # unknown names fail here, with the known ones listed
        parts[kind] = base if base is not None and base.name == name else ComponentSpec(name)
    loss_list = list(spec.losses) if spec is not None else []
    for extra in parse_losses(losses):
        role = registry.component("loss", extra.name).role
        # the same loss, or a named reconstruction / divergence, takes the preset's one's place
        replaced: set[str] = set()  # the roles of the preset's losses this one takes the place of
        if role in DEFAULT_LOSSES:
            replaced = {role}
        elif role == "objective":  # the whole objective: the preset's reconstruction and divergence go
            replaced = {*DEFAULT_LOSSES, "objective"}
        same = [s.name == extra.name or registry.component("loss", s.name).role in replaced for s in loss_list]
        slot = same.index(True) if any(same) else len(loss_list)
        loss_list = [s for s, hit in zip(loss_list, same, strict=True) if not hit]
        loss_list.insert(min(slot, len(loss_list)), extra)
    loss_list = with_default_losses(loss_list, registry, added_losses)
    if spec is None:
        spec = ModelSpec(**parts, losses=tuple(loss_list))
    else:
        spec = attrs.evolve(
            spec, **parts, losses=tuple(loss_list), description=_amended_description(spec, parts, loss_list)
        )
    spec = _schedule_added_phases(spec, [extra.name for extra in parse_losses(losses)], registry)
    if image_size is not None:
        spec = attrs.evolve(spec, image_size=image_size)
    if channels is not None:
        if channels not in (1, 3):
            raise OptionsError(f"--channels must be 1 or 3, got {channels}")
        spec = attrs.evolve(spec, channels=channels)
    return apply_sets(spec, sets)


def _schedule_added_phases(spec: ModelSpec, names: Sequence[str], registry: Registry) -> ModelSpec:
    """A preset with its own update schedule (crvae-gan's) and a loss added with ``--loss`` that trains a phase of
    its own (factor's latent discriminator): the schedule would never update it, so that phase's update is
    appended after the preset's, on the step's pass. The one-pass schedule (empty) runs every phase already."""
    schedule = spec.train.schedule
    if not schedule:
        return spec
    scheduled = {update["phase"] for update in schedule}
    extra = [
        {"phase": phase, "branch": "all", "fresh": False}
        for name in names
        for phase in registry.component("loss", name).phases
        if phase != "model" and phase not in scheduled
    ]
    return spec.with_train(schedule=(*schedule, *extra)) if extra else spec


def apply_sets(spec: ModelSpec, sets: Sequence[str]) -> ModelSpec:
    """Apply ``kind.option=value`` edits: encoder/transform/decoder/prior, ``loss.NAME.option``
    (``loss.NAME.weight`` sets the weight), ``train.option``, or ``image_size``/``channels``."""
    data: dict[str, Any] = spec.to_dict()
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise OptionsError(f"--set '{item}': expected kind.option=value, e.g. encoder.width=32")
        value = parse_value(raw)
        path = key.strip().split(".")
        if path[0] in COMPONENT_KINDS and len(path) == 2:
            data[path[0]]["options"][path[1]] = value
        elif path[0] == "train" and len(path) == 2:
            data["train"][path[1]] = value
        elif path[0] == "loss" and len(path) == 3:
            match = [s for s in data["losses"] if s["name"] == path[1]]
            if not match:
                names = ", ".join(s["name"] for s in data["losses"])
                raise OptionsError(f"--set '{item}': the model has no loss '{path[1]}'; its losses: {names}")
            if path[2] == "weight":
                try:
                    match[0]["weight"] = float(value)
                except (TypeError, ValueError):
                    raise OptionsError(
                        f"--set '{item}': a loss weight must be a number, e.g. loss.kl.weight=0.5"
                    ) from None
            else:
                match[0]["options"][path[2]] = value
        elif path[0] in ("image_size", "channels") and len(path) == 1:
            data[path[0]] = value
        else:
            raise OptionsError(
                f"--set '{item}': unknown target '{key}'; use encoder.X, transform.X, decoder.X, prior.X, "
                "loss.NAME.X, train.X, image_size or channels"
            )
    return ModelSpec.from_dict(data, where="--set")
