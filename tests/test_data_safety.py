"""Data safety: only regular files are opened, and save_grid never overwrites a user's file.

Everything here uses real files, real FIFOs and real symlinks (no mocks). Anything that could hang
on a regression (opening a FIFO) runs in a subprocess or a thread with a timeout, so the suite fails
instead of hanging.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from PIL import Image

from genvae.core.decode import read_image, to_model_range
from genvae.core.errors import DataError, GenvaeError
from genvae.core.files import UnsafePathError
from genvae.core.images import check_image_output, save_grid, written_by_genvae

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX)")
needs_symlink = pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")


def _images(n: int = 4, channels: int = 3) -> torch.Tensor:
    return to_model_range(torch.randint(0, 256, (n, channels, 16, 16), dtype=torch.uint8))


def _in_thread(fn, timeout: float = 30.0):
    """Run fn() in a daemon thread; fail (rather than hang) if it does not finish in time."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"still blocked after {timeout}s (an open() waiting on a FIFO?)")
    if "error" in result:
        raise result["error"]
    return result.get("value")


# ---------------------------------------------------------------------------------------------
# reading: only regular files


@needs_fifo
@needs_symlink
def test_folder_with_fifo_device_and_folder_skips_them(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        Image.new("RGB", (16, 16), (i * 60, 0, 0)).save(folder / name)
    Image.new("RGB", (16, 16), (0, 200, 0)).save(tmp_path / "outside.png")
    os.mkfifo(folder / "f.png")
    os.symlink("/dev/zero", folder / "z.png")
    (folder / "d.png").mkdir()
    os.symlink(tmp_path / "outside.png", folder / "s.png")
    script = textwrap.dedent(
        """
        import json, sys, warnings
        from genvae.core.data import load_data
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            data = load_data(sys.argv[1], image_size=16, channels=3)
        print(json.dumps({
            "n": len(data),
            "shape": list(data.images.shape),
            "red": data.images[:, 0, 8, 8].tolist(),
            "green": data.images[:, 1, 8, 8].tolist(),
            "skipped": data.skipped,
            "warnings": [str(w.message) for w in record],
        }))
        """
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 60
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] == 4 and out["shape"] == [4, 3, 16, 16]  # a, b, c and the symlinked s.png
    assert out["red"] == [0, 60, 120, 0] and out["green"] == [0, 0, 0, 200]
    assert sorted(os.path.basename(p) for p in out["skipped"]) == ["d.png", "f.png", "z.png"]
    assert len(out["warnings"]) == 1
    message = out["warnings"][0]
    assert "skipped 3 unreadable" in message and "d.png" in message and "not a regular file" in message


@needs_fifo
def test_folder_of_only_fifos_is_an_error_not_a_hang(tmp_path):
    os.mkfifo(tmp_path / "only.png")
    script = (
        "import sys\nfrom genvae.core.data import load_data\n"
        "from genvae.core.errors import DataError\n"
        "try:\n    load_data(sys.argv[1], image_size=16, channels=1)\n"
        "except DataError as exc:\n    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "no readable image" in proc.stdout and "only.png" in proc.stdout and "not a regular file" in proc.stdout


@needs_fifo
def test_read_image_refuses_fifo_promptly(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)

    def read():
        with pytest.raises(DataError) as info:
            read_image(fifo, 16, 3)
        return str(info.value)

    message = _in_thread(read)
    assert message.startswith(f"cannot read image {fifo}: ") and "not a regular file" in message
    assert "\n" not in message


def test_read_image_reads_and_fits(tmp_path):
    Image.new("RGB", (32, 16), (10, 20, 30)).save(tmp_path / "wide.png")
    pixels = read_image(tmp_path / "wide.png", 16, 3)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 16, 16)
    assert pixels[:, 8, 8].tolist() == [10, 20, 30]
    assert read_image(str(tmp_path / "wide.png"), 8, 1).shape == (1, 8, 8)


def test_read_image_errors_are_one_line(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image")
    (tmp_path / "folder.png").mkdir()
    for name in ("junk.png", "missing.png", "folder.png"):
        with pytest.raises(DataError) as info:
            read_image(tmp_path / name, 16, 3)
        assert str(info.value).startswith(f"cannot read image {tmp_path / name}: ")
        assert "\n" not in str(info.value)
    assert "cannot identify image file" in _message(read_image, tmp_path / "junk.png", 16, 3)


def _message(fn, *args) -> str:
    with pytest.raises(GenvaeError) as info:
        fn(*args)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# writing: the format the extension says, marked as genvae's


@pytest.mark.parametrize(
    ("ext", "fmt"),
    [
        ("png", "PNG"),
        ("jpg", "JPEG"),
        ("jpeg", "JPEG"),
        ("webp", "WEBP"),
        ("bmp", "BMP"),
        ("tif", "TIFF"),
        ("tiff", "TIFF"),
        ("PNG", "PNG"),
    ],
)
def test_save_grid_writes_the_extensions_format(tmp_path, ext, fmt):
    path = tmp_path / f"grid.{ext}"
    save_grid(_images(), path, nrow=2)
    with Image.open(path) as img:
        assert img.format == fmt and img.size == (2 * 18 + 2, 2 * 18 + 2)
    assert written_by_genvae(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
    save_grid(_images(2, channels=1), path, nrow=2)  # genvae's own output: replaced freely
    with Image.open(path) as img:
        assert img.format == fmt and img.size == (2 * 18 + 2, 18 + 2)
    assert written_by_genvae(path)


@pytest.mark.parametrize("name", ["grid.foo", "grid", "grid.gif", "grid."])
def test_unknown_or_missing_extension_refused_before_work(tmp_path, name):
    path = tmp_path / "sub" / name
    for fn, args in ((check_image_output, (path,)), (save_grid, (_images(), path))):
        with pytest.raises(DataError) as info:
            fn(*args)
        message = str(info.value)
        assert "\n" not in message and "png, jpg, jpeg, webp, bmp, tif, tiff" in message
    assert not (tmp_path / "sub").exists()  # refused before any work: not even the folder


def test_users_file_is_never_overwritten(tmp_path):
    user_png = tmp_path / "holiday.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(user_png)
    user_jpg = tmp_path / "notes.jpg"
    user_jpg.write_bytes(b"my thesis draft, not an image")
    for path in (user_png, user_jpg):
        before = path.read_bytes()
        assert not written_by_genvae(path)
        for fn, args in ((check_image_output, (path,)), (save_grid, (_images(), path))):
            with pytest.raises(DataError) as info:
                fn(*args)
            assert str(info.value) == (f"{path} exists and was not written by genvae; remove it or choose another path")
        assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["holiday.png", "notes.jpg"]


def test_user_bmp_without_mark_is_not_genvaes(tmp_path):
    path = tmp_path / "paint.bmp"
    Image.new("RGB", (16, 16), (9, 9, 9)).save(path)
    assert not written_by_genvae(path)
    with pytest.raises(DataError, match="not written by genvae"):
        save_grid(_images(), path)


def test_check_image_output_accepts_new_and_genvae_paths(tmp_path):
    check_image_output(tmp_path / "new" / "grid.webp")  # a missing folder is created later by save_grid
    save_grid(_images(), tmp_path / "mine.png")
    check_image_output(tmp_path / "mine.png")
    assert not written_by_genvae(tmp_path / "missing.png")


@needs_symlink
def test_symlink_destination_refused_and_target_unchanged(tmp_path):
    target = tmp_path / "target.png"
    save_grid(_images(), target)  # even a genvae file: genvae never writes through a link
    before = target.read_bytes()
    link = tmp_path / "link.png"
    os.symlink(target, link)
    for fn, args in ((check_image_output, (link,)), (save_grid, (_images(1), link))):
        with pytest.raises(UnsafePathError, match="symlink"):
            fn(*args)
    assert target.read_bytes() == before and os.path.islink(link)
    dangling = tmp_path / "dangling.png"
    os.symlink(tmp_path / "nowhere.png", dangling)
    with pytest.raises(UnsafePathError):
        save_grid(_images(1), dangling)
    assert not (tmp_path / "nowhere.png").exists()


@needs_fifo
def test_fifo_or_folder_destination_refused(tmp_path):
    fifo = tmp_path / "out.png"
    os.mkfifo(fifo)
    with pytest.raises(UnsafePathError, match="not a regular file"):
        _in_thread(lambda: save_grid(_images(1), fifo))
    assert not _in_thread(lambda: written_by_genvae(fifo))
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(UnsafePathError):
        check_image_output(tmp_path / "dir.png")
