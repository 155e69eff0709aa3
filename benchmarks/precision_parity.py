"""bf16 against float32 on real data: the paper presets trained the same number of steps from the same seeds in each
precision, then their final losses and FID (in a classifier's features) side by side.

For every preset, seed and precision, as a user runs it:

    genvae build --preset P --set train.seed=S -o OUT/P-PREC-sS
    genvae train OUT/P-PREC-sS --data fashion-mnist --max-steps N --amp PREC --seed S --log-every 25
    genvae evaluate OUT/P-PREC-sS --data fashion-mnist --metrics fid --classifier CLF --samples 2000 --seed S

(``PREC`` is ``off`` or ``bf16``; evaluation runs each model in the precision it trained in.) On the CPU each run
has one torch thread and ``--jobs`` run side by side. Printed per preset: FID mean ± standard deviation over the
seeds in each precision, the difference of the means against the seed-to-seed spread (parity: the difference is
within the larger of the two standard deviations), and the final logged total of the model phase per seed (the
mean of its last 4 log lines) with the relative difference between the precisions.

    python benchmarks/precision_parity.py --out runs/parity                 # crvae-gan-small, lapcvae-small, 400 steps
    python benchmarks/precision_parity.py --presets vae-gan-small --steps 200 --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gan_gate import (  # noqa: E402
    GENVAE,
    add_run_arguments,
    data_args,
    ensure_classifier,
    evaluate_run,
    run,
    run_env,
    write_results,
)

PRECISIONS = ("off", "bf16")


def final_total(folder: Path) -> float:
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]
    key = next(k for k in lines[-1] if k.startswith("model") and k.endswith("/total"))
    return statistics.mean(line[key] for line in lines[-4:])


def one_run(args: argparse.Namespace, preset: str, precision: str, seed: int, clf: Path) -> dict:
    folder = args.out / f"{preset}-{precision}-s{seed}"
    log = args.out / f"{preset}-{precision}-s{seed}.log"
    env = run_env(args)
    if not (folder / "parity.json").exists():
        log.unlink(missing_ok=True)
        run(
            [*GENVAE, "build", "--preset", preset, "--set", f"train.seed={seed}", "-o", str(folder), "--force"],
            log,
            env,
        )
        began = time.perf_counter()
        train = [*GENVAE, "train", str(folder), *data_args(args), "--max-steps", str(args.steps), "--amp", precision]
        run([*train, "--seed", str(seed), "--log-every", "25", "--device", args.device, "--quiet"], log, env)
        took = time.perf_counter() - began
        evaluate_run(args, folder, "fid", clf, seed, folder / "fid.json", log, env)
        fid = json.loads((folder / "fid.json").read_text())["models"][0]["metrics"]["fid"]["fid"]
        row = {"preset": preset, "precision": precision, "seed": seed, "fid": fid, "final_total": final_total(folder)}
        (folder / "parity.json").write_text(json.dumps({**row, "train_s": round(took, 1)}))
    return json.loads((folder / "parity.json").read_text())


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(rows: list[dict], presets: list[str]) -> str:
    out = [
        "| preset | FID float32 | FID bf16 | difference of means | parity (within the seed spread) | "
        "final total float32 / bf16 per seed | largest relative difference |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for p in presets:
        by = {
            prec: sorted((r for r in rows if r["preset"] == p and r["precision"] == prec), key=lambda r: r["seed"])
            for prec in PRECISIONS
        }
        (fm, fs), (bm, bs) = (mean_sd([r["fid"] for r in by[prec]]) for prec in PRECISIONS)
        diff = bm - fm
        totals = ", ".join(
            f"{a['final_total']:.4g} / {b['final_total']:.4g}" for a, b in zip(by["off"], by["bf16"], strict=True)
        )
        rel = max(
            abs(b["final_total"] - a["final_total"]) / abs(a["final_total"])
            for a, b in zip(by["off"], by["bf16"], strict=True)
        )
        ok = "yes" if abs(diff) <= max(fs, bs) else "no"
        out.append(f"| `{p}` | {fm:.2f} ± {fs:.2f} | {bm:.2f} ± {bs:.2f} | {diff:+.2f} | {ok} | {totals} | {rel:.1%} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(ap, Path("runs/parity"))
    ap.add_argument("--presets", default="crvae-gan-small,lapcvae-small")
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    clf = args.classifier or ensure_classifier(args, 32)
    started = time.perf_counter()
    jobs = [(p, prec, s) for s in args.seeds for p in presets for prec in PRECISIONS]
    with ThreadPoolExecutor(max_workers=args.jobs if args.device == "cpu" else 1) as pool:
        rows = list(pool.map(lambda job: one_run(args, *job, clf), jobs))
    text = table(rows, presets)
    head = (
        f"{', '.join(presets)} on {args.data}, {args.steps} steps, seeds {','.join(map(str, args.seeds))}, "
        f"device {args.device}; {(time.perf_counter() - started) / 60:.1f} min in all"
    )
    write_results(args.out, "parity", head, text, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
