"""Writing images: grids of a model's images as PNG, JPEG, WebP, BMP or TIFF files marked as genvae's.

A file genvae writes carries its mark (PNG: a tEXt chunk; JPEG, WebP, TIFF: EXIF tag 0x0131; BMP, which has
no metadata: the header's reserved bytes), so a later command may replace it and never a file of the user's.
Every write is atomic (:mod:`genvae.core.files`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image

from genvae.core.decode import open_regular, to_uint8
from genvae.core.errors import DataError
from genvae.core.files import atomic_write, check_writable_file

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
        raise DataError(f"{os.fspath(path)} exists and was not written by genvae; remove it or choose another path")


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
