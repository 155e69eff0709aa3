"""The plugin's commands: ``genvae edit`` (paper 5.2) and ``genvae train-levels`` (greedy, retrain M; 5.1.3)."""

from __future__ import annotations

import math
from pathlib import Path

import click

from genvae.api import GenvaeError, pyramid_parts
from genvae.plugins.laplacian.editing import BLENDS, edit_batch, edit_image, edit_prior_batch, load_mask
from genvae.plugins.laplacian.loss import PyramidMSELoss
from genvae.plugins.laplacian.training import greedy_stages, run_stage


def add_commands(cli: click.Group) -> None:
    """Add ``genvae edit`` and ``genvae train-levels`` to the CLI group (the plugin's genvae_register_commands)."""

    from genvae.api import SEED, FiniteFloat, data_options

    @cli.command("edit")
    @click.argument("folder", type=click.Path())
    @click.argument("image", type=click.Path(dir_okay=False, exists=True))
    @click.option(
        "--coarse",
        type=click.Path(dir_okay=False, exists=True),
        help="A painted copy of IMAGE (any size, fitted like IMAGE): its coarse levels replace the input's.",
    )
    @click.option(
        "--mask",
        type=click.Path(dir_okay=False, exists=True),
        help="A black/white image: white marks the region where new finer levels are sampled and "
        "composited (default with --coarse: where the painted coarse image differs).",
    )
    @click.option(
        "--keep-levels",
        default=1,
        show_default=True,
        type=click.IntRange(min=1),
        help="Coarse pyramid levels kept fixed (from --coarse or the input); the rest are sampled.",
    )
    @click.option("-n", "count", default=8, show_default=True, type=click.IntRange(1, 256), help="Number of variants.")
    @click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for the PNGs.")
    @click.option(
        "--blend",
        type=click.Choice(BLENDS),
        default="alpha",
        show_default=True,
        help="Compositing: alpha (mask softened by one blur) or poisson (gradient-domain: the sample's "
        "gradients inside the mask, the reconstruction as boundary).",
    )
    @click.option("--seed", default=0, show_default=True, type=SEED)
    @click.option("--device", default="auto", show_default=True)
    def edit(
        folder: str,
        image: str,
        coarse: str | None,
        mask: str | None,
        keep_levels: int,
        count: int,
        blend: str,
        output: str,
        seed: int,
        device: str,
    ) -> None:
        """Edit an image with a LapCVAE (paper 5.2): paint its coarse level and/or resample a masked region."""
        from genvae.api import (
            check_image_output,
            console,
            grid_bytes,
            image_bytes,
            load_for_inference,
            load_image,
            save_grid,
        )

        names = [
            "input",
            "reconstruction",
            "base",
            "mask",
            "pyramid",
            "samples",
            "composites",
            *(f"edit-{i:02d}" for i in range(count)),
        ]
        for name in names:  # every output checked before any is written
            check_image_output(Path(output) / f"{name}.png")
        model, _ = load_for_inference(folder, device, seed)
        pyramid_parts(model)
        x = load_image(image, model)
        painted = load_image(coarse, model) if coarse else None
        region = load_mask(mask, model) if mask else None
        # kept beside the variants being made: every variant's sample and composite, their latents, the grid
        held = image_bytes(model, 2 * count) + count * math.prod(model.layout.shape) * 4 + grid_bytes(model, count)
        batch, prior_batch = edit_batch(model, count, blend, held), edit_prior_batch(model, count, held)
        out = edit_image(
            model,
            x,
            painted,
            region,
            n=count,
            keep_levels=keep_levels,
            blend=blend,
            batch=batch,
            prior_batch=prior_batch,
        )
        folder_out = Path(output)
        folder_out.mkdir(parents=True, exist_ok=True)
        for name in ("input", "reconstruction", "base", "mask"):
            save_grid(out[name].float().cpu(), folder_out / f"{name}.png")
        save_grid(out["pyramid"].float().cpu(), folder_out / "pyramid.png", nrow=len(out["pyramid"]))
        save_grid(out["samples"].float().cpu(), folder_out / "samples.png")
        save_grid(out["composites"].float().cpu(), folder_out / "composites.png")
        for i, img in enumerate(out["composites"]):
            save_grid(img.float().cpu(), folder_out / f"edit-{i:02d}.png")
        console.print(
            f"wrote {count} edits of {image} to {folder_out} (composites.png, edit-NN.png; samples.png "
            "before compositing)"
        )

    @cli.command("train-levels")
    @click.argument("folder", type=click.Path())
    @data_options
    @click.option(
        "--greedy",
        "mode",
        flag_value="greedy",
        help="Train level by level, coarsest first, freezing the others (each level's M network trains with it).",
    )
    @click.option(
        "--retrain-m",
        "mode",
        flag_value="retrain-m",
        help="Retrain only the M networks of a trained model (paper 5.1.3).",
    )
    @click.option(
        "--steps", type=click.IntRange(min=1), required=True, help="Steps per level (--greedy) or in all (--retrain-m)."
    )
    @click.option("--batch-size", type=click.IntRange(min=1), help="Images per step.")
    @click.option("--lr", type=FiniteFloat(positive=True), help="Learning rate.")
    @click.option("--device", default="auto", show_default=True)
    @click.option("--seed", type=SEED, help="Seed of every random stream.")
    @click.option("--quiet", is_flag=True, help="Only the last metrics of each stage.")
    def train_levels(
        folder: str,
        data: str | None,
        data_root: str | None,
        download: bool,
        mode: str | None,
        steps: int,
        batch_size: int | None,
        lr: float | None,
        device: str,
        seed: int | None,
        quiet: bool,
    ) -> None:
        """Level-wise LapCVAE training: --greedy (coarsest first) or --retrain-m; stages go to FOLDER/stages/."""
        from genvae.api import console, load_model, registry, require_single_process, save_model

        require_single_process("genvae train-levels")
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
                raise GenvaeError(
                    "--greedy needs prior.detach=true (the re-encoding path would train coarser levels from finer ones)"
                )
            recon = [loss for loss in model.losses.values() if loss.role == "reconstruction"]
            if not all(isinstance(loss, PyramidMSELoss) and loss.options.skip_frozen_levels for loss in recon):
                raise GenvaeError(
                    "--greedy needs the 'pyramid-mse' loss (with skip_frozen_levels) as the "
                    "reconstruction loss, so untrained levels send no gradient to trained ones"
                )
            stages = greedy_stages(model)
        from genvae.api import ModelFolder, lock_folder

        with lock_folder(folder):  # one process at a time writes this model folder
            for name, _ in stages:  # every stage's folder is checked before the first stage writes anything
                ModelFolder(folder).child(f"stages/{name}").check_can_build_into()
            for name, paths in stages:
                run_stage(
                    model,
                    Path(folder),
                    name,
                    paths,
                    steps,
                    data=data,
                    data_root=data_root,
                    download=download,
                    batch_size=batch_size,
                    lr=lr,
                    device=device,
                    seed=seed,
                    echo=None if quiet else console.print,
                    registry=registry(),
                )
                save_model(model, folder)
                console.print(f"{name}: trained {', '.join(paths)} for {steps} steps; weights saved to {folder}")
