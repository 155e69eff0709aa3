"""``laplacian``: the Laplacian pyramid of conditional VAEs (LapCVAE, Dorta et al. 2017).

One plugin, one package; each module holds one part:

* :mod:`.pyramid`: the pyramid operators (``blur_down``, ``upsample``, ``decompose``, ``reconstruct``, ...);
* :mod:`.components`: encoder, latent transform and decoder ``laplacian`` (one conv stack per level; the
  ``pyramid`` capability and ``ForwardPass.pyramid``);
* :mod:`.loss`: loss ``pyramid-mse``, the paper's squared error per level on h_k;
* :mod:`.editing`: coarse-level editing (paper 5.2) with alpha or Poisson compositing;
* :mod:`.training`: greedy level-by-level training and retraining M (paper 5.1.3), through the core training API;
* :mod:`.presets`: ``lapcvae``, ``lapcvae-no-m``, ``lapcvae-vae`` (64x64 RGB), ``lapcvae-128`` (the paper's
  128x128 five-level model) and the CPU-sized ``-small`` variants (32x32 grey, 3 levels, for Fashion-MNIST);
* :mod:`.commands`: ``genvae edit`` and ``genvae train-levels``.

Levels are indexed as in the paper: k = 0 is the full-resolution level, k = K = levels - 1 the coarsest.
Every per-level option list (widths, latent sizes, level weights, ``kl.group_weights``) is written COARSEST
FIRST, the order of the latent groups; one value applies to every level. The ``m-net`` prior
(plugins/m_net.py) works with any components that provide ``pyramid``. See docs/lapcvae.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genvae.api import Decoder, Encoder, LatentTransform, Loss, PresetSpec, RegisterComponent, RegisterNamed, hookimpl
from genvae.plugins.laplacian.components import (
    CONDITIONS,
    LaplacianDecoder,
    LaplacianEncoder,
    LaplacianLatent,
)
from genvae.plugins.laplacian.editing import BLENDS, edit_image, load_mask, poisson_blend, soft_mask
from genvae.plugins.laplacian.loss import PyramidMSELoss
from genvae.plugins.laplacian.presets import PAPER_LAMBDAS, PAPER_LAMBDAS_128, PAPER_LATENT_128, SMALL_LAMBDAS
from genvae.plugins.laplacian.pyramid import (
    KERNELS,
    blur_down,
    check_pyramid_size,
    decompose,
    gaussian_pyramid,
    per_level,
    reconstruct,
    reconstruct_levels,
    upsample,
    upsample_to,
)
from genvae.plugins.laplacian.training import greedy_stages, level_paths, run_stage, unfreeze

if TYPE_CHECKING:
    import click

__all__ = [
    "BLENDS",
    "CONDITIONS",
    "KERNELS",
    "PAPER_LAMBDAS",
    "PAPER_LAMBDAS_128",
    "PAPER_LATENT_128",
    "SMALL_LAMBDAS",
    "LaplacianDecoder",
    "LaplacianEncoder",
    "LaplacianLatent",
    "PyramidMSELoss",
    "blur_down",
    "check_pyramid_size",
    "decompose",
    "edit_image",
    "gaussian_pyramid",
    "greedy_stages",
    "level_paths",
    "load_mask",
    "per_level",
    "poisson_blend",
    "reconstruct",
    "reconstruct_levels",
    "run_stage",
    "soft_mask",
    "unfreeze",
    "upsample",
    "upsample_to",
]


@hookimpl
def genvae_register_encoders(register: RegisterComponent[Encoder]) -> None:
    register(LaplacianEncoder)


@hookimpl
def genvae_register_transforms(register: RegisterComponent[LatentTransform]) -> None:
    register(LaplacianLatent)


@hookimpl
def genvae_register_decoders(register: RegisterComponent[Decoder]) -> None:
    register(LaplacianDecoder)


@hookimpl
def genvae_register_losses(register: RegisterComponent[Loss]) -> None:
    register(PyramidMSELoss)


@hookimpl
def genvae_register_presets(register: RegisterNamed[PresetSpec]) -> None:
    from genvae.plugins.laplacian.presets import register_presets

    register_presets(register)


@hookimpl
def genvae_register_commands(cli: click.Group) -> None:
    from genvae.plugins.laplacian.commands import add_commands

    add_commands(cli)
