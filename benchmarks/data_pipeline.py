"""Data pipeline: how fast images reach the training step, from an image folder (through the on-disk cache) and
from Fashion-MNIST (in memory), against how fast a crVAE-GAN training step consumes them.

Measured in one run:

* folder, first load: decoding N PNG files into the cache (worker processes), images/s;
* folder, later load: mapping the cache in a new process's place (the in-process cache cleared), seconds;
* batches: the trainer's own gather (``BatchFeeder.host_batch`` + ``batch``: index the uint8 images by the
  epoch's permutation, convert to [-1, 1]) over a whole epoch, images/s, first epoch and later epochs;
* the training step: ``crvae-gan-small`` (32x32 grey), images/s, on the same threads;
* the ratio loader / step (target: >= 5 on the CPU, so later epochs never starve the step).

    python benchmarks/data_pipeline.py                        # 4096 images, batch 64
    python benchmarks/data_pipeline.py --images 20000 --json runs/bench/data.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_pngs(folder: Path, n: int, size: int) -> None:
    """``n`` PNG files of ``size`` px, RGB, textured enough that PNG compression is realistic."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (64, size, size, 3), dtype=np.uint8)
    for i in range(n):
        arr = np.roll(base[i % 64], i // 64, axis=0)
        Image.fromarray(arr, "RGB").save(folder / f"{i:06d}.png", compress_level=1)


def epoch_rate(trainer, epochs: int) -> list[float]:
    """images/s of the trainer's batch path over whole epochs (each epoch its own permutation)."""
    rates = []
    for epoch in range(epochs):
        perm = trainer.feeder.permutation(epoch)
        began = time.perf_counter()
        for b in range(trainer.batches_per_epoch):
            trainer.feeder.batch(perm, b)
        rates.append(trainer.batches_per_epoch * trainer.batch_size / (time.perf_counter() - began))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4096, help="PNG files in the test folder")
    ap.add_argument("--size", type=int, default=64, help="side of the PNG files (decoded to 32 px grey)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6, help="timed training steps")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from genvae.core import cache
    from genvae.core.compose import compose_spec
    from genvae.core.data import clear_cache, load_data
    from genvae.core.model import build_model
    from genvae.core.training import Trainer

    results: dict = {"images": args.images, "batch_size": args.batch_size, "threads": args.threads}
    spec = compose_spec(preset="crvae-gan-small").with_train(
        batch_size=args.batch_size, log_every=10**9, checkpoint_every=10**9
    )
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[cache.ENV] = str(Path(tmp) / "cache")
        folder = Path(tmp) / "pngs"
        write_pngs(folder, args.images, args.size)
        clear_cache()
        began = time.perf_counter()
        data = load_data(folder, image_size=spec.image_size, channels=spec.channels)
        first = time.perf_counter() - began
        clear_cache()
        began = time.perf_counter()
        data = load_data(folder, image_size=spec.image_size, channels=spec.channels)
        later = time.perf_counter() - began
        results["folder"] = {
            "first_load_s": first,
            "first_load_images_per_s": args.images / first,
            "later_load_s": later,
        }
        model = build_model(spec)
        trainer = Trainer(model, Path(tmp) / "m", data, spec.train, torch.device("cpu"))
        rates = epoch_rate(trainer, 3)
        results["folder"].update({"epoch1_images_per_s": rates[0], "later_images_per_s": statistics.median(rates[1:])})
        fm = load_data("fashion-mnist", image_size=spec.image_size, channels=spec.channels)
        fm_trainer = Trainer(build_model(spec), Path(tmp) / "f", fm, spec.train, torch.device("cpu"))
        fm_rates = epoch_rate(fm_trainer, 2)
        results["fashion-mnist"] = {
            "images": len(fm),
            "epoch1_images_per_s": fm_rates[0],
            "later_images_per_s": fm_rates[1],
        }
        # the training step it feeds
        perm = trainer.feeder.permutation(0)
        x = trainer.feeder.batch(perm, 0)
        trainer.train_step(x)  # warm-up
        began = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(x)
        step_rate = args.steps * args.batch_size / (time.perf_counter() - began)
        results["train_step_images_per_s"] = step_rate
    slowest = min(results["folder"]["later_images_per_s"], results["fashion-mnist"]["later_images_per_s"])
    results["loader_over_step"] = slowest / step_rate
    f, m = results["folder"], results["fashion-mnist"]
    print(f"data pipeline | crvae-gan-small 1x32x32 | batch {args.batch_size} | {args.threads} thread(s)")
    print(
        f"folder of {args.images} PNG ({args.size}px): first load {f['first_load_s']:.2f} s "
        f"({f['first_load_images_per_s']:,.0f} images/s decoded into the cache); later load "
        f"{f['later_load_s']:.3f} s (mapped)"
    )
    print(f"folder batches: epoch 1 {f['epoch1_images_per_s']:,.0f} images/s, later {f['later_images_per_s']:,.0f}")
    print(
        f"fashion-mnist ({m['images']:,} in memory) batches: epoch 1 {m['epoch1_images_per_s']:,.0f} images/s, "
        f"later {m['later_images_per_s']:,.0f}"
    )
    print(f"training step: {step_rate:,.0f} images/s; loader / step: {results['loader_over_step']:.0f}x (target >= 5)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
