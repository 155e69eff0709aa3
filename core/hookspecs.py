"""The hook specifications of genvae: the whole contract between the engine and a plugin.

A plugin is a module (or object) with functions named like the specs below and decorated with
``genvae.core.hookspecs.hookimpl``. Each ``genvae_register_*`` hook receives a ``register``
callback bound to that plugin, so the engine always knows which plugin provides which component.
Hooks run once, when the plugin is loaded; nothing here is called per training step.

Built-in plugins are registered explicitly; third-party plugins are found through the
``genvae`` entry-point group (see docs/writing-a-plugin.md).
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "genvae"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def genvae_register_encoders(register):
    """Register encoder classes: ``register(EncoderSubclass)``.

    An encoder maps an image batch to features (``Encoder`` in genvae.core.components).
    """


@hookspec
def genvae_register_transforms(register):
    """Register latent transforms: ``register(LatentTransformSubclass)``.

    A latent transform owns both sides of the latent: features -> posterior (inference side) and
    z -> decoder input (generation side). FC, spatial and channel-recurrent latents differ here.
    """


@hookspec
def genvae_register_decoders(register):
    """Register decoder classes: ``register(DecoderSubclass)``; a decoder maps u to an image."""


@hookspec
def genvae_register_priors(register):
    """Register priors: ``register(PriorSubclass)``; a prior may depend on the pass (context)."""


@hookspec
def genvae_register_losses(register):
    """Register losses: ``register(LossSubclass)``; a loss may own modules, optimisers and phases."""


@hookspec
def genvae_register_datasets(register):
    """Register datasets: ``register(name, loader, help=...)``.

    ``loader(root, image_size, channels, split, download)`` returns a uint8 tensor (N, C, H, W).
    """


@hookspec
def genvae_register_metrics(register):
    """Register evaluation metrics: ``register(name, compute, help=..., needs=...)``.

    ``compute(data: genvae.core.evaluation.EvalData) -> dict[str, float]`` scores one model; ``needs`` lists
    what it reads (``"reconstructions"``, ``"samples"``, ``"features"``) so ``genvae evaluate`` prepares only
    that. See docs/evaluation.md.
    """


@hookspec
def genvae_register_feature_networks(register):
    """Register feature networks for metrics: ``register(name, load, help=...)``.

    ``load(path) -> genvae.core.evaluation.FeatureNetwork`` opens a saved network (a folder or a weights file);
    a folder's ``config.json`` names its loader under ``"feature_network"``.
    """


@hookspec
def genvae_register_loggers(register):
    """Register experiment loggers: ``register(name, open, help=...)``.

    ``open(folder, config) -> genvae.core.Logger`` starts logging a run into ``folder`` (created for it)
    with the model's resolved spec ``config``; chosen with ``genvae train --logger NAME``.
    """


@hookspec
def genvae_register_presets(register):
    """Register presets: ``register(name, spec_dict, help=...)``; a preset is data (a model spec)."""


@hookspec
def genvae_register_commands(cli):
    """Add click commands to the ``genvae`` command group: ``cli.add_command(...)``."""
