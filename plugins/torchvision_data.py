"""``torchvision-data``: the classic benchmark datasets: mnist, fashion-mnist, cifar10, celeba, lsun.

MNIST-style idx files are read directly (gzip or raw), so the Debian package dataset-fashion-mnist
works with nothing else installed; torchvision is used only to download them. CIFAR-10 and CelebA
go through torchvision's classes; LSUN is read from its lmdb folders directly, because
torchvision's LSUN class writes a key cache into the current directory. Every failure (files
missing, no network, module missing) becomes a one-line DataError that says what to do.
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings

import numpy as np
import torch

from genvae.api import DataError, DatasetLoader, RegisterNamed, decode_images, fit_tensor, hookimpl

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
IDX_FRAME = 32  # MNIST-style 28x28 images sit in a 32x32 black frame
# name -> (torchvision class and folder name, default roots searched when no --data-root is given)
IDX_DATASETS = {
    "mnist": ("MNIST", ["/usr/share/datasets/mnist"]),
    "fashion-mnist": ("FashionMNIST", [DEBIAN_FASHION_MNIST]),
}
IDX_SPLITS = {"train": "train", "test": "t10k"}
CELEBA_SPLITS = {"train": "train", "val": "valid", "valid": "valid", "test": "test", "all": "all"}
DOWNLOAD_HINT = "pass --data-root DIR or --download (needs network)"


def _first_line(exc: BaseException, limit: int = 240) -> str:
    """The error on one line: torchvision's download errors put the reason on the second line."""
    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _require_root(name: str, root: str | os.PathLike[str] | None) -> str:
    if root is None:
        raise DataError(
            f"dataset '{name}' needs --data-root DIR (the folder holding it, or where --download should put it)"
        )
    return os.fspath(root)


# ---------------------------------------------------------------------------------------------
# mnist, fashion-mnist: idx files


def _read_idx_bytes(path: str) -> bytes:
    """The bytes of an idx file, gunzipped when it is gzip (by content, not by name)."""
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read idx file {path}: {_first_line(exc)}") from None


def read_idx_images(path: str) -> np.ndarray:
    """An idx3 image file (gzip or raw; magic 2051) -> uint8 (N, H, W)."""
    data = _read_idx_bytes(path)
    if len(data) < 16:
        raise DataError(f"{path} is not an idx image file (only {len(data)} bytes)")
    magic, n, h, w = struct.unpack(">IIII", data[:16])
    if magic != IDX_IMAGES_MAGIC:
        raise DataError(f"{path} is not an idx image file (magic {magic}, expected {IDX_IMAGES_MAGIC})")
    need = n * h * w
    if len(data) - 16 < need:
        raise DataError(
            f"{path} is truncated: header says {n} images of {h}x{w}, file holds {(len(data) - 16) // max(1, h * w)}"
        )
    return np.frombuffer(data, dtype=np.uint8, count=need, offset=16).reshape(n, h, w).copy()


def read_idx_labels(path: str) -> np.ndarray:
    """An idx1 label file (gzip or raw; magic 2049) -> uint8 (N,)."""
    data = _read_idx_bytes(path)
    if len(data) < 8:
        raise DataError(f"{path} is not an idx label file (only {len(data)} bytes)")
    magic, n = struct.unpack(">II", data[:8])
    if magic != IDX_LABELS_MAGIC:
        raise DataError(f"{path} is not an idx label file (magic {magic}, expected {IDX_LABELS_MAGIC})")
    if len(data) - 8 < n:
        raise DataError(f"{path} is truncated: header says {n} labels, file holds {len(data) - 8}")
    return np.frombuffer(data, dtype=np.uint8, count=n, offset=8).copy()


def _idx_dirs(name: str, root: str | None) -> list[str]:
    folder, defaults = IDX_DATASETS[name]
    bases = [root] if root is not None else [d for d in defaults if os.path.isdir(d)]
    return [d for b in bases for d in (b, os.path.join(b, folder, "raw"))]  # plain and torchvision layout


def _find_idx(dirs: list[str], prefix: str, what: str = "images", idx: int = 3) -> str | None:
    names = [f"{prefix}-{what}-idx{idx}-ubyte", f"{prefix}-{what}.idx{idx}-ubyte"]
    for d in dirs:
        for n in names:
            for candidate in (os.path.join(d, n + ".gz"), os.path.join(d, n)):
                if os.path.isfile(candidate):
                    return candidate
    return None


