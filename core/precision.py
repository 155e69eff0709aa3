"""Mixed precision: which float type a model's networks run in, decided once per run and device.

``train.amp`` (``--amp``) is one of :data:`AMP_MODES`. ``auto`` turns bf16 autocast on where it was measured
faster and numerically safe (a CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX-BF16, whose bf16 dot products
PyTorch's oneDNN kernels use) and leaves float32 elsewhere. The networks (encoder, latent transform, decoder, a
loss's discriminator or feature network) run under :func:`torch.autocast`; the posterior's parameters, the
decoder's output, every loss, the KL and a discriminator's logits are float32, and the weights stay float32, so
checkpoints are the same whichever precision trained them.
"""

from __future__ import annotations

import functools
import sys
from contextlib import AbstractContextManager, nullcontext

import attrs
import torch

from genvae.core.errors import GenvaeError

#: ``auto``: bf16 where measured faster and safe, else float32; ``on``: bf16 where supported, else fp16
#: (the bare ``--amp``); ``bf16``/``fp16``: that type or an error; ``off``: float32
AMP_MODES = ("auto", "on", "bf16", "fp16", "off")

_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_bf16_units() -> tuple[str, ...]:
    """The CPU's bf16 arithmetic units (``avx512_bf16``, ``amx_bf16``) as the OS reports them; empty when it has
    none or the OS does not say (only Linux's /proc/cpuinfo is read: elsewhere ``auto`` stays float32)."""
    if not sys.platform.startswith("linux"):
        return ()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return tuple(u for u in _CPU_BF16_FLAGS if u in flags)
    except OSError:
        return ()
    return ()


@attrs.frozen
class Precision:
    """The float type a model's networks compute in on one device type; ``dtype`` None is plain float32.

    ``reason`` says why, for the run's first line and the report."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None
    reason: str = "float32"

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def name(self) -> str:
        """``bf16``, ``fp16`` or ``fp32``."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")  # type: ignore[arg-type]

    def autocast(self) -> AbstractContextManager:
        """The context the networks run in: :func:`torch.autocast` to ``dtype``, or nothing in float32."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def full(self) -> AbstractContextManager:
        """A float32 island inside :meth:`autocast` (a loss's arithmetic, a discriminator's logits)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, enabled=False)


FLOAT32 = Precision()

_LOW = (torch.bfloat16, torch.float16)


def to_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if autocast left it in bf16/fp16 (float64 and float32 pass unchanged)."""
    return t.float() if t.dtype in _LOW else t


def resolve_precision(mode: str, device: torch.device | str) -> Precision:
    """What ``train.amp`` = ``mode`` means on ``device``; an impossible request is one line naming what is
    accepted there."""
    if mode not in AMP_MODES:
        raise GenvaeError(f"--amp {mode!r} is not one of {', '.join(AMP_MODES)}")
    device = torch.device(device)
    kind = device.type
    if mode == "off":
        return Precision(kind, None, "float32 (--amp off)")
    if kind == "cuda":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if mode == "auto":
            if bf16:
                return Precision(kind, torch.bfloat16, "bf16 autocast (--amp auto: the GPU has bf16)")
            return Precision(kind, None, "float32 (--amp auto: the GPU has no bf16; --amp fp16 scales losses)")
        if mode == "bf16" and not bf16:
            raise GenvaeError("--amp bf16: this GPU has no bf16; use --amp fp16 (with loss scaling) or --amp off")
        dtype = torch.float16 if mode == "fp16" or (mode == "on" and not bf16) else torch.bfloat16
        return Precision(kind, dtype, f"{'bf16' if dtype == torch.bfloat16 else 'fp16'} autocast (--amp {mode})")
    if kind == "cpu":
        units = cpu_bf16_units()
        have = f"the CPU has {' and '.join(u.upper().replace('_', '-') for u in units)}" if units else ""
        if mode == "fp16":
            raise GenvaeError("--amp fp16 runs on CUDA only; on the CPU use --amp bf16 (or auto, or off)")
        if mode == "auto":
            if units:
                return Precision(kind, torch.bfloat16, f"bf16 autocast (--amp auto: {have})")
            return Precision(kind, None, "float32 (--amp auto: the CPU has no AVX512-BF16 or AMX-BF16)")
        # bf16 or on: asked for; without the units PyTorch emulates it (slower, same numerics)
        why = have or "the CPU has no bf16 units: emulated, expect it slower than float32"
        return Precision(kind, torch.bfloat16, f"bf16 autocast (--amp {mode}; {why})")
    if mode == "auto":
        return Precision(kind, None, f"float32 (--amp auto: no mixed precision on {kind})")
    raise GenvaeError(f"--amp {mode}: mixed precision runs on a CPU or a CUDA GPU, not on {kind}; use --amp off")


def run_precision(amp: str, trained_with: str, device: torch.device | str) -> Precision:
    """The precision a model runs in on ``device`` outside training: ``amp`` (a mode), or with ``amp="config"``
    its ``train.amp`` (``trained_with``), where fp16 off CUDA means ``auto`` (a GPU's fp16 is not a CPU's)."""
    mode = trained_with if amp == "config" else amp
    if amp == "config" and mode == "fp16" and torch.device(device).type != "cuda":
        mode = "auto"
    return resolve_precision(mode, device)


def uses_channels_last(mode: str, model: torch.nn.Module) -> bool:
    """``train.channels_last`` for ``model``: ``auto`` is on for a model with 2-D convolutions (the layout only
    changes 4-D tensors; measured faster on the CPU for every conv preset, fp32 and bf16: docs/performance.md)."""
    if mode == "auto":
        return any(isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d) for m in model.modules())
    return mode == "on"
