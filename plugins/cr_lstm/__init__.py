"""``cr-lstm``: channel-recurrent autoencoding (crVAE / crVAE-GAN, Shang, Sohn & Tian, WACV 2018).

One plugin, one package: :mod:`.components` (three components), :mod:`.presets` (the paper's presets and the
CPU-sized ones) and :mod:`.commands` (``draw``, ``traverse``), following the authors' released Torch code
(``models/allconv_lstm.lua``; the facts are collected in ``shared/seeds/README.md``):

* encoder ``cr-lstm``: the CReLU conv stack, image -> features (256x4x4 at 64x64);
* latent transform ``cr-lstm``: the latent c x h x w is cut into T channel blocks (time steps).
  The mean path has no recurrence (conv3x3 + a learnable c x h x w bias); the log-variance path runs
  the T blocks of encoder features through an LSTM (BatchNorm1d shared over steps, then a Linear per
  step); the generation LSTM maps z's T blocks to u (Linear per step, plus a learnable bias). Every
  LSTM is one fused ``nn.LSTM`` call over the T steps: no Python loop per time step;
* decoder ``cr-lstm``: the conv/deconv stack from any spatial input (u of the cr-lstm latent, or the
  256x4x4 mirror of the ``fc`` latent, which makes the VAE-GAN baseline: both models then differ
  only in the latent construction).

Latent groups: step t owns latent channels [t c/T, (t+1) c/T), contiguous in the flattened latent,
so ``kl`` ``group_weights`` and ``mi`` ``group_weights`` are per time step. The ``draw`` and
``traverse`` commands show the latent channel semantics of the paper's section 4.5.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genvae.api import Decoder, Encoder, LatentTransform, PresetSpec, RegisterComponent, RegisterNamed, hookimpl
from genvae.plugins.cr_lstm.commands import commands
from genvae.plugins.cr_lstm.components import CRDecoder, CREncoder, CRLatent, RecurrentPath, set_forget_bias
from genvae.plugins.cr_lstm.presets import PAPER_KL, PAPER_MI, PRESETS

if TYPE_CHECKING:
    import click

__all__ = ["PAPER_KL", "PAPER_MI", "PRESETS", "CRDecoder", "CREncoder", "CRLatent", "RecurrentPath", "set_forget_bias"]


@hookimpl
def genvae_register_encoders(register: RegisterComponent[Encoder]) -> None:
    register(CREncoder)


@hookimpl
def genvae_register_transforms(register: RegisterComponent[LatentTransform]) -> None:
    register(CRLatent)


@hookimpl
def genvae_register_decoders(register: RegisterComponent[Decoder]) -> None:
    register(CRDecoder)


@hookimpl
def genvae_register_presets(register: RegisterNamed[PresetSpec]) -> None:
    for name, (spec, help_text) in PRESETS.items():
        register(name, spec, help=help_text)


@hookimpl
def genvae_register_commands(cli: click.Group) -> None:
    for command in commands():
        cli.add_command(command)
