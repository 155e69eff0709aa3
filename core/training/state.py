"""Run state: what a checkpoint holds beyond the weights (optimisers, random streams, the open log window,
the schedule counters), how it is written, and how ``--resume`` reads it back, checked completely.

Reading a checkpoint for ``--resume``: every part of it is checked against the model before anything is written.

A checkpoint is untrusted input, and a run that fails half-way through ``--resume`` must not have rewritten
``config.json``, cut ``metrics.jsonl`` or deleted anything. So :func:`read_resume_state` reads the latest
checkpoint and checks all of it while the model folder is still untouched: the weights (names, shapes, dtypes,
finite values), every phase's optimiser state (the parameter groups, and for every parameter Adam has stepped
the keys Adam needs, of the parameter's shape and a floating dtype), the random streams (torch, CUDA, Python),
the GradScaler, the open log window and the schedule counters against the batch size and the data. What it
returns can then be applied (:func:`apply_resume_state`) without anything left to fail. A bad file
gives one line naming the file and the key.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from genvae.core import checkpoint as ckpt
from genvae.core.errors import CheckpointError, GenvaeError, shorten

if TYPE_CHECKING:
    from genvae.core.distributed import Distributed
    from genvae.core.folder import ModelFolder
    from genvae.core.training.step import Phase

RUNNING = "trainer.running/"  # tensor-name prefix of the open log window's sums in optimizer.safetensors
RANK_RNG = "rng@rank{rank}/{kind}"  # the other processes' random streams of a torchrun launch
ADAM_KEYS = ("step", "exp_avg", "exp_avg_sq")  # what Adam keeps per parameter (and max_exp_avg_sq with amsgrad)
AMSGRAD_KEY = "max_exp_avg_sq"
SCALER_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
_RANK_RNG_KEY = re.compile(r"rng@rank[0-9]+/(torch|cuda)")
_INDEX = re.compile(r"0|[1-9][0-9]{0,8}")


@dataclass(frozen=True)
class ResumeState:
    """A checkpoint read and checked against one Trainer's model, phases, batch size and data."""

    path: Path  # the checkpoint folder
    weights: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]  # optimizer.safetensors: optimiser states, random streams, log window
    trainer: dict[str, Any]  # trainer.json
    optimizers: dict[str, dict]  # phase name -> the state dict its optimiser loads


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shape(t: torch.Tensor | torch.Size) -> list[int]:
    return list(t.shape if isinstance(t, torch.Tensor) else t)


def _python_random_problem(rnd: Any) -> str | None:
    """Why ``rnd`` is not a state Python's ``random`` can take (as ``[version, [625 ints], gauss]``), or None."""
    if not (isinstance(rnd, list) and len(rnd) == 3 and isinstance(rnd[1], list)):
        return "must be Python's random state [version, [ints], gauss]"
    version, state, gauss = rnd
    if version != random.Random.VERSION:
        return f"must be Python's random state version {random.Random.VERSION}, got {shorten(version, 20)}"
    if len(state) != 625 or not all(_is_count(v) and v < 2**32 for v in state) or state[-1] > 624:
        return "must hold Python's 625 state words (624 integers in 0..2**32-1, then a position <= 624)"
    if gauss is not None and not _is_number(gauss):
        return f"must end in a finite number or null, got {shorten(gauss, 20)}"
    try:
        random.Random().setstate((version, tuple(state), gauss))
    except (ValueError, TypeError, OverflowError) as exc:
        return f"is not a valid random state ({exc})"
    return None


def validate_trainer_state(trainer: dict, where: Path, phases: Sequence[str], tensors: dict) -> None:
    """Check trainer.json's fields and types (and that the tensors they name exist) before any of it is used.

    ``where`` is the checkpoint's trainer.json; one specific line per problem, naming the file and the key.
    The checks that need the model (shapes, parameter counts, the data) are in :func:`read_resume_state`.
    """
    tensor_file = Path(where).with_name(ckpt.OPTIMIZER)

    def fail(message: str) -> CheckpointError:
        return CheckpointError(f"{where}: {message}")

    for key in ("step", "epoch", "batch_in_epoch", "batch_size"):
        if key not in trainer:
            raise fail(f"missing '{key}'")
        if not _is_count(trainer[key]):
            raise fail(f"'{key}' must be an integer >= 0, got {str(trainer[key])[:40]!r}")
    optimizers = trainer.get("optimizers")
    if not isinstance(optimizers, dict):
        raise fail("missing 'optimizers' (a mapping of phase name to optimiser state)")
    for phase in phases:
        meta = optimizers.get(phase)
        if meta is None:
            raise fail(f"no optimiser state for phase '{phase}'")
        if (
            not isinstance(meta, dict)
            or not isinstance(meta.get("param_groups"), list)
            or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in meta["param_groups"])
        ):
            raise fail(f"the optimiser state of phase '{phase}' has no valid 'param_groups' list")
        if not isinstance(meta.get("plain", {}), dict):
            raise fail(f"the optimiser state of phase '{phase}' has a malformed 'plain' entry")
    problem = _python_random_problem(trainer.get("python_random"))
    if problem:
        raise fail(f"'python_random' {problem}")
    scaler = trainer.get("scaler")
    if scaler is not None:
        if not isinstance(scaler, dict) or any(k not in scaler for k in SCALER_KEYS):
            raise fail(f"'scaler' must be null or a GradScaler state with {', '.join(SCALER_KEYS)}")
        for key in ("scale", "growth_factor", "backoff_factor"):
            if not _is_number(scaler[key]) or scaler[key] <= 0:
                raise fail(f"'scaler.{key}' must be a finite number > 0, got {shorten(scaler[key], 40)}")
        if not _is_count(scaler["growth_interval"]) or scaler["growth_interval"] < 1:
            raise fail(f"'scaler.growth_interval' must be an integer >= 1, got {shorten(scaler['growth_interval'])}")
        if not _is_count(scaler["_growth_tracker"]):
            raise fail(f"'scaler._growth_tracker' must be an integer >= 0, got {shorten(scaler['_growth_tracker'])}")
    if "world_size" in trainer and (not _is_count(trainer["world_size"]) or trainer["world_size"] < 1):
        raise fail(f"'world_size' must be an integer >= 1, got {shorten(trainer['world_size'], 40)}")
    rng = tensors.get("rng/torch")
    if rng is None:
        raise CheckpointError(f"{tensor_file}: 'rng/torch' is missing (the torch random state)")
    terms = trainer.get("running_terms", [])
    if not isinstance(terms, list) or not all(isinstance(k, str) for k in terms) or len(set(terms)) != len(terms):
        raise fail("'running_terms' must be a list of distinct term names")
    missing = [k for k in terms if f"{RUNNING}{k}" not in tensors]
    if missing:
        raise CheckpointError(
            f"{tensor_file}: {shorten(RUNNING + missing[0], 80)} is missing (the open log "
            "window's sum of a term trainer.json's 'running_terms' names)"
        )
    count = trainer.get("running_count", 0)
    if not _is_count(count):
        raise fail("'running_count' must be an integer >= 0")
    if terms and not 1 <= count <= trainer["step"]:
        raise fail(f"'running_count' must be 1..{trainer['step']} (the steps of the open log window), got {count}")


def check_rng_state(state: torch.Tensor, key: str, where: Path, device: torch.device) -> None:
    """A torch (CPU) or CUDA random state: a 1-D uint8 tensor of the right length (torch's own check for CPU)."""
    if state.dtype != torch.uint8 or state.dim() != 1:
        raise CheckpointError(
            f"{where}: {key!r} is a {state.dtype} tensor of shape {_shape(state)}, expected a 1-D uint8 random state"
        )
    if key.endswith("/torch"):
        try:
            torch.Generator().set_state(state.cpu())
        except RuntimeError as exc:
            reason = " ".join(str(exc).split())[:160]
            raise CheckpointError(f"{where}: {key!r} is not a torch random state ({reason})") from None
    elif device.type == "cuda":
        expected = torch.cuda.get_rng_state(device).numel()
        if state.numel() != expected:
            raise CheckpointError(
                f"{where}: {key!r} holds {state.numel()} bytes, expected a CUDA random state of {expected} bytes"
            )


