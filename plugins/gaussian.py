"""``gaussian``: Gaussian reconstruction likelihood with a learned (or fixed) observation variance."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor, nn

from genvae.api import (
    BuildContext,
    ForwardPass,
    Loss,
    RegisterComponent,
    finite,
    hookimpl,
    option,
    reduce_images,
    reduction_option,
    to_bool,
    to_float,
)


@attrs.frozen
class GaussianOptions:
    learn_variance: bool = option(True, "learn the log-variance (trained with the model)", converter=to_bool)
    per_channel: bool = option(False, "one variance per image channel instead of one in all", converter=to_bool)
    init_logvar: float = option(-2.0, "initial (or fixed) log-variance of each pixel", finite, to_float)
    reduction: str = reduction_option()


class GaussianLoss(Loss[GaussianOptions]):
    """Negative log-likelihood of x under N(x_hat, sigma^2)."""

    name = "gaussian"
    Options = GaussianOptions
    role = "reconstruction"

    def __init__(self, options: GaussianOptions, ctx: BuildContext, weight: float = 1.0) -> None:
        super().__init__(options, ctx, weight)
        shape = (1, ctx.image_shape[0], 1, 1) if options.per_channel else (1, 1, 1, 1)
        init = torch.full(shape, options.init_logvar)
        if options.learn_variance:
            self.logvar = nn.Parameter(init)
        else:
            self.register_buffer("logvar", init)

    def forward(self, fwd: ForwardPass, phase: str) -> dict[str, Tensor]:
        assert fwd.x_hat is not None  # the model's forward sets it
        nll = 0.5 * ((fwd.x - fwd.x_hat).pow(2) * torch.exp(-self.logvar) + self.logvar + math.log(2 * math.pi))
        return {"gaussian": self.weight * reduce_images(nll, self.options.reduction)}


@hookimpl
def genvae_register_losses(register: RegisterComponent[Loss]) -> None:
    register(GaussianLoss)
