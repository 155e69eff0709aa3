"""Engine overhead: genvae's Trainer step vs a hand-written PyTorch loop over the same networks.

Both loops train identical copies of the same encoder / latent / decoder with the same Adam, the
same reparameterisation, MSE (sum per image) + KL; they run in alternating blocks in one process so
machine noise hits both alike. Prints ms per step for each, and the ratio (target: <= 1.03).

    python benchmarks/engine_overhead.py                     # cvae preset, 32 px, batch 64, CPU
    python benchmarks/engine_overhead.py --device cuda --preset cvae --batch-size 256
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from genvae.core.compose import compose_spec
from genvae.core.data import ImageData
from genvae.core.model import build_model
from genvae.core.train import Trainer, seed_everything


def hand_written(model, lr):
    """The loop a researcher would write by hand for the same modules and loss."""
    enc, tr, dec = model.encoder, model.transform, model.decoder
    params = [p for m in (enc, tr, dec) for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=lr, fused=params[0].is_cuda or None)

    def step(x):
        feats = enc(x)
        post = tr.posterior(feats)
        z = post.mean + torch.exp(0.5 * post.logvar) * torch.randn_like(post.mean)
        x_hat = torch.tanh(dec(tr.generate(z)))
        mse = (x_hat - x).pow(2).flatten(1).sum(1).mean()
        kl = (0.5 * (torch.exp(post.logvar) + post.mean.pow(2) - 1.0 - post.logvar)).flatten(1).sum(1).mean()
        loss = mse + kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cvae")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps CPU timings repeatable)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    seed_everything(0)
    spec = compose_spec(preset=args.preset, sets=args.sets)
    spec = spec.with_train(batch_size=args.batch_size, log_every=10**9, checkpoint_every=10**9)
    engine_model = build_model(spec).to(device)
    plain_model = copy.deepcopy(engine_model)
    data = ImageData(images=torch.randint(0, 256, (args.batch_size * 4, *spec.image_shape), dtype=torch.uint8),
                     source="random")
    trainer = Trainer(engine_model, "/tmp/genvae-bench", data, spec.train, device)
    plain_step = hand_written(plain_model, spec.train.lr)
    x = trainer._batch(trainer._permutation(0), 0)

    def engine_step(x):
        trainer._accumulate(trainer.train_step(x))

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps * 1e3

    for fn in (engine_step, plain_step):  # warm-up
        timed(fn)
    eng, plain = [], []
    for i in range(args.blocks):
        order = (engine_step, plain_step) if i % 2 == 0 else (plain_step, engine_step)
        for fn in order:
            (eng if fn is engine_step else plain).append(timed(fn))
    # the fastest block of each is the one least disturbed by the rest of the machine
    e, p = min(eng), min(plain)
    em, pm = statistics.median(eng), statistics.median(plain)
    params = sum(q.numel() for q in engine_model.parameters())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"preset {args.preset} | {spec.channels}x{spec.image_size}x{spec.image_size} | batch {args.batch_size} | "
          f"{params:,} parameters | {device} ({where})")
    print(f"hand-written loop: {p:.3f} ms/step (best of {args.blocks} alternating blocks of {args.steps}; "
          f"median {pm:.3f})")
    print(f"genvae Trainer:    {e:.3f} ms/step (median {em:.3f})")
    print(f"engine overhead: {e - p:+.3f} ms/step; ratio engine/hand-written: {e / p:.3f} (median ratio {em / pm:.3f})")


if __name__ == "__main__":
    main()