def optimizer_state(phase: Phase, tensors: dict[str, torch.Tensor], meta: dict, path: Path) -> dict:
    """The state dict ``phase``'s optimiser loads, checked completely against its parameters.

    The parameter groups must match the phase's in number and size (and list the parameters in order); every
    parameter that has any state must have all of Adam's keys (``step``, ``exp_avg``, ``exp_avg_sq``, and
    ``max_exp_avg_sq`` with amsgrad), each of the parameter's shape, a floating dtype and finite. Which parameters
    have a state is listed in trainer.json (``with_state``): a parameter Adam has not stepped yet (a phase whose
    every update was skipped) has none, and starts fresh as in torch; one whose state was lost is refused. The
    hyper-parameters are this run's (config.json), not the checkpoint's.
    """
    name = phase.name
    json_file, tensor_file = path / ckpt.TRAINER, path / ckpt.OPTIMIZER
    groups = phase.optimizer.state_dict()["param_groups"]
    saved = meta["param_groups"]
    sizes, saved_sizes = [len(g["params"]) for g in groups], [len(g["params"]) for g in saved]
    if sizes != saved_sizes:
        raise CheckpointError(
            f"{json_file}: the optimiser state of phase '{name}' has {len(saved)} parameter "
            f"group(s) of {shorten(saved_sizes, 60)} parameters, this model's phase has "
            f"{len(groups)} of {sizes}"
        )
    for j, (group, old) in enumerate(zip(groups, saved, strict=True)):
        if any(not _is_count(i) for i in old["params"]) or old["params"] != group["params"]:
            raise CheckpointError(
                f"{json_file}: parameter group {j} of phase '{name}' lists parameters "
                f"{shorten(old['params'], 60)}, expected {group['params'][0]}..{group['params'][-1]}"
            )
    params = [p for g in phase.optimizer.param_groups for p in g["params"]]
    amsgrad = [bool(g.get("amsgrad")) for g in phase.optimizer.param_groups for _ in g["params"]]
    wanted = {*ADAM_KEYS, AMSGRAD_KEY}
    found: dict[int, dict[str, Any]] = {}
    prefix = f"{name}/"
    for key, value in tensors.items():
        if not key.startswith(prefix):
            continue
        digits, _, field = key[len(prefix) :].partition("/")
        if not _INDEX.fullmatch(digits) or int(digits) >= len(params) or field not in wanted:
            raise CheckpointError(
                f"{tensor_file}: {shorten(key, 80)} is not an optimiser state of this model's "
                f"phase '{name}' (parameters 0..{len(params) - 1}, keys {', '.join(sorted(wanted))})"
            )
        found.setdefault(int(digits), {})[field] = value
    for digits, values in meta.get("plain", {}).items():
        if not (
            isinstance(digits, str)
            and _INDEX.fullmatch(digits)
            and int(digits) < len(params)
            and isinstance(values, dict)
            and set(values) <= {"step"}
        ):
            raise CheckpointError(
                f"{json_file}: the optimiser state of phase '{name}' has a malformed 'plain' "
                f"entry {shorten(digits, 40)}"
            )
        if "step" in values and "step" in found.get(int(digits), {}):
            raise CheckpointError(
                f"{json_file}: parameter {digits} of phase '{name}' has a 'step' in both "
                f"trainer.json and {ckpt.OPTIMIZER}"
            )
        found.setdefault(int(digits), {}).update(values)
    listed = meta.get("with_state")  # the parameters that had a state (not in checkpoints of earlier genvae)
    if listed is not None:
        if not isinstance(listed, list) or not all(_is_count(i) and i < len(params) for i in listed):
            raise CheckpointError(
                f"{json_file}: 'with_state' of phase '{name}' must list parameter indices 0..{len(params) - 1}"
            )
        for index in sorted(set(listed) - set(found)):
            found[index] = {}  # reported as its first missing key below
        extra = sorted(set(found) - set(listed))
        if extra:
            keys = sorted(k for k in tensors if k.startswith(f"{prefix}{extra[0]}/"))
            shown = f"'{keys[0]}'" if keys else f"a state of parameter {extra[0]}"
            raise CheckpointError(
                f"{tensor_file}: {shown} is there, but trainer.json lists no state for parameter "
                f"{extra[0]} of phase '{name}'"
            )
    nonfinite = set(ckpt.nonfinite_tensors({k: v for k, v in tensors.items() if k.startswith(prefix)}))
    for index, state in sorted(found.items()):
        param = params[index]
        about = f"(phase '{name}', parameter {index} of shape {_shape(param)})"
        needed = (*ADAM_KEYS, AMSGRAD_KEY) if amsgrad[index] else ADAM_KEYS
        for field in needed:
            if field not in state:
                raise CheckpointError(f"{tensor_file}: '{prefix}{index}/{field}' is missing {about}")
        for field, value in state.items():
            key = f"{prefix}{index}/{field}"
            if not torch.is_tensor(value):  # a step counter in trainer.json (older torch)
                if not _is_number(value) or value < 0:
                    raise CheckpointError(
                        f"{json_file}: the 'plain' step of parameter {index} of phase '{name}' must "
                        f"be a finite number >= 0, got {shorten(value, 40)}"
                    )
                continue
            if not value.is_floating_point():
                raise CheckpointError(
                    f"{tensor_file}: '{key}' is {str(value.dtype).removeprefix('torch.')}, "
                    f"expected a floating-point tensor {about}"
                )
            expected = [] if field == "step" else _shape(param)
            if _shape(value) != expected:
                raise CheckpointError(f"{tensor_file}: '{key}' has shape {_shape(value)}, expected {expected} {about}")
            if key in nonfinite:
                raise CheckpointError(f"{tensor_file}: '{key}' holds NaN or inf {about}")
            if field != "exp_avg" and bool((value < 0).any()):
                raise CheckpointError(f"{tensor_file}: '{key}' holds negative values, which Adam never writes {about}")
    return {"state": found, "param_groups": groups}


