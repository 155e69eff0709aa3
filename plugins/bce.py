"""``bce``: Bernoulli reconstruction likelihood on pixels scaled to [0, 1].

The decoder's logits a give x_hat = tanh(a); since (tanh(a) + 1) / 2 = sigmoid(2a), the Bernoulli
mean is sigmoid(2a) and the loss is computed stably from the logits.
"""

from __future__ import annotations

import attrs
import torch.nn.functional as F

from genvae.core.components import Loss
from genvae.core.hookspecs import hookimpl
from genvae.core.layers import reduce_images, reduction_option


@attrs.frozen
class BCEOptions:
    reduction: str = reduction_option()


class BCELoss(Loss):
    """Binary cross-entropy of the pixels in [0, 1] under Bernoulli(sigmoid(2 * logits))."""

    name = "bce"
    Options = BCEOptions
    role = "reconstruction"

    def forward(self, state, phase):
        target = (state.x + 1.0) * 0.5
        values = F.binary_cross_entropy_with_logits(2.0 * state.logits, target, reduction="none")
        return {"bce": self.weight * reduce_images(values, self.options.reduction)}


@hookimpl
def genvae_register_losses(register):
    register(BCELoss)
