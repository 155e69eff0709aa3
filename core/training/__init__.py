"""Training, split along its seams; :func:`~genvae.core.training.run.train_run` is the one way a run is made.

- :mod:`.run`: ``train_run``, a run's life (validate, lock, restart or resume, train, save, release), and
  ``prepare_training``, which sets up a :class:`~.trainer.Trainer` with everything checked;
- :mod:`.trainer`: the loop over epochs and steps, stop requests, sample grids, checkpoints;
- :mod:`.step`: one step: the phases (optimisers), the step's updates, backward passes;
- :mod:`.feeder`: the batches: per-epoch order, this process's share, prefetching;
- :mod:`.metrics`: the metrics sink: device-side sums, log lines, divergence, loggers;
- :mod:`.state`: the run state in a checkpoint (optimisers, random streams, log window) and ``--resume``.
"""

from genvae.core.training.run import RunResult, RunStart, prepare_training, resolve_device, seed_everything, train_run
from genvae.core.training.trainer import Trainer, TrainingStopped

__all__ = [
    "RunResult",
    "RunStart",
    "Trainer",
    "TrainingStopped",
    "prepare_training",
    "resolve_device",
    "seed_everything",
    "train_run",
]
