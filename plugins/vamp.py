"""``vamp``: the VampPrior (Tomczak and Welling, *VAE with a VampPrior*, AISTATS 2018).

p(z) = (1/K) sum_k q(z | u_k): a mixture of the encoder's own posteriors at K learned pseudo-inputs
u_k. The pseudo-inputs are images, tanh of a learned tensor (so they stay in [-1, 1]); they go
through the encoder together with the batch (``Prior.extra_inputs``), so the encoder's batch norms
see one batch per step, and their posteriors arrive as ``fwd.extra_posterior``. The prior is not
one diagonal Gaussian (``gaussian = False``): the ``kl`` loss estimates KL(q || p) by Monte Carlo,
and the mixture's ``log_prob`` reaches the pseudo-inputs, which learn from it.

With a flow transform (planar, radial, IAF) the components are the pseudo-inputs' base posteriors, before
the flow: the flowed posterior has a density only at its own samples.

Sampling picks a component k uniformly and draws z ~ q(z | u_k); the pseudo-inputs are encoded for
that without touching the batch norms' running statistics.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor, nn

from genvae.api import (
    BuildContext,
    ForwardPass,
    Gaussian,
    GenerativeModel,
    PresetSpec,
    Prior,
    RegisterComponent,
    RegisterNamed,
    batch_norms,
    hookimpl,
    non_negative,
    option,
    positive_int,
    running_stats_frozen,
    to_float,
    to_int,
)


@attrs.frozen
class VampOptions:
    components: int = option(50, "number of pseudo-inputs K (mixture components)", positive_int, to_int)
    init_std: float = option(
        0.5, "the pseudo-inputs start as tanh of N(0, init_std^2) noise images", non_negative, to_float
    )


class VampMixture:
    """(1/K) sum_k N(mean_k, diag exp(logvar_k)) over the flattened latent; components (K, *latent shape)."""

    def __init__(self, components: Gaussian) -> None:
        self.components = components

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) per image: (batch, *latent shape) -> (batch,), (k, batch, *latent) -> (k, batch), by
        log-sum-exp over the components."""
        event = self.components.mean.dim() - 1
        lead = z.shape[: z.dim() - event]
        mean = self.components.mean.flatten(1).unsqueeze(0)  # (1, K, N)
        logvar = self.components.logvar.flatten(1).unsqueeze(0)
        flat = z.reshape(-1, mean.shape[2]).unsqueeze(1)  # (rows, 1, N)
        per_component = Gaussian(mean, logvar).log_density(flat).sum(2)  # (rows, K)
        return (torch.logsumexp(per_component, dim=1) - math.log(per_component.shape[1])).view(lead)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        mean, logvar = self.components.mean, self.components.logvar
        k = torch.randint(mean.shape[0], (n,), device=mean.device, generator=generator)
        return mean[k] + torch.exp(0.5 * logvar[k]) * torch.randn_like(mean[k])


class VampPrior(Prior[VampOptions]):
    """Mixture of the posteriors of K learned pseudo-inputs (VampPrior); its KL is a Monte Carlo estimate."""

    name = "vamp"
    Options = VampOptions
    gaussian = False

    def __init__(self, options: VampOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        self.pseudo = nn.Parameter(torch.randn(options.components, *ctx.image_shape) * options.init_std)

    def attach(self, model: GenerativeModel) -> None:
        self.refer("_encoder_norms", batch_norms(model.encoder))

    def extra_inputs(self) -> Tensor:
        return torch.tanh(self.pseudo)

    def forward(self, fwd: ForwardPass) -> VampMixture:
        assert fwd.extra_posterior is not None  # the model encodes extra_inputs() with x
        return VampMixture(fwd.extra_posterior)

    def mixture(self, model: GenerativeModel) -> VampMixture:
        """The mixture from the pseudo-inputs encoded now; batch norms in train mode use these K inputs'
        statistics without updating their running statistics."""
        with running_stats_frozen(getattr(self, "_encoder_norms", ())), torch.no_grad():
            # the base posteriors: with a flow transform, q(z|u_k) through the flow has no density at any z
            return VampMixture(model.transform.posterior(model.encoder(self.extra_inputs())))

    def sample(
        self,
        n: int,
        model: GenerativeModel,
        device: torch.device | str,
        fixed: Tensor | None = None,
        fixed_groups: int = 0,
    ) -> Tensor:
        z = self.mixture(model).sample(n).to(device)
        if fixed is not None and fixed_groups > 0:
            mask = self.layout.group_mask(range(fixed_groups), device=device)
            z = torch.where(mask, fixed.to(device).expand_as(z), z)
        return z


@hookimpl
def genvae_register_priors(register: RegisterComponent[Prior]) -> None:
    register(VampPrior)


@hookimpl
def genvae_register_presets(register: RegisterNamed[PresetSpec]) -> None:
    # The first run of the README: on the built-in shapes, 24 epochs (1,536 steps, about three minutes on
    # two CPU cores) give samples of recognisable circles, squares and triangles; the same networks with
    # a normal prior mix the kinds into blobs at this budget, because one Gaussian cannot hold the gaps
    # between three shapes and six colours.
    register(
        "cvae-vamp",
        {
            "image_size": 32,
            "channels": 3,
            "encoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
            "transform": {"name": "fc", "options": {"latent_dim": 16}},
            "decoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
            "prior": {"name": "vamp", "options": {"components": 50}},
            "losses": [{"name": "mse", "options": {"reduction": "sum"}}, {"name": "kl"}],
            "train": {"lr": 1e-3, "batch_size": 64, "epochs": 24},
        },
        help="convolutional VAE with a VampPrior and a 16-value latent; the README's first run "
        "(recognisable shapes in about three minutes on a CPU)",
    )
