"""``completion``: image completion by latent optimisation (crVAE paper, section 4.4).

Occlude part of an image and search the latent space for a z whose generation matches what is still visible:

    min_z  ||x_hat ⊙ m - x ⊙ m||^2 + gamma * (-log N(z; 0, I)) + tau * log(1 - D(x_hat)),   x_hat = gen(z)

m is 1 on visible pixels and 0 on the occluded ones. The squared error is summed over each image's visible
pixels (images in [-1, 1]); -log N(z; 0, I) is 0.5 ||z||^2 up to a constant; the last term (only when the model has
a discriminator: a loss that provides the ``discriminator`` capability) is log(1 - sigmoid(logit)) = -softplus(logit),
which pulls x_hat towards what the discriminator calls real. The paper prints "+ gamma log N(z; 0, I)"; minimising
that would push z away from the prior, so we read it as the negative log-density (the usual form, Yeh et al.).

The optimisation runs Adam on z from ``starts`` random starts z ~ N(0, I) per image, all in one batch, and keeps,
per image, the start with the lowest final objective. Each image's objective is its own: its starts come from a
random stream of its own (seed + its index), and the discriminator judges each generated image as a batch of one
(``discriminate_each``), so completing an image alone or among others gives the same result. The completion shown
is the visible pixels of the input with x_hat filled in where it was occluded (``composite``); x_hat itself is
returned too.

The paper gives no gamma, tau, step count or learning rate; ours (documented in docs/completion.md): gamma 0.1,
tau 1, 300 steps, lr 0.05, 4 starts. The masks for faces (eyes, mouth) assume aligned faces as in CelebA.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Iterable
from pathlib import Path

import click
import torch
import torch.nn.functional as F
from torch import Tensor

from genvae.api import DISCRIMINATOR, DiscriminatorTrunk, GenerativeModel, GenvaeError, Loss, hookimpl

#: occluded region of each named mask, as fractions of the image (row0, row1, col0, col1); "blocks" is drawn
NAMED_MASKS: dict[str, tuple[float, float, float, float]] = {
    "lower": (0.5, 1.0, 0.0, 1.0),
    "upper": (0.0, 0.5, 0.0, 1.0),
    "left-half": (0.0, 1.0, 0.0, 0.5),
    "right-half": (0.0, 1.0, 0.5, 1.0),
    "center": (0.25, 0.75, 0.25, 0.75),
    "eyes": (0.30, 0.50, 0.15, 0.85),
    "mouth": (0.62, 0.82, 0.28, 0.72),
}
MASKS = (*NAMED_MASKS, "blocks")
BLOCKS = 4  # "blocks": this many squares of a quarter of the image side, placed at random (seeded)


def named_mask(name: str, size: int, seed: int = 0) -> Tensor:
    """A (1, 1, size, size) float mask, 1 where the image stays visible and 0 where it is occluded."""
    m = torch.ones(1, 1, size, size)
    if name == "blocks":
        g = torch.Generator().manual_seed(seed)
        side = max(1, size // 4)
        for _ in range(BLOCKS):
            r, c = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=g))
            m[..., r : r + side, c : c + side] = 0.0
        return m
    if name not in NAMED_MASKS:
        raise GenvaeError(f"unknown mask '{name}'; masks: {', '.join(MASKS)}, or an image file (white = occluded)")
    r0, r1, c0, c1 = NAMED_MASKS[name]
    m[..., round(r0 * size) : round(r1 * size), round(c0 * size) : round(c1 * size)] = 0.0
    return m


def mask_from_file(path: str | Path, size: int) -> Tensor:
    """A black/white image file as a mask at ``size``: white marks what is occluded (mask 0), black stays visible."""
    from genvae.api import load_mask

    return 1.0 - load_mask(path, size)


def discriminator_of(model: GenerativeModel) -> DiscriminatorTrunk | None:
    """The loss that provides the discriminator capability, or None."""
    losses = typing.cast("Iterable[Loss]", model.losses.values())  # the model's losses, by name
    found = next((loss for loss in losses if DISCRIMINATOR in loss.provides), None)
    return typing.cast("DiscriminatorTrunk | None", found)  # the build checks the provider implements the protocol


def objective(
    model: GenerativeModel, z: Tensor, x: Tensor, m: Tensor, gamma: float, tau: float
) -> tuple[Tensor, Tensor]:
    """Per-image objective (B,) and x_hat for latents z, images x and visible-mask m."""
    _, x_hat = model.generate(z)
    value = ((x_hat - x) * m).pow(2).flatten(1).sum(1) + gamma * 0.5 * z.pow(2).flatten(1).sum(1)
    disc = discriminator_of(model) if tau else None
    if disc is not None:
        logits = discriminate_each(disc, x_hat)
        value = value - tau * F.softplus(logits)  # tau * log(1 - sigmoid(logit))
    return value, x_hat


def discriminate_each(disc: DiscriminatorTrunk, images: Tensor) -> Tensor:
    """(B,) logits, each image judged as a batch of its own, so each image's objective is its own (minibatch
    discrimination would otherwise compare it with the other images and starts of the batch): the provider's
    ``discriminate_each`` when it has one, else ``discriminate`` one image at a time."""
    each = getattr(disc, "discriminate_each", None)
    if each is not None:
        return each(images).reshape(-1)
    return torch.cat([disc.discriminate(image[None]).reshape(-1) for image in images])


def random_starts(count: int, starts: int, shape: tuple[int, ...], seed: int) -> Tensor:
    """(starts * count, *shape) latents z ~ N(0, I), row s * count + i the start s of image i. Image i's starts come
    from a stream of its own, seeded ``seed + i``, so they do not depend on how many images come with it: image i
    of a batch completed with ``seed`` is image 0 completed alone with ``seed + i``."""
    per_image = [
        torch.randn(starts, *shape, generator=torch.Generator(device="cpu").manual_seed((seed + i) % 2**64))
        for i in range(count)
    ]
    return torch.stack(per_image, dim=1).reshape(starts * count, *shape)


def _optimise(
    model: GenerativeModel,
    z: Tensor,
    x: Tensor,
    m: Tensor,
    starts: int,
    steps: int,
    lr: float,
    gamma: float,
    tau: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Adam on z (starts x b rows, start-major) for images x and masks m (b each); per image, the best start's
    (x_hat, z, objective). Each row's updates depend on that row alone (elementwise Adam, eval mode)."""
    b = x.shape[0]
    xs, ms = x.repeat(starts, 1, 1, 1), m.repeat(starts, 1, 1, 1)
    z = z.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        value, _ = objective(model, z, xs, ms, gamma, tau)
        opt.zero_grad(set_to_none=True)
        value.sum().backward()
        opt.step()
    with torch.no_grad():
        value, x_hat = objective(model, z, xs, ms, gamma, tau)
        pick = value.view(starts, b).argmin(0) * b + torch.arange(b, device=x.device)  # per image, the best start
        return x_hat[pick], z[pick].detach(), value[pick]


