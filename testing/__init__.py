"""``genvae.testing``: a conformance kit that checks a component honours its contract.

Every check is a plain function that raises :class:`AssertionError` with a message naming the
component and what is wrong, so it works under pytest (or any runner) without importing pytest.
A plugin's test suite typically needs one line per component::

    from genvae.testing import check_component

    def test_my_encoder():
        check_component("encoder", "my-encoder", {"width": 8})

The component under test is placed among small partners by :func:`tiny_spec` (16 px images, the
partners' own ``test_options``), so a whole check runs in well under a second on a CPU. The kit
names no plugin: partners are found in the registry. Components that
are not installed (a plugin under development) are tested through :func:`plugin_registry`::

    registry = plugin_registry(my_plugin_module)
    check_component("loss", "my-loss", registry=registry)

The checks, each usable alone:

* :func:`check_registered`: the name resolves to a class of the right kind, with a docstring
  summary, attrs options and (encoders) counterparts that exist.
* :func:`check_options_roundtrip`: options -> dict -> JSON -> options gives the same instance;
  every option has a help text; unknown options are refused with one line.
* :func:`check_shapes`: the model builds; features, posterior, z, u, the decoder output and x_hat have the
  declared shapes; x_hat is in [-1, 1]; the prior samples the latent's shape; loss terms are
  finite scalars (``Loss.SKIP`` flags: one-element bools); the prior keeps fixed groups.
* :func:`check_serialisation`: ``save_model``/``load_model`` give an identical ``state_dict``,
  resolved spec and outputs (eval mode, posterior mean) and leave no temporary files.
* :func:`check_gradients`: after one forward and a backward of every phase, each trainable
  parameter of the component gets a finite gradient and at least one is non-zero; a loss's own
  terms move some parameter.
* :func:`check_determinism`: two builds under one seed give identical weights, loss terms and
  gradients for the same input and torch seed.
* :func:`check_spec_roundtrip`: the spec and the resolved spec survive ``to_dict`` -> JSON ->
  ``from_dict``, and rebuilding from the resolved spec resolves to itself.
* :func:`check_sensitivity`: every term of a loss changes when the images and random draws change
  (a term computed from constants fails); for other kinds, x_hat changes with the images.
* :func:`check_branches`: a loss keeps to the branches of ``train.schedule``: posterior-update terms
  take no gradient from the prior samples, prior-update terms none from the posterior pass, and
  its ``all`` terms are those of its branches together.

:func:`check_component` runs them all (``skip=("determinism",)`` leaves some out). Every check
takes ``kind, name, options=None`` or a ready ``spec=``, plus ``registry=`` and ``seed=``. No
check changes the caller's global torch RNG state, and each runs on one torch thread.

Helpers: :func:`tiny_spec` (the spec the checks use; also a quick way to get a small model
around a component), :func:`build_tiny` (build under a seed), :func:`random_images` (a fixed
batch in [-1, 1]), :func:`plugin_registry` (built-ins plus given plugin objects or modules, no
entry points) and :func:`single_thread` (a context manager for fast tiny-model tests).

The package, one module a concern: :mod:`~genvae.testing.checks` (the checks and ``CHECKS``),
:mod:`~genvae.testing.subject` (their shared signature and opening: ``Check``, ``Subject``, the ``check``
decorator), :mod:`~genvae.testing.partners` (``tiny_spec`` and how partners are found),
:mod:`~genvae.testing.registries` (``plugin_registry``), :mod:`~genvae.testing.cli` (``genvae_cli``,
``invoke_cli``) and ``_util`` (one thread, seeded RNG, fixed images, tensor comparisons).
"""

from __future__ import annotations

from genvae.testing._util import BASES, KINDS, build_tiny, random_images, single_thread
from genvae.testing.checks import (
    CHECKS,
    check_branches,
    check_component,
    check_determinism,
    check_gradients,
    check_options_roundtrip,
    check_registered,
    check_sensitivity,
    check_serialisation,
    check_shapes,
    check_spec_roundtrip,
)
from genvae.testing.cli import genvae_cli, invoke_cli
from genvae.testing.partners import tiny_spec
from genvae.testing.registries import plugin_registry

__all__ = [
    "BASES",
    "CHECKS",
    "KINDS",
    "build_tiny",
    "check_branches",
    "check_component",
    "check_determinism",
    "check_gradients",
    "check_options_roundtrip",
    "check_registered",
    "check_sensitivity",
    "check_serialisation",
    "check_shapes",
    "check_spec_roundtrip",
    "genvae_cli",
    "invoke_cli",
    "plugin_registry",
    "random_images",
    "single_thread",
    "tiny_spec",
]
