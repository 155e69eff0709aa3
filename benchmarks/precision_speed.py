"""Precision and layout against the machine's limit: each model's training step in float32 and bf16, contiguous
and channels-last, as a fraction of the CPU's (or GPU's) measured matmul/conv throughput.

1. The limit: sustained GFLOP/s of a 1024x1024 matmul and of a 3x3 convolution (batch 64, 64 -> 64 channels,
   32x32, channels-last), in float32 and in bf16, on each thread count.
2. Per model (``--presets``): genvae's ``Trainer.train_step`` in each configuration (``fp32``: --amp off
   --channels-last off, genvae's float32 speed; ``fp32+cl``; ``bf16``: contiguous; ``defaults``: --amp auto
   --channels-last auto, bf16 and channels-last on this CPU), interleaved block by block in one process. The
   step's FLOPs are counted once with ``torch.utils.flop_counter`` (convolutions and matrix products, forward
   and backward; the fused LSTM kernel is not counted, so crVAE's fraction is a lower bound).
3. ``--compile``: the defaults with torch.compile: the first step (compiling) and the steady step.
4. Memory: peak resident-set growth over the first 3 steps of each configuration, each in a process of its own.

    python benchmarks/precision_speed.py                          # 1 and 2 threads, cvae crvae-gan-small lapcvae-small
    python benchmarks/precision_speed.py --threads 1 --presets cvae --compile
    python benchmarks/precision_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' own helpers
from support import PeakRSS, scratch_folder  # noqa: E402

CONFIGS = {  # name: train overrides
    "fp32": {"amp": "off", "channels_last": "off"},
    "fp32+cl": {"amp": "off", "channels_last": "on"},
    "bf16": {"amp": "bf16", "channels_last": "off"},
    "defaults": {"amp": "auto", "channels_last": "auto"},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(device: torch.device, seconds: float = 1.0) -> dict[str, float]:
    """Sustained GFLOP/s of a matmul and a 3x3 convolution in float32 and bf16."""
    out = {}
    n = 1024 if device.type == "cpu" else 8192
    batch, ch, size = (64, 64, 32) if device.type == "cpu" else (256, 128, 64)
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        x = torch.randn(batch, ch, size, size, device=device, dtype=dtype).to(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(ch, ch, 3, padding=1, bias=False).to(device, dtype, memory_format=torch.channels_last)
        kernels = {
            "matmul": (lambda a=a, b=b: a @ b, 2 * n**3),
            "conv": (lambda conv=conv, x=x: conv(x), 2 * batch * ch * size * size * ch * 9),
        }
        with torch.no_grad():
            for kind, (fn, flops) in kernels.items():
                fn()
                _sync(device)
                reps, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    fn()
                    reps += 1
                    if device.type == "cuda" and reps % 10 == 0:
                        _sync(device)
                _sync(device)
                out[f"{kind} {name}"] = flops * reps / (time.perf_counter() - t0) / 1e9
    return out


def make_trainer(preset: str, overrides: dict, device: torch.device, batch: int):
    from genvae.core.compose import compose_spec
    from genvae.core.data import ImageData
    from genvae.core.model import build_model
    from genvae.core.training import Trainer, seed_everything

    seed_everything(0)
    spec = compose_spec(preset=preset).with_train(
        batch_size=batch, log_every=10**9, checkpoint_every=10**9, **overrides
    )
    model = build_model(spec)
    g = torch.Generator().manual_seed(0)
    data = ImageData(
        images=torch.randint(0, 256, (batch * 4, *spec.image_shape), dtype=torch.uint8, generator=g), source="random"
    )
    trainer = Trainer(model, scratch_folder(prefix="genvae-speed-"), data, spec.train, device)
    x = trainer.feeder.batch(trainer.feeder.permutation(0), 0)
    return trainer, x


def step_flops(trainer, x) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step(x)
    return counter.get_total_flops()


def memory_child(preset: str, config: str, device: torch.device, batch: int) -> float:
    """Peak memory of the first 3 steps over what the process held before them (the model, its optimiser-free
    state and the data), MB: resident-set growth on the CPU (sampled every 2 ms), peak allocated on CUDA. The
    first step is included: it is where the activations and the optimiser's state are first allocated."""
    trainer, x = make_trainer(preset, CONFIGS[config], device, batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(3):
            trainer.train_step(x)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with PeakRSS() as rss:
        for _ in range(3):
            trainer.train_step(x)
    return rss.peak - rss.base


def measure(preset: str, device: torch.device, batch: int, steps: int, blocks: int) -> dict:
    trainers = {name: make_trainer(preset, over, device, batch) for name, over in CONFIGS.items()}
    flops = step_flops(*trainers["fp32"])
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for trainer, x in trainers.values():  # warm-up
        for _ in range(2):
            trainer.train_step(x)
    for block in range(blocks):
        order = list(trainers) if block % 2 == 0 else list(reversed(trainers))
        for name in order:
            trainer, x = trainers[name]
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.train_step(x)
            _sync(device)
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
    best = {name: min(t) for name, t in times.items()}
    return {
        "preset": preset,
        "batch_size": batch,
        "flops_per_step": flops,
        "ms": best,
        "median_ms": {name: statistics.median(t) for name, t in times.items()},
        "images_per_s": {name: batch / ms * 1e3 for name, ms in best.items()},
        "speedup_vs_fp32": {name: best["fp32"] / ms for name, ms in best.items()},
        "defaults": {
            "precision": trainers["defaults"][0].model.precision.name,
            "channels_last": trainers["defaults"][0].channels_last,
        },
    }


def compile_cost(preset: str, device: torch.device, batch: int, steps: int) -> dict:
    trainer, x = make_trainer(preset, {"compile": True}, device, batch)
    plain, px = make_trainer(preset, {}, device, batch)
    t0 = time.perf_counter()
    trainer.train_step(x)
    _sync(device)
    first = time.perf_counter() - t0
    trainer.train_step(x)  # a recompilation for the second step's shapes, if any
    out = {}
    for name, (tr, xx) in (("compiled", (trainer, x)), ("defaults", (plain, px))):
        tr.train_step(xx)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.train_step(xx)
        _sync(device)
        out[name] = (time.perf_counter() - t0) / steps * 1e3
    saved = out["defaults"] - out["compiled"]
    return {
        "preset": preset,
        "first_step_s": first,
        "ms": out,
        "speedup": out["defaults"] / out["compiled"],
        "break_even_steps": (first * 1e3 / saved) if saved > 0 else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", default="1,2", help="CPU thread counts, e.g. 1,2")
    ap.add_argument("--presets", default="cvae,crvae-gan-small,lapcvae-small")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (first step and steady)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--memory-child", nargs=2, metavar=("PRESET", "CONFIG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = torch.device(args.device)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    if args.memory_child:
        torch.set_num_threads(1)
        print(json.dumps(memory_child(*args.memory_child, device, args.batch_size)))
        return
    threads = [int(t) for t in args.threads.split(",")] if device.type == "cpu" else [torch.get_num_threads()]
    result: dict = {"device": args.device, "by_threads": {}}
    for n in threads:
        torch.set_num_threads(n)
        limit = throughput(device)
        print(f"== {n} thread(s): limit " + ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in limit.items()), flush=True)
        models = []
        for preset in presets:
            r = measure(preset, device, args.batch_size, args.steps, args.blocks)
            for name, ms in r["ms"].items():
                bf16 = name == "bf16" or (name == "defaults" and r["defaults"]["precision"] == "bf16")
                peak = max(limit[f"matmul {'bf16' if bf16 else 'fp32'}"], limit[f"conv {'bf16' if bf16 else 'fp32'}"])
                r.setdefault("gflops", {})[name] = r["flops_per_step"] / ms / 1e6
                r.setdefault("fraction_of_limit", {})[name] = r["gflops"][name] / peak
            models.append(r)
            print(
                f"{preset:18s} {r['flops_per_step'] / 1e9:6.2f} GFLOP/step | "
                + " | ".join(
                    f"{k} {r['ms'][k]:7.1f} ms {r['speedup_vs_fp32'][k]:.2f}x {r['fraction_of_limit'][k]:.0%}"
                    for k in CONFIGS
                ),
                flush=True,
            )
        result["by_threads"][str(n)] = {"limit_gflops": limit, "models": models}
    torch.set_num_threads(threads[0])
    if args.compile:
        result["compile"] = []
        for preset in presets:
            c = compile_cost(preset, device, args.batch_size, args.steps)
            result["compile"].append(c)
            print(
                f"compile {preset}: first step {c['first_step_s']:.1f} s, then {c['ms']['compiled']:.1f} vs "
                f"{c['ms']['defaults']:.1f} ms ({c['speedup']:.2f}x), break-even after {c['break_even_steps']} steps",
                flush=True,
            )
    if not args.no_memory:
        result["memory_mb"] = {}
        for preset in presets:
            row = {}
            for config in CONFIGS:
                child = subprocess.run(
                    [sys.executable, __file__, "--device", args.device, "--batch-size", str(args.batch_size)]
                    + ["--memory-child", preset, config],
                    capture_output=True,
                    text=True,
                )
                row[config] = json.loads(child.stdout.strip().splitlines()[-1]) if child.returncode == 0 else None
            result["memory_mb"][preset] = row
            print(f"memory {preset}: " + ", ".join(f"{k} {v:,.0f} MB" for k, v in row.items() if v is not None))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
