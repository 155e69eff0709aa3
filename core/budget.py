"""Memory budget: size a spec on PyTorch's ``meta`` device before anything real is allocated.

A model folder's ``config.json`` is untrusted input: a 1 KB file can ask for ``encoder.width=1000000``
or ``image_size=100000``. :func:`estimate` builds the spec the way :func:`genvae.core.model.build_model`
does, but on the meta device (tensors with shapes and no storage), counts its parameters and runs one
meta forward pass at the training batch size, adding up the outputs of every leaf module.
:func:`check_budget` refuses a spec whose training footprint is over :func:`memory_limit` with one
line; ``build_model`` runs it before every real build (``genvae build`` and every model folder load).

Every command that runs a model sizes the batch it runs the same way: :func:`inference_estimate` runs
the command's work (a *program*: ``sample``, ``reconstruct``, ...) on the meta device at two batch
sizes, following the bytes alive after every operation (plus the scratch memory the CPU kernels take
for a convolution), and splits the peak into a fixed part and a part per image. :func:`inference_batch`
gives the largest chunk of images that fits the limit beside what the command keeps on the host
(the images it collects, the grid it writes), or refuses in one line when even one image does not.
The real peaks these estimates bound were measured (docs/reliability.md, "A model folder is untrusted
input"; ``benchmarks/inference_memory.py``).

The limit is ``GENVAE_MAX_MEMORY`` (``8G``, ``512M``, ``1.5GB``, plain bytes; ``off`` skips the check),
else half of the memory available now. Sizes use binary multiples: ``1G`` is 2**30 bytes.
"""

from __future__ import annotations

import math
import os
import re

import attrs

from genvae.core.errors import GenvaeError
from genvae.core.meta import (
    DRY_RUN_BATCH,
    ENV,
    PROGRAMS,
    RUNTIME_BYTES,
    TRAINING_COPIES,
    Program,
    _build_meta,
    _cache_key,
    _cached,
    _Exceeded,
    _image_shape,
    _line,
    _margin,
    _measure_forward,
    _meta_model,
    _MetaMode,
    _peak,
    _program_check,
    _remember,
)

#: how a refused user raises the limit (the CLI's --max-memory sets GENVAE_MAX_MEMORY)
LIMIT_HINT = "lower the sizes, or raise the limit with --max-memory / GENVAE_MAX_MEMORY"
FALLBACK_MEMORY = 8 * 2**30
#: leaf-module outputs are kept for backward and meet gradients of the same size there
BACKWARD_FACTOR = 2
_OFF = ("off", "none", "unlimited", "no")
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?\s*(?:([kmgtp])(?:i?b)?|b)?\s*$", re.IGNORECASE)


class BudgetError(GenvaeError):
    """A spec that needs more memory than the limit allows, or a limit that cannot be read."""


@attrs.frozen
class Estimate:
    """What training a spec needs, measured on the meta device (bytes unless said otherwise)."""

    parameters: int
    parameter_bytes: int
    buffer_bytes: int
    activation_bytes: int  # leaf-module outputs of one forward + losses, at ``batch_size``
    batch_size: int
    measured: bool = True  # False: the meta forward failed; activations are the image batch only
    note: str = ""  # why the meta forward failed
    workspace_bytes: int = 0  # the largest scratch a convolution of the step takes (forward or backward)

    @property
    def training_bytes(self) -> int:
        working = BACKWARD_FACTOR * self.activation_bytes + self.workspace_bytes
        return TRAINING_COPIES * self.parameter_bytes + self.buffer_bytes + RUNTIME_BYTES + _margin(working)

    def describe(self) -> str:
        return (
            f"about {format_size(self.training_bytes)} to train ({format_count(self.parameters)} parameters; "
            f"activations at batch {self.batch_size}: {format_size(self.activation_bytes)})"
        )


# -- sizes ----------------------------------------------------------------------------------------


