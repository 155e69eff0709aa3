"""The public plugin API of genvae: everything a plugin imports, built-in or third-party, from one place.

A plugin imports only from here (``from genvae.api import Encoder, hookimpl, option, ...``); the modules
behind these names (``genvae.core.*``, ``genvae.cli.*``) are the engine's own and may change between
releases. ``PLUGIN_API_VERSION`` says which contract a plugin was written against: it grows by one whenever a
name here changes meaning or goes away, and CHANGELOG.md lists each change and its deprecation period (a
renamed name keeps working, with a ``DeprecationWarning``, for one minor release).

docs/api-reference.md is generated from the docstrings of these names (``python tools/api_reference.py``);
docs/writing-a-plugin.md walks through writing one.
"""

from __future__ import annotations

import warnings
from typing import Any

from genvae import __version__
from genvae.cli.commands import (
    COUNT,
    SAMPLE_BATCH,
    SEED,
    FiniteFloat,
    console,
    data_options,
    device_option,
    err_console,
    load_command_data,
    load_for_inference,
    load_image,
    load_mask,
    registry,
    require_single_process,
    seed_option,
)
from genvae.core.budget import grid_bytes, image_bytes, inference_batch
from genvae.core.capabilities import (
    DISCRIMINATOR,
    MI_TARGET,
    PYRAMID,
    Capability,
    DiscriminatorTrunk,
    FakeFeatures,
    MITarget,
    PyramidDecoder,
    PyramidEncoder,
    PyramidLatent,
    PyramidPass,
    pyramid_parts,
)
from genvae.core.checkpoint import (
    json_text,
    load_model,
    load_spec,
    load_weights,
    read_json,
    read_tensors,
    save_model,
    tensors_writer,
)
from genvae.core.components import (
    LOSS_ROLES,
    OUTPUT_SPACES,
    BuildContext,
    Component,
    Decoder,
    Encoder,
    FlowPosterior,
    ForwardPass,
    Gaussian,
    LatentDistribution,
    LatentLayout,
    LatentTransform,
    Loss,
    MultiSample,
    PassField,
    Prior,
    PriorSample,
)
from genvae.core.compose import compose_spec, preset_spec
from genvae.core.data import ImageData, load_data, load_labels
from genvae.core.decode import decode_images, fit_tensor, read_image, to_model_range, to_uint8
from genvae.core.errors import (
    BuildError,
    CheckpointError,
    DataError,
    GenvaeError,
    OptionsError,
    UnknownNameError,
    shorten,
)
from genvae.core.evaluation import EvalData, FeatureNetwork, fit_to, open_feature_network
from genvae.core.folder import ModelFolder, lock_folder
from genvae.core.hookspecs import (
    DatasetLoader,
    FeatureNetworkLoader,
    LoggerFactory,
    MetricFunction,
    PresetSpec,
    RegisterComponent,
    RegisterNamed,
    hookimpl,
)
from genvae.core.images import check_image_output, save_grid
from genvae.core.inference import draw_samples, generate_images, reconstruct_images
from genvae.core.layers import (
    ACTIVATIONS,
    activation,
    batch_norms,
    decoder_widths,
    describe_shape,
    down_stack,
    eval_mode,
    mlp,
    reduce_images,
    reduction_option,
    running_stats_frozen,
    stack_widths,
    straight_through_clamp,
    up_stack,
)
from genvae.core.loggers import Logger
from genvae.core.model import GenerativeModel, build_model
from genvae.core.options import (
    NoOptions,
    expects,
    finite,
    float_tuple,
    int_tuple,
    non_negative,
    non_negative_int,
    one_of,
    option,
    optional_float,
    optional_int,
    positive,
    positive_int,
    positive_ints,
    split_list,
    to_bool,
    to_float,
    to_int,
    unit_interval,
)
from genvae.core.precision import (
    AMP_MODES,
    FLOAT32,
    Precision,
    resolve_precision,
    to_float32,
    uses_channels_last,
)
from genvae.core.registry import get_registry
from genvae.core.spec import ComponentSpec, LossSpec, ModelSpec, TrainConfig
from genvae.core.training import (
    RunResult,
    RunStart,
    Trainer,
    TrainingStopped,
    prepare_training,
    resolve_device,
    seed_everything,
    train_run,
)
from genvae.core.training.metrics import NOT_TERMS, is_term, terms_text

