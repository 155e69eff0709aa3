"""``iwae``: the importance-weighted bound (Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders*,
ICLR 2016), and MIWAE (Rainforth et al., *Tighter Variational Bounds are Not Necessarily Better*, ICML 2018).

With k draws z_1..z_k ~ q(z|x) per image (the pass's ``multi``: one batch through the transform and decoder),

    log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x)
    L_k(x) = log (1/k) sum_i w_i = logsumexp_i(log w_i) - log k  <=  log p(x),

and L_1 is the ELBO; L_k grows with k (towards log p(x) as k -> infinity). The loss is -mean_batch L_k. log q is
``MultiSample.log_q``, which already takes a flow's log-determinant off the base density (planar, radial, IAF),
and log p(z) is the prior's ``log_prob`` (any prior: a Gaussian, the ``vamp`` mixture). The gradient is the plain
reparameterised one of the paper (no doubly-reparameterised estimator).

``m`` > 1 is MIWAE: k*m draws in m groups of k, the loss -mean_batch (1/m) sum_j L_k(group j), which trades the
bound's tightness for a better signal to the encoder (Rainforth et al.'s finding). m = 1 is IWAE.

log p(x|z), summed over the pixels:

* ``bernoulli`` (default): the pixels scaled to [0, 1] as targets under Bernoulli(sigmoid(s * output)), read in the
  decoder's output space as ``bce`` does (s = 2 for tanh logits, 1 for Bernoulli logits; a decoder whose output is
  the image has no logits and is refused): -BCE(x, p), so with k = 1 the loss is ``bce`` + the Monte Carlo ``kl``;
* ``gaussian``: N(x; x_hat, sigma^2) per pixel in [-1, 1], sigma fixed by the option ``sigma``.

The ELBO (mean over the draws of log w) is logged as ``iwae.elbo`` (never part of the objective), so a run shows
the gap between the two bounds. The loss is the whole objective (``role = "objective"``): ``genvae build --loss
iwae`` adds no ``mse`` or ``kl``.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from genvae.api import (
    BuildContext,
    ForwardPass,
    Loss,
    hookimpl,
    one_of,
    option,
    positive,
    positive_int,
    to_float,
    to_int,
)

#: the factor from a decoder's output to Bernoulli logits, by output space (as plugins/bce.py reads it)
LOGIT_SCALE = {"tanh": 2.0, "bernoulli": 1.0}
LIKELIHOODS = ("bernoulli", "gaussian")
LOG_2PI = math.log(2 * math.pi)


@attrs.frozen
class IWAEOptions:
    k: int = option(5, "importance samples per bound (k = 1: the ELBO)", positive_int, to_int)
    m: int = option(1, "MIWAE: bounds of k samples averaged per image (k*m draws); 1 = IWAE", positive_int, to_int)
    likelihood: str = option(
        "bernoulli", "log p(x|z): bernoulli (pixels in [0, 1], as bce) or gaussian (fixed sigma)", one_of(*LIKELIHOODS)
    )
    sigma: float = option(1.0, "gaussian: the pixels' standard deviation (images in [-1, 1])", positive, to_float)


class IWAELoss(Loss[IWAEOptions]):
    """Importance-weighted bound of k posterior draws (IWAE; MIWAE with m groups); the whole objective."""

    name = "iwae"
    Options = IWAEOptions
    role = "objective"

    def __init__(self, options: IWAEOptions, ctx: BuildContext, weight: float = 1.0) -> None:
        super().__init__(options, ctx, weight)
        decoder = ctx.decoder
        output = decoder.output if decoder is not None else "tanh"
        if options.likelihood == "bernoulli" and output not in LOGIT_SCALE:
            name = decoder.name if decoder is not None else ""
            raise self.fail(
                f"likelihood bernoulli needs logits, but decoder '{name}' outputs the '{output}' space; use it with "
                f"a decoder whose output is {' or '.join(LOGIT_SCALE)}, or likelihood gaussian"
            )
        self.scale = LOGIT_SCALE.get(output, 1.0)

    def posterior_samples(self) -> int:
        return self.options.k * self.options.m

    def log_likelihood(self, x: Tensor, output: Tensor, x_hat: Tensor) -> Tensor:
        """log p(x | z) per draw and image, (n, B): the pixels' log-likelihood summed over each image."""
        if self.options.likelihood == "bernoulli":
            target = ((x + 1.0) * 0.5).expand_as(output)
            values = -F.binary_cross_entropy_with_logits(self.scale * output, target, reduction="none")
        else:
            sigma = self.options.sigma
            values = -0.5 * (LOG_2PI + 2 * math.log(sigma) + (x - x_hat).pow(2) / sigma**2)
        return values.flatten(2).sum(2)

    def log_weights(self, fwd: ForwardPass) -> Tensor:
        """log w = log p(x|z) + log p(z) - log q(z|x) of the pass's draws, (n, B): its k*m draws (``fwd.multi``),
        or its one z where the pass has one (evaluation)."""
        multi = fwd.multi
        if multi is not None:
            n = min(multi.k, self.posterior_samples())
            z, log_q, output, x_hat = multi.z[:n], multi.log_q[:n], multi.decoder_output[:n], multi.x_hat[:n]
        else:
            assert fwd.z is not None and fwd.decoder_output is not None and fwd.x_hat is not None
            z, log_q = fwd.z.unsqueeze(0), fwd.log_q.unsqueeze(0)
            output, x_hat = fwd.decoder_output.unsqueeze(0), fwd.x_hat.unsqueeze(0)
        return self.log_likelihood(fwd.x, output, x_hat) + fwd.prior.log_prob(z) - log_q

    def bound(self, log_w: Tensor) -> Tensor:
        """L_k per image (B,): logsumexp over each group of k draws less log k, averaged over the m groups (fewer
        draws than k*m, as in evaluation: one group of all of them)."""
        n = log_w.shape[0]
        k = self.options.k if n == self.posterior_samples() else n
        groups = log_w.view(n // k, k, -1)
        return (torch.logsumexp(groups, dim=1) - math.log(k)).mean(0)

    def forward(self, fwd: ForwardPass, phase: str) -> dict[str, Tensor]:
        log_w = self.log_weights(fwd)
        fwd.log(f"{self.name}.elbo", log_w.mean())
        return {"iwae": -self.weight * self.bound(log_w).mean()}


def _preset(**options: Any) -> dict[str, Any]:
    return {
        "image_size": 32,
        "channels": 1,
        "encoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
        "transform": {"name": "fc", "options": {"latent_dim": 16}},
        "decoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
        "prior": {"name": "normal"},
        "losses": [{"name": "iwae", "options": options}],
        "train": {"lr": 1e-3, "batch_size": 64},
    }


@hookimpl
def genvae_register_losses(register: Any) -> None:
    register(IWAELoss)


@hookimpl
def genvae_register_presets(register: Any) -> None:
    register(
        "iwae",
        _preset(k=5),
        help="the zoo's conv VAE (16-value fc latent) trained on the importance-weighted bound, k = 5 (Bernoulli)",
    )
    register(
        "miwae",
        _preset(k=5, m=3),
        help="the zoo's conv VAE trained on MIWAE: 3 importance-weighted bounds of k = 5 averaged (15 draws)",
    )
