"""``beta-tc``: the KL term split into three parts, each with its own weight (Chen, Li, Grosse and Duvenaud,
*Isolating Sources of Disentanglement in VAEs*, NeurIPS 2018: the beta-TCVAE).

With n the data index, q(z) = (1/N) sum_n q(z|x_n) the aggregate posterior and q(z_d) its marginals, the
batch-averaged KL(q(z|x) || p(z)) is, in expectation over z ~ q(z|x),

    E[log q(z|x) - log p(z)] = E[log q(z|x) - log q(z)]                  index-code MI     (alpha)
                             + E[log q(z) - log prod_d q(z_d)]          total correlation (beta)
                             + E[log prod_d q(z_d) - log p(z)]          dimension-wise KL (gamma)

over the flattened latent (every element a dimension d, whatever the transform's layout). q(z) and q(z_d) at the
batch's samples z_i are estimated from the batch of size M, with m[i, j, d] = log q(z_i,d | x_j):

* ``mws`` (minibatch-weighted sampling, the paper's equation (S6)):
  log q(z_i) ~ logsumexp_j sum_d m[i, j, d] - log(N M), log q(z_i,d) ~ logsumexp_j m[i, j, d] - log(N M);
* ``mss`` (minibatch-stratified sampling): the own image's term is exact and the others stand for the rest of the
  data set: weights w_ii = 1/N, w_ij = (N - 1) / (N (M - 1)) for j != i (they sum to 1), and
  log q(z_i) ~ logsumexp_j (log w_ij + sum_d m[i, j, d]), the same per dimension. (This is the stratified
  estimator as the paper's appendix defines it; it needs M >= 2.)

N is ``dataset_size``: the engine does not tell a loss the size of the data set, so it is an option (60000, the
size of MNIST's training set, by default). It shifts the MWS estimates of MI and TC by constants
(log N and (D - 1) log N at most), never their gradients; set it to the data's size for meaningful logged parts.

The three parts telescope: with alpha = beta = gamma = 1 their sum is log q(z|x) - log p(z) at the same samples,
the Monte Carlo KL, whatever the estimator. beta > 1 penalises the total correlation alone (the paper keeps
alpha = gamma = 1; the preset takes beta = 6).

q(z|x_j) must have a density at every other image's sample, so the latent transform must be a diagonal Gaussian
without a flow (a flow's posterior has a density only at its own samples) and stochastic; the dimension-wise KL is
a sum of per-dimension KLs only for a prior that factorises over the latent, so the prior must be one diagonal
Gaussian. Both are refused at build time otherwise. The three unweighted parts are logged (``beta-tc.mi``,
``beta-tc.tc``, ``beta-tc.dim_kl``).
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from torch import Tensor

from genvae.api import (
    BuildContext,
    ForwardPass,
    Gaussian,
    Loss,
    PresetSpec,
    RegisterComponent,
    RegisterNamed,
    hookimpl,
    non_negative,
    one_of,
    option,
    positive_int,
    to_float,
    to_int,
)

ESTIMATORS = ("mws", "mss")


@attrs.frozen
class BetaTCOptions:
    alpha: float = option(1.0, "weight of the index-code mutual information", non_negative, to_float)
    beta: float = option(6.0, "weight of the total correlation (the paper's beta)", non_negative, to_float)
    gamma: float = option(1.0, "weight of the dimension-wise KL", non_negative, to_float)
    dataset_size: int = option(
        60000,
        "N, the number of training images the aggregate posterior averages over (not known at build time: "
        "set it to your data's size; 60000 is MNIST's)",
        positive_int,
        to_int,
    )
    estimator: str = option(
        "mws",
        "how q(z) is estimated from the batch: mws (minibatch-weighted) or mss (minibatch-stratified)",
        one_of(*ESTIMATORS),
    )


def log_weights(batch: int, dataset_size: int, estimator: str, like: Tensor) -> Tensor:
    """log w_ij, (batch, batch), in the dtype and on the device of ``like``: the weight of q(z_i | x_j) in the
    estimate of q(z_i)."""
    if estimator == "mws":
        return torch.full((batch, batch), -math.log(dataset_size * batch), dtype=like.dtype, device=like.device)
    if batch < 2:
        raise ValueError("beta-tc's mss estimator needs batches of at least 2 images; use estimator mws")
    n = dataset_size
    off = math.log((n - 1) / (n * (batch - 1))) if n > 1 else -math.inf
    w = torch.full((batch, batch), off, dtype=like.dtype, device=like.device)
    w.fill_diagonal_(-math.log(n))
    return w


def decompose(
    posterior: Gaussian, z: Tensor, log_p: Tensor, dataset_size: int, estimator: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Per image (batch,): the index-code MI, the total correlation and the dimension-wise KL at the samples z
    (batch, *latent) of q(z|x), with log p(z) per image ``log_p``."""
    batch = z.shape[0]
    mean, logvar = posterior.mean.flatten(1), posterior.logvar.flatten(1)
    flat = z.flatten(1)
    # m[i, j, d] = log q(z_i,d | x_j)
    m = Gaussian(mean.unsqueeze(0), logvar.unsqueeze(0)).log_density(flat.unsqueeze(1))
    log_w = log_weights(batch, dataset_size, estimator, z)
    log_q_zx = m.diagonal(dim1=0, dim2=1).sum(0)  # log q(z_i | x_i)
    log_q_z = torch.logsumexp(log_w + m.sum(2), dim=1)
    log_prod_marginals = torch.logsumexp(log_w.unsqueeze(2) + m, dim=1).sum(1)
    return log_q_zx - log_q_z, log_q_z - log_prod_marginals, log_prod_marginals - log_p


