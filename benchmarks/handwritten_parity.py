"""Parity of the hand-written steps (benchmarks/handwritten.py) with genvae's ``Trainer.train_step``.

For each preset: build the model, deep-copy it, train one copy with genvae's Trainer and the other with the
hand-written step for a few steps on the same batches, seeding torch identically before each step, then
check that every logged loss value and every parameter and buffer (batch-norm statistics) of the two copies
agree. The engine-overhead benchmark is only meaningful if both loops do the same work.

    python benchmarks/handwritten_parity.py                       # the three presets, batch 16, 3 steps, CPU
    python benchmarks/handwritten_parity.py --preset crvae-gan-small --set loss.adv.skip_below=1  # skipped D
    python benchmarks/handwritten_parity.py --preset crvae-gan-small --set transform.grad_clamp=1e-4  # clamp active

(The preset's recurrent gradient clamp of 5 never bites in a few steps from initialisation: the largest
recurrent gradient is about 0.16; the last command makes it clamp.)

Where the hand-written steps' hyper-parameters come from (``crvae_hyper`` / ``lapcvae_hyper``):

* optimisers: ``spec.train`` (``lr``, ``betas``, ``weight_decay``; ``phase_lr`` for the discriminator and
  MI phases, defaulting to ``lr``), the latent transform's ``lr_multipliers()`` / ``grad_clamps()`` for its
  recurrent paths and adv's ``lr_multipliers()`` for the trunk (what ``build_phases`` applies);
* loss weights: each loss module's ``weight`` (the spec's ``LossSpec.weight``) and its ``options``: kl's
  ``weights`` (group_weights or 1 - alphas), adv's ``beta``, ``mix`` and ``skip_below``, mi's ``kappa``,
  ``group_weights`` (empty: mi's default rule) and ``weighted_branches``, pyramid-mse's resolved ``weights``
  (by level);
* shapes: the latent transform's ``layout.shape`` (crVAE) or ``sizes``, the decoder's ``u_shapes`` and the
  encoder's pyramid ``kernel`` (LapCVAE).

Options the hand-written steps do not implement (a warm-up, other reductions, gan_to_encoder off, ...) are
asserted to have the presets' values, so a changed preset fails loudly instead of comparing different maths.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

from genvae.core.compose import compose_spec
from genvae.core.data import ImageData
from genvae.core.decode import to_model_range
from genvae.core.model import build_model
from genvae.core.training import Trainer
from genvae.plugins.mi import PAPER_WEIGHTS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from handwritten import crvae_gan_step_factory, lapcvae_step_factory, vae_step_factory  # noqa: E402


def _common(spec) -> dict:
    t = spec.train
    assert t.grad_clip_norm is None and not (t.freeze or t.train_only or t.lr_multipliers or t.grad_clamp)
    assert not t.compile  # the precision and layout are the caller's: the hand loop follows them
    return {"lr": t.lr, "betas": t.betas, "weight_decay": t.weight_decay}


def crvae_hyper(model) -> dict:
    """crvae-gan-small's numbers, from its spec and loss modules."""
    spec, losses, tr = model.spec, model.losses, model.transform
    mse, kl, adv, mi = losses["mse"], losses["kl"], losses["adv"], losses["mi"]
    assert [s.name for s in spec.losses] == ["mse", "kl", "adv", "mi"]
    assert [(u["phase"], u["branch"], u["fresh"]) for u in spec.train.schedule] == [
        ("mi", "posterior", False),
        ("model", "posterior", False),
        ("mi", "prior", True),
        ("model", "prior", False),
        ("discriminator", "all", False),
    ]
    assert mse.options.reduction == "mean" and kl.options.warmup == "none" and kl.options.beta == 1.0
    a, m = adv.options, mi.options
    assert a.gan_to_encoder and a.on_recon and a.on_prior and not a.similarity_layer
    assert m.train_trunk and m.on_recon and m.on_prior and m.target in ("auto", "u")
    steps = tr.layout.num_groups
    mult, clamps = tr.lr_multipliers(), tr.grad_clamps()
    assert set(mult) == {"var", "gen.lstm", "gen.linear"} and len(set(mult.values())) == 1
    return {
        **_common(spec),
        "discriminator_lr": spec.train.phase_lr.get("discriminator", spec.train.lr),
        "mi_lr": spec.train.phase_lr.get("mi", spec.train.lr),
        "recurrent_lr_mult": mult["var"],
        "recurrent_grad_clamp": clamps.get("var", 0.0),
        "trunk_lr_mult": adv.lr_multipliers().get("trunk", 1.0),
        "latent_shape": tuple(tr.layout.shape),
        "mse_weight": mse.weight,
        "kl_weight": kl.weight,
        "kl_group_weights": kl.options.weights or (1.0,) * steps,
        "adv_weight": adv.weight,
        "beta": a.beta,
        "mix": a.mix,
        "skip_below": a.skip_below,
        "mi_weight": mi.weight,
        "kappa": m.kappa,
        # mi's rule for empty group_weights: the paper's 8 weights for an 8-step target, else 1 per step
        "mi_group_weights": m.group_weights or (PAPER_WEIGHTS if steps == len(PAPER_WEIGHTS) else (1.0,) * steps),
        "mi_weight_prior": m.weighted_branches == "both",
    }


