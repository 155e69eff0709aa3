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


@pytest.mark.slow
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
                for name, data in (
                    (f"img{i:04d}.png", (loose / f"img{i:04d}.png").read_bytes()),
                    (f"img{i:04d}.json", b"{}"),
                ):
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
        png = png_bytes(picture(5))
        info = tarfile.TarInfo("x.png")
        info.size = len(png)
        tar.addfile(info, io.BytesIO(png))
    with pytest.warns(UserWarning, match="not an uncompressed tar"):
        data = load_data(folder, image_size=8, channels=3)
    assert len(data) == 4


def crafted_shard(path: Path, claimed: int) -> None:
    """A shard of a.png then big.png, big.png's header patched to claim ``claimed`` bytes (checksum recomputed)."""
    first = png_bytes(picture(20))
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in (("a.png", first), ("big.png", png_bytes(picture(21)))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    offset = 512 + -(-len(first) // 512) * 512  # big.png's header, after a.png's header and data
    raw = bytearray(path.read_bytes())
    raw[offset + 124 : offset + 136] = b"\x80" + claimed.to_bytes(11, "big")  # GNU base-256 size field
    raw[offset + 148 : offset + 156] = b" " * 8
    raw[offset + 148 : offset + 156] = b"%06o\0 " % sum(raw[offset : offset + 512])
    path.write_bytes(bytes(raw[: offset + 512]))  # up to the crafted header: 1.5 KB in all
    assert tarfile.TarInfo.frombuf(bytes(raw[offset : offset + 512]), "utf-8", "strict").size == claimed  # as tarfile
    # reads it (the checksum is right)


@pytest.mark.parametrize("cached", [True, False])
def test_a_member_claiming_more_than_the_shard_holds_is_skipped(tmp_path, cache_dir, monkeypatch, cached):
    """A 1.5 KB shard whose header claims 10**15 bytes ended the run with MemoryError (one read of that size)."""
    if not cached:
        monkeypatch.setenv(cache.ENV, "off")
    folder = tmp_path / "data"
    write_folder(folder, 4)
    crafted_shard(folder / "crafted.tar", 10**15)
    with pytest.warns(UserWarning, match="skipped 1 unreadable") as warned:
        data = load_data(folder, image_size=8, channels=3)
    assert len(data) == 5  # the four loose images and the shard's a.png, read before the crafted member
    assert data.skipped == [f"{folder / 'crafted.tar'}:big.png"]
    assert "claims 1,000,000,000,000,000 bytes, past the end of the 1,536-byte shard" in str(warned[0].message)


def test_a_member_over_the_size_limit_is_skipped_and_the_rest_of_the_shard_read(tmp_path, cache_dir):
    """A member that does lie in the shard but claims more than MAX_MEMBER_BYTES (a sparse file here)."""
    from genvae.core.decode import MAX_MEMBER_BYTES

    folder = tmp_path / "data"
    folder.mkdir()
    after = png_bytes(picture(30))
    with open(folder / "sparse.tar", "wb") as f:
        huge = tarfile.TarInfo("huge.png")
        huge.size = MAX_MEMBER_BYTES + 1
        f.write(huge.tobuf(format=tarfile.GNU_FORMAT))
        f.seek(512 + -(-huge.size // 512) * 512)  # a hole: the file is sparse, nothing is written
        info = tarfile.TarInfo("after.png")
        info.size = len(after)
        f.write(info.tobuf(format=tarfile.GNU_FORMAT) + after + bytes(-len(after) % 512) + bytes(1024))
    with pytest.warns(UserWarning, match="skipped 1 unreadable") as warned:
        data = load_data(folder, image_size=8, channels=3)
    assert len(data) == 1 and data.skipped == [f"{folder / 'sparse.tar'}:huge.png"]
    assert "claims 268,435,457 bytes, over the 256 MiB genvae reads for one image" in str(warned[0].message)


def test_train_on_a_crafted_shard_reports_the_skip_and_trains(tmp_path, cache_dir):
    from genvae.testing import invoke_cli

    folder = tmp_path / "data"
    write_folder(folder, 8)
    crafted_shard(folder / "crafted.tar", 10**15)
    sets = [
        a
        for s in ("image_size=8", "encoder.width=4", "encoder.depth=2", "decoder.width=4", "decoder.depth=2")
        for a in ("--set", s)
    ]
    assert invoke_cli(["build", "--preset", "cvae", *sets, "-o", str(tmp_path / "m")]).exit_code == 0
    with pytest.warns(UserWarning, match="claims 1,000,000,000,000,000 bytes"):
        result = invoke_cli(
            ["train", str(tmp_path / "m"), "--data", str(folder), "--max-steps", "2", "--batch-size", "4", "--quiet"]
        )
    assert result.exit_code == 0, result.output
    assert f"skipped 1 unreadable file(s), e.g. {folder / 'crafted.tar'}:big.png" in result.stderr


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