def _load_idx(
    name: str, root: str | os.PathLike[str] | None, image_size: int, channels: int, split: str, download: bool
) -> torch.Tensor:
    if split not in IDX_SPLITS:
        raise DataError(f"dataset '{name}' has no split '{split}'; splits: {', '.join(IDX_SPLITS)}")
    prefix = IDX_SPLITS[split]
    root = os.fspath(root) if root is not None else None
    dirs = _idx_dirs(name, root)
    path = _find_idx(dirs, prefix)
    if path is None and download:
        if root is None:
            raise DataError(f"--download for '{name}' needs --data-root DIR (where to put the files)")
        import torchvision.datasets as tvd

        try:
            getattr(tvd, IDX_DATASETS[name][0])(root, train=split == "train", download=True)
        except Exception as exc:  # URLError, RuntimeError from every mirror, disk errors ...
            raise DataError(f"could not download '{name}' into {root} (no network?): {_first_line(exc)}") from None
        path = _find_idx(dirs, prefix)
    if path is None:
        where = ", ".join(dirs) if dirs else "no default location (none exists on this machine)"
        raise DataError(
            f"'{name}' {split} images not found: looked for {prefix}-images-idx3-ubyte[.gz] in {where}; {DOWNLOAD_HINT}"
        )
    images = torch.from_numpy(read_idx_images(path)).unsqueeze(1)
    # 28 -> 32: pad with black, keeping each pixel exact; larger sizes are that 32 frame resized, so every size
    # shows the same framing (a 64 image is the 32 one at twice the size, as Stage2 needs); smaller ones resize
    if image_size > IDX_FRAME:
        return fit_tensor(fit_tensor(images, IDX_FRAME, channels, mode="pad"), image_size, channels)
    return fit_tensor(images, image_size, channels, mode="pad")


def _load_idx_labels(name: str, root: str | os.PathLike[str] | None, split: str) -> torch.Tensor:
    if split not in IDX_SPLITS:
        raise DataError(f"dataset '{name}' has no split '{split}'; splits: {', '.join(IDX_SPLITS)}")
    dirs = _idx_dirs(name, os.fspath(root) if root is not None else None)
    path = _find_idx(dirs, IDX_SPLITS[split], "labels", 1)
    if path is None:
        raise DataError(
            f"'{name}' {split} labels not found: looked for {IDX_SPLITS[split]}-labels-idx1-ubyte[.gz] "
            f"in {', '.join(dirs) or 'no default location'}"
        )
    return torch.from_numpy(read_idx_labels(path)).long()


def load_mnist(
    root: str | os.PathLike[str] | None = None,
    image_size: int = 32,
    channels: int = 1,
    split: str = "train",
    download: bool = False,
) -> torch.Tensor:
    """MNIST digits, 60000 train / 10000 test, 28x28 grey."""
    return _load_idx("mnist", root, image_size, channels, split, download)


def load_fashion_mnist(
    root: str | os.PathLike[str] | None = None,
    image_size: int = 32,
    channels: int = 1,
    split: str = "train",
    download: bool = False,
) -> torch.Tensor:
    """Fashion-MNIST, 60000 train / 10000 test, 28x28 grey; found in the Debian package by default."""
    return _load_idx("fashion-mnist", root, image_size, channels, split, download)


def load_mnist_labels(root: str | os.PathLike[str] | None = None, split: str = "train") -> torch.Tensor:
    """MNIST's digit labels 0-9, in the order of its images."""
    return _load_idx_labels("mnist", root, split)


def load_fashion_mnist_labels(root: str | os.PathLike[str] | None = None, split: str = "train") -> torch.Tensor:
    """Fashion-MNIST's class labels 0-9 (FASHION_CLASSES), in the order of its images."""
    return _load_idx_labels("fashion-mnist", root, split)


FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))


# ---------------------------------------------------------------------------------------------
# cifar10, celeba: torchvision classes


def load_cifar10(
    root: str | os.PathLike[str] | None = None,
    image_size: int = 32,
    channels: int = 3,
    split: str = "train",
    download: bool = False,
) -> torch.Tensor:
    """CIFAR-10, 50000 train / 10000 test, 32x32 RGB, from ROOT/cifar-10-batches-py."""
    if split not in ("train", "test"):
        raise DataError(f"dataset 'cifar10' has no split '{split}'; splits: train, test")
    root = _require_root("cifar10", root)
    if os.path.basename(os.path.normpath(root)) == "cifar-10-batches-py":  # the folder itself was given
        root = os.path.dirname(os.path.normpath(root))
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(root, train=split == "train", download=download)
    except Exception as exc:
        if download:
            raise DataError(f"could not download 'cifar10' into {root} (no network?): {_first_line(exc)}") from None
        raise DataError(
            f"'cifar10' not found in {root} (expected {root}/cifar-10-batches-py): {_first_line(exc)}; {DOWNLOAD_HINT}"
        ) from None
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
    return fit_tensor(images, image_size, channels, mode="crop")


def _warn_skipped(name: str, sources: list[str], failures: list[tuple[int, str]]) -> None:
    if failures:
        i, reason = failures[0]
        warnings.warn(
            f"dataset '{name}': skipped {len(failures)} unreadable image(s), first: {sources[i]} ({reason})",
            stacklevel=3,
        )


