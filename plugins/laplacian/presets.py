"""The LapCVAE presets: the paper's 64x64 and 128x128 models, its ablations and baseline, and CPU-sized ones."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genvae.api import PresetSpec, RegisterNamed


def _lapcvae(
    size: int,
    channels: int,
    levels: int,
    widths: list[int],
    latent: list[int],
    lambdas: list[float],
    prior: str,
    hidden: list[int],
    lr: float,
    batch: int,
) -> dict[str, Any]:
    prior_spec = {"name": "m-net", "options": {"hidden": hidden}} if prior == "m-net" else {"name": "normal"}
    return {
        "image_size": size,
        "channels": channels,
        "encoder": {"name": "laplacian", "options": {"levels": levels, "widths": widths, "feature_size": 4}},
        "transform": {"name": "laplacian", "options": {"latent_sizes": latent}},
        "decoder": {"name": "laplacian", "options": {"widths": widths}},
        "prior": prior_spec,
        "losses": [{"name": "pyramid-mse"}, {"name": "kl", "options": {"group_weights": lambdas}}],
        "train": {"lr": lr, "batch_size": batch},
    }


def _vae(
    size: int, channels: int, width: int, max_width: int, depth: int, latent: int, lr: float, batch: int
) -> dict[str, Any]:
    return {
        "image_size": size,
        "channels": channels,
        "encoder": {"name": "conv", "options": {"width": width, "depth": depth, "max_width": max_width}},
        "transform": {"name": "fc", "options": {"latent_dim": latent, "output_activation": "lrelu"}},
        "decoder": {"name": "conv", "options": {"width": width, "depth": depth, "max_width": max_width}},
        "prior": {"name": "normal"},
        "losses": [{"name": "mse"}, {"name": "kl"}],
        "train": {"lr": lr, "batch_size": batch},
    }


#: the paper's 64x64 lambdas [10, 0.1, 0.01] weight the three M-network levels (coarse to fine); the
#: coarsest level (standard normal prior) repeats the first value (see docs/lapcvae.md)
PAPER_LAMBDAS = [10.0, 10.0, 0.1, 0.01]
SMALL_LAMBDAS = [1.0, 0.1, 0.01]
#: the paper's 128x128 model: nz = [128, 128, 64, 64, 64] read in the paper's level order k = 0 (128x128,
#: finest) ... K = 4 (8x8), here coarsest first; lambda [100, 100, 0.1, 0.01] read as PAPER_LAMBDAS is
#: (see docs/lapcvae.md, "The 128x128 model")
PAPER_LATENT_128 = [64, 64, 64, 128, 128]
PAPER_LAMBDAS_128 = [100.0, 100.0, 100.0, 0.1, 0.01]


def register_presets(register: RegisterNamed[PresetSpec]) -> None:
    """Register every LapCVAE preset (called by the plugin's genvae_register_presets)."""
    paper: dict[str, Any] = dict(
        size=64, channels=3, levels=4, widths=[64], latent=[64], lambdas=PAPER_LAMBDAS, hidden=[256], lr=3e-4, batch=64
    )
    small: dict[str, Any] = dict(
        size=32, channels=1, levels=3, widths=[16], latent=[16], lambdas=SMALL_LAMBDAS, hidden=[64], lr=1e-3, batch=64
    )
    register(
        "lapcvae",
        _lapcvae(prior="m-net", **paper),
        help="LapCVAE (paper, 64x64 RGB): 4 Laplacian levels of conditional conv VAEs, 64-d latent each, "
        "M-network prior, per-level MSE, lambda [10,10,0.1,0.01]",
    )
    register(
        "lapcvae-128",
        _lapcvae(
            size=128,
            channels=3,
            levels=5,
            widths=[64],
            latent=PAPER_LATENT_128,
            lambdas=PAPER_LAMBDAS_128,
            prior="m-net",
            hidden=[256],
            lr=3e-4,
            batch=64,
        ),
        help="LapCVAE (paper, 128x128 RGB): 5 Laplacian levels, latent [64,64,64,128,128] coarsest first "
        "(448 in all), M-network prior, per-level MSE, lambda [100,100,100,0.1,0.01]",
    )
    register(
        "lapcvae-no-m",
        _lapcvae(prior="normal", **paper),
        help="LapCVAE without M (paper ablation, 64x64 RGB): standard normal prior at every level",
    )
    register(
        "lapcvae-vae",
        _vae(64, 3, 80, 320, 4, 256, 3e-4, 64),
        help="the paper's VAE baseline at 64x64 RGB: conv encoder/decoder (widths for a parameter count like "
        "lapcvae's), 256-d fc latent (= LapCVAE's total)",
    )
    register(
        "lapcvae-small",
        _lapcvae(prior="m-net", **small),
        help="LapCVAE for CPUs (32x32 grey, Fashion-MNIST): 3 levels, 16-d latent each, M-network prior, "
        "lambda [1,0.1,0.01]",
    )
    register(
        "lapcvae-no-m-small",
        _lapcvae(prior="normal", **small),
        help="lapcvae-small without M: standard normal prior at every level",
    )
    register(
        "lapcvae-vae-small",
        _vae(32, 1, 16, 128, 3, 48, 1e-3, 64),
        help="VAE baseline for lapcvae-small (32x32 grey): conv encoder/decoder, 48-d fc latent (= its total)",
    )
