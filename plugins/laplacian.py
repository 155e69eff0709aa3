"""``laplacian``: the Laplacian pyramid of conditional VAEs (LapCVAE, Dorta et al. 2017).

One module holds the pyramid operators and the level-conditional family:

* pyramid operators, plain functions: ``blur_down`` (d), ``upsample`` (u), ``gaussian_pyramid``
  (b_0 = x, b_{k+1} = d(b_k)), ``decompose`` (h_k = b_k - u(b_{k+1}), h_K = b_K), ``reconstruct``
  (x_K = h_K, x_k = h_k + u(x_{k+1}), exact) and ``reconstruct_levels`` (every x_k);
* encoder ``laplacian``: level k's conv encoder (the built-in ``conv`` encoder, one per level)
  sees concat[h_k, u(b_{k+1})] (the coarsest level sees h_K alone), or with ``condition=reconstruction``
  concat[h_k, u(x_hat_{k+1})], the image composed from the coarser levels' reconstructions (Figure 3);
* latent transform ``laplacian``: per-level posterior heads; the latent is one flat Gaussian over
  the level latents, grouped COARSEST FIRST (``group_label="level"``), so latent group g is
  pyramid level K - g; level k's decoder input is Linear(concat[z_k, z_{k+1}, ..., z_K]);
* decoder ``laplacian``: level k's conv decoder (the built-in ``conv`` decoder) outputs h_k, and
  the image is rebuilt coarse to fine, x_k = h_k + u(x_{k+1});
* loss ``pyramid-mse``: the paper's reconstruction loss, squared error per level on h_k;
* presets ``lapcvae``, ``lapcvae-no-m``, ``lapcvae-vae`` (64x64 RGB, the paper's model), ``lapcvae-128``
  (the paper's 128x128 five-level model) and the CPU-sized ``-small`` variants (32x32 grey, 3 levels,
  for Fashion-MNIST);
* commands ``genvae edit`` (paper 5.2; alpha or Poisson compositing, ``poisson_blend``) and
  ``genvae train-levels`` (greedy level-by-level training, and ``--retrain-m``, paper 5.1.3).

Levels are indexed as in the paper: k = 0 is the full-resolution level, k = K = levels - 1 the
coarsest. Every per-level option list (widths, latent sizes, level weights, ``kl.group_weights``)
is written COARSEST FIRST, the order of the latent groups; one value applies to every level.

What the pieces share through ``Pass.extras`` (the keys below): the encoder stores the targets h_k,
the blurred images b_k and the coarser image each level was conditioned on, the decoder the predicted
h_k and the rebuilt x_k; lists are indexed by level k. The ``m-net`` prior (plugins/m_net.py) reads the
decoder's ones. See docs/lapcvae.md.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genvae.core.components import (
    BuildContext,
    Decoder,
    Encoder,
    Gaussian,
    LatentLayout,
    LatentTransform,
    Loss,
)
from genvae.core.errors import GenvaeError, shorten
from genvae.core.hookspecs import hookimpl
from genvae.core.layers import ACTIVATIONS, activation, reduce_images, reduction_option
from genvae.core.options import float_tuple, int_tuple, one_of, option, positive_int, to_bool, to_int
from genvae.plugins.conv import ConvDecoder, ConvEncoder, ConvOptions

KERNELS = ("binomial", "bilinear")
CONDITIONS = ("real", "reconstruction")
BLENDS = ("alpha", "poisson")
CAPABILITY = "pyramid"

#: Pass.extras keys (lists indexed by level k, 0 = finest)
TARGETS = "laplacian.h"  # encoder: the input's pyramid h_k
BLURRED = "laplacian.b"  # encoder: the blurred images b_k
PRED = "laplacian.h_hat"  # decoder: the predicted h_k
RECON = "laplacian.x_hat"  # decoder: the rebuilt x_k = h_hat_k + u(x_{k+1}), before any clamp
CONDITION = "laplacian.condition"  # encoder: the coarser image level k was conditioned on (None at K)

#: x_hat = tanh(logits) can only reach +-(1 - LOGIT_EPS); see LaplacianDecoder.
LOGIT_EPS = 1e-5

_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)  # / 16


# -- the pyramid operators ----------------------------------------------------------------------------


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


def per_level(values: tuple, levels: int, what: str) -> list:
    """A coarsest-first option list (or one value for all) -> a list indexed by level k (0 = finest)."""
    values = tuple(values)
    if len(values) == 1:
        values = values * levels
    if len(values) != levels:
        raise ValueError(f"{what} lists {len(values)} values for {levels} levels; give one, or one per "
                         "level (coarsest first)")
    return list(reversed(values))


def _level_depth(size: int, feature_size: int) -> int:
    """Stride-2 layers for a level of ``size`` pixels: down to ``feature_size`` (at least one layer)."""
    depth = 1
    while size % 2 ** (depth + 1) == 0 and size // 2 ** (depth + 1) >= feature_size:
        depth += 1
    return depth


@contextmanager
def eval_mode(*modules: nn.Module):
    """Run modules in eval mode (batch-norm running statistics, none updated), restoring each
    submodule's own flag afterwards (frozen submodules stay in eval mode)."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def pyramid_parts(model):
    """(encoder, transform, decoder) of a LapCVAE model, or a GenvaeError naming what is missing."""
    enc, tr, dec = model.encoder, model.transform, model.decoder
    ok = isinstance(enc, LaplacianEncoder) and isinstance(tr, LaplacianLatent) and isinstance(dec, LaplacianDecoder)
    if not ok:
        raise GenvaeError(
            f"this model has no Laplacian pyramid (encoder '{enc.name}', latent transform '{tr.name}', decoder "
            f"'{dec.name}'); build one with --encoder laplacian or --preset lapcvae"
        )
    return enc, tr, dec


