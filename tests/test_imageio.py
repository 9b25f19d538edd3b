"""Image I/O: every storage of photos and mattes users have, read as they mean it."""
from __future__ import annotations

import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from rssn.imageio import (
    ImageReadError,
    Matte,
    atomic_write_bytes,
    list_images,
    read_image,
    read_matte,
    read_rgba,
    write_image,
    write_matte,
)

from .conftest import shared


def _grad(h=20, w=30) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.uint8((x * 255) // (w - 1)), np.uint8((y * 255) // (h - 1))


def test_matte_from_l_rgb_rgba_palette_and_16bit(tmp_path):
    g, _ = _grad()
    Image.fromarray(g, "L").save(tmp_path / "l.png")
    Image.fromarray(np.dstack([g, g, g]), "RGB").save(tmp_path / "rgb.png")
    rgba = np.dstack([np.zeros_like(g)] * 3 + [g])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(g, "L").convert("P").save(tmp_path / "pal.png")
    g16 = (g.astype(np.uint16) * 257 + 3).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    for name in ("l", "rgb", "rgba", "pal"):
        m = read_matte(tmp_path / f"{name}.png")
        assert m.maxval == 255 and m.values.dtype == np.uint8, name
        np.testing.assert_array_equal(m.values, g, err_msg=name)
        assert m.alpha.dtype == np.float32 and m.alpha.max() == 1.0
    m16 = read_matte(tmp_path / "g16.png")
    assert m16.maxval == 65535
    np.testing.assert_array_equal(m16.values, g16)
    np.testing.assert_allclose(m16.alpha, g16 / 65535.0, atol=1e-7)


def test_16bit_rgb_matte_keeps_precision(tmp_path):
    g, _ = _grad()
    g16 = (g.astype(np.uint16) * 257 + 1).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), np.dstack([g16] * 3))
    m = read_matte(tmp_path / "c16.png")
    assert m.maxval == 65535
    np.testing.assert_array_equal(m.values, g16)


def test_binary_8bit_matte_is_still_8bit(tmp_path):
    b = np.zeros((10, 10), np.uint8)
    b[2:8, 2:8] = 255
    Image.fromarray(b).save(tmp_path / "b.png")
    m = read_matte(tmp_path / "b.png")
    assert m.maxval == 255 and m.values.dtype == np.uint8
    assert set(np.unique(m.alpha)) == {0.0, 1.0}


def test_rgba_opaque_grey_matte_uses_colour(tmp_path):
    g, _ = _grad()
    Image.fromarray(np.dstack([g, g, g, np.full_like(g, 255)]), "RGBA").save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_matte(tmp_path / "m.png").values, g)


def test_colour_image_is_not_a_matte(tmp_path):
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[..., 0] = 200
    Image.fromarray(arr).save(tmp_path / "c.png")
    with pytest.raises(ImageReadError, match="c.png.*R, G and B differ"):
        read_matte(tmp_path / "c.png")


def test_jpeg_matte_with_small_channel_drift_is_accepted(tmp_path):
    g, _ = _grad(64, 64)
    Image.fromarray(np.dstack([g, g, g])).save(tmp_path / "m.jpg", quality=90)
    m = read_matte(tmp_path / "m.jpg")
    assert m.maxval == 255
    assert np.abs(m.values.astype(int) - g).mean() < 3


def test_photo_modes_become_rgb(tmp_path):
    g, h = _grad()
    rgb = np.dstack([g, h, 255 - g])
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    Image.fromarray(g).save(tmp_path / "grey.jpg", quality=100)
    Image.fromarray(rgb).quantize(64).save(tmp_path / "pal.png")
    Image.fromarray(np.dstack([rgb, g])).save(tmp_path / "rgba.png")
    cv2.imwrite(str(tmp_path / "g16.png"), g.astype(np.uint16) * 257)
    for name in ("cmyk.jpg", "grey.jpg", "pal.png", "rgba.png", "g16.png"):
        im = read_image(tmp_path / name)
        assert im.dtype == np.uint8 and im.shape == (20, 30, 3), name
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png")[..., 0], g)
    cmyk = read_image(tmp_path / "cmyk.jpg").astype(int)
    assert np.abs(cmyk - rgb).mean() < 6  # CMYK round trip through JPEG


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white as stored
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)
    assert out[:20].mean() > 200 and out[20:].mean() < 50  # white part is now on top


