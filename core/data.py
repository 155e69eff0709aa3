"""The data layer: turns ``--data`` (a folder of images, tar shards or a dataset name) into one uint8 tensor.

From Python, data may also be images already in memory: a tensor, a ``torch.utils.data.Dataset`` or an
:class:`ImageData` (:func:`images_from`), fitted to the model's size the same way.

The engine knows no concrete dataset: names come from plugins (``genvae_register_datasets``).
Everything is decoded once as uint8 (N, C, H, W) at the training size: a folder (loose images and
uncompressed ``.tar`` shards, WebDataset style, read in place without extracting) goes to the
on-disk cache of ``genvae.core.cache`` and is memory-mapped from there, so it may be larger than
memory; a dataset plugin's tensor stays in memory. Decoding and fitting are :mod:`genvae.core.decode`'s,
writing images :mod:`genvae.core.images`'.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import stat
import warnings
from typing import Any

import attrs
import torch

from genvae.core.decode import (
    IMAGE_EXTENSIONS,
    check_target,
    decode_block,
    decode_images,
    failure_reason,
    not_regular_reason,
    tar_members,
)
from genvae.core.errors import DataError

DEFAULT_DATASET = "shapes"


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
                rejected.append(((*parts, name), path, failure_reason(exc)))
                continue
            if stat.S_ISREG(mode):
                found.append(((*parts, name), path))
            else:
                rejected.append(((*parts, name), path, not_regular_reason(mode)))
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
        entry = cache.CachedImages(
            root,
            cache.cache_key("folder", folder, signature, image_size, channels),
            f"folder {folder}",
            (channels, image_size, image_size),
        )
        loaded = entry.load()
        if loaded is not None:
            images, skipped_with_reasons = loaded
        else:
            images, skipped_with_reasons = entry.build(
                sources,
                partial(decode_block, image_size=image_size, channels=channels),
                describe=lambda i: str(sources[i]),
            )
    failed = sorted([*rejected, *skipped_with_reasons])
    skipped = [path for path, _ in failed]
    if not len(images):
        raise DataError(
            f"no readable image in folder '{folder}': all {len(failed)} files failed "
            f"(first: {skipped[0]}: {failed[0][1]}); accepted: {exts}, uncompressed .tar shards of them"
        )
    if failed:
        warnings.warn(
            f"skipped {len(failed)} unreadable image file(s) in '{folder}', first: {skipped[0]} ({failed[0][1]})",
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


def as_uint8_images(x: torch.Tensor, what: str) -> torch.Tensor:
    """(N, C, H, W) or (N, H, W) uint8, or float in [0, 1] -> uint8 (N, C, H, W) on the CPU; a one-line error else."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0 or min(x.shape[2:]) == 0:
        raise DataError(f"{what}: expected images shaped (N, 1|3, H, W) or (N, H, W), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.detach().cpu()
    if not x.is_floating_point():
        raise DataError(f"{what}: expected uint8 (0..255) or float images in [0, 1], got {x.dtype}")
    x = x.detach().cpu().float()
    low, high = float(x.min()), float(x.max())
    if not (low >= 0.0 and high <= 1.0):  # NaN fails too
        raise DataError(
            f"{what}: float images are expected in [0, 1], these span {low:.3g}..{high:.3g} "
            "(from [-1, 1] pass x * 0.5 + 0.5; uint8 0..255 is accepted as it is)"
        )
    return (x * 255.0).round_().to(torch.uint8)


def _dataset_images(dataset: Any) -> torch.Tensor:
    """Every item of a map-style dataset (a tensor or a PIL image, or a tuple whose first element is one: (image,
    label)) stacked as uint8 (N, C, H, W); the items must share one size."""
    import numpy as np
    from PIL import Image

    try:
        count = len(dataset)
    except TypeError:
        raise DataError(f"{type(dataset).__name__}: a dataset with a length is needed (a map-style Dataset)") from None
    if count == 0:
        raise DataError(f"{type(dataset).__name__} is empty")
    items = []
    for i in range(count):
        item = dataset[i]
        if isinstance(item, tuple | list) and item:
            item = item[0]
        if isinstance(item, Image.Image):
            grey = item.mode in ("L", "1", "I", "I;16", "F")
            array = torch.from_numpy(np.array(item.convert("L" if grey else "RGB")))
            item = array.unsqueeze(0) if grey else array.permute(2, 0, 1)
        if not isinstance(item, torch.Tensor):
            raise DataError(
                f"{type(dataset).__name__}[{i}] is a {type(item).__name__}; items must be image tensors or PIL "
                "images (or (image, label) pairs)"
            )
        items.append(item)
    shapes = {tuple(t.shape) for t in items}
    if len(shapes) > 1:
        listed = ", ".join(str(shape) for shape in sorted(shapes)[:3])
        raise DataError(f"{type(dataset).__name__}: items of different shapes ({listed})")
    return torch.stack(items)


def images_from(data: Any, *, image_size: int, channels: int) -> ImageData:
    """Images given in memory as :class:`ImageData` at ``image_size`` and ``channels``: a tensor (uint8 0..255 or
    float in [0, 1], shaped (N, C, H, W) or (N, H, W)), a map-style ``torch.utils.data.Dataset`` whose items are
    such images (or (image, label) pairs, e.g. torchvision's with ``ToTensor()``), or an :class:`ImageData`.
    Other sizes are fitted as named datasets are: centred in a black frame when they fit with an even margin
    (28 -> 32), a central square crop resized otherwise; grey and colour are converted."""
    from genvae.core.decode import fit_tensor

    check_target(image_size, channels)
    if isinstance(data, ImageData):
        images, source, skipped = data.images, data.source, data.skipped
    elif isinstance(data, torch.Tensor):
        images, source, skipped = as_uint8_images(data, "data tensor"), f"a tensor of {len(data)} images", []
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, str | bytes | dict):
        name = type(data).__name__
        images, source, skipped = as_uint8_images(_dataset_images(data), name), f"dataset object {name}", []
    else:
        raise DataError(
            f"data of type {type(data).__name__}: give a folder, a dataset name, an image tensor or a "
            "torch.utils.data.Dataset"
        )
    if tuple(images.shape[1:]) != (channels, image_size, image_size):
        images = fit_tensor(images, image_size, channels, mode="pad")
    return ImageData(images.contiguous(), source, list(skipped))


