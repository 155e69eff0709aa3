"""genvae against a peer: the same convolutional VAE trained through genvae's Trainer and through pythae's
BaseTrainer, side by side in one process, interleaved block by block.

Both train the networks of genvae's ``cvae`` preset (conv encoder, latent transform and decoder, 3x32x32,
latent 2x4x4): pythae gets them wrapped in its ``BaseEncoder``/``BaseDecoder`` (flattening the latent for
its vector-latent ``VAE``), so the layers, the latent, the batch, Adam and its learning rate, and the data
(Fashion-MNIST, the same images) are the same. Each block is a whole run as a user starts it — genvae
``Trainer.fit()`` for ``--steps`` steps, pythae ``BaseTrainer.train()`` for one epoch of the same number of
batches — from the weights the previous block left; both write what they write at the end of a run
(genvae: a sample grid and a checkpoint; pythae: its final model). Reported: samples/s (median block),
the ratio, and peak memory (a subprocess per trainer: peak RSS growth on the CPU, max allocated on CUDA).

pythae is not a dependency of genvae: install it in a venv of its own, with genvae beside it:

    python -m venv .venv-peer && .venv-peer/bin/pip install torch==2.14.1 torchvision==0.29.1 pythae -e .
    .venv-peer/bin/python benchmarks/peer_pythae.py                         # CPU, 1 thread
    .venv-peer/bin/python benchmarks/peer_pythae.py --device cuda --batch-size 256

Variants of genvae's run (``--variants``): ``defaults`` (``--amp auto`` and ``--channels-last auto``: bf16 and
channels-last on a CPU with AVX512-BF16), ``fp32`` (both off: genvae before 0.3), ``fp32+channels-last``,
``bf16`` (contiguous layout), ``compile`` (the defaults and torch.compile). pythae trains in float32 (its ``amp``
is CUDA's).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' own helpers
from support import PeakRSS, scratch_folder  # noqa: E402

VARIANTS = {  # genvae's run: its defaults (amp and channels_last auto), or a switch set by hand
    "defaults": {},
    "fp32": {"amp": "off", "channels_last": "off"},
    "fp32+channels-last": {"amp": "off", "channels_last": "on"},
    "bf16": {"amp": "bf16", "channels_last": "off"},
    "compile": {"compile": True},
}


def build(args, device):
    from genvae.core.compose import compose_spec
    from genvae.core.data import load_data
    from genvae.core.model import build_model

    torch.manual_seed(0)
    spec = compose_spec(preset="cvae").with_train(
        batch_size=args.batch_size, lr=1e-3, log_every=25, checkpoint_every=10**9, epochs=10**6
    )
    model = build_model(spec).to(device)
    data = load_data("fashion-mnist", image_size=spec.image_size, channels=spec.channels)
    n = args.steps * args.batch_size
    return spec, model, data.images[:n].contiguous()


class GenvaeRun:
    def __init__(self, args, spec, model, images, device, variant: str):
        from genvae.core.data import ImageData

        self.spec = spec.with_train(max_steps=args.steps, **VARIANTS[variant])
        self.model, self.device = model, device
        self.data = ImageData(images=images, source="fashion-mnist")
        self.tmp = scratch_folder(prefix="genvae-peer-")
        self.block = 0

    def run(self) -> None:
        from genvae.core.training import Trainer

        self.block += 1
        trainer = Trainer(self.model, Path(self.tmp) / f"b{self.block}", self.data, self.spec.train, self.device)
        trainer.fit()


class PythaeRun:
    def __init__(self, args, spec, model, images, device):
        from pythae.data.datasets import BaseDataset
        from pythae.models import VAE, VAEConfig
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn import BaseDecoder, BaseEncoder
        from pythae.trainers import BaseTrainer, BaseTrainerConfig

        latent_shape = tuple(model.layout.shape)

        # the wrappers take genvae's modules as arguments (pythae pickles them with their classes: a closure over
        # the whole model would pickle the model's weak reference to its registry, which cannot be)
        class Encoder(BaseEncoder):
            def __init__(self, encoder, transform):
                super().__init__()
                self.encoder, self.transform = encoder, transform

            def forward(self, x):
                post = self.transform.posterior(self.encoder(x))
                return ModelOutput(embedding=post.mean.flatten(1), log_covariance=post.logvar.flatten(1))

        class Decoder(BaseDecoder):
            def __init__(self, decoder, transform):
                super().__init__()
                self.decoder, self.transform = decoder, transform

            def forward(self, z):
                return ModelOutput(
                    reconstruction=torch.tanh(self.decoder(self.transform.generate(z.view(-1, *latent_shape))))
                )

        config = VAEConfig(
            input_dim=tuple(spec.image_shape),
            latent_dim=int(torch.Size(latent_shape).numel()),
            reconstruction_loss="mse",
        )
        self.vae = VAE(
            config, encoder=Encoder(model.encoder, model.transform), decoder=Decoder(model.decoder, model.transform)
        )
        data = images.float() / 127.5 - 1.0  # the model range, as genvae feeds it
        self.dataset = BaseDataset(data, torch.zeros(len(data)))
        self.tmp = scratch_folder(prefix="pythae-peer-")
        self.config = BaseTrainerConfig(
            output_dir=self.tmp,
            num_epochs=1,
            learning_rate=1e-3,
            per_device_train_batch_size=args.batch_size,
            train_dataloader_num_workers=0,
            optimizer_cls="Adam",
            no_cuda=device.type != "cuda",
            steps_saving=None,
            steps_predict=None,
        )
        self.trainer_cls = BaseTrainer

    def run(self) -> None:
        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm progress bar
            trainer = self.trainer_cls(self.vae, self.dataset, training_config=copy.deepcopy(self.config))
            trainer.train()


def make(args, which: str, device):
    spec, model, images = build(args, device)
    if which == "pythae":
        return PythaeRun(args, spec, model, images, device)
    return GenvaeRun(args, spec, model, images, device, which)


def memory_child(args) -> dict:
    """Peak memory of one run in a fresh process, over what the process held before it (the model and the
    uint8 images both trainers start from): on CUDA the most allocated, on the CPU the resident set."""
    device = torch.device(args.device)
    runner = make(args, args.child, device)
    runner.run()  # warm-up: first-run allocations (and compilation) are not the steady state
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        runner.run()
        torch.cuda.synchronize()
        return {"peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20}
    with PeakRSS() as rss:
        runner.run()
    return {"peak_mb": rss.peak - rss.base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50, help="steps per block (one pythae epoch)")
    ap.add_argument("--blocks", type=int, default=5, help="timed blocks per trainer (after one warm-up block)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default="defaults,fp32", help=f"genvae variants: {', '.join(VARIANTS)}")
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # pythae logs each run's setup
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(memory_child(args)))
        return
    try:
        import pythae  # noqa: F401
    except ImportError:
        sys.exit("pythae is not installed in this environment; see this script's docstring for its own venv")
    device = torch.device(args.device)
    names = ["pythae", *[v.strip() for v in args.variants.split(",") if v.strip()]]
    unknown = [v for v in names[1:] if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant {unknown[0]}; known: {', '.join(VARIANTS)}")
    runners = {name: make(args, name, device) for name in names}
    for runner in runners.values():  # warm-up (and torch.compile's compilation)
        runner.run()
    times: dict[str, list[float]] = {name: [] for name in names}
    for block in range(args.blocks):
        for name in names if block % 2 == 0 else names[::-1]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            runners[name].run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - began)
    memory = {}
    for name in names:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            name,
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--device",
            args.device,
            "--threads",
            str(args.threads),
        ]
        memory[name] = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split("\n")[-2]
        )["peak_mb"]
    images = args.steps * args.batch_size
    rate = {name: images / statistics.median(t) for name, t in times.items()}
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s))")
    )
    from importlib.metadata import version

    print(
        f"cvae 3x32x32, latent 2x4x4 | batch {args.batch_size} | {args.steps} steps per run | {where} | "
        f"torch {torch.__version__} | pythae {version('pythae')}"
    )
    peak = "peak +MB" if device.type == "cuda" else "peak +RSS MB"
    print(f"{'trainer':24s}{'samples/s':>12s}{'vs pythae':>11s}{peak:>13s}")
    for name in names:
        label = "pythae BaseTrainer" if name == "pythae" else f"genvae ({name})"
        print(f"{label:24s}{rate[name]:>12,.0f}{rate[name] / rate['pythae']:>10.2f}x{memory[name]:>13.0f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "device": where,
                    "batch_size": args.batch_size,
                    "steps": args.steps,
                    "samples_per_s": rate,
                    "ratio_vs_pythae": {n: rate[n] / rate["pythae"] for n in names},
                    "peak_mb": memory,
                    "block_seconds": times,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
