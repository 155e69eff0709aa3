"""The on-disk image cache: decoded training images as one memory-mapped uint8 file per source and size.

A folder of images (or a set of tar shards) is decoded once, by several worker processes, into
``<cache>/<key>/images.u8`` (raw uint8, (N, C, S, S), C-contiguous) with ``meta.json`` beside it;
later runs map the file instead of decoding, so they start at once, and a data set larger than the
machine's memory trains (the OS pages images in as batches touch them). The key covers the source's
path, a signature of its files (names, sizes, modification times), the image size and channels, so a
changed folder is decoded again.

Where: ``GENVAE_CACHE`` (a folder; ``off`` decodes into memory each time, as before), else
``$XDG_CACHE_HOME/genvae/images``, else ``~/.cache/genvae/images``. Everything in it is genvae's;
``genvae cache`` lists and clears it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genvae.core.errors import DataError
from genvae.core.progress import report

ENV = "GENVAE_CACHE"
FORMAT = 1
IMAGES = "images.u8"
META = "meta.json"
MARK = "genvae-image-cache"
_PROCESS_MIN = 2048  # below this many images, threads in this process decode faster than new processes
_BLOCK = 256  # images per worker task


def cache_root() -> Path | None:
    """The cache folder, or None when ``GENVAE_CACHE=off``."""
    value = os.environ.get(ENV)
    if value is not None:
        if value.strip().lower() in ("off", "0", "none", ""):
            return None
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "genvae" / "images"


def cache_key(*parts: Any) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps([FORMAT, *parts], default=str).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


class CachedImages:
    """One entry of the cache: its folder, and how to read or build it."""

    def __init__(self, root: Path, key: str, source: str, image_shape: tuple[int, int, int]):
        self.folder = root / key
        self.source = source
        self.image_shape = tuple(image_shape)  # (C, S, S): an entry of any other shape is not this one

    def load(self) -> tuple[torch.Tensor, list[tuple[str, str]]] | None:
        """The cached images (memory-mapped, copy-on-write) and ``(source, reason)`` per skipped one, or None when
        absent or broken."""
        try:
            meta = json.loads((self.folder / META).read_text(encoding="utf-8"))
            shape = tuple(int(d) for d in meta["shape"])
            if meta.get("format") != FORMAT or meta.get("mark") != MARK or shape[1:] != self.image_shape:
                return None
            path = self.folder / IMAGES
            if path.stat().st_size != int(np.prod(shape)):
                return None
            array = np.memmap(path, dtype=np.uint8, mode="c", shape=shape)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return torch.from_numpy(array), [
            (str(s), str(r)) for s, r in zip(meta.get("skipped", []), meta.get("reasons", []), strict=False)
        ]

    def build(
        self, sources: Sequence[Any], decode_block: Callable, describe: Callable[[int], str] = str
    ) -> tuple[torch.Tensor, list[tuple[str, str]]]:
        """Decode ``sources`` into the cache; returns the mapped images and ``(source, reason)`` per failure.

        ``decode_block(sources, out, start)`` decodes sources into the uint8 array ``out`` from row ``start``
        and returns ``(index, reason)`` failures; it runs in worker processes for large sets, so it and the
        sources must pickle."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.folder.parent / f"{self.folder.name}.lock"):
            cached = self.load()  # another process may have built it while this one waited
            if cached is not None:
                return cached
            tmp = self.folder.parent / f"{self.folder.name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:
                failures = _decode_into(tmp / IMAGES, sources, self.image_shape, decode_block, self.source)
                bad = {i for i, _ in failures}
                good = len(sources) - len(bad)
                if good == 0:
                    return torch.empty((0, *self.image_shape), dtype=torch.uint8), [
                        (describe(i), reason) for i, reason in failures
                    ]
                _compact(tmp / IMAGES, len(sources), bad, int(np.prod(self.image_shape)))
                skipped = [(describe(i), reason) for i, reason in sorted(failures)]
                meta = {
                    "mark": MARK,
                    "format": FORMAT,
                    "source": self.source,
                    "shape": [good, *self.image_shape],
                    "skipped": [s for s, _ in skipped],
                    "reasons": [r for _, r in skipped],
                }
                (tmp / META).write_text(json.dumps(meta), encoding="utf-8")
                if self.folder.exists():  # a broken earlier entry (genvae's own: it is in genvae's cache)
                    shutil.rmtree(self.folder)
                os.replace(tmp, self.folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        loaded = self.load()
        if loaded is None:
            raise DataError(f"the image cache entry {self.folder} could not be read back after it was written")
        return loaded[0], skipped


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock while one process builds an entry; the others (torchrun ranks) wait and then read it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # Windows: no lock; each process builds its own temporary copy
            pass
        yield
    finally:
        os.close(fd)


def _worker_block(
    path: str, shape: tuple[int, ...], start: int, sources: Sequence[Any], decode_block: Callable
) -> list[tuple[int, str]]:
    out = np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)
    try:
        return [(start + i, reason) for i, reason in decode_block(sources, out[start : start + len(sources)], 0)]
    finally:
        out.flush()
        del out


