"""The data layer: turns ``--data`` (a folder of images or a dataset name) into one uint8 tensor.

The engine knows no concrete dataset: names come from plugins (``genvae_register_datasets``).
Everything is decoded once, into memory, as uint8 (N, C, H, W) at the training size; the model
sees ``to_model_range(batch)`` in [-1, 1]. Images of any size are fitted the same way everywhere
(``fit_image`` / ``fit_tensor``): the central square (side = the shorter side) is cropped and
resized to image_size x image_size, which is the same as "resize the shorter side, centre-crop".
"""

from __future__ import annotations

import difflib
import hashlib
import io
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from genvae.core.errors import DataError

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


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _open_and_fit(source: Any, image_size: int, channels: int) -> torch.Tensor:
    """Decode one file (path, bytes or file object) and fit it."""
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(source)
    with Image.open(source) as img:
        img.draft(None, (image_size, image_size))  # JPEG: decode at a reduced scale >= the target
        orientation = img.getexif().get(0x0112, 1)
        if orientation != 1:
            from PIL import ImageOps

            img = ImageOps.exif_transpose(img)
        return fit_image(img, image_size, channels)


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

    def one(i: int) -> None:
        try:
            out[i] = _open_and_fit(sources[i], image_size, channels)
        except MemoryError:
            raise
        except Exception as exc:  # PIL raises many types for broken files: all mean "unreadable"
            failures.append((i, _reason(exc)))

    def block(start: int) -> None:
        for i in range(start, min(start + _BLOCK, len(sources))):
            one(i)

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


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> None:
    """Write images in [-1, 1] (N, C, H, W) as one PNG grid, atomically; nrow defaults to ~sqrt(N).

    The PNG is written to a temporary file in the same folder and renamed over ``path``, so a
    reader (or a crash) never sees half a file.
    """
    from torchvision.utils import make_grid

    if images.dim() == 3:
        images = images.unsqueeze(0)
    n, c = images.shape[:2]
    if c not in (1, 3):
        raise ValueError(f"save_grid takes 1 or 3 channels, got {c}")
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    grid = make_grid(to_uint8(images.cpu()), nrow=nrow, padding=2, pad_value=0)
    arr = grid.permute(1, 2, 0).numpy()
    pil = Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if c == 1 else arr), "L" if c == 1 else "RGB")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            pil.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------
# load_data: folder or dataset name, decoded once per process

_CACHE: dict[tuple, ImageData] = {}


def clear_cache() -> None:
    """Forget every decoded data set (the next load_data decodes again)."""
    _CACHE.clear()


def _image_files(folder: str) -> list[str]:
    """Image files under folder, recursive, sorted by path parts; hidden files and folders skipped."""
    found: list[tuple[tuple[str, ...], str]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .git, .ipynb_checkpoints ...
        rel = os.path.relpath(dirpath, folder)
        parts = () if rel == os.curdir else tuple(rel.split(os.sep))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(((*parts, name), os.path.join(dirpath, name)))
    found.sort()
    return [path for _, path in found]


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
    paths = _image_files(folder)
    key = ("folder", folder, _signature(paths), image_size, channels)
    if key in _CACHE:
        return _CACHE[key]
    exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    if not paths:
        raise DataError(f"no image files in folder '{folder}' (looked recursively for {exts})")
    images, failures = decode_images(paths, image_size, channels)
    skipped = [paths[i] for i, _ in failures]
    if not len(images):
        raise DataError(
            f"no readable image in folder '{folder}': all {len(paths)} files failed "
            f"(first: {skipped[0]}: {failures[0][1]}); accepted: {exts}"
        )
    if failures:
        warnings.warn(
            f"skipped {len(failures)} unreadable image file(s) in '{folder}', first: {skipped[0]} "
            f"({failures[0][1]})",
            stacklevel=3,
        )
    data = ImageData(images, f"folder {folder} ({len(images)} images)", skipped)
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
