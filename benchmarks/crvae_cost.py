"""Model cost: crVAE-GAN vs VAE-GAN at the paper's 64x64 config (and LapCVAE beside them), side by side in one run.

The models (presets ``crvae-gan``, ``vae-gan`` and ``lapcvae``, batch 128, eval mode, no grad) are timed in
one process, interleaved repetition by repetition, so machine load drifts hit them alike:

* inference: x -> q(z|x) (encoder + the latent transform's posterior), ms per batch;
* generation: z -> x (the latent transform's generate + decoder + tanh), ms per batch;
* the latent transform alone, both ways (what channel recurrency itself costs).

Peak memory is measured per model in a fresh subprocess, so it is the model's own: inference +
generation, and with ``--train-step`` one training step (one forward, then every phase's backward
and optimiser step, as ``genvae train`` does). On CUDA: synchronised times and
``torch.cuda.max_memory_allocated`` above what the model already held. On the CPU: the growth of
the process's peak resident set (``ru_maxrss``) over its resident set before the measured work.

Also printed: parameters of encoder + latent transform + decoder (the authors' code counts 13.0M vs
17.5M) and of the generator side (the parameters z -> x uses, found by a backward pass).

The paper (section 5, Titan X, batch 128): crVAE-GAN 5.8 ms inference / 4.0 ms generation, VAE-GAN
2.6 / 2.2 ms, i.e. ratios 2.2 and 1.8. Both LSTMs here run the T = 8 blocks in one fused
``nn.LSTM`` call each (no Python loop per time step).

    python benchmarks/crvae_cost.py                          # batch 128, 64x64, auto device
    python benchmarks/crvae_cost.py --threads 1 --train-step # a shared CPU: one thread; + training memory
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

MODELS = ("crvae-gan", "vae-gan", "lapcvae")  # the ratio column is the first over the second
PAPER_MS = {"inference_ms": (5.8, 2.6), "generation_ms": (4.0, 2.2)}  # (crVAE-GAN, VAE-GAN), Titan X


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _setup(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def _build(name, device):
    import torch

    from genvae.core.compose import preset_spec
    from genvae.core.model import build_model

    torch.manual_seed(0)
    spec = preset_spec(name)
    return spec, build_model(spec).to(device).eval()


def _used_by_generation(model, z) -> int:
    """Parameters that z -> x actually uses (those that get a gradient from it): the generator side."""
    model.zero_grad(set_to_none=True)
    model.generate(z)[1].sum().backward()
    used = sum(p.numel() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    return used


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- memory: one model per subprocess ---------------------------------------------------------------------


def memory_child(args) -> dict:
    import torch

    device = _setup(args)
    cuda = device.type == "cuda"
    spec, model = _build(args.child, device)
    n = args.batch
    x = torch.rand(n, *spec.image_shape, device=device) * 2 - 1
    z = torch.randn(n, *model.layout.shape, device=device)

    def start():
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            return torch.cuda.memory_allocated(device)
        return _rss_bytes()

    def peak(base):
        if cuda:
            torch.cuda.synchronize(device)
        return ((torch.cuda.max_memory_allocated(device) if cuda else _peak_rss_bytes()) - base) / 2**20

    out = {"model": args.child}
    base = start()
    with torch.no_grad():
        model.encode(x)
        model.generate(z)
    out["peak_mb_eval"] = peak(base)
    if args.train_step:
        import tempfile

        from genvae.core.data import ImageData
        from genvae.core.training import Trainer

        model.train()
        pixels = ((x.cpu() + 1) * 127.5).round().to(torch.uint8)
        with tempfile.TemporaryDirectory() as folder:  # the trainer writes nothing unless asked to
            trainer = Trainer(
                model, folder, ImageData(images=pixels, source="benchmark"), spec.with_train(batch_size=n).train, device
            )
            base = start()
            began = time.perf_counter()
            trainer.train_step(x)
            out["peak_mb_train_step"] = peak(base)
            out["train_step_s"] = time.perf_counter() - began
    return out


# -- timing: both models in this process, interleaved -----------------------------------------------------


def timings(args, device) -> tuple[dict, dict, str]:
    import torch

    cuda = device.type == "cuda"
    models = {name: _build(name, device) for name in MODELS}
    n = args.batch
    inputs = {}
    info = {}
    for name, (spec, model) in models.items():
        x = torch.rand(n, *spec.image_shape, device=device) * 2 - 1
        z = torch.randn(n, *model.layout.shape, device=device)
        with torch.no_grad():
            features = model.encoder(x)
        inputs[name] = (x, z, features)
        info[name] = {
            "params_vae": _count(model.encoder) + _count(model.transform) + _count(model.decoder),
            "params_generator": _used_by_generation(model, z[:2]),
            "params_all": _count(model),
            "latent": list(model.layout.shape),
        }

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def once(fn) -> float:
        sync()
        began = time.perf_counter()
        fn()
        sync()
        return (time.perf_counter() - began) * 1e3

    work = {
        "inference_ms": lambda m, x, z, f: m.encode(x),
        "generation_ms": lambda m, x, z, f: m.generate(z),
        "latent_posterior_ms": lambda m, x, z, f: m.transform.posterior(f),
        "latent_generate_ms": lambda m, x, z, f: m.transform.generate(z),
    }
    times = {name: {k: [] for k in work} for name in MODELS}
    with torch.no_grad():
        for rep in range(args.warmup + args.reps):
            for name in MODELS if rep % 2 == 0 else MODELS[::-1]:
                model = models[name][1]
                for key, fn in work.items():
                    ms = once(lambda fn=fn, model=model, name=name: fn(model, *inputs[name]))
                    if rep >= args.warmup:
                        times[name][key].append(ms)
    where = (
        torch.cuda.get_device_name(device)
        if cuda
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    return times, info, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=8, help="timed repetitions per model and measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--train-step", action="store_true", help="also measure one training step's peak memory")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(memory_child(args)))
        return

    memory = {}
    for name in MODELS:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            name,
            "--batch",
            str(args.batch),
            "--device",
            args.device,
            "--threads",
            str(args.threads),
        ]
        if args.train_step:
            cmd.append("--train-step")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        memory[name] = json.loads(out.strip().splitlines()[-1])
    device = _setup(args)
    times, info, where = timings(args, device)

    summary = {
        name: {
            **info[name],
            **{k: statistics.median(v) for k, v in times[name].items()},
            **{k: v for k, v in memory[name].items() if k != "model"},
        }
        for name in MODELS
    }
    cr, fc = summary["crvae-gan"], summary["vae-gan"]
    keys = ["inference_ms", "generation_ms", "latent_posterior_ms", "latent_generate_ms", "peak_mb_eval"]
    if args.train_step:
        keys += ["peak_mb_train_step", "train_step_s"]
    keys += ["params_vae", "params_generator"]
    ratios = {k: cr[k] / fc[k] for k in keys if fc[k]}
    paper = {k: a / b for k, (a, b) in PAPER_MS.items()}
    labels = {
        "inference_ms": ("inference ms/batch", "{:.1f}"),
        "generation_ms": ("generation ms/batch", "{:.1f}"),
        "latent_posterior_ms": ("  latent posterior ms", "{:.1f}"),
        "latent_generate_ms": ("  latent generate ms", "{:.1f}"),
        "peak_mb_eval": ("peak MB infer+generate", "{:.0f}"),
        "peak_mb_train_step": ("peak MB train step", "{:.0f}"),
        "train_step_s": ("train step s", "{:.1f}"),
        "params_vae": ("params enc+latent+dec", "{:,}"),
        "params_generator": ("params generator side", "{:,}"),
    }
    print(
        f"device: {where} | batch {args.batch} | image 3x64x64 | timing: medians of {args.reps} interleaved "
        f"runs after {args.warmup} warm-up"
    )
    lap = summary["lapcvae"]
    print(f"{'':26s}{'crVAE-GAN':>14s}{'VAE-GAN':>14s}{'ratio':>9s}{'paper ratio':>13s}{'LapCVAE':>14s}")
    for key in keys:
        label, fmt = labels[key]
        ratio = f"{ratios[key]:.2f}" if key in ratios else ""
        ref = f"{paper[key]:.2f}" if key in paper else ""
        print(
            f"{label:26s}{fmt.format(cr[key]):>14s}{fmt.format(fc[key]):>14s}{ratio:>9s}{ref:>13s}"
            f"{fmt.format(lap[key]):>14s}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "device": where,
                    "batch": args.batch,
                    "models": summary,
                    "ratios": ratios,
                    "paper_ratios": paper,
                    "times": times,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