def lapcvae_hyper(model) -> dict:
    """lapcvae-small's numbers, from its spec, loss modules and pyramid components."""
    spec, losses = model.spec, model.losses
    recon, kl = losses["pyramid-mse"], losses["kl"]
    assert [s.name for s in spec.losses] == ["pyramid-mse", "kl"] and not spec.train.schedule
    assert recon.options.reduction == "sum" and recon.options.level_scale == "image"
    assert kl.options.warmup == "none" and kl.options.beta == 1.0
    assert model.encoder.options.condition == "real" and model.prior.name == "m-net" and model.prior.options.detach
    levels = model.transform.num_levels
    return {
        **_common(spec),
        "kernel": model.encoder.kernel,
        "latent_sizes": list(model.transform.sizes),
        "u_shapes": [tuple(s) for s in model.decoder.u_shapes],
        "recon_weight": recon.weight,
        "level_weights": list(recon.weights),  # by level k, finest first, as pyramid-mse holds them
        "kl_weight": kl.weight,
        "kl_level_weights": list(kl.options.weights or (1.0,) * levels)[::-1],  # options: coarsest first
    }


def hand_step(preset: str, model):
    """The hand-written step of ``preset`` over ``model``'s networks."""
    names = [(loss.name, loss.weight) for loss in model.losses.values()]
    if names == [("mse", 1.0), ("kl", 1.0)]:  # a plain VAE (vae, cvae): MSE summed per image + KL, tanh output
        mse, kl = model.losses.values()
        assert mse.options.reduction == "sum" and model.decoder.output == "tanh", preset
        assert not (kl.options.group_weights or kl.options.warmup != "none" or kl.options.beta != 1.0), preset
        assert model.prior.name == "normal" and model.spec.train.betas == (0.9, 0.999), preset
        return vae_step_factory(model.encoder, model.transform, model.decoder, model.spec.train.lr)
    if preset.startswith("crvae-gan"):
        adv, mi = model.losses["adv"], model.losses["mi"]
        return crvae_gan_step_factory(
            model.encoder, model.transform, model.decoder, adv.trunk, adv.head, mi.head, crvae_hyper(model)
        )
    return lapcvae_step_factory(model.encoder, model.transform, model.decoder, model.prior, lapcvae_hyper(model))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].detach().float() - b[k].detach().float()).abs().max().item() for k in a)


def check(preset: str, batch_size: int, steps: int, seed: int, sets: list[str]) -> None:
    spec = compose_spec(preset=preset, sets=sets).with_train(batch_size=batch_size, amp="off", channels_last="off")
    torch.manual_seed(seed)
    engine_model = build_model(spec).train()
    plain_model = copy.deepcopy(engine_model)
    initial = {k: v.detach().clone() for k, v in engine_model.named_parameters()}
    images = torch.randint(0, 256, (batch_size * steps, *spec.image_shape), dtype=torch.uint8)
    batches = [to_model_range(b) for b in images.split(batch_size)]
    step = hand_step(preset, plain_model)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(
            engine_model, folder, ImageData(images=images, source="random"), spec.train, torch.device("cpu")
        )
        print(
            f"{preset}: batch {batch_size}, {spec.channels}x{spec.image_size}x{spec.image_size}, "
            f"updates {[f'{u.phase.name}@{u.branch}' for u in trainer.updates]}"
        )
        for i, x in enumerate(batches):
            torch.manual_seed(seed + 1 + i)
            engine = {k: v.detach() for k, v in trainer.train_step(x).items()}
            torch.manual_seed(seed + 1 + i)
            plain = step(x)
            # the training-health diagnostics (logged, never in a loss) are the engine's own: not compared
            health = {k for k in engine if k.startswith("adv.acc_") or k.endswith("/grad_norm")}
            engine = {k: v for k, v in engine.items() if k not in health}
            assert engine.keys() == plain.keys(), f"logged names differ: {sorted(engine.keys() ^ plain.keys())}"
            shown = ", ".join(f"{k} {v.item():.6g}" for k, v in plain.items())
            print(f"  step {i + 1}: max |loss diff| {max_diff(engine, plain):.3g}  ({shown})")
            for k in engine:
                torch.testing.assert_close(plain[k], engine[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    params = dict(engine_model.named_parameters())
    plain_params = dict(plain_model.named_parameters())
    buffers = {k: v for k, v in engine_model.named_buffers() if v.is_floating_point()}
    plain_buffers = {k: v for k, v in plain_model.named_buffers() if v.is_floating_point()}
    assert params.keys() == plain_params.keys() and buffers.keys() == plain_buffers.keys()
    for name in params:
        torch.testing.assert_close(
            plain_params[name], params[name], rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"parameter {name}: {m}"
        )
    for name in buffers:
        torch.testing.assert_close(
            plain_buffers[name], buffers[name], rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"buffer {name}: {m}"
        )
    moved = max_diff(params, initial)
    assert moved > 0, "training changed no parameter"
    print(
        f"  after {steps} steps: max |parameter diff| {max_diff(params, plain_params):.3g} over {len(params)} "
        f"tensors (largest change by training {moved:.3g}), max |buffer diff| "
        f"{max_diff(buffers, plain_buffers):.3g} over {len(buffers)} tensors"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--preset", action="append", dest="presets", help="default: cvae, crvae-gan-small and lapcvae-small"
    )
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        help="spec edit as genvae build takes it, e.g. loss.adv.skip_below=1 (the skip path)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    for preset in args.presets or ["cvae", "crvae-gan-small", "lapcvae-small"]:
        check(preset, args.batch_size, args.steps, args.seed, args.sets)
    print("parity: OK")


if __name__ == "__main__":
    main()
