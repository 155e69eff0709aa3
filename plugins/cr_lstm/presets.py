"""The crVAE-GAN paper's presets and their CPU-sized ``-small`` variants, as data (model specs)."""

from __future__ import annotations

from typing import Any

PAPER_KL = [3e-4] * 3 + [2e-4] * 5  # per time step, authors' code (alpha1, alpha2)
# the MI weights per time step (the authors' code; the mi loss takes the same eight when given none)
PAPER_MI = [0.1, 1.5, 1.5, 1.25, 0.1, 0.1, 1.0, 1.0]
# The authors' run commands (README: -eps 1e-6 -mom 0.9) for every BatchNorm of the conv stacks and the MI head;
# Torch7's momentum weights the new batch, as PyTorch's does. The variance path's BatchNorm1d keeps the defaults
# (1e-5, 0.1), as in their code.
PAPER_BN = {"bn_eps": 1e-6, "bn_momentum": 0.9}
# The authors' update order per iteration (train_test_lstm.lua): the posterior branch (MI head and trunk, then encoder,
# LSTMs and decoder), then new prior samples through the just-updated generator (MI head and trunk, then decoder and
# generation LSTM), the discriminator last. Without MI the same order without the mi updates.
# Updates of phases a model lacks are left out, so the one list serves crvae (model@posterior alone), crvae-gan-no-mi
# and crvae-gan (and --encoder cr-lstm --loss adv,mi, which starts from crvae).
AUTHORS_SCHEDULE = ["mi@posterior", "model@posterior", "mi@prior:fresh", "model@prior", "discriminator"]
# train_test_baseline.lua: encoder and decoder from one forward pass (the decoder on reconstructions and prior
# samples), the discriminator last.
BASELINE_SCHEDULE = ["model", "discriminator"]
PAPER_TRAIN: dict[str, Any] = {
    "lr": 3e-4,
    "batch_size": 128,
    "epochs": 150,
    "lr_schedule": "step",
    "lr_step_epochs": 60,
    "lr_gamma": 0.5,
    "flip": True,
    "phase_lr": {"discriminator": 3e-4, "mi": 3e-4},
    "schedule": AUTHORS_SCHEDULE,
}
# The VAE-GAN baseline (train_test_baseline.lua) runs the whole discriminator, head and trunk, at lr/2.
PAPER_BASELINE_TRAIN = {
    **PAPER_TRAIN,
    "phase_lr": {"discriminator": PAPER_TRAIN["lr"] / 2},
    "schedule": BASELINE_SCHEDULE,
}
_MSE = {"name": "mse", "options": {"reduction": "mean"}}


def _paper(
    transform: dict, losses: list[dict], image_size: int = 64, channels: int = 3, train: dict[str, Any] | None = None
) -> dict:
    return {
        "image_size": image_size,
        "channels": channels,
        "encoder": {"name": "cr-lstm", "options": {"width": 32, "max_width": 256, **PAPER_BN}},
        "transform": transform,
        "decoder": {"name": "cr-lstm", "options": {"width": 32, "max_width": 256, **PAPER_BN}},
        "prior": {"name": "normal"},
        "losses": losses,
        "train": dict(train or PAPER_TRAIN),
    }


_CR = {"name": "cr-lstm", "options": {"latent_channels": 64, "steps": 8, "hidden": 512, "layers": 2}}
_FC = {"name": "fc", "options": {"latent_dim": 1024, "output_activation": "none"}}
_KL_STEPS = {"name": "kl", "options": {"group_weights": PAPER_KL}}
_ADV = {"name": "adv", "options": {"beta": 0.0125}}
_MI = {"name": "mi", "options": {"kappa": 0.02, "group_weights": PAPER_MI, "weighted_branches": "both", **PAPER_BN}}
# VAE-GAN baseline: KL 2e-4, beta 0.05, half-width discriminator at lr/2 (trunk not halved again), no GAN gradient to
# the encoder (f_vae_encoder: reconstruction + KL only), adam_gan.lua's warm-up on the whole discriminator (crVAE-GAN:
# on the GAN head, adv's default)
_BASELINE_ADV = {"beta": 0.05, "gan_to_encoder": False, "trunk_lr": 1.0, "d_warmup": "all"}

# Fashion-MNIST on a CPU: 32x32x1, a quarter of the widths, T = 4, LSTMs of 128, latent 16x4x4 = 256 values for
# both models.
# Mean pixel MSE over 1024 instead of 12288 pixels: the KL weights are 12x the paper's, keeping its balance.
SMALL_KL = [3.6e-3, 3.6e-3, 2.4e-3, 2.4e-3]
SMALL_MI = [0.8, 1.375, 0.1, 1.0]  # the paper's 8 weights averaged in pairs
# Short CPU runs: lr 1e-3 (the paper's 3e-4 learns visibly slower in a few hundred steps), batch 64.
SMALL_TRAIN: dict[str, Any] = {
    "lr": 1e-3,
    "batch_size": 64,
    "epochs": 20,
    "lr_schedule": "step",
    "lr_step_epochs": 8,
    "lr_gamma": 0.5,
    "flip": False,
    "phase_lr": {"discriminator": 1e-3, "mi": 1e-3},
    "log_every": 25,
    "checkpoint_every": 500,
    "schedule": AUTHORS_SCHEDULE,
}
SMALL_BASELINE_TRAIN = {
    **SMALL_TRAIN,
    "phase_lr": {"discriminator": SMALL_TRAIN["lr"] / 2},
    "schedule": BASELINE_SCHEDULE,
}
_SMALL_STACK = {"width": 8, "max_width": 64}
_SMALL_ADV = {"widths": [16, 32, 32], "head_hidden": 256}
# the small crVAE-GANs' GAN weight: the VAE-GAN baseline's 0.05, not the paper's 0.0125. At 32 px and a few hundred
# steps the prior branch's gradient is a seventh of the posterior branch's and the samples lose contrast; with 0.05
# their spectrum stayed within 3x of the real images' in 5 runs of 5 (0.0125: 5.2-9.0x); FID moves as much between
# nearby steps as between the two settings (docs/crvae-gan.md, "Quality gate"). They also run the authors' batch
# norms (PAPER_BN, as the 64 px presets): with momentum 0.9 the running statistics are the last batch's, the prior
# branch's, so samples keep their contrast (reconstructions lose some: the docs give the RMSE)
SMALL_CR_BETA = 0.05


