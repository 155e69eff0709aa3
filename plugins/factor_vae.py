"""``factor``: FactorVAE's total-correlation penalty with the latent discriminator it trains (Kim and Mnih,
*Disentangling by Factorising*, ICML 2018).

The objective is the ELBO plus gamma times the total correlation of the aggregate posterior,
TC = KL(q(z) || prod_d q(z_d)), over the flattened latent (every element a dimension d, whatever the latent
transform's layout: a cr-lstm's time steps, a Laplacian pyramid's levels). TC is estimated by the density-ratio
trick: a discriminator D(z) tells samples of q(z) (the batch's posterior samples, "joint", label 1) from samples of
prod_d q(z_d) (the same batch with each dimension permuted independently across the batch, "permuted", label 0).
With its logit l(z) = log D(z) / (1 - D(z)), the optimal discriminator gives l(z) = log q(z) / prod_d q(z_d), so

    TC ~ mean over the batch of l(z).

The paper's discriminator has two logits (joint, permuted) and the estimate is their difference; one logit l is
that difference, and the paper's softmax cross-entropy is binary cross-entropy on l. Here:

* phase ``model``: ``gamma`` times the mean of l(z) on the pass's z; the gradient reaches the encoder and the
  latent transform through z, never the discriminator (its parameters are read detached in this phase);
* phase ``factor-discriminator`` (after ``model``, as in the paper's algorithm): binary cross-entropy with logits,
  0.5 (BCE(l(z), 1) + BCE(l(perm(z)), 0)), on the pass's z detached and its permutation. The paper permutes a
  second batch; here it is the same batch (one forward pass per step), as most implementations do.

The discriminator is an MLP on the flattened latent: ``depth`` hidden layers of ``hidden`` units with
LeakyReLU(0.2), then one logit (the paper: 6 layers of 1000). Its learning rate is ``train.phase_lr``'s entry for
``factor-discriminator`` (the paper: 1e-4, as the VAE's), else ``train.lr``. The ``kl`` loss is the ELBO's
divergence (``factor`` is auxiliary, so a build adds ``kl`` when none is named).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from genvae.api import (
    BuildContext,
    ForwardPass,
    Loss,
    PresetSpec,
    RegisterComponent,
    RegisterNamed,
    hookimpl,
    mlp,
    non_negative,
    option,
    positive_int,
    to_float,
    to_int,
)

PHASE = "factor-discriminator"


@attrs.frozen
class FactorOptions:
    gamma: float = option(6.0, "weight of the total-correlation estimate (the paper's gamma)", non_negative, to_float)
    hidden: int = option(1000, "units per hidden layer of the latent discriminator", positive_int, to_int)
    depth: int = option(6, "hidden layers of the latent discriminator", positive_int, to_int)


def permute_dims(z: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Each column of z (batch, dims) shuffled across the batch by its own permutation: a sample of the product of
    the marginals, prod_d q(z_d), from a sample of q(z)."""
    rows = torch.rand(z.shape, generator=generator, device=z.device if generator is None else "cpu")
    return z.gather(0, rows.to(z.device).argsort(dim=0))


class FactorLoss(Loss[FactorOptions]):
    """FactorVAE: gamma times a latent discriminator's total-correlation estimate, the discriminator in its phase."""

    name = "factor"
    Options = FactorOptions
    role = "auxiliary"
    phases = ("model", PHASE)
    phase_order = ("model", PHASE)
    test_options = {"hidden": 8, "depth": 2}

    def __init__(self, options: FactorOptions, ctx: BuildContext, weight: float = 1.0) -> None:
        super().__init__(options, ctx, weight)
        transform = ctx.transform
        assert transform is not None  # built before the losses
        dims = transform.layout.numel
        self.discriminator = mlp([dims, *[options.hidden] * options.depth, 1], "lrelu", last_activation=False)

    def owned_modules(self) -> dict[str, nn.Module]:
        return {PHASE: self.discriminator}

    def logits(self, z: Tensor, detach_params: bool = False) -> Tensor:
        """l(z) = log D(z) / (1 - D(z)) per row of z (batch, *latent); with ``detach_params`` no gradient reaches
        the discriminator (the model phase), only z."""
        flat = z.flatten(1)
        if not detach_params:
            return self.discriminator(flat).squeeze(1)
        params: dict[str, Any] = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, params, (flat,)).squeeze(1)

    def forward(self, fwd: ForwardPass, phase: str) -> dict[str, Tensor]:
        assert fwd.z is not None
        if phase == PHASE:
            return {"d": self.discriminator_loss(fwd.z.detach())}
        tc = self.logits(fwd.z, detach_params=True).mean()
        fwd.log("factor.tc", tc)
        return {"factor": self.weight * self.options.gamma * tc}

    def discriminator_loss(self, z: Tensor) -> Tensor:
        """Binary cross-entropy with logits: the batch's z labelled 1 (joint), its permutation labelled 0."""
        joint = z.flatten(1)
        logits = self.logits(torch.cat([joint, permute_dims(joint)]))
        n = joint.shape[0]
        labels = torch.cat([torch.ones(n, device=z.device), torch.zeros(n, device=z.device)])
        return F.binary_cross_entropy_with_logits(logits, labels)


@hookimpl
def genvae_register_losses(register: RegisterComponent[Loss]) -> None:
    register(FactorLoss)


#: the networks every model of the zoo shares, so the side-by-side benchmark compares objectives alone
ZOO_NETWORK: dict[str, Any] = {
    "image_size": 32,
    "channels": 1,
    "encoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
    "transform": {"name": "fc", "options": {"latent_dim": 16}},
    "decoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
    "prior": {"name": "normal"},
    "train": {"lr": 1e-3, "batch_size": 64},
}


@hookimpl
def genvae_register_presets(register: RegisterNamed[PresetSpec]) -> None:
    register(
        "factor-vae",
        {
            **ZOO_NETWORK,
            "losses": [{"name": "bce"}, {"name": "kl"}, {"name": "factor", "options": {"gamma": 6.0}}],
        },
        help="FactorVAE (Kim and Mnih 2018): the zoo's conv VAE plus 6 times a latent discriminator's "
        "total-correlation estimate (the discriminator trains in its own phase)",
    )
