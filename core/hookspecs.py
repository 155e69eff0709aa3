"""The hook specifications of genvae: the whole contract between the engine and a plugin.

A plugin is a module (or object) with functions named like the specs below and decorated with
``genvae.api.hookimpl``. Each ``genvae_register_*`` hook receives a ``register`` callback bound to that
plugin, so the engine always knows which plugin provides which component; the callbacks' types are the
``Register*`` protocols here. Hooks run once, when the plugin is loaded (through pluggy's own dispatch);
nothing here is called per training step.

Built-in plugins are registered explicitly; third-party plugins are found through the ``genvae``
entry-point group (see docs/writing-a-plugin.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pluggy

if TYPE_CHECKING:
    import click
    from torch import Tensor

    from genvae.core.components import Component, Decoder, Encoder, LatentTransform, Loss, Prior
    from genvae.core.evaluation import EvalData, FeatureNetwork
    from genvae.core.loggers import Logger

PROJECT_NAME = "genvae"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

C = TypeVar("C", bound="Component")
T = TypeVar("T")


class RegisterComponent(Protocol[C]):
    """``register(ComponentSubclass, name=None)``: add a component class under its ``name`` (or the one given);
    returns the class, so it also works as a decorator."""

    def __call__(self, cls: type[C], name: str | None = None) -> type[C]: ...


class RegisterNamed(Protocol[T]):
    """``register(name, obj, help="", **extra)``: add ``obj`` under ``name``; ``extra`` is what the kind reads
    besides (a dataset's ``labels`` and ``classes``, a metric's ``needs`` and ``label``, a feature network's
    ``suffixes``). Returns ``obj``."""

    def __call__(self, name: str, obj: T, help: str = "", **extra: Any) -> T: ...


#: ``loader(root, image_size, channels, split, download) -> uint8 (N, C, H, W)``
DatasetLoader = Callable[..., "Tensor"]
#: ``compute(data) -> {"name": value, ...}``
MetricFunction = Callable[["EvalData"], Mapping[str, float]]
#: ``load(path) -> FeatureNetwork``
FeatureNetworkLoader = Callable[..., "FeatureNetwork"]
#: ``open(folder, config) -> Logger``
LoggerFactory = Callable[..., "Logger"]
#: a preset is data: a model spec as ``genvae build`` reads it from config.json
PresetSpec = Mapping[str, Any]


@hookspec
def genvae_register_encoders(register: RegisterComponent[Encoder]) -> None:
    """Register encoder classes: ``register(EncoderSubclass)``.

    An encoder maps an image batch to features (:class:`genvae.api.Encoder`).
    """


@hookspec
def genvae_register_transforms(register: RegisterComponent[LatentTransform]) -> None:
    """Register latent transforms: ``register(LatentTransformSubclass)``.

    A latent transform owns both sides of the latent: features -> posterior (inference side) and
    z -> decoder input (generation side). FC, spatial and channel-recurrent latents differ here.
    """


@hookspec
def genvae_register_decoders(register: RegisterComponent[Decoder]) -> None:
    """Register decoder classes: ``register(DecoderSubclass)``; a decoder maps u to an image."""


@hookspec
def genvae_register_priors(register: RegisterComponent[Prior]) -> None:
    """Register priors: ``register(PriorSubclass)``; a prior may depend on the pass (context)."""


@hookspec
def genvae_register_losses(register: RegisterComponent[Loss]) -> None:
    """Register losses: ``register(LossSubclass)``; a loss may own modules, optimisers and phases."""


@hookspec
def genvae_register_datasets(register: RegisterNamed[DatasetLoader]) -> None:
    """Register datasets: ``register(name, loader, help=..., labels=None, classes=())``.

    ``loader(root, image_size, channels, split, download)`` returns a uint8 tensor (N, C, H, W);
    ``labels(root, split)`` (optional) the class of each image, ``classes`` their names.
    """


@hookspec
def genvae_register_metrics(register: RegisterNamed[MetricFunction]) -> None:
    """Register evaluation metrics: ``register(name, compute, help=..., needs=..., label=...)``.

    ``compute(data: genvae.api.EvalData) -> dict[str, float]`` scores one model; ``needs`` lists
    what it reads (``"reconstructions"``, ``"samples"``, ``"features"``) so ``genvae evaluate`` prepares only
    that. See docs/evaluation.md.
    """


@hookspec
def genvae_register_feature_networks(register: RegisterNamed[FeatureNetworkLoader]) -> None:
    """Register feature networks for metrics: ``register(name, load, help=..., suffixes=())``.

    ``load(path) -> genvae.api.FeatureNetwork`` opens a saved network (a folder or a weights file);
    a folder's ``config.json`` names its loader under ``"feature_network"``.
    """


@hookspec
def genvae_register_loggers(register: RegisterNamed[LoggerFactory]) -> None:
    """Register experiment loggers: ``register(name, open, help=...)``.

    ``open(folder, config) -> genvae.api.Logger`` starts logging a run into ``folder`` (created for it)
    with the model's resolved spec ``config``; chosen with ``genvae train --logger NAME``.
    """


@hookspec
def genvae_register_presets(register: RegisterNamed[PresetSpec]) -> None:
    """Register presets: ``register(name, spec_dict, help=...)``; a preset is data (a model spec)."""


@hookspec
def genvae_register_commands(cli: click.Group) -> None:
    """Add click commands to the ``genvae`` command group: ``cli.add_command(...)`` or ``@cli.command()``."""


#: every hook a plugin may implement, in the order the engine calls them
HOOK_NAMES: Sequence[str] = tuple(name for name in dir() if name.startswith("genvae_register_"))