# -- encoder ------------------------------------------------------------------------------------------------


@attrs.frozen
class LaplacianEncoderOptions:
    levels: int = option(4, "pyramid levels K+1 (each halves the size; the image size must be divisible by "
                         "2^(levels-1))", positive_int, to_int)
    kernel: str = option("binomial", "pyramid kernel of d() and u(): binomial (5-tap [1,4,6,4,1]/16) or bilinear",
                         one_of(*KERNELS))
    widths: tuple[int, ...] = option((64,), "channels of each level's first conv layer, coarsest first (one value: "
                                     "every level); doubles at each further layer", converter=int_tuple)
    max_width: int = option(256, "cap on a level's channel count", positive_int, to_int)
    feature_size: int = option(4, "spatial size of each level's features: a level of S pixels gets "
                               "log2(S / feature_size) stride-2 layers (at least one)", positive_int, to_int)
    activation: str = option("lrelu", "activation after each conv layer", one_of(*ACTIVATIONS))
    batch_norm: bool = option(True, "batch norm after each hidden conv layer", converter=to_bool)
    condition: str = option("real", "the coarser image beside h_k: 'real' = the input's own blurred image b_{k+1} "
                            "(eq. 9 with x_{k+1} = b_{k+1}); 'reconstruction' = the image composed from the coarser "
                            "levels' reconstructions x_hat_{k+1} (paper Figure 3), decoded from their posterior "
                            "means without gradient", one_of(*CONDITIONS))

    def __attrs_post_init__(self):
        if not self.widths or min(self.widths) <= 0:
            raise ValueError(f"widths must list positive channel counts, got {shorten(list(self.widths))}")


class LaplacianEncoder(Encoder):
    """Laplacian pyramid encoder: one conv encoder per level on concat[h_k, u(b_{k+1})]."""

    name = "laplacian"
    Options = LaplacianEncoderOptions
    counterparts = {"transform": "laplacian", "decoder": "laplacian", "preset": "lapcvae"}
    provides = frozenset({CAPABILITY})

    def __init__(self, options: LaplacianEncoderOptions, ctx: BuildContext):
        super().__init__(options, ctx)
        c, h, w = ctx.image_shape
        levels = options.levels
        if h != w:
            raise self.fail(f"needs square images, got {h}x{w}")
        try:
            check_pyramid_size(h, levels)
            widths = per_level(options.widths, levels, "widths")
        except ValueError as exc:
            raise self.fail(str(exc)) from None
        self.num_levels = levels
        self.kernel = options.kernel
        self.image_size = h
        self.levels = nn.ModuleList()
        self.level_shapes: list[tuple[int, ...]] = []
        for k in range(levels):
            size = h // 2**k
            in_channels = c if k == levels - 1 else 2 * c
            conv = ConvOptions(width=widths[k], depth=_level_depth(size, options.feature_size),
                               max_width=options.max_width, activation=options.activation,
                               batch_norm=options.batch_norm)
            try:
                level = ConvEncoder(conv, BuildContext(image_shape=(in_channels, size, size)))
            except GenvaeError as exc:
                raise self.fail(f"level {k} ({size}x{size}): {exc}") from None
            self.levels.append(level)
            self.level_shapes.append(tuple(level.output_shape))
        self.feature_sizes = [math.prod(s) for s in self.level_shapes]
        self.output_shape = (sum(self.feature_sizes),)
        self.__dict__["_parts"] = None  # (encoder, transform, decoder) with condition=reconstruction; not submodules

    def attach(self, model) -> None:
        if self.options.condition == "reconstruction":
            try:
                self.__dict__["_parts"] = pyramid_parts(model)
            except GenvaeError as exc:
                raise self.fail(f"condition=reconstruction: {exc}") from None

    def level_input(self, k: int, h: Tensor, coarser: Tensor | None) -> Tensor:
        """Level k's encoder input: concat[h_k, u(coarser image)]; h_K alone at the coarsest level."""
        if k == self.num_levels - 1:
            return h
        return torch.cat([h, upsample(coarser, self.kernel)], dim=1)

    def encode_level(self, k: int, h: Tensor, coarser: Tensor | None) -> Tensor:
        """Flat features of level k from its band h_k and the coarser image x_{k+1} (None at the coarsest)."""
        return self.levels[k](self.level_input(k, h, coarser)).flatten(1)

    def encode_pyramid(self, hs: list[Tensor], bs: list[Tensor]) -> tuple[list[Tensor], list[Tensor | None]]:
        """Every level's flat features from the pyramid (h_k, b_k), and the coarser image each level was
        conditioned on (by level k; None at the coarsest).

        ``condition=real``: level k sees the input's own blurred image b_{k+1} (eq. 9 with the input's
        pyramid, where x_{k+1} = b_{k+1}). ``condition=reconstruction`` (paper Figure 3): coarse to fine,
        level k+1's posterior mean is decoded (with z_{k+1}..z_K, eq. 11) into h_hat_{k+1}, and level k sees
        x_hat_{k+1} = h_hat_{k+1} + u(x_hat_{k+2}); that image is computed without gradient, the latent and
        decoder levels in eval mode (as the m-net prior re-encodes), so it is an input like b_{k+1}.
        """
        levels = self.num_levels
        coarser: list[Tensor | None] = [*bs[1:], None]
        if self.options.condition == "real":
            return [self.encode_level(k, hs[k], coarser[k]) for k in range(levels)], coarser
        if self._parts is None:
            raise GenvaeError("encoder 'laplacian' with condition=reconstruction is not attached to a model "
                              "(it needs the laplacian latent transform and decoder)")
        _, tr, dec = self._parts
        feats: list[Tensor | None] = [None] * levels
        coarser = [None] * levels
        zs: list[Tensor | None] = [None] * levels
        for k in range(levels - 1, -1, -1):
            feats[k] = self.encode_level(k, hs[k], coarser[k])
            if k == 0:
                break
            with torch.no_grad(), eval_mode(tr.levels[k], dec.levels[k]):
                zs[k] = tr.level_posterior(k, feats[k])[0]
                h_hat = dec.decode_level(k, tr.level_u(k, zs))
                coarser[k - 1] = h_hat if coarser[k] is None else h_hat + upsample(coarser[k], self.kernel)
        return feats, coarser

    def forward(self, x, state=None):
        bs = gaussian_pyramid(x, self.num_levels, self.kernel)
        hs = decompose(x, self.num_levels, self.kernel, blurred=bs)
        feats, coarser = self.encode_pyramid(hs, bs)
        if state is not None:
            state.extras[TARGETS] = hs
            state.extras[BLURRED] = bs
            state.extras[CONDITION] = coarser
        return torch.cat(feats, dim=1)


