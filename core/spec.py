"""Model specs: the data a model is built from, stored as the model folder's config.json.

A spec names the component of each kind with its options, the losses with their weights, the
image shape and the training settings. Presets are specs; ``ModelSpec.from_dict(spec.to_dict())``
gives back an equal spec.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from genvae.core.components import MODEL_PART_KINDS
from genvae.core.errors import GenvaeError, OptionsError, did_you_mean, error_text, name_list, shorten
from genvae.core.options import (
    expects,
    find_invalid,
    finite,
    non_negative,
    one_of,
    option,
    optional_float,
    optional_int,
    optional_str,
    positive,
    positive_int,
    seed_int,
    split_list,
    to_bool,
    to_float,
    to_int,
)
from genvae.core.precision import AMP_MODES

SPEC_FORMAT = 1
COMPONENT_KINDS = MODEL_PART_KINDS  # the kinds a spec names one component of (losses are a list)


@expects("a mapping of module name to finite number")
def _float_map(value) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping of module name to number, got {shorten(value)}")
    numbers = {str(k): float(x) for k, x in value.items()}
    if not all(math.isfinite(x) for x in numbers.values()):
        raise ValueError(f"expected finite numbers, got {shorten(value)}")
    return numbers


def _switch(value):
    """A mode such as ``auto``/``on``/``off`` from text or from a bool (``true`` is ``on``, ``false`` ``off``:
    config.json files from before the modes hold booleans)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        text = value.strip().lower()
        return {"true": "on", "yes": "on", "1": "on", "false": "off", "no": "off", "0": "off"}.get(text, text)
    return value


@expects("a mapping of module path to [until_step, factor] pairs, e.g. {'losses.adv.head': [[10, 0.02], [30, 0.2]]}")
def _warmup_map(value) -> dict[str, tuple[tuple[int, float], ...]]:
    """Learning-rate warm-ups per module path: the rate is ``factor`` x the base rate before step ``until_step``."""
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping of module path to [until_step, factor] pairs, got {shorten(value)}")
    out: dict[str, tuple[tuple[int, float], ...]] = {}
    for key, pairs in value.items():
        try:
            stages = tuple((int(until), float(factor)) for until, factor in pairs)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected [until_step, factor] pairs, got {shorten(pairs)}") from None
        steps = [until for until, _ in stages]
        if not stages or steps != sorted(set(steps)) or steps[0] < 1:
            raise ValueError(f"{key}: the until_steps must be positive and increasing, got {shorten(steps)}")
        if not all(0 < factor and math.isfinite(factor) for _, factor in stages):
            raise ValueError(f"{key}: the factors must be positive, got {shorten([f for _, f in stages])}")
        out[str(key)] = stages
    return out


@expects("a list of names or one comma-separated string")
def _str_tuple(value) -> tuple[str, ...]:
    """A list of names, or one comma-separated string (``--set train.freeze=encoder``)."""
    if isinstance(value, str):
        value = value.split(",")
    return tuple(str(x).strip() for x in value if str(x).strip())


@expects("two numbers")
def _float_pair(value) -> tuple[float, float]:
    pair = tuple(float(x) for x in split_list(value))
    if len(pair) != 2:
        raise ValueError(f"expected two numbers, got {shorten(value)}")
    return pair


@expects("two finite numbers in [0, 1)")
def _betas(instance, attribute, value) -> None:
    if len(value) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in value):
        raise ValueError(f"{attribute.name} must be two finite numbers in [0, 1), got {shorten(value)}")


BRANCHES = ("all", "posterior", "prior")
ONE_PASS = "one-pass"


