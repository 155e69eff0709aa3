"""The batch feeder: which images each step trains on, in which order, and getting them to the device.

Each epoch is one permutation of the data, drawn from its own generator seeded by ``train.seed`` and the
epoch, so the order never depends on anything else a run draws and a resumed run sees the same batches.
Under torchrun every process takes its share of each global batch from the same permutation. Small
uint8 data sets are moved to a GPU whole; otherwise the next batch is gathered on the host in a thread
(pinned when bound for a GPU) while the device computes the current one.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from genvae.core.data import ImageData
from genvae.core.decode import to_model_range
from genvae.core.distributed import Distributed
from genvae.core.errors import GenvaeError
from genvae.core.spec import TrainConfig


class BatchFeeder:
    """The batches of a run: global batch size, this process's share, the per-epoch order and prefetching."""

    #: uint8 data sets smaller than this (bytes) are moved to a GPU whole; larger ones stay on the host
    DEVICE_DATA_LIMIT = 4 * 2**30

    def __init__(self, data: ImageData, config: TrainConfig, device: torch.device, dist: Distributed | None = None):
        n = len(data)
        if n == 0:
            raise GenvaeError("the training data holds no images")
        self.config = config
        self.device = device
        self.dist = dist
        images = data.images
        if device.type == "cuda" and images.numel() < self.DEVICE_DATA_LIMIT:
            images = images.to(device)  # no copy per step: batches are gathered on the device
        self.images = images
        self.pin = images.device.type == "cpu" and device.type == "cuda"
        self.batch_size = min(config.batch_size, n)  # the global batch: all processes together
        self.batches_per_epoch = n // self.batch_size
        self.local_batch = self.batch_size
        if dist is not None:
            if self.batch_size % dist.world_size:
                raise GenvaeError(
                    f"batch size {self.batch_size} is not a multiple of the {dist.world_size} processes; "
                    "--batch-size is the global batch, split evenly between them"
                )
            self.local_batch = self.batch_size // dist.world_size
        #: the batches' layout: the trainer sets channels-last when the model runs in it
        self.memory_format = torch.contiguous_format
        self._loader: ThreadPoolExecutor | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of the data in ``epoch`` (the same in every process and on every resume)."""
        g = torch.Generator().manual_seed((self.config.seed * 1_000_003 + epoch) % 2**64)
        return torch.randperm(len(self.images), generator=g).to(self.images.device)

    def host_batch(self, perm: torch.Tensor, b: int) -> torch.Tensor:
        """The uint8 images of batch ``b`` of the epoch, where the data lives (pinned when bound for a GPU)."""
        start = b * self.batch_size + (self.dist.rank * self.local_batch if self.dist is not None else 0)
        idx = perm[start : start + self.local_batch]  # this process's share of the global batch
        images = self.images[idx]
        return images.pin_memory() if self.pin else images

    def batch(self, perm: torch.Tensor, b: int, host: torch.Tensor | None = None) -> torch.Tensor:
        """Batch ``b`` on the device in the model's range [-1, 1], flipped at random when ``train.flip``."""
        if host is None:
            host = self.host_batch(perm, b)
        x = to_model_range(host.to(self.device, non_blocking=True))
        if self.memory_format is not torch.contiguous_format:
            x = x.contiguous(memory_format=self.memory_format)
        if self.config.flip:
            flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
            x = torch.where(flip, x.flip(3), x)
        return x

    def epoch(self, epoch: int, first: int) -> Iterator[torch.Tensor]:
        """The batches of ``epoch`` from batch ``first`` on; the next one is gathered while this one trains."""
        perm = self.permutation(epoch)
        loader = self._loader
        if loader is None and self.images.device.type == "cpu":
            loader = self._loader = ThreadPoolExecutor(1, thread_name_prefix="genvae-batches")
        ahead: Future | None = None if loader is None else loader.submit(self.host_batch, perm, first)
        for b in range(first, self.batches_per_epoch):
            host = None if ahead is None else ahead.result()
            x = self.batch(perm, b, host)
            ahead = None
            if loader is not None and b + 1 < self.batches_per_epoch:
                ahead = loader.submit(self.host_batch, perm, b + 1)
            yield x

    def close(self) -> None:
        """Stop the gathering thread (a batch it was gathering is dropped)."""
        if self._loader is not None:
            self._loader.shutdown(wait=True, cancel_futures=True)
            self._loader = None
