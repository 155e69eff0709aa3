"""The adversarial presets' quality gate (docs/crvae-gan.md, "Quality gate"): each model trained for the same time
budget, three seeds, then scored the same way against the plain convolutional VAE.

For every model and seed, as a user runs it:

    genvae build --preset P --set train.seed=S -o OUT/P-sS
    genvae train OUT/P-sS --data DATA --seed S --max-time BUDGET --set train.time_clock=process --classifier CLF
    genvae evaluate OUT/P-sS --data DATA --metrics fid,coverage,spectrum --classifier CLF --samples 2000 --seed S

On the CPU each training runs on one torch thread and the budget counts that process's CPU seconds
(``train.time_clock=process``), so runs side by side (``--jobs``) or other work on the machine do not change what
a run gets; on CUDA the budget is wall-clock seconds. The gate, per adversarial model:

* (a) FID, in the classifier's features, below the conv VAE's (mean over the seeds);
* (b) every class holds at least 3 % of the 2,000 samples (the classifier's labels), at every seed;
* (c) no periodic artefact: at every radius above half the Nyquist frequency the samples' radially averaged power
  spectrum is within 2x of the real images' (``spectrum_worst_ratio`` <= 2), at every seed.

    python benchmarks/gan_gate.py --out runs/gate                       # CPU: 32 px Fashion-MNIST, the -small presets
    python benchmarks/gan_gate.py --out runs/gate --budget 900 --jobs 2
    python benchmarks/gan_gate.py --paper --device cuda --out runs/gate-gpu   # 64 px, the paper presets, < 8 min
    python benchmarks/gan_gate.py --paper --device cuda --data-root data/fashion-mnist   # where /usr/share has none

The table (markdown) goes to OUT/gate.md and stdout, every figure to OUT/gate.json; the first seed's sample grids
(64 draws, ``--seed 0``) to OUT/P-s0.png and its test reconstructions to OUT/P-s0-recon.png. A classifier is trained
first (``genvae train-classifier``, at the models' image size) unless ``--classifier`` names one. ``--keep`` reuses
the runs already scored in OUT, so that after a preset changes, removing its folders and running the gate again
retrains that model only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

GENVAE = [sys.executable, "-m", "genvae.cli"]
#: (the plain VAE, the adversarial models) at CPU size and at the paper's size
SMALL = ("conv-vae", ["vae-gan-small", "crvae-gan-small"])
PAPER = ("fig3-cvae", ["vae-gan", "crvae-gan"])
COVERED = 0.03
SPECTRUM = 2.0


def data_args(args: argparse.Namespace) -> list[str]:
    return ["--data", args.data, *(["--data-root", str(args.data_root)] if args.data_root else [])]


def run(cmd: list[str], log: Path, env: dict[str, str]) -> None:
    with log.open("a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")


def run_env(args: argparse.Namespace, threads: int = 1) -> dict[str, str]:
    """The environment of one run: on the CPU, ``threads`` torch threads (runs side by side get one core each)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads)} if args.device == "cpu" else dict(os.environ)


def evaluate_run(
    args: argparse.Namespace,
    folder: Path,
    metrics: str,
    clf: Path,
    seed: int,
    out: Path,
    log: Path,
    env: dict[str, str],
) -> None:
    """``genvae evaluate`` of one run on the test data: ``metrics`` in the classifier's features, 2,000 samples drawn
    with ``seed``, the JSON report to ``out``."""
    cmd = [*GENVAE, "evaluate", str(folder), *data_args(args), "--metrics", metrics, "--classifier", str(clf)]
    run([*cmd, "--samples", "2000", "--seed", str(seed), "--device", args.device, "-o", str(out)], log, env)


def add_run_arguments(ap: argparse.ArgumentParser, out: Path) -> None:
    """The options of a benchmark that trains and scores runs side by side: where they go (``--out``), their data,
    seeds, how many at a time, the device and the classifier that scores them (what the helpers here read)."""
    ap.add_argument("--out", type=Path, default=out)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--data-root", type=Path, help="where the dataset's files are (default: the dataset's own)")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (CPU: one core each)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--classifier", type=Path, help="a genvae train-classifier folder (default: train one)")


