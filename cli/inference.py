"""The commands that run a trained model: ``sample``, ``reconstruct``, ``evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from genvae.cli.commands import (
    COUNT,
    SAMPLE_BATCH,
    SEED,
    console,
    data_options,
    err_console,
    load_command_data,
    load_for_inference,
    load_image,
    registry,
)
from genvae.core.errors import GenvaeError

MAX_SAMPLES = 10_000
SAMPLE_COUNT = click.IntRange(1, MAX_SAMPLES)


def check_json_output(path: Path) -> None:
    """A JSON report may replace only a JSON file genvae wrote (it carries ``genvae_version``)."""
    from genvae.core.files import check_writable_file

    check_writable_file(path)
    if path.exists():
        try:
            ours = path.stat().st_size < 1 << 20 and "genvae_version" in json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError, TypeError):
            ours = False
        if not ours:
            raise GenvaeError(f"{path} exists and was not written by genvae; remove it or choose another path")


@click.command()
@click.argument("folder", type=click.Path())
@click.option("-n", "count", default=64, show_default=True, type=SAMPLE_COUNT, help="Number of samples.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Image grid to write; the extension picks the format (png, jpg, webp, bmp, tif).",
)
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--device", default="auto", show_default=True)
@click.option("--nrow", type=COUNT, help="Images per row (default: square grid).")
@click.option(
    "--from",
    "source",
    type=click.Path(dir_okay=False, exists=True),
    help="An image whose coarse latent groups are kept (with --fix-levels).",
)
@click.option(
    "--fix-levels",
    "--fix-groups",
    "fix",
    multiple=True,
    type=int,
    help="Keep the first K latent groups (coarsest pyramid levels / first time steps) of --from and "
    "sample the rest; repeat for one grid per K.",
)
def sample(folder, count, output, seed, device, nrow, source, fix) -> None:
    """Draw samples from the prior and write them as a grid (generated in chunks that fit the memory limit)."""
    import torch

    from genvae.core.budget import grid_bytes
    from genvae.core.decode import to_uint8
    from genvae.core.images import check_image_output, save_grid
    from genvae.core.inference import draw_samples

    if bool(source) != bool(fix):
        raise GenvaeError("--from IMAGE and --fix-levels K go together")
    out = Path(output)
    for k in fix if len(fix) > 1 else ():
        check_image_output(out.with_name(f"{out.stem}-fix{k}{out.suffix}"))
    check_image_output(out)
    model, dev = load_for_inference(folder, device, seed)
    shown = count + bool(fix)  # with --from, the input comes first
    held, holding = grid_bytes(model, shown), f"the {shown:,} images and the grid it writes"
    if not fix:
        save_grid(draw_samples(model, count, dev, block=SAMPLE_BATCH, held=held, holding=holding), output, nrow=nrow)
        console.print(f"wrote {count} samples to {output}")
        return
    layout = model.layout
    bad = [k for k in fix if not 0 <= k <= layout.num_groups]
    if bad:
        raise GenvaeError(
            f"--fix-levels {bad[0]}: the model's latent has {layout.num_groups} "
            f"{layout.group_label}s; use 0..{layout.num_groups}"
        )
    x = load_image(source, model)
    with torch.no_grad():
        fixed = model.encode(x).mean
        for k in fix:
            # every latent drawn at once (block=count), as they always were
            images = draw_samples(
                model, count, dev, block=count, fixed=fixed, fixed_groups=k, held=held, holding=holding
            )
            path = out if len(fix) == 1 else out.with_name(f"{out.stem}-fix{k}{out.suffix}")
            save_grid(torch.cat([to_uint8(x.cpu()), images]), path, nrow=nrow)
            console.print(
                f"wrote {count} samples keeping {k} {layout.group_label}(s) of {source} to {path} "
                "(first image: the input)"
            )


def _metric_list(value: str | None) -> list[str]:
    names = [m.strip() for m in (value or "").split(",") if m.strip()]
    return list(dict.fromkeys(names))


@click.command()
@click.argument("folder", type=click.Path())
@data_options
@click.option(
    "--metrics",
    "metrics",
    default=None,
    metavar="NAMES",
    help="Comma-separated metrics (genvae list-plugins lists them): rmse, fid, kid, is, pr. [default: rmse]",
)
@click.option("--metric", "metrics_alias", default=None, hidden=True, help="Same as --metrics.")
@click.option(
    "--classifier",
    type=click.Path(),
    help="Feature network for fid/kid/is/pr: a folder from genvae "
    "train-classifier (or a local Inception-v3 .safetensors file).",
)
@click.option(
    "--compare",
    "others",
    multiple=True,
    type=click.Path(),
    help="Another model folder, scored the same way beside FOLDER (repeatable).",
)
@click.option("--split", default="test", show_default=True, help="Dataset split (named datasets).")
@click.option("--limit", type=COUNT, help="Evaluate only the first N images.")
@click.option(
    "--samples",
    "n_samples",
    type=COUNT,
    help="Samples per model for the sample metrics [default: as many as real images].",
)
@click.option("--batch-size", default=256, show_default=True, type=COUNT)
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the samples.")
@click.option("--device", default="auto", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the report as JSON here too.")
def evaluate(
    folder,
    data,
    data_root,
    download,
    metrics,
    metrics_alias,
    classifier,
    others,
    split,
    limit,
    n_samples,
    batch_size,
    seed,
    device,
    output,
) -> None:
    """Score models on a dataset: reconstruction RMSE and sample quality (FID, KID, IS, precision/recall) in a
    feature network's space; several models side by side with --compare. Prints a table and JSON."""
    from genvae.core.checkpoint import write_json
    from genvae.core.evaluation import check_metrics, evaluate_models

    if metrics and metrics_alias:
        raise GenvaeError("give --metrics once (--metric is its old name)")
    names = check_metrics(_metric_list(metrics or metrics_alias or "rmse"), registry(), classifier)
    if output:
        check_json_output(Path(output))
    report = evaluate_models(
        [(str(path), str(path)) for path in (folder, *others)],
        names,
        data=data,
        data_root=data_root,
        download=download,
        classifier=classifier,
        split=split,
        limit=limit,
        n_samples=n_samples,
        batch_size=batch_size,
        seed=seed,
        device=device,
        registry=registry(),
    )
    source, count, feature_label = report["data"], report["images"], report["feature_network"]
    labels, results = report["labels"], report["models"]
    if output:
        write_json(Path(output), report)
    table = Table(title=f"{source}, {count} images" + (f"; features: {feature_label}" if feature_label else ""))
    table.add_column("metric")
    for r in results:
        table.add_column(r["model"], justify="right")
    for name in names:
        for key in results[0]["metrics"][name]:
            row = [f"{labels[name]}: {key}" if key != name else labels[name]]
            row += [f"{r['metrics'][name][key]:.4g}" for r in results]
            table.add_row(*row)
    err_console.print(table)
    click.echo(json.dumps(report))