class BetaTCLoss(Loss[BetaTCOptions]):
    """The KL split into index-code MI, total correlation and dimension-wise KL, weighted alpha, beta, gamma."""

    name = "beta-tc"
    Options = BetaTCOptions
    role = "divergence"

    def __init__(self, options: BetaTCOptions, ctx: BuildContext, weight: float = 1.0) -> None:
        super().__init__(options, ctx, weight)
        transform = ctx.transform
        assert transform is not None  # built before the losses
        if not transform.stochastic:
            raise self.fail(
                f"latent transform '{transform.name}' is deterministic (its posterior is a point): "
                "there is no KL to decompose"
            )
        if transform.has_flow:
            raise self.fail(
                f"minibatch-weighted sampling needs q(z|x)'s density at other images' samples; latent transform "
                f"'{transform.name}' is a flow, whose posterior has a density only at its own samples"
            )
        if ctx.prior is not None and not ctx.prior.gaussian:
            raise self.fail(
                f"the dimension-wise KL needs a prior that factorises over the latent; prior '{ctx.prior.name}' "
                "is not one diagonal Gaussian"
            )

    def forward(self, fwd: ForwardPass, phase: str) -> dict[str, Tensor]:
        o = self.options
        assert fwd.posterior is not None and fwd.z is not None
        mi, tc, dim_kl = decompose(fwd.posterior, fwd.z, fwd.prior.log_prob(fwd.z), o.dataset_size, o.estimator)
        fwd.log("beta-tc.mi", mi.mean())
        fwd.log("beta-tc.tc", tc.mean())
        fwd.log("beta-tc.dim_kl", dim_kl.mean())
        return {"beta-tc": self.weight * (o.alpha * mi + o.beta * tc + o.gamma * dim_kl).mean()}


@hookimpl
def genvae_register_losses(register: RegisterComponent[Loss]) -> None:
    register(BetaTCLoss)


#: the networks every model of the zoo shares, so the side-by-side benchmark compares objectives alone
ZOO_NETWORK: dict[str, Any] = {
    "image_size": 32,
    "channels": 1,
    "encoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
    "transform": {"name": "fc", "options": {"latent_dim": 16}},
    "decoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
    "prior": {"name": "normal"},
    "train": {"lr": 1e-3, "batch_size": 64},
}


@hookimpl
def genvae_register_presets(register: RegisterNamed[PresetSpec]) -> None:
    register(
        "beta-tcvae",
        {
            **ZOO_NETWORK,
            "losses": [{"name": "bce"}, {"name": "beta-tc", "options": {"beta": 6.0}}],
        },
        help="beta-TCVAE (Chen et al. 2018): the zoo's conv VAE with the KL split into MI, total correlation "
        "(weight 6) and dimension-wise KL, minibatch-weighted sampling",
    )