# -- latent transform --------------------------------------------------------------------------------------


@attrs.frozen
class LaplacianLatentOptions:
    latent_sizes: tuple[int, ...] = option((64,), "latent size of each level, coarsest first (one value: every "
                                           "level)", converter=int_tuple)
    output_activation: str = option("lrelu", "activation after each level's z -> features layer",
                                    one_of(*ACTIVATIONS))

    def __attrs_post_init__(self):
        if not self.latent_sizes or min(self.latent_sizes) <= 0:
            raise ValueError(f"latent_sizes must list positive sizes, got {shorten(list(self.latent_sizes))}")


class LevelLatent(nn.Module):
    """One level's two sides: features -> (mu_k, log sigma_k^2); concat[z_k..z_K] -> decoder input."""

    def __init__(self, features: int, latent: int, conditioned: int, act: str):
        super().__init__()
        self.to_params = nn.Linear(features, 2 * latent)
        self.from_z = nn.Sequential(nn.Linear(conditioned, features), activation(act))


class LaplacianLatent(LatentTransform):
    """Per-level Gaussian latents (coarsest first); level k decodes from concat[z_k, ..., z_K]."""

    name = "laplacian"
    Options = LaplacianLatentOptions
    provides = frozenset({CAPABILITY})

    def __init__(self, options: LaplacianLatentOptions, ctx: BuildContext):
        super().__init__(options, ctx)
        enc = ctx.encoder
        if not isinstance(enc, LaplacianEncoder):
            raise self.fail(f"needs the 'laplacian' encoder (per-level features), not '{enc.name}'")
        levels = enc.num_levels
        try:
            sizes = per_level(options.latent_sizes, levels, "latent_sizes")
        except ValueError as exc:
            raise self.fail(str(exc)) from None
        self.num_levels = levels
        self.sizes = sizes  # by level k
        self.feature_sizes = list(enc.feature_sizes)
        self.u_shapes = list(enc.level_shapes)  # u_k mirrors level k's encoder features
        self.levels = nn.ModuleList(
            LevelLatent(enc.feature_sizes[k], sizes[k], sum(sizes[k:]), options.output_activation)
            for k in range(levels)
        )
        self.layout = LatentLayout((sum(sizes),), group_sizes=tuple(reversed(sizes)), group_label="level")
        self.output_shape = (sum(enc.feature_sizes),)

    # level <-> latent group bookkeeping (group g is level K - g)
    def split_levels(self, z: Tensor) -> list[Tensor]:
        """(B, N) latent -> [z_0, ..., z_K] (by level k)."""
        return list(reversed(z.split(list(self.layout.group_sizes), dim=1)))

    def join_levels(self, zs: list[Tensor]) -> Tensor:
        """[z_0, ..., z_K] -> (B, N), coarsest first."""
        return torch.cat(list(reversed(zs)), dim=1)

    def level_posterior(self, k: int, features: Tensor) -> tuple[Tensor, Tensor]:
        """(mu_k, log sigma_k^2) from level k's flat features."""
        mean, logvar = self.levels[k].to_params(features).chunk(2, dim=1)
        return mean, logvar

    def level_u(self, k: int, zs: list[Tensor]) -> Tensor:
        """Level k's decoder input (flat) from concat[z_k, z_{k+1}, ..., z_K]."""
        return self.levels[k].from_z(torch.cat(zs[k:], dim=1))

    def posterior(self, features, state=None) -> Gaussian:
        parts = features.split(self.feature_sizes, dim=1)
        params = [self.level_posterior(k, parts[k]) for k in range(self.num_levels)]
        return Gaussian(self.join_levels([m for m, _ in params]), self.join_levels([lv for _, lv in params]))

    def generate(self, z, state=None):
        zs = self.split_levels(z)
        return torch.cat([self.level_u(k, zs) for k in range(self.num_levels)], dim=1)

    def generation_modules(self) -> list[nn.Module]:
        return [level.from_z for level in self.levels]


