"""``bce``: Bernoulli reconstruction likelihood on pixels scaled to [0, 1].

The loss is computed stably from the decoder's logits, read in the decoder's output space: a ``tanh``
decoder's logits a give x_hat = tanh(a), and since (tanh(a) + 1) / 2 = sigmoid(2a) the Bernoulli mean is
sigmoid(2a); a ``bernoulli`` decoder's logits are the Bernoulli logits themselves. A decoder whose output
is the image (``image``) has no logits, and the build refuses it.
"""

from __future__ import annotations

import attrs
import torch.nn.functional as F
from torch import Tensor

from genvae.api import BuildContext, ForwardPass, Loss, RegisterComponent, hookimpl, reduce_images, reduction_option

#: the factor from a decoder's output to Bernoulli logits, by output space
LOGIT_SCALE = {"tanh": 2.0, "bernoulli": 1.0}


@attrs.frozen
class BCEOptions:
    reduction: str = reduction_option()


class BCELoss(Loss[BCEOptions]):
    """Binary cross-entropy of the pixels in [0, 1] under Bernoulli(sigmoid(s * logits)), s = 2 for tanh logits."""

    name = "bce"
    Options = BCEOptions
    role = "reconstruction"

    def __init__(self, options: BCEOptions, ctx: BuildContext, weight: float = 1.0) -> None:
        super().__init__(options, ctx, weight)
        decoder = ctx.decoder
        output = decoder.output if decoder is not None else "tanh"
        if decoder is not None and output not in LOGIT_SCALE:
            raise self.fail(
                f"needs logits, but decoder '{decoder.name}' outputs the '{output}' space; it "
                f"works with decoders whose output is {' or '.join(LOGIT_SCALE)}"
            )
        self.scale = LOGIT_SCALE[output]

    def forward(self, fwd: ForwardPass, phase: str) -> dict[str, Tensor]:
        assert fwd.decoder_output is not None  # the model's forward sets it
        target = (fwd.x + 1.0) * 0.5
        values = F.binary_cross_entropy_with_logits(self.scale * fwd.decoder_output, target, reduction="none")
        return {"bce": self.weight * reduce_images(values, self.options.reduction)}


@hookimpl
def genvae_register_losses(register: RegisterComponent[Loss]) -> None:
    register(BCELoss)
