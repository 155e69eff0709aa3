"""Sizing on PyTorch's ``meta`` device: building a spec, and running a model's work, without allocating.

A meta tensor has a shape and no storage, so a hostile spec (``encoder.width=1000000``) or a huge batch costs
nothing to size here. :class:`_MetaMode` builds a spec on meta (keeping literal tensors real, counting what is
created, stopping early over a cap); :class:`_Tracker` follows the bytes alive after every operation of a
program (plus the scratch a CPU convolution takes, :func:`conv_workspace`); the measures are cached per spec.
:mod:`genvae.core.budget` turns them into limits and refusals.
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from genvae.core.errors import BuildError, GenvaeError

ENV = "GENVAE_MAX_MEMORY"  # the memory limit (genvae.core.budget); ``off`` skips every check
#: weights, gradients and Adam's two moments, per parameter
TRAINING_COPIES = 4
#: a spec that creates more tensors than this while building is refused (depth / levels / steps gone wild)
MAX_TENSORS = 10_000
#: the real kernels' peak over what the meta device counts (allocator slack, kernel temporaries it cannot see);
#: measured peaks stay under 1 / KERNEL_MARGIN of the estimates (docs/reliability.md)
KERNEL_MARGIN = Fraction(5, 4)
#: what running a model costs once, whatever the batch: the CPU kernels' code, caches and scratch pads
RUNTIME_BYTES = 96 * 2**20
#: a CPU convolution writes its output in blocks of this many channels before reordering it (oneDNN's blocked
#: layouts: 16 floats, one AVX-512 register); a 1-channel output of W x H pixels takes 16 x W x H floats first
CONV_BLOCK = 16
#: images the build's dry run pushes through the model (genvae.core.model.dry_run)
DRY_RUN_BATCH = 2
#: a repeat_interleave on real (CPU) tensors above this many elements runs on meta instead
_SMALL = 1 << 16
META = torch.device("meta")
#: a program: what a command runs on ``batch`` images of a model, on whatever device the model is on
Program = Callable[[Any, int], object]

# -- building on meta ------------------------------------------------------------------------------

# constructors whose data comes from Python (a literal list): they stay real, so repeat_interleave,
# indexing and the like can read their values; they are as small as the config they came from.
_DATA_CONSTRUCTORS = {torch.tensor, torch.as_tensor, torch.asarray, torch.scalar_tensor}
_REPEAT = {torch.repeat_interleave, Tensor.repeat_interleave}


class _Exceeded(Exception):  # noqa: N818 - internal signal, never leaves this module
    def __init__(self, created: int):
        self.created = created


class _MetaMode(TorchFunctionMode):
    """``torch.device("meta")`` that keeps literal tensors real, counts what is created, and stops early."""

    def __init__(self, cap_bytes: int | None = None, copies: int = TRAINING_COPIES):
        super().__init__()
        self.cap = cap_bytes
        self.copies = copies  # of every created byte the cap counts (weights, gradients, Adam's moments)
        self.counting = True
        self.created = 0
        self.tensors = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _REPEAT:
            return self._repeat_interleave(func, args, kwargs)
        constructor = func in _device_constructors()
        if constructor and func not in _DATA_CONSTRUCTORS and kwargs.get("device") is None:
            kwargs["device"] = META
        out = func(*args, **kwargs)
        if constructor and self.counting and isinstance(out, Tensor):
            self.tensors += 1
            self.created += out.numel() * out.element_size()
            if self.tensors > MAX_TENSORS:
                raise BuildError(
                    f"the model spec creates over {MAX_TENSORS:,} tensors while building; lower its "
                    "depth, levels or steps"
                )
            if self.cap is not None and self.copies * self.created > self.cap:
                raise _Exceeded(self.created)
        return out

    @staticmethod
    def _repeat_interleave(func, args, kwargs):
        """Real (CPU) inputs whose result would be large are repeated on meta, with the size computed here."""
        source, repeats = args[0], (args[1] if len(args) > 1 else kwargs.get("repeats"))
        if (
            isinstance(source, Tensor)
            and not source.is_meta
            and isinstance(repeats, Tensor)
            and not repeats.is_meta
            and kwargs.get("output_size") is None
        ):
            dim = args[2] if len(args) > 2 else kwargs.get("dim")
            length = source.numel() if dim is None else source.shape[dim]
            total = int(repeats.sum()) if repeats.numel() > 1 else int(repeats) * length
            if total > _SMALL:
                rest = {k: v for k, v in kwargs.items() if k not in ("repeats", "dim")}
                return torch.repeat_interleave(source.to(META), repeats.to(META), dim, output_size=total, **rest)
        return func(*args, **kwargs)


def _margin(n: int) -> int:
    """``n`` bytes counted on meta, with the real kernels' slack on top (exact integers: sizes may be huge)."""
    return math.ceil(n * KERNEL_MARGIN)


