"""The pyramid's three components: encoder, latent transform and decoder ``laplacian``.

* encoder: level k's conv stack (``conv``'s :func:`down_stack`) sees concat[h_k, u(b_{k+1})] (the coarsest
  level sees h_K alone), or with ``condition=reconstruction`` concat[h_k, u(x_hat_{k+1})], the image composed
  from the coarser levels' reconstructions (Figure 3);
* latent transform: per-level posterior heads; the latent is one flat Gaussian over the level latents,
  grouped COARSEST FIRST (``group_label="level"``), so latent group g is pyramid level K - g; level k's
  decoder input is Linear(concat[z_k, z_{k+1}, ..., z_K]);
* decoder: level k's conv stack (``conv``'s :func:`up_stack`) outputs h_k, and the image is rebuilt coarse to
  fine, x_k = h_k + u(x_{k+1}). Its output space is ``image``: x_0 itself, clamped to [-1, 1] straight-through.

All three provide the ``pyramid`` capability (``genvae.core.capabilities``: the PyramidEncoder, PyramidLatent and
PyramidDecoder protocols) and fill ``ForwardPass.pyramid``: the encoder the targets h_k, blurred images b_k and the
coarser image each level was conditioned on, the decoder the predicted h_k and the rebuilt x_k.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor, nn

from genvae.api import (
    ACTIVATIONS,
    PYRAMID,
    BuildContext,
    Decoder,
    Encoder,
    ForwardPass,
    Gaussian,
    GenerativeModel,
    GenvaeError,
    LatentLayout,
    LatentTransform,
    PyramidDecoder,
    PyramidEncoder,
    PyramidLatent,
    PyramidPass,
    activation,
    decoder_widths,
    down_stack,
    eval_mode,
    int_tuple,
    one_of,
    option,
    positive_int,
    positive_ints,
    pyramid_parts,
    stack_widths,
    straight_through_clamp,
    to_bool,
    to_float32,
    to_int,
    up_stack,
)
from genvae.plugins.laplacian.pyramid import (
    KERNELS,
    check_pyramid_size,
    decompose,
    gaussian_pyramid,
    levels_option,
    per_level,
    reconstruct_levels,
    upsample,
)

CONDITIONS = ("real", "reconstruction")


class ConvStack(nn.Module):
    """One level's conv stack (``net``), a module of its own so the level's weights keep their names."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _level_depth(size: int, feature_size: int) -> int:
    """Stride-2 layers for a level of ``size`` pixels: down to ``feature_size`` (at least one layer)."""
    depth = 1
    while size % 2 ** (depth + 1) == 0 and size // 2 ** (depth + 1) >= feature_size:
        depth += 1
    return depth


# -- encoder ------------------------------------------------------------------------------------------------


@attrs.frozen
class LaplacianEncoderOptions:
    levels: int = option(
        4,
        "pyramid levels K+1 (each halves the size; the image size must be divisible by 2^(levels-1))",
        positive_int,
        to_int,
    )
    kernel: str = option(
        "binomial", "pyramid kernel of d() and u(): binomial (5-tap [1,4,6,4,1]/16) or bilinear", one_of(*KERNELS)
    )
    widths: tuple[int, ...] = option(
        (64,),
        "channels of each level's first conv layer, coarsest first (one value: "
        "every level); doubles at each further layer",
        positive_ints,
        int_tuple,
    )
    max_width: int = option(256, "cap on a level's channel count", positive_int, to_int)
    feature_size: int = option(
        4,
        "spatial size of each level's features: a level of S pixels gets "
        "log2(S / feature_size) stride-2 layers (at least one)",
        positive_int,
        to_int,
    )
    activation: str = option("lrelu", "activation after each conv layer", one_of(*ACTIVATIONS))
    batch_norm: bool = option(True, "batch norm after each hidden conv layer", converter=to_bool)
    condition: str = option(
        "real",
        "the coarser image beside h_k: 'real' = the input's own blurred image b_{k+1} "
        "(eq. 9 with x_{k+1} = b_{k+1}); 'reconstruction' = the image composed from the coarser "
        "levels' reconstructions x_hat_{k+1} (paper Figure 3), decoded from their posterior "
        "means without gradient",
        one_of(*CONDITIONS),
    )


