"""Level-wise LapCVAE training (paper 5.1.3): greedy, coarsest level first, and retraining the M networks.

Each stage trains only some module paths of the model (``train.train_only``) through the same core training
API as ``genvae train`` (:func:`genvae.api.train_run`); its checkpoints, metrics and samples go
to ``FOLDER/stages/<stage>``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from genvae.api import GenerativeModel, pyramid_parts


def level_paths(model: GenerativeModel, k: int) -> list[str]:
    """Module paths of pyramid level k: its encoder, latent heads, decoder and (m-net) its M network."""
    pyramid_parts(model)
    paths = [f"encoder.levels.{k}", f"transform.levels.{k}", f"decoder.levels.{k}"]
    prior_levels = getattr(model.prior, "levels", None)
    if isinstance(prior_levels, nn.ModuleList) and k < len(prior_levels):
        paths.append(f"prior.levels.{k}")
    return paths


def greedy_stages(model: GenerativeModel) -> list[tuple[str, list[str]]]:
    """(stage name, train_only paths) per level, coarsest first."""
    levels = model.encoder.num_levels
    return [(f"level-{k}", level_paths(model, k)) for k in range(levels - 1, -1, -1)]


def unfreeze(model: GenerativeModel) -> None:
    """Undo a previous stage's freezing (requires_grad and train mode)."""
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()


def run_stage(
    model: GenerativeModel,
    folder: Path,
    name: str,
    paths: list[str],
    steps: int,
    data: str | None = None,
    data_root: str | None = None,
    download: bool = False,
    batch_size: int | None = None,
    lr: float | None = None,
    device: str = "auto",
    seed: int | None = None,
    echo: Callable[[str], None] | None = None,
    registry: Any = None,  # a registry as genvae.api.get_registry() returns it; None: the installed one
) -> dict:
    """Train only ``paths`` of ``model`` for ``steps`` steps, as one run of the core training service into the
    stage folder ``folder/stages/<name>`` (emptied of genvae's files of an earlier run first): the stage's
    settings, checkpoints, metrics and samples go there; the model itself is left in memory for the caller to
    save."""
    from genvae.api import ModelFolder, terms_text, train_run

    overrides = dict(batch_size=batch_size, lr=lr, seed=seed)  # None: the model's setting stays
    stage = ModelFolder(folder).child(f"stages/{name}")  # walked to from the model folder: no link on the way
    unfreeze(model)
    on_log = None if echo is None else (lambda r: echo(f"{name} step {r['step']}/{steps}  {terms_text(r)}"))
    result = train_run(
        stage,
        model=model,
        data=data,
        data_root=data_root,
        download=download,
        overrides={**overrides, "max_steps": steps, "epochs": 10**6, "train_only": list(paths)},
        device=device,
        fresh=True,
        registry=registry,
        on_log=on_log,
    )
    unfreeze(model)
    model.eval()
    return result.metrics
