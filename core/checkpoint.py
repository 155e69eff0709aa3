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
import stat
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save

from genvae.core import files as fs
from genvae.core.errors import CheckpointError, GenvaeError, name_list
from genvae.core.files import atomic_write, atomic_write_text
from genvae.core.folder import ModelFolder, as_model_folder
from genvae.core.spec import ModelSpec, TrainConfig

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
TRAINER = "trainer.json"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
CLASSES = "classes.jsonl"  # with train.classifier: the class histogram of a fixed batch of samples per epoch
SAMPLES = "samples"
HISTORY = "commands.jsonl"  # one JSON line per command that wrote the folder (the report's "commands")
MAX_JSON_BYTES = 4 << 20  # config.json and trainer.json are a few KB; refuse anything absurd before parsing


class DivergedError(GenvaeError):
    """Weights or losses are not finite: nothing is written, the last finite checkpoint stays."""


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or +-inf (one reduction per tensor, one host read)."""
    names = [k for k, v in tensors.items() if torch.is_tensor(v) and v.is_floating_point() and v.numel()]
    if not names:
        return []
    flags = torch.stack([torch.isfinite(tensors[k]).all().to("cpu") for k in names])
    return [k for k, ok in zip(names, flags.tolist(), strict=True) if not ok]


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


def write_json(path: Path, data: Any) -> None:
    """A JSON file at a path the user named (inside a model folder: ``ModelFolder.write_text``)."""
    atomic_write_text(path, json_text(data))


def tensors_writer(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    """A function writing ``tensors`` as safetensors to an open binary file (see ``genvae.core.files``)."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}

    def write(f) -> None:  # serialised in memory and written to the file genvae holds open (no path to redirect)
        f.write(save(plain, metadata=metadata))

    return write


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file at a path the user named (inside a model folder: ``ModelFolder.write``)."""
    atomic_write(path, tensors_writer(tensors, metadata))


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON file genvae wrote; refuses a missing, non-regular, oversized or malformed one in one line."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path} is not a regular file")
    if st.st_size > max_bytes:
        raise CheckpointError(f"{path} is {st.st_size:,} bytes; genvae's JSON files are at most {max_bytes:,} bytes")
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not valid JSON ({exc.__class__.__name__}: {reason})") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a special file"


def _open_tensor_file(path: Path) -> int:
    """A descriptor of ``path`` opened for reading: never through a symlink, never blocking (a FIFO), and only if it
    is a regular file (checked on the descriptor, so nothing can be swapped in after the check)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except OSError as exc:
        if os.path.islink(path):
            raise CheckpointError(
                f"{path} is a symlink; genvae reads weights only from regular files, never through links"
            ) from None
        raise CheckpointError(f"{path} cannot be read ({exc.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise CheckpointError(
            f"{path} is not a regular file ({_kind(mode)}); genvae reads weights only from regular files"
        )
    return fd


