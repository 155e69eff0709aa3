"""Level-wise LapCVAE training (paper 5.1.3): greedy, coarsest level first, and retraining the M networks.

Each stage trains only some module paths of the model (``train.train_only``) through the same core training
API as ``genvae train`` (:func:`genvae.core.train.prepare_training`); its checkpoints, metrics and samples go
to ``FOLDER/stages/<stage>``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from genvae.core.capabilities import pyramid_parts


def level_paths(model, k: int) -> list[str]:
    """Module paths of pyramid level k: its encoder, latent heads, decoder and (m-net) its M network."""
    pyramid_parts(model)
    paths = [f"encoder.levels.{k}", f"transform.levels.{k}", f"decoder.levels.{k}"]
    prior_levels = getattr(model.prior, "levels", None)
    if isinstance(prior_levels, nn.ModuleList) and k < len(prior_levels):
        paths.append(f"prior.levels.{k}")
    return paths


def greedy_stages(model) -> list[tuple[str, list[str]]]:
    """(stage name, train_only paths) per level, coarsest first."""
    levels = model.encoder.num_levels
    return [(f"level-{k}", level_paths(model, k)) for k in range(levels - 1, -1, -1)]


def unfreeze(model) -> None:
    """Undo a previous stage's freezing (requires_grad and train mode)."""
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()



def run_stage(model, folder: Path, name: str, paths: list[str], steps: int, data=None, data_root=None,
              download=False, batch_size=None, lr=None, device="auto", seed=None, echo=None, registry=None) -> dict:
    """Train only ``paths`` of ``model`` for ``steps`` steps; the stage's checkpoints, metrics and samples
    go to ``folder/stages/<name>`` (the model itself is left in memory for the caller to save)."""
    from genvae.core.commands import terms_text
    from genvae.core.folder import ModelFolder, lock_folder
    from genvae.core.train import prepare_training

    spec = model.spec
    overrides = {k: v for k, v in dict(batch_size=batch_size, lr=lr, seed=seed).items() if v is not None}
    stage = ModelFolder(folder).child(f"stages/{name}")  # walked to from the model folder: no link on the way
    stage.check_can_build_into()  # a stage folder holds only what genvae wrote there
    unfreeze(model)
    trainer = prepare_training(model, stage, data=data, data_root=data_root, download=download,
                               overrides={**overrides, "max_steps": steps, "epochs": 10**6, "train_only": list(paths)},
                               device=device, registry=registry)
    model.spec = spec  # the stage's settings stay with the stage; the model keeps its own
    if echo is not None:
        trainer.on_log = lambda r: echo(f"{name} step {r['step']}/{steps}  {terms_text(r)}")
    with lock_folder(stage):
        stage.remove_all()  # the previous run of this stage, genvae's files only
        last = trainer.fit()
    unfreeze(model)
    model.eval()
    return last

