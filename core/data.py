"""The data layer: turns ``--data`` (a folder of images, tar shards or a dataset name) into one uint8 tensor.

The engine knows no concrete dataset: names come from plugins (``genvae_register_datasets``).
Everything is decoded once as uint8 (N, C, H, W) at the training size: a folder (loose images and
uncompressed ``.tar`` shards, WebDataset style, read in place without extracting) goes to the
on-disk cache of ``genvae.core.cache`` and is memory-mapped from there, so it may be larger than
memory; a dataset plugin's tensor stays in memory. The model sees ``to_model_range(batch)`` in [-1, 1].
Images of any size are fitted the same way everywhere
(``fit_image`` / ``fit_tensor``): the central square (side = the shorter side) is cropped and
resized to image_size x image_size, which is the same as "resize the shorter side, centre-crop".
"""

from __future__ import annotations

import difflib
import hashlib
import io
import math
import os
import stat
import tarfile
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, NamedTuple

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from genvae.core.errors import DataError
from genvae.core.files import atomic_write, check_writable_file

DEFAULT_DATASET = "shapes"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Transparent pixels are composited on white: what image viewers show, and what icons and
# sprites (the usual images with alpha) are drawn against.
ALPHA_BACKGROUND = (255, 255, 255)

_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_PARALLEL_MIN = 32  # below this many files threads cost more than they save
_BLOCK = 16  # files per thread task


@attrs.define(eq=False)
class ImageData:
    """Decoded training images: uint8 (N, C, H, W), contiguous, on the CPU.

    ``images`` may be shared with the in-process cache: treat it as read-only.
    """

    images: torch.Tensor
    source: str
    skipped: list[str] = attrs.field(factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        shape = "x".join(str(d) for d in self.images.shape[1:])
        return f"ImageData({len(self)} images {shape} from {self.source}, {len(self.skipped)} skipped)"


# ---------------------------------------------------------------------------------------------
# fitting single images and tensors to (channels, image_size, image_size)


def _check_target(image_size: int, channels: int) -> None:
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
    _check_target(image_size, channels)
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
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def _not_regular(mode: int) -> str:
    return f"{NOT_REGULAR} ({_kind(mode)})"


def _reason(exc: BaseException) -> str:
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
            raise NotRegularFileError(_not_regular(st.st_mode))
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
            raise OSError(f"{self.name} claims {self.size:,} bytes, over the {MAX_MEMBER_BYTES // 2**20} MiB genvae "
                          "reads for one image")
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
                    bad.append((str(member), f"claims {m.size:,} bytes, over the {MAX_MEMBER_BYTES // 2**20} MiB "
                                             "genvae reads for one image"))
                else:
                    members.append(member)
    except (OSError, tarfile.TarError) as exc:
        reason = "not an uncompressed tar (compressed shards cannot be read in place)" if isinstance(
            exc, tarfile.ReadError) else _reason(exc)
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
    _check_target(image_size, channels)
    try:
        return _open_and_fit(path, image_size, channels)
    except MemoryError:
        raise
    except Exception as exc:  # PIL raises many types for broken files: all mean "unreadable"
        raise DataError(f"cannot read image {os.fspath(path)}: {_reason(exc)}") from None


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
            failures.append((i, _reason(exc)))
    return failures


def decode_images(
    sources: Sequence[Any], image_size: int, channels: int, *, workers: int | None = None
) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """Decode and fit many images (paths, bytes or file objects), in threads (PIL releases the GIL).

    Returns the uint8 (M, C, S, S) tensor of the readable ones, in order, and ``(index, reason)``
    for each source that could not be read; a broken file never stops the others.
    """
    _check_target(image_size, channels)
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
        chunk = F.interpolate(chunk, size=(image_size, image_size), mode="bilinear", align_corners=False,
                              antialias=side > image_size)
        out[start : start + 4096] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def fit_tensor(images: torch.Tensor, image_size: int, channels: int, mode: str = "crop") -> torch.Tensor:
    """uint8 (N, C, h, w) -> uint8 (N, channels, image_size, image_size), contiguous, CPU.

    ``mode="crop"``: central square resized, as ``fit_image``. ``mode="pad"``: centred in a zero
    (black) frame when it fits with an even margin on each axis (28 -> 32 for MNIST-style data keeps
    every pixel as it is); otherwise it falls back to "crop". Grey -> RGB repeats the channel;
    RGB -> grey uses PIL's ITU-R 601-2 luma weights.
    """
    _check_target(image_size, channels)
    if mode not in ("crop", "pad"):
        raise ValueError(f"mode must be 'crop' or 'pad', got {mode!r}")
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise DataError(
            f"expected a uint8 (N, 1|3, H, W) tensor, got {images.dtype} {tuple(images.shape)}"
        )
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


# Output formats by extension: (PIL format, save options). The ``Software`` tag marks the file as
# genvae's (PNG: a tEXt chunk; JPEG, WebP, TIFF: EXIF tag 0x0131; BMP, which has no metadata: the
# header's reserved bytes, which BMP leaves to the writing application).
OUTPUT_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".png": ("PNG", {}),
    ".jpg": ("JPEG", {"quality": 95}),
    ".jpeg": ("JPEG", {"quality": 95}),
    ".webp": ("WEBP", {"quality": 95}),
    ".bmp": ("BMP", {}),
    ".tif": ("TIFF", {}),
    ".tiff": ("TIFF", {}),
}
SOFTWARE = "genvae"
_EXIF_SOFTWARE = 0x0131
_BMP_MARK_OFFSET = 6
_BMP_MARK = b"gvae"