def _decode_into(
    path: Path, sources: Sequence[Any], image_shape: tuple[int, ...], decode_block: Callable, what: str
) -> list[tuple[int, str]]:
    shape = (len(sources), *image_shape)
    out = np.memmap(path, dtype=np.uint8, mode="w+", shape=shape)
    del out  # the file exists at its full size; workers map it themselves
    starts = range(0, len(sources), _BLOCK)
    workers = max(1, min(8, os.cpu_count() or 1))
    failures: list[tuple[int, str]] = []
    task = f"decoding {what}"
    if len(sources) >= _PROCESS_MIN and workers > 1:
        import multiprocessing

        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        pool: Any = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
    else:
        pool = ThreadPoolExecutor(workers)
    with pool:
        futures = [
            pool.submit(_worker_block, str(path), shape, s, sources[s : s + _BLOCK], decode_block) for s in starts
        ]
        for done, future in enumerate(futures, 1):
            failures.extend(future.result())
            report(task, min(done * _BLOCK, len(sources)), len(sources))
    return failures


def _compact(path: Path, n: int, bad: set[int], row: int) -> None:
    """Move the readable images down over the failed ones, in order, and cut the file to its new length."""
    if not bad:
        return
    keep = np.array([i for i in range(n) if i not in bad], dtype=np.int64)
    array = np.memmap(path, dtype=np.uint8, mode="r+", shape=(n, row))
    for j in range(0, len(keep), 4096):  # source rows are never below their destination: a forward copy is safe
        idx = keep[j : j + 4096]
        array[j : j + len(idx)] = array[idx]
    array.flush()
    del array
    os.truncate(path, len(keep) * row)


def entries(root: Path | None = None) -> list[dict]:
    """What the cache holds: one dict per entry (folder, source, shape, bytes)."""
    root = root or cache_root()
    if root is None or not root.is_dir():
        return []
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and ".tmp-" not in p.name):
        try:
            meta = json.loads((folder / META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if meta.get("mark") != MARK:
            continue
        size = (folder / IMAGES).stat().st_size if (folder / IMAGES).exists() else 0
        out.append({"folder": str(folder), "source": meta.get("source"), "shape": meta.get("shape"), "bytes": size})
    return out


def clear(root: Path | None = None) -> int:
    """Remove every entry genvae wrote (folders with genvae's mark, their locks); returns how many entries."""
    root = root or cache_root()
    removed = 0
    for entry in entries(root):
        folder = Path(entry["folder"])
        shutil.rmtree(folder)
        with contextlib.suppress(FileNotFoundError):
            (folder.parent / f"{folder.name}.lock").unlink()
        removed += 1
    return removed