def parse_size(text: str | int, where: str = ENV) -> int:
    """``"8G"``, ``"512M"``, ``"1.5GB"``, ``"2GiB"``, ``"1048576"`` -> bytes; a one-line error for anything else."""
    shown = repr(str(text)[:40])
    if isinstance(text, bool):
        raise BudgetError(f"{where}={shown} is not a size")
    if isinstance(text, int):
        value = float(text)
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise BudgetError(
                f"{where}={shown} is not a size; give bytes or a number with K, M, G or T "
                "(e.g. 8G, 512M, 1.5GB), or 'off' to skip the check"
            )
        number, exponent, unit = match.groups()
        if exponent and abs(int(exponent)) > 30:
            raise BudgetError(f"{where}={shown} is out of range")
        value = float(number) * 10 ** int(exponent or 0) * _UNITS[(unit or "").lower()]
    if not math.isfinite(value) or value > 2**62:
        raise BudgetError(f"{where}={shown} is out of range")
    if value < 1:
        raise BudgetError(f"{where}={shown} must be a positive size (e.g. 8G)")
    return int(value)


def parse_limit(text: str | int, where: str = ENV) -> int | None:
    """A memory limit: a size as :func:`parse_size` reads it, or None for ``off`` / ``none`` / ``unlimited``."""
    if isinstance(text, str) and text.strip().lower() in _OFF:
        return None
    return parse_size(text, where)


def format_size(n: int | float) -> str:
    """Bytes in binary units, one decimal: ``11.8 GB`` (1 GB = 2**30 bytes, as :func:`parse_size` reads it)."""
    n = min(n, 10**300)  # an absurd size from an untrusted config stays printable (no float overflow)
    for unit, scale in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10_000 else f"{value:.1e} {unit}".replace("e+", "e")
    return f"{int(n)} bytes"


def format_count(n: int) -> str:
    n = min(n, 10**300)  # as in format_size
    return f"{n:,}" if n < 10**7 else f"{n:.1e}".replace("e+", "e")


