"""The step: one forward pass, then the step's updates, each a backward pass and its phase's optimiser step.

A step's updates follow ``train.schedule``: by default (``one-pass``) one update per phase, in the
losses' phase order, on one forward pass; a schedule may instead step a phase several times on
different branches (posterior, prior), recomputing a branch with the current weights first
(``fresh``), as the crVAE authors' code does. Everything that depends on the plugins (phases,
updates, parameter groups, learning rates, gradient clamps) is resolved once, when the
:class:`StepRunner` is made; a step does the same fixed work whatever the number of plugins, and it
never waits for the device.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch
from torch import nn

from genvae.core.components import ForwardPass
from genvae.core.distributed import Distributed
from genvae.core.errors import GenvaeError
from genvae.core.model import MODEL_PHASE, GenerativeModel
from genvae.core.precision import resolve_precision
from genvae.core.spec import TrainConfig


class Update:
    """One update of a step: a phase's optimiser stepped on the terms of one branch."""

    __slots__ = ("phase", "branch", "fresh", "repeated")

    def __init__(self, phase: Phase, branch: str, fresh: bool, repeated: bool):
        self.phase, self.branch, self.fresh, self.repeated = phase, branch, fresh, repeated


def graph_nodes(total: torch.Tensor) -> set:
    """The autograd nodes a backward pass from ``total`` goes through, the parameters' accumulators left out
    (every update may reach those; they keep nothing that a backward pass frees)."""
    seen: set = set()
    stack = [total.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return {node for node in seen if type(node).__name__ != "AccumulateGrad"}


def shared_graphs(graphs: list[set]) -> list[bool]:
    """For each update's graph: does a later update of the step go through any of it again (so its backward pass
    must keep it)?"""
    later: set = set()
    keep = [False] * len(graphs)
    for i in range(len(graphs) - 1, -1, -1):
        keep[i] = not graphs[i].isdisjoint(later)
        later |= graphs[i]
    return keep


def plan_updates(model: GenerativeModel, config: TrainConfig, phases: list[Phase]) -> list[Update]:
    """The step's updates from ``config.schedule`` (checked against the model), for the phases that have
    parameters to train."""
    by_name = {p.name: p for p in phases}
    plan = [u for u in model.updates(config.schedule) if u["phase"] in by_name]
    counts = Counter(u["phase"] for u in plan)
    return [Update(by_name[u["phase"]], u["branch"], u["fresh"], counts[u["phase"]] > 1) for u in plan]


def _merge_logged(logged: list[tuple[Update, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """One step's logged values: a name two updates both produce (``mi.q``, ``model/total``) is logged once per
    update as ``name@branch`` (``mi.q@prior``, ``model@prior/total``); every other name stays as it is."""
    seen: set[str] = set()
    twice: set[str] = set()
    for _, record in logged:
        for key in record:
            (twice if key in seen else seen).add(key)
    merged: dict[str, torch.Tensor] = {}
    for update, record in logged:
        for key, value in record.items():
            if key in twice:
                head, slash, tail = key.partition("/")
                key = f"{head}@{update.branch}{slash}{tail}"
            merged[key] = value
    return merged


class Phase:
    """One optimisation phase: its optimiser, parameter groups with base learning rates, clamps."""

    def __init__(
        self,
        name: str,
        optimizer: torch.optim.Optimizer,
        clamps: list[tuple[list[nn.Parameter], float]],
        params: list[nn.Parameter],
        warmups: list[tuple[tuple[int, float], ...]] | None = None,
    ):
        self.name = name
        self.optimizer = optimizer
        self.clamps = clamps
        self.params = params
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        #: per parameter group, its learning-rate warm-up stages (``train.lr_warmup``; empty: none)
        self.warmups = warmups or [()] * len(self.base_lrs)


def _prefixed(model: GenerativeModel, method: str) -> dict[str, Any]:
    """Component defaults (``lr_multipliers``/``grad_clamps``/``lr_warmups``) keyed by full module path."""
    out: dict[str, Any] = {}
    for prefix, comp in model.components().items():
        path = prefix.replace("loss.", "losses.")
        for sub, value in getattr(comp, method)().items():
            out[f"{path}.{sub}" if sub else path] = value
    return out


def _match(name: str, table: dict[str, float]) -> float | None:
    best = None
    for prefix, value in table.items():
        if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, value)
    return None if best is None else best[1]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def is_frozen(name: str, config: TrainConfig) -> bool:
    """Whether a parameter or module path is held fixed by ``freeze``/``train_only``."""
    if any(_under(name, p) for p in config.freeze):
        return True
    if config.train_only:
        trained = any(_under(name, p) for p in config.train_only)
        ancestor = any(p.startswith(name + ".") for p in config.train_only) or name == ""
        return not (trained or ancestor)
    return False


def apply_freeze(model: GenerativeModel, config: TrainConfig, grads: bool = True) -> list[nn.Parameter]:
    """Frozen parameters get no gradient; frozen modules run in eval mode (BN statistics stay).

    Returns the parameters it switched off, so the caller can switch them back on afterwards."""
    switched: list[nn.Parameter] = []
    if not (config.freeze or config.train_only):
        return switched
    for name, p in model.named_parameters() if grads else ():
        if is_frozen(name, config) and p.requires_grad:
            p.requires_grad_(False)
            switched.append(p)
    for name, module in model.named_modules():
        if name and is_frozen(name, config):
            module.eval()
    return switched


def build_phases(model: GenerativeModel, config: TrainConfig, device: torch.device) -> list[Phase]:
    multipliers = {**_prefixed(model, "lr_multipliers"), **config.lr_multipliers}
    clamp_table = {**_prefixed(model, "grad_clamps"), **config.grad_clamp}
    warmups = {**_prefixed(model, "lr_warmups"), **config.lr_warmup}
    owned = model.phase_modules()
    owned_ids = {id(p) for mods in owned.values() for m in mods for p in m.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    tables = (
        (config.lr_multipliers, "lr_multipliers"),
        (config.grad_clamp, "grad_clamp"),
        (config.lr_warmup, "lr_warmup"),
        (dict.fromkeys(config.freeze), "freeze"),
        (dict.fromkeys(config.train_only), "train_only"),
    )
    for table, what in tables:
        for prefix in table:
            if not any(n == prefix or n.startswith(prefix + ".") for n in names.values()):
                raise GenvaeError(
                    f"train.{what}: no parameters under '{prefix}'; module paths look like "
                    f"{', '.join(sorted({n.rsplit('.', 2)[0] for n in names.values()})[:6])}"
                )
    phases = []
    for phase in model.phases:
        if phase == MODEL_PHASE:
            params = [p for p in model.parameters() if id(p) not in owned_ids and p.requires_grad]
        else:
            seen: set[int] = set()
            params = []
            for m in owned.get(phase, []):
                for p in m.parameters():
                    if id(p) not in seen and p.requires_grad:
                        seen.add(id(p))
                        params.append(p)
        params = [p for p in params if not is_frozen(names[id(p)], config)]
        if not params:
            continue
        lr = config.phase_lr.get(phase, config.lr)
        groups: dict[tuple[float, str | None], list[nn.Parameter]] = {}
        for p in params:
            key = (_match(names[id(p)], multipliers) or 1.0, _warmup_prefix(names[id(p)], warmups))
            groups.setdefault(key, []).append(p)
        kwargs: dict[str, Any] = {"betas": config.betas, "weight_decay": config.weight_decay}
        if device.type == "cuda":  # one kernel for all parameters (on the CPU fused Adam breaks bit-exact resume)
            kwargs["fused"] = True
        optimizer = torch.optim.Adam([{"params": ps, "lr": lr * mult} for (mult, _), ps in groups.items()], **kwargs)
        stages = [warmups[warm] if warm else () for (_, warm) in groups]
        clamps: dict[float, list[nn.Parameter]] = {}
        for p in params:
            value = _match(names[id(p)], clamp_table)
            if value is not None:
                clamps.setdefault(value, []).append(p)
        phases.append(Phase(phase, optimizer, [(ps, v) for v, ps in clamps.items()], params, stages))
    return phases


def _warmup_prefix(name: str, table: dict[str, Any]) -> str | None:
    """The longest ``train.lr_warmup`` path that ``name`` lies under, or None."""
    best = None
    for prefix in table:
        if _under(name, prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    return best


def warmup_factor(stages: tuple[tuple[int, float], ...], step: int) -> float:
    """The warm-up factor at ``step`` (0-based: the step about to run): the first stage whose until_step is past it."""
    for until, factor in stages:
        if step < until:
            return factor
    return 1.0


def lr_factor(config: TrainConfig, epoch: int) -> float:
    if config.lr_schedule == "step":
        return config.lr_gamma ** (epoch // config.lr_step_epochs)
    if config.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, config.epochs) / max(config.epochs, 1)))
    return 1.0


class StepRunner:
    """Runs training steps of one model: its phases (optimisers), the step's planned updates, mixed precision,
    gradient averaging under torchrun, and which updates keep their autograd graph."""

    def __init__(
        self, model: GenerativeModel, config: TrainConfig, device: torch.device, dist: Distributed | None = None
    ):
        self.model = model
        self.config = config
        self.dist = dist
        self.phases = build_phases(model, config, device)
        self.updates = plan_updates(model, config, self.phases)
        self.factor = 1.0  # the learning-rate schedule's factor of the current epoch
        #: the step from which every warm-up is over
        self.warmup_until = max(
            (stages[-1][0] for phase in self.phases for stages in phase.warmups if stages), default=0
        )
        #: log each phase's gradient norm (training health): 'auto' turns it on for models with several phases
        self.grad_norms = config.grad_norms == "on" or (config.grad_norms == "auto" and len(self.phases) > 1)
        # the networks' precision (train.amp on this device): the model runs them in it, losses stay float32
        model.precision = resolve_precision(config.amp, device)
        self.scaler: torch.amp.GradScaler | None = None
        if model.precision.dtype == torch.float16:  # fp16's range needs the losses scaled (bf16's does not)
            self.scaler = torch.amp.GradScaler(device.type)
        # Per update: keep the graph after its backward pass? Found on the first step (see shared_graphs); a kept
        # graph holds every activation of the step until its end, which costs memory and, on the CPU, time.
        last = len(self.updates) - 1
        self.retain: list[bool] | None = (
            [i < last for i in range(len(self.updates))] if (config.retain_graph == "always") else None
        )

    def set_lr(self, factor: float, step: int = 0) -> None:
        """Every parameter group at its base learning rate times ``factor`` (the schedule's, per epoch) and its
        warm-up factor at ``step`` (``train.lr_warmup``)."""
        self.factor = factor
        for phase in self.phases:
            for group, base, stages in zip(phase.optimizer.param_groups, phase.base_lrs, phase.warmups, strict=True):
                group["lr"] = base * factor * warmup_factor(stages, step)

    def warm_up(self, step: int) -> None:
        """Before ``step`` runs: move the warm-up factors on, while a warm-up lasts (nothing to do afterwards)."""
        if step <= self.warmup_until:
            self.set_lr(self.factor, step)

    def run(self, x: torch.Tensor, step: int, epoch: int) -> dict[str, torch.Tensor]:
        """One step on the batch ``x``: a forward pass, then each update's backward pass and optimiser step.
        Returns the logged values (detached, on the device: nothing here waits for it)."""
        model = self.model

        passes: list[ForwardPass] = []

        def forward() -> ForwardPass:
            fwd = model(x)  # its networks under model.precision's autocast, its outputs float32
            fwd.step, fwd.epoch = step, epoch
            passes.append(fwd)
            return fwd

        fwd = forward()
        last = len(self.updates) - 1
        probe: list[set] | None = [] if self.retain is None else None  # the first step: keep all, note the graphs
        logged: list[tuple[Update, dict[str, torch.Tensor]]] = []
        for i, update in enumerate(self.updates):
            phase = update.phase
            if update.fresh:  # recompute the branch with the weights as the previous updates left them
                if update.branch == "prior":
                    fwd.new_prior_sample()
                else:
                    fwd = forward()
            fwd.branch, fwd.update = update.branch, i
            terms, skip = model.update_terms(fwd, phase.name)  # float32; a loss's own network: self.precision
            record: dict[str, torch.Tensor] = {}
            logged.append((update, record))
            if skip:  # the one host sync a loss may ask for: only losses that declare may_skip, when their rule is on
                flag = torch.stack([f.reshape(()) for f in skip]).any()
                skipped = bool(flag if self.dist is None else self.dist.any(flag))  # every replica skips alike
                record[f"{phase.name}/skipped"] = torch.tensor(float(skipped), device=x.device)
            if not terms:  # nothing on this branch this step (e.g. every term switched off)
                continue
            values = iter(terms.values())
            total = next(values)
            for value in values:
                total = total + value
            if skip and skipped:  # logged like any step, so every term keeps one value per step
                record.update({k: v.detach() for k, v in terms.items()})
                record[f"{phase.name}/total"] = total.detach()
                continue
            phase.optimizer.zero_grad(set_to_none=True)
            if probe is not None:
                probe.extend([set()] * (i - len(probe)))  # updates with nothing to backpropagate this step
                probe.append(graph_nodes(total))
                retain = i < last
            else:
                retain = self.retain[i]  # type: ignore[index]
            try:
                (total if self.scaler is None else self.scaler.scale(total)).backward(retain_graph=retain)
            except RuntimeError as exc:
                if "second time" not in str(exc):
                    raise
                raise GenvaeError(
                    f"update {i + 1} ({update.phase.name}@{update.branch}) went back through a graph an earlier update "
                    "of the step had freed, which it did not on the first step; train with --set "
                    "train.retain_graph=always (resume from the last checkpoint)"
                ) from None
            if self.dist is not None:  # the gradient of the mean over the global batch, on every replica
                self.dist.average_([p.grad for p in phase.params if p.grad is not None])
            if self.scaler is not None:  # after the average: an overflow on any replica skips the step on all
                self.scaler.unscale_(phase.optimizer)
            if self.grad_norms:  # before clipping: what the losses asked for (one fused norm, no host sync)
                grads = [p.grad for p in phase.params if p.grad is not None]
                if grads:
                    record[f"{phase.name}/grad_norm"] = torch.linalg.vector_norm(
                        torch.stack(torch._foreach_norm(grads))
                    )
            for params, clamp in phase.clamps:
                nn.utils.clip_grad_value_(params, clamp)
            if self.config.grad_clip_norm is not None:
                nn.utils.clip_grad_norm_(phase.params, self.config.grad_clip_norm)
            if self.scaler is not None:
                self.scaler.step(phase.optimizer)
                if update.repeated:  # this optimiser steps again in this step: unscale_ needs an update() between
                    self.scaler.update()
            else:
                phase.optimizer.step()
            # detached: what is returned must not keep this step's graph alive into the next step
            record.update({k: v.detach() for k, v in terms.items()})
            record[f"{phase.name}/total"] = total.detach()
        if self.scaler is not None:
            self.scaler.update()
        if probe is not None:
            probe.extend([set()] * (len(self.updates) - len(probe)))
            self.retain = shared_graphs(probe)
        result = logged[0][1] if len(logged) == 1 else _merge_logged(logged)
        for seen in passes:  # diagnostics (ForwardPass.log): logged, never summed into a total
            for key, value in seen.logged.items():
                result.setdefault(key, value)
        return result