def complete(
    model: GenerativeModel,
    x: Tensor,
    m: Tensor,
    *,
    starts: int = 4,
    steps: int = 300,
    lr: float = 0.05,
    gamma: float = 0.1,
    tau: float = 1.0,
    seed: int = 0,
    batch: int | None = None,
) -> dict[str, Tensor]:
    """Complete images x (B, C, H, W) in [-1, 1] where m (1 or B, 1, H, W) is 0. Returns ``completion`` (x_hat),
    ``composite`` (visible input, x_hat where occluded), ``occluded`` (the input with the hidden part grey),
    ``latents`` (the best z) and ``objective`` (the best per-image value), all detached.

    ``batch``: images optimised at once, each with its ``starts`` rows (default: all); the random starts are
    drawn for all images first, so the results do not depend on it (:func:`completion_batch` picks it)."""
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        b = x.shape[0]
        z_all = random_starts(b, starts, tuple(model.layout.shape), seed)  # row s * b + i: start s of image i
        mask = m.expand(b, -1, -1, -1)
        chunk = max(1, min(batch or b, b))
        parts = []
        for lo in range(0, b, chunk):
            idx = torch.arange(lo, min(lo + chunk, b))
            rows = (torch.arange(starts)[:, None] * b + idx[None, :]).reshape(-1)
            parts.append(
                _optimise(
                    model,
                    z_all[rows].to(x.device),
                    x[lo : lo + chunk],
                    mask[lo : lo + chunk],
                    starts,
                    steps,
                    lr,
                    gamma,
                    tau,
                )
            )
        x_hat, z_best, v_best = (torch.cat(t) for t in zip(*parts, strict=True))
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)
    return {
        "completion": x_hat,
        "composite": mask * x + (1 - mask) * x_hat,
        "occluded": mask * x,
        "latents": z_best,
        "objective": v_best,
    }


