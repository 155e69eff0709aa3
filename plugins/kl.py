"""``kl``: KL(q(z|x) || p(z)), with an optional weight per latent group and a weight over training.

This is where the KL weight per time step (crVAE: channel blocks) or per pyramid level (LapCVAE:
lambda_k) lives: ``group_weights``, one per group of the latent transform's layout, or, in the crVAE
paper's form (equation 1), ``alphas``: group t is weighted 1 - alpha_t.

Over training the term is multiplied by ``beta`` (beta-VAE, Higgins et al. 2017) and by a warm-up
factor of the training step s (``ForwardPass.step``; 1 outside training):

* ``warmup: none``: 1;
* ``warmup: linear`` (Bowman et al. 2016): min(1, s / warmup_steps), from 0 at the first step;
* ``warmup: cyclical`` (Fu et al. 2019): cycles of ``warmup_steps`` steps; in each, the factor rises
  linearly from 0 to 1 over the first ``cycle_ratio`` of the cycle and stays 1 for the rest:
  min(1, (s mod warmup_steps) / (cycle_ratio * warmup_steps)).

The closed form needs both sides to be diagonal Gaussians. A prior that is not one (``Prior.gaussian =
False``: the ``vamp`` mixture, a top-down prior) or a posterior through a flow (``LatentTransform.flow``:
planar, radial, IAF) has none: the term is then the Monte Carlo estimate log q(z|x) - log p(z) per image
(``ForwardPass.log_q``, which takes the flow's log-determinant off the base density, and the prior's
``log_prob``), averaged over ``mc_samples`` draws of z; with k posterior draws in the pass
(``ForwardPass.multi``) those are the draws.
"""

from __future__ import annotations

import attrs
import torch

from genvae.api import (
    BuildContext,
    ForwardPass,
    Loss,
    RegisterComponent,
    float_tuple,
    hookimpl,
    non_negative,
    one_of,
    option,
    positive_int,
    shorten,
    to_float,
    to_int,
)

WARMUPS = ("none", "linear", "cyclical")


@attrs.frozen
class KLOptions:
    group_weights: tuple[float, ...] = option(
        (),
        "weight per latent group (time step / pyramid level), empty = 1 for all; the loss weight multiplies it",
        converter=float_tuple,
    )
    alphas: tuple[float, ...] = option(
        (),
        "the crVAE paper's form: weight (1 - alpha_t) per latent group (time step), alpha_t in [0, 1]; "
        "instead of group_weights",
        converter=float_tuple,
    )

    beta: float = option(1.0, "beta-VAE: multiplies the KL term (with the loss weight)", non_negative, to_float)
    warmup: str = option(
        "none",
        "KL weight over training: none, linear (0 -> 1 over warmup_steps) or cyclical "
        "(repeats every warmup_steps: rises over cycle_ratio of it, then 1)",
        one_of(*WARMUPS),
    )
    warmup_steps: int = option(1000, "steps of the linear warm-up, or the length of one cycle", positive_int, to_int)
    cycle_ratio: float = option(
        0.5, "cyclical: the part of each cycle over which the weight rises, in (0, 1]", non_negative, to_float
    )
    mc_samples: int = option(
        1,
        "draws of z per image for the Monte Carlo KL, used when the prior is not one "
        "diagonal Gaussian (a mixture such as vamp); the first draw is the pass's z",
        positive_int,
        to_int,
    )

    def __attrs_post_init__(self) -> None:
        if not 0 < self.cycle_ratio <= 1:
            raise ValueError(f"cycle_ratio must lie in (0, 1], got {shorten(self.cycle_ratio)}")
        if any(w < 0 for w in self.group_weights):
            raise ValueError(f"group_weights must be >= 0, got {shorten(list(self.group_weights))}")
        if any(not 0 <= a <= 1 for a in self.alphas):
            raise ValueError(f"alphas must lie in [0, 1], got {shorten(list(self.alphas))}")
        if self.alphas and self.group_weights:
            raise ValueError("give group_weights or alphas (weights 1 - alpha_t), not both")

    def factor(self, step: int | None) -> float:
        """beta times the warm-up factor at training step ``step`` (None: outside training, full weight)."""
        if step is None or self.warmup == "none":
            return self.beta
        if self.warmup == "linear":
            return self.beta * min(1.0, step / self.warmup_steps)
        return self.beta * min(1.0, (step % self.warmup_steps) / (self.cycle_ratio * self.warmup_steps))

    @property
    def weights(self) -> tuple[float, ...]:
        """The weight per group: group_weights, or 1 - alpha_t; empty when neither is given."""
        return tuple(1.0 - a for a in self.alphas) if self.alphas else self.group_weights


