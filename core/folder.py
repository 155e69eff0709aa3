"""A model folder as genvae owns it: a manifest of the files genvae wrote, and an exclusive lock.

genvae deletes only what it wrote. Every file it creates in a model folder is first recorded in
``.genvae-manifest.json`` (recorded *before* the write, so a crash can only leave a manifest entry
for a missing file, never an unrecorded genvae file); ``build --force``, ``train --restart`` and
checkpoint rotation remove manifest entries and nothing else, and remove a folder only once it is
empty. A folder that holds anything but genvae's files is never built into.

One process at a time writes a model folder: :func:`lock_folder` takes an OS file lock on
``.genvae.lock`` (``flock``; released by the OS when the process dies, so a killed run never leaves
a stale lock) and records the holder's pid for the message the next process gets.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from genvae.core.errors import GenvaeError
from genvae.core.files import atomic_write_text, check_writable_file, ensure_subdir, is_temp

MANIFEST = ".genvae-manifest.json"
LOCK = ".genvae.lock"
CONFIG = "config.json"
MANIFEST_FORMAT = 1
# What versions of genvae without a manifest wrote; used once to adopt such a folder.
_LEGACY = re.compile(
    r"^(config\.json|model\.safetensors|metrics\.jsonl|samples/(epoch|step)-\d+\.png|"
    r"checkpoints/step-\d+/(model\.safetensors|optimizer\.safetensors|trainer\.json))$"
)


class FolderInUseError(GenvaeError):
    """Another process holds the model folder's lock."""


class ForeignFolderError(GenvaeError):
    """A folder genvae would write into holds things genvae did not make."""


def _looks_like_genvae_config(path: Path) -> bool:
    try:
        if not path.is_file() or path.stat().st_size > 1 << 20:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "genvae_version" in data and "encoder" in data


class ModelFolder:
    """The files genvae wrote in one folder (relative POSIX paths), read from and kept in its manifest."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._files: set[str] | None = None

    # -- what the folder is ------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def exists(self) -> bool:
        return self.path.is_dir()

    def is_empty(self) -> bool:
        """Absent, or holding nothing but genvae's lock, manifest and temporary files."""
        if not self.exists():
            return True
        return not any(e.name not in (LOCK, MANIFEST) and not is_temp(e.name) for e in os.scandir(self.path))

    def is_genvae(self) -> bool:
        """A folder genvae made: it has genvae's manifest, or a genvae config.json (older versions)."""
        if not self.exists():
            return False
        return self._read_manifest() is not None or _looks_like_genvae_config(self.path / CONFIG)

    def foreign_entries(self) -> list[str]:
        """Top-level entries genvae did not write (its lock and manifest count as its own)."""
        owned_top = {f.split("/", 1)[0] for f in self.files()} | {MANIFEST, LOCK}
        return sorted(e.name for e in os.scandir(self.path) if e.name not in owned_top and not is_temp(e.name))

    def check_can_build_into(self) -> None:
        """A new or empty folder, or one of genvae's own model folders; anything else is refused."""
        if self.path.exists() and not self.path.is_dir():
            raise ForeignFolderError(f"{self.path} exists and is not a folder; give a new folder for -o")
        if self.is_empty() or self.is_genvae():
            return
        raise ForeignFolderError(
            f"{self.path} is not empty and is not a genvae model folder; genvae builds only into a new or empty "
            "folder or one it made (nothing was changed)"
        )

    # -- the manifest --------------------------------------------------------------------------------
    def _read_manifest(self) -> set[str] | None:
        path = self.manifest_path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size > 16 << 20:
            raise GenvaeError(f"{path} is not a regular file of genvae's; remove it by hand if it is not yours")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            files = data["files"]
            if data.get("genvae_manifest") != MANIFEST_FORMAT or not all(isinstance(f, str) for f in files):
                raise ValueError
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise GenvaeError(f"{path} is damaged; genvae cannot tell which files it wrote there") from None
        return {f for f in files if _safe_relative(f)}

    def files(self) -> set[str]:
        """Relative paths genvae wrote here; a folder of an older genvae is adopted by its known names."""
        if self._files is None:
            found = self._read_manifest()
            if found is None:
                found = set()
                if _looks_like_genvae_config(self.path / CONFIG):
                    for root, _dirs, names in os.walk(self.path):
                        for name in names:
                            rel = Path(root, name).relative_to(self.path).as_posix()
                            if _LEGACY.match(rel):
                                found.add(rel)
            self._files = found
        return self._files

    def _save(self) -> None:
        text = json.dumps({"genvae_manifest": MANIFEST_FORMAT, "files": sorted(self.files())}, indent=1) + "\n"
        atomic_write_text(self.manifest_path, text)

    def record(self, *relative: str) -> None:
        """Note files genvae is about to write (before writing them)."""
        new = [r for r in relative if r not in self.files()]
        if new or not self.manifest_path.exists():
            self.files().update(new)
            self._save()

    def owns(self, relative: str) -> bool:
        return relative in self.files()

    def remove(self, relatives: Iterable[str]) -> int:
        """Delete the given genvae files (those not in the manifest are left alone), then empty folders."""
        removed = 0
        targets = sorted(r for r in set(relatives) if r in self.files())
        for rel in targets:
            path = self.path / rel
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode):
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
            self.files().discard(rel)
        for rel in targets:  # folders genvae made, deepest first, once nothing else is in them
            parent = Path(rel).parent
            while parent != Path("."):
                try:
                    (self.path / parent).rmdir()
                except OSError:
                    break
                parent = parent.parent
        if targets:
            self._save()
        return removed

    def remove_under(self, prefix: str) -> int:
        """Delete genvae's files under a relative folder (``checkpoints/step-00000010``)."""
        prefix = prefix.rstrip("/") + "/"
        return self.remove(f for f in self.files() if f.startswith(prefix))

    def remove_all(self, keep: Iterable[str] = ()) -> int:
        keep = set(keep)
        return self.remove(f for f in self.files() if f not in keep)

    def subdir(self, relative: str) -> Path:
        return ensure_subdir(self.path / relative)

    def check_outputs(self, relatives: Iterable[str]) -> None:
        """Every file genvae is going to write must be absent or a regular file (never a symlink)."""
        for rel in relatives:
            check_writable_file(self.path / rel)


