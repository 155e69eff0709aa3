"""The data layer on real image files: every mode and format, broken files, caching, grids."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from genvae.core.data import DEFAULT_DATASET, ImageData, clear_cache, load_data
from genvae.core.decode import fit_image, fit_tensor, to_model_range, to_uint8
from genvae.core.errors import DataError
from genvae.core.images import save_grid

RED = (200, 30, 60)
RED_L = round(0.299 * 200 + 0.587 * 30 + 0.114 * 60)  # 84, PIL's luma


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def _i16(size, value) -> Image.Image:
    return Image.fromarray(np.full(size[::-1], value, dtype=np.uint16))


def _palette_with_transparency(size) -> Image.Image:
    img = Image.new("P", size, 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (0, 0, size[0], size[1] // 2))
    img.info["transparency"] = 1  # index 1 (blue, top half) is transparent -> white
    return img


# name -> (image, save kwargs, expected RGB at the centre of the 8x8 result, tolerance)
# name: (make the image, save() options, the colour it loads as, tolerance)
FILES: dict[str, tuple[Callable[[], Image.Image], dict[str, Any], tuple[int, int, int] | None, int]] = {
    "a_rgb.png": (lambda: Image.new("RGB", (17, 40), RED), {}, RED, 1),
    "b_gray.jpg": (lambda: Image.new("L", (64, 64), 90), {"quality": 95}, (90, 90, 90), 3),
    "sub/c_rgba.png": (lambda: Image.new("RGBA", (100, 30), (255, 0, 0, 128)), {}, (255, 127, 127), 2),
    "sub/deeper/d_pal.png": (lambda: _palette_with_transparency((20, 20)), {}, None, 0),
    "sub/deeper/e_i16.png": (lambda: _i16((12, 12), 25700), {}, (100, 100, 100), 0),
    "f_cmyk.jpg": (lambda: Image.new("CMYK", (30, 30), (0, 255, 255, 0)), {"quality": 95}, (255, 0, 0), 6),
    "g_lossless.webp": (lambda: Image.new("RGB", (40, 40), (10, 200, 30)), {"lossless": True}, (10, 200, 30), 0),
    "h.bmp": (lambda: Image.new("RGB", (16, 24), (0, 0, 255)), {}, (0, 0, 255), 0),
    "i.gif": (lambda: Image.new("RGB", (33, 33), (255, 255, 0)).convert("P"), {}, (255, 255, 0), 0),
    "j.tiff": (lambda: Image.new("RGB", (9, 50), (40, 50, 60)), {}, (40, 50, 60), 0),
    "K_UPPER.PNG": (lambda: Image.new("LA", (10, 10), (0, 0)), {}, (255, 255, 255), 0),
}


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    """A folder of good images of every kind, nested, plus files that must be ignored."""
    root = tmp_path_factory.mktemp("images")
    for name, (make, kwargs, _, _) in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        make().save(path, **kwargs)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(root / ".hidden" / "ignored.png")
    return root


def _order() -> list[str]:
    return sorted(FILES, key=lambda n: tuple(n.split("/")))


def test_folder_every_mode_and_format(image_tree):
    data = load_data(str(image_tree), image_size=8, channels=3)
    assert isinstance(data, ImageData)
    x = data.images
    assert x.shape == (len(FILES), 3, 8, 8) and x.dtype == torch.uint8 and x.is_contiguous()
    assert len(data) == len(FILES) and data.skipped == []
    assert str(image_tree) in data.source
    for i, name in enumerate(_order()):
        expected, tol = FILES[name][2], FILES[name][3]
        if expected is None:
            continue
        got = x[i, :, 4, 4].tolist()
        assert all(abs(g - e) <= tol for g, e in zip(got, expected, strict=True)), (name, got, expected)


def test_palette_transparency_composited_on_white(image_tree):
    x = load_data(str(image_tree), image_size=20, channels=3).images
    i = _order().index("sub/deeper/d_pal.png")
    assert x[i, :, 2, 10].tolist() == [255, 255, 255]  # transparent top half
    assert x[i, :, 17, 10].tolist() == [255, 0, 0]  # opaque red bottom half


def test_folder_channels_one(image_tree):
    x = load_data(str(image_tree), image_size=8, channels=1).images
    assert x.shape == (len(FILES), 1, 8, 8)
    order = _order()
    assert abs(int(x[order.index("a_rgb.png"), 0, 4, 4]) - RED_L) <= 1
    assert int(x[order.index("sub/deeper/e_i16.png"), 0, 4, 4]) == 100  # 16-bit scaled, not clipped to 255


def test_folder_sizes_and_crop(tmp_path):
    """A wide image keeps its central square; a tall one too; the outside never bleeds in."""
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, 10:20] = 255  # white centre square, black sides
    tall = np.zeros((30, 10, 3), np.uint8)
    tall[10:20] = 255
    Image.fromarray(wide).save(tmp_path / "a_wide.png")
    Image.fromarray(tall).save(tmp_path / "b_tall.png")
    exact = load_data(str(tmp_path), image_size=10, channels=3).images
    assert (exact == 255).all()
    small = load_data(str(tmp_path), image_size=4, channels=3).images
    assert (small == 255).all()
    big = load_data(str(tmp_path), image_size=25, channels=3).images
    assert big.shape == (2, 3, 25, 25) and (big == 255).all()


def test_fit_image_off_centre_pattern():
    """Quadrant colours of the central square land in the right quadrants of the output."""
    arr = np.zeros((40, 80, 3), np.uint8)  # central square: x 20..60
    arr[:20, 20:40] = (255, 0, 0)
    arr[:20, 40:60] = (0, 255, 0)
    arr[20:, 20:40] = (0, 0, 255)
    arr[20:, 40:60] = (255, 255, 255)
    out = fit_image(Image.fromarray(arr), 8, 3)
    assert out.shape == (3, 8, 8) and out.dtype == torch.uint8
    assert out[:, 1, 1].tolist() == [255, 0, 0]
    assert out[:, 1, 6].tolist() == [0, 255, 0]
    assert out[:, 6, 1].tolist() == [0, 0, 255]
    assert out[:, 6, 6].tolist() == [255, 255, 255]


def test_corrupt_files_skipped_with_one_warning(tmp_path):
    Image.new("RGB", (16, 16), RED).save(tmp_path / "good.png")
    Image.new("RGB", (64, 64), RED).save(tmp_path / "z_truncated.png")
    blob = (tmp_path / "z_truncated.png").read_bytes()
    (tmp_path / "z_truncated.png").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "y_random.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.warns(UserWarning) as record:
        data = load_data(str(tmp_path), image_size=8, channels=3)
    assert len(record) == 1
    message = str(record[0].message)
    assert "2 unreadable" in message and "y_random.jpg" in message
    assert len(data) == 1
    assert sorted(os.path.basename(p) for p in data.skipped) == ["y_random.jpg", "z_truncated.png"]


def test_empty_and_all_corrupt_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"no image files in folder .*empty.*png, jpg"):
        load_data(str(empty), image_size=8, channels=3)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"no readable image in folder .*bad.*a\.png") as info:
        load_data(str(bad), image_size=8, channels=3)
    assert "\n" not in str(info.value)


def test_unknown_name_did_you_mean():
    with pytest.raises(DataError) as info:
        load_data("shapez", image_size=8, channels=3)
    msg = str(info.value)
    assert "unknown data 'shapez'" in msg and "did you mean 'shapes'" in msg
    assert "fashion-mnist" in msg and "folder of images" in msg and "\n" not in msg


def test_file_is_not_data(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="is a file"):
        load_data(str(tmp_path / "x.png"), image_size=8, channels=3)


def test_bad_channels_rejected(image_tree):
    with pytest.raises(DataError, match="channels must be 1"):
        load_data(str(image_tree), image_size=8, channels=4)


def test_cache_decodes_once_and_notices_changes(tmp_path):
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 50, 0, 0)).save(tmp_path / f"{i}.png")
    first = load_data(str(tmp_path), image_size=8, channels=3)
    other_size = load_data(str(tmp_path), image_size=4, channels=3)
    assert other_size is not first and other_size.images.shape == (3, 3, 4, 4)
    # Break a file but keep its size and mtime: a re-decode would skip it and warn.
    target = tmp_path / "1.png"
    st = target.stat()
    target.write_bytes(b"\0" * st.st_size)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load_data(str(tmp_path), image_size=8, channels=3)
    assert again is first and again.images is first.images and len(again) == 3
    # A new file invalidates the folder: the broken file is decoded now and skipped.
    Image.new("RGB", (16, 16)).save(tmp_path / "3.png")
    with pytest.warns(UserWarning, match="1 unreadable"):
        changed = load_data(str(tmp_path), image_size=8, channels=3)
    assert changed is not first and len(changed) == 3


def test_default_dataset_and_cache():
    data = load_data(None, image_size=16, channels=3, split="test")
    assert DEFAULT_DATASET == "shapes" and "shapes" in data.source
    assert data.images.shape == (512, 3, 16, 16)
    assert load_data("shapes", image_size=16, channels=3, split="test") is data


def test_model_range_round_trip():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = to_model_range(u)
    assert x.dtype == torch.float32 and x.min() == -1 and x.max() == 1
    assert torch.equal(to_uint8(x), u)
    assert to_uint8(torch.tensor([-3.0, 0.0, 7.0])).tolist() == [0, 128, 255]
    with pytest.raises(TypeError):
        to_model_range(x)


def test_fit_tensor_pad_and_crop():
    x = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    padded = fit_tensor(x, 32, 1, mode="pad")
    assert padded.shape == (5, 1, 32, 32)
    assert torch.equal(padded[:, :, 2:30, 2:30], x)
    assert padded[:, :, :2].eq(0).all() and padded[:, :, :, 30:].eq(0).all()
    odd = fit_tensor(x, 31, 3, mode="pad")  # odd margin -> resized, grey repeated to RGB
    assert odd.shape == (5, 3, 31, 31) and torch.equal(odd[:, 0], odd[:, 2])
    flat = torch.full((2, 3, 20, 40), 77, dtype=torch.uint8)
    assert fit_tensor(flat, 8, 1).eq(77).all()
    assert fit_tensor(flat, 8, 3).shape == (2, 3, 8, 8)


def test_save_grid_png(tmp_path):
    images = to_model_range(torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8))
    path = tmp_path / "new" / "folder" / "grid.png"
    save_grid(images, path, nrow=5)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.size == (5 * 10 + 2, 2 * 10 + 2)  # 2 px padding
        arr = np.asarray(img)
    assert np.array_equal(arr[2:10, 2:10], to_uint8(images[0]).permute(1, 2, 0).numpy())
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temporary left behind
    grey = to_model_range(torch.randint(0, 256, (4, 1, 6, 6), dtype=torch.uint8))
    save_grid(grey, path)  # replaces the file; default nrow = 2
    with Image.open(path) as img:
        assert img.mode == "L" and img.size == (2 * 8 + 2, 2 * 8 + 2)


def test_many_files_keep_sorted_order(tmp_path):
    """Enough files for the threaded decoder: order follows the sorted paths, broken ones drop out."""
    for i in range(48):
        folder = tmp_path / f"part{i % 3}"
        folder.mkdir(exist_ok=True)
        Image.new("L", (12 + i, 12), i * 5).save(folder / f"img{i:02d}.png")
    (tmp_path / "part1" / "img07.png").write_bytes(b"broken")
    with pytest.warns(UserWarning, match="1 unreadable"):
        data = load_data(str(tmp_path), image_size=6, channels=1)
    expected = [i for part in range(3) for i in range(48) if i % 3 == part and i != 7]
    assert data.images[:, 0, 3, 3].tolist() == [i * 5 for i in expected]
    assert [os.path.basename(p) for p in data.skipped] == ["img07.png"]