def available_memory() -> int:
    """Memory available to this process now: MemAvailable (and the cgroup's room, when smaller)."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            available = None
    if not available or available <= 0:
        available = FALLBACK_MEMORY * 2
    try:  # cgroup v2: a container's own limit can be well under the host's free memory
        with open("/sys/fs/cgroup/memory.max") as f:
            cap = f.read().strip()
        if cap.isdigit():
            with open("/sys/fs/cgroup/memory.current") as f:
                room = int(cap) - int(f.read().strip())
            if room > 0:
                available = min(available, room)
    except (OSError, ValueError):
        pass
    return available


def memory_limit_and_source() -> tuple[int | None, str]:
    """(limit in bytes or None when the check is off, where the limit comes from)."""
    raw = os.environ.get(ENV, "").strip()
    if raw:
        return parse_limit(raw), ENV
    return available_memory() // 2, "half of the available memory"


def memory_limit() -> int:
    """``GENVAE_MAX_MEMORY`` in bytes, else half of the available memory (``off``: no limit, a huge number)."""
    limit, _ = memory_limit_and_source()
    return limit if limit is not None else 2**62


def _estimate(spec, registry, batch_size: int | None, cap: int | None) -> Estimate:
    from genvae.core.registry import get_registry

    registry = registry or get_registry()
    batch = int(batch_size if batch_size is not None else spec.train.batch_size)
    image_bytes = batch * math.prod(spec.image_shape) * 4
    if cap is not None and BACKWARD_FACTOR * image_bytes > cap:
        raise _Exceeded(0)  # the image batch alone is over: nothing needs building to know
    key = _cache_key(spec, batch)
    cached = _cached(registry, key)
    if cached is not None:  # the same spec built again (a reload, a stage of a run)
        return cached
    mode = _MetaMode(cap)
    model = _build_meta(spec, registry, mode)
    _remember(registry, _cache_key(spec, "meta model"), model)  # the inference estimates run on it too
    params = list(model.parameters())
    parameters = sum(p.numel() for p in params)
    parameter_bytes = sum(p.numel() * p.element_size() for p in params)
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    if cap is not None and TRAINING_COPIES * parameter_bytes + buffer_bytes + BACKWARD_FACTOR * image_bytes > cap:
        # over already: the forward would only add to it (and this partial estimate is not cached)
        return Estimate(parameters, parameter_bytes, buffer_bytes, image_bytes, batch, False, "not measured")
    try:
        activations, workspace = _measure_forward(model, spec, batch, mode)
        result = Estimate(parameters, parameter_bytes, buffer_bytes, activations, batch, workspace_bytes=workspace)
    except Exception as exc:  # noqa: BLE001 - a plugin whose forward does not run on meta: size it without
        result = Estimate(parameters, parameter_bytes, buffer_bytes, image_bytes, batch, False, _line(exc))
    _remember(registry, key, result)
    return result


def estimate(spec, registry=None, batch_size: int | None = None) -> Estimate:
    """Parameters and training memory of ``spec`` at ``batch_size`` (default: the spec's), built on meta.

    Raises a one-line :class:`BuildError` if the spec cannot even be built on meta (overflowing sizes,
    an incompatible composition). A forward that fails on meta leaves ``measured`` False and counts the
    image batch as the activations.
    """
    return _estimate(spec, registry, batch_size, None)


def check_budget(spec, registry=None, limit: int | str | None = None, batch_size: int | None = None) -> Estimate | None:
    """Refuse ``spec`` with a one-line :class:`BudgetError` when training it, or the build's dry run on
    :data:`DRY_RUN_BATCH` images, needs more than ``limit``.

    ``limit`` defaults to :func:`memory_limit` (``GENVAE_MAX_MEMORY``, else half of the available
    memory). Returns the estimate, or None when the check is off (``GENVAE_MAX_MEMORY=off``).
    """
    limit, source = _limit(limit)
    if limit is None:
        return None
    batch = int(batch_size if batch_size is not None else spec.train.batch_size)
    over = f"over the limit of {format_size(limit)} ({source}); {LIMIT_HINT}"
    try:
        est = _estimate(spec, registry, batch, limit)
    except _Exceeded as exc:
        if exc.created:
            raise BudgetError(
                f"model spec needs over {format_size(TRAINING_COPIES * exc.created)} to train (over "
                f"{format_count(exc.created // 4)} parameters), {over}"
            ) from None
        image = batch * math.prod(spec.image_shape) * 4
        raise BudgetError(
            f"model spec needs over {format_size(BACKWARD_FACTOR * image)} to train (its image batch "
            f"of {format_count(batch)} x {list(spec.image_shape)} alone), {over}"
        ) from None
    if est.training_bytes > limit:
        raise BudgetError(f"model spec needs {est.describe()}, {over}")
    check = _dry_run_bytes(spec, registry) if est.measured else None  # every build and load runs one
    if check is not None and check > limit:
        shape = "x".join(str(d) for d in spec.image_shape)
        raise BudgetError(
            f"model spec needs about {format_size(check)} to check it on {DRY_RUN_BATCH} images "
            f"of {shape} (the dry run of every build and load), {over}"
        )
    return est


def check_load(spec, registry=None, limit: int | str | None = None) -> int | None:
    """Refuse ``spec`` with a one-line :class:`BudgetError` when its weights, or the build's dry run on
    :data:`DRY_RUN_BATCH` images, need more than ``limit``: what loading a model folder needs. A command then
    runs the model in chunks that fit (:func:`inference_batch`), and a training run checks its own footprint
    when it starts (:func:`check_budget`), so loading a model to sample from it never asks for its training
    memory. Returns the dry run's bytes (None when not measured or the check is off)."""
    from genvae.core.registry import get_registry

    limit, source = _limit(limit)
    if limit is None:
        return None
    registry = registry or get_registry()
    over = f"over the limit of {format_size(limit)} ({source}); {LIMIT_HINT}"
    images = DRY_RUN_BATCH * math.prod(spec.image_shape) * 4
    if images > limit:  # the images alone are over: nothing needs building to know (nor can: sizes may overflow)
        raise BudgetError(
            f"model spec needs over {format_size(images)} for {DRY_RUN_BATCH} images of "
            f"{list(spec.image_shape)} alone (the dry run of every build and load), {over}"
        )
    key = _cache_key(spec, "meta model")
    if _cached(registry, key) is None:
        try:
            model = _build_meta(spec, registry, _MetaMode(limit, copies=1))
        except _Exceeded as exc:
            raise BudgetError(
                f"model spec needs over {format_size(exc.created)} for its weights alone (over "
                f"{format_count(exc.created // 4)} parameters), {over}"
            ) from None
        _remember(registry, key, model)
    check = _dry_run_bytes(spec, registry)
    if check is not None and check > limit:
        shape = "x".join(str(d) for d in spec.image_shape)
        raise BudgetError(
            f"model spec needs about {format_size(check)} to check it on {DRY_RUN_BATCH} images "
            f"of {shape} (the dry run of every build and load), {over}"
        )
    return check


# -- inference: the batch a command runs -----------------------------------------------------------

#: the per-image bytes of a program that does not run on meta, in float32 images of the model's size
FALLBACK_IMAGE_COPIES = 32
#: the second batch a program is measured at: the slope holds up to 1 + this many images at once
SLOPE_BATCH = 1024
#: bytes per grid pixel while :func:`genvae.core.images.save_grid` writes a grid, by channels: the uint8
#: grid, PIL's copy of it (4 bytes per RGB pixel) and an encoder's working copies (WebP: ARGB and YUV)
GRID_PIXEL_BYTES = {1: 1 + 1 + 6, 3: 3 + 4 + 6}


@attrs.frozen
class InferenceEstimate:
    """What running a program on a batch of images needs: model, runtime, and activations that grow
    with the batch (meta counts, kernel scratch included; :meth:`batch_bytes` adds the kernels' margin)."""

    what: str
    parameter_bytes: int
    buffer_bytes: int
    fixed_bytes: int  # the activation peak's part that does not grow with the batch
    per_image_bytes: int  # the activation peak's part per image
    measured: bool = True  # False: the program failed on meta; per image is FALLBACK_IMAGE_COPIES images
    note: str = ""

    @property
    def image_bytes(self) -> int:
        """What one more image adds, margin included."""
        return _margin(self.per_image_bytes)

    def batch_bytes(self, batch: int) -> int:
        """Bytes to run the program on ``batch`` images with the model loaded (0: the model and runtime alone)."""
        return (
            self.parameter_bytes
            + self.buffer_bytes
            + RUNTIME_BYTES
            + _margin(self.fixed_bytes)
            + batch * self.image_bytes
        )


def _dry_run_bytes(spec, registry) -> int | None:
    """What the build's dry run needs (one meta run at its batch; None: it does not run on meta)."""
    from genvae.core.registry import get_registry

    registry = registry or get_registry()
    key = _cache_key(spec, "dry run")
    cached = _cached(registry, key)
    if cached is not None:
        return cached
    model = _meta_model(spec, registry)
    try:
        peak = _peak(model, _program_check, DRY_RUN_BATCH)
    except Exception:  # noqa: BLE001 - sized as the training forward was: not at all
        return None
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    result = weights + RUNTIME_BYTES + _margin(peak)
    _remember(registry, key, result)
    return result


def inference_estimate(
    model_or_spec, what: str = "sample", *, registry=None, program: Program | None = None
) -> InferenceEstimate:
    """What running ``what`` (a name of :data:`PROGRAMS`, or ``program`` under that name) needs, measured on
    meta at batches of 1 and 1 + :data:`SLOPE_BATCH` images (a batch costs the meta device nothing). Cached per
    spec: a second call costs nothing. A program that does not run on meta is sized as
    :data:`FALLBACK_IMAGE_COPIES` images per image."""
    from genvae.core.registry import get_registry

    spec = getattr(model_or_spec, "spec", model_or_spec)
    run = program or PROGRAMS.get(what)
    if run is None:
        raise GenvaeError(f"no inference program '{what}'; known: {', '.join(PROGRAMS)} (or pass program=)")
    registry = registry or getattr(model_or_spec, "registry", None) or get_registry()
    key = _cache_key(spec, ("inference", what))
    cached = _cached(registry, key)
    if cached is not None:
        return cached
    image = math.prod(spec.image_shape) * 4
    model = _meta_model(spec, registry)
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    try:
        one, many = _peak(model, run, 1), _peak(model, run, 1 + SLOPE_BATCH)
    except Exception as exc:  # noqa: BLE001 - a plugin that reads values: sized by its images alone
        result = InferenceEstimate(
            what, parameter_bytes, buffer_bytes, 0, FALLBACK_IMAGE_COPIES * image, False, _line(exc)
        )
    else:
        # The peak is the largest of the program's moments, each linear in the batch: convex, so the line
        # through batches 1 and 1 + SLOPE_BATCH bounds it from above between them (a fixed part such as
        # VampPrior's pseudo-inputs may dominate small batches and the images large ones).
        per_image = max(-(-(many - one) // SLOPE_BATCH), 1)
        result = InferenceEstimate(what, parameter_bytes, buffer_bytes, max(one - per_image, 0), per_image)
    _remember(registry, key, result)
    return result


def image_bytes(model_or_spec, count: int = 1, element_size: int = 4) -> int:
    """Bytes of ``count`` images of the model's shape (float32; ``element_size=1``: uint8)."""
    return count * math.prod(_image_shape(model_or_spec)) * element_size


def grid_bytes(model_or_spec, count: int) -> int:
    """Bytes :func:`genvae.core.images.save_grid` needs to write ``count`` images as one grid, besides its input:
    the grid with its padding (an image's worth more, for the rounding of rows), and one image converted at a time."""
    c, h, w = _image_shape(model_or_spec)
    return (count + 1) * (h + 2) * (w + 2) * GRID_PIXEL_BYTES.get(c, 3 * c) + 2 * image_bytes(model_or_spec)


def _limit(limit: int | str | None) -> tuple[int | None, str]:
    if limit is None:
        return memory_limit_and_source()
    return parse_limit(limit, "limit"), "the given limit"


def inference_batch(
    model_or_spec,
    requested: int,
    *,
    what: str = "sample",
    per: int = 1,
    held: int = 0,
    holding: str = "",
    command: str = "",
    registry=None,
    program: Program | None = None,
    limit: int | str | None = None,
) -> int:
    """The largest number of images, at most ``requested``, that one pass of ``what`` may take under the memory
    limit, beside ``held`` bytes the command keeps meanwhile (the images it collects, the grid it writes:
    ``holding`` names them in the error). Each image runs ``per`` rows through the model (completion's starts).
    A chunk smaller than ``requested`` is a multiple of 8 images (4, 2 when fewer fit), of at most
    :data:`SLOPE_BATCH` rows.

    Raises a one-line :class:`BudgetError` when even one image does not fit. ``limit`` defaults to
    :func:`memory_limit`; with ``GENVAE_MAX_MEMORY=off`` this returns ``requested`` and sizes nothing.
    """
    if requested < 1:
        return requested
    lim, source = _limit(limit)
    if lim is None:
        return requested
    est = inference_estimate(model_or_spec, what, registry=registry, program=program)
    room = lim - est.batch_bytes(0) - held
    fits = room // (per * est.image_bytes) if room > 0 else 0
    fits = min(fits, max(SLOPE_BATCH // per, 1))  # past 1 + SLOPE_BATCH rows the slope is an extrapolation
    if fits >= requested:
        return requested
    if fits >= 1:
        # a multiple of 8 (4, 2) images: CPU kernels work on the batch in pairs, and a chunk of an odd size
        # rounds differently from the batch it is cut from (by a float's last bit)
        step = next(s for s in (8, 4, 2, 1) if fits >= s)
        return int(fits - fits % step)
    shape = "x".join(str(d) for d in _image_shape(model_or_spec))
    rows = f" ({per} rows)" if per > 1 else ""
    parts = f"{format_size(est.batch_bytes(per))} to run the model on one {shape} image{rows}"
    if held:
        parts += f", {format_size(held)} for {holding or 'what it keeps'}"
    raise BudgetError(
        f"{command or what} needs about {format_size(est.batch_bytes(per) + held)} even one image at "
        f"a time ({parts}), over the limit of {format_size(lim)} ({source}); {LIMIT_HINT}"
    )
