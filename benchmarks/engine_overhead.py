"""Engine overhead: genvae's Trainer step vs a hand-written PyTorch loop of the same networks and losses.

Both loops train identical copies of the same model: genvae through ``Trainer.train_step`` (and the
running-loss bookkeeping the trainer does every step), the other through the hand-written step of
``benchmarks/handwritten.py`` (plain torch, no genvae imports; ``handwritten_parity.py`` checks that it
computes the same values). They run in alternating blocks in one process, so machine noise hits both alike.
Prints ms per step for each and the ratio (target: <= 1.03), from the fastest block of each (the one least
disturbed by the rest of the machine) and from the medians.

    python benchmarks/engine_overhead.py                                  # cvae, 32 px, batch 64, CPU
    python benchmarks/engine_overhead.py --preset vae --set encoder.hidden=[8] --set decoder.hidden=[8]
    python benchmarks/engine_overhead.py --preset crvae-gan-small --steps 4 --blocks 5
    python benchmarks/engine_overhead.py --device cuda --preset crvae-gan --batch-size 128
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from support import scratch_folder

from genvae.core.compose import compose_spec
from genvae.core.data import ImageData
from genvae.core.model import build_model
from genvae.core.training import Trainer, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parent))
from handwritten_parity import hand_step  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cvae", help="vae, cvae, crvae-gan-small, crvae-gan, lapcvae-small, lapcvae")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="spec edits, as genvae build takes them")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps CPU timings repeatable)")
    ap.add_argument(
        "--amp",
        default="off",
        choices=("off", "bf16"),
        help="both loops in this precision: genvae's --amp, the hand-written step under torch.autocast",
    )
    ap.add_argument(
        "--channels-last", default="auto", choices=("auto", "on", "off"), help="genvae's; the hand loop follows it"
    )
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    seed_everything(0)
    spec = compose_spec(preset=args.preset, sets=args.sets).with_train(
        batch_size=args.batch_size,
        log_every=10**9,
        checkpoint_every=10**9,
        amp=args.amp,
        channels_last=args.channels_last,
    )
    engine_model = build_model(spec).to(device).train()
    plain_model = copy.deepcopy(engine_model)
    data = ImageData(
        images=torch.randint(0, 256, (args.batch_size * 4, *spec.image_shape), dtype=torch.uint8), source="random"
    )
    trainer = Trainer(engine_model, scratch_folder(prefix="genvae-bench-"), data, spec.train, device)
    if trainer.channels_last:  # the same layout in both loops
        plain_model.to(memory_format=torch.channels_last)
    hand = hand_step(args.preset, plain_model)

    def plain_step(x):
        if args.amp == "off":
            return hand(x)
        with torch.autocast(device.type, dtype=torch.bfloat16):  # as a hand-written bf16 loop does it
            return hand(x)

    x = trainer.feeder.batch(trainer.feeder.permutation(0), 0)

    def engine_step(x):
        trainer.sink.accumulate(trainer.train_step(x), trainer.step)

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps * 1e3

    for fn in (engine_step, plain_step):  # warm-up
        timed(fn)
    eng, plain = [], []
    for i in range(args.blocks):
        order = (engine_step, plain_step) if i % 2 == 0 else (plain_step, engine_step)
        for fn in order:
            (eng if fn is engine_step else plain).append(timed(fn))
    e, p = min(eng), min(plain)
    em, pm = statistics.median(eng), statistics.median(plain)
    params = sum(q.numel() for q in engine_model.parameters())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
    updates = ", ".join(f"{u.phase.name}@{u.branch}" for u in trainer.updates)
    print(
        f"preset {args.preset} | {spec.channels}x{spec.image_size}x{spec.image_size} | batch {args.batch_size} | "
        f"{params:,} parameters | updates: {updates} | {where} | {trainer.model.precision.name}, "
        f"{'channels-last' if trainer.channels_last else 'contiguous'}"
    )
    print(
        f"hand-written loop: {p:.3f} ms/step (best of {args.blocks} alternating blocks of {args.steps}; "
        f"median {pm:.3f})"
    )
    print(f"genvae Trainer:    {e:.3f} ms/step (median {em:.3f})")
    print(f"engine overhead: {e - p:+.3f} ms/step; ratio engine/hand-written: {e / p:.3f} (median ratio {em / pm:.3f})")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "preset": args.preset,
                    "precision": trainer.model.precision.name,
                    "channels_last": trainer.channels_last,
                    "batch_size": args.batch_size,
                    "device": where,
                    "parameters": params,
                    "engine_ms": e,
                    "hand_ms": p,
                    "ratio": e / p,
                    "engine_median_ms": em,
                    "hand_median_ms": pm,
                    "median_ratio": em / pm,
                    "engine_blocks_ms": eng,
                    "hand_blocks_ms": plain,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