# -- decoder --------------------------------------------------------------------------------------------------


@attrs.frozen
class LaplacianDecoderOptions:
    widths: tuple[int, ...] = option((64,), "channels of each level's last transposed-conv layer, coarsest first "
                                     "(one value: every level); doubles towards the input", converter=int_tuple)
    max_width: int = option(256, "cap on a level's channel count", positive_int, to_int)
    activation: str = option("lrelu", "activation after each transposed-conv layer", one_of(*ACTIVATIONS))
    batch_norm: bool = option(True, "batch norm after each hidden layer", converter=to_bool)

    def __attrs_post_init__(self):
        if not self.widths or min(self.widths) <= 0:
            raise ValueError(f"widths must list positive channel counts, got {shorten(list(self.widths))}")


def _to_logits(x: Tensor) -> Tensor:
    """Logits whose tanh is x clamped to (-1, 1). The clamp is straight-through: d tanh(logits) / dx
    is 1 everywhere, so an image-level loss still pulls out-of-range pixels back."""
    bound = 1.0 - LOGIT_EPS
    clamped = x + (x.clamp(-bound, bound) - x).detach()
    return torch.atanh(clamped)


class LaplacianDecoder(Decoder):
    """Laplacian pyramid decoder: one conv decoder per level outputs h_k; x_k = h_k + u(x_{k+1})."""

    name = "laplacian"
    Options = LaplacianDecoderOptions
    provides = frozenset({CAPABILITY})

    def __init__(self, options: LaplacianDecoderOptions, ctx: BuildContext):
        super().__init__(options, ctx)
        tr, enc = ctx.transform, ctx.encoder
        if not isinstance(tr, LaplacianLatent):
            raise self.fail(f"needs the 'laplacian' latent transform (per-level decoder inputs), not '{tr.name}'")
        levels = tr.num_levels
        try:
            widths = per_level(options.widths, levels, "widths")
        except ValueError as exc:
            raise self.fail(str(exc)) from None
        c, h, _ = ctx.image_shape
        self.num_levels = levels
        self.kernel = enc.kernel
        self.u_shapes = list(tr.u_shapes)
        self.u_sizes = [math.prod(s) for s in self.u_shapes]
        self.levels = nn.ModuleList()
        for k in range(levels):
            size = h // 2**k
            conv = ConvOptions(width=widths[k], max_width=options.max_width, activation=options.activation,
                               batch_norm=options.batch_norm)
            source = SimpleNamespace(output_shape=self.u_shapes[k], name=f"laplacian level {k}")
            try:
                level = ConvDecoder(conv, BuildContext(image_shape=(c, size, size), transform=source))
            except GenvaeError as exc:
                raise self.fail(f"level {k} ({size}x{size}): {exc}") from None
            self.levels.append(level)

    def decode_level(self, k: int, u_k: Tensor) -> Tensor:
        """Level k's band h_k from its flat decoder input."""
        return self.levels[k](u_k.view(-1, *self.u_shapes[k]))

    def forward(self, u, state=None):
        parts = u.split(self.u_sizes, dim=1)
        preds = [self.decode_level(k, parts[k]) for k in range(self.num_levels)]
        recon = reconstruct_levels(preds, self.kernel)
        if state is not None:
            state.extras[PRED] = preds
            state.extras[RECON] = recon
        return _to_logits(recon[0])


# -- the per-level reconstruction loss ---------------------------------------------------------------------------


@attrs.frozen
class PyramidMSEOptions:
    reduction: str = reduction_option("per level: sum over each image's elements then batch mean (ELBO scale), or "
                                      "mean over all")
    level_scale: str = option("image", "with reduction=sum: 'image' multiplies level k's sum by its area ratio 4^k, "
                              "so each level's mean squared error counts over the full image's pixels (the paper's "
                              "MSE per level); 'none' keeps plain per-level sums", one_of("image", "none"))
    level_weights: tuple[float, ...] = option((), "weight of each level's term, coarsest first; empty = 1 for all",
                                              converter=float_tuple)
    skip_frozen_levels: bool = option(True, "leave out the term of a level whose encoder, latent and decoder are "
                                      "all frozen (greedy training: untrained finer levels send no gradient "
                                      "into the coarser latents)", converter=to_bool)

    def __attrs_post_init__(self):
        if any(w < 0 for w in self.level_weights):
            raise ValueError(f"level_weights must be >= 0, got {shorten(list(self.level_weights))}")


