"""Reading images: files, tar members and tensors decoded to uint8 and fitted to a model's size and channels.

Images of any size are fitted the same way everywhere (``fit_image`` / ``fit_tensor``): the central square
(side = the shorter side) is cropped and resized to image_size x image_size, which is the same as "resize the
shorter side, centre-crop". Only regular files are read (a FIFO or device is refused at once, never waited
on). The model sees images in [-1, 1] (``to_model_range``); ``to_uint8`` is its inverse.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from genvae.core.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Transparent pixels are composited on white: what image viewers show, and what icons and
# sprites (the usual images with alpha) are drawn against.
ALPHA_BACKGROUND = (255, 255, 255)

_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_PARALLEL_MIN = 32  # below this many files threads cost more than they save
_BLOCK = 16  # files per thread task


# ---------------------------------------------------------------------------------------------
# fitting single images and tensors to (channels, image_size, image_size)


def check_target(image_size: int, channels: int) -> None:
    if not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float grey to 8-bit: PIL's own convert clips at 255 instead of scaling."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        finite = arr[np.isfinite(arr)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0  # [0, 1] floats vs 0-255 floats
        out = np.nan_to_num(arr * scale)
    elif img.mode.startswith("I;16") or arr.max(initial=0) > 255:  # 16-bit data (mode I when >255)
        out = arr.astype(np.float64) / 257.0
    else:
        out = arr.astype(np.float64)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "L")


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode to "L" (channels=1) or "RGB" (channels=3); alpha is composited on white."""
    target = "L" if channels == 1 else "RGB"
    if img.mode in _HIGH_DEPTH_MODES:
        img = _high_depth_to_l(img)
    if "transparency" in img.info and img.mode in ("P", "L", "RGB", "1"):
        img = img.convert("RGBA")  # palette / colour-key transparency becomes real alpha
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != target:
        img = img.convert(target)  # CMYK, YCbCr, P, 1, L<->RGB ...
    return img


def fit_image(img: Image.Image, image_size: int, channels: int) -> torch.Tensor:
    """A PIL image of any mode and size -> uint8 tensor (channels, image_size, image_size).

    The central square (side = shorter side) is cropped, then resized (bilinear, antialiased by
    PIL when shrinking). Cropping before resizing keeps pixels outside the square from bleeding in.
    """
    check_target(image_size, channels)
    img = _to_mode(img, channels)
    w, h = img.size
    side = min(w, h)
    if side < 1:
        raise ValueError(f"empty image ({w}x{h})")
    left, top = (w - side) // 2, (h - side) // 2
    if (w, h) != (side, side):
        img = img.crop((left, top, left + side, top + side))
    if side != image_size:
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())  # copy: PIL's buffer is read-only, and (C, H, W) contiguous


class NotRegularFileError(OSError):
    """A path that names a FIFO, device, socket or folder where an image file was expected."""


