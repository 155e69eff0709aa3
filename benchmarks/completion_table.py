"""Image completion, measured: per model and mask, the pixel error in the occluded and the visible region.

Completes the first N test images of a dataset with every named mask (``genvae.plugins.completion``) for each
given model, and prints a Markdown table of the mean squared error (images in [-1, 1]) inside the occluded region
and in the visible region after optimisation, next to the error of the best random start before it (steps = 0).

    python benchmarks/completion_table.py runs/paper-claim/crvae-gan-small-s0 runs/paper-claim/vae-gan-small-s0
"""

from __future__ import annotations

import argparse
import time

import torch

from genvae.core.checkpoint import load_model
from genvae.core.data import load_data
from genvae.core.decode import to_model_range
from genvae.plugins.completion import MASKS, complete, named_mask


def region_mse(a: torch.Tensor, b: torch.Tensor, region: torch.Tensor) -> float:
    region = region.expand_as(a)
    return float(((a - b).pow(2) * region).sum() / region.sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("-n", type=int, default=64, help="test images")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--starts", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"{args.n} {args.data} test images, {args.starts} starts, {args.steps} Adam steps (lr 0.05, gamma 0.1, "
        "tau 1); MSE in [-1, 1] units: occluded region after (before) optimisation | visible region after\n"
    )
    print("| model | " + " | ".join(MASKS) + " |")
    print("| --- |" + " --- |" * len(MASKS))
    for folder in args.models:
        model = load_model(folder)
        spec = model.spec
        x = to_model_range(
            load_data(args.data, image_size=spec.image_size, channels=spec.channels, split="test").images[: args.n]
        )
        cells = []
        began = time.time()
        for mask in MASKS:
            m = named_mask(mask, spec.image_size, seed=0)
            before = complete(model, x, m, starts=args.starts, steps=0)
            after = complete(model, x, m, starts=args.starts, steps=args.steps)
            hidden_after = region_mse(after["completion"], x, 1 - m)
            hidden_before = region_mse(before["completion"], x, 1 - m)
            cells.append(f"{hidden_after:.3f} ({hidden_before:.3f}) \\| {region_mse(after['completion'], x, m):.3f}")
        print(f"| `{folder}` | " + " | ".join(cells) + f" |  <!-- {time.time() - began:.0f} s -->")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
