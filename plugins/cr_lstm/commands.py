"""``genvae draw`` and ``genvae traverse``: the latent channel semantics of the paper's section 4.5."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from genvae.api import GenerativeModel


def _draw_latents(model: GenerativeModel, rows: int, device: torch.device | str) -> torch.Tensor:
    """(rows * T, *latent): row i, column t holds z_i's first t+1 blocks and zeros after them."""
    layout = model.layout
    z = model.prior.sample(rows, model, device)
    cols = [
        torch.where(layout.group_mask(range(t + 1), device=device), z, torch.zeros_like(z))
        for t in range(layout.num_groups)
    ]
    return torch.stack(cols, dim=1).reshape(rows * layout.num_groups, *layout.shape)


def _traverse_latents(
    model: GenerativeModel, step: int, rows: int, columns: int, device: torch.device | str
) -> torch.Tensor:
    """(rows * columns, *latent): row i interpolates z_i's block ``step`` (0-based) towards one new block."""
    layout = model.layout
    z = model.prior.sample(rows, model, device)
    target = model.prior.sample(1, model, device).expand_as(z)
    mask = layout.group_mask([step], device=device)
    alphas = torch.linspace(0.0, 1.0, columns, device=device).view(1, columns, *([1] * len(layout.shape)))
    mixed = (1 - alphas) * z.unsqueeze(1) + alphas * target.unsqueeze(1)
    out = torch.where(mask, mixed, z.unsqueeze(1).expand_as(mixed))
    return out.reshape(rows * columns, *layout.shape)


def commands() -> tuple:
    """The click commands ``draw`` and ``traverse``."""
    import click

    from genvae.api import SEED

    def render(model: GenerativeModel, z: torch.Tensor, output: str, nrow: int, command: str) -> None:
        """The images of ``z`` as one grid, generated in chunks that fit the memory limit beside the grid."""
        from genvae.api import generate_images, grid_bytes, save_grid

        images = generate_images(
            model,
            z,
            held=grid_bytes(model, len(z)),
            command=command,
            holding=f"the grid of {len(z):,} images it writes",
        )
        save_grid(images, output, nrow=nrow)

    @click.command("draw")
    @click.argument("folder", type=click.Path())
    @click.option(
        "-o",
        "--output",
        required=True,
        type=click.Path(dir_okay=False),
        help="Image grid to write (png, jpg, webp, bmp, tif).",
    )
    @click.option(
        "-n", "rows", default=8, show_default=True, type=click.IntRange(1, 256), help="Rows (independent samples)."
    )
    @click.option("--seed", default=0, show_default=True, type=SEED)
    @click.option("--device", default="auto", show_default=True)
    def draw(folder: str, output: str, rows: int, seed: int, device: str) -> None:
        """Progressive drawing (crVAE Figure 8): z starts at zero and its blocks are drawn from the prior one time
        step at a time, a column per step."""
        from genvae.api import check_image_output, console, load_for_inference

        check_image_output(output)
        model, dev = load_for_inference(folder, device, seed)
        layout = model.layout
        with torch.no_grad():
            z = _draw_latents(model, rows, dev)
        render(model, z, output, layout.num_groups, "draw")
        console.print(
            f"wrote {rows} rows x {layout.num_groups} {layout.group_label}s to {output} "
            f"(column t: the first t {layout.group_label}s sampled, the rest zero)"
        )

    @click.command("traverse")
    @click.argument("folder", type=click.Path())
    @click.option(
        "--step", "step", required=True, type=click.IntRange(min=1), help="The time step t (1..T) whose block moves."
    )
    @click.option(
        "-o",
        "--output",
        required=True,
        type=click.Path(dir_okay=False),
        help="Image grid to write (png, jpg, webp, bmp, tif).",
    )
    @click.option(
        "-n", "rows", default=6, show_default=True, type=click.IntRange(1, 256), help="Rows (independent samples z)."
    )
    @click.option(
        "--columns",
        default=8,
        show_default=True,
        type=click.IntRange(2, 256),
        help="Interpolation points from z_t to the new z_t.",
    )
    @click.option("--seed", default=0, show_default=True, type=SEED)
    @click.option("--device", default="auto", show_default=True)
    def traverse(folder: str, step: int, output: str, rows: int, columns: int, seed: int, device: str) -> None:
        """Interpolate block z_t towards one new block (the same for every row) while the other blocks stay fixed
        (crVAE Figure 9)."""
        from genvae.api import GenvaeError, check_image_output, console, load_for_inference

        check_image_output(output)
        model, dev = load_for_inference(folder, device, seed)
        layout = model.layout
        if not 1 <= step <= layout.num_groups:
            raise GenvaeError(
                f"--step {step}: the model's latent has {layout.num_groups} {layout.group_label}s; "
                f"use 1..{layout.num_groups}"
            )
        with torch.no_grad():
            z = _traverse_latents(model, step - 1, rows, columns, dev)
        render(model, z, output, columns, "traverse")
        console.print(
            f"wrote {rows} rows x {columns} columns to {output} ({layout.group_label} {step} interpolated "
            f"towards one new block, the others fixed)"
        )

    return draw, traverse
