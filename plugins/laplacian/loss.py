"""``pyramid-mse``: the paper's reconstruction loss, squared error per level on the bands h_k."""

from __future__ import annotations

import typing

import attrs
from torch import Tensor, nn

from genvae.api import (
    PYRAMID,
    BuildContext,
    ForwardPass,
    GenerativeModel,
    Loss,
    PyramidDecoder,
    float_tuple,
    one_of,
    option,
    pyramid_parts,
    reduce_images,
    reduction_option,
    shorten,
    to_bool,
)
from genvae.plugins.laplacian.pyramid import levels_option


@attrs.frozen
class PyramidMSEOptions:
    reduction: str = reduction_option(
        "per level: sum over each image's elements then batch mean (ELBO scale), or mean over all"
    )
    level_scale: str = option(
        "image",
        "with reduction=sum: 'image' multiplies level k's sum by its area ratio 4^k, "
        "so each level's mean squared error counts over the full image's pixels (the paper's "
        "MSE per level); 'none' keeps plain per-level sums",
        one_of("image", "none"),
    )
    level_weights: tuple[float, ...] = option(
        (), "weight of each level's term, coarsest first; empty = 1 for all", converter=float_tuple
    )
    skip_frozen_levels: bool = option(
        True,
        "leave out the term of a level whose encoder, latent and decoder are "
        "all frozen (greedy training: untrained finer levels send no gradient "
        "into the coarser latents)",
        converter=to_bool,
    )

    def __attrs_post_init__(self) -> None:
        if any(w < 0 for w in self.level_weights):
            raise ValueError(f"level_weights must be >= 0, got {shorten(list(self.level_weights))}")


class PyramidMSELoss(Loss[PyramidMSEOptions]):
    """Per-level squared error between predicted and true pyramid levels h_k (the paper's loss), summed over levels."""

    name = "pyramid-mse"
    Options = PyramidMSEOptions
    role = "reconstruction"
    requires = frozenset({PYRAMID})
    #: (encoder, latent, decoder) level modules by level, kept with refer() in attach
    _level_modules: list[tuple[nn.Module, nn.Module, nn.Module]]

    def __init__(self, options: PyramidMSEOptions, ctx: BuildContext, weight: float = 1.0) -> None:
        super().__init__(options, ctx, weight)
        self.weights: list[float] = []
        dec = ctx.decoder
        if dec is None or PYRAMID not in dec.provides:
            raise self.fail(
                f"needs a pyramid encoder, latent transform and decoder such as 'laplacian' (this "
                f"model's decoder is '{getattr(dec, 'name', None)}')"
            )
        levels = typing.cast(PyramidDecoder, dec).num_levels  # it provides the pyramid capability
        self.weights = levels_option(self, options.level_weights or (1.0,), levels, "level_weights")
        self.refer("_level_modules", [])  # (encoder, latent, decoder) level modules by level, set in attach

    def attach(self, model: GenerativeModel) -> None:
        enc, tr, dec = pyramid_parts(model)
        self.refer("_level_modules", [(enc.levels[k], tr.levels[k], dec.levels[k]) for k in range(dec.num_levels)])

    def _active(self, k: int) -> bool:
        if not self.options.skip_frozen_levels or not self._level_modules:
            return True
        return any(p.requires_grad for m in self._level_modules[k] for p in m.parameters())

    def forward(self, fwd: ForwardPass, phase: str) -> dict[str, Tensor]:
        assert fwd.pyramid is not None  # the pyramid encoder and decoder fill it
        preds, targets = fwd.pyramid.predictions, fwd.pyramid.targets
        total = fwd.x.new_zeros(())
        full = targets[0].shape[-2] * targets[0].shape[-1]
        for k, (pred, target) in enumerate(zip(preds, targets, strict=True)):
            if self.weights[k] and self._active(k):
                weight = self.weights[k]
                if self.options.level_scale == "image" and self.options.reduction == "sum":
                    weight *= full / (target.shape[-2] * target.shape[-1])
                total = total + weight * reduce_images((pred - target).pow(2), self.options.reduction)
        return {"pyramid-mse": self.weight * total}
