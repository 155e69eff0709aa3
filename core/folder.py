"""A model folder as genvae owns it: a manifest of the files genvae wrote, safe file operations, and a lock.

genvae deletes or overwrites only what it wrote. Every file it creates in a model folder is first
recorded in ``.genvae-manifest.json`` (recorded *before* the write, so a crash can only leave a
manifest entry for a missing file, never an unrecorded genvae file); ``build --force``, ``train
--restart`` and checkpoint rotation remove manifest entries and nothing else, and remove a folder
only once it is empty. A file genvae would write where a file it did not write stands is refused
before any work (:meth:`ModelFolder.check_outputs`). Every operation goes through
:mod:`genvae.core.files`, so no link inside the folder is ever followed.

A folder nested in another one genvae manages (``stages/level-0`` of a LapCVAE) is a
:meth:`ModelFolder.child`: its operations walk from the outer folder, so a link at ``stages`` is
refused too.

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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from genvae.core import files as fs
from genvae.core.errors import GenvaeError
from genvae.core.files import UnsafePathError, is_temp

MANIFEST = ".genvae-manifest.json"
LOCK = ".genvae.lock"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
MANIFEST_FORMAT = 1
_MAX_MANIFEST = 16 << 20
# What versions of genvae without a manifest wrote; a file is adopted only if its content is genvae's too.
_LEGACY = re.compile(
    r"^(config\.json|model\.safetensors|metrics\.jsonl|samples/(epoch|step)-\d+\.png|"
    r"checkpoints/step-\d+/(model\.safetensors|optimizer\.safetensors|trainer\.json))$"
)


class FolderInUseError(GenvaeError):
    """Another process holds the model folder's lock."""


class ForeignFolderError(GenvaeError):
    """A folder genvae would write into holds things genvae did not make."""


class ForeignFileError(GenvaeError):
    """A file genvae would write stands where a file it did not write is."""


# -- evidence that a file of a folder without a manifest is genvae's ------------------------------------


def _json_of(data: bytes | None) -> object:
    try:
        return json.loads(data) if data is not None else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _is_genvae_config(data: bytes | None) -> bool:
    parsed = _json_of(data)
    return isinstance(parsed, dict) and "genvae_version" in parsed and "encoder" in parsed


def _is_safetensors(f: BinaryIO) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then that many bytes of a JSON object."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    if len(head) != 8:
        return False
    n = int.from_bytes(head, "little")
    if not 2 <= n <= min(size - 8, 100 << 20):
        return False
    return isinstance(_json_of(f.read(n)), dict)


def _is_metrics(data: bytes | None) -> bool:
    lines = [line for line in (data or b"").split(b"\n") if line.strip()]
    if not lines:
        return False
    complete = lines if (data or b"").endswith(b"\n") else lines[:-1]  # a torn last line is a crash's
    return all(isinstance(r := _json_of(line), dict) and isinstance(r.get("step"), int) for line in complete)


def _legacy_file_is_genvaes(root: Path, rel: str) -> bool:
    """Whether a file at one of the names old genvae versions wrote holds what genvae writes there."""
    try:
        if rel.endswith(".safetensors"):
            with fs.open_file_in(root, rel) as f:
                return f is not None and _is_safetensors(f)
        if rel.endswith(".png"):
            from genvae.core.images import carries_genvae_mark

            with fs.open_file_in(root, rel) as f:
                return f is not None and carries_genvae_mark(f)
        data = fs.read_file_in(root, rel, 64 << 20)
    except (OSError, GenvaeError):
        return False
    if rel == CONFIG:
        return _is_genvae_config(data)
    if rel.endswith("trainer.json"):
        parsed = _json_of(data)
        return isinstance(parsed, dict) and isinstance(parsed.get("step"), int)
    return _is_metrics(data)


# -- the folder ------------------------------------------------------------------------------------------


