"""Writing files safely: atomic replacement, the user's umask, no symlinks followed, no orphans.

Every file genvae writes goes through :func:`atomic_write`: the data is written to a temporary
file in the destination's folder (named ``.genvae-tmp.<name>.<random>``) and renamed over the
destination, so a reader or a crash never sees half a file. The destination must be absent or a
regular file: a symlink, FIFO, device or folder in its place is refused, never followed or
replaced. Temporary files left by a killed process carry the prefix, so the next run can remove
exactly those (:func:`remove_orphans`) and nothing else.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from genvae.core.errors import GenvaeError

TEMP_PREFIX = ".genvae-tmp."


class UnsafePathError(GenvaeError):
    """A path genvae would write is a symlink or not a regular file (or folder)."""


def _temp_name(path: Path) -> Path:
    return path.with_name(f"{TEMP_PREFIX}{path.name[:80]}.{secrets.token_hex(6)}")


def check_writable_file(path: str | os.PathLike) -> None:
    """Refuse a destination that exists and is not a regular file (a symlink included)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{path} is a symlink; genvae does not write through links (remove it or choose "
                              "another path)")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{path} exists and is not a regular file; genvae writes only regular files")


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) as needed; an existing entry must be a real folder, not a symlink.

    The top-level folder a user names may itself be a symlink to a folder (a run folder on a scratch
    disk); folders genvae creates inside it are checked with :func:`ensure_subdir`.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UnsafePathError(f"{path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def ensure_subdir(path: str | os.PathLike) -> Path:
    """A folder genvae owns inside a model folder (``checkpoints/``, ``samples/``): never a symlink."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        ensure_dir(path.parent)
        path.mkdir(exist_ok=True)
        return path
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{path} is a symlink or not a folder; genvae writes only into real folders")
    return path


def create_file(path: Path, mode: int = 0o666) -> int:
    """Create a new file exclusively, honouring the umask (``mkstemp`` would force 0600); returns the fd."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    return os.open(path, flags, mode)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` then rename the result onto ``path`` (same folder: the rename is atomic).

    ``write`` receives the path of an empty file it may overwrite. On any failure the temporary file
    is removed and ``path`` is left as it was.
    """
    path = Path(path)
    ensure_dir(path.parent)
    check_writable_file(path)
    tmp = _temp_name(path)
    fd = create_file(tmp)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)  # what the umask gave; some writers (safetensors) force 0600
    os.close(fd)
    try:
        write(tmp)
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            os.chmod(tmp, mode)
        check_writable_file(path)  # still nothing foreign there
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def make_temp_dir(final: Path) -> Path:
    """An empty folder beside ``final`` under a temporary name (umask honoured), to fill then rename."""
    ensure_dir(final.parent)
    tmp = _temp_name(final)
    tmp.mkdir(mode=0o777)
    return tmp


def is_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def remove_orphans(folder: str | os.PathLike, subfolders: tuple[str, ...] = ("", "checkpoints", "samples")) -> int:
    """Remove genvae's temporary files and folders left by a killed write; returns how many were removed.

    Only entries whose name carries :data:`TEMP_PREFIX` are touched; a temporary folder holds only
    files genvae was writing into it.
    """
    removed = 0
    for sub in subfolders:
        where = Path(folder) / sub if sub else Path(folder)
        try:
            if os.path.islink(where) or not where.is_dir():
                continue
            entries = list(os.scandir(where))
        except OSError:
            continue
        for entry in entries:
            if not is_temp(entry.name):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed
