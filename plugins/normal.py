"""``normal``: the standard Gaussian prior N(0, I)."""

from __future__ import annotations

import torch

from genvae.api import BuildContext, ForwardPass, Gaussian, NoOptions, Prior, RegisterComponent, hookimpl


class NormalPrior(Prior[NoOptions]):
    """Standard normal N(0, I) over the whole latent."""

    name = "normal"
    zero: torch.Tensor  # a buffer

    def __init__(self, options: NoOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        # expanded views of one zero: the prior costs no kernel launch per step
        self.register_buffer("zero", torch.zeros(()), persistent=False)

    def forward(self, fwd: ForwardPass) -> Gaussian:
        assert fwd.posterior is not None  # the model encodes before it asks the prior
        zero = self.zero.expand_as(fwd.posterior.mean)
        return Gaussian(zero, zero, standard=True)


@hookimpl
def genvae_register_priors(register: RegisterComponent[Prior]) -> None:
    register(NormalPrior)
