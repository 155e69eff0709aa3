"""``normal``: the standard Gaussian prior N(0, I)."""

from __future__ import annotations

from genvae.core.components import Gaussian, Prior
from genvae.core.hookspecs import hookimpl


class NormalPrior(Prior):
    """Standard normal N(0, I) over the whole latent."""

    name = "normal"

    def forward(self, state) -> Gaussian:
        return Gaussian.standard_like(state.posterior)


@hookimpl
def genvae_register_priors(register):
    register(NormalPrior)