class PyramidMSELoss(Loss):
    """Per-level squared error between predicted and true pyramid levels h_k (the paper's loss), summed over levels."""

    name = "pyramid-mse"
    Options = PyramidMSEOptions
    role = "reconstruction"
    requires = frozenset({CAPABILITY})

    def __init__(self, options: PyramidMSEOptions, ctx: BuildContext, weight: float = 1.0):
        super().__init__(options, ctx, weight)
        self.weights: list[float] = []
        dec = ctx.decoder
        if not isinstance(dec, LaplacianDecoder):
            raise self.fail(f"needs the 'laplacian' encoder, latent transform and decoder (this model's decoder "
                            f"is '{dec.name}')")
        levels = dec.num_levels
        try:
            self.weights = per_level(options.level_weights or (1.0,), levels, "level_weights")
        except ValueError as exc:
            raise self.fail(str(exc)) from None
        self.__dict__["_level_modules"] = []  # set in attach, kept out of the module tree

    def attach(self, model) -> None:
        enc, tr, dec = pyramid_parts(model)
        self.__dict__["_level_modules"] = [(enc.levels[k], tr.levels[k], dec.levels[k]) for k in range(dec.num_levels)]

    def _active(self, k: int) -> bool:
        if not self.options.skip_frozen_levels or not self._level_modules:
            return True
        return any(p.requires_grad for m in self._level_modules[k] for p in m.parameters())

    def forward(self, state, phase):
        preds, targets = state.extras[PRED], state.extras[TARGETS]
        total = state.x.new_zeros(())
        full = targets[0].shape[-2] * targets[0].shape[-1]
        for k, (pred, target) in enumerate(zip(preds, targets, strict=True)):
            if self.weights[k] and self._active(k):
                weight = self.weights[k]
                if self.options.level_scale == "image" and self.options.reduction == "sum":
                    weight *= full / (target.shape[-2] * target.shape[-1])
                total = total + weight * reduce_images((pred - target).pow(2), self.options.reduction)
        return {"pyramid-mse": self.weight * total}


# -- editing (paper 5.2) -------------------------------------------------------------------------------------------


def soft_mask(mask: Tensor, kernel: str = "binomial") -> Tensor:
    """A mask in [0, 1] with its edge softened by one blur of the pyramid kernel (same size)."""
    return upsample(blur_down(mask, kernel), kernel).clamp(0.0, 1.0) if mask.shape[-1] % 2 == 0 else mask


def _neighbour_sum(f: Tensor) -> Tensor:
    """Sum of each pixel's 4 neighbours inside the image (the ones outside count as 0)."""
    p = F.pad(f, (1, 1, 1, 1))
    return p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]