NOT_REGULAR = "not a regular file"


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def not_regular_reason(mode: int) -> str:
    return f"{NOT_REGULAR} ({_kind(mode)})"


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, NotRegularFileError):
        return str(exc)
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def open_regular(path: str | os.PathLike) -> io.BufferedReader:
    """Open ``path`` for binary reading only if it is a regular file (a symlink to one is fine).

    The open is non-blocking, so a FIFO or a device put where an image was expected (even swapped
    in after a folder was listed) is refused at once instead of hanging; the check is made on the
    opened descriptor (``fstat``), so nothing can be swapped in between the check and the read.
    Raises :class:`NotRegularFileError` (an ``OSError``) for anything but a regular file.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(not_regular_reason(st.st_mode))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _decode_and_fit(source: Any, image_size: int, channels: int) -> torch.Tensor:
    with Image.open(source) as img:
        img.draft(None, (image_size, image_size))  # JPEG: decode at a reduced scale >= the target
        orientation = img.getexif().get(0x0112, 1)
        if orientation != 1:
            from PIL import ImageOps

            img = ImageOps.exif_transpose(img)
        return fit_image(img, image_size, channels)


#: the most bytes one image inside a tar shard may claim; a larger member is skipped (a crafted header claiming
#: 10**15 bytes must not become one read of that size)
MAX_MEMBER_BYTES = 256 * 2**20


class TarMember(NamedTuple):
    """One image inside an uncompressed tar shard: read in place (seek + read), never extracted."""

    tar: str
    offset: int
    size: int
    name: str

    def __str__(self) -> str:
        return f"{self.tar}:{self.name}"

    def read(self) -> bytes:
        if self.size > MAX_MEMBER_BYTES:
            raise OSError(
                f"{self.name} claims {self.size:,} bytes, over the {MAX_MEMBER_BYTES // 2**20} MiB genvae "
                "reads for one image"
            )
        with open_regular(self.tar) as f:
            end = os.fstat(f.fileno()).st_size
            if self.offset + self.size > end:
                raise OSError(f"{self.name} claims {self.size:,} bytes, past the end of the {end:,}-byte shard")
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self.name} is cut short in {self.tar} ({len(data)} of {self.size} bytes)")
        return data


def tar_members(path: str) -> tuple[list[TarMember], list[tuple[str, str]]]:
    """The image members of an uncompressed tar shard (by extension, hidden names skipped, in archive order),
    and ``(source, reason)`` for what cannot be read: the shard itself (compressed, broken), or a member whose
    header claims more bytes than the shard holds after it (skipped, and the shard's members before it are read;
    none can be found after it) or than :data:`MAX_MEMBER_BYTES` (skipped; the members after it are read)."""
    members: list[TarMember] = []
    bad: list[tuple[str, str]] = []
    try:
        with open_regular(path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            end = os.fstat(f.fileno()).st_size
            for m in tar:
                member = TarMember(path, m.offset_data, m.size, m.name)
                if m.isfile() and m.offset_data + m.size > end:  # nothing after it can be found: the next header
                    bad.append((str(member), f"claims {m.size:,} bytes, past the end of the {end:,}-byte shard"))
                    break  # would lie past the end too
                base = m.name.rsplit("/", 1)[-1]
                if not (m.isfile() and not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)):
                    continue
                if m.size > MAX_MEMBER_BYTES:
                    bad.append(
                        (
                            str(member),
                            f"claims {m.size:,} bytes, over the {MAX_MEMBER_BYTES // 2**20} MiB "
                            "genvae reads for one image",
                        )
                    )
                else:
                    members.append(member)
    except (OSError, tarfile.TarError) as exc:
        reason = (
            "not an uncompressed tar (compressed shards cannot be read in place)"
            if isinstance(exc, tarfile.ReadError)
            else failure_reason(exc)
        )
        return members, [*bad, (path, reason)]
    return members, bad


def _open_and_fit(source: Any, image_size: int, channels: int) -> torch.Tensor:
    """Decode one file (path, bytes, file object or tar member) and fit it; paths are opened with
    ``open_regular``."""
    if isinstance(source, TarMember):
        source = source.read()
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(source)
    if not isinstance(source, str | os.PathLike):
        return _decode_and_fit(source, image_size, channels)
    from PIL import UnidentifiedImageError

    with open_regular(source) as f:
        try:
            return _decode_and_fit(f, image_size, channels)
        except UnidentifiedImageError:  # PIL names the file object; name the path as it would have
            raise UnidentifiedImageError(f"cannot identify image file {os.fspath(source)!r}") from None


def read_image(path: str | os.PathLike, image_size: int, channels: int) -> torch.Tensor:
    """One image file -> uint8 tensor (channels, image_size, image_size), fitted like training data.

    Only a regular file is read (a FIFO or device is refused at once, never waited on). Raises
    :class:`DataError` with one line, ``cannot read image PATH: REASON``.
    """
    check_target(image_size, channels)
    try:
        return _open_and_fit(path, image_size, channels)
    except MemoryError:
        raise
    except Exception as exc:  # PIL raises many types for broken files: all mean "unreadable"
        raise DataError(f"cannot read image {os.fspath(path)}: {failure_reason(exc)}") from None


def decode_block(sources: Sequence[Any], out: Any, start: int, image_size: int, channels: int) -> list[tuple[int, str]]:
    """Decode ``sources`` into rows ``start:`` of ``out`` (a uint8 tensor, or a memory-mapped array in the image
    cache's worker processes); ``(index into sources, reason)`` per source that could not be read."""
    failures = []
    for i, source in enumerate(sources):
        try:
            out[start + i] = _open_and_fit(source, image_size, channels)
        except MemoryError:
            raise
        except Exception as exc:  # PIL raises many types for broken files: all mean "unreadable"
            failures.append((i, failure_reason(exc)))
    return failures


def decode_images(
    sources: Sequence[Any], image_size: int, channels: int, *, workers: int | None = None
) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """Decode and fit many images (paths, bytes or file objects), in threads (PIL releases the GIL).

    Returns the uint8 (M, C, S, S) tensor of the readable ones, in order, and ``(index, reason)``
    for each source that could not be read; a broken file never stops the others.
    """
    check_target(image_size, channels)
    out = torch.empty((len(sources), channels, image_size, image_size), dtype=torch.uint8)
    failures: list[tuple[int, str]] = []

    def block(start: int) -> None:
        chunk = sources[start : start + _BLOCK]
        failures.extend((start + i, reason) for i, reason in decode_block(chunk, out, start, image_size, channels))

    workers = workers or min(8, os.cpu_count() or 1)
    if workers > 1 and len(sources) >= _PARALLEL_MIN:
        with ThreadPoolExecutor(workers) as pool:  # blocks, not one future per file (CelebA: 200k)
            list(pool.map(block, range(0, len(sources), _BLOCK)))
    else:
        for start in range(0, len(sources), _BLOCK):
            block(start)
    failures.sort()
    if failures:
        bad = {i for i, _ in failures}
        keep = torch.tensor([i for i in range(len(sources)) if i not in bad], dtype=torch.long)
        out = out.index_select(0, keep)
    return out, failures


def _resize_square(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (N, C, h, w) -> central square crop resized to image_size, in chunks to bound memory."""
    n, c, h, w = x.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, :, top : top + side, left : left + side]
    if side == image_size:
        return x.contiguous()
    out = torch.empty((n, c, image_size, image_size), dtype=torch.uint8)
    for start in range(0, n, 4096):
        chunk = x[start : start + 4096].float()
        chunk = F.interpolate(
            chunk, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=side > image_size
        )
        out[start : start + 4096] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def fit_tensor(images: torch.Tensor, image_size: int, channels: int, mode: str = "crop") -> torch.Tensor:
    """uint8 (N, C, h, w) -> uint8 (N, channels, image_size, image_size), contiguous, CPU.

    ``mode="crop"``: central square resized, as ``fit_image``. ``mode="pad"``: centred in a zero
    (black) frame when it fits with an even margin on each axis (28 -> 32 for MNIST-style data keeps
    every pixel as it is); otherwise it falls back to "crop". Grey -> RGB repeats the channel;
    RGB -> grey uses PIL's ITU-R 601-2 luma weights.
    """
    check_target(image_size, channels)
    if mode not in ("crop", "pad"):
        raise ValueError(f"mode must be 'crop' or 'pad', got {mode!r}")
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"expected a uint8 (N, 1|3, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
    x = images.cpu()
    if x.shape[1] != channels:
        if channels == 3:
            x = x.expand(-1, 3, -1, -1)
        else:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    h, w = x.shape[-2:]
    dh, dw = image_size - h, image_size - w
    if mode == "pad" and dh >= 0 and dw >= 0 and dh % 2 == 0 and dw % 2 == 0:
        if dh == dw == 0:
            return x.contiguous()
        out = torch.zeros((x.shape[0], channels, image_size, image_size), dtype=torch.uint8)
        out[:, :, dh // 2 : dh // 2 + h, dw // 2 : dw // 2 + w] = x
        return out
    return _resize_square(x, image_size)


# ---------------------------------------------------------------------------------------------
# model range and image files


def to_model_range(batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images -> float in [-1, 1] (x / 127.5 - 1), on the batch's device."""
    if batch.dtype != torch.uint8:
        raise TypeError(f"to_model_range takes uint8 images, got {batch.dtype}")
    return batch.to(dtype) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] (clamped) -> uint8; inverse of ``to_model_range``."""
    return ((x.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round_().to(torch.uint8)