@click.command()
@click.argument("folder", type=click.Path())
@data_options
@click.option("-n", "count", default=32, show_default=True, type=click.IntRange(1, 1024), help="Number of images.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Image grid to write; the extension picks the format (png, jpg, webp, bmp, tif).",
)
@click.option("--split", default="test", show_default=True, help="Dataset split (named datasets).")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--device", default="auto", show_default=True)
def reconstruct(folder, data, data_root, download, count, output, split, seed, device) -> None:
    """Reconstruct images (posterior mean): rows alternate originals and reconstructions."""
    from genvae.cli.report import paired_rows
    from genvae.core.budget import grid_bytes, image_bytes
    from genvae.core.decode import to_model_range, to_uint8
    from genvae.core.images import check_image_output, save_grid
    from genvae.core.inference import reconstruct_images

    check_image_output(Path(output))
    model, dev = load_for_inference(folder, device, seed)
    pixels = load_command_data(model, data, data_root, download, split).images[:count]
    n = len(pixels)
    # kept beside the model: the originals in [-1, 1], the pairs as uint8 and the grid they make
    held = image_bytes(model, n) + image_bytes(model, 2 * n, 1) + grid_bytes(model, 2 * n)
    x_hat = reconstruct_images(model, pixels, dev, held=held, holding=f"the {n:,} images and the grid it keeps")
    save_grid(paired_rows(pixels, to_uint8(x_hat)), output, nrow=8)
    mse = (x_hat - to_model_range(pixels)).pow(2).mean().item()
    console.print(f"wrote {n} reconstructions to {output} (pixel MSE {mse:.4f} in [-1, 1] units)")


#: the commands this module adds to the genvae group
COMMANDS = [sample, evaluate, reconstruct]