def load_data(
    data: Any,
    *,
    image_size: int,
    channels: int,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = False,
    registry=None,
) -> ImageData:
    """Training images from a folder or a registered dataset, as uint8 (N, channels, S, S).

    ``data``: images in memory (a tensor, a Dataset, an :class:`ImageData`) -> :func:`images_from`; None -> the
    default dataset (``DEFAULT_DATASET``, needs nothing installed); an
    existing folder -> every image under it (``split`` is ignored: a folder is one split); a
    dataset name -> its plugin's loader, given ``root``, ``split`` and ``download``. A name that is
    both a dataset and a folder in the current directory means the dataset (write ``./NAME``).
    Results are cached for the process: a second call with the same arguments decodes nothing.
    """
    check_target(image_size, channels)
    if data is not None and not isinstance(data, str | os.PathLike):
        return images_from(data, image_size=image_size, channels=channels)
    if registry is None:
        from genvae.core.registry import get_registry

        registry = get_registry()
    name = DEFAULT_DATASET if data is None else os.fspath(data)
    datasets = registry.names("dataset")
    is_dir = data is not None and os.path.isdir(os.path.expanduser(name))
    if name in datasets:
        if is_dir:
            warnings.warn(
                f"'{name}' is a dataset name and a folder here; using the dataset (write ./{name} for the folder)",
                stacklevel=2,
            )
        root = os.path.abspath(os.path.expanduser(os.fspath(root))) if root is not None else None
        return _load_dataset(registry.get("dataset", name), root, image_size, channels, split, download)
    if is_dir:
        return _load_folder(os.path.realpath(os.path.expanduser(name)), image_size, channels)
    if os.path.isfile(name):
        raise DataError(
            f"data '{name}' is a file; give a folder of images or a dataset name "
            f"({', '.join(datasets) or 'none registered'})"
        )
    close = difflib.get_close_matches(name, datasets, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    listing = ", ".join(datasets) if datasets else "none"
    raise DataError(
        f"unknown data '{name}': not a folder and not a dataset; {hint}datasets: {listing} (or give a folder of images)"
    )


def load_labels(
    data: str | os.PathLike | None, *, split: str = "train", root: str | os.PathLike | None = None, registry=None
) -> tuple[torch.Tensor, tuple[str, ...]]:
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
        str(c) for c in range(int(labels.max()) + 1)
    )
    return labels.long(), classes