class ModelFolder:
    """The files genvae wrote in one folder (relative POSIX paths), read from and kept in its manifest, and every
    operation genvae makes on them."""

    def __init__(self, path: str | os.PathLike, *, root: str | os.PathLike | None = None):
        self.path = Path(path)
        self.root = Path(root) if root is not None else self.path
        self.prefix = "" if root is None else self.path.relative_to(self.root).as_posix()
        fs.relative_parts(self.prefix)  # a nested folder lies strictly inside its root
        self._files: set[str] | None = None

    def child(self, rel: str) -> ModelFolder:
        """A folder genvae manages inside this one (``stages/level-0``), walked to from this folder's root."""
        fs.relative_parts(rel)
        return ModelFolder(self.path / rel, root=self.root)

    def full(self, rel: str) -> str:
        """``rel`` relative to the root this folder's operations walk from."""
        return f"{self.prefix}/{rel}" if self.prefix and rel else (self.prefix or rel)

    # -- what the folder is ------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def exists(self) -> bool:
        """A real folder (a link inside the root on the way to it is refused)."""
        try:
            with fs.open_folder(self.root, self.prefix):
                return True
        except (FileNotFoundError, NotADirectoryError):
            return False

    def entries(self, rel: str = "") -> list[os.DirEntry]:
        """What a folder inside this one holds (empty when absent); a link on the way is refused."""
        try:
            with fs.open_folder(self.root, self.full(rel)) as folder:
                return list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def lstat(self, rel: str) -> os.stat_result | None:
        return fs.lstat_in(self.root, self.full(rel))

    def is_empty(self) -> bool:
        """Absent, or holding nothing but genvae's lock, manifest and temporary files."""
        return not any(e.name not in (LOCK, MANIFEST) and not is_temp(e.name) for e in self.entries())

    def is_genvae(self) -> bool:
        """A folder genvae made: it has genvae's manifest, or the config and weights an older genvae wrote."""
        if not self.exists():
            return False
        return self._read_manifest() is not None or self._legacy_evidence()

    def _legacy_evidence(self) -> bool:
        """A folder of a genvae without manifests: its config.json *and* model.safetensors are genvae's (a copied
        config.json alone is not enough to claim the folder's other files)."""
        return all(_legacy_file_is_genvaes(self.root, self.full(rel)) for rel in (CONFIG, WEIGHTS))

    def foreign_entries(self) -> list[str]:
        """Top-level entries genvae did not write (its lock and manifest count as its own)."""
        owned_top = {f.split("/", 1)[0] for f in self.files()} | {MANIFEST, LOCK}
        return sorted(e.name for e in self.entries() if e.name not in owned_top and not is_temp(e.name))

    def check_can_build_into(self) -> None:
        """A new or empty folder, or one of genvae's own model folders; anything else is refused."""
        if self.prefix:
            st = fs.lstat_in(self.root, self.prefix)
            if st is not None and stat.S_ISLNK(st.st_mode):
                fs.make_folder_in(self.root, self.prefix)  # names the link
            not_folder = st is not None and not stat.S_ISDIR(st.st_mode)
        else:
            not_folder = self.path.exists() and not self.path.is_dir()
        if not_folder:
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
        st = self.lstat(MANIFEST)
        if st is None:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_MANIFEST:
            raise GenvaeError(f"{path} is not a regular file of genvae's; remove it by hand if it is not yours")
        try:
            data = json.loads(fs.read_file_in(self.root, self.full(MANIFEST), _MAX_MANIFEST) or b"")
            files = data["files"]
            if data.get("genvae_manifest") != MANIFEST_FORMAT or not all(isinstance(f, str) for f in files):
                raise ValueError
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise GenvaeError(f"{path} is damaged; genvae cannot tell which files it wrote there") from None
        return {f for f in files if _safe_relative(f)}

    def files(self) -> set[str]:
        """Relative paths genvae wrote here; a folder of an older genvae is adopted file by file, each only if its
        content is what genvae writes at that name."""
        if self._files is None:
            found = self._read_manifest()
            if found is None:
                found = set()
                if self.exists() and self._legacy_evidence():
                    found = {
                        rel
                        for rel in self.walk_files("")
                        if _LEGACY.match(rel) and _legacy_file_is_genvaes(self.root, self.full(rel))
                    }
            self._files = found
        return self._files

    def walk_files(self, rel: str) -> Iterator[str]:
        """Relative paths of the regular files under ``rel``, walked without following links."""
        for entry in self.entries(rel):
            sub = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from self.walk_files(sub)
            elif entry.is_file(follow_symlinks=False):
                yield sub

    def _save(self) -> None:
        text = json.dumps({"genvae_manifest": MANIFEST_FORMAT, "files": sorted(self.files())}, indent=1) + "\n"
        fs.write_file_in(self.root, self.full(MANIFEST), lambda f: f.write(text.encode()))

    def record(self, *relative: str) -> None:
        """Note files genvae is about to write (before writing them)."""
        new = [r for r in relative if r not in self.files()]
        if new or self.lstat(MANIFEST) is None:
            self.files().update(new)
            self._save()

    def owns(self, relative: str) -> bool:
        return relative in self.files()

    # -- writing -------------------------------------------------------------------------------------
    def write(self, rel: str, write: Callable[[BinaryIO], object]) -> Path:
        """Record ``rel`` as genvae's, then write it atomically (:func:`genvae.core.files.write_file_in`).

        A file genvae did not write at ``rel`` is refused first (:class:`ForeignFileError`)."""
        self.check_outputs([rel])
        self.record(rel)
        fs.write_file_in(self.root, self.full(rel), write)
        return self.path / rel

    def write_bytes(self, rel: str, data: bytes) -> Path:
        return self.write(rel, lambda f: f.write(data))

    def write_text(self, rel: str, text: str) -> Path:
        return self.write(rel, lambda f: f.write(text.encode("utf-8")))

    def append(self, rel: str, data: bytes) -> None:
        """Record ``rel`` as genvae's and append ``data`` with one write (a user's file there is refused)."""
        self.check_outputs([rel])
        self.record(rel)
        fs.append_file_in(self.root, self.full(rel), data)

    def read(self, rel: str, max_bytes: int) -> bytes | None:
        return fs.read_file_in(self.root, self.full(rel), max_bytes)

    def subdir(self, relative: str) -> Path:
        """A real folder inside this one, created when absent (a link or a file in its place is refused)."""
        fs.make_folder_in(self.root, self.full(relative))
        return self.path / relative

    def make_temp_folder(self, rel: str) -> str:
        """An empty folder beside ``rel`` under a temporary name; its relative path (fill it, then :meth:`rename`)."""
        made = fs.make_temp_folder_in(self.root, self.full(rel))
        return made[len(self.prefix) + 1 :] if self.prefix else made

    def rename(self, src: str, dst: str) -> None:
        fs.rename_in(self.root, self.full(src), self.full(dst))

    def remove_temp_folder(self, rel: str) -> None:
        fs.remove_temp_folder_in(self.root, self.full(rel))

    def remove_orphans(self, subfolders: tuple[str, ...] = ("", "checkpoints", "samples")) -> int:
        return fs.remove_orphans(self.root, tuple(self.full(s) for s in subfolders))

    # -- checking before a run -----------------------------------------------------------------------
    def check_outputs(self, relatives: Iterable[str]) -> None:
        """Every file genvae is going to write must be absent or a regular file genvae wrote, reached through
        real folders; anything else is refused in one line, before any work."""
        for rel in relatives:
            st = self.lstat(rel)
            if st is None:
                continue
            if not stat.S_ISREG(st.st_mode):
                fs.check_file_in(self.root, self.full(rel))  # names a link or a special file
            if not self.owns(rel):
                raise ForeignFileError(
                    f"{self.path / rel} exists and genvae did not write it; genvae never "
                    "overwrites a file it did not write (move it away or use another folder; "
                    "nothing was changed)"
                )

    def check_tree(self, rel: str) -> None:
        """Everything under the folder ``rel`` is genvae's: regular files it wrote in real folders (or nothing)."""
        st = self.lstat(rel)
        if st is None:
            return
        if not stat.S_ISDIR(st.st_mode):
            fs.make_folder_in(self.root, self.full(rel))  # names a link or a file in its place
        for entry in self.entries(rel):
            sub = f"{rel}/{entry.name}"
            if is_temp(entry.name):
                continue
            if entry.is_dir(follow_symlinks=False):
                self.check_tree(sub)
            else:
                self.check_outputs([sub])

    # -- deleting ------------------------------------------------------------------------------------
    def remove(self, relatives: Iterable[str]) -> int:
        """Delete the given genvae files (those not in the manifest are left alone), then the folders they leave
        empty. Every path is checked first: a link on the way to any of them refuses the whole removal in one
        line, before anything is deleted."""
        targets = sorted(r for r in set(relatives) if r in self.files())
        for rel in targets:  # nothing is deleted unless every path is safe
            folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
            try:
                with fs.open_folder(self.root, self.full(folder)):
                    pass
            except (FileNotFoundError, NotADirectoryError):
                pass
        removed = 0
        for rel in targets:
            removed += fs.remove_file_in(self.root, self.full(rel))
            self.files().discard(rel)
        for rel in targets:  # folders genvae made, deepest first, once nothing else is in them
            parent = Path(rel).parent
            while parent != Path("."):
                if not fs.remove_empty_folder_in(self.root, self.full(parent.as_posix())):
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


