"""``genvae neighbours``: samples beside their nearest training images (LapCVAE paper, Figure 6).

A model that memorised its data draws samples that are near copies of training images; putting
each sample next to its nearest neighbours in the training set (pixel L2 distance on the 0-255
scale, the same space the images are stored in) shows whether it does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from genvae.api import hookimpl

if TYPE_CHECKING:
    import click

CHUNK = 4096  # training images compared per matrix product: bounds memory on large data sets
CHUNK_BYTES = 512 * 2**20  # ... and so does this: at most this many bytes of them in float64 (large images)


def chunk_rows(shape: Sequence[int]) -> int:
    """Training images of ``shape`` (C, H, W) that :func:`nearest` compares per matrix product."""
    return max(1, min(CHUNK, CHUNK_BYTES // (8 * math.prod(shape))))


def nearest_bytes(count: int, shape: Sequence[int], images: int) -> int:
    """What :func:`nearest` allocates for ``count`` samples of ``shape`` among ``images`` training images: the
    samples and a chunk in float64 (and their squares), and the distances."""
    rows = min(chunk_rows(shape), images)
    return 2 * 8 * (count + rows) * math.prod(shape) + 4 * 8 * count * (rows + CHUNK)


def nearest(samples: torch.Tensor, images: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For uint8 ``samples`` (n, C, H, W) and ``images`` (N, C, H, W): the ``k`` smallest L2 distances on
    the 0-255 scale and their indices into ``images``, each (n, k), nearest first."""
    if samples.shape[1:] != images.shape[1:]:
        raise ValueError(f"samples {list(samples.shape[1:])} and images {list(images.shape[1:])} differ in shape")
    k = min(k, images.shape[0])
    s = samples.flatten(1).double()
    s_sq = s.pow(2).sum(1, keepdim=True)
    best_d = torch.full((s.shape[0], 0), 0.0, dtype=torch.float64)
    best_i = torch.zeros((s.shape[0], 0), dtype=torch.long)
    rows = chunk_rows(images.shape[1:])
    for start in range(0, images.shape[0], rows):
        chunk = images[start : start + rows].flatten(1).double()
        d2 = (s_sq + chunk.pow(2).sum(1)[None] - 2.0 * s @ chunk.T).clamp_min_(0.0)
        d = torch.cat([best_d, d2.sqrt()], 1)
        i = torch.cat([best_i, torch.arange(start, start + chunk.shape[0]).expand(s.shape[0], -1)], 1)
        best_d, order = d.topk(k, dim=1, largest=False, sorted=True)
        best_i = i.gather(1, order)
    return best_d, best_i


@hookimpl
def genvae_register_commands(cli: click.Group) -> None:
    import click

    from genvae.api import SAMPLE_BATCH, console, data_options, device_option, load_for_inference, seed_option

    @cli.command("neighbours")
    @click.argument("folder", type=click.Path())
    @data_options
    @click.option(
        "-n", "count", default=8, show_default=True, type=click.IntRange(1, 256), help="Samples (one row each)."
    )
    @click.option(
        "-k",
        "k",
        default=5,
        show_default=True,
        type=click.IntRange(1, 32),
        help="Nearest training images shown per sample.",
    )
    @click.option("--split", default="train", show_default=True, help="Dataset split searched (named datasets).")
    @click.option(
        "-o",
        "--output",
        required=True,
        type=click.Path(dir_okay=False),
        help="Image grid: each row a sample, then its k nearest training images (png, jpg, ...).",
    )
    @seed_option
    @device_option
    def neighbours(
        folder: str,
        data: str | None,
        data_root: str | None,
        download: bool,
        count: int,
        k: int,
        split: str,
        output: str,
        seed: int,
        device: str,
    ) -> None:
        """Samples beside their nearest training images (pixel L2), to check that a model does not memorise."""
        from genvae.api import check_image_output, draw_samples, grid_bytes, image_bytes, load_command_data, save_grid

        check_image_output(output)
        model, dev = load_for_inference(folder, device, seed)
        data_set = load_command_data(model, data, data_root, download, split)
        shape = model.spec.image_shape
        shown = count * (min(k, len(data_set)) + 1)
        # kept beside the samples being made: the search's scratch, the grid's images (uint8) and the grid
        held = nearest_bytes(count, shape, len(data_set)) + image_bytes(model, shown, 1) + grid_bytes(model, shown)
        pixels = draw_samples(
            model,
            count,
            dev,
            block=SAMPLE_BATCH,
            held=held,
            command="neighbours",
            holding=f"the nearest-image search and the grid of {shown:,} images",
        )
        dist, idx = nearest(pixels, data_set.images, k)
        rows = torch.cat([torch.cat([pixels[r : r + 1], data_set.images[idx[r]]]) for r in range(count)])
        save_grid(rows, output, nrow=idx.shape[1] + 1)
        rms = dist[:, 0] / (pixels[0].numel() ** 0.5)  # per-pixel RMS difference to the nearest image
        console.print(
            f"wrote {count} samples with their {idx.shape[1]} nearest images of {data_set.source} to "
            f"{output}; nearest-image RMS difference per pixel (0-255): mean {rms.mean():.2f}, "
            f"min {rms.min():.2f}",
            markup=False,
            highlight=False,
        )