def test_reduced_jpeg_decode_still_covers(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (800, 1200, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "big.jpg")
    small = read_image(tmp_path / "big.jpg", cover=(290, 190))
    assert small.shape[0] >= 190 and small.shape[1] >= 290 and small.shape[0] < 800


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"hello, I am text", "not a readable image"),
])
def test_bad_files_name_the_file(tmp_path, content, reason):
    p = tmp_path / "bad image.png"
    p.write_bytes(content)
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert str(p) in str(e.value) and reason in str(e.value)


def test_truncated_and_bomb(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    (tmp_path / "t.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="t.png"):
        read_image(tmp_path / "t.png")
    Image.fromarray(arr).save(tmp_path / "ok.png")
    with pytest.raises(ImageReadError, match="pixel limit"):
        read_image(tmp_path / "ok.png", max_pixels=100 * 100)


def test_rgba_reader_needs_alpha(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(ImageReadError, match="no alpha channel"):
        read_rgba(tmp_path / "x.png")


def test_atomic_write_leaves_no_temporary(tmp_path, monkeypatch):
    atomic_write_bytes(tmp_path / "a.bin", b"one")
    assert (tmp_path / "a.bin").read_bytes() == b"one"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "a.bin", b"two")
    assert (tmp_path / "a.bin").read_bytes() == b"one"
    assert sorted(os.listdir(tmp_path)) == ["a.bin"]


def test_write_round_trip_exact(tmp_path):
    arr = np.random.default_rng(1).integers(0, 255, (17, 23, 3), dtype=np.uint8)
    write_image(tmp_path / "x.png", arr)
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), arr)
    m = Matte(np.random.default_rng(2).integers(0, 65535, (9, 9), dtype=np.uint16), 65535)
    write_matte(tmp_path / "m.png", m)
    np.testing.assert_array_equal(read_matte(tmp_path / "m.png").values, m.values)


def test_list_images_survives_symlink_loop(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a" / "x.jpg")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    (tmp_path / "a" / "notes.txt").write_text("x")
    found = list_images(tmp_path)
    assert [p.name for p in found] == ["x.jpg"]


def test_real_alphamatting_files():
    root = shared("alphamatting")
    m = read_matte(root / "alpha" / "GT01.png")  # stored as RGB with R=G=B
    rgb = np.asarray(Image.open(root / "alpha" / "GT01.png").convert("RGB"))
    np.testing.assert_array_equal(m.values, rgb[..., 0])
    t = read_matte(root / "trimap1" / "GT01.png")  # a palette PNG
    assert set(np.unique(t.values)) <= {0, 128, 255} and (t.values == 128).any()
    assert read_image(root / "image" / "GT01.png").shape[:2] == m.shape


def test_read_error_crosses_process_boundaries(tmp_path):
    """A worker that raises ImageReadError sends it back pickled; it must arrive whole (an
    exception that cannot be rebuilt breaks the whole process pool, not just its task)."""
    import pickle

    from rssn.executor import run_tasks

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    err = pickle.loads(pickle.dumps(ImageReadError(bad, "cannot decode")))
    assert (err.path, err.reason, str(err)) == (str(bad), "cannot decode", f"{bad}: cannot decode")
    results = list(run_tasks(read_image, [(str(bad),), (str(bad),)], workers=2))
    assert len(results) == 2 and all(isinstance(e, ImageReadError) and e.path == str(bad) for _, _, e in results)
