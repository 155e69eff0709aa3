"""Small building blocks shared by component plugins (no component lives here)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

ACTIVATIONS = ("relu", "lrelu", "elu", "none")


def activation(name: str, slope: float = 0.2) -> nn.Module:
    """A fresh activation module by name; ``lrelu`` takes ``slope``."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "lrelu":
        return nn.LeakyReLU(slope, inplace=True)
    if name == "elu":
        return nn.ELU(inplace=True)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation '{name}'; known: {', '.join(ACTIVATIONS)}")


def mlp(sizes: list[int], act: str, batch_norm: bool = False, last_activation: bool = True) -> nn.Sequential:
    """Linear layers through ``sizes``, each followed by [batch norm and] ``act``; with
    ``last_activation=False`` the last Linear is left bare (an output layer)."""
    layers: list[nn.Module] = []
    pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
    for n, (i, o) in enumerate(pairs):
        layers.append(nn.Linear(i, o))
        if last_activation or n < len(pairs) - 1:
            if batch_norm:
                layers.append(nn.BatchNorm1d(o))
            layers.append(activation(act))
    return nn.Sequential(*layers)


def describe_shape(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


REDUCTIONS = ("sum", "mean")


def reduction_option(help: str = "sum per image then batch mean (ELBO scale), or mean over all"):
    """The ``reduction`` option of a reconstruction loss (sum or mean, see :func:`reduce_images`), default sum."""
    from genvae.core.options import one_of, option

    return option("sum", help, one_of(*REDUCTIONS))


def reduce_images(values, reduction: str):
    """``sum``: summed over each image's elements, averaged over the batch (the ELBO's scale);
    ``mean``: averaged over every element (the crVAE code's pixel MSE)."""
    if reduction == "mean":
        return values.mean()
    return values.flatten(1).sum(1).mean()


def batch_norms(*modules: nn.Module) -> tuple[nn.modules.batchnorm._BatchNorm, ...]:
    """Every batch-norm layer inside ``modules``."""
    return tuple(m for part in modules for m in part.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


@contextmanager
def running_stats_frozen(norms) -> Iterator[None]:
    """Batch norms in training mode use the batch's statistics but leave their running statistics alone: for
    an extra pass of the same step (a regeneration, a prior's inputs) that must not update them twice."""
    frozen = [m for m in norms if m.training and m.track_running_stats]
    for m in frozen:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in frozen:
            m.track_running_stats = True


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Run modules in eval mode (batch-norm running statistics, none updated; dropout off), restoring each
    submodule's own flag afterwards (a frozen submodule stays in eval mode)."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def straight_through_clamp(x: Tensor, low: float, high: float) -> Tensor:
    """``x`` clamped to [low, high] in the forward pass, with gradient 1 everywhere: a loss on the clamped
    values still pulls out-of-range ones back."""
    return x + (x.clamp(low, high) - x).detach()


# -- convolution stacks (the conv, Laplacian and example plugins build theirs from these) --------------------


def stack_widths(width: int, depth: int, max_width: int) -> list[int]:
    """Channels of ``depth`` layers starting at ``width``, doubling each layer, capped at ``max_width``."""
    return [min(width * 2**i, max_width) for i in range(depth)]


def down_stack(in_channels: int, widths: list[int], act: str = "lrelu", batch_norm: bool = True) -> nn.Sequential:
    """Stride-2 4x4 convolutions through ``widths``, each halving the size; batch norm after every layer but the
    first, then ``act``."""
    layers: list[nn.Module] = []
    prev = in_channels
    for i, width in enumerate(widths):
        layers.append(nn.Conv2d(prev, width, 4, 2, 1, bias=not batch_norm or i == 0))
        if batch_norm and i > 0:
            layers.append(nn.BatchNorm2d(width))
        layers.append(activation(act))
        prev = width
    return nn.Sequential(*layers)


def up_stack(
    in_channels: int, widths: list[int], out_channels: int, act: str = "lrelu", batch_norm: bool = True
) -> nn.Sequential:
    """Stride-2 4x4 transposed convolutions through ``widths`` (each doubling the size, batch norm, ``act``),
    then a 3x3 convolution to ``out_channels`` (the output layer, bare)."""
    layers: list[nn.Module] = []
    prev = in_channels
    for width in widths:
        layers.append(nn.ConvTranspose2d(prev, width, 4, 2, 1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(activation(act))
        prev = width
    layers.append(nn.Conv2d(prev, out_channels, 3, 1, 1))
    return nn.Sequential(*layers)


def decoder_widths(width: int, ups: int, max_width: int) -> list[int]:
    """The widths of ``ups`` upsampling layers that mirror an encoder of that many layers (widest first)."""
    return list(reversed(stack_widths(width, max(ups, 1), max_width)))[:ups]
