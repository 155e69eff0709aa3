"""Where a trained model's prior samples part from its reconstructions: the prior path, measured.

    python benchmarks/prior_path.py MODEL [--data fashion-mnist] [--n 2000] [--recalibrated OUT]

The decoder is trained on what the posterior gives it (z = mu + sigma * eps of real images) and, in the adversarial
models, on prior samples (z ~ N(0, I)); it generates from the prior alone. This prints, on ``--n`` test images and
as many prior draws (one seed):

1. the posterior: the mean sigma, the variance of mu across images (mean over latent values) and the aggregate
   posterior's variance, var(mu) + E[sigma^2], which a standard normal prior matches when it is 1;
2. the decoder's input (u of ``cr-lstm``, the fc output of VAE-GAN) from posterior z and from prior z, per latent
   group (time step): the across-sample standard deviation, mean over the group's values;
3. the pixel spread (per-pixel standard deviation across images, grey levels 0-255, mean over pixels) of the real
   images, the reconstructions, the samples in evaluation mode (batch norms on running statistics, as genvae
   samples) and in training mode (batch norms on the batch's statistics);
4. with ``--recalibrated OUT``: the same weights with the generator's batch-norm running statistics re-estimated
   on prior samples only (cumulative average over 20 batches of 256), written as a model folder OUT to score with
   ``genvae evaluate OUT ...``. The running statistics the trainer keeps are a blend of posterior and prior
   batches (both pass through the decoder in training); this separates that blend from the weights.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from torch import nn

from genvae.core.checkpoint import load_model, save_model
from genvae.core.data import load_data


def group_std(values: torch.Tensor, groups: int) -> list[float]:
    """Across-sample std of (N, ...) values, averaged within each of ``groups`` contiguous groups of the flat value."""
    std = values.flatten(1).std(0)
    return [g.mean().item() for g in std.chunk(groups)]


def spread(images: torch.Tensor) -> float:
    """Mean per-pixel std across images, on the 0-255 scale, for images in [-1, 1]."""
    return ((images.flatten(1) + 1) * 127.5).std(0).mean().item()


def generator_norms(model) -> list[nn.modules.batchnorm._BatchNorm]:
    mods = [m for part in (*model.transform.generation_modules(), model.decoder) for m in part.modules()]
    return [m for m in mods if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recalibrated", type=Path, help="write the BN-recalibrated model folder here")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model = load_model(args.model).eval()
    spec = model.spec
    real = load_data(args.data, image_size=spec.image_size, channels=spec.channels, split="test").images[: args.n]
    x = real.float() / 127.5 - 1.0
    groups = model.layout.num_groups
    steps = getattr(model.transform.options, "steps", groups)

    q = model.encode(x)
    mu, sigma = q.mean.flatten(1), q.std.flatten(1)
    print(f"{args.model}: {len(x)} test images, latent {list(model.layout.shape)} in {groups} group(s)")
    print(
        f"posterior: mean sigma {sigma.mean():.3f}, var of mu across images {mu.var(0).mean():.3f}, "
        f"aggregate variance var(mu) + E[sigma^2] {(mu.var(0) + sigma.pow(2).mean(0)).mean():.3f}"
    )
    z_post = q.mean + q.std * torch.randn_like(q.std)
    z_prior = torch.randn_like(z_post)
    u_post = model.transform.generate(z_post)
    u_prior = model.transform.generate(z_prior)
    for name, u in (("posterior", u_post), ("prior", u_prior)):
        per_step = ", ".join(f"{v:.4f}" for v in group_std(u, steps))
        print(f"decoder input, std across samples per time step, from the {name}: {per_step}")

    recon = model.reconstruct(x)
    _, samples = model.generate(z_prior)
    model.train()
    _, samples_train = model.generate(z_prior)
    model.eval()
    print(
        f"pixel spread (0-255): real {spread(x):.1f}, reconstructions {spread(recon):.1f}, samples eval-mode "
        f"{spread(samples):.1f}, train-mode BN {spread(samples_train):.1f}"
    )

    if args.recalibrated:
        norms = generator_norms(model)
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        model.train()
        for _ in range(20):
            model.generate(torch.randn(256, *model.layout.shape))
        model.eval()
        _, resampled = model.generate(z_prior)
        print(
            f"recalibrated {len(norms)} generator batch norms on prior samples: sample spread {spread(resampled):.1f}"
        )
        if args.recalibrated.exists():
            shutil.rmtree(args.recalibrated)
        save_model(model, args.recalibrated)
        print(f"wrote {args.recalibrated}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
