"""The small helpers every part of the kit shares: labels and failures, one thread, a seeded RNG that leaves the
caller's alone, fixed images, a seeded build, and tensor comparisons that say where two results differ."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from genvae.core.components import COMPONENT_BASES, COMPONENT_KINDS, LOSS_ROLES, Component, Loss
from genvae.core.errors import GenvaeError
from genvae.core.registry import KIND_NAMES, Registry, get_registry
from genvae.core.spec import ModelSpec

KINDS = COMPONENT_KINDS
BASES: dict[str, type[Component]] = {base.kind: base for base in COMPONENT_BASES}
__all__ = ["BASES", "BATCH", "KINDS", "LOSS_ROLES"]
BATCH = 4  # > 1, so batch norm has statistics to use in train mode

#: what a crash inside a component under test raises; the kit reports it as a failed check, not a traceback
CRASHES = (RuntimeError, ValueError, IndexError, KeyError, TypeError)


def label_of(kind: str, name: str) -> str:
    """How messages name a component: ``encoder 'conv'``, ``latent transform 'gaussian'``."""
    return f"{KIND_NAMES.get(kind, kind)} '{name}'"


def fail(message: str) -> AssertionError:
    """The one way the kit fails: an AssertionError, so any runner reports it without the kit importing pytest."""
    return AssertionError(message)


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise fail(f"unknown component kind '{kind}'; kinds: {', '.join(KINDS)}")


def lookup(kind: str, name: str, registry: Registry) -> Any:
    """The registry entry of ``kind``/``name``; a missing or conflicting name fails with the registry's message."""
    check_kind(kind)
    try:
        return registry.get(kind, name)
    except GenvaeError as exc:
        raise fail(str(exc)) from exc


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, restoring the count afterwards.

    The conformance models are tiny: extra threads only add synchronisation, and on a busy
    machine (parallel test runs, CI) they make a check ten times slower. Every check runs so.
    """
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


@contextmanager
def guarded(kind: str, name: str, what: str) -> Iterator[None]:
    """Run ``what`` (a check's name) on one thread; a crash inside the model becomes one AssertionError naming the
    component, so a plugin's bug reads as a failed check rather than a traceback into genvae."""
    with single_thread():
        try:
            yield
        except CRASHES as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise fail(f"{label_of(kind, name)}: {what} crashed: {type(exc).__name__}: {first}") from exc


@contextmanager
def rng(seed: int) -> Iterator[None]:
    """Run with torch's global RNG seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def random_images(spec: ModelSpec, batch: int = BATCH, seed: int = 0) -> torch.Tensor:
    """A fixed batch (batch, C, H, W) of uniform noise in [-1, 1] for ``spec``'s image shape."""
    g = torch.Generator().manual_seed(seed + 7919)
    return torch.rand(batch, *spec.image_shape, generator=g) * 2.0 - 1.0


def build_tiny(spec: ModelSpec, registry: Registry | None = None, seed: int = 0):
    """Build ``spec`` with torch seeded by ``seed`` (the caller's RNG state is kept)."""
    from genvae.core.model import build_model

    with rng(seed):
        return build_model(spec, registry or get_registry())


def tensors_equal(what: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise fail(f"{what}: shapes differ, {list(a.shape)} vs {list(b.shape)}")
    if not torch.equal(a, b):
        diff = (a.detach().float() - b.detach().float()).abs().max().item()
        raise fail(f"{what}: values differ (max abs difference {diff:.3g})")


def terms_equal(what: str, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    if sorted(a) != sorted(b):
        raise fail(f"{what}: loss terms differ, {sorted(a)} vs {sorted(b)}")
    for key in a:
        tensors_equal(f"{what}, loss term '{key}'", a[key], b[key])


def state_dicts_equal(what: str, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    if list(a) != list(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise fail(f"{what}: state_dict keys differ (only in first: {only_a}; only in second: {only_b})")
    for key in a:
        tensors_equal(f"{what}, state_dict['{key}']", a[key], b[key])


def summed(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The terms a loss's phase minimises: all but its skip flag (``Loss.SKIP``, from a loss with ``may_skip``)."""
    return {k: v for k, v in terms.items() if k != Loss.SKIP}


def all_terms(model, fwd) -> dict[str, torch.Tensor]:
    """Every phase's terms of one pass, keyed ``phase/term``."""
    out: dict[str, torch.Tensor] = {}
    for phase in model.phases:
        for key, value in model.phase_terms(fwd, phase).items():
            out[f"{phase}/{key}"] = value
    return out