@expects(
    "'one-pass' or a list of updates, each 'PHASE[@BRANCH][:fresh]' or {'phase': ..., 'branch': "
    "all|posterior|prior, 'fresh': true|false}"
)
def _schedule(value) -> tuple[dict[str, Any], ...]:
    """The updates of one training step, in order (empty: one update per phase, ``one-pass``).

    An update steps one phase's optimiser on the terms of one branch: ``posterior`` (x -> z ~ q(z|x)
    -> x_hat), ``prior`` (z ~ p(z) -> x) or ``all``; ``fresh`` recomputes that branch first with the
    weights as they are now (a new forward pass, or new prior samples)."""
    if value is None or value == ONE_PASS or value == "":
        return ()
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, Mapping) or not isinstance(value, tuple | list):
        raise ValueError(f"expected 'one-pass' or a list of updates, got {shorten(value)}")
    updates = []
    for item in value:
        if isinstance(item, str):
            text, _, flag = item.strip().partition(":")
            phase, _, branch = text.partition("@")
            if flag not in ("", "fresh"):
                raise ValueError(f"update {shorten(item)}: the only flag is ':fresh'")
            item = {"phase": phase, "branch": branch or "all", "fresh": flag == "fresh"}
        if not isinstance(item, Mapping):
            raise ValueError(
                f"expected an update 'PHASE@BRANCH' or {{'phase': ..., 'branch': ...}}, got {shorten(item)}"
            )
        extra = sorted(str(k) for k in item if k not in ("phase", "branch", "fresh"))
        if extra:
            raise ValueError(
                f"update {shorten(dict(item))}: unknown key {shorten(extra[0])}; allowed: phase, branch, fresh"
            )
        phase_name, branch = item.get("phase"), str(item.get("branch", "all"))
        if not isinstance(phase_name, str) or not phase_name.strip():
            raise ValueError(f"update {shorten(dict(item))}: 'phase' must be a phase name")
        if branch not in BRANCHES:
            raise ValueError(
                f"update {shorten(dict(item))}: branch must be one of {', '.join(BRANCHES)}, got {shorten(branch)}"
            )
        updates.append({"phase": phase_name.strip(), "branch": branch, "fresh": to_bool(item.get("fresh", False))})
    return tuple(updates)


