"""Trains a model folder for a few steps with the public API and writes what this process ended with.

Run once under ``torchrun --nproc-per-node 2`` (each rank writes ``rank<R>.safetensors``) and once as a single
process (``rank0.safetensors`` in its own output folder); ``tests/test_distributed.py`` compares them.

    python tests/ddp_worker.py MODEL_DIR OUT_DIR STEPS BATCH_SIZE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from genvae.api import load_model, prepare_training


def main() -> None:
    model_dir, out_dir, steps, batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    model = load_model(model_dir, device="cpu")
    records: list[dict] = []
    trainer = prepare_training(
        model,
        Path(out_dir) / "run",
        device="cpu",
        overrides={"max_steps": steps, "batch_size": batch, "log_every": 1, "checkpoint_every": 10**6},
    )
    trainer.on_log = records.append
    # the first update's gradients: this process's own (as backward accumulates them) and the ones the
    # optimiser steps with
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    local: dict[str, torch.Tensor] = {}
    first: dict[str, torch.Tensor] = {}
    for p in trainer.model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: local.__setitem__(names[id(p)], p.grad.detach().clone()))

    def before_step(optimizer, args, kwargs) -> None:
        if not first:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        first["local/" + names[id(p)]] = local[names[id(p)]]
                        first["stepped/" + names[id(p)]] = p.grad.detach().clone()

    for phase in trainer.phases:
        phase.optimizer.register_step_pre_hook(before_step)
    trainer.fit()
    rank = trainer.dist.rank if trainer.dist is not None else 0
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, str(out_dir / f"rank{rank}.safetensors"))
    save_file({k: v.contiguous() for k, v in first.items()}, str(out_dir / f"grads{rank}.safetensors"))
    (out_dir / f"rank{rank}.json").write_text(json.dumps(records))


if __name__ == "__main__":
    main()
