"""Coarse-level image editing (paper 5.2): keep coarse levels, resample the finer ones, composite."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from genvae.api import GenerativeModel, GenvaeError, pyramid_parts
from genvae.plugins.laplacian.pyramid import (
    blur_down,
    decompose,
    gaussian_pyramid,
    reconstruct_levels,
    upsample,
    upsample_to,
)

BLENDS = ("alpha", "poisson")


def soft_mask(mask: Tensor, kernel: str = "binomial") -> Tensor:
    """A mask in [0, 1] with its edge softened by one blur of the pyramid kernel (same size)."""
    return upsample(blur_down(mask, kernel), kernel).clamp(0.0, 1.0) if mask.shape[-1] % 2 == 0 else mask


def _neighbour_sum(f: Tensor) -> Tensor:
    """Sum of each pixel's 4 neighbours inside the image (the ones outside count as 0)."""
    p = F.pad(f, (1, 1, 1, 1))
    return p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]


def poisson_blend(
    source: Tensor, target: Tensor, mask: Tensor, tol: float = 1e-6, max_iter: int | None = None
) -> Tensor:
    """Gradient-domain compositing (Pérez, Gangnet and Blake, *Poisson image editing*, 2003): ``source``
    pasted into ``target`` inside ``mask`` (> 0.5 = inside), each channel independently.

    Outside the mask the result is ``target``; inside it is the f whose discrete Laplacian equals the
    source's, with the target as the boundary value: for every pixel p of the mask, over its 4
    neighbours N_p within the image (an image border is a Neumann boundary),
    |N_p| f_p - sum_{q in N_p, inside} f_q = sum_{q in N_p} (s_p - s_q) + sum_{q in N_p, outside} t_q.
    Solved by conjugate gradients in float64, started from the source, until the residual is below
    ``tol`` times the right-hand side's norm (or ``max_iter``, default 20 * (H + W), steps); each channel of
    each image stops on its own, so its result does not depend on the others in the batch.
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
        if not s.is_meta and bool((rs <= limit).all()):  # sized on meta (genvae.core.budget): every step runs
            break
        ap = apply(p)
        pap = (p * ap).sum(dims, keepdim=True)
        # a channel that has converged stays as it is, so each image's result is the same in any batch
        alpha = torch.where((pap > 0) & (rs > limit), rs / pap.clamp_min(1e-300), torch.zeros_like(pap))
        f = f + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(dims, keepdim=True)
        beta = torch.where(rs > 0, rs_new / rs.clamp_min(1e-300), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    return (m * f + (1.0 - m) * t).to(source.dtype)


def composite(samples: Tensor, recon: Tensor, mask: Tensor, blend: str, kernel: str) -> Tensor:
    """Samples pasted into the reconstruction inside ``mask``: ``alpha`` (the mask softened by one blur) or
    ``poisson`` (:func:`poisson_blend`)."""
    if blend == "poisson":
        return poisson_blend(samples, recon, mask)
    soft = soft_mask(mask, kernel)
    return soft * samples + (1.0 - soft) * recon


def edit_program(blend: str) -> Callable[[GenerativeModel, int], tuple[Tensor, Tensor]]:
    """What :func:`edit_image` runs per chunk of variants (sized on meta by genvae.core.budget): their
    generation, then their compositing (two conjugate-gradient steps stand for all of them)."""

    def run(model: GenerativeModel, batch: int) -> tuple[Tensor, Tensor]:
        enc, _, _ = pyramid_parts(model)
        samples = model.generate(torch.zeros(batch, *model.layout.shape))[1]
        recon = torch.zeros(1, *model.spec.image_shape)
        mask = torch.zeros(1, 1, *model.spec.image_shape[1:])
        if blend == "poisson":
            return samples, poisson_blend(samples, recon, mask, max_iter=2)
        return samples, composite(samples, recon, mask, blend, enc.kernel)

    return run


def edit_batch(model: GenerativeModel, n: int, blend: str = "alpha", held: int = 0) -> int:
    """Variants :func:`edit_image` may generate and composite at once under the memory limit, beside ``held``
    bytes; a one-line BudgetError when even one does not fit."""
    from genvae.api import inference_batch

    return inference_batch(
        model,
        n,
        what=f"edit-{blend}",
        held=held,
        command="edit",
        holding="the variants and grids it keeps",
        program=edit_program(blend),
    )


def edit_prior_batch(model: GenerativeModel, n: int, held: int = 0) -> int:
    """Variants whose latents :func:`edit_image` may draw at once (the prior's own work: an M-network decodes
    every coarser level) under the memory limit, beside ``held`` bytes."""
    from genvae.api import inference_batch

    return inference_batch(model, n, what="prior", held=held, command="edit", holding="the variants and grids it keeps")


@torch.no_grad()
def edit_image(
    model: GenerativeModel,
    x: Tensor,
    coarse: Tensor | None = None,
    mask: Tensor | None = None,
    n: int = 8,
    keep_levels: int = 1,
    threshold: float = 0.1,
    blend: str = "alpha",
    batch: int | None = None,
    prior_batch: int | None = None,
) -> dict[str, Tensor]:
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
    ``batch``: variants generated and composited at once (default: all; :func:`edit_batch` picks it); the
    latents are drawn first, all at once (``prior_batch`` at a time when the memory limit asks for it), so
    the results do not depend on ``batch``.
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
    assert mask is not None  # given, or derived from the painted image above
    block = max(1, prior_batch or n)
    z = torch.cat(
        [
            model.prior.sample(min(block, n - lo), model, x.device, fixed=fixed, fixed_groups=keep_levels)
            for lo in range(0, n, block)
        ]
    )
    samples = torch.empty(n, *x.shape[1:], device=x.device)
    composites = torch.empty_like(samples)
    for lo in range(0, n, max(1, batch or n)):
        part = model.generate(z[lo : lo + (batch or n)])[1]
        samples[lo : lo + len(part)] = part
        composites[lo : lo + len(part)] = composite(part, recon, mask, blend, enc.kernel)
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


def load_mask(path: str | os.PathLike[str], model: GenerativeModel) -> Tensor:
    """A black/white image file as a (1, 1, H, W) mask of 0/1 at the model's image size (white = 1)."""
    from genvae.api import load_mask as read_mask

    return read_mask(path, model.spec.image_size).to(model.device)