class KLLoss(Loss[KLOptions]):
    """KL divergence of the posterior from the prior, summed over latent elements, batch mean."""

    name = "kl"
    Options = KLOptions
    role = "divergence"
    element_weights: torch.Tensor | None  # a buffer with group weights, else None

    def __init__(self, options: KLOptions, ctx: BuildContext, weight: float = 1.0) -> None:
        super().__init__(options, ctx, weight)
        layout = ctx.layout
        assert ctx.transform is not None  # ctx.layout has read it
        weights = options.weights
        transform = ctx.transform
        if not transform.stochastic:
            raise self.fail(
                f"latent transform '{transform.name}' is deterministic (its posterior is a point), so there is no "
                "KL to the prior; train it with its own loss (vq for a code-book)"
            )
        self.closed_form = (ctx.prior is None or getattr(ctx.prior, "gaussian", True)) and not transform.has_flow
        if weights and not self.closed_form:
            why = (
                f"latent transform '{transform.name}' is a flow"
                if transform.has_flow
                else f"prior '{ctx.prior.name if ctx.prior else ''}' is not one diagonal Gaussian"
            )
            raise self.fail(
                f"group weights need a KL that factorises over the latent; {why} (its KL is estimated per image)"
            )
        if weights:
            if len(weights) != layout.num_groups:
                what = "alphas" if options.alphas else "group_weights"
                raise self.fail(
                    f"{len(weights)} {what} given, but latent transform "
                    f"'{ctx.transform.name}' has {layout.num_groups} {layout.group_label}(s)"
                )
            self.register_buffer("element_weights", layout.element_weights(weights), persistent=False)
        else:
            self.element_weights = None
        self.layout = layout
        self._constant = options.warmup == "none" and options.beta == 1.0

    def forward(self, fwd: ForwardPass, phase: str) -> dict[str, torch.Tensor]:
        scale = self.weight if self._constant else self.weight * self.options.factor(fwd.step)
        if not self.closed_form:
            return {"kl": scale * self.monte_carlo(fwd).mean()}
        assert fwd.posterior is not None  # the model's forward sets it
        kl = fwd.posterior.kl(fwd.prior).flatten(1)
        if self.element_weights is not None:
            kl = kl * self.element_weights
        return {"kl": scale * kl.sum(1).mean()}

    def monte_carlo(self, fwd: ForwardPass) -> torch.Tensor:
        """Per image, the mean over draws z ~ q(z|x) of log q(z|x) - log p(z): an unbiased estimate of KL(q || p)
        for a prior with only ``log_prob`` or a posterior through a flow. The draws are the pass's k draws
        (``fwd.multi``) when it has them, else the pass's z and ``mc_samples - 1`` fresh ones."""
        assert fwd.z is not None and fwd.prior is not None  # the model's forward sets them
        if fwd.multi is not None:
            z, log_q = fwd.multi.z, fwd.multi.log_q
        else:
            z, log_q = fwd.z.unsqueeze(0), fwd.log_q.unsqueeze(0)
            if self.options.mc_samples > 1:  # all draws in one batch: (draws, n, *latent)
                more, more_log_q = fwd.draws(self.options.mc_samples - 1)
                z, log_q = torch.cat([z, more]), torch.cat([log_q, more_log_q])
        return (log_q - fwd.prior.log_prob(z)).mean(0)

    @torch.no_grad()
    def per_group(self, fwd: ForwardPass) -> torch.Tensor:
        """Unweighted KL per group, batch mean: (G,). For reports, not the training step. A prior that is not
        one diagonal Gaussian has no per-group KL: one group holding the Monte Carlo estimate."""
        if not self.closed_form:
            return self.monte_carlo(fwd).mean().reshape(1)
        assert fwd.posterior is not None  # the model's forward sets it
        return self.layout.per_group(fwd.posterior.kl(fwd.prior)).mean(0)


@hookimpl
def genvae_register_losses(register: RegisterComponent[Loss]) -> None:
    register(KLLoss)