def read_resume_state(
    folder: Path | ModelFolder,
    model: torch.nn.Module,
    phases: Sequence[Phase],
    *,
    batch_size: int,
    num_images: int,
    device: torch.device,
) -> ResumeState | None:
    """The latest checkpoint of ``folder``, read and checked against the model, its phases, the batch size and
    the number of training images; None when there is none. Writes nothing."""
    path = ckpt.latest_checkpoint(folder)
    if path is None:
        return None
    weights, tensors, trainer = ckpt.read_checkpoint(path, device)
    json_file, tensor_file = path / ckpt.TRAINER, path / ckpt.OPTIMIZER
    validate_trainer_state(trainer, json_file, [p.name for p in phases], tensors)
    if trainer["batch_size"] != batch_size:
        raise GenvaeError(
            f"--resume: the checkpoint was trained with batch size {trainer['batch_size']}, "
            f"this run uses {batch_size}; resume with the same --batch-size"
        )
    per_epoch = num_images // batch_size
    step, epoch, batch = trainer["step"], trainer["epoch"], trainer["batch_in_epoch"]
    if batch > per_epoch or step != epoch * per_epoch + batch:
        raise CheckpointError(
            f"{json_file}: 'step' {step}, 'epoch' {epoch} and 'batch_in_epoch' {batch} do not fit "
            f"this data: {num_images} images make {per_epoch} batches of {batch_size} per epoch; "
            "resume with the data the checkpoint was trained on, or use --restart"
        )
    ckpt.check_weights(model, weights, path / ckpt.WEIGHTS)
    bad = ckpt.nonfinite_tensors(weights)
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights ({bad[0]}); it cannot be resumed")
    optimizers = {p.name: optimizer_state(p, tensors, trainer["optimizers"][p.name], path) for p in phases}
    for key, value in tensors.items():
        if key in ("rng/torch", "rng/cuda") or _RANK_RNG_KEY.fullmatch(key):
            check_rng_state(value, key, tensor_file, device)
    for term in trainer.get("running_terms", []):
        key = f"{RUNNING}{term}"
        value = tensors[key]
        if not value.is_floating_point() or value.numel() != 1 or not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{tensor_file}: {shorten(key, 80)} must be one finite floating-point number "
                "(the open log window's sum)"
            )
    return ResumeState(path, weights, tensors, trainer, optimizers)