class LaplacianEncoder(Encoder[LaplacianEncoderOptions]):
    """Laplacian pyramid encoder: one conv encoder per level on concat[h_k, u(b_{k+1})]."""

    name = "laplacian"
    Options = LaplacianEncoderOptions
    counterparts = {"transform": "laplacian", "decoder": "laplacian", "preset": "lapcvae"}
    provides = frozenset({PYRAMID})
    _parts: tuple[PyramidEncoder, PyramidLatent, PyramidDecoder] | None  # kept with refer()

    def __init__(self, options: LaplacianEncoderOptions, ctx: BuildContext) -> None:
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
            depth = _level_depth(size, options.feature_size)
            level_widths = stack_widths(widths[k], depth, options.max_width)
            self.levels.append(ConvStack(down_stack(in_channels, level_widths, options.activation, options.batch_norm)))
            self.level_shapes.append((level_widths[-1], size // 2**depth, size // 2**depth))
        self.feature_sizes = [math.prod(s) for s in self.level_shapes]
        self.output_shape = (sum(self.feature_sizes),)
        self.refer("_parts", None)  # (encoder, transform, decoder) with condition=reconstruction

    def attach(self, model: GenerativeModel) -> None:
        if self.options.condition == "reconstruction":
            try:
                self.refer("_parts", pyramid_parts(model))
            except GenvaeError as exc:
                raise self.fail(f"condition=reconstruction: {exc}") from None

    def upsample(self, x: Tensor) -> Tensor:
        """u(x) with this pyramid's kernel."""
        return upsample(x, self.kernel)

    def level_input(self, k: int, h: Tensor, coarser: Tensor | None) -> Tensor:
        """Level k's encoder input: concat[h_k, u(coarser image)]; h_K alone at the coarsest level."""
        if k == self.num_levels - 1:
            return h
        assert coarser is not None, "every level but the coarsest has a coarser one"
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
            raise GenvaeError(
                "encoder 'laplacian' with condition=reconstruction is not attached to a model "
                "(it needs the laplacian latent transform and decoder)"
            )
        _, tr, dec = self._parts
        feats: list[Tensor] = []  # coarsest first while encoding
        coarser = [None] * levels
        zs: list[Tensor] = [torch.empty(0)] * levels  # z_k, filled coarse to fine (level_u reads z_k..z_K)
        for k in range(levels - 1, -1, -1):
            feats.append(self.encode_level(k, hs[k], coarser[k]))
            if k == 0:
                break
            with torch.no_grad(), eval_mode(tr.levels[k], dec.levels[k]):
                zs[k] = tr.level_posterior(k, feats[-1])[0]
                h_hat = to_float32(dec.decode_level(k, tr.level_u(k, zs)))
                below = coarser[k]
                with self.precision.full():  # an image of the pyramid: float32, as the input's own
                    coarser[k - 1] = h_hat if below is None else h_hat + upsample(below, self.kernel)
        return feats[::-1], coarser

    def forward(self, x: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        with self.precision.full():  # the bands and blurred images are the losses' targets: exact, float32
            bs = gaussian_pyramid(x, self.num_levels, self.kernel)
            hs = decompose(x, self.num_levels, self.kernel, blurred=bs)
        feats, coarser = self.encode_pyramid(hs, bs)
        if fwd is not None:  # x's own rows: a prior's extra inputs (VampPrior's pseudo-inputs) ride in the same batch
            n = fwd.x.shape[0]
            fwd.pyramid = PyramidPass(
                targets=[h[:n] for h in hs],
                blurred=[b[:n] for b in bs],
                condition=[None if c is None else c[:n] for c in coarser],
            )
        return torch.cat(feats, dim=1)


# -- latent transform --------------------------------------------------------------------------------------


@attrs.frozen
class LaplacianLatentOptions:
    latent_sizes: tuple[int, ...] = option(
        (64,), "latent size of each level, coarsest first (one value: every level)", positive_ints, int_tuple
    )
    output_activation: str = option("lrelu", "activation after each level's z -> features layer", one_of(*ACTIVATIONS))


class LevelLatent(nn.Module):
    """One level's two sides: features -> (mu_k, log sigma_k^2); concat[z_k..z_K] -> decoder input."""

    def __init__(self, features: int, latent: int, conditioned: int, act: str) -> None:
        super().__init__()
        self.to_params = nn.Linear(features, 2 * latent)
        self.from_z = nn.Sequential(nn.Linear(conditioned, features), activation(act))


class LaplacianLatent(LatentTransform[LaplacianLatentOptions]):
    """Per-level Gaussian latents (coarsest first); level k decodes from concat[z_k, ..., z_K]."""

    name = "laplacian"
    Options = LaplacianLatentOptions
    provides = frozenset({PYRAMID})

    def __init__(self, options: LaplacianLatentOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        enc = ctx.encoder
        if not isinstance(enc, LaplacianEncoder):
            raise self.fail(f"needs the 'laplacian' encoder (per-level features), not '{getattr(enc, 'name', None)}'")
        levels = enc.num_levels
        sizes = levels_option(self, options.latent_sizes, levels, "latent_sizes")
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

    def level(self, k: int) -> LevelLatent:
        """Level k's two sides."""
        return self.levels[k]  # type: ignore[return-value]

    def level_posterior(self, k: int, features: Tensor) -> tuple[Tensor, Tensor]:
        """(mu_k, log sigma_k^2) from level k's flat features."""
        mean, logvar = self.level(k).to_params(features).chunk(2, dim=1)
        return mean, logvar

    def level_u(self, k: int, zs: list[Tensor]) -> Tensor:
        """Level k's decoder input (flat) from concat[z_k, z_{k+1}, ..., z_K]."""
        return self.level(k).from_z(torch.cat(zs[k:], dim=1))

    def posterior(self, features: Tensor, fwd: ForwardPass | None = None) -> Gaussian:
        parts = features.split(self.feature_sizes, dim=1)
        params = [self.level_posterior(k, parts[k]) for k in range(self.num_levels)]
        return Gaussian(self.join_levels([m for m, _ in params]), self.join_levels([lv for _, lv in params]))

    def generate(self, z: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        zs = self.split_levels(z)
        return torch.cat([self.level_u(k, zs) for k in range(self.num_levels)], dim=1)

    def generation_modules(self) -> list[nn.Module]:
        return [self.level(k).from_z for k in range(self.num_levels)]


# -- decoder --------------------------------------------------------------------------------------------------


@attrs.frozen
class LaplacianDecoderOptions:
    widths: tuple[int, ...] = option(
        (64,),
        "channels of each level's last transposed-conv layer, coarsest first "
        "(one value: every level); doubles towards the input",
        positive_ints,
        int_tuple,
    )
    max_width: int = option(256, "cap on a level's channel count", positive_int, to_int)
    activation: str = option("lrelu", "activation after each transposed-conv layer", one_of(*ACTIVATIONS))
    batch_norm: bool = option(True, "batch norm after each hidden layer", converter=to_bool)


class LaplacianDecoder(Decoder[LaplacianDecoderOptions]):
    """Laplacian pyramid decoder: one conv decoder per level outputs h_k; x_k = h_k + u(x_{k+1})."""

    name = "laplacian"
    Options = LaplacianDecoderOptions
    provides = frozenset({PYRAMID})
    output = "image"  # x_0 = the rebuilt pyramid, clamped to [-1, 1] (straight-through)

    def __init__(self, options: LaplacianDecoderOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        tr, enc = ctx.transform, ctx.encoder
        if not isinstance(tr, LaplacianLatent):
            raise self.fail(
                f"needs the 'laplacian' latent transform (per-level decoder inputs), not '{getattr(tr, 'name', None)}'"
            )
        assert isinstance(enc, LaplacianEncoder)  # the laplacian latent transform required it
        levels = tr.num_levels
        widths = levels_option(self, options.widths, levels, "widths")
        c, h, _ = ctx.image_shape
        self.num_levels = levels
        self.kernel = enc.kernel
        self.u_shapes = list(tr.u_shapes)
        self.u_sizes = [math.prod(s) for s in self.u_shapes]
        self.levels = nn.ModuleList()
        for k in range(levels):
            size = h // 2**k
            c_in, h_in, _ = self.u_shapes[k]
            ups = int(math.log2(size // h_in))
            if h_in * 2**ups != size:
                raise self.fail(f"level {k} ({size}x{size}): cannot upsample {h_in}x{h_in} to it by factors of 2")
            level_widths = decoder_widths(widths[k], ups, options.max_width)
            self.levels.append(ConvStack(up_stack(c_in, level_widths, c, options.activation, options.batch_norm)))

    def decode_level(self, k: int, u_k: Tensor) -> Tensor:
        """Level k's band h_k from its flat decoder input."""
        return self.levels[k](u_k.view(-1, *self.u_shapes[k]))

    def forward(self, u: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        parts = u.split(self.u_sizes, dim=1)
        preds = [to_float32(self.decode_level(k, parts[k])) for k in range(self.num_levels)]
        with self.precision.full():  # the bands add up to the image in float32
            recon = reconstruct_levels(preds, self.kernel)
        if fwd is not None:
            if fwd.pyramid is None:
                fwd.pyramid = PyramidPass()
            fwd.pyramid.predictions = preds
            fwd.pyramid.reconstructions = recon
        return straight_through_clamp(recon[0], -1.0, 1.0)
