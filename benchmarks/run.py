"""genvae's benchmark suite: one command, one table, one JSON file.

Runs each benchmark in its own process (so one's threads, caches and memory do not leak into the next),
each measuring its pair side by side, interleaved, with warm-up and several repeats:

* speed (``precision_speed.py``): the machine's limit (sustained matmul and conv GFLOP/s, float32 and bf16,
  one and two threads) and the training step of ``cvae``, ``crvae-gan-small`` and ``lapcvae-small`` in float32,
  float32 channels-last, bf16 and genvae's defaults, as images/s, speed-up over float32 (target >= 1.6x for the
  two paper presets) and fraction of the limit (FLOPs counted with torch.utils.flop_counter); torch.compile's
  cost and gain; peak memory of each configuration;
* engine overhead: genvae's Trainer step vs a hand-written PyTorch loop of the same networks and losses
  (``benchmarks/handwritten.py``, no genvae imports), in float32 and in bf16 (the hand-written step under
  torch.autocast); target ratio <= 1.03;
* against a peer: the same conv VAE through genvae (its defaults, and float32) vs pythae's BaseTrainer
  (``peer_pythae.py``; needs pythae in ``.venv-peer``, see that script), one and two threads; target >= 1.8x;
* ``--only cost``: inference and generation ms per batch of 128 at 64x64 of the paper's configurations
  (``crvae_cost.py``); ``--only data``: the data pipeline against the training step (``data_pipeline.py``).
  Neither is in the default run (the paper-size training step alone takes a minute on this CPU).

    python benchmarks/run.py                          # this machine's CPU: speed, engine, peer (under 10 minutes)
    python benchmarks/run.py --device cuda            # on a GPU (one H100: about 5 minutes)
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
    "cvae": (64, 8, 5),
    "crvae-gan-small": (64, 4, 5),
    "lapcvae-small": (64, 8, 7),
}
ENGINE_PRECISIONS = ("off", "bf16")


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
    ap.add_argument("--only", default="speed,engine,peer", help="which parts: speed, engine, peer, cost, data")
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
    if "speed" in parts:
        path = out / "speed.json"
        threads = "1,2" if args.device == "cpu" else "0"
        run(
            [HERE / "precision_speed.py", "--device", args.device, "--threads", threads, "--compile", "--json", path],
            "speed",
        )
        if path.exists():
            summary["parts"]["speed"] = json.loads(path.read_text())
    if "engine" in parts:
        parity, _ = run([HERE / "handwritten_parity.py"], "hand-written loops compute what genvae computes")
        summary["parity"] = "OK" if parity.rstrip().endswith("parity: OK") else "FAILED"
        for amp in ENGINE_PRECISIONS:
            for preset, (batch, steps, blocks) in ENGINE_PRESETS.items():
                path = out / f"engine-{preset}-{amp}.json"
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
                        "--amp",
                        amp,
                        *common,
                        "--json",
                        path,
                    ],
                    f"engine overhead, {preset}, {'float32' if amp == 'off' else amp}",
                )
                if path.exists():
                    summary["parts"][f"engine {preset} {amp}"] = json.loads(path.read_text())
    if "peer" in parts:
        if PEER_PYTHON.exists():
            for threads in [1, 2] if args.device == "cpu" else [args.threads]:
                path = out / f"peer-pythae-{threads}.json"
                run(
                    [
                        HERE / "peer_pythae.py",
                        "--steps",
                        "30",
                        "--blocks",
                        "3",
                        "--device",
                        args.device,
                        "--threads",
                        threads,
                        "--json",
                        path,
                    ],
                    f"against pythae, {threads} thread(s)",
                    python=PEER_PYTHON,
                )
                if path.exists():
                    summary["parts"][f"peer pythae {threads}"] = json.loads(path.read_text())
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
    speed = parts.get("speed", {})
    for threads, res in speed.get("by_threads", {}).items():
        lim = res["limit_gflops"]
        rows.append(
            (
                f"machine limit, {threads} thread(s)",
                f"matmul {lim['matmul fp32']:,.0f} / {lim['matmul bf16']:,.0f}, conv {lim['conv fp32']:,.0f} / "
                f"{lim['conv bf16']:,.0f} GFLOP/s (fp32 / bf16)",
                f"{max(lim['matmul bf16'], lim['conv bf16']) / max(lim['matmul fp32'], lim['conv fp32']):.2f}x",
                "",
            )
        )
        for m in res["models"]:
            target = ">= 1.6x" if m["preset"] in ("crvae-gan-small", "lapcvae-small") else ""
            rows.append(
                (
                    f"{m['preset']}, {threads} thread(s)",
                    f"fp32 {m['images_per_s']['fp32']:,.0f} -> defaults {m['images_per_s']['defaults']:,.0f} img/s; "
                    f"limit {m['fraction_of_limit']['fp32']:.0%} -> {m['fraction_of_limit']['defaults']:.0%}",
                    f"{m['speedup_vs_fp32']['defaults']:.2f}x",
                    target,
                )
            )
    for c in speed.get("compile", []):
        rows.append(
            (
                f"torch.compile, {c['preset']}",
                f"{c['ms']['compiled']:.1f} vs {c['ms']['defaults']:.1f} ms/step; first step {c['first_step_s']:.0f} s",
                f"{c['speedup']:.2f}x",
                "default where > 1",
            )
        )
    for preset, row in speed.get("memory_mb", {}).items():
        rows.append(
            (
                f"memory, {preset}",
                ", ".join(f"{k} {v:,.0f}" for k, v in row.items() if v is not None) + " MB",
                "",
                "",
            )
        )
    for name, res in parts.items():
        if name.startswith("engine "):
            rows.append(
                (
                    f"engine overhead, {res['preset']} {res.get('precision', 'fp32')}",
                    f"{res['engine_ms']:.2f} ms vs {res['hand_ms']:.2f} ms",
                    f"{res['ratio']:.3f}",
                    "<= 1.03",
                )
            )
    for name, res in parts.items():
        if name.startswith("peer pythae"):
            rate = res["samples_per_s"]
            for variant, ratio in res["ratio_vs_pythae"].items():
                if variant != "pythae":
                    rows.append(
                        (
                            f"genvae {variant} vs pythae, {name.split()[-1]} thread(s)",
                            f"{rate[variant]:,.0f} vs {rate['pythae']:,.0f} samples/s",
                            f"{ratio:.2f}x",
                            ">= 1.8x" if variant == "defaults" else "",
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
    print(f"{'benchmark':40s} {'measured':74s} {'ratio':>8s}  target")
    for name, measured, ratio, target in rows:
        print(f"{name:40s} {measured:74s} {ratio:>8s}  {target}")


if __name__ == "__main__":
    main()