def completion_program(model: GenerativeModel, rows: int) -> tuple[Tensor | None, Tensor, Tensor]:
    """What one Adam step of :func:`complete` runs on ``rows`` latents (sized on meta by genvae.core.budget):
    the objective's forward with the graph kept, its backward to z, and Adam's two moments of z."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            z = torch.zeros(rows, *model.layout.shape, requires_grad=True)
            x = torch.zeros(rows, *model.spec.image_shape)
            value, _ = objective(model, z, x, torch.ones(rows, 1, *model.spec.image_shape[1:]), 1.0, 1.0)
            value.sum().backward()
            return z.grad, torch.zeros_like(z), torch.zeros_like(z)
    finally:
        for p in params:
            p.requires_grad_(True)


def completion_batch(model: GenerativeModel, count: int, starts: int, held: int = 0) -> int:
    """Images :func:`complete` may optimise at once (each with ``starts`` rows) under the memory limit, beside
    ``held`` bytes; a one-line BudgetError when even one image does not fit."""
    from genvae.api import inference_batch

    return inference_batch(
        model,
        count,
        what="complete",
        per=starts,
        held=held,
        command="complete",
        holding="the images and the grid it keeps",
        program=completion_program,
    )


@hookimpl
def genvae_register_commands(cli: click.Group) -> None:
    from genvae.api import (
        FiniteFloat,
        console,
        data_options,
        device_option,
        load_command_data,
        load_for_inference,
        load_image,
        seed_option,
    )

    @cli.command("complete")
    @click.argument("folder", type=click.Path())
    @click.argument("image", required=False, type=click.Path(dir_okay=False, exists=True))
    @data_options
    @click.option(
        "-n",
        "count",
        default=8,
        show_default=True,
        type=click.IntRange(1, 256),
        help="With --data (no IMAGE): how many test images to complete.",
    )
    @click.option(
        "--mask", default="lower", show_default=True, help=f"{', '.join(MASKS)}, or an image file (white = occluded)."
    )
    @click.option("--starts", default=4, show_default=True, type=click.IntRange(1, 64), help="Random starts per image.")
    @click.option("--steps", default=300, show_default=True, type=click.IntRange(0), help="Adam steps on z.")
    @click.option("--lr", default=0.05, show_default=True, type=FiniteFloat(positive=True))
    @click.option("--gamma", default=0.1, show_default=True, type=FiniteFloat(), help="Weight of -log N(z; 0, I).")
    @click.option(
        "--tau",
        default=1.0,
        show_default=True,
        type=FiniteFloat(),
        help="Weight of log(1 - D(x_hat)) (models with a discriminator).",
    )
    @click.option(
        "-o",
        "--output",
        required=True,
        type=click.Path(dir_okay=False),
        help="Image grid: rows of ground truth, occluded, completed.",
    )
    @seed_option
    @device_option
    def complete_command(
        folder: str,
        image: str | None,
        data: str | None,
        data_root: str | None,
        download: bool,
        count: int,
        mask: str,
        starts: int,
        steps: int,
        lr: float,
        gamma: float,
        tau: float,
        output: str,
        seed: int,
        device: str,
    ) -> None:
        """Fill in the occluded part of images by optimising the latent (crVAE paper 4.4)."""
        from genvae.api import check_image_output, grid_bytes, image_bytes, save_grid, to_model_range

        check_image_output(Path(output))
        model, dev = load_for_inference(folder, device, seed)
        size = model.spec.image_size
        if image is not None:
            x = load_image(image, model)
        else:
            x = to_model_range(load_command_data(model, data, data_root, download, "test").images[:count]).to(dev)
        m = mask_from_file(mask, size) if Path(mask).is_file() else named_mask(mask, size, seed)
        if m.min() > 0:
            raise GenvaeError(f"mask '{mask}' occludes nothing at {size}x{size}")
        # kept beside the optimisation: the inputs, the outputs, the rows of the grid and the grid, every
        # image's random starts
        n = len(x)
        held = image_bytes(model, 7 * n) + grid_bytes(model, 3 * n) + n * starts * math.prod(model.layout.shape) * 4
        batch = completion_batch(model, n, starts, held)
        out = complete(
            model, x, m.to(dev), starts=starts, steps=steps, lr=lr, gamma=gamma, tau=tau, seed=seed, batch=batch
        )
        rows = torch.cat([x, out["occluded"], out["composite"]])  # occluded pixels show as mid-grey (0)
        save_grid(rows.float().cpu(), output, nrow=len(x))
        hidden = ((out["completion"] - x).pow(2) * (1 - m.to(dev))).sum() / ((1 - m).sum() * x.shape[0] * x.shape[1])
        visible = ((out["completion"] - x).pow(2) * m.to(dev)).sum() / (m.sum() * x.shape[0] * x.shape[1])
        disc = "with" if discriminator_of(model) is not None and tau else "without"
        console.print(
            f"completed {len(x)} image(s) with mask '{mask}' ({disc} the discriminator term) -> {output}; "
            f"pixel MSE in [-1, 1] units: occluded {hidden.item():.4f}, visible {visible.item():.4f}",
            highlight=False,
        )
