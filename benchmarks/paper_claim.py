"""The crVAE paper's Table 1 claim at CPU size: crVAE-GAN > crVAE-GAN without MI > VAE-GAN in sample quality.

Trains ``crvae-gan-small``, ``crvae-gan-no-mi-small`` and ``vae-gan-small`` on Fashion-MNIST (32x32 grey) for the
same number of steps with several seeds, two runs at a time on one torch thread each, then scores every run with
``genvae evaluate`` (FID, KID, IS, precision/recall in the features of a classifier trained by
``genvae train-classifier``, and reconstruction RMSE) and prints mean ± std over seeds per model as a Markdown
table. Everything goes to ``runs/paper-claim/`` (``summary.json`` holds every number); runs already finished
are reused, so an interrupted invocation can be repeated.

    python benchmarks/paper_claim.py                       # 3 seeds x 1200 steps, 2000 test images
    python benchmarks/paper_claim.py --seeds 0 --steps 50 --images 200 --out runs/pc-smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PRESETS = ("crvae-gan-small", "crvae-gan-no-mi-small", "vae-gan-small")
SCORES = (("fid", "fid"), ("kid", "kid"), ("is", "is"), ("pr", "precision"), ("pr", "recall"), ("rmse", "rmse"))


def genvae(*args: str, log: Path | None = None) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "genvae.cli", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if log is not None:
        log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"failed: genvae {' '.join(args)}\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def train(out: Path, preset: str, seed: int, steps: int) -> Path:
    folder = out / f"{preset}-s{seed}"
    if (folder / "model.safetensors").exists() and (folder / "metrics.jsonl").exists():
        last = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
        if last.get("step") == steps:
            return folder
    genvae("build", "--preset", preset, "--set", f"train.seed={seed}", "-o", str(folder), "--force")
    genvae(
        "train",
        str(folder),
        "--data",
        "fashion-mnist",
        "--max-steps",
        str(steps),
        "--restart",
        "--quiet",
        log=out / f"{preset}-s{seed}.train.log",
    )
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--images", type=int, default=2000, help="test images (and samples) per evaluation")
    parser.add_argument("--classifier-epochs", type=int, default=2)
    parser.add_argument("--out", default="runs/paper-claim")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clf = out / "classifier"
    if not (clf / "model.safetensors").exists():
        genvae(
            "train-classifier",
            "--data",
            "fashion-mnist",
            "-o",
            str(clf),
            "--width",
            "16",
            "--epochs",
            str(args.classifier_epochs),
            "--force",
            log=out / "classifier.log",
        )
    accuracy = json.loads((clf / "config.json").read_text())["test_accuracy"]
    jobs = [(p, s) for s in args.seeds for p in PRESETS]
    with ThreadPoolExecutor(args.jobs) as pool:
        folders = list(pool.map(lambda job: train(out, job[0], job[1], args.steps), jobs))
    reports = {}
    for (preset, seed), folder in zip(jobs, folders, strict=True):
        text = genvae(
            "evaluate",
            str(folder),
            "--data",
            "fashion-mnist",
            "--metrics",
            "rmse,fid,kid,is,pr",
            "--classifier",
            str(clf),
            "--limit",
            str(args.images),
            "--samples",
            str(args.images),
            "--seed",
            str(seed),
            "-o",
            str(folder / "report.json"),
        )
        reports[f"{preset}-s{seed}"] = json.loads(text.strip().splitlines()[-1])["models"][0]["metrics"]
    summary = {
        "steps": args.steps,
        "seeds": args.seeds,
        "images": args.images,
        "classifier_accuracy": accuracy,
        "runs": reports,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{args.steps} steps, seeds {args.seeds}, {args.images} test images and samples; features: fashion-mnist "
        f"classifier (test accuracy {accuracy:.4f})\n"
    )
    print("| model | " + " | ".join(f"{key}" for _, key in SCORES) + " |")
    print("| --- |" + " ---: |" * len(SCORES))
    for preset in PRESETS:
        cells = []
        for metric, key in SCORES:
            values = [reports[f"{preset}-s{s}"][metric][key] for s in args.seeds]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}")
        print(f"| `{preset}` | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