@attrs.frozen
class TrainConfig:
    """Training settings; presets carry a paper's values, the CLI overrides them per run."""

    lr: float = option(1e-3, "learning rate of the model phase (Adam)", positive, to_float)
    betas: tuple[float, float] = option((0.9, 0.999), "Adam betas", _betas, _float_pair)
    weight_decay: float = option(0.0, "weight decay (AdamW style)", non_negative, to_float)
    batch_size: int = option(64, "images per step", positive_int, to_int)
    epochs: int = option(10, "passes over the data (max_steps stops earlier)", positive_int, to_int)
    max_steps: int | None = option(
        None, "stop after this many optimisation steps in total", attrs.validators.optional(positive_int), optional_int
    )
    max_time: float | None = option(
        None,
        "stop after this many seconds of this run (checked between steps; a checkpoint as at any end): a budget",
        attrs.validators.optional(positive),
        optional_float,
    )
    time_clock: str = option(
        "wall",
        "what max_time counts: 'wall' (wall-clock seconds) or 'process' (this process's CPU seconds, all threads: "
        "a budget that other jobs on the machine do not eat into)",
        one_of("wall", "process"),
    )
    phase_lr: dict[str, float] = option(
        factory=dict, help="learning rate per extra phase, e.g. {'discriminator': 3e-4}", converter=_float_map
    )
    lr_multipliers: dict[str, float] = option(
        factory=dict,
        help="lr multiplier per module path prefix, e.g. {'transform.lstm': 0.125}",
        converter=_float_map,
    )
    grad_clamp: dict[str, float] = option(
        factory=dict,
        help="clamp gradients of a module path prefix to +-value, e.g. {'transform.lstm': 5}",
        converter=_float_map,
    )
    freeze: tuple[str, ...] = option(
        (), "module path prefixes to keep fixed (no updates, eval mode), e.g. ['encoder']", converter=_str_tuple
    )
    train_only: tuple[str, ...] = option(
        (),
        "if set, only these module path prefixes are trained (e.g. ['prior'] to retrain an M-network)",
        converter=_str_tuple,
    )
    grad_clip_norm: float | None = option(
        None, "clip the global gradient norm per phase", attrs.validators.optional(positive), optional_float
    )
    lr_warmup: dict[str, tuple[tuple[int, float], ...]] = option(
        factory=dict,
        help="learning-rate warm-up per module path: {path: [[until_step, factor], ...]}, the rate x factor before "
        "each until_step (the crVAE authors' adam_gan.lua: [[10, 0.02], [30, 0.2]] on the discriminator)",
        converter=_warmup_map,
    )
    lr_schedule: str = option("constant", "constant, step or cosine", one_of("constant", "step", "cosine"))
    lr_step_epochs: int = option(60, "step schedule: decay every this many epochs", positive_int, to_int)
    lr_gamma: float = option(0.5, "step schedule: decay factor", positive, to_float)
    flip: bool = option(False, "random horizontal flips", converter=to_bool)
    amp: str = option(
        "auto",
        "mixed precision: auto (bf16 where measured faster and safe: a CPU with AVX512-BF16 or AMX, a GPU with "
        "bf16; else float32), on (bf16, or fp16 with loss scaling on a GPU without bf16), bf16, fp16 (CUDA), off",
        one_of(*AMP_MODES),
        _switch,
    )
    channels_last: str = option(
        "auto",
        "channels-last memory layout of the conv stacks (the same results): auto (on for a model with 2-D "
        "convolutions, where it was measured faster on CPU and GPU alike), on, off",
        one_of("auto", "on", "off"),
        _switch,
    )
    compile: bool = option(
        False,
        "torch.compile the encoder, latent transform and decoder (off by default: the minute it compiles on a "
        "CPU is more than it saves in a run of this size; docs/performance.md)",
        converter=to_bool,
    )
    loggers: tuple[str, ...] = option(
        (),
        "experiment loggers besides metrics.jsonl (always written), e.g. ['tensorboard', 'mlflow']; "
        "genvae list-plugins shows the installed ones",
        converter=_str_tuple,
    )
    retain_graph: str = option(
        "auto",
        "keep a step's autograd graph after an update's backward pass: 'auto' (only for updates whose graph a "
        "later update of the step goes through again, found on the first step) or 'always'",
        one_of("auto", "always"),
    )
    posterior_samples: int = option(
        1,
        "posterior draws per image in a training pass, run as one batch (a k-sample bound); a loss may ask for "
        "more (iwae's k), and the most asked for is drawn",
        positive_int,
        to_int,
    )
    grad_norms: str = option(
        "auto",
        "log each phase's gradient norm (before clipping) as PHASE/grad_norm: 'on', 'off' or 'auto' (on for "
        "models with more than one phase, such as GANs)",
        one_of("auto", "on", "off"),
    )
    classifier: str | None = option(
        None,
        "a feature network (genvae train-classifier's folder): at each epoch's end the class histogram of "
        "class_samples prior samples (a fixed z) goes to classes.jsonl and the report (mode coverage)",
        converter=optional_str,
    )
    class_samples: int = option(1000, "prior samples classified per epoch with train.classifier", positive_int, to_int)
    seed: int = option(0, "seed of every random stream (init, data order, sampling), 0..2**64-1", seed_int, to_int)
    checkpoint_every: int = option(500, "steps between checkpoints (and one at the end)", positive_int, to_int)
    log_every: int = option(25, "steps between metric log lines (the only host syncs)", positive_int, to_int)
    keep_checkpoints: int = option(2, "how many step checkpoints to keep", positive_int, to_int)
    schedule: tuple[dict[str, Any], ...] = option(
        (),
        "the updates of a step in order: 'one-pass' (one update per phase on one forward pass, in the losses' "
        "phase order) or a list of 'PHASE[@all|posterior|prior][:fresh]' (see docs/architecture.md)",
        converter=_schedule,
    )


@attrs.frozen
class ComponentSpec:
    name: str
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class LossSpec:
    name: str
    weight: float = attrs.field(default=1.0, validator=finite)
    options: dict[str, Any] = attrs.field(factory=dict)


def _component(value) -> ComponentSpec:
    if isinstance(value, ComponentSpec):
        return value
    if isinstance(value, str):
        return ComponentSpec(value)
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        raise ValueError(f"expected a component name or {{'name': ..., 'options': {{...}}}}, got {shorten(value)}")
    return ComponentSpec(value["name"], _options_of(value, "component"))


def _options_of(item: Mapping, what: str) -> dict[str, Any]:
    allowed = ("name", "options", "weight") if what == "loss" else ("name", "options")
    extra = sorted(str(k) for k in item if k not in allowed)
    if extra:  # a typo such as "option" must not silently fall back to the defaults
        raise ValueError(
            f"{what} {shorten(item['name'])}: unknown key {shorten(extra[0])}; allowed: {', '.join(allowed)}"
        )
    options = item.get("options") or {}
    if not isinstance(options, Mapping):
        raise ValueError(
            f"{what} {shorten(item['name'])}: options must be a mapping of option name to value, got {shorten(options)}"
        )
    return dict(options)