def _output_format(path: str | os.PathLike) -> str:
    """The PIL format ``path``'s extension names; DataError (one line) for any other or none."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in OUTPUT_FORMATS:
        accepted = ", ".join(e.lstrip(".") for e in OUTPUT_FORMATS)
        what = f"extension '{ext}' is not an image format genvae writes" if ext else "no file extension"
        raise DataError(f"cannot write image {os.fspath(path)}: {what}; use one of {accepted}")
    return OUTPUT_FORMATS[ext][0]


def carries_genvae_mark(f: BinaryIO) -> bool:
    """Whether the image open at ``f`` carries genvae's mark (written by ``save_grid``)."""
    try:
        head = f.read(_BMP_MARK_OFFSET + len(_BMP_MARK))
        if head[:2] == b"BM":
            return head[_BMP_MARK_OFFSET:] == _BMP_MARK
        f.seek(0)
        with Image.open(f) as img:
            if img.format == "PNG":
                return getattr(img, "text", {}).get("Software") == SOFTWARE
            return img.getexif().get(_EXIF_SOFTWARE) == SOFTWARE
    except MemoryError:
        raise
    except Exception:
        return False


def written_by_genvae(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file carrying genvae's mark (written by ``save_grid``).

    False for anything else: a missing, unreadable or foreign file, a FIFO or device (never
    waited on).
    """
    try:
        with open_regular(path) as f:
            return carries_genvae_mark(f)
    except MemoryError:
        raise
    except Exception:
        return False


def _check_not_foreign(path: str | os.PathLike) -> None:
    if os.path.lexists(path) and not written_by_genvae(path):
        raise DataError(f"{os.fspath(path)} exists and was not written by genvae; remove it or choose "
                        "another path")


def check_image_output(path: str | os.PathLike) -> None:
    """Refuse, before any work, a path ``save_grid`` would refuse.

    The extension must name a format genvae writes (png, jpg/jpeg, webp, bmp, tif/tiff); the
    destination must be absent or a regular file (not a symlink: ``UnsafePathError``), and an
    existing file must be one genvae wrote (a user's file is never overwritten: ``DataError``).
    """
    _output_format(path)
    check_writable_file(path)
    _check_not_foreign(path)


def grid_array(images: torch.Tensor, nrow: int) -> np.ndarray:
    """The uint8 grid of images (N, C, H, W) in [-1, 1] (or uint8), as torchvision's ``make_grid`` lays it out
    (2 black pixels between and around the images; one image alone, unpadded): (H', W', C), or (H', W') for
    grey. Each image is converted on its own, so the grid and one float image are all that is allocated."""
    n, c, h, w = images.shape

    def tile(k: int) -> np.ndarray:
        one = images[k].cpu()
        pixels = (one if one.dtype == torch.uint8 else to_uint8(one)).permute(1, 2, 0).numpy()
        return pixels[:, :, 0] if c == 1 else pixels

    if n == 1:
        return np.ascontiguousarray(tile(0))
    across = min(nrow, n)
    down = math.ceil(n / across)
    grid = np.zeros(((h + 2) * down + 2, (w + 2) * across + 2, *((c,) if c > 1 else ())), dtype=np.uint8)
    for k in range(n):
        y, x = divmod(k, across)
        grid[y * (h + 2) + 2 : y * (h + 2) + 2 + h, x * (w + 2) + 2 : x * (w + 2) + 2 + w] = tile(k)
    return grid


def grid_writer(images: torch.Tensor, ext: str, nrow: int | None = None) -> Callable[[BinaryIO], None]:
    """Images in [-1, 1] (N, C, H, W), or uint8 images, as one grid image marked as genvae's, in the format of
    extension ``ext`` (``.png``, ...; see ``OUTPUT_FORMATS``; JPEG at quality 95): a function writing it to a
    binary file. What it allocates besides its input is bounded (:func:`genvae.core.budget.grid_bytes`)."""
    fmt, options = OUTPUT_FORMATS[ext.lower()][0], dict(OUTPUT_FORMATS[ext.lower()][1])
    if images.dim() == 3:
        images = images.unsqueeze(0)
    n, c = images.shape[:2]
    if c not in (1, 3):
        raise ValueError(f"save_grid takes 1 or 3 channels, got {c}")
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    grid = grid_array(images, nrow)
    pil = Image.fromarray(grid, "L" if c == 1 else "RGB")
    del grid
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Software", SOFTWARE)
        options["pnginfo"] = info
    elif fmt != "BMP":
        exif = Image.Exif()
        exif[_EXIF_SOFTWARE] = SOFTWARE
        options["exif"] = exif

    def write(f: BinaryIO) -> None:
        pil.save(f, format=fmt, **options)
        if fmt == "BMP":  # BMP has no metadata field: the mark goes in the header's reserved bytes
            f.seek(_BMP_MARK_OFFSET)
            f.write(_BMP_MARK)
            f.seek(0, os.SEEK_END)

    return write


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> None:
    """Write images in [-1, 1] (N, C, H, W), or uint8 images, as one grid image, atomically; nrow defaults to
    ~sqrt(N).

    The format follows the extension (see ``OUTPUT_FORMATS``) and the file is marked as genvae's.
    ``path`` is checked first (``check_image_output``): an unknown extension, a symlink or a file
    genvae did not write is refused before any work; genvae's own outputs are replaced. The image is
    written to a temporary file in the same folder and renamed over ``path``
    (``genvae.core.files.atomic_write``), so a reader (or a crash) never sees half a file.
    """
    check_image_output(path)
    write = grid_writer(images, os.path.splitext(os.fspath(path))[1], nrow)

    def guarded(f: BinaryIO) -> None:
        write(f)
        _check_not_foreign(path)  # nothing of the user's appeared there while this was written

    atomic_write(path, guarded)


# ---------------------------------------------------------------------------------------------
# load_data: folder or dataset name, decoded once per process

_CACHE: dict[tuple, ImageData] = {}


def clear_cache() -> None:
    """Forget every decoded data set (the next load_data decodes again)."""
    _CACHE.clear()


def _image_files(folder: str, shards: list[str] | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """Image files under folder, recursive, sorted by path parts; hidden files and folders skipped.

    Returns ``(paths, rejected)``: ``paths`` are regular files (or symlinks to regular files);
    ``rejected`` holds ``(path, reason)`` for every other entry with an image extension (a FIFO,
    device, socket, folder or broken link), which is reported as skipped, never opened. A folder
    with an image extension is still searched (its files are listed as usual). Regular ``.tar`` files are
    appended to ``shards`` when it is given.
    """
    found: list[tuple[tuple[str, ...], str]] = []
    found_shards: list[tuple[tuple[str, ...], str]] = []
    rejected: list[tuple[tuple[str, ...], str, str]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .git, .ipynb_checkpoints ...
        rel = os.path.relpath(dirpath, folder)
        parts = () if rel == os.curdir else tuple(rel.split(os.sep))
        for name in (*filenames, *dirnames):
            if shards is not None and name.lower().endswith(".tar") and not name.startswith("."):
                path = os.path.join(dirpath, name)
                if os.path.isfile(path):
                    found_shards.append(((*parts, name), path))
                continue
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(dirpath, name)
            try:
                mode = os.stat(path).st_mode  # follows symlinks; never opens (a FIFO cannot block)
            except OSError as exc:
                rejected.append(((*parts, name), path, _reason(exc)))
                continue
            if stat.S_ISREG(mode):
                found.append(((*parts, name), path))
            else:
                rejected.append(((*parts, name), path, _not_regular(mode)))
    found.sort()
    rejected.sort()
    if shards is not None:
        shards.extend(path for _, path in sorted(found_shards))
    return [path for _, path in found], [(path, reason) for _, path, reason in rejected]


def _signature(paths: list[str]) -> str:
    """Changes when a file is added, removed, resized or touched."""
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{p}\0missing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _load_folder(folder: str, image_size: int, channels: int) -> ImageData:
    from functools import partial

    from genvae.core import cache

    shards: list[str] = []
    paths, rejected = _image_files(folder, shards)
    signature = _signature(paths + shards)
    key = ("folder", folder, signature, tuple(rejected), image_size, channels)
    if key in _CACHE:
        return _CACHE[key]
    exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    if not paths and not rejected and not shards:
        raise DataError(f"no image files in folder '{folder}' (looked recursively for {exts}, and .tar shards)")
    sources: list[Any] = list(paths)
    for shard in shards:
        members, bad_shard = tar_members(shard)
        sources.extend(members)
        rejected.extend(bad_shard)
    root = cache.cache_root()
    if root is None:  # GENVAE_CACHE=off: decode into memory
        images, failures = decode_images(sources, image_size, channels)
        skipped_with_reasons = [(str(sources[i]), reason) for i, reason in failures]
    else:
        entry = cache.CachedImages(root, cache.cache_key("folder", folder, signature, image_size, channels),
                                   f"folder {folder}", (channels, image_size, image_size))
        loaded = entry.load()
        if loaded is not None:
            images, skipped_with_reasons = loaded
        else:
            images, skipped_with_reasons = entry.build(
                sources, partial(decode_block, image_size=image_size, channels=channels),
                describe=lambda i: str(sources[i]))
    failed = sorted([*rejected, *skipped_with_reasons])
    skipped = [path for path, _ in failed]
    if not len(images):
        raise DataError(
            f"no readable image in folder '{folder}': all {len(failed)} files failed "
            f"(first: {skipped[0]}: {failed[0][1]}); accepted: {exts}, uncompressed .tar shards of them"
        )
    if failed:
        warnings.warn(
            f"skipped {len(failed)} unreadable image file(s) in '{folder}', first: {skipped[0]} "
            f"({failed[0][1]})",
            stacklevel=3,
        )
    data = ImageData(images, f"folder {folder}", skipped)  # the count is len(data): callers print it once
    _CACHE[key] = data
    return data


def _load_dataset(entry, root, image_size, channels, split, download) -> ImageData:
    key = ("dataset", entry.name, entry.plugin, id(entry.obj), root, image_size, channels, split)
    if key in _CACHE:
        return _CACHE[key]
    images = entry.obj(root=root, image_size=image_size, channels=channels, split=split, download=download)
    expected = (channels, image_size, image_size)
    if (
        not isinstance(images, torch.Tensor)
        or images.dtype != torch.uint8
        or images.dim() != 4
        or tuple(images.shape[1:]) != expected
    ):
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(
            f"dataset '{entry.name}' (plugin '{entry.plugin}') returned {got}; expected uint8 (N, {channels}, "
            f"{image_size}, {image_size})"
        )
    if images.shape[0] == 0:
        raise DataError(f"dataset '{entry.name}' (plugin '{entry.plugin}') returned no images for split '{split}'")
    where = f" from {root}" if root else ""
    data = ImageData(images.cpu().contiguous(), f"dataset '{entry.name}' split '{split}'{where}")
    _CACHE[key] = data
    return data


def load_data(
    data: str | os.PathLike | None,
    *,
    image_size: int,
    channels: int,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = False,
    registry=None,
) -> ImageData:
    """Training images from a folder or a registered dataset, as uint8 (N, channels, S, S).

    ``data``: None -> the default dataset (``DEFAULT_DATASET``, needs nothing installed); an
    existing folder -> every image under it (``split`` is ignored: a folder is one split); a
    dataset name -> its plugin's loader, given ``root``, ``split`` and ``download``. A name that is
    both a dataset and a folder in the current directory means the dataset (write ``./NAME``).
    Results are cached for the process: a second call with the same arguments decodes nothing.
    """
    _check_target(image_size, channels)
    if registry is None:
        from genvae.core.registry import get_registry

        registry = get_registry()
    name = DEFAULT_DATASET if data is None else os.fspath(data)
    datasets = registry.names("dataset")
    is_dir = data is not None and os.path.isdir(os.path.expanduser(name))
    if name in datasets:
        if is_dir:
            warnings.warn(f"'{name}' is a dataset name and a folder here; using the dataset "
                          f"(write ./{name} for the folder)", stacklevel=2)
        root = os.path.abspath(os.path.expanduser(os.fspath(root))) if root is not None else None
        return _load_dataset(registry.get("dataset", name), root, image_size, channels, split, download)
    if is_dir:
        return _load_folder(os.path.realpath(os.path.expanduser(name)), image_size, channels)
    if os.path.isfile(name):
        raise DataError(f"data '{name}' is a file; give a folder of images or a dataset name "
                        f"({', '.join(datasets) or 'none registered'})")
    close = difflib.get_close_matches(name, datasets, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    listing = ", ".join(datasets) if datasets else "none"
    raise DataError(
        f"unknown data '{name}': not a folder and not a dataset; {hint}datasets: {listing} "
        "(or give a folder of images)"
    )


def load_labels(data: str | os.PathLike | None, *, split: str = "train", root: str | os.PathLike | None = None,
                registry=None) -> tuple[torch.Tensor, tuple[str, ...]]:
    """The class labels of a registered dataset, int64 (N,) in the order of its images, and its class names.

    A dataset has labels when its plugin registered a ``labels`` loader (``register(name, loader,
    labels=load_labels, classes=(...))``); anything else is a one-line error."""
    if registry is None:
        from genvae.core.registry import get_registry

        registry = get_registry()
    name = DEFAULT_DATASET if data is None else os.fspath(data)
    labelled = [n for n in registry.names("dataset") if registry.get("dataset", n).extra.get("labels")]
    if name not in registry.names("dataset") or name not in labelled:
        raise DataError(f"'{name}' has no class labels; datasets with labels: {', '.join(labelled) or 'none'}")
    entry = registry.get("dataset", name)
    root = os.path.abspath(os.path.expanduser(os.fspath(root))) if root is not None else None
    labels = entry.extra["labels"](root=root, split=split)
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise DataError(f"dataset '{name}' (plugin '{entry.plugin}') returned labels that are not a 1-D tensor")
    classes = tuple(str(c) for c in entry.extra.get("classes", ())) or tuple(
        str(c) for c in range(int(labels.max()) + 1))
    return labels.long(), classes
