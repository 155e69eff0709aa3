"""The memory estimates of ``genvae.core.budget`` against the real peaks they bound.

Each case runs in a fresh process: the model is built (no budget check, no dry run), the process's
peak resident set is reset (``/proc/self/clear_refs``), and the work runs for real on the CPU:

* ``sample B`` / ``reconstruct B``: ``model.sample(B)`` / ``model.reconstruct(x)`` on B images, eval mode;
* ``train B``: two training steps of genvae's Trainer on a batch of B (optimiser states included).

The growth of the peak resident set (``VmHWM``) over the resident set before the work is printed
beside what the estimate counts for the same work beyond the weights (runtime, activations and
kernel scratch, margin included: ``InferenceEstimate.batch_bytes(B)`` or ``Estimate.training_bytes``,
less the parameters and buffers), and their ratio, which must stay below 1. Linux only.

    python benchmarks/inference_memory.py              # every case (a few minutes on 2 cores)
    python benchmarks/inference_memory.py --quick      # the width-1 2048 px model only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# (label, preset, --set overrides): tiny widths at large sizes (the kernels' scratch dominates), and the presets
MODELS = {
    "cvae w1 256": ("cvae", ["image_size=256", "encoder.width=1", "decoder.width=1", "train.batch_size=1"]),
    "cvae w1 1024": ("cvae", ["image_size=1024", "encoder.width=1", "decoder.width=1", "train.batch_size=1"]),
    "cvae w1 2048": ("cvae", ["image_size=2048", "encoder.width=1", "decoder.width=1", "train.batch_size=1"]),
    "cvae": ("cvae", []),
    "vae": ("vae", []),
    "cvae-vamp": ("cvae-vamp", []),
    "crvae-gan-small": ("crvae-gan-small", []),
    "lapcvae-small": ("lapcvae-small", []),
    "crvae-gan": ("crvae-gan", []),
    "lapcvae": ("lapcvae", []),
}
CASES = [
    ("cvae w1 256", "sample", 16), ("cvae w1 256", "reconstruct", 16), ("cvae w1 256", "train", 4),
    ("cvae w1 1024", "sample", 1), ("cvae w1 1024", "sample", 4), ("cvae w1 1024", "reconstruct", 4),
    ("cvae w1 2048", "sample", 1), ("cvae w1 2048", "sample", 4), ("cvae w1 2048", "reconstruct", 2),
    ("cvae w1 2048", "train", 1),
    ("cvae", "sample", 64), ("vae", "sample", 64), ("cvae-vamp", "sample", 64), ("cvae-vamp", "reconstruct", 64),
    ("crvae-gan-small", "sample", 64), ("crvae-gan-small", "reconstruct", 64), ("crvae-gan-small", "train", 64),
    ("lapcvae-small", "sample", 64), ("lapcvae-small", "reconstruct", 64),
    ("crvae-gan", "sample", 64), ("crvae-gan", "reconstruct", 64), ("crvae-gan", "train", 32),
    ("lapcvae", "sample", 64), ("lapcvae", "train", 32),
]
QUICK = [c for c in CASES if c[0] == "cvae w1 2048"]


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(label: str, work: str, batch: int) -> dict:
    import tempfile

    import torch

    from genvae.core import budget
    from genvae.core.compose import compose_spec
    from genvae.core.data import ImageData
    from genvae.core.model import build_model
    from genvae.core.train import Trainer

    preset, sets = MODELS[label]
    spec = compose_spec(preset=preset, sets=sets)
    if work == "train":
        spec = spec.with_train(batch_size=batch)
        est = budget.estimate(spec)
        estimated = est.training_bytes - est.parameter_bytes - est.buffer_bytes
    else:
        inf = budget.inference_estimate(spec, work)
        estimated = inf.batch_bytes(batch) - inf.parameter_bytes - inf.buffer_bytes
    torch.manual_seed(0)
    model = build_model(spec, check=False)
    images = torch.randint(0, 256, (batch, *spec.image_shape), dtype=torch.uint8)
    x = images.float() / 127.5 - 1
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, tmp, ImageData(images, "random"), spec.train, torch.device("cpu")) \
            if work == "train" else None
        model.train(work == "train")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak resident set starts again from the resident set now
        before = _rss("VmRSS:")
        if trainer is not None:
            for _ in range(2):
                trainer.train_step(x)
        else:
            with torch.no_grad():
                out = model.sample(batch) if work == "sample" else model.reconstruct(x)
            del out
        peak = _rss("VmHWM:")
    return {"model": label, "work": f"{work} {batch}", "measured": peak - before, "estimated": estimated,
            "threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Only the width-1 2048 px model.")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        label, work, batch = args.child
        print(json.dumps(child(label, work, int(batch))))
        return 0
    env = {**os.environ, "GENVAE_MAX_MEMORY": "off"}
    print("| model | work | measured peak growth | estimate | measured / estimate |")
    print("|---|---|---:|---:|---:|")
    worst = 0.0
    for label, work, batch in QUICK if args.quick else CASES:
        out = subprocess.run([sys.executable, __file__, "--child", label, work, str(batch)], capture_output=True,
                             text=True, env=env, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        ratio = r["measured"] / r["estimated"]
        worst = max(worst, ratio)
        print(f"| {r['model']} | {r['work']} | {r['measured'] / 2**20:,.0f} MB | {r['estimated'] / 2**20:,.0f} MB | "
              f"{ratio:.2f} |", flush=True)
    print(f"\nlargest measured / estimate: {worst:.2f} (torch {__import__('torch').__version__}, "
          f"{os.cpu_count()} CPUs)")
    return 0 if worst < 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
