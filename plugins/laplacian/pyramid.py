"""The Laplacian pyramid's operators, plain functions on (B, C, H, W) tensors.

``blur_down`` (d), ``upsample`` (u), ``gaussian_pyramid`` (b_0 = x, b_{k+1} = d(b_k)), ``decompose``
(h_k = b_k - u(b_{k+1}), h_K = b_K), ``reconstruct`` (x_K = h_K, x_k = h_k + u(x_{k+1}), exact) and
``reconstruct_levels`` (every x_k). Levels are indexed as in the paper: k = 0 is the full-resolution level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from genvae.api import Component

KERNELS = ("binomial", "bilinear")
_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)  # / 16


def _check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown pyramid kernel '{kernel}'; known: {', '.join(KERNELS)}")


def blur_down(x: Tensor, kernel: str = "binomial") -> Tensor:
    """d(x): blur and halve (B, C, H, W) -> (B, C, H/2, W/2); H and W must be even.

    ``binomial``: the 5-tap [1, 4, 6, 4, 1]/16 kernel (separable), borders replicated, sampled at
    the even pixels (Burt & Adelson's REDUCE). ``bilinear``: bilinear halving, i.e. the 2x2 mean.
    """
    _check_kernel(kernel)
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"blur_down needs an even image size, got {h}x{w}")
    if kernel == "bilinear":
        return F.avg_pool2d(x, 2)
    k = torch.tensor(_BINOMIAL, dtype=x.dtype, device=x.device) / 16.0
    y = F.pad(x.reshape(b * c, 1, h, w), (2, 2, 2, 2), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, 5), stride=(1, 2))
    y = F.conv2d(y, k.view(1, 1, 5, 1), stride=(2, 1))
    return y.view(b, c, h // 2, w // 2)


def _expand_last(x: Tensor) -> Tensor:
    """Binomial EXPAND along the last axis, n -> 2n: zero insertion then 2 * [1, 4, 6, 4, 1]/16,
    i.e. even outputs (x[i-1] + 6 x[i] + x[i+1]) / 8, odd outputs (x[i] + x[i+1]) / 2, borders replicated."""
    left = torch.cat([x[..., :1], x[..., :-1]], dim=-1)
    right = torch.cat([x[..., 1:], x[..., -1:]], dim=-1)
    even = (left + 6.0 * x + right) / 8.0
    odd = (x + right) / 2.0
    return torch.stack([even, odd], dim=-1).flatten(-2)


def upsample(x: Tensor, kernel: str = "binomial") -> Tensor:
    """u(x): double (B, C, H, W) -> (B, C, 2H, 2W) with the binomial EXPAND or bilinear interpolation."""
    _check_kernel(kernel)
    if kernel == "bilinear":
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    return _expand_last(_expand_last(x).transpose(-1, -2)).transpose(-1, -2)


def upsample_to(x: Tensor, size: int, kernel: str = "binomial") -> Tensor:
    """Apply u until the image is ``size`` pixels wide (a power-of-two multiple of its size)."""
    while x.shape[-1] < size:
        x = upsample(x, kernel)
    if x.shape[-1] != size:
        raise ValueError(f"cannot upsample width {x.shape[-1]} to {size} by factors of 2")
    return x


def check_pyramid_size(size: int, levels: int) -> None:
    if levels < 1:
        raise ValueError(f"a pyramid needs at least 1 level, got {levels}")
    if levels - 1 > size.bit_length():  # before 2**levels: a hostile level count must not build a huge int
        raise ValueError(f"{levels} levels halve image size {size} below one pixel")
    factor = 2 ** (levels - 1)
    if size % factor:
        raise ValueError(f"image size {size} is not divisible by 2^(levels-1) = {factor} for {levels} levels")


def gaussian_pyramid(x: Tensor, levels: int, kernel: str = "binomial") -> list[Tensor]:
    """[b_0, ..., b_K] with b_0 = x and b_{k+1} = d(b_k); K = levels - 1."""
    check_pyramid_size(x.shape[-1], levels)
    check_pyramid_size(x.shape[-2], levels)
    out = [x]
    for _ in range(levels - 1):
        out.append(blur_down(out[-1], kernel))
    return out


def decompose(x: Tensor, levels: int, kernel: str = "binomial", blurred: list[Tensor] | None = None) -> list[Tensor]:
    """The Laplacian pyramid [h_0, ..., h_K]: h_k = b_k - u(b_{k+1}), h_K = b_K."""
    bs = blurred if blurred is not None else gaussian_pyramid(x, levels, kernel)
    return [bs[k] - upsample(bs[k + 1], kernel) for k in range(levels - 1)] + [bs[-1]]


def reconstruct_levels(hs: list[Tensor], kernel: str = "binomial") -> list[Tensor]:
    """[x_0, ..., x_K] with x_K = h_K and x_k = h_k + u(x_{k+1}) (x_0 is the image)."""
    xs: list[Tensor] = [hs[-1]]
    for h in reversed(hs[:-1]):
        xs.append(h + upsample(xs[-1], kernel))
    return xs[::-1]


def reconstruct(hs: list[Tensor], kernel: str = "binomial") -> Tensor:
    """The image from its pyramid: x = sum_k u^k(h_k) (exactly the inverse of ``decompose``)."""
    return reconstruct_levels(hs, kernel)[0]


# -- shared helpers -------------------------------------------------------------------------------------


def levels_option(component: Component, values: tuple, levels: int, what: str) -> list:
    """:func:`per_level` for a component's option: a bad length is the component's one-line build error."""
    try:
        return per_level(values, levels, what)
    except ValueError as exc:
        raise component.fail(str(exc)) from None


def per_level(values: tuple, levels: int, what: str) -> list:
    """A coarsest-first option list (or one value for all) -> a list indexed by level k (0 = finest)."""
    values = tuple(values)
    if len(values) == 1:
        values = values * levels
    if len(values) != levels:
        raise ValueError(
            f"{what} lists {len(values)} values for {levels} levels; give one, or one per level (coarsest first)"
        )
    return list(reversed(values))