# -- writing the run state ---------------------------------------------------------------------------------


def py_random_state() -> list:
    version, state, gauss = random.getstate()
    return [version, list(state), gauss]


def set_py_random_state(data: list) -> None:
    version, state, gauss = data
    random.setstate((version, tuple(state), gauss))


def rng_by_rank(dist: Distributed | None, device: torch.device) -> dict[str, torch.Tensor]:
    """Under torchrun, every process's random streams (collected on rank 0), so a resume is exact. Every process
    calls it (a collective)."""
    if dist is None:
        return {}
    out = {}
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    for kind, state in states.items():
        where = device if dist.backend == "nccl" else torch.device("cpu")
        for rank, got in enumerate(dist.gather(state.to(where))):
            if rank:
                out[RANK_RNG.format(rank=rank, kind=kind)] = got.cpu()
    return out


def run_state(
    *,
    step: int,
    epoch: int,
    batch_in_epoch: int,
    batch_size: int,
    phases: Sequence[Phase],
    running: dict[str, torch.Tensor],
    running_count: int,
    scaler,
    device: torch.device,
    world_size: int,
    ranks: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(the tensors of optimizer.safetensors, trainer.json) for a checkpoint at a step boundary."""
    tensors: dict[str, torch.Tensor] = {}
    meta = {}
    for phase in phases:
        phase_tensors, phase_meta = ckpt.optimizer_to_tensors(phase.name, phase.optimizer)
        tensors.update(phase_tensors)
        meta[phase.name] = phase_meta
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    tensors.update({f"rng/{k}": v for k, v in rng.items()})
    tensors.update(ranks)
    tensors.update({f"{RUNNING}{k}": v.reshape(()) for k, v in running.items()})
    trainer = {
        "step": step,
        "epoch": epoch,
        "batch_in_epoch": batch_in_epoch,
        "batch_size": batch_size,
        "optimizers": meta,
        "python_random": py_random_state(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "running_count": running_count,
        "running_terms": list(running),
        "world_size": world_size,
    }
    return tensors, trainer


def apply_resume_state(
    state: ResumeState,
    model: torch.nn.Module,
    phases: Sequence[Phase],
    *,
    scaler,
    dist: Distributed | None,
    device: torch.device,
    seed: int,
) -> None:
    """Load a checked state into the model, the optimisers and every random stream (the counters and the log
    window are the caller's: ``state.trainer``)."""
    from genvae.core.distributed import rank_seed
    from genvae.core.training.run import seed_everything

    tensors, trainer = state.tensors, state.trainer
    ckpt.load_weights(model, state.path / ckpt.WEIGHTS, device, state=state.weights)
    try:
        for phase in phases:
            phase.optimizer.load_state_dict(state.optimizers[phase.name])
        torch.set_rng_state(tensors["rng/torch"].cpu())
        if "rng/cuda" in tensors and device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/cuda"].cpu(), device)
        if dist is not None and dist.rank:
            # this process's own streams; a checkpoint of another number of processes has none for it: a fresh one
            key = RANK_RNG.format(rank=dist.rank, kind="torch")
            if key not in tensors:
                seed_everything(rank_seed(seed + trainer["step"], dist.rank))
            else:
                torch.set_rng_state(tensors[key].cpu())
                cuda = RANK_RNG.format(rank=dist.rank, kind="cuda")
                if cuda in tensors and device.type == "cuda":
                    torch.cuda.set_rng_state(tensors[cuda].cpu(), device)
        set_py_random_state(trainer["python_random"])
        if scaler is not None and trainer.get("scaler"):
            scaler.load_state_dict(trainer["scaler"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:  # a check missed something
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{state.path} does not match this model's training state ({first})") from None