def _safe_relative(rel: str) -> bool:
    parts = Path(rel).parts
    return bool(parts) and not Path(rel).is_absolute() and ".." not in parts


# -- the lock ----------------------------------------------------------------------------------------

_HELD: dict[str, list] = {}  # real path -> [fd, depth]: re-entrant within one process


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        return text.split()[0] if text else "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def lock_folder(folder: str | os.PathLike) -> Iterator[None]:
    """Hold the model folder's exclusive lock; a second process gets :class:`FolderInUseError` at once."""
    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    path = folder / LOCK
    check_writable_file(path)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o666)
    try:
        _lock_fd(fd)
    except BlockingIOError:
        os.close(fd)
        raise _in_use(folder, path) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[key] = [fd, 1]
        yield
    finally:
        _HELD.pop(key, None)
        _unlock_fd(fd)
        os.close(fd)


def _in_use(folder: Path, path: Path) -> FolderInUseError:
    return FolderInUseError(f"model folder {folder} is in use by another genvae process (pid {_holder(path)}); wait "
                            "for it to finish or stop it, then retry")


def check_not_in_use(folder: str | os.PathLike) -> None:
    """Raise :class:`FolderInUseError` at once if another process holds the folder's lock, writing nothing.

    A command calls it first, so that a busy folder is reported as busy rather than by whatever other check the
    running process's files would fail (``train`` on a folder another run has just checkpointed). The lock is
    tested by taking and dropping it on a read-only descriptor; :func:`lock_folder` still guards the writes.
    """
    folder = Path(folder)
    if os.path.realpath(folder) in _HELD:
        return
    path = folder / LOCK
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:  # no lock file: nobody holds it (anything odd there is lock_folder's to report)
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        try:
            _lock_fd(fd)
        except BlockingIOError:
            raise _in_use(folder, path) from None
        _unlock_fd(fd)
    finally:
        os.close(fd)


def _lock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            raise BlockingIOError from None
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt

        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
        return
    fcntl.flock(fd, fcntl.LOCK_UN)