def _losses(value) -> tuple[LossSpec, ...]:
    if isinstance(value, str | Mapping | LossSpec) or not isinstance(value, tuple | list):
        raise ValueError(f"expected a list of losses (names or {{'name': ..., 'weight': ...}}), got {shorten(value)}")
    out = []
    for item in value:
        if isinstance(item, LossSpec):
            out.append(item)
        elif isinstance(item, str):
            out.append(LossSpec(item))
        elif isinstance(item, Mapping) and isinstance(item.get("name"), str):
            weight = item.get("weight", 1.0)
            try:
                number = float(weight)
            except (TypeError, ValueError):
                number = math.nan
            if isinstance(weight, bool) or not math.isfinite(number):
                raise ValueError(f"loss {shorten(item['name'])}: weight must be a finite number, got {shorten(weight)}")
            out.append(LossSpec(item["name"], number, _options_of(item, "loss")))
        else:
            raise ValueError(f"expected a loss name or {{'name': ..., 'weight': ...}}, got {shorten(item)}")
    return tuple(out)


def _train(value) -> TrainConfig:
    if isinstance(value, TrainConfig):
        return value
    from genvae.core.options import options_from_dict

    return options_from_dict(TrainConfig, value or {}, "train")


@attrs.frozen
class ModelSpec:
    """A whole model: image shape, one component per kind, losses with weights, training settings."""

    encoder: ComponentSpec = attrs.field(converter=_component)
    transform: ComponentSpec = attrs.field(converter=_component)
    decoder: ComponentSpec = attrs.field(converter=_component)
    prior: ComponentSpec = attrs.field(converter=_component, default=ComponentSpec("normal"))
    losses: tuple[LossSpec, ...] = attrs.field(converter=_losses, default=())
    image_size: int = attrs.field(default=32, validator=positive_int)
    channels: int = attrs.field(default=3, validator=one_of(1, 3))
    train: TrainConfig = attrs.field(converter=_train, factory=TrainConfig)
    preset: str | None = None
    description: str = ""

    def component(self, kind: str) -> ComponentSpec:
        return getattr(self, kind)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        from genvae.core.options import options_to_dict

        return {
            "format": SPEC_FORMAT,
            "preset": self.preset,
            "description": self.description,
            "image_size": self.image_size,
            "channels": self.channels,
            **{
                k: {"name": self.component(k).name, "options": dict(self.component(k).options)} for k in COMPONENT_KINDS
            },
            "losses": [{"name": s.name, "weight": s.weight, "options": dict(s.options)} for s in self.losses],
            "train": options_to_dict(self.train),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "spec") -> ModelSpec:
        data = dict(data)
        fmt = data.pop("format", SPEC_FORMAT)
        if fmt != SPEC_FORMAT:
            raise GenvaeError(f"{where}: spec format {fmt} is not supported (this genvae reads format {SPEC_FORMAT})")
        known = sorted(a.name for a in attrs.fields(cls))
        unknown = sorted((k for k in data if k not in known), key=str)
        if unknown:
            key = str(unknown[0])
            raise OptionsError(
                f"{where}: unknown key {shorten(key)}; {did_you_mean(key, known)}known keys: {name_list(known)}"
            )
        missing = [k for k in ("encoder", "transform", "decoder") if k not in data]
        if missing:
            raise OptionsError(f"{where}: missing '{missing[0]}'; a spec names an encoder, transform and decoder")
        try:
            return cls(**data)
        except (TypeError, ValueError, KeyError, IndexError, ArithmeticError) as exc:
            found = find_invalid(cls, data)
            if found:
                raise OptionsError(f"{where}: key '{found[0]}': {found[1]}") from exc
            raise OptionsError(f"{where}: {error_text(exc)}") from exc

    def with_train(self, **changes) -> ModelSpec:
        from genvae.core.options import options_from_dict, options_to_dict

        merged = {**options_to_dict(self.train), **changes}
        return attrs.evolve(self, train=options_from_dict(TrainConfig, merged, "train"))
