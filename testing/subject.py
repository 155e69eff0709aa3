"""What every check shares: its signature (:class:`Check`), the component it examines (:class:`Subject`, built once
per call by :func:`subject`) and the guard it runs under (:func:`check`, the decorator that makes a function of a
Subject into a public check)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import attrs
import torch

from genvae.core.components import Component
from genvae.core.registry import KIND_NAMES, Registry, get_registry
from genvae.core.spec import ModelSpec
from genvae.testing._util import build_tiny, check_kind, fail, guarded, label_of, random_images
from genvae.testing.partners import tiny_spec

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Check(Protocol[T_co]):
    """The one signature of every check: component ``kind``/``name`` with its ``options``, or a ready ``spec`` that
    contains it (its options are then read from the spec), under ``registry`` (default: the installed plugins) and
    ``seed``. A check may take keyword arguments of its own (``extra``)."""

    def __call__(
        self,
        kind: str,
        name: str,
        options: Mapping[str, Any] | None = None,
        spec: ModelSpec | None = None,
        registry: Registry | None = None,
        seed: int = 0,
        **extra: Any,
    ) -> T_co: ...


@attrs.frozen
class Subject:
    """The component a check examines and what it runs on.

    ``spec`` stays None until a check needs a model (:meth:`with_spec`), so the checks of the class alone
    (registration, options) build nothing.
    """

    kind: str
    name: str
    options: Mapping[str, Any] | None  # as given, or read from the spec
    spec: ModelSpec | None
    registry: Registry
    seed: int

    @property
    def label(self) -> str:
        """How messages name the component: ``encoder 'my-encoder'``."""
        return label_of(self.kind, self.name)

    def with_spec(self) -> Subject:
        """This subject with a spec to build: the given one, else :func:`tiny_spec`'s around the component."""
        if self.spec is not None:
            return self
        spec = tiny_spec(self.kind, self.name, self.options, registry=self.registry)
        return attrs.evolve(self, spec=spec, options=_options_in(spec, self.kind, self.name))

    @property
    def model_spec(self) -> ModelSpec:
        """The spec to build: a check made with ``needs_spec`` gets its subject with one."""
        if self.spec is None:
            raise fail(f"{self.label}: no spec yet (Subject.with_spec gives one)")
        return self.spec

    def build(self, spec: ModelSpec | None = None):
        """The model of ``spec`` (default: the subject's), built under the subject's seed and registry."""
        return build_tiny(self.model_spec if spec is None else spec, self.registry, self.seed)

    def images(self, offset: int = 0) -> torch.Tensor:
        """The fixed batch of images the checks feed (another batch for another ``offset``)."""
        return random_images(self.model_spec, seed=self.seed + offset)

    def component_in(self, model) -> Component:
        """The component under test in a model built from the spec."""
        comp = model.losses[self.name] if self.kind == "loss" else getattr(model, self.kind)
        if comp.name != self.name:
            raise fail(
                f"the spec's {KIND_NAMES[self.kind]} is '{comp.name}', not the component under test '{self.name}'"
            )
        return comp


def subject(
    kind: str,
    name: str,
    options: Mapping[str, Any] | None = None,
    spec: ModelSpec | None = None,
    registry: Registry | None = None,
    seed: int = 0,
) -> Subject:
    """The opening every check shares: the kind known, the registry defaulted, a given spec checked to contain the
    component (its options are then read from it)."""
    check_kind(kind)
    if spec is not None:
        if not _spec_has(spec, kind, name):
            raise fail(f"the given spec does not contain {label_of(kind, name)}")
        options = _options_in(spec, kind, name)
    return Subject(kind, name, options, spec, registry or get_registry(), seed)


def check(needs_spec: bool = True) -> Callable[[Callable[..., T]], Check[T]]:
    """Make ``func(subject, **extra)`` a public check with the shared signature (:class:`Check`).

    The subject is built once by :func:`subject` (with its spec when ``needs_spec``), and the check runs guarded:
    on one thread, a crash inside the model reported as one AssertionError naming the component and the check.
    """

    def decorate(func: Callable[..., T]) -> Check[T]:
        @functools.wraps(func)
        def run(kind, name, options=None, spec=None, registry=None, seed=0, **extra):
            with guarded(kind, name, func.__name__):
                target = subject(kind, name, options, spec, registry, seed)
                return func(target.with_spec() if needs_spec else target, **extra)

        run.__signature__ = _signature(func)  # type: ignore[attr-defined]
        return run

    return decorate


def _signature(func: Callable[..., Any]) -> inspect.Signature:
    """What help() shows for a check: the shared parameters, then ``func``'s own (keyword-only)."""
    shared = list(inspect.signature(Check.__call__).parameters.values())[1:-1]  # without self and **extra
    own = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in list(inspect.signature(func).parameters.values())[1:]
    ]
    return inspect.Signature(shared + own, return_annotation=inspect.signature(func).return_annotation)


def _spec_has(spec: ModelSpec, kind: str, name: str) -> bool:
    if kind == "loss":
        return any(s.name == name for s in spec.losses)
    return spec.component(kind).name == name


def _options_in(spec: ModelSpec, kind: str, name: str) -> dict[str, Any]:
    if kind == "loss":
        return dict(next(s.options for s in spec.losses if s.name == name))
    return dict(spec.component(kind).options)
