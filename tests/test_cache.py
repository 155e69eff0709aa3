"""The on-disk image cache and tar shards: decoded once, memory-mapped after, rebuilt when the source changes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genvae.core import cache
from genvae.core.data import clear_cache, load_data


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV, str(root))
    clear_cache()
    yield root
    clear_cache()


def picture(i: int, size: int = 12) -> Image.Image:
    g = np.random.default_rng(i)
    return Image.fromarray(g.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_folder(folder: Path, n: int, broken: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        picture(i).save(folder / f"img{i:04d}.png")
    for j in range(broken):
        (folder / f"broken{j}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def test_second_load_maps_the_cache_instead_of_decoding(tmp_path, cache_dir):
    write_folder(tmp_path / "imgs", 20, broken=2)
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        first = load_data(tmp_path / "imgs", image_size=8, channels=3)
    assert first.images.shape == (20, 3, 8, 8)
    [entry] = cache.entries(cache_dir)
    assert entry["shape"] == [20, 3, 8, 8] and entry["bytes"] == 20 * 3 * 8 * 8
    # change the cached bytes behind genvae's back: a new process (cleared in-process cache) must read them
    path = Path(entry["folder"]) / cache.IMAGES
    raw = bytearray(path.read_bytes())
    raw[:192] = bytes(192)
    path.write_bytes(bytes(raw))
    clear_cache()
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):  # the skipped files are remembered
        second = load_data(tmp_path / "imgs", image_size=8, channels=3)
    assert second.images[0].sum() == 0 and torch.equal(second.images[1:], first.images[1:])
    assert sorted(Path(s).name for s in second.skipped) == ["broken0.png", "broken1.png"]
    # the mapping is copy-on-write: writing to the tensor never changes the cache file
    second.images[1].fill_(7)
    assert path.read_bytes() == bytes(raw)


def test_a_changed_folder_is_decoded_again(tmp_path, cache_dir):
    write_folder(tmp_path / "imgs", 6)
    load_data(tmp_path / "imgs", image_size=8, channels=3)
    picture(99).save(tmp_path / "imgs" / "img9999.png")
    clear_cache()
    data = load_data(tmp_path / "imgs", image_size=8, channels=3)
    assert len(data) == 7 and len(cache.entries(cache_dir)) == 2
    # another size or channel count is another entry
    assert load_data(tmp_path / "imgs", image_size=4, channels=3).images.shape == (7, 3, 4, 4)
    assert len(cache.entries(cache_dir)) == 3
    assert load_data(tmp_path / "imgs", image_size=4, channels=1).images.shape == (7, 1, 4, 4)
    assert len(cache.entries(cache_dir)) == 4


def test_worker_processes_decode_and_compact_like_one_thread(tmp_path, cache_dir, monkeypatch):
    write_folder(tmp_path / "imgs", 40, broken=3)
    monkeypatch.setenv(cache.ENV, "off")
    with pytest.warns(UserWarning):
        in_memory = load_data(tmp_path / "imgs", image_size=8, channels=3)
    assert not cache_dir.exists()
    monkeypatch.setenv(cache.ENV, str(cache_dir))
    monkeypatch.setattr(cache, "_PROCESS_MIN", 8)
    monkeypatch.setattr(cache, "_BLOCK", 5)  # the broken files fall in different workers' blocks
    clear_cache()
    with pytest.warns(UserWarning, match="skipped 3"):
        mapped = load_data(tmp_path / "imgs", image_size=8, channels=3)
    assert torch.equal(mapped.images, in_memory.images)
    assert mapped.skipped == in_memory.skipped


def test_tar_shards_are_read_in_place(tmp_path, cache_dir):
    loose, shards = tmp_path / "loose", tmp_path / "shards"
    write_folder(loose, 300)
    shards.mkdir()
    for s in range(3):  # WebDataset layout: key.png with key.json beside it, 100 per shard
        with tarfile.open(shards / f"shard-{s:03d}.tar", "w") as tar:
            for i in range(100 * s, 100 * (s + 1)):
                for name, data in ((f"img{i:04d}.png", (loose / f"img{i:04d}.png").read_bytes()),
                                   (f"img{i:04d}.json", b"{}")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            if s == 1:
                info = tarfile.TarInfo("broken.png")
                info.size = 5
                tar.addfile(info, io.BytesIO(b"nope!"))
    with tarfile.open(shards / "packed.tar.gz", "w:gz"):
        pass  # not a .tar: ignored
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        from_tar = load_data(shards, image_size=8, channels=3)
    from_files = load_data(loose, image_size=8, channels=3)
    assert len(from_tar) == 300
    assert torch.equal(from_tar.images, from_files.images)
    assert from_tar.skipped == [f"{shards / 'shard-001.tar'}:broken.png"]


def test_a_compressed_tar_is_reported_not_fatal(tmp_path, cache_dir):
    folder = tmp_path / "mixed"
    write_folder(folder, 4)
    with tarfile.open(folder / "zipped.tar", "w:gz") as tar:  # gzip under a .tar name
        data = png_bytes(picture(5))
        info = tarfile.TarInfo("x.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.warns(UserWarning, match="not an uncompressed tar"):
        data = load_data(folder, image_size=8, channels=3)
    assert len(data) == 4


def test_cache_command_lists_and_clears_only_its_entries(tmp_path, cache_dir):
    from genvae.testing import invoke_cli

    write_folder(tmp_path / "imgs", 5)
    load_data(tmp_path / "imgs", image_size=8, channels=3)
    (cache_dir / "notes.txt").write_text("mine")
    (cache_dir / "other").mkdir()
    listed = invoke_cli(["cache", "list"])
    assert listed.exit_code == 0 and "5 x 3x8x8" in listed.output
    cleared = invoke_cli(["cache", "clear"])
    assert cleared.exit_code == 0 and "removed 1 cached data set(s)" in cleared.output
    assert sorted(p.name for p in cache_dir.iterdir()) == ["notes.txt", "other"]
    assert "is empty" in invoke_cli(["cache", "list"]).output