def ensure_classifier(args: argparse.Namespace, image_size: int) -> Path:
    """OUT/classifier: a ``genvae train-classifier`` network at the models' image size (samples are scored as they
    are drawn), trained unless it is there."""
    clf = args.out / "classifier"
    if not (clf / "model.safetensors").exists():
        env = run_env(args, threads=2)
        cmd = [*GENVAE, "train-classifier", *data_args(args), "--image-size", str(image_size), "--width", "16"]
        run([*cmd, "--epochs", "2", "-o", str(clf), "--device", args.device], args.out / "classifier.log", env)
    return clf


def write_results(out: Path, name: str, head: str, text: str, rows: list[dict]) -> None:
    """OUT/NAME.md (the head line and the table) and OUT/NAME.json (every figure), and the same on stdout."""
    (out / f"{name}.md").write_text(head + "\n\n" + text + "\n")
    (out / f"{name}.json").write_text(json.dumps({"head": head, "rows": rows}, indent=1))
    print(head)
    print(text)


def reused(args: argparse.Namespace, preset: str, seed: int) -> bool:
    """Whether the run of ``preset`` and ``seed`` is taken as it is: ``--keep`` and it was scored already."""
    return args.keep and (args.out / f"{preset}-s{seed}" / "gate.json").exists()


def one_run(args: argparse.Namespace, preset: str, seed: int, clf: Path, sets: list[str]) -> dict:
    folder = args.out / f"{preset}-s{seed}"
    log = args.out / f"{preset}-s{seed}.log"
    env = run_env(args)
    if not reused(args, preset, seed):
        log.unlink(missing_ok=True)
        train_and_score(args, preset, seed, clf, sets, folder, log, env)
    if seed == args.seeds[0]:  # the grids shown in the docs
        grid = args.out / f"{preset}-s{seed}.png"
        if not grid.exists():
            run([*GENVAE, "sample", str(folder), "-n", "64", "--seed", "0", "-o", str(grid)], log, env)
        recon = args.out / f"{preset}-s{seed}-recon.png"
        if not recon.exists():
            cmd = [*GENVAE, "reconstruct", str(folder), *data_args(args), "-n", "32", "-o", str(recon)]
            run(cmd, log, env)
    return score_row(args, preset, seed, folder)


def train_and_score(
    args: argparse.Namespace,
    preset: str,
    seed: int,
    clf: Path,
    sets: list[str],
    folder: Path,
    log: Path,
    env: dict[str, str],
) -> None:
    build_sets = [x for s in sets for x in ("--set", s)]
    run(
        [
            *GENVAE,
            "build",
            "--preset",
            preset,
            "--set",
            f"train.seed={seed}",
            *build_sets,
            "-o",
            str(folder),
            "--force",
        ],
        log,
        env,
    )
    clock = "process" if args.device == "cpu" else "wall"
    started = time.perf_counter()
    run(
        [
            *GENVAE,
            "train",
            str(folder),
            *data_args(args),
            "--seed",
            str(seed),
            "--max-time",
            str(args.budget),
            "--set",
            f"train.time_clock={clock}",
            "--classifier",
            str(clf),
            "--device",
            args.device,
            "--quiet",
        ],
        log,
        env,
    )
    (folder / "gate-train.json").write_text(json.dumps({"train_wall_s": round(time.perf_counter() - started, 1)}))
    evaluate_run(args, folder, "fid,coverage,spectrum", clf, seed, folder / "gate.json", log, env)


def score_row(args: argparse.Namespace, preset: str, seed: int, folder: Path) -> dict:
    """One run's row, from its folder: steps, training speed and the evaluation's scores.

    On the CPU the speed is images per CPU-second of the run's one thread (steps x batch / budget), which other work
    on the machine does not change; on CUDA, images per wall-clock second between the first and last log lines."""
    scores: dict[str, float] = {}
    for values in json.loads((folder / "gate.json").read_text())["models"][0]["metrics"].values():
        scores.update(values)
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = lines[-1]["step"]
    batch = json.loads((folder / "config.json").read_text())["train"]["batch_size"]
    if args.device == "cpu":
        rate = steps * batch / args.budget
    else:
        seconds = lines[-1]["wall_time"] - lines[0]["wall_time"]
        rate = (steps - lines[0]["step"]) * batch / seconds if seconds > 0 else float("nan")
    computes = [json.loads(x).get("compute") for x in (folder / "commands.jsonl").read_text().splitlines() if x]
    compute = next((c for c in reversed(computes) if c), "not recorded")  # the training's precision and layout
    return {"preset": preset, "seed": seed, "steps": steps, "images_per_s": rate, "compute": compute, **scores}