def load_celeba(
    root: str | os.PathLike[str] | None = None,
    image_size: int = 64,
    channels: int = 3,
    split: str = "train",
    download: bool = False,
) -> torch.Tensor:
    """CelebA aligned faces (ROOT/celeba/img_align_celeba + list files), central square resized."""
    if split not in CELEBA_SPLITS:
        raise DataError(f"dataset 'celeba' has no split '{split}'; splits: train, val, test, all")
    root = _require_root("celeba", root)
    from torchvision.datasets import CelebA

    try:
        ds = CelebA(root, split=CELEBA_SPLITS[split], target_type=[], download=download)
    except Exception as exc:
        if download:
            raise DataError(
                f"could not download 'celeba' into {root} (no network, Google Drive quota or gdown "
                f"missing?): {_first_line(exc)}"
            ) from None
        raise DataError(
            f"'celeba' not found in {root}: expected {root}/celeba/img_align_celeba/ and its "
            f"list_*.txt files ({_first_line(exc)}); {DOWNLOAD_HINT}, or give the image folder "
            "itself as --data (no splits then)"
        ) from None
    folder = os.path.join(ds.root, ds.base_folder, "img_align_celeba")
    paths = [os.path.join(folder, f) for f in ds.filename]
    images, failures = decode_images(paths, image_size, channels)
    _warn_skipped("celeba", paths, failures)
    return images


# ---------------------------------------------------------------------------------------------
# lsun: lmdb folders


def _lsun_dbs(root: str, split: str) -> list[str]:
    """split train/val/test -> every category's db of that split; 'bedroom' -> bedroom_train; 'bedroom_val'."""
    found = sorted(d for d in os.listdir(root) if d.endswith("_lmdb") and os.path.isdir(os.path.join(root, d)))
    if split in ("train", "val"):
        wanted = [d for d in found if d.endswith(f"_{split}_lmdb")]
    elif split == "test":
        wanted = [d for d in found if d == "test_lmdb"]
    elif split.endswith(("_train", "_val")):
        wanted = [d for d in found if d == f"{split}_lmdb"]
    else:
        wanted = [d for d in found if d == f"{split}_train_lmdb"]
    if not wanted:
        listing = ", ".join(found) if found else "none"
        raise DataError(
            f"'lsun' split '{split}' not found in {root}: lmdb folders there: {listing} "
            "(split is train, val, test, a category like bedroom, or bedroom_val)"
        )
    return [os.path.join(root, d) for d in wanted]


def load_lsun(
    root: str | os.PathLike[str] | None = None,
    image_size: int = 64,
    channels: int = 3,
    split: str = "train",
    download: bool = False,
) -> torch.Tensor:
    """LSUN scenes from ROOT/<category>_<split>_lmdb (split: train/val/test, or a category, e.g. bedroom)."""
    if download:
        raise DataError(
            "'lsun' cannot be downloaded by genvae: fetch it with https://github.com/fyu/lsun "
            "(download.py) and pass --data-root DIR"
        )
    root = _require_root("lsun", root)
    if not os.path.isdir(root):
        raise DataError(f"'lsun' root {root} is not a folder; pass --data-root DIR holding the *_lmdb folders")
    try:
        import lmdb
    except ImportError:
        raise DataError("dataset 'lsun' needs the lmdb module: pip install lmdb") from None
    parts: list[torch.Tensor] = []
    for db in _lsun_dbs(root, split):
        try:
            env = lmdb.open(db, max_readers=1, readonly=True, lock=False, readahead=False, meminit=False)
        except lmdb.Error as exc:
            raise DataError(f"cannot open lsun lmdb {db}: {_first_line(exc)}") from None
        with env, env.begin(write=False) as txn:
            chunk: list[bytes] = []
            for _, value in txn.cursor():
                chunk.append(bytes(value))
                if len(chunk) == 4096:
                    parts.append(_decode_chunk(db, chunk, image_size, channels))
                    chunk = []
            if chunk:
                parts.append(_decode_chunk(db, chunk, image_size, channels))
    return torch.cat(parts) if parts else torch.empty((0, channels, image_size, image_size), dtype=torch.uint8)


def _decode_chunk(db: str, chunk: list[bytes], image_size: int, channels: int) -> torch.Tensor:
    images, failures = decode_images(chunk, image_size, channels)
    _warn_skipped("lsun", [f"{db} record {i}" for i in range(len(chunk))], failures)
    return images


@hookimpl
def genvae_register_datasets(register: RegisterNamed[DatasetLoader]) -> None:
    register(
        "mnist",
        load_mnist,
        help="MNIST digits, 28x28 grey (padded to 32); idx files in --data-root",
        labels=load_mnist_labels,
        classes=MNIST_CLASSES,
    )
    register(
        "fashion-mnist",
        load_fashion_mnist,
        help=f"Fashion-MNIST, 28x28 grey (padded to 32); default root {DEBIAN_FASHION_MNIST}",
        labels=load_fashion_mnist_labels,
        classes=FASHION_CLASSES,
    )
    register("cifar10", load_cifar10, help="CIFAR-10, 32x32 RGB; --data-root DIR, --download via torchvision")
    register("celeba", load_celeba, help="CelebA aligned faces; --data-root DIR, --download via torchvision")
    register("lsun", load_lsun, help="LSUN scenes from lmdb folders; split: train/val/test or a category; needs lmdb")
