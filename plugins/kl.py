"""``kl``: KL(q(z|x) || p(z)), with an optional weight per latent group.

This is where the KL weight per time step (crVAE: channel blocks) or per pyramid level (LapCVAE:
lambda_k) lives: ``group_weights``, one per group of the latent transform's layout, or, in the crVAE
paper's form (equation 1), ``alphas``: group t is weighted 1 - alpha_t.
"""

from __future__ import annotations

import attrs
import torch

from genvae.core.components import BuildContext, Loss
from genvae.core.errors import shorten
from genvae.core.hookspecs import hookimpl
from genvae.core.options import float_tuple, option


@attrs.frozen
class KLOptions:
    group_weights: tuple[float, ...] = option(
        (), "weight per latent group (time step / pyramid level), empty = 1 for all; the loss weight multiplies it",
        converter=float_tuple,
    )
    alphas: tuple[float, ...] = option(
        (), "the crVAE paper's form: weight (1 - alpha_t) per latent group (time step), alpha_t in [0, 1]; "
        "instead of group_weights", converter=float_tuple,
    )

    def __attrs_post_init__(self):
        if any(w < 0 for w in self.group_weights):
            raise ValueError(f"group_weights must be >= 0, got {shorten(list(self.group_weights))}")
        if any(not 0 <= a <= 1 for a in self.alphas):
            raise ValueError(f"alphas must lie in [0, 1], got {shorten(list(self.alphas))}")
        if self.alphas and self.group_weights:
            raise ValueError("give group_weights or alphas (weights 1 - alpha_t), not both")

    @property
    def weights(self) -> tuple[float, ...]:
        """The weight per group: group_weights, or 1 - alpha_t; empty when neither is given."""
        return tuple(1.0 - a for a in self.alphas) if self.alphas else self.group_weights


class KLLoss(Loss):
    """KL divergence of the posterior from the prior, summed over latent elements, batch mean."""

    name = "kl"
    Options = KLOptions
    role = "divergence"

    def __init__(self, options: KLOptions, ctx: BuildContext, weight: float = 1.0):
        super().__init__(options, ctx, weight)
        layout = ctx.layout
        weights = options.weights
        if weights:
            if len(weights) != layout.num_groups:
                what = "alphas" if options.alphas else "group_weights"
                raise self.fail(
                    f"{len(weights)} {what} given, but latent transform "
                    f"'{ctx.transform.name}' has {layout.num_groups} {layout.group_label}(s)"
                )
            self.register_buffer("element_weights", layout.element_weights(weights), persistent=False)
        else:
            self.element_weights = None
        self.layout = layout

    def forward(self, state, phase):
        kl = state.posterior.kl(state.prior).flatten(1)
        if self.element_weights is not None:
            kl = kl * self.element_weights
        return {"kl": self.weight * kl.sum(1).mean()}

    @torch.no_grad()
    def per_group(self, state) -> torch.Tensor:
        """Unweighted KL per group, batch mean: (G,). For reports, not the training step."""
        return self.layout.per_group(state.posterior.kl(state.prior)).mean(0)


@hookimpl
def genvae_register_losses(register):
    register(KLLoss)
