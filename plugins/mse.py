"""``mse``: pixel mean-squared reconstruction error between x and x_hat (both in [-1, 1])."""

from __future__ import annotations

import attrs
from torch import Tensor

from genvae.api import ForwardPass, Loss, RegisterComponent, hookimpl, reduce_images, reduction_option


@attrs.frozen
class MSEOptions:
    reduction: str = reduction_option()


class MSELoss(Loss[MSEOptions]):
    """Squared error between the image and its reconstruction."""

    name = "mse"
    Options = MSEOptions
    role = "reconstruction"

    def forward(self, fwd: ForwardPass, phase: str) -> dict[str, Tensor]:
        assert fwd.x_hat is not None  # the model's forward sets it
        return {"mse": self.weight * reduce_images((fwd.x_hat - fwd.x).pow(2), self.options.reduction)}


@hookimpl
def genvae_register_losses(register: RegisterComponent[Loss]) -> None:
    register(MSELoss)
