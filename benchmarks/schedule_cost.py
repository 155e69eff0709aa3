"""Update schedules side by side: the crVAE authors' order vs one-pass, time per training step.

Two trainers of the same preset (same seed, same initial weights, same batches) differ only in
``train.schedule``; their steps are timed in alternating blocks in one process, so machine noise
hits both alike. Prints ms per step (median over blocks) for each, their ratio, and the mean of
each logged term over the timed steps.

    python benchmarks/schedule_cost.py                               # crvae-gan-small, batch 64, CPU
    python benchmarks/schedule_cost.py --preset crvae-gan --batch-size 16 --blocks 3 --steps 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from genvae.core import checkpoint as ckpt
from genvae.core.compose import compose_spec
from genvae.core.data import load_data
from genvae.core.model import build_model
from genvae.core.training import Trainer, seed_everything


def make(preset: str, schedule, batch: int, data, folder: Path, device: torch.device) -> Trainer:
    spec = compose_spec(preset=preset).with_train(schedule=schedule, batch_size=batch)
    seed_everything(0)
    model = build_model(spec)
    ckpt.save_model(model, folder)
    return Trainer(model, folder, data, spec.train, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="crvae-gan-small")
    ap.add_argument("--data", default=None, help="data name or folder (default: the built-in shapes)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps CPU timings repeatable)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    spec = compose_spec(preset=args.preset)
    data = load_data(args.data, image_size=spec.image_size, channels=spec.channels)
    authors = spec.train.schedule
    if not authors:
        raise SystemExit(f"preset {args.preset} has no schedule of its own to compare with one-pass")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "authors": make(args.preset, list(authors), args.batch_size, data, Path(tmp) / "a", device),
            "one-pass": make(args.preset, "one-pass", args.batch_size, data, Path(tmp) / "b", device),
        }
        g = torch.Generator().manual_seed(0)
        n = len(data)
        batches = [
            data.images[torch.randint(0, n, (args.batch_size,), generator=g)]
            for _ in range(args.steps * (args.blocks + 1))
        ]
        times = {k: [] for k in runs}
        logged: dict[str, list[dict[str, torch.Tensor]]] = {k: [] for k in runs}
        for block in range(args.blocks + 1):  # block 0 warms up
            for name, trainer in runs.items():
                chunk = batches[block * args.steps : (block + 1) * args.steps]
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for raw in chunk:
                    terms = trainer.train_step(trainer.to_model_range(raw.to(device)))
                    if block:  # kept on the device; read after the timing
                        logged[name].append({k: v.detach() for k, v in terms.items()})
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if block:
                    times[name].append((time.perf_counter() - start) / len(chunk) * 1000)
    steps = args.steps * args.blocks
    ms = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{args.preset}, batch {args.batch_size}, {device}, {torch.get_num_threads()} thread(s); "
        f"{args.blocks} blocks of {args.steps} steps after one warm-up block"
    )
    for name, trainer in runs.items():
        plan = ", ".join(f"{u.phase.name}@{u.branch}" + (":fresh" if u.fresh else "") for u in trainer.updates)
        print(f"  {name:9s} {ms[name]:9.1f} ms/step   updates: {plan}")
    print(f"  ratio authors / one-pass: {ms['authors'] / ms['one-pass']:.3f}")
    for name in runs:
        keys = sorted(k for k in logged[name][0] if not k.endswith("/total"))
        means = {k: sum(float(t[k]) for t in logged[name]) / steps for k in keys}
        print(f"  {name} mean terms: " + ", ".join(f"{k} {v:.4g}" for k, v in means.items()))


if __name__ == "__main__":
    main()
