"""Writing and deleting files safely: atomic replacement, the user's umask, no link followed, no orphans.

Every path genvae writes, creates or deletes is named by a *root* folder and a relative POSIX path
under it (``checkpoints/step-00000004/model.safetensors``). The root is the folder the user named
(it may itself be a symlink: a run folder on a scratch disk); inside it, no link is ever followed.
Each component is opened from the one before with ``O_NOFOLLOW | O_DIRECTORY`` and the final
operation (create, rename, unlink, rmdir) is made relative to the open parent folder (``dir_fd``),
so a folder swapped for a link between a check and the operation cannot redirect it: the
operation fails instead. On a platform without ``dir_fd`` support (Windows) each component is
checked with ``lstat`` just before the operation.

Files are written by :func:`write_file_in`: the data goes to ``.genvae-tmp.<name>.<random>`` in
the destination's folder, opened exclusively on a file descriptor genvae holds, and is renamed over
the destination once complete, so a reader or a crash never sees half a file. The destination must
be absent or a regular file: a symlink, FIFO, device or folder in its place is refused, never
followed or replaced. Temporary files left by a killed process carry the prefix, so the next run
removes exactly those (:func:`remove_orphans`) and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from genvae.core.errors import GenvaeError

TEMP_PREFIX = ".genvae-tmp."
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: whether folders can be walked by descriptor (POSIX); elsewhere each component is checked by lstat
USE_DIR_FD = (
    bool(_NOFOLLOW and _DIRECTORY)
    and {os.open, os.mkdir, os.unlink, os.rmdir, os.rename, os.stat} <= os.supports_dir_fd
)


class UnsafePathError(GenvaeError):
    """A path genvae would write or delete is, or goes through, a symlink or something that is not a regular
    file or folder."""


def _link_error(path: Path) -> UnsafePathError:
    return UnsafePathError(
        f"{path} is a symlink; genvae never writes or deletes through a link inside a folder it "
        "manages (replace the link with a real folder or file, or move it away)"
    )


def _kind_error(path: Path, wanted: str) -> UnsafePathError:
    return UnsafePathError(f"{path} exists and is not a {wanted}; genvae writes only regular files in real folders")


def relative_parts(rel: str) -> list[str]:
    """``a/b/c`` -> ``["a", "b", "c"]``; empty for the root; a one-line error for an absolute path or ``..``."""
    if rel in ("", "."):
        return []
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or any(p in ("..", ".") for p in parts) or "\\" in rel:
        raise UnsafePathError(f"'{rel[:80]}' is not a plain relative path inside the folder")
    return list(parts)


def is_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def _temp_name(name: str) -> str:
    return f"{TEMP_PREFIX}{name[:80]}.{secrets.token_hex(6)}"


# -- walking a folder without following links ----------------------------------------------------------


def _open_root(root: Path) -> int:
    try:
        return os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    except NotADirectoryError:
        raise _kind_error(root, "folder") from None


def _open_child_dir(fd: int, name: str, where: Path, create: bool) -> int:
    """The folder ``name`` inside the folder open at ``fd``, never a link; created when absent and ``create``."""
    flags = os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC
    for _ in range(2):
        try:
            return os.open(name, flags, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):  # another process made it meanwhile: open that
                os.mkdir(name, 0o777, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK) or _is_link_at(fd, name):
                raise _link_error(where) from None
            if exc.errno == errno.ENOTDIR:
                raise _kind_error(where, "folder") from None
            raise
    return os.open(name, flags, dir_fd=fd)


def _is_link_at(fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _check_components(root: Path, parts: list[str], create: bool) -> Path:
    """The fallback without descriptors: each component must be a real folder (``lstat``); made when absent."""
    path = Path(root)
    if not path.is_dir():
        if path.exists():
            raise _kind_error(path, "folder")
        raise FileNotFoundError(errno.ENOENT, "No such folder", str(path))
    for name in parts:
        path = path / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if not create:
                raise
            path.mkdir(exist_ok=True)
            st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise _link_error(path)
        if not stat.S_ISDIR(st.st_mode):
            raise _kind_error(path, "folder")
    return path


@contextlib.contextmanager
def open_folder(root: str | os.PathLike, rel: str = "", *, create: bool = False) -> Iterator[int | Path]:
    """The folder ``root/rel`` held open for operations relative to it: a descriptor (POSIX) or a checked path.

    No component of ``rel`` may be a symlink or anything but a folder (:class:`UnsafePathError`); missing ones
    are created with ``create`` (else ``FileNotFoundError``). ``root`` itself is followed if it is a link.
    """
    root = Path(root)
    parts = relative_parts(rel)
    if not USE_DIR_FD:
        yield _check_components(root, parts, create)
        return
    if create:
        root.mkdir(parents=True, exist_ok=True)
    fd = _open_root(root)
    try:
        where = root
        for name in parts:
            where = where / name
            child = _open_child_dir(fd, name, where, create)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _at(folder: int | Path, name: str) -> tuple[str | Path, dict]:
    """(path argument, keyword arguments) of an operation on ``name`` in an open folder."""
    if isinstance(folder, int):
        return name, {"dir_fd": folder}
    return folder / name, {}


def _lstat_at(folder: int | Path, name: str) -> os.stat_result | None:
    path, kw = _at(folder, name)
    try:
        return os.stat(path, follow_symlinks=False, **kw)
    except FileNotFoundError:
        return None


def _split(rel: str) -> tuple[str, str]:
    parts = relative_parts(rel)
    if not parts:
        raise UnsafePathError("an empty path names the folder itself, not a file in it")
    return "/".join(parts[:-1]), parts[-1]


def lstat_in(root: str | os.PathLike, rel: str) -> os.stat_result | None:
    """``lstat`` of ``root/rel`` without following a link on the way; None when it (or a folder above) is absent."""
    parent, name = _split(rel)
    try:
        with open_folder(root, parent) as folder:
            return _lstat_at(folder, name)
    except (FileNotFoundError, NotADirectoryError):
        return None


def check_file_in(root: str | os.PathLike, rel: str) -> None:
    """Refuse, before any work, a destination :func:`write_file_in` would refuse (a link on the way included)."""
    st = lstat_in(root, rel)
    if st is not None:
        _check_regular(st, Path(root) / rel)


def _check_regular(st: os.stat_result, where: Path) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise _link_error(where)
    if not stat.S_ISREG(st.st_mode):
        raise _kind_error(where, "regular file")


# -- writing ---------------------------------------------------------------------------------------------


def _open_at(folder: int | Path, name: str, flags: int) -> int:
    path, kw = _at(folder, name)
    return os.open(path, flags | _NOFOLLOW | _BINARY | _CLOEXEC, 0o666, **kw)  # the umask applies


def write_file_in(root: str | os.PathLike, rel: str, write: Callable[[BinaryIO], object]) -> None:
    """Write ``root/rel`` atomically: ``write(file)`` fills a new temporary file beside it, which is then renamed
    over the destination (missing folders are created, none followed if it is a link).

    ``write`` receives a binary file opened for writing (never a path, which a swapped link could redirect).
    On any failure the temporary file is removed and ``rel`` is left as it was.
    """
    root = Path(root)
    parent, name = _split(rel)
    with open_folder(root, parent, create=True) as folder:
        where = root / rel
        st = _lstat_at(folder, name)
        if st is not None:
            _check_regular(st, where)
        tmp = _temp_name(name)
        fd = -1
        try:  # the open inside the try: a stop signal raised just after it still removes the new file
            fd = _open_at(folder, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            with os.fdopen(fd, "wb") as f:
                mode = stat.S_IMODE(os.fstat(fd).st_mode)  # what the umask gave
                write(f)
                f.flush()
                if stat.S_IMODE(os.fstat(fd).st_mode) != mode and os.chmod in os.supports_fd:
                    os.chmod(fd, mode)  # some writers (safetensors) force 0600
            st = _lstat_at(folder, name)  # still nothing foreign there
            if st is not None:
                _check_regular(st, where)
            src, _ = _at(folder, tmp)
            dst, _ = _at(folder, name)
            if isinstance(folder, int):
                os.replace(src, dst, src_dir_fd=folder, dst_dir_fd=folder)
            else:
                os.replace(src, dst)
        except BaseException as exc:
            if fd >= 0 or not isinstance(exc, OSError):  # an OSError from the open itself created nothing
                path, kw = _at(folder, tmp)
                with contextlib.suppress(OSError):
                    os.unlink(path, **kw)
            raise


def append_file_in(root: str | os.PathLike, rel: str, data: bytes) -> None:
    """Append ``data`` to ``root/rel`` with one write (created when absent; a crash can tear only this line)."""
    root = Path(root)
    parent, name = _split(rel)
    with open_folder(root, parent, create=True) as folder:
        try:
            fd = _open_at(folder, name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            st = _lstat_at(folder, name)
            if st is not None:
                _check_regular(st, root / rel)
            raise GenvaeError(f"cannot open {root / rel}: {exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _kind_error(root / rel, "regular file")
            os.write(fd, data)
        finally:
            os.close(fd)


@contextlib.contextmanager
def open_file_in(root: str | os.PathLike, rel: str) -> Iterator[BinaryIO | None]:
    """The regular file ``root/rel`` open for reading (None when absent), opened without following a link and
    checked on the descriptor, so a FIFO or device is refused at once instead of waited on."""
    root = Path(root)
    parent, name = _split(rel)
    try:
        with open_folder(root, parent) as folder:
            try:
                fd = _open_at(folder, name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            except FileNotFoundError:
                fd = -1
            except OSError:
                st = _lstat_at(folder, name)
                if st is not None:
                    _check_regular(st, root / rel)
                raise
    except (FileNotFoundError, NotADirectoryError):
        fd = -1
    if fd < 0:
        yield None
        return
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _kind_error(root / rel, "regular file")
        yield f


def read_file_in(root: str | os.PathLike, rel: str, max_bytes: int) -> bytes | None:
    """The bytes of the regular file ``root/rel`` (None when absent; see :func:`open_file_in`); a file over
    ``max_bytes`` is refused in one line."""
    with open_file_in(root, rel) as f:
        if f is None:
            return None
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise GenvaeError(f"{Path(root) / rel} is {size:,} bytes, over the {max_bytes:,} genvae reads there")
        return f.read()  # the size was checked on the descriptor


def make_folder_in(root: str | os.PathLike, rel: str) -> Path:
    """Create ``root/rel`` (and the folders above it) as real folders; an existing link or file there is refused."""
    with open_folder(root, rel, create=True):
        pass
    return Path(root) / rel


# -- deleting --------------------------------------------------------------------------------------------


def remove_file_in(root: str | os.PathLike, rel: str) -> bool:
    """Delete the regular file ``root/rel``; True when one was deleted. A link anywhere on the way raises
    :class:`UnsafePathError`; a link, folder or special file at ``rel`` itself is left alone (False)."""
    parent, name = _split(rel)
    try:
        with open_folder(root, parent) as folder:
            st = _lstat_at(folder, name)
            if st is None or not stat.S_ISREG(st.st_mode):
                return False
            path, kw = _at(folder, name)
            try:
                os.unlink(path, **kw)  # unlink never follows the last component: a swapped-in link is removed
            except FileNotFoundError:
                return False
            return True
    except (FileNotFoundError, NotADirectoryError):
        return False


def remove_empty_folder_in(root: str | os.PathLike, rel: str) -> bool:
    """Remove the folder ``root/rel`` if it is empty (``rmdir`` never follows a link); True when removed."""
    parent, name = _split(rel)
    try:
        with open_folder(root, parent) as folder:
            path, kw = _at(folder, name)
            os.rmdir(path, **kw)
            return True
    except (OSError, UnsafePathError):
        return False


def _remove_temp_tree(folder: int | Path, name: str) -> None:
    """A temporary folder genvae was filling: its files, then itself (a link or subfolder inside is left)."""
    path, kw = _at(folder, name)
    if isinstance(folder, int):
        try:
            fd = os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=folder)
        except OSError:
            return
        try:
            for entry in os.scandir(fd):
                if entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.name, dir_fd=fd)
        finally:
            os.close(fd)
    else:
        for entry in os.scandir(path):
            if entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
    with contextlib.suppress(OSError):
        os.rmdir(path, **kw)


def remove_orphans(root: str | os.PathLike, subfolders: tuple[str, ...] = ("", "checkpoints", "samples")) -> int:
    """Remove genvae's temporary files and folders left by a killed write; returns how many were removed.

    Only entries whose name carries :data:`TEMP_PREFIX` are touched, in real folders (a link is skipped).
    """
    removed = 0
    for sub in subfolders:
        try:
            with open_folder(root, sub) as folder:
                entries = list(os.scandir(folder))
                for entry in entries:
                    if not is_temp(entry.name):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        _remove_temp_tree(folder, entry.name)
                    else:
                        path, kw = _at(folder, entry.name)
                        with contextlib.suppress(OSError):
                            os.unlink(path, **kw)
                    removed += 1
        except (OSError, UnsafePathError):
            continue
    return removed


def make_temp_folder_in(root: str | os.PathLike, rel: str) -> str:
    """An empty folder beside ``rel`` under a temporary name (umask honoured), to fill then rename; its
    relative path."""
    parent, name = _split(rel)
    tmp = _temp_name(name)
    with open_folder(root, parent, create=True) as folder:
        path, kw = _at(folder, tmp)
        os.mkdir(path, 0o777, **kw)
    return f"{parent}/{tmp}" if parent else tmp


def rename_in(root: str | os.PathLike, src: str, dst: str) -> None:
    """Rename ``src`` onto ``dst`` in the same folder (atomic; a folder onto an empty folder, a file onto a file)."""
    sp, sname = _split(src)
    dp, dname = _split(dst)
    if sp != dp:
        raise UnsafePathError(f"rename_in renames within one folder, not {src[:60]} -> {dst[:60]}")
    with open_folder(root, sp) as folder:
        s, _ = _at(folder, sname)
        d, _ = _at(folder, dname)
        if isinstance(folder, int):
            os.replace(s, d, src_dir_fd=folder, dst_dir_fd=folder)
        else:
            os.replace(s, d)


def remove_temp_folder_in(root: str | os.PathLike, rel: str) -> None:
    """Remove a temporary folder made by :func:`make_temp_folder_in` and the files written into it."""
    parent, name = _split(rel)
    with contextlib.suppress(OSError, UnsafePathError), open_folder(root, parent) as folder:
        _remove_temp_tree(folder, name)


# -- files outside a managed folder (``sample -o grid.png``) ------------------------------------------------


def check_writable_file(path: str | os.PathLike) -> None:
    """Refuse a destination that exists and is not a regular file (a symlink included)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    _check_regular(st, Path(path))


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write a file the user named (its folder is theirs: links above it are followed, the file itself never);
    created with the folders above it as needed. See :func:`write_file_in`."""
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise _kind_error(path.parent, "folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_in(path.parent, path.name, write)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
