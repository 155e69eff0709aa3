"""The genvae engine: hook specs, the component registry, model specs, composition and training.

The core knows no concrete component: every encoder, prior, latent transform, decoder, loss,
dataset and preset comes from a plugin (built-in ones live in ``genvae.plugins``).
"""

from genvae.core.checkpoint import load_model, save_model
from genvae.core.components import (
    OUTPUT_SPACES,
    BuildContext,
    Component,
    Decoder,
    Encoder,
    Gaussian,
    LatentLayout,
    LatentTransform,
    Loss,
    Pass,
    Prior,
    PriorSample,
)
from genvae.core.compose import compose_spec, preset_spec
from genvae.core.data import save_grid
from genvae.core.errors import BuildError, GenvaeError, OptionsError, UnknownNameError
from genvae.core.hookspecs import hookimpl
from genvae.core.loggers import Logger
from genvae.core.model import GenerativeModel, build_model
from genvae.core.options import option
from genvae.core.spec import ComponentSpec, LossSpec, ModelSpec, TrainConfig
from genvae.core.train import Trainer, prepare_training

__all__ = [
    "OUTPUT_SPACES",
    "BuildContext",
    "BuildError",
    "Component",
    "ComponentSpec",
    "Decoder",
    "Encoder",
    "Gaussian",
    "GenerativeModel",
    "GenvaeError",
    "LatentLayout",
    "LatentTransform",
    "Logger",
    "Loss",
    "LossSpec",
    "ModelSpec",
    "OptionsError",
    "Pass",
    "Prior",
    "PriorSample",
    "TrainConfig",
    "Trainer",
    "UnknownNameError",
    "build_model",
    "compose_spec",
    "hookimpl",
    "load_model",
    "option",
    "prepare_training",
    "preset_spec",
    "save_grid",
    "save_model",
]

__version__ = "0.1.0"
