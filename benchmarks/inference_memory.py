"""The memory estimates of ``genvae.core.budget`` against the real peaks they bound.

Each case runs in a fresh process: the model is built (no budget check, no dry run), the process's
peak resident set is reset (``/proc/self/clear_refs``), and the work runs for real on the CPU:

* ``sample B`` / ``reconstruct B``: ``model.sample(B)`` / ``model.reconstruct(x)`` on B images, eval mode;
* ``train B``: two training steps of genvae's Trainer on a batch of B (optimiser states included).

The growth of the peak resident set (``VmHWM``) over the resident set before the work is printed
beside what the estimate counts for the same work beyond the weights (runtime, activations and
kernel scratch, margin included: ``InferenceEstimate.batch_bytes(B)`` or ``Estimate.training_bytes``,
less the parameters and buffers), and their ratio, which must stay below 1. Linux only.

``--commands`` measures whole ``genvae sample`` runs instead, each in a process of its own whose peak
resident set is reset once the interpreter, the CLI and torch's meta kernels are imported: the growth
over that baseline (model load, dry run, chunks, grid) beside what the memory check counts for the
command (the larger of the load's dry run and the chunk with everything the command keeps).

    python benchmarks/inference_memory.py              # every case (a few minutes on 2 cores)
    python benchmarks/inference_memory.py --quick      # the width-1 2048 px model only
    python benchmarks/inference_memory.py --commands   # genvae sample at 256, 512 and 2048 px (~10 minutes)
    python benchmarks/inference_memory.py --commands --only 2048
"""

from __future__ import annotations

import argparse
import json
import math
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
    ("cvae w1 256", "sample", 16),
    ("cvae w1 256", "reconstruct", 16),
    ("cvae w1 256", "train", 4),
    ("cvae w1 1024", "sample", 1),
    ("cvae w1 1024", "sample", 4),
    ("cvae w1 1024", "reconstruct", 4),
    ("cvae w1 2048", "sample", 1),
    ("cvae w1 2048", "sample", 4),
    ("cvae w1 2048", "reconstruct", 2),
    ("cvae w1 2048", "train", 1),
    ("cvae", "sample", 64),
    ("vae", "sample", 64),
    ("cvae-vamp", "sample", 64),
    ("cvae-vamp", "reconstruct", 64),
    ("crvae-gan-small", "sample", 64),
    ("crvae-gan-small", "reconstruct", 64),
    ("crvae-gan-small", "train", 64),
    ("lapcvae-small", "sample", 64),
    ("lapcvae-small", "reconstruct", 64),
    ("crvae-gan", "sample", 64),
    ("crvae-gan", "reconstruct", 64),
    ("crvae-gan", "train", 32),
    ("lapcvae", "sample", 64),
    ("lapcvae", "train", 32),
]
QUICK = [c for c in CASES if c[0] == "cvae w1 2048"]
# genvae sample runs: (label, -n, GENVAE_MAX_MEMORY)
COMMANDS = [
    ("grey w1 256", 64, "off"),
    ("grey w1 256", 64, "180M"),
    ("cvae w1 512", 16, "off"),
    ("cvae w1 512", 64, "off"),
    ("cvae w1 512", 64, "400M"),
    ("cvae w1 2048", 1, "off"),
    ("cvae w1 2048", 4, "off"),
    ("cvae w1 2048", 16, "2G"),
    ("cvae w1 2048", 10_000, "6G"),
]
MODELS["grey w1 256"] = (
    "cvae",
    [
        "image_size=256",
        "channels=1",
        "encoder.width=1",
        "decoder.width=1",
        "encoder.depth=1",
        "decoder.depth=1",
        "train.batch_size=1",
    ],
)
MODELS["cvae w1 512"] = ("cvae", ["image_size=512", "encoder.width=1", "decoder.width=1", "train.batch_size=1"])
PROCESS = r"""
import json, sys
from genvae.cli.main import add_plugin_commands, cli
from genvae.core.budget import estimate
from genvae.core.compose import compose_spec
import PIL.PngImagePlugin

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

add_plugin_commands()
estimate(compose_spec(preset="cvae", sets=["image_size=8", "encoder.depth=1", "decoder.depth=1"]))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base, code = status("VmRSS:"), 0
try:
    cli.main(sys.argv[1:], prog_name="genvae")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"growth": status("VmHWM:") - base, "code": code}), file=sys.stderr)
"""


