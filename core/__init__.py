"""The genvae engine: hook specs, the component registry, model specs, composition, training, files.

The core knows no concrete component: every encoder, prior, latent transform, decoder, loss, dataset and
preset comes from a plugin (built-in ones live in ``genvae.plugins``). Its modules are the engine's own and
may change between releases: a plugin imports from :mod:`genvae.api`, the one public surface.

The names ``genvae.core`` exported before 0.2 still work, with a ``DeprecationWarning`` pointing to
``genvae.api``, until 0.3 (CHANGELOG.md).
"""

from __future__ import annotations

import warnings
from typing import Any

# what genvae.core exported before 0.2 (each now in genvae.api; "Pass" is "ForwardPass" there)
_MOVED = (
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
    "__version__",
)


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import genvae.api

        new = "ForwardPass" if name == "Pass" else name
        warnings.warn(
            f"genvae.core.{name} is deprecated since genvae 0.2 and goes in 0.3; import {new} from genvae.api",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(genvae.api, new)
    raise AttributeError(f"module 'genvae.core' has no attribute {name!r}")
