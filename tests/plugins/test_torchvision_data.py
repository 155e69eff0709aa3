"""mnist / fashion-mnist from real idx files, error messages for missing data, and the real
Fashion-MNIST from the Debian package when it is installed. Nothing here downloads."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
import torch

from genvae.core.data import clear_cache, load_data
from genvae.core.errors import DataError
from genvae.core.registry import get_registry
from genvae.plugins.torchvision_data import (
    DEBIAN_FASHION_MNIST,
    load_celeba,
    load_cifar10,
    load_fashion_mnist,
    load_lsun,
    load_mnist,
)


def _idx_bytes(images: np.ndarray, magic: int = 2051) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", magic, n, h, w) + images.astype(np.uint8).tobytes()


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 256, (n, 28, 28), dtype=np.uint8)  # no zeros: padding must be distinguishable
    x[0] = 200  # a flat image: stays flat when resized
    return x


@pytest.fixture
def idx_root(tmp_path):
    """train as .gz in the plain layout, test raw in torchvision's layout (root/FashionMNIST/raw)."""
    train, test = _images(6, 0), _images(4, 1)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(_idx_bytes(train))
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(test))
    return tmp_path, train, test


def test_registered():
    reg = get_registry()
    for name in ("mnist", "fashion-mnist", "cifar10", "celeba", "lsun"):
        assert reg.get("dataset", name).plugin == "torchvision-data"


def test_idx_gz_native_size(idx_root):
    root, train, _ = idx_root
    x = load_fashion_mnist(root=str(root), image_size=28, channels=1, split="train")
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.equal(x[:, 0], torch.from_numpy(train))


def test_idx_pad_to_32_keeps_centre(idx_root):
    root, _, test = idx_root
    x = load_fashion_mnist(root=str(root), image_size=32, channels=1, split="test")
    assert x.shape == (4, 1, 32, 32)
    assert torch.equal(x[:, 0, 2:30, 2:30], torch.from_numpy(test))
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert x[:, 0][:, border].eq(0).all()  # black frame (-1 in model range)


def test_idx_at_64_is_the_32_frame_at_twice_the_size(idx_root):
    root, _, _ = idx_root
    x32 = load_fashion_mnist(root=str(root), image_size=32, channels=1, split="test")
    x64 = load_fashion_mnist(root=str(root), image_size=64, channels=1, split="test")
    assert x64.shape == (4, 1, 64, 64)
    assert x64[:, 0, :3].eq(0).all() and x64[:, 0, 61:].eq(0).all()  # the frame, doubled (row 3 blends)
    from genvae.core.decode import fit_tensor

    assert torch.equal(x64, fit_tensor(x32, 64, 1))  # the 32 picture, resized


def test_idx_resize_to_16_and_rgb(idx_root):
    root, train, _ = idx_root
    x = load_fashion_mnist(root=str(root), image_size=16, channels=3, split="train")
    assert x.shape == (6, 3, 16, 16)
    assert x[0].eq(200).all()  # flat image stays flat
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert abs(x[1].float().mean() - float(train[1].mean())) < 6


def test_mnist_raw_torchvision_layout(tmp_path):
    imgs = _images(3, 2)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(imgs))
    x = load_mnist(root=str(tmp_path), image_size=28, channels=1, split="test")
    assert torch.equal(x[:, 0], torch.from_numpy(imgs))
    clear_cache()
    via_engine = load_data("mnist", image_size=32, channels=1, split="test", root=str(tmp_path))
    assert len(via_engine) == 3 and str(tmp_path) in via_engine.source


def test_idx_bad_magic_and_truncated(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(_images(2, 3), magic=2049))
    with pytest.raises(DataError, match="magic 2049, expected 2051"):
        load_mnist(root=str(tmp_path), image_size=28, channels=1, split="train")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(_images(2, 3))[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_mnist(root=str(tmp_path), image_size=28, channels=1, split="train")


def test_idx_missing_without_download(tmp_path):
    with pytest.raises(DataError) as info:
        load_mnist(root=str(tmp_path), image_size=32, channels=1, split="train")
    msg = str(info.value)
    assert "train-images-idx3-ubyte" in msg and str(tmp_path) in msg
    assert "--data-root" in msg and "--download" in msg and "\n" not in msg
    with pytest.raises(DataError, match="no split 'val'"):
        load_mnist(root=str(tmp_path), image_size=32, channels=1, split="val")


def test_cifar10_missing(tmp_path):
    with pytest.raises(DataError, match=r"'cifar10' not found in .*--data-root") as info:
        load_cifar10(root=str(tmp_path), image_size=32, channels=3, split="train", download=False)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="needs --data-root"):
        load_cifar10(root=None, image_size=32, channels=3, split="train", download=False)


def test_celeba_and_lsun_missing(tmp_path):
    with pytest.raises(DataError, match="'celeba' not found"):
        load_celeba(root=str(tmp_path), image_size=64, channels=3, split="train", download=False)
    with pytest.raises(DataError, match="cannot be downloaded"):
        load_lsun(root=str(tmp_path), image_size=64, channels=3, split="train", download=True)
    with pytest.raises(DataError, match="lmdb"):  # module missing, or no *_lmdb folder in root
        load_lsun(root=str(tmp_path), image_size=64, channels=3, split="bedroom", download=False)


# -- the real Fashion-MNIST (Debian package dataset-fashion-mnist) -----------------------------

needs_debian = pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEBIAN_FASHION_MNIST, "t10k-images-idx3-ubyte.gz")),
    reason=f"Fashion-MNIST not installed in {DEBIAN_FASHION_MNIST} (Debian package dataset-fashion-mnist)",
)


@pytest.fixture(scope="module")
def real_train():
    clear_cache()
    return load_data("fashion-mnist", image_size=28, channels=1, split="train")


@needs_debian
def test_real_fashion_mnist_test_split():
    clear_cache()
    data = load_data("fashion-mnist", image_size=32, channels=1, split="test")
    x = data.images
    assert x.shape == (10000, 1, 32, 32)
    inner = x[:, :, 2:30, 2:30].float()
    assert 60 < inner.mean() < 90  # about 73 on 0-255
    assert x[:, :, :2].eq(0).all()


@needs_debian
def test_real_fashion_mnist_train_split(real_train):
    x = real_train.images
    assert x.shape == (60000, 1, 28, 28)
    assert 60 < x.float().mean() < 90
    assert int(x.max()) == 255 and int(x.min()) == 0
