"""A flow transform and a multi-sample loss, written against ``genvae.api`` alone: the two 0.3 contracts a plugin
of the VAE family uses most (docs/writing-a-plugin.md, "A flow and a multi-sample loss").

* latent transform ``tanh-flow``: a fully-connected Gaussian posterior (features -> mean, log-variance of a
  ``latent_dim`` vector; z -> u of the encoder's feature shape) whose samples go through an elementwise flow
  z = z0 + s * tanh(z0) with s = -1 + softplus(s') > -1 per latent value, so dz/dz0 = 1 + s (1 - tanh^2 z0) > 0
  (monotone: invertible) and log|det| = sum_i log(1 + s_i (1 - tanh^2 z0_i)). Overriding
  ``LatentTransform.flow`` is all it takes: the engine applies it wherever a posterior sample is drawn, and
  ``ForwardPass.log_q`` takes the log-determinant off the base density, so ``kl`` turns to its Monte Carlo form.
* loss ``renyi``: the variational Renyi bound (Li & Turner, *Renyi Divergence Variational Inference*, NeurIPS
  2016) of k draws per image, L_alpha = 1 / (1 - alpha) log (1/k) sum_i w_i^(1 - alpha), log w_i = log p(x|z_i)
  + log p(z_i) - log q(z_i|x), with a Gaussian likelihood of fixed ``sigma``. alpha = 0 is the IWAE bound,
  alpha -> 1 the ELBO (taken exactly at alpha = 1). It asks for k draws (``Loss.posterior_samples``), reads them
  from ``ForwardPass.multi`` (their ``log_q`` already holds a flow's log-determinant), logs the ELBO of the same
  draws (``ForwardPass.log``, never in the objective) and is the whole objective (``role = "objective"``: genvae
  adds no ``mse`` or ``kl`` beside it).
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genvae.api import (
    BuildContext,
    ForwardPass,
    Gaussian,
    LatentLayout,
    LatentTransform,
    Loss,
    non_negative,
    option,
    positive,
    positive_int,
    to_float,
    to_int,
)


@attrs.frozen
class TanhFlowOptions:
    latent_dim: int = option(16, "size of the latent vector z", positive_int, to_int)


class TanhFlow(LatentTransform[TanhFlowOptions]):
    """Fully-connected Gaussian posterior with an elementwise flow z = z0 + s tanh(z0), s > -1."""

    name = "tanh-flow"
    Options = TanhFlowOptions
    test_options = {"latent_dim": 4}

    def __init__(self, options: TanhFlowOptions, ctx: BuildContext):
        super().__init__(options, ctx)
        assert ctx.encoder is not None, "the encoder is built before the latent transform"
        features = ctx.encoder.output_shape
        d = options.latent_dim
        self.layout = LatentLayout((d,))
        self.output_shape = tuple(features)
        self.to_params = nn.Linear(math.prod(features), 2 * d)
        self.from_z = nn.Linear(d, math.prod(features))
        self.s_raw = nn.Parameter(torch.zeros(d))  # s = -1 + log 2 at the start: the flow is no identity

    def scale(self) -> Tensor:
        """s = -1 + softplus(s') > -1: each value's map stays increasing."""
        return F.softplus(self.s_raw) - 1.0

    def posterior(self, features: Tensor, fwd: ForwardPass | None = None) -> Gaussian:
        mean, logvar = self.to_params(features.flatten(1)).chunk(2, dim=1)
        return Gaussian(mean, logvar)

    def flow(self, z0: Tensor, fwd: ForwardPass | None = None) -> tuple[Tensor, Tensor]:
        t = torch.tanh(z0)
        s = self.scale()
        log_det = torch.log1p(s * (1.0 - t * t)).sum(1)
        if fwd is not None:
            fwd.log("tanh-flow.log_det", log_det)  # a diagnostic in metrics.jsonl, never in the objective
        return z0 + s * t, log_det

    def generate(self, z: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        return torch.relu(self.from_z(z)).view(-1, *self.output_shape)

    def generation_modules(self) -> list[nn.Module]:
        return [self.from_z]


@attrs.frozen
class RenyiOptions:
    k: int = option(5, "posterior draws per image", positive_int, to_int)
    alpha: float = option(0.5, "the Renyi order: 0 = the IWAE bound, 1 = the ELBO", non_negative, to_float)
    sigma: float = option(1.0, "the pixels' standard deviation under the Gaussian likelihood", positive, to_float)


class RenyiBound(Loss[RenyiOptions]):
    """The variational Renyi bound of k posterior draws (Li & Turner 2016); the whole objective."""

    name = "renyi"
    Options = RenyiOptions
    role = "objective"  # genvae adds no default reconstruction or divergence loss beside this one

    def posterior_samples(self) -> int:
        return self.options.k

    def log_weights(self, fwd: ForwardPass) -> Tensor:
        """log p(x|z) + log p(z) - log q(z|x) per draw and image, (k, B); one draw when the pass has one."""
        if fwd.multi is not None:
            z, log_q, x_hat = fwd.multi.z, fwd.multi.log_q, fwd.multi.x_hat
        else:
            assert fwd.z is not None and fwd.x_hat is not None
            z, log_q, x_hat = fwd.z.unsqueeze(0), fwd.log_q.unsqueeze(0), fwd.x_hat.unsqueeze(0)
        sigma = self.options.sigma
        log_px = -0.5 * (math.log(2 * math.pi * sigma**2) + (fwd.x - x_hat).pow(2) / sigma**2)
        return log_px.flatten(2).sum(2) + fwd.prior.log_prob(z) - log_q

    def forward(self, fwd: ForwardPass, phase: str) -> dict[str, Tensor]:
        log_w = self.log_weights(fwd)
        fwd.log("renyi.elbo", log_w.mean())
        alpha = self.options.alpha
        if alpha == 1.0:
            bound = log_w.mean(0)
        else:
            scaled = (1.0 - alpha) * log_w
            bound = (torch.logsumexp(scaled, 0) - math.log(log_w.shape[0])) / (1.0 - alpha)
        return {"renyi": -self.weight * bound.mean()}