_aten = torch.ops.aten


def _onednn(x: Tensor, weight: Tensor, groups: int) -> bool:
    """Whether PyTorch's CPU convolution takes oneDNN's path for these shapes (``at::native::use_mkldnn``)."""
    return (
        torch.backends.mkldnn.is_available()
        and bool(torch.backends.mkldnn.enabled)
        and x.dtype == torch.float32
        and (groups > 1 or min(weight.shape[2:]) > 3 or x.shape[0] > 1 or x.numel() > 20480)
    )


def conv_workspace(func, args, out, backward: bool = False) -> int:
    """Scratch bytes a CPU kernel takes for ``func`` (an aten op) beside its inputs and outputs; 0 for every op
    but a convolution's. oneDNN's kernels (float32, most shapes) write the output in :data:`CONV_BLOCK`-channel
    blocks before reordering it (a 1-channel output takes 16 channels first); PyTorch's own kernels (the other
    shapes and dtypes) unfold the input into an im2col buffer of ``C_in/groups x kH x kW x H_out x W_out``
    values per image (transposed: a col2im buffer of ``C_out/groups x kH x kW x H_in x W_in``). ``backward``:
    the scratch of the convolution's backward too, whose input gradient is written in blocks as well."""
    if func is _aten.convolution.default:
        x, weight, y = args[0], args[1], out
        transposed, groups = args[6], args[8]
    elif func is _aten.convolution_backward.default:
        y, x, weight = args[0], args[1], args[2]
        transposed, groups, backward = args[7], args[9], True
    else:
        return 0
    if not all(isinstance(t, Tensor) for t in (x, weight, y)) or x.dim() < 3:
        return 0
    groups = max(int(groups), 1)
    space_in, space_out = math.prod(x.shape[2:]), math.prod(y.shape[2:])
    blocked = -(-y.shape[1] // CONV_BLOCK) * CONV_BLOCK * space_out
    if backward:
        blocked = max(blocked, -(-x.shape[1] // CONV_BLOCK) * CONV_BLOCK * space_in)
    per_image = blocked
    if not _onednn(x, weight, groups):  # weight (C_out, C_in / groups, k...); transposed: (C_in, C_out / groups, k...)
        columns = weight.shape[1] * math.prod(weight.shape[2:]) * (space_in if transposed else space_out)
        per_image = max(blocked, columns)
    return x.shape[0] * per_image * x.element_size()


class _Tracker(TorchDispatchMode):
    """The bytes of the tensors created under it that are still alive after every op, and their peak, with a
    convolution's scratch (:func:`conv_workspace`) on top while it runs. A tensor is freed when the last
    reference to its storage goes, as on a real device; tensors made before (parameters) are not counted."""

    def __init__(self, backward: bool = False):
        super().__init__()
        self.backward = backward  # count each forward convolution's backward scratch too (a training step)
        self.live = 0
        self.peak = 0
        self.workspace = 0  # the largest scratch of one op
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, Tensor):
                storage = t.untyped_storage()
                if storage not in self._seen:
                    nbytes = storage.nbytes()
                    self._seen[storage] = True
                    self.live += nbytes
                    weakref.finalize(storage, self._free, nbytes)
        scratch = conv_workspace(func, args, out, self.backward)
        self.workspace = max(self.workspace, scratch)
        self.peak = max(self.peak, self.live + scratch)
        return out


def _line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def _meta_hint(text: str) -> str:
    """A build failure that only the meta device causes (a plugin reading a tensor's values while building)."""
    text = text if len(text) <= 150 else text[:147] + "..."
    return f"{text} (while sizing the model on the meta device; {ENV}=off skips this check)"


def _nbytes(value) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


def _build_meta(spec, registry, mode: _MetaMode) -> nn.Module:
    from genvae.core.model import build_model

    try:
        with mode:
            model = build_model(spec, registry, check=False)
            model.to(META)  # literal buffers (kept real while building) join the rest
    except BuildError as exc:
        text = str(exc)
        if "overflow" in text.lower():
            where = text.split(": ")[0]
            raise BuildError(f"{where}: a size in its options is too large (it overflows a 64-bit integer)") from None
        if "meta" in text.lower():
            raise BuildError(_meta_hint(text)) from None
        raise
    except (_Exceeded, GenvaeError):
        raise
    except Exception as exc:  # noqa: BLE001 - an untrusted spec must end in one line, whatever broke
        text = f"the model spec cannot be built: {_line(exc)}"
        raise BuildError(_meta_hint(text) if "meta" in text.lower() else text) from None
    finally:
        mode.counting = False
    return model


def _fresh_outputs(output, inputs) -> int:
    """Bytes of ``output`` that are new memory: not an input returned in place, nor a view of one."""
    if isinstance(output, (tuple, list)):
        return sum(_fresh_outputs(o, inputs) for o in output)
    if isinstance(output, dict):
        return sum(_fresh_outputs(o, inputs) for o in output.values())
    if not isinstance(output, Tensor):
        return 0
    base = output._base if output._base is not None else output
    if any(base is i or base is i._base for i in inputs if isinstance(i, Tensor)):
        return 0
    return output.numel() * output.element_size()


def _measure_forward(model, spec, batch: int, mode: _MetaMode) -> tuple[int, int]:
    """(bytes a training step keeps for backward, the largest convolution scratch of the step), from one
    training-mode meta forward at ``batch``.

    The outputs of every leaf module (less in-place results and views) are added up: those of the
    forward pass, which live through the whole step, plus those of the largest phase (the trainer
    runs the phases one after another on the same forward). Each convolution's scratch is counted for its
    forward and its backward (:func:`conv_workspace`).
    """
    count = [0]
    hooks = []

    def record(module, inputs, output):
        count[0] += _fresh_outputs(output, inputs)

    for module in model.modules():
        if next(module.children(), None) is None:
            hooks.append(module.register_forward_hook(record))
    tracker = _Tracker(backward=True)
    try:
        with mode, torch.no_grad(), tracker:
            x = torch.zeros(batch, *spec.image_shape, device=META)
            model.train()
            fwd = model(x)
            forward = x.numel() * x.element_size() + _nbytes(fwd.x_hat) + count[0]
            phases = [0]
            for phase in model.phases:
                count[0] = 0
                model.phase_terms(fwd, phase)
                phases.append(count[0])
    finally:
        for hook in hooks:
            hook.remove()
    return forward + max(phases), tracker.workspace


# estimates (and meta models) by registry, then by (what, spec as JSON): sizing a spec again costs nothing
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHE_SIZE = 64


def _cached(registry, key: tuple | None) -> Any:
    try:
        return _CACHE.get(registry, {}).get(key) if key is not None else None
    except TypeError:  # a registry that cannot be weakly referenced: no cache
        return None


def _remember(registry, key: tuple | None, result: object) -> None:
    if key is None:
        return
    try:
        table = _CACHE.setdefault(registry, {})
    except TypeError:
        return
    if len(table) >= _CACHE_SIZE:
        table.pop(next(iter(table)))
    table[key] = result


def _cache_key(spec, what: object) -> tuple | None:
    """(what is cached: a training batch, a program's name, ..., the spec as JSON); None: not cacheable."""
    try:
        return what, json.dumps(spec.to_dict(), sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return None


def _image_shape(model_or_spec) -> tuple[int, ...]:
    return tuple(getattr(model_or_spec, "spec", model_or_spec).image_shape)


def _images(model, batch: int) -> Tensor:
    return torch.zeros(batch, *model.spec.image_shape)


def _program_check(model, batch: int) -> object:
    """What the build's dry run does (genvae.core.model.dry_run): a pass at the posterior mean and every loss."""
    fwd = model(_images(model, batch), sample=False)
    return fwd, [loss(fwd, phase) for phase, losses in model._phase_losses.items() for loss in losses]


#: the programs genvae's commands run; a plugin passes its own to :func:`inference_batch` (``program=``)
PROGRAMS: dict[str, Program] = {
    "sample": lambda model, batch: model.sample(batch, META),  # prior draws, then generation
    "prior": lambda model, batch: model.prior.sample(batch, model, META),
    "generate": lambda model, batch: model.generate(torch.zeros(batch, *model.layout.shape)),
    "reconstruct": lambda model, batch: model.reconstruct(_images(model, batch)),
    "encode": lambda model, batch: model.encode(_images(model, batch)).mean,
    "check": _program_check,
}


def _meta_model(spec, registry) -> nn.Module:
    """``spec`` built on meta, once per registry and spec (a meta model holds no data)."""
    key = _cache_key(spec, "meta model")
    model = _cached(registry, key)
    if model is None:
        mode = _MetaMode()
        model = _build_meta(spec, registry, mode)
        _remember(registry, key, model)
    return model


def _peak(model, run: Program, batch: int) -> int:
    mode = _MetaMode()
    mode.counting = False  # the build's caps are behind us; a program may make many small tensors
    tracker = _Tracker()
    was_training = model.training
    model.eval()
    try:
        with mode, torch.no_grad(), tracker:
            out = run(model, batch)
            del out
    finally:
        model.train(was_training)
    return tracker.peak
