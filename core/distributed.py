"""Data-parallel training over the processes of a ``torchrun`` launch (NCCL on CUDA, gloo on the CPU).

Every process holds a full replica of the model and takes its share of each global batch; after each
backward pass the gradients of the phase being updated are averaged over the processes (one
all-reduce of one flat buffer), so every replica applies the same update and the weights stay
identical. This is what ``DistributedDataParallel`` does, done by the trainer itself because one
training step may update several phases, each after its own backward pass through a shared graph
(the crVAE authors' schedule), which DDP's one-backward-per-forward reducer does not allow.

The semantics, which ``docs/scaling.md`` explains for users:

- ``--batch-size`` is the *global* batch; each of the N processes takes ``batch_size / N`` images of
  it (so the learning rate means the same thing on 1 process or 64). The loss of a process is the
  mean over its images, and the average of the N gradients is the gradient of the mean over the
  global batch.
- BatchNorm normalises with each process's own batch (as DDP does without SyncBatchNorm); running
  statistics are averaged over the processes whenever they are read (checkpoints, sample grids).
- Only rank 0 writes: checkpoints, ``config.json``, ``metrics.jsonl``, sample grids, the lock.
  Logged values are averaged over the processes first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as tdist

from genvae.core.errors import GenvaeError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class Distributed:
    """This process's place in the process group, and the few collectives training needs."""

    def __init__(self, rank: int, world_size: int, local_rank: int, backend: str):
        self.rank, self.world_size, self.local_rank, self.backend = rank, world_size, local_rank, backend

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Distributed(rank {self.rank} of {self.world_size}, {self.backend})"

    @torch.no_grad()
    def average_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Replace each tensor by its mean over the processes, in one all-reduce of one flat buffer."""

        def mean(flat: torch.Tensor) -> None:
            tdist.all_reduce(flat)
            flat.div_(self.world_size)

        tensors = [t for t in tensors if t is not None]
        if tensors:
            _through_flat(tensors, torch.float32, mean)

    @torch.no_grad()
    def broadcast_(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        """Copy rank ``src``'s values of ``tensors`` to every process (one flat broadcast per dtype)."""
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for dtype, group in by_dtype.items():
            _through_flat(group, dtype, lambda flat: tdist.broadcast(flat, src))

    def any(self, flag: torch.Tensor) -> torch.Tensor:
        """True on every process when ``flag`` is true on any (a max all-reduce)."""
        value = flag.detach().reshape(()).to(torch.int32).clone()
        tdist.all_reduce(value, op=tdist.ReduceOp.MAX)
        return value.bool()

    def max_(self, value: torch.Tensor) -> None:
        tdist.all_reduce(value, op=tdist.ReduceOp.MAX)

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every process's copy of a same-shaped tensor, by rank."""
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        tdist.all_gather(parts, tensor.contiguous())
        return parts

    def barrier(self) -> None:
        tdist.barrier()


def _through_flat(tensors: Sequence[torch.Tensor], dtype: torch.dtype, collective) -> None:
    """Run ``collective`` in place on one flat ``dtype`` buffer holding all of ``tensors``, then copy its parts back:
    one message per call, however many tensors."""
    flat = torch.cat([t.reshape(-1).to(dtype) for t in tensors])
    collective(flat)
    parts = flat.split([t.numel() for t in tensors])
    torch._foreach_copy_(list(tensors), [part.view_as(t) for part, t in zip(parts, tensors, strict=True)])


def launched_world_size() -> int:
    """The number of processes ``torchrun`` started (1 outside a launch)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise GenvaeError(f"WORLD_SIZE={os.environ['WORLD_SIZE'][:20]!r} is not a number of processes") from None


def init_distributed(device: torch.device) -> Distributed | None:
    """Join the process group a ``torchrun`` launch set up in the environment; None for a single process.

    The backend follows the device: NCCL for CUDA, gloo for the CPU."""
    world = launched_world_size()
    if world <= 1:
        return None
    missing = [k for k in ENV_KEYS if k not in os.environ]
    if missing:
        raise GenvaeError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch several processes with "
            "torchrun --nproc-per-node N -m genvae.cli train ..."
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not tdist.is_available():
        raise GenvaeError("this PyTorch build has no torch.distributed; train with one process")
    if not tdist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        tdist.init_process_group(backend=backend, **kwargs)
    return Distributed(tdist.get_rank(), tdist.get_world_size(), int(os.environ["LOCAL_RANK"]), backend)


def process_device(device: torch.device) -> torch.device:
    """Under torchrun, each process on a CUDA machine takes the GPU of its local rank."""
    if device.type == "cuda" and launched_world_size() > 1 and device.index in (None, 0):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise GenvaeError(
                f"local rank {local} has no GPU: this node has {torch.cuda.device_count()}; start at "
                "most that many processes per node (--nproc-per-node)"
            )
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def rank_seed(seed: int, rank: int) -> int:
    """Rank 0 keeps the run's seed (its random streams are a single process's); the others get their own."""
    return seed if rank == 0 else (seed * 1_000_003 + rank * 7_919) % 2**63


def shutdown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