def mean_sd(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows: list[dict], plain: str, gans: list[str], cpu: bool) -> str:
    out = [
        f"| model | seed | steps | {'images / CPU-s' if cpu else 'images/s'} | FID | rarest class | classes ≥ 3 % "
        "| spectrum worst × | spectrum mean ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        out.append(
            f"| `{r['preset']}` | {r['seed']} | {r['steps']} | {r['images_per_s']:.0f} | {r['fid']:.1f} | "
            f"{r['min_class_share']:.3f} | {int(r['classes_covered'])} | {r['spectrum_worst_ratio']:.2f} | "
            f"{r['spectrum_high_ratio']:.2f} |"
        )
    out += [
        "",
        "| model | FID | rarest class | spectrum worst × | (a) FID < VAE | (b) coverage | (c) spectrum |",
        "| --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    by = {p: [r for r in rows if r["preset"] == p] for p in [plain, *gans]}
    vae_fid = statistics.mean(r["fid"] for r in by[plain])
    for p, rs in by.items():
        fid = [r["fid"] for r in rs]
        share = [r["min_class_share"] for r in rs]
        worst = [r["spectrum_worst_ratio"] for r in rs]
        gate = (
            ["—", "—", "—"]
            if p == plain
            else [
                "pass" if statistics.mean(fid) < vae_fid else "fail",
                "pass" if min(share) >= COVERED else "fail",
                "pass" if max(worst) <= SPECTRUM else "fail",
            ]
        )
        out.append(f"| `{p}` | {mean_sd(fid)} | {mean_sd(share, 3)} | {mean_sd(worst)} | {' | '.join(gate)} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(ap, Path("runs/gate"))
    ap.add_argument(
        "--budget",
        type=float,
        help="seconds per training run (CPU: of one core); default 300 on the CPU, 30 with --paper on CUDA "
        "(nine runs, their evaluations and a classifier in under 8 minutes)",
    )
    ap.add_argument("--paper", action="store_true", help="the paper presets at 64 px (fig3-cvae, vae-gan, crvae-gan)")
    ap.add_argument("--models", help="comma-separated presets: the plain VAE first, then the adversarial ones")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a build --set for every model")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="reuse the runs in OUT that were already scored (a gate interrupted, or one model rerun after its "
        "folders were removed): only the missing runs train",
    )
    args = ap.parse_args()
    plain, gans = PAPER if args.paper else SMALL
    if args.budget is None:
        args.budget = 30.0 if args.paper and args.device != "cpu" else 300.0
    if args.models:
        plain, *gans = args.models.split(",")
    sets = [*args.sets, *(["channels=1"] if args.paper else [])]
    args.out.mkdir(parents=True, exist_ok=True)
    clf = args.classifier or ensure_classifier(args, 64 if args.paper else 32)
    started = time.perf_counter()
    jobs = [(p, s) for s in args.seeds for p in [plain, *gans]]
    all_reused = all(reused(args, p, s) for p, s in jobs)
    with ThreadPoolExecutor(max_workers=args.jobs if args.device == "cpu" else 1) as pool:
        rows = list(pool.map(lambda job: one_run(args, job[0], job[1], clf, sets), jobs))
    rows.sort(key=lambda r: ([plain, *gans].index(r["preset"]), r["seed"]))
    text = table(rows, plain, gans, args.device == "cpu")
    head = (
        f"{'paper presets, 64 px' if args.paper else '-small presets, 32 px'} on {args.data}, device {args.device}, "
        f"budget {args.budget:g} s per run ({'CPU seconds of one core' if args.device == 'cpu' else 'wall-clock'}), "
        f"seeds {','.join(map(str, args.seeds))}, {args.jobs if args.device == 'cpu' else 1} at a time; "
        + ("every run reused (--keep)" if all_reused else f"{(time.perf_counter() - started) / 60:.1f} min in all")
        + "; trained with "
        + " / ".join(sorted({r["compute"] for r in rows}))
    )
    write_results(args.out, "gate", head, text, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
