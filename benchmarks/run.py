"""genvae's benchmark suite: one command, one table, one JSON file.

Runs each benchmark in its own process (so one's threads, caches and memory do not leak into the next),
each measuring its pair side by side, interleaved, with warm-up and several repeats:

* engine overhead: genvae's Trainer step vs a hand-written PyTorch loop of the same networks and losses
  (``benchmarks/handwritten.py``, no genvae imports), for ``cvae``, ``crvae-gan-small`` and
  ``lapcvae-small``; target ratio <= 1.03;
* against a peer: the same conv VAE through genvae vs pythae's BaseTrainer (``peer_pythae.py``; needs
  pythae in ``.venv-peer``, see that script); target >= 1.25x on the CPU, >= 2x on a GPU;
* model cost: inference and generation ms per batch of 128 at 64x64, parameters and peak memory of
  ``crvae-gan``, ``vae-gan`` and ``lapcvae``, with the paper's crVAE-GAN/VAE-GAN ratios (``crvae_cost.py``);
* data pipeline: images/s from an image folder through the on-disk cache and from Fashion-MNIST, first
  and later epochs, against the training step's consumption (``data_pipeline.py``); target >= 5x.

    python benchmarks/run.py                          # this machine's CPU, about 5 minutes on 2 cores
    python benchmarks/run.py --device cuda            # on a GPU
    python benchmarks/run.py --only engine,data --out runs/bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
ENGINE_PRESETS = {  # preset: (batch size, steps per block, blocks)
    "cvae": (64, 10, 7),
    "crvae-gan-small": (64, 4, 5),
    "lapcvae-small": (64, 10, 9),
}


def run(cmd: list[str], label: str, python: str | os.PathLike = sys.executable) -> tuple[str, float]:
    began = time.perf_counter()
    print(f"-- {label}: {' '.join(str(c) for c in cmd)}", flush=True)
    result = subprocess.run([str(python), *map(str, cmd)], cwd=ROOT, capture_output=True, text=True)
    took = time.perf_counter() - began
    if result.returncode:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"   failed after {took:.0f} s: {tail}", flush=True)
        return "", took
    print(result.stdout.rstrip(), flush=True)
    print(f"   ({took:.0f} s)", flush=True)
    return result.stdout, took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps CPU figures repeatable)")
    ap.add_argument("--only", default="engine,peer,cost,data", help="which parts: engine, peer, cost, data")
    ap.add_argument("--out", default="runs/bench", help="folder for the JSON files")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = {p.strip() for p in args.only.split(",")}
    common = ["--device", args.device, "--threads", str(args.threads)]
    summary: dict = {
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "cpus": os.cpu_count(),
        "device": args.device,
        "threads": args.threads,
        "parts": {},
    }
    if "engine" in parts:
        parity, _ = run([HERE / "handwritten_parity.py"], "hand-written loops compute what genvae computes")
        summary["parity"] = "OK" if parity.rstrip().endswith("parity: OK") else "FAILED"
        for preset, (batch, steps, blocks) in ENGINE_PRESETS.items():
            path = out / f"engine-{preset}.json"
            run(
                [
                    HERE / "engine_overhead.py",
                    "--preset",
                    preset,
                    "--batch-size",
                    batch,
                    "--steps",
                    steps,
                    "--blocks",
                    blocks,
                    *common,
                    "--json",
                    path,
                ],
                f"engine overhead, {preset}",
            )
            if path.exists():
                summary["parts"][f"engine {preset}"] = json.loads(path.read_text())
    if "peer" in parts:
        if PEER_PYTHON.exists():
            path = out / "peer-pythae.json"
            run(
                [HERE / "peer_pythae.py", "--steps", "40", "--blocks", "4", *common, "--json", path],
                "against pythae",
                python=PEER_PYTHON,
            )
            if path.exists():
                summary["parts"]["peer pythae"] = json.loads(path.read_text())
        else:
            print(f"-- against pythae: skipped, {PEER_PYTHON} does not exist (see benchmarks/peer_pythae.py)")
    if "cost" in parts:
        path = out / "model-cost.json"
        run(
            [HERE / "crvae_cost.py", "--reps", "5", "--warmup", "1", "--train-step", *common, "--json", path],
            "model cost",
        )
        if path.exists():
            summary["parts"]["model cost"] = json.loads(path.read_text())
    if "data" in parts:
        path = out / "data-pipeline.json"
        run([HERE / "data_pipeline.py", "--threads", str(args.threads), "--json", path], "data pipeline")
        if path.exists():
            summary["parts"]["data pipeline"] = json.loads(path.read_text())
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_table(summary)
    print(f"\nwritten: {out / 'summary.json'} (and one JSON file per part beside it)")


def print_table(summary: dict) -> None:
    parts = summary["parts"]
    rows: list[tuple[str, str, str, str]] = []
    for name, res in parts.items():
        if name.startswith("engine "):
            rows.append(
                (
                    f"engine overhead, {res['preset']}",
                    f"{res['engine_ms']:.2f} ms vs {res['hand_ms']:.2f} ms",
                    f"{res['ratio']:.3f}",
                    "<= 1.03",
                )
            )
    if "peer pythae" in parts:
        res = parts["peer pythae"]
        rate = res["samples_per_s"]
        for variant, ratio in res["ratio_vs_pythae"].items():
            if variant != "pythae":
                rows.append(
                    (
                        f"genvae ({variant}) vs pythae",
                        f"{rate[variant]:,.0f} vs {rate['pythae']:,.0f} samples/s",
                        f"{ratio:.2f}x",
                        ">= 1.25x CPU, >= 2x GPU",
                    )
                )
    if "model cost" in parts:
        res = parts["model cost"]
        models = res["models"]
        for key, label in (("inference_ms", "inference"), ("generation_ms", "generation")):
            rows.append(
                (
                    f"{label}, batch 128 @64px",
                    "crVAE-GAN {:.1f} / VAE-GAN {:.1f} / LapCVAE {:.1f} ms".format(
                        models["crvae-gan"][key], models["vae-gan"][key], models["lapcvae"][key]
                    ),
                    f"{res['ratios'][key]:.2f}",
                    f"paper {res['paper_ratios'][key]:.2f}",
                )
            )
    if "data pipeline" in parts:
        res = parts["data pipeline"]
        rows.append(
            (
                "loader / training step",
                f"folder {res['folder']['later_images_per_s']:,.0f}, fashion-mnist "
                f"{res['fashion-mnist']['later_images_per_s']:,.0f} vs step "
                f"{res['train_step_images_per_s']:,.0f} images/s",
                f"{res['loader_over_step']:.0f}x",
                ">= 5x",
            )
        )
    print(f"\nhand-written loops vs genvae, same losses and weights after 3 steps: {summary.get('parity', 'not run')}")
    print(f"{'benchmark':34s} {'measured':58s} {'ratio':>8s}  target")
    for name, measured, ratio, target in rows:
        print(f"{name:34s} {measured:58s} {ratio:>8s}  {target}")


if __name__ == "__main__":
    main()