def command_estimate(folder, count: int, limit: str) -> tuple[int, int]:
    """(chunk, bytes) the memory check counts for ``genvae sample FOLDER -n COUNT`` under ``limit``."""
    from genvae.core import budget
    from genvae.core.checkpoint import load_model
    from genvae.core.inference import sample_chunks

    os.environ["GENVAE_MAX_MEMORY"] = limit if limit != "off" else "1P"
    model = load_model(folder)
    held = budget.grid_bytes(model, count)
    try:
        _, chunk = sample_chunks(model, count, held=held)
    except budget.BudgetError:
        return 0, 0
    kept = held + budget.image_bytes(model, count, 1) + min(count, 256) * 4 * math.prod(model.layout.shape)
    sampling = budget.inference_estimate(model, "generate").batch_bytes(chunk) + kept
    return chunk, max(sampling, budget._dry_run_bytes(model.spec, None))


def commands(only: str = "") -> int:
    import tempfile

    import torch

    from genvae.core.checkpoint import save_model
    from genvae.core.compose import compose_spec
    from genvae.core.model import build_model

    print("| model | command | GENVAE_MAX_MEMORY | chunk | measured growth | estimate | measured / estimate |")
    print("|---|---|---|---:|---:|---:|---:|")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        built: dict[str, str] = {}
        for label, count, limit in COMMANDS:
            if only not in label:
                continue
            if label not in built:
                preset, sets = MODELS[label]
                built[label] = os.path.join(tmp, label.replace(" ", "-"))
                torch.manual_seed(0)
                save_model(build_model(compose_spec(preset=preset, sets=sets), check=False), built[label])
            chunk, estimated = command_estimate(built[label], count, limit)
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    PROCESS,
                    "sample",
                    built[label],
                    "-n",
                    str(count),
                    "-o",
                    os.path.join(tmp, "s.png"),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "GENVAE_MAX_MEMORY": limit},
            )
            r = json.loads(out.stderr.strip().splitlines()[-1])
            shown = f"sample -n {count}"
            if r["code"]:
                print(f"| {label} | {shown} | {limit} | refused | {r['growth'] / 2**20:,.0f} MB | - | - |", flush=True)
                continue
            ratio = r["growth"] / estimated
            worst = max(worst, ratio)
            print(
                f"| {label} | {shown} | {limit} | {chunk} | {r['growth'] / 2**20:,.0f} MB | "
                f"{estimated / 2**20:,.0f} MB | {ratio:.2f} |",
                flush=True,
            )
    print(f"\nlargest measured / estimate: {worst:.2f}")
    return 0 if worst < 1 else 1


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
    from genvae.core.training import Trainer

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
        trainer = (
            Trainer(model, tmp, ImageData(images, "random"), spec.train, torch.device("cpu"))
            if work == "train"
            else None
        )
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
    return {
        "model": label,
        "work": f"{work} {batch}",
        "measured": peak - before,
        "estimated": estimated,
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Only the width-1 2048 px model.")
    parser.add_argument("--commands", action="store_true", help="Whole genvae sample runs.")
    parser.add_argument("--only", default="", help="Only the models whose label contains this (e.g. 2048).")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.commands:
        return commands(args.only)
    if args.child:
        label, work, batch = args.child
        print(json.dumps(child(label, work, int(batch))))
        return 0
    env = {**os.environ, "GENVAE_MAX_MEMORY": "off"}
    print("| model | work | measured peak growth | estimate | measured / estimate |")
    print("|---|---|---:|---:|---:|")
    worst = 0.0
    for label, work, batch in QUICK if args.quick else CASES:
        out = subprocess.run(
            [sys.executable, __file__, "--child", label, work, str(batch)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        ratio = r["measured"] / r["estimated"]
        worst = max(worst, ratio)
        print(
            f"| {r['model']} | {r['work']} | {r['measured'] / 2**20:,.0f} MB | {r['estimated'] / 2**20:,.0f} MB | "
            f"{ratio:.2f} |",
            flush=True,
        )
    print(
        f"\nlargest measured / estimate: {worst:.2f} (torch {__import__('torch').__version__}, {os.cpu_count()} CPUs)"
    )
    return 0 if worst < 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
