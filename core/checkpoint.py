"""Model folders and training checkpoints: JSON + safetensors, written atomically, never pickled.

A model folder::

    config.json            the resolved spec (every option explicit) and the genvae version
    model.safetensors      the weights (model, priors, loss networks)
    checkpoints/step-N/    model.safetensors, optimizer.safetensors, trainer.json (step, epoch, RNG)
    metrics.jsonl          one JSON line per logged step
    samples/epoch-N.png    a sample grid per epoch

Each file is written to a temporary name in its folder and renamed into place; a checkpoint folder
is filled under a temporary name and renamed when complete, so a crash never leaves a half-written
checkpoint that ``--resume`` would pick up.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from genvae.core.errors import CheckpointError, GenvaeError
from genvae.core.spec import ModelSpec

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
TRAINER = "trainer.json"
CHECKPOINTS = "checkpoints"


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the result onto ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=metadata))


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc.__class__.__name__}: {exc})") from None


def read_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0]})") from None


# -- model folders ---------------------------------------------------------------------------------


def save_model(model, folder: str | Path) -> None:
    """Write ``config.json`` (resolved spec) and ``model.safetensors`` into ``folder``."""
    from genvae.core import __version__

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"genvae_version": __version__, **model.resolved_spec().to_dict()}
    write_json(folder / CONFIG, config)
    write_tensors(folder / WEIGHTS, model.state_dict(), {"format": "pt"})


def load_spec(folder: str | Path) -> ModelSpec:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"model folder {folder} does not exist; create one with genvae build -o {folder}")
    data = read_json(folder / CONFIG)
    if not isinstance(data, dict):
        raise CheckpointError(f"{folder / CONFIG} does not hold a model spec")
    data.pop("genvae_version", None)
    return ModelSpec.from_dict(data, where=str(folder / CONFIG))


def load_weights(model, path: Path, device="cpu", state: dict | None = None) -> None:
    """Load weights strictly; ``state`` skips reading ``path`` again when it was already read."""
    state = read_tensors(path, device) if state is None else state
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match the model in config.json ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) < 240 else text[:237] + "..."


def load_model(folder: str | Path, device: str | torch.device = "cpu", registry=None):
    """Build the model from ``config.json`` and load ``model.safetensors`` into it."""
    from genvae.core.model import build_model

    folder = Path(folder)
    spec = load_spec(folder)
    model = build_model(spec, registry)
    load_weights(model, folder / WEIGHTS)
    return model.to(device)


# -- training checkpoints ----------------------------------------------------------------------------


def optimizer_to_tensors(name: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state into tensors (for safetensors) and JSON (hyper-parameters, counters)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for idx, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{name}/{idx}/{key}"] = value
            else:
                plain.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def optimizer_from_tensors(name: str, tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            _, idx, field = key.split("/", 2)
            state.setdefault(int(idx), {})[field] = value
    for idx, values in meta.get("plain", {}).items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def checkpoint_dirs(folder: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(folder) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / TRAINER).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def latest_checkpoint(folder: str | Path) -> Path | None:
    dirs = checkpoint_dirs(folder)
    return dirs[-1] if dirs else None


def write_checkpoint(folder: Path, step: int, model_state: dict, optim_tensors: dict, trainer: dict, keep: int) -> Path:
    """Write ``checkpoints/step-N`` completely under a temporary name, then rename it into place."""
    root = Path(folder) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:08d}.", dir=root))
    try:
        write_tensors(tmp / WEIGHTS, model_state, {"format": "pt"})
        write_tensors(tmp / OPTIMIZER, optim_tensors)
        write_json(tmp / TRAINER, trainer)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoint_dirs(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path, device="cpu") -> tuple[dict, dict, dict]:
    trainer = read_json(path / TRAINER)
    if not isinstance(trainer, dict) or "step" not in trainer:
        raise GenvaeError(f"{path / TRAINER} is not a genvae trainer state")
    return read_tensors(path / WEIGHTS, device), read_tensors(path / OPTIMIZER, device), trainer
