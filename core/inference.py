"""Running a model on many images within the memory limit: the chunked loops every command shares.

A command asks for images (``sample -n 64``, ``reconstruct -n 32``, an epoch's sample grid); the
chunk that runs through the model at once is the largest that fits the memory limit beside what
the command keeps (:func:`genvae.core.budget.inference_batch`), and a command that cannot run even
one image at a time is refused in one line before any work. The results do not depend on the chunk:
latents are drawn in the same blocks as without a limit (``block``), then generated chunk by chunk,
and every model here treats the images of a batch independently (eval mode).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genvae.core.budget import image_bytes, inference_batch

#: latents are drawn in blocks of this many images (``prior.sample``), whatever chunk they are generated in
SAMPLE_BATCH = 256


def _latent_bytes(model, count: int) -> int:
    return count * math.prod(model.layout.shape) * 4


def _output(model, count: int, dtype: torch.dtype) -> Tensor:
    return torch.empty(count, *model.spec.image_shape, dtype=dtype)


def _store(out: Tensor, start: int, images: Tensor) -> int:
    """Write images in [-1, 1] into ``out`` (uint8 or float, on the CPU) from ``start``; returns the next index."""
    from genvae.core.decode import to_uint8

    images = images.detach()
    out[start : start + len(images)] = to_uint8(images.cpu()) if out.dtype == torch.uint8 else images.float().cpu()
    return start + len(images)


def sample_chunks(
    model,
    count: int,
    *,
    block: int = SAMPLE_BATCH,
    dtype: torch.dtype = torch.uint8,
    held: int = 0,
    holding: str = "",
    command: str = "sample",
) -> tuple[int, int]:
    """(latent block, generation chunk) for :func:`draw_samples` of ``count`` images: a one-line
    :class:`~genvae.core.budget.BudgetError` when even one image does not fit beside ``held`` bytes and the
    ``count`` images kept (``dtype``), before anything is drawn."""
    kept = held + image_bytes(model, count, torch.empty((), dtype=dtype).element_size())
    holding = holding or f"the {count:,} images it keeps"
    first = min(count, block)
    chunk = inference_batch(
        model, first, what="generate", held=kept + _latent_bytes(model, first), holding=holding, command=command
    )
    z_block = inference_batch(model, first, what="prior", held=kept, holding=holding, command=command)
    return z_block, min(chunk, z_block)


@torch.no_grad()
def draw_samples(
    model,
    count: int,
    device: torch.device | str | None = None,
    *,
    block: int = SAMPLE_BATCH,
    dtype: torch.dtype = torch.uint8,
    held: int = 0,
    holding: str = "",
    command: str = "sample",
    fixed: Tensor | None = None,
    fixed_groups: int = 0,
) -> Tensor:
    """``count`` prior samples on the CPU, as uint8 (or float in [-1, 1]: ``dtype=torch.float32``).

    Latents are drawn ``block`` at a time, as ``model.sample`` draws them, and generated in chunks that fit
    the memory limit beside ``held`` bytes (what the caller keeps meanwhile, e.g. the grid it writes); the
    images are the same whatever the chunk. ``fixed`` / ``fixed_groups``: keep a latent's first groups
    (``sample --fix-levels``)."""
    device = device or model.device
    z_block, chunk = sample_chunks(model, count, block=block, dtype=dtype, held=held, holding=holding, command=command)
    extra = {} if fixed is None else {"fixed": fixed, "fixed_groups": fixed_groups}
    out = _output(model, count, dtype)
    done = 0
    while done < count:
        z = model.prior.sample(min(z_block, count - done), model, device, **extra)
        for part in z.split(chunk):
            done = _store(out, done, model.generate(part)[1])
    return out


@torch.no_grad()
def generate_images(
    model, z: Tensor, *, dtype: torch.dtype = torch.uint8, held: int = 0, holding: str = "", command: str = "generate"
) -> Tensor:
    """The images of latents ``z`` on the CPU (uint8, or float in [-1, 1]), generated in chunks that fit."""
    kept = held + image_bytes(model, len(z), torch.empty((), dtype=dtype).element_size())
    chunk = inference_batch(
        model, len(z), what="generate", held=kept, command=command, holding=holding or f"the {len(z):,} images it keeps"
    )
    out = _output(model, len(z), dtype)
    done = 0
    for part in z.split(chunk):
        done = _store(out, done, model.generate(part)[1])
    return out


@torch.no_grad()
def reconstruct_images(
    model,
    images: Tensor,
    device: torch.device | str | None = None,
    *,
    held: int = 0,
    holding: str = "",
    command: str = "reconstruct",
) -> Tensor:
    """Reconstructions (posterior mean) of ``images`` (uint8, or float in [-1, 1]) as float in [-1, 1] on the
    CPU, in chunks that fit the memory limit beside ``held`` bytes."""
    from genvae.core.decode import to_model_range

    device = device or model.device
    kept = held + image_bytes(model, len(images))
    chunk = inference_batch(
        model,
        len(images),
        what="reconstruct",
        held=kept,
        command=command,
        holding=holding or f"the {len(images):,} reconstructions it keeps",
    )
    out = _output(model, len(images), torch.float32)
    done = 0
    for part in images.split(chunk):
        x = to_model_range(part.to(device)) if part.dtype == torch.uint8 else part.to(device)
        done = _store(out, done, model.reconstruct(x))
    return out


__all__ = ["SAMPLE_BATCH", "draw_samples", "generate_images", "reconstruct_images", "sample_chunks"]