def as_model_folder(folder: str | os.PathLike | ModelFolder) -> ModelFolder:
    return folder if isinstance(folder, ModelFolder) else ModelFolder(folder)


def _safe_relative(rel: str) -> bool:
    try:
        return bool(fs.relative_parts(rel))
    except UnsafePathError:
        return False


# -- the lock ----------------------------------------------------------------------------------------

_HELD: dict[str, list] = {}  # real path -> [fd, depth]: re-entrant within one process


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("utf-8", errors="replace").strip()
        return text.split()[0] if text else "unknown"
    except (OSError, AttributeError):  # no pread (Windows)
        return "unknown"


def _open_lock(folder: ModelFolder) -> int:
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    if folder.prefix:
        folder.subdir("")
    else:
        folder.path.mkdir(parents=True, exist_ok=True)
    with fs.open_folder(folder.root, folder.prefix) as where:
        fs.check_file_in(folder.root, folder.full(LOCK))
        if isinstance(where, int):
            fd = os.open(LOCK, flags, 0o666, dir_fd=where)
        else:
            fd = os.open(where / LOCK, flags, 0o666)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(f"{folder.path / LOCK} is not a regular file; genvae's lock is a regular file")
    return fd


@contextlib.contextmanager
def lock_folder(folder: str | os.PathLike | ModelFolder) -> Iterator[None]:
    """Hold the model folder's exclusive lock; a second process gets :class:`FolderInUseError` at once."""
    mf = as_model_folder(folder)
    key = os.path.realpath(mf.path)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    fd = _open_lock(mf)
    try:
        _lock_fd(fd)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise _in_use(mf.path, holder) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[key] = [fd, 1]
        yield
    finally:
        _HELD.pop(key, None)
        _unlock_fd(fd)
        os.close(fd)


def _in_use(folder: Path, holder: str) -> FolderInUseError:
    return FolderInUseError(
        f"model folder {folder} is in use by another genvae process (pid {holder}); wait "
        "for it to finish or stop it, then retry"
    )


def check_not_in_use(folder: str | os.PathLike | ModelFolder) -> None:
    """Raise :class:`FolderInUseError` at once if another process holds the folder's lock, writing nothing.

    A command calls it first, so that a busy folder is reported as busy rather than by whatever other check the
    running process's files would fail (``train`` on a folder another run has just checkpointed). The lock is
    tested by taking and dropping it on a read-only descriptor; :func:`lock_folder` still guards the writes.
    """
    folder = as_model_folder(folder).path
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
            raise _in_use(folder, _holder(fd)) from None
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