def _small(
    transform: dict, losses: list[dict], train: dict[str, Any] | None = None, bn: dict[str, float] | None = None
) -> dict:
    spec = _paper(transform, losses, image_size=32, channels=1, train=train or SMALL_TRAIN)
    spec["encoder"] = {"name": "cr-lstm", "options": {**_SMALL_STACK, **(bn or {})}}
    spec["decoder"] = {"name": "cr-lstm", "options": {**_SMALL_STACK, **(bn or {})}}
    return spec


PRESETS = {
    "crvae": (
        _paper(_CR, [_MSE, _KL_STEPS]),
        "crVAE (64x64): CReLU conv stack, channel-recurrent latent 64x4x4 in T=8 steps, pixel MSE + KL weighted "
        "per step; add --loss adv,mi for crVAE-GAN",
    ),
    "crvae-gan": (
        _paper(_CR, [_MSE, _KL_STEPS, _ADV, _MI]),
        "crVAE-GAN (64x64) as in the authors' code: crvae + adversarial loss (beta 0.0125) + MI on u (kappa 0.02), "
        "the authors' update schedule",
    ),
    "crvae-gan-no-mi": (
        _paper(_CR, [_MSE, _KL_STEPS, _ADV]),
        "crVAE-GAN (64x64) without the MI regulariser (paper Table 1, middle row)",
    ),
    "vae-gan": (
        _paper(
            _FC,
            [
                _MSE,
                {"name": "kl", "weight": 2e-4},
                {"name": "adv", "options": {**_BASELINE_ADV, "widths": [32, 64, 128, 256]}},
            ],
            train=PAPER_BASELINE_TRAIN,
        ),
        "VAE-GAN baseline of the crVAE paper (64x64): same conv stack, FC latent of 1024, KL 2e-4, beta 0.05, "
        "half-width discriminator at lr/2, no GAN gradient to the encoder, no MI",
    ),
    "fig3-vae": (
        _paper(_FC, [_MSE, {"name": "kl", "weight": 3e-4}]),
        "crVAE paper Figure 3 (a): the conv stack with an FC latent of 1024 (VAE), MSE + KL",
    ),
    "fig3-cvae": (
        _paper(
            {"name": "conv", "options": {"latent_channels": 64, "output_activation": "none"}},
            [_MSE, {"name": "kl", "weight": 3e-4}],
        ),
        "crVAE paper Figure 3 (b): the conv stack with a spatial conv latent 64x4x4 (cVAE), MSE + KL",
    ),
    "fig3-crvae": (
        _paper(_CR, [_MSE, {"name": "kl", "weight": 3e-4}]),
        "crVAE paper Figure 3 (c): the conv stack with the channel-recurrent latent 64x4x4 (crVAE), MSE + KL",
    ),
    "crvae-gan-small": (
        _small(
            {"name": "cr-lstm", "options": {"latent_channels": 16, "steps": 4, "hidden": 128, "layers": 2}},
            [
                _MSE,
                {"name": "kl", "options": {"group_weights": SMALL_KL}},
                {"name": "adv", "options": {"beta": SMALL_CR_BETA, **_SMALL_ADV}},
                {"name": "mi", "options": {"kappa": 0.02, "group_weights": SMALL_MI, "hidden": 16, **PAPER_BN}},
            ],
            bn=PAPER_BN,
        ),
        "crVAE-GAN for 32x32 grey images on a CPU (Fashion-MNIST): quarter widths, latent 16x4x4 in T=4 steps",
    ),
    "crvae-gan-no-mi-small": (
        _small(
            {"name": "cr-lstm", "options": {"latent_channels": 16, "steps": 4, "hidden": 128, "layers": 2}},
            [
                _MSE,
                {"name": "kl", "options": {"group_weights": SMALL_KL}},
                {"name": "adv", "options": {"beta": SMALL_CR_BETA, **_SMALL_ADV}},
            ],
            bn=PAPER_BN,
        ),
        "crvae-gan-small without the MI regulariser (Table 1's middle row at CPU size)",
    ),
    "vae-gan-small": (
        _small(
            {"name": "fc", "options": {"latent_dim": 256, "output_activation": "none"}},
            [_MSE, {"name": "kl", "weight": 2.4e-3}, {"name": "adv", "options": {**_BASELINE_ADV, **_SMALL_ADV}}],
            train=SMALL_BASELINE_TRAIN,
        ),
        "VAE-GAN baseline for 32x32 grey images on a CPU (Fashion-MNIST): as crvae-gan-small with an FC latent of 256",
    ),
}