def read_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file genvae wrote; refuses a missing, linked, non-regular or corrupt one in one line.

    The file is opened here and safetensors reads it through the descriptor (``/proc/self/fd/N`` on Linux, else
    its bytes), so a path that is not UTF-8 (a folder named with bytes b'm\\xff') reads like any other."""
    path = Path(path)
    fd = _open_tensor_file(path)
    try:
        proc = f"/proc/self/fd/{fd}"
        if os.path.exists(proc):
            return load_file(proc, device=str(device))
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read()
        return {k: v.to(device) for k, v in load(data).items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0]})") from None
    finally:
        os.close(fd)


# -- model folders ---------------------------------------------------------------------------------


def save_model(model, folder: str | Path | ModelFolder, train: TrainConfig | None = None) -> None:
    """Write ``config.json`` (resolved spec; ``train``: a run's training settings) and ``model.safetensors``
    into ``folder``."""
    from genvae import __version__

    mf = as_model_folder(folder)
    state = model.state_dict()
    bad = nonfinite_tensors(state)
    if bad:
        raise DivergedError(
            f"not saving {mf.path / WEIGHTS}: {len(bad)} weight tensor(s) hold NaN or inf "
            f"(first: {bad[0]}); the file on disk is left as it was"
        )
    mf.check_outputs([CONFIG, WEIGHTS])
    config = {"genvae_version": __version__, **model.resolved_spec(train).to_dict()}
    mf.write_text(CONFIG, json_text(config))
    mf.write(WEIGHTS, tensors_writer(state, {"format": "pt"}))


def create_model_folder(
    model,
    folder: str | Path,
    *,
    force: bool = False,
    command: dict | None = None,
    hint: str = "choose another -o folder or pass --force",
) -> None:
    """Write a freshly built ``model`` into ``folder`` (created if needed), as ``genvae build -o`` does, under the
    folder's lock: a folder that already holds a model is refused unless ``force`` (then only the files genvae
    wrote there are removed, and config.json and model.safetensors replaced atomically); a file of the user's at
    one of genvae's paths is refused with nothing changed. ``command`` (``{"command": ..., "time": ...}``) is
    appended to ``commands.jsonl``; ``hint`` ends the refusal (how to choose another folder or pass ``force``)."""
    from genvae.core.folder import lock_folder

    out = Path(folder)
    refusal = f"{out} already holds a model; {hint}"
    ModelFolder(out).check_can_build_into()
    if (out / CONFIG).exists() and not force:
        raise GenvaeError(refusal)
    out.mkdir(parents=True, exist_ok=True)
    with lock_folder(out):
        mf = ModelFolder(out)
        mf.check_can_build_into()  # again, now that no other genvae process can change it
        if (out / CONFIG).exists() and not force:
            raise GenvaeError(refusal)
        mf.check_outputs([CONFIG, WEIGHTS, HISTORY])  # a file of the user's at one of them: refused, nothing changed
        mf.remove_orphans()
        if force:
            mf.remove_all(keep=(CONFIG, WEIGHTS))  # replaced atomically below
        save_model(model, mf)
        if command is not None:
            from genvae.core.training.metrics import append_json_line

            append_json_line(mf, HISTORY, command)


def load_spec(folder: str | Path) -> ModelSpec:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"model folder {folder} does not exist; create one with genvae build -o {folder}")
    data = read_json(folder / CONFIG, max_bytes=1 << 20)
    if not isinstance(data, dict):
        raise CheckpointError(f"{folder / CONFIG} does not hold a model spec")
    data.pop("genvae_version", None)
    return ModelSpec.from_dict(data, where=str(folder / CONFIG))


def check_weights(model, state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights that do not fit ``model`` exactly: names, shapes and dtypes (a float64 or uint8 tensor is not
    silently cast into a float32 parameter)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {name_list(missing, most=3, max_chars=120)}"] if missing else []) + (
            [f"unexpected {name_list(unexpected, most=3, max_chars=120)}"] if unexpected else []
        )
        raise CheckpointError(f"{path} does not match the model in config.json ({'; '.join(parts)})")
    for key, want in expected.items():
        got = state[key]
        if got.dtype != want.dtype:
            raise CheckpointError(
                f"{path}: tensor '{key}' is {_dtype(got)}, the model's is {_dtype(want)}; genvae "
                "loads weights of the model's own dtype only"
            )
        if got.shape != want.shape:
            raise CheckpointError(
                f"{path} does not match the model in config.json (tensor '{key}' has shape "
                f"{list(got.shape)}, the model's {list(want.shape)})"
            )


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def load_weights(model, path: Path, device="cpu", state: dict | None = None) -> None:
    """Load weights strictly (names, shapes, dtypes); ``state`` skips reading ``path`` again when it was already
    read."""
    state = read_tensors(path, device) if state is None else state
    check_weights(model, state, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match the model in config.json ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) < 240 else text[:237] + "..."


def load_model(folder: str | Path, device: str | torch.device = "cpu", registry=None, amp: str | None = None):
    """Build the model from ``config.json`` and load ``model.safetensors`` into it, on ``device``.

    ``amp``: None runs it in float32 (as :func:`genvae.core.model.build_model` makes one), ``"config"`` in its
    ``train.amp`` (what the commands that run a model use; fp16 there is ``auto`` off CUDA), or a mode of
    :data:`genvae.core.precision.AMP_MODES`."""
    from genvae.core.model import build_model
    from genvae.core.precision import run_precision

    folder = Path(folder)
    spec = load_spec(folder)
    model = build_model(spec, registry, check="load")  # what running it needs; training checks its own when it starts
    load_weights(model, folder / WEIGHTS)
    model = model.to(device)
    if amp is not None:
        model.precision = run_precision(amp, spec.train.amp, device)
    return model


# -- training checkpoints ----------------------------------------------------------------------------


def optimizer_to_tensors(name: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state into tensors (for safetensors) and JSON (hyper-parameters, counters, and which
    parameters have a state: ``with_state``, so a resume can tell a lost state from one never made)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for idx, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{name}/{idx}/{key}"] = value
            else:
                plain.setdefault(str(idx), {})[key] = value
    return tensors, {
        "param_groups": state["param_groups"],
        "plain": plain,
        "with_state": sorted(int(idx) for idx, values in state["state"].items() if values),
    }


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


def checkpoint_dirs(folder: str | Path | ModelFolder) -> list[Path]:
    """Complete checkpoints, oldest first: real folders ``checkpoints/step-N`` holding a ``trainer.json`` (a link
    there is never taken for one of genvae's checkpoints)."""
    mf = as_model_folder(folder)
    try:
        entries = mf.entries(CHECKPOINTS)
    except fs.UnsafePathError:
        return []
    found = []
    for entry in entries:
        number = entry.name[5:]
        if entry.name.startswith("step-") and number.isdigit() and entry.is_dir(follow_symlinks=False):
            st = mf.lstat(f"{CHECKPOINTS}/{entry.name}/{TRAINER}")
            if st is not None and stat.S_ISREG(st.st_mode):
                found.append(mf.path / CHECKPOINTS / entry.name)
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def latest_checkpoint(folder: str | Path | ModelFolder) -> Path | None:
    dirs = checkpoint_dirs(folder)
    return dirs[-1] if dirs else None


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def write_checkpoint(
    folder: str | Path | ModelFolder, step: int, model_state: dict, optim_tensors: dict, trainer: dict, keep: int
) -> Path:
    """Write ``checkpoints/step-N`` completely under a temporary name, then rename it into place.

    Non-finite weights or optimiser state are refused (:class:`DivergedError`) before anything is
    written, so rotation can never replace a good checkpoint with a diverged one. A file genvae did not
    write in the step folder is refused before anything is written; rotation removes only the files
    genvae wrote in the old checkpoints.
    """
    bad = nonfinite_tensors({**model_state, **optim_tensors})
    if bad:
        raise DivergedError(
            f"not writing a checkpoint at step {step}: {len(bad)} tensor(s) hold NaN or inf (first: {bad[0]})"
        )
    mf = as_model_folder(folder)
    mf.subdir(CHECKPOINTS)
    rel = f"{CHECKPOINTS}/{checkpoint_name(step)}"
    mf.check_tree(rel)  # a user's file in the step folder: refused, nothing written
    writers = {
        WEIGHTS: tensors_writer(model_state, {"format": "pt"}),
        OPTIMIZER: tensors_writer(optim_tensors),
        TRAINER: lambda f: f.write(json_text(trainer).encode()),
    }
    files = [f"{rel}/{name}" for name in writers]
    mf.record(*files)
    tmp = mf.make_temp_folder(rel)
    try:
        for name, write in writers.items():
            fs.write_file_in(mf.root, mf.full(f"{tmp}/{name}"), write)
        if mf.lstat(rel) is not None:
            mf.remove_under(rel)
            mf.record(*files)
            fs.remove_empty_folder_in(mf.root, mf.full(rel))
        mf.rename(tmp, rel)
    except BaseException:
        mf.remove_temp_folder(tmp)
        raise
    for old in checkpoint_dirs(mf)[:-keep]:
        mf.remove_under(f"{CHECKPOINTS}/{old.name}")
    return mf.path / rel


def read_checkpoint(path: Path, device="cpu") -> tuple[dict, dict, dict]:
    trainer = read_json(path / TRAINER)
    if not isinstance(trainer, dict) or "step" not in trainer:
        raise GenvaeError(f"{path / TRAINER} is not a genvae trainer state")
    return read_tensors(path / WEIGHTS, device), read_tensors(path / OPTIMIZER, device), trainer
