"""``mog``: a learnable mixture-of-Gaussians prior (as in Dilokthanakul et al. 2016, *Deep Unsupervised
Clustering with Gaussian Mixture VAEs*, and Tomczak and Welling 2018's "MoG" baseline to the VampPrior).

Over the flattened latent z in R^N, with K components whose means mu_k, log-variances log sigma_k^2 and mixing
logits w_k are all learned:

    p(z) = sum_k pi_k N(z; mu_k, diag sigma_k^2),        pi = softmax(w)
    log p(z) = logsumexp_k [ log pi_k + sum_n log N(z_n; mu_kn, sigma_kn^2) ]

The prior is not one diagonal Gaussian (``gaussian = False``), so the ``kl`` loss takes the Monte Carlo estimate
log q(z|x) - log p(z) per image, whose gradient reaches mu, log sigma^2 and w. The means start as
N(0, init_spread^2) draws (so the components are told apart from the first step), the log-variances at 0 and
the logits at 0 (equal weights).

Sampling draws a component k ~ Categorical(pi), then z ~ N(mu_k, sigma_k^2). With ``fixed`` groups (partial
sampling) the draw is from the exact conditional: the components are reweighted by how well they explain the
kept elements, pi_k N(z_fixed; mu_k, sigma_k^2) / sum_j (...) (the covariances are diagonal, so the kept and the
drawn elements are independent within a component), and the free elements come from the chosen component.
"""

from __future__ import annotations

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
    hookimpl,
    non_negative,
    option,
    positive_int,
    to_float,
    to_int,
)


@attrs.frozen
class MoGOptions:
    components: int = option(10, "number of mixture components K", positive_int, to_int)
    init_spread: float = option(
        1.0, "the component means start as N(0, init_spread^2) draws (0: all at the origin)", non_negative, to_float
    )


class GaussianMixture:
    """sum_k softmax(logits)_k N(mean_k, diag exp(logvar_k)) over the flattened latent of shape ``shape``.

    ``logits`` (K,), ``mean`` and ``logvar`` (K, N) with N the latent's size."""

    def __init__(self, logits: Tensor, mean: Tensor, logvar: Tensor, shape: tuple[int, ...]) -> None:
        self.logits, self.mean, self.logvar, self.shape = logits, mean, logvar, shape

    def component_log_prob(self, z: Tensor) -> Tensor:
        """log pi_k + log N(z; mu_k, sigma_k^2) for every component: (*lead, K) for z (*lead, *shape)."""
        lead = z.shape[: z.dim() - len(self.shape)]
        flat = z.reshape(-1, 1, self.mean.shape[1])  # (rows, 1, N)
        density = Gaussian(self.mean.unsqueeze(0), self.logvar.unsqueeze(0)).log_density(flat).sum(2)  # (rows, K)
        return (torch.log_softmax(self.logits, 0) + density).view(*lead, -1)

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) per image: (batch,) for z (batch, *shape), (k, batch) for k draws (k, batch, *shape)."""
        return torch.logsumexp(self.component_log_prob(z), dim=-1)

    def sample(self, n: int, fixed: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """n draws (n, *shape): a component k ~ pi, then N(mu_k, sigma_k^2). With ``fixed`` (1 or n, *shape) and a
        bool ``mask`` of the shape (True = kept), k is drawn from pi's posterior given the kept elements and the
        kept elements are ``fixed``'s."""
        logits = self.logits.expand(n, -1)
        if fixed is not None and mask is not None:
            keep = mask.flatten()
            kept = fixed.reshape(fixed.shape[0], 1, -1)[..., keep]  # (1 or n, 1, N_kept)
            g = Gaussian(self.mean[:, keep].unsqueeze(0), self.logvar[:, keep].unsqueeze(0))
            logits = torch.log_softmax(self.logits, 0) + g.log_density(kept).sum(2)  # (1 or n, K)
            logits = logits.expand(n, -1)
        k = torch.distributions.Categorical(logits=logits).sample()
        z = self.mean[k] + torch.exp(0.5 * self.logvar[k]) * torch.randn_like(self.mean[k])
        z = z.view(n, *self.shape)
        if fixed is not None and mask is not None:
            z = torch.where(mask, fixed.expand_as(z), z)
        return z


class MoGPrior(Prior[MoGOptions]):
    """Learnable mixture of K diagonal Gaussians over the latent; its KL is a Monte Carlo estimate."""

    name = "mog"
    Options = MoGOptions
    gaussian = False
    test_options = {"components": 3}

    def __init__(self, options: MoGOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        k, n = options.components, self.layout.numel
        self.means = nn.Parameter(torch.randn(k, n) * options.init_spread)
        self.logvars = nn.Parameter(torch.zeros(k, n))
        self.weights = nn.Parameter(torch.zeros(k))  # mixing logits: softmax gives pi

    def mixture(self) -> GaussianMixture:
        """The current mixture (with gradient to means, log-variances and weights)."""
        return GaussianMixture(self.weights, self.means, self.logvars, tuple(self.layout.shape))

    def forward(self, fwd: ForwardPass) -> GaussianMixture:
        return self.mixture()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        model: GenerativeModel,
        device: torch.device | str,
        fixed: Tensor | None = None,
        fixed_groups: int = 0,
    ) -> Tensor:
        mixture = self.mixture()
        if fixed is None or fixed_groups <= 0:
            return mixture.sample(n).to(device)
        mask = self.layout.group_mask(range(fixed_groups), device=self.means.device)
        return mixture.sample(n, fixed.to(self.means.device), mask).to(device)


@hookimpl
def genvae_register_priors(register: RegisterComponent[Prior]) -> None:
    register(MoGPrior)


@hookimpl
def genvae_register_presets(register: RegisterNamed[PresetSpec]) -> None:
    register(
        "vae-mog",
        {
            "image_size": 32,
            "channels": 1,
            "encoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
            "transform": {"name": "fc", "options": {"latent_dim": 16}},
            "decoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
            "prior": {"name": "mog", "options": {"components": 10}},
            "losses": [{"name": "bce"}, {"name": "kl"}],
            "train": {"lr": 1e-3, "batch_size": 64},
        },
        help="convolutional VAE, 16-value latent, learnable mixture of 10 Gaussians as the prior, BCE + KL",
    )
