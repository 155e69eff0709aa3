"""``top-down``: the generative half of a two-layer hierarchical VAE (the two-stochastic-layer models of Burda et al.
2016, *Importance Weighted Autoencoders*, and Sønderby et al. 2016, *Ladder Variational Autoencoders*):

    p(z) = p(z2) p(z1 | z2),     p(z2) = N(0, I),     p(z1 | z2) = N(mu(z2), diag sigma^2(z2)),

with (mu, log sigma^2) from a small MLP of the upper latent z2 (option ``hidden``). The latent is the latent
transform's two groups, in order: group 0 is the upper z2, group 1 the lower z1 (``--set transform.groups=2`` on
the ``fc`` transform; any transform whose layout has exactly two groups serves). The decoder reads both.

    log p(z) = sum_i log N(z2_i; 0, 1) + sum_j log N(z1_j; mu_j(z2), sigma_j^2(z2))

is computed for every draw from that draw's OWN upper group, so it is right for the pass's z, for k posterior
draws (leading draw dims) and for prior samples alike. The prior is not one diagonal Gaussian (``gaussian =
False``): the ``kl`` loss takes the Monte Carlo estimate log q(z1, z2 | x) - log p(z2) - log p(z1 | z2) per image;
its gradient reaches the MLP (through mu, sigma^2) and the encoder (through z, both groups).

The posterior is the transform's: q(z1, z2 | x) a diagonal Gaussian from the bottom-up encoder (the IWAE paper's
two-layer model takes q(z1|x) q(z2|z1); a ladder VAE merges top-down and bottom-up terms; neither is here).

The MLP's last layer starts at zero, so the prior starts as N(0, I) on both groups. Sampling is ancestral: z2
first, then z1 given it; with ``fixed`` and ``fixed_groups`` = 1 the upper group is kept and z1 is drawn from
p(z1 | the kept z2), the exact conditional.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor, nn

from genvae.api import (
    ACTIVATIONS,
    BuildContext,
    ForwardPass,
    Gaussian,
    GenerativeModel,
    PresetSpec,
    Prior,
    RegisterComponent,
    RegisterNamed,
    hookimpl,
    int_tuple,
    mlp,
    one_of,
    option,
    positive_ints,
)


@attrs.frozen
class TopDownOptions:
    hidden: tuple[int, ...] = option(
        (64,), "widths of the hidden layers of the MLP z2 -> (mu, log sigma^2) of z1", positive_ints, int_tuple
    )
    activation: str = option("relu", "activation between the MLP's layers", one_of(*ACTIVATIONS))


class TopDownDistribution:
    """p(z2) p(z1 | z2) over a latent of shape ``shape`` whose flattened first ``upper`` elements are z2."""

    def __init__(self, net: nn.Module, upper: int, shape: tuple[int, ...]) -> None:
        self.net, self.upper, self.shape = net, upper, shape

    def conditional(self, z2: Tensor) -> Gaussian:
        """p(z1 | z2) for z2 (rows, upper): a Gaussian (rows, lower)."""
        mean, logvar = self.net(z2).chunk(2, dim=-1)
        return Gaussian(mean, logvar)

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z2) + log p(z1 | z2) per image, each draw's z1 conditioned on its own z2: (*lead,) for z
        (*lead, *shape)."""
        lead = z.shape[: z.dim() - len(self.shape)]
        flat = z.reshape(-1, math.prod(self.shape))
        z2, z1 = flat[:, : self.upper], flat[:, self.upper :]
        upper = Gaussian(torch.zeros_like(z2), torch.zeros_like(z2)).log_density(z2).sum(1)
        lower = self.conditional(z2).log_density(z1).sum(1)
        return (upper + lower).view(lead)

    def sample(self, n: int, fixed: Tensor | None = None, fixed_groups: int = 0) -> Tensor:
        """Ancestral draws (n, *shape): z2 ~ N(0, I) (or ``fixed``'s upper group), then z1 ~ p(z1 | z2) (or
        ``fixed``'s lower group when both are kept)."""
        device = next(self.net.parameters()).device
        kept = None if fixed is None or fixed_groups <= 0 else fixed.to(device).reshape(fixed.shape[0], -1)
        z2 = torch.randn(n, self.upper, device=device) if kept is None else kept[:, : self.upper].expand(n, -1)
        if kept is not None and fixed_groups >= 2:
            z1 = kept[:, self.upper :].expand(n, -1)
        else:
            z1 = self.conditional(z2).sample()
        return torch.cat([z2, z1], dim=1).view(n, *self.shape)


class TopDownPrior(Prior[TopDownOptions]):
    """Two-layer top-down prior p(z2) p(z1|z2): N(0, I) on the upper group, an MLP Gaussian of it on the lower."""

    name = "top-down"
    Options = TopDownOptions
    gaussian = False
    test_options = {"hidden": [8]}

    def __init__(self, options: TopDownOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        layout = self.layout
        if layout.num_groups != 2:
            name = ctx.transform.name if ctx.transform is not None else "none"
            raise self.fail(
                f"needs a latent of two groups (upper z2, lower z1); latent transform '{name}' has "
                f"{layout.num_groups} {layout.group_label}(s) (with 'fc': --set transform.groups=2)"
            )
        upper, lower = layout.group_sizes
        self.upper = upper
        head = nn.Linear(options.hidden[-1], 2 * lower)
        nn.init.zeros_(head.weight)  # p(z1 | z2) starts as N(0, I)
        nn.init.zeros_(head.bias)
        self.net = nn.Sequential(mlp([upper, *options.hidden], options.activation), head)

    def distribution(self) -> TopDownDistribution:
        return TopDownDistribution(self.net, self.upper, tuple(self.layout.shape))

    def forward(self, fwd: ForwardPass) -> TopDownDistribution:
        return self.distribution()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        model: GenerativeModel,
        device: torch.device | str,
        fixed: Tensor | None = None,
        fixed_groups: int = 0,
    ) -> Tensor:
        return self.distribution().sample(n, fixed, fixed_groups).to(device)


@hookimpl
def genvae_register_priors(register: RegisterComponent[Prior]) -> None:
    register(TopDownPrior)


@hookimpl
def genvae_register_presets(register: RegisterNamed[PresetSpec]) -> None:
    register(
        "two-layer-vae",
        {
            "image_size": 32,
            "channels": 1,
            "encoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
            "transform": {"name": "fc", "options": {"latent_dim": 16, "groups": 2}},
            "decoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
            "prior": {"name": "top-down", "options": {"hidden": [64]}},
            "losses": [{"name": "bce"}, {"name": "kl"}],
            "train": {"lr": 1e-3, "batch_size": 64},
        },
        help="two-layer hierarchical VAE: conv encoder/decoder, latent z2 (8) over z1 (8) with p(z1|z2) from an "
        "MLP, BCE + KL (Monte Carlo)",
    )
