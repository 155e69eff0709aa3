"""``mmd``: the maximum mean discrepancy between the aggregate posterior and the prior, the divergence of the
Wasserstein auto-encoder (Tolstikhin, Bousquet, Gelly and Schoelkopf, *Wasserstein Auto-Encoders*, ICLR 2018:
WAE-MMD) and of the InfoVAE / MMD-VAE (Zhao, Song and Ermon, *InfoVAE: Balancing Learning and Inference in
Variational Autoencoders*, AAAI 2019).

With the batch's posterior samples z_1..z_n (``ForwardPass.z``, flattened: every latent element a dimension,
d of them) and n samples y_1..y_n of the prior (``Prior.sample``), the unbiased estimate of MMD^2(q(z), p(z)) is

    MMD^2 = 1/(n(n-1)) sum_{i != j} k(z_i, z_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j) - 2/n^2 sum_{i, j} k(z_i, y_j)

and the term is ``lam`` times it. Kernels (``kernel``), summed over ``scales`` s, with C_s = 2 d s (the WAE
paper's C = 2 d sigma^2 for a prior N(0, sigma^2 I), times each scale; its code sums s over 0.1 ... 10):

* ``imq`` (inverse multiquadric, the WAE paper's): k(a, b) = sum_s C_s / (C_s + ||a - b||^2);
* ``rbf``: k(a, b) = sum_s exp(-||a - b||^2 / C_s) (a Gaussian of variance d s per scale).

The prior's samples carry no gradient for a fixed prior (``normal``); only the posterior's samples are trained
towards the prior. The estimate is zero in expectation when the two distributions are equal, and can be negative.

Presets: ``wae-mmd`` (a reconstruction plus ``mmd`` with lam = 10, the WAE paper's MNIST setting; no KL: ``mmd`` is
the divergence, so none is added; the encoder stays a Gaussian, its samples are the z the MMD sees) and
``info-vae`` (the InfoVAE objective E[log p(x|z)] - (1 - alpha) KL(q(z|x) || p(z)) - (alpha + lambda - 1) MMD:
``kl`` with weight 1 - alpha and ``mmd`` with lam = alpha + lambda - 1; the preset takes alpha = 0, lambda = 1000:
the full ELBO plus 999 times the MMD, see docs/disentangling-and-mmd.md).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor

from genvae.api import (
    BuildContext,
    ForwardPass,
    Loss,
    PresetSpec,
    RegisterComponent,
    RegisterNamed,
    expects,
    float_tuple,
    hookimpl,
    non_negative,
    one_of,
    option,
    shorten,
    to_float,
)

KERNELS = ("imq", "rbf")


@expects("a list of positive numbers")
def _scales(instance: Any, attribute: Any, value: tuple[float, ...]) -> None:
    if not value or min(value) <= 0:
        raise ValueError(f"{attribute.name} must list positive numbers, got {shorten(list(value))}")


@attrs.frozen
class MMDOptions:
    lam: float = option(10.0, "weight of the MMD^2 estimate (the WAE paper's lambda)", non_negative, to_float)
    kernel: str = option("imq", "imq (inverse multiquadric, the WAE paper's) or rbf (Gaussian)", one_of(*KERNELS))
    scales: tuple[float, ...] = option(
        (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
        "the kernel is summed over these scales s, each with C = 2 * latent size * s",
        _scales,
        float_tuple,
    )


def kernel_matrix(a: Tensor, b: Tensor, kernel: str, scales: tuple[float, ...]) -> Tensor:
    """k(a_i, b_j), (len(a), len(b)), for rows a (n, d) and b (m, d), summed over the scales."""
    d = a.shape[1]
    sq = (a.unsqueeze(1) - b.unsqueeze(0)).pow(2).sum(2)
    total = torch.zeros_like(sq)
    for s in scales:
        c = 2.0 * d * s
        total = total + (c / (c + sq) if kernel == "imq" else torch.exp(-sq / c))
    return total


def mmd2(x: Tensor, y: Tensor, kernel: str, scales: tuple[float, ...]) -> Tensor:
    """The unbiased estimate of MMD^2 between the samples x (n, d) and y (m, d), n, m >= 2."""
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples on each side, got {n} and {m}")
    kxx, kyy, kxy = (kernel_matrix(a, b, kernel, scales) for a, b in ((x, x), (y, y), (x, y)))
    off_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    off_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return off_x + off_y - 2.0 * kxy.mean()


class MMDLoss(Loss[MMDOptions]):
    """MMD^2 between the batch's posterior samples and as many prior samples (WAE-MMD, InfoVAE)."""

    name = "mmd"
    Options = MMDOptions
    role = "divergence"

    def __init__(self, options: MMDOptions, ctx: BuildContext, weight: float = 1.0) -> None:
        super().__init__(options, ctx, weight)

    def forward(self, fwd: ForwardPass, phase: str) -> dict[str, Tensor]:
        z = fwd.z
        assert z is not None
        model = fwd.model
        y = model.prior.sample(z.shape[0], model, z.device).to(z.dtype)
        value = mmd2(z.flatten(1), y.flatten(1), self.options.kernel, self.options.scales)
        return {"mmd": self.weight * self.options.lam * value}


@hookimpl
def genvae_register_losses(register: RegisterComponent[Loss]) -> None:
    register(MMDLoss)


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

#: InfoVAE's alpha and lambda for the preset: alpha = 0 keeps the whole KL (weight 1 - alpha), lambda = 1000 puts
#: the MMD (weight alpha + lambda - 1) on the scale of a summed reconstruction
INFO_ALPHA, INFO_LAMBDA = 0.0, 1000.0


@hookimpl
def genvae_register_presets(register: RegisterNamed[PresetSpec]) -> None:
    register(
        "wae-mmd",
        {**ZOO_NETWORK, "losses": [{"name": "bce"}, {"name": "mmd", "options": {"lam": 10.0, "kernel": "imq"}}]},
        help="WAE-MMD (Tolstikhin et al. 2018): the zoo's conv auto-encoder with an IMQ-kernel MMD between the "
        "posterior's samples and the prior (lambda 10), no KL",
    )
    register(
        "info-vae",
        {
            **ZOO_NETWORK,
            "losses": [
                {"name": "bce"},
                {"name": "kl", "weight": 1.0 - INFO_ALPHA},
                {"name": "mmd", "options": {"lam": INFO_ALPHA + INFO_LAMBDA - 1.0, "kernel": "rbf"}},
            ],
        },
        help="InfoVAE (Zhao et al. 2019): bce + (1 - alpha) KL + (alpha + lambda - 1) MMD with alpha = 0, "
        "lambda = 1000, RBF kernel",
    )