def poisson_blend(source: Tensor, target: Tensor, mask: Tensor, tol: float = 1e-6,
                  max_iter: int | None = None) -> Tensor:
    """Gradient-domain compositing (Pérez, Gangnet and Blake, *Poisson image editing*, 2003): ``source``
    pasted into ``target`` inside ``mask`` (> 0.5 = inside), each channel independently.

    Outside the mask the result is ``target``; inside it is the f whose discrete Laplacian equals the
    source's, with the target as the boundary value: for every pixel p of the mask, over its 4
    neighbours N_p within the image (an image border is a Neumann boundary),
    |N_p| f_p - sum_{q in N_p, inside} f_q = sum_{q in N_p} (s_p - s_q) + sum_{q in N_p, outside} t_q.
    Solved by conjugate gradients in float64, started from the source, until the residual is below
    ``tol`` times the right-hand side's norm (or ``max_iter``, default 20 * (H + W), steps).
    Shapes broadcast: source and target (B, C, H, W) or (1, C, H, W), mask (B or 1, 1 or C, H, W).
    """
    s, t = torch.broadcast_tensors(source.double(), target.double())
    m = (mask > 0.5).double().expand_as(s)
    count = _neighbour_sum(torch.ones_like(s))
    b = m * (count * s - _neighbour_sum(s) + _neighbour_sum((1.0 - m) * t))

    def apply(f: Tensor) -> Tensor:  # the system's matrix, on the masked pixels
        return m * (count * f - _neighbour_sum(m * f))

    dims = (-2, -1)
    f = m * s
    r = b - apply(f)
    p = r.clone()
    rs = (r * r).sum(dims, keepdim=True)
    limit = (tol**2 * (b * b).sum(dims, keepdim=True)).clamp_min(1e-24)
    steps = max_iter if max_iter is not None else 20 * (s.shape[-2] + s.shape[-1])
    for _ in range(steps):
        if bool((rs <= limit).all()):
            break
        ap = apply(p)
        pap = (p * ap).sum(dims, keepdim=True)
        alpha = torch.where(pap > 0, rs / pap.clamp_min(1e-300), torch.zeros_like(pap))
        f = f + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(dims, keepdim=True)
        beta = torch.where(rs > 0, rs_new / rs.clamp_min(1e-300), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    return (m * f + (1.0 - m) * t).to(source.dtype)


@torch.no_grad()
def edit_image(model, x: Tensor, coarse: Tensor | None = None, mask: Tensor | None = None, n: int = 8,
               keep_levels: int = 1, threshold: float = 0.1, blend: str = "alpha") -> dict[str, Tensor]:
    """Project ``x`` (1, C, H, W), optionally replace its coarse levels by those of ``coarse`` (a painted
    copy of the image, or a painted coarse image, at the image size), sample the finer levels ``n``
    times and composite the masked region of each sample into the reconstruction.

    ``keep_levels``: how many coarse pyramid levels are kept (their latents fixed); the rest are drawn
    from the prior (the ``m-net`` prior conditions each on the coarser ones). ``mask`` (1, 1, H, W) in
    [0, 1] selects the region to replace; without one, a painted ``coarse`` selects where its blurred
    levels differ from the input's by more than ``threshold``. ``blend``: ``alpha`` mixes sample and
    reconstruction with the mask softened by one blur; ``poisson`` pastes the sample's gradients inside
    the mask (> 0.5) with the reconstruction as boundary (:func:`poisson_blend`). Returns tensors by
    name, images in [-1, 1]: input, reconstruction, pyramid (the input's levels as images), base (the
    kept coarse image, upsampled), samples, composites, mask; and latents (n, N), the samples' z.
    """
    if blend not in BLENDS:
        raise GenvaeError(f"unknown blend '{blend}'; known: {', '.join(BLENDS)}")
    enc, tr, dec = pyramid_parts(model)
    levels = enc.num_levels
    if not 1 <= keep_levels <= levels:
        raise GenvaeError(f"--keep-levels must be in 1..{levels} (the model has {levels} pyramid levels)")
    if coarse is None and mask is None:
        raise GenvaeError("give --coarse PAINTED.png and/or --mask MASK.png")
    fixed = model.encode(x).mean
    recon = model.generate(fixed)[1]
    size = x.shape[-1]
    first = levels - keep_levels  # the finest kept level
    if coarse is not None:
        # the painted image's kept levels replace the input's: its posterior means (each kept level
        # is encoded from the painted image's pyramid, conditioned on the painted coarser levels)
        painted = tr.split_levels(model.encode(coarse).mean)
        zs = tr.split_levels(fixed)
        zs[first:] = painted[first:]
        fixed = tr.join_levels(zs)
        if mask is None:
            bs = gaussian_pyramid(coarse, levels, enc.kernel)
            ref = gaussian_pyramid(x, levels, enc.kernel)[first]
            diff = (bs[first] - ref).abs().amax(dim=1, keepdim=True) > threshold
            mask = upsample_to(diff.float(), size, enc.kernel).clamp(0, 1)
            mask = (mask > 0.01).float()
    z = model.prior.sample(n, model, x.device, fixed=fixed, fixed_groups=keep_levels)
    samples = model.generate(z)[1]
    if blend == "poisson":
        composites = poisson_blend(samples, recon, mask)
    else:
        soft = soft_mask(mask, enc.kernel)
        composites = soft * samples + (1.0 - soft) * recon
    fixed_pred = [dec.decode_level(k, tr.level_u(k, tr.split_levels(fixed))) for k in range(levels)]
    base = upsample_to(reconstruct_levels(fixed_pred[first:], enc.kernel)[0], size, enc.kernel)
    # the input's levels at the image size: bands h_k around mid-grey (0), then the coarsest image h_K
    shown = [upsample_to(h, size, enc.kernel).clamp(-1, 1) for h in decompose(x, levels, enc.kernel)]
    return {
        "input": x,
        "reconstruction": recon,
        "pyramid": torch.cat(shown),
        "base": base.clamp(-1, 1),
        "samples": samples,
        "composites": composites.clamp(-1, 1),
        "mask": mask * 2.0 - 1.0,
        "latents": z,
    }


def _load_mask(path, model) -> Tensor:
    from PIL import Image, UnidentifiedImageError

    from genvae.core.data import fit_image

    try:
        with Image.open(path) as img:
            img.load()
            pixels = fit_image(img, model.spec.image_size, 1)
    except (OSError, UnidentifiedImageError) as exc:
        raise GenvaeError(f"cannot read mask {path}: {exc}") from None
    return (pixels.float() / 255.0 > 0.5).float().unsqueeze(0).to(model.device)


# -- level-wise training (greedy, retrain M) ---------------------------------------------------------------------


def level_paths(model, k: int) -> list[str]:
    """Module paths of pyramid level k: its encoder, latent heads, decoder and (m-net) its M network."""
    pyramid_parts(model)
    paths = [f"encoder.levels.{k}", f"transform.levels.{k}", f"decoder.levels.{k}"]
    prior_levels = getattr(model.prior, "levels", None)
    if isinstance(prior_levels, nn.ModuleList) and k < len(prior_levels):
        paths.append(f"prior.levels.{k}")
    return paths


def greedy_stages(model) -> list[tuple[str, list[str]]]:
    """(stage name, train_only paths) per level, coarsest first."""
    levels = model.encoder.num_levels
    return [(f"level-{k}", level_paths(model, k)) for k in range(levels - 1, -1, -1)]


def unfreeze(model) -> None:
    """Undo a previous stage's freezing (requires_grad and train mode)."""
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()


# -- presets ------------------------------------------------------------------------------------------------------


def _lapcvae(size, channels, levels, widths, latent, lambdas, prior, hidden, lr, batch):
    prior_spec = {"name": "m-net", "options": {"hidden": hidden}} if prior == "m-net" else {"name": "normal"}
    return {
        "image_size": size,
        "channels": channels,
        "encoder": {"name": "laplacian", "options": {"levels": levels, "widths": widths, "feature_size": 4}},
        "transform": {"name": "laplacian", "options": {"latent_sizes": latent}},
        "decoder": {"name": "laplacian", "options": {"widths": widths}},
        "prior": prior_spec,
        "losses": [{"name": "pyramid-mse"}, {"name": "kl", "options": {"group_weights": lambdas}}],
        "train": {"lr": lr, "batch_size": batch},
    }


def _vae(size, channels, width, max_width, depth, latent, lr, batch):
    return {
        "image_size": size,
        "channels": channels,
        "encoder": {"name": "conv", "options": {"width": width, "depth": depth, "max_width": max_width}},
        "transform": {"name": "fc", "options": {"latent_dim": latent, "output_activation": "lrelu"}},
        "decoder": {"name": "conv", "options": {"width": width, "depth": depth, "max_width": max_width}},
        "prior": {"name": "normal"},
        "losses": [{"name": "mse"}, {"name": "kl"}],
        "train": {"lr": lr, "batch_size": batch},
    }


#: the paper's 64x64 lambdas [10, 0.1, 0.01] weight the three M-network levels (coarse to fine); the
#: coarsest level (standard normal prior) repeats the first value (see docs/lapcvae.md)
PAPER_LAMBDAS = [10.0, 10.0, 0.1, 0.01]
SMALL_LAMBDAS = [1.0, 0.1, 0.01]
#: the paper's 128x128 model: nz = [128, 128, 64, 64, 64] read in the paper's level order k = 0 (128x128,
#: finest) ... K = 4 (8x8), here coarsest first; lambda [100, 100, 0.1, 0.01] read as PAPER_LAMBDAS is
#: (see docs/lapcvae.md, "The 128x128 model")
PAPER_LATENT_128 = [64, 64, 64, 128, 128]
PAPER_LAMBDAS_128 = [100.0, 100.0, 100.0, 0.1, 0.01]


@hookimpl
def genvae_register_presets(register):
    paper = dict(size=64, channels=3, levels=4, widths=[64], latent=[64], lambdas=PAPER_LAMBDAS, hidden=[256],
                 lr=3e-4, batch=64)
    small = dict(size=32, channels=1, levels=3, widths=[16], latent=[16], lambdas=SMALL_LAMBDAS, hidden=[64],
                 lr=1e-3, batch=64)
    register("lapcvae", _lapcvae(prior="m-net", **paper),
             help="LapCVAE (paper, 64x64 RGB): 4 Laplacian levels of conditional conv VAEs, 64-d latent each, "
                  "M-network prior, per-level MSE, lambda [10,10,0.1,0.01]")
    register("lapcvae-128", _lapcvae(size=128, channels=3, levels=5, widths=[64], latent=PAPER_LATENT_128,
                                     lambdas=PAPER_LAMBDAS_128, prior="m-net", hidden=[256], lr=3e-4, batch=64),
             help="LapCVAE (paper, 128x128 RGB): 5 Laplacian levels, latent [64,64,64,128,128] coarsest first "
                  "(448 in all), M-network prior, per-level MSE, lambda [100,100,100,0.1,0.01]")
    register("lapcvae-no-m", _lapcvae(prior="normal", **paper),
             help="LapCVAE without M (paper ablation, 64x64 RGB): standard normal prior at every level")
    register("lapcvae-vae", _vae(64, 3, 80, 320, 4, 256, 3e-4, 64),
             help="the paper's VAE baseline at 64x64 RGB: conv encoder/decoder (widths for a parameter count like "
                  "lapcvae's), 256-d fc latent (= LapCVAE's total)")
    register("lapcvae-small", _lapcvae(prior="m-net", **small),
             help="LapCVAE for CPUs (32x32 grey, Fashion-MNIST): 3 levels, 16-d latent each, M-network prior, "
                  "lambda [1,0.1,0.01]")
    register("lapcvae-no-m-small", _lapcvae(prior="normal", **small),
             help="lapcvae-small without M: standard normal prior at every level")
    register("lapcvae-vae-small", _vae(32, 1, 16, 128, 3, 48, 1e-3, 64),
             help="VAE baseline for lapcvae-small (32x32 grey): conv encoder/decoder, 48-d fc latent (= its total)")


# -- registration ------------------------------------------------------------------------------------------------


@hookimpl
def genvae_register_encoders(register):
    register(LaplacianEncoder)


@hookimpl
def genvae_register_transforms(register):
    register(LaplacianLatent)


@hookimpl
def genvae_register_decoders(register):
    register(LaplacianDecoder)


@hookimpl
def genvae_register_losses(register):
    register(PyramidMSELoss)


@hookimpl
def genvae_register_commands(cli):
    import click

    from genvae.core.commands import FiniteFloat, data_options

    @cli.command("edit")
    @click.argument("folder", type=click.Path())
    @click.argument("image", type=click.Path(dir_okay=False, exists=True))
    @click.option("--coarse", type=click.Path(dir_okay=False, exists=True),
                  help="A painted copy of IMAGE (any size, fitted like IMAGE): its coarse levels replace the input's.")
    @click.option("--mask", type=click.Path(dir_okay=False, exists=True),
                  help="A black/white image: white marks the region where new finer levels are sampled and "
                       "composited (default with --coarse: where the painted coarse image differs).")
    @click.option("--keep-levels", default=1, show_default=True, type=click.IntRange(min=1),
                  help="Coarse pyramid levels kept fixed (from --coarse or the input); the rest are sampled.")
    @click.option("-n", "count", default=8, show_default=True, type=click.IntRange(1, 256),
                  help="Number of variants.")
    @click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for the PNGs.")
    @click.option("--blend", type=click.Choice(BLENDS), default="alpha", show_default=True,
                  help="Compositing: alpha (mask softened by one blur) or poisson (gradient-domain: the sample's "
                       "gradients inside the mask, the reconstruction as boundary).")
    @click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
    @click.option("--device", default="auto", show_default=True)
    def edit(folder, image, coarse, mask, keep_levels, count, blend, output, seed, device):
        """Edit an image with a LapCVAE (paper 5.2): paint its coarse level and/or resample a masked region."""
        from genvae.core.commands import console, load_for_inference, load_image
        from genvae.core.data import check_image_output, save_grid

        names = ["input", "reconstruction", "base", "mask", "pyramid", "samples", "composites",
                 *(f"edit-{i:02d}" for i in range(count))]
        for name in names:  # every output checked before any is written
            check_image_output(Path(output) / f"{name}.png")
        model, _ = load_for_inference(folder, device, seed)
        pyramid_parts(model)
        x = load_image(image, model)
        painted = load_image(coarse, model) if coarse else None
        region = _load_mask(mask, model) if mask else None
        out = edit_image(model, x, painted, region, n=count, keep_levels=keep_levels, blend=blend)
        folder_out = Path(output)
        folder_out.mkdir(parents=True, exist_ok=True)
        for name in ("input", "reconstruction", "base", "mask"):
            save_grid(out[name].float().cpu(), folder_out / f"{name}.png")
        save_grid(out["pyramid"].float().cpu(), folder_out / "pyramid.png", nrow=len(out["pyramid"]))
        save_grid(out["samples"].float().cpu(), folder_out / "samples.png")
        save_grid(out["composites"].float().cpu(), folder_out / "composites.png")
        for i, img in enumerate(out["composites"]):
            save_grid(img.float().cpu(), folder_out / f"edit-{i:02d}.png")
        console.print(f"wrote {count} edits of {image} to {folder_out} (composites.png, edit-NN.png; samples.png "
                      "before compositing)")

    @cli.command("train-levels")
    @click.argument("folder", type=click.Path())
    @data_options
    @click.option("--greedy", "mode", flag_value="greedy", help="Train level by level, coarsest first, freezing the "
                  "others (each level's M network trains with it).")
    @click.option("--retrain-m", "mode", flag_value="retrain-m", help="Retrain only the M networks of a trained "
                  "model (paper 5.1.3).")
    @click.option("--steps", type=click.IntRange(min=1), required=True,
                  help="Steps per level (--greedy) or in all (--retrain-m).")
    @click.option("--batch-size", type=click.IntRange(min=1), help="Images per step.")
    @click.option("--lr", type=FiniteFloat(positive=True), help="Learning rate.")
    @click.option("--device", default="auto", show_default=True)
    @click.option("--seed", type=click.IntRange(min=0), help="Seed of every random stream.")
    @click.option("--quiet", is_flag=True, help="Only the last metrics of each stage.")
    def train_levels(folder, data, data_root, download, mode, steps, batch_size, lr, device, seed, quiet):
        """Level-wise LapCVAE training: --greedy (coarsest first) or --retrain-m; stages go to FOLDER/stages/."""
        from genvae.core.checkpoint import load_model, save_model
        from genvae.core.commands import console, registry

        if mode is None:
            raise GenvaeError("choose --greedy or --retrain-m")
        model = load_model(folder, device="cpu", registry=registry())
        pyramid_parts(model)
        if mode == "retrain-m":
            if model.prior.name != "m-net":
                raise GenvaeError(f"--retrain-m needs the 'm-net' prior; this model's prior is '{model.prior.name}'")
            stages = [("retrain-m", ["prior"])]
        else:
            if getattr(model.prior.options, "detach", True) is False:
                raise GenvaeError("--greedy needs prior.detach=true (the re-encoding path would train coarser "
                                  "levels from finer ones)")
            recon = [loss for loss in model.losses.values() if loss.role == "reconstruction"]
            if not all(isinstance(loss, PyramidMSELoss) and loss.options.skip_frozen_levels for loss in recon):
                raise GenvaeError("--greedy needs the 'pyramid-mse' loss (with skip_frozen_levels) as the "
                                  "reconstruction loss, so untrained levels send no gradient to trained ones")
            stages = greedy_stages(model)
        from genvae.core.folder import lock_folder

        with lock_folder(folder):  # one process at a time writes this model folder
            for name, paths in stages:
                run_stage(model, Path(folder), name, paths, steps, data=data, data_root=data_root,
                          download=download, batch_size=batch_size, lr=lr, device=device, seed=seed,
                          echo=None if quiet else console.print)
                save_model(model, folder)
                console.print(f"{name}: trained {', '.join(paths)} for {steps} steps; weights saved to {folder}")


def run_stage(model, folder: Path, name: str, paths: list[str], steps: int, data=None, data_root=None,
              download=False, batch_size=None, lr=None, device="auto", seed=None, echo=None) -> dict:
    """Train only ``paths`` of ``model`` for ``steps`` steps; the stage's checkpoints, metrics and samples
    go to ``folder/stages/<name>`` (the model itself is left in memory for the caller to save)."""
    from genvae.core.data import load_data
    from genvae.core.folder import ModelFolder, lock_folder
    from genvae.core.train import Trainer, resolve_device, seed_everything

    dev = resolve_device(device)
    spec = model.spec
    overrides = {k: v for k, v in dict(batch_size=batch_size, lr=lr, seed=seed).items() if v is not None}
    config = spec.with_train(**overrides, max_steps=steps, epochs=10**6, train_only=list(paths)).train
    seed_everything(config.seed)
    images = load_data(data, image_size=spec.image_size, channels=spec.channels, split="train", root=data_root,
                       download=download)
    stage_dir = folder / "stages" / name
    stage = ModelFolder(stage_dir)
    stage.check_can_build_into()  # a stage folder holds only what genvae wrote there
    stage_dir.mkdir(parents=True, exist_ok=True)
    unfreeze(model)
    trainer = Trainer(model, stage_dir, images, config, dev)
    if echo is not None:
        trainer.on_log = lambda r: echo(f"{name} step {r['step']}/{steps}  " + "  ".join(
            f"{k} {v:.4g}" for k, v in r.items() if k not in ("step", "epoch", "lr")))
    with lock_folder(stage_dir):
        stage.remove_all()  # the previous run of this stage, genvae's files only
        last = trainer.fit()
    unfreeze(model)
    model.eval()
    return last