#: the version of this contract (see the module's docstring and CHANGELOG.md)
PLUGIN_API_VERSION = 3

__all__ = [
    "ACTIVATIONS",
    "COUNT",
    "DISCRIMINATOR",
    "MI_TARGET",
    "NOT_TERMS",
    "OUTPUT_SPACES",
    "PLUGIN_API_VERSION",
    "PYRAMID",
    "SAMPLE_BATCH",
    "SEED",
    "BuildContext",
    "BuildError",
    "Capability",
    "CheckpointError",
    "Component",
    "ComponentSpec",
    "DataError",
    "DatasetLoader",
    "Decoder",
    "DiscriminatorTrunk",
    "Encoder",
    "EvalData",
    "FakeFeatures",
    "FeatureNetwork",
    "FeatureNetworkLoader",
    "FiniteFloat",
    "ForwardPass",
    "Gaussian",
    "GenerativeModel",
    "GenvaeError",
    "ImageData",
    "LatentLayout",
    "LatentTransform",
    "Logger",
    "LoggerFactory",
    "Loss",
    "LossSpec",
    "MITarget",
    "MetricFunction",
    "ModelFolder",
    "ModelSpec",
    "NoOptions",
    "OptionsError",
    "PresetSpec",
    "Prior",
    "PriorSample",
    "PyramidDecoder",
    "PyramidEncoder",
    "PyramidLatent",
    "PyramidPass",
    "RegisterComponent",
    "RegisterNamed",
    "RunResult",
    "RunStart",
    "TrainConfig",
    "Trainer",
    "TrainingStopped",
    "UnknownNameError",
    "__version__",
    "activation",
    "batch_norms",
    "build_model",
    "check_image_output",
    "compose_spec",
    "console",
    "data_options",
    "decode_images",
    "decoder_widths",
    "describe_shape",
    "device_option",
    "down_stack",
    "draw_samples",
    "err_console",
    "eval_mode",
    "expects",
    "finite",
    "fit_tensor",
    "fit_to",
    "float_tuple",
    "generate_images",
    "get_registry",
    "grid_bytes",
    "hookimpl",
    "image_bytes",
    "inference_batch",
    "int_tuple",
    "is_term",
    "json_text",
    "load_command_data",
    "load_data",
    "load_for_inference",
    "load_image",
    "load_labels",
    "load_mask",
    "load_model",
    "load_spec",
    "load_weights",
    "lock_folder",
    "mlp",
    "non_negative",
    "non_negative_int",
    "one_of",
    "open_feature_network",
    "option",
    "optional_float",
    "optional_int",
    "positive",
    "positive_int",
    "positive_ints",
    "prepare_training",
    "preset_spec",
    "pyramid_parts",
    "read_image",
    "read_json",
    "read_tensors",
    "reconstruct_images",
    "reduce_images",
    "reduction_option",
    "registry",
    "require_single_process",
    "resolve_device",
    "running_stats_frozen",
    "save_grid",
    "save_model",
    "seed_everything",
    "seed_option",
    "shorten",
    "split_list",
    "stack_widths",
    "straight_through_clamp",
    "tensors_writer",
    "terms_text",
    "to_bool",
    "to_float",
    "to_int",
    "to_model_range",
    "to_uint8",
    "train_run",
    "unit_interval",
    "up_stack",
    "LOSS_ROLES",
    "FlowPosterior",
    "LatentDistribution",
    "MultiSample",
    "PassField",
    "AMP_MODES",
    "FLOAT32",
    "Precision",
    "resolve_precision",
    "to_float32",
    "uses_channels_last",
]

#: names that were renamed, by their old name: they keep working, with a DeprecationWarning, until 0.3
DEPRECATED = {"Pass": ("ForwardPass", ForwardPass)}


def __getattr__(name: str) -> Any:
    if name in DEPRECATED:
        new, value = DEPRECATED[name]
        warnings.warn(
            f"genvae.api.{name} is deprecated since genvae 0.2 and goes in 0.3; use genvae.api.{new}",
            DeprecationWarning,
            stacklevel=2,
        )
        return value
    raise AttributeError(f"module 'genvae.api' has no attribute {name!r}")
