"""A generated corpus of good-but-awkward and bad image files (made by the tests, never stored)."""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 60000, height: int = 60000) -> bytes:
    """A tiny PNG whose header claims an enormous size (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _matte(h: int, w: int) -> np.ndarray:
    a = np.zeros((h, w), np.uint8)
    cv2.circle(a, (w // 2, h // 2), min(h, w) // 3, 255, -1)
    return cv2.GaussianBlur(a, (0, 0), 3)


def good_photos(h: int = 72, w: int = 96) -> dict[str, tuple[bytes, np.ndarray]]:
    """name -> (file bytes, matte of the displayed image) for awkward but valid photos."""
    out = {}
    rgb = _photo(h, w, 1)

    def enc(im: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    out["cmyk.jpg"] = (enc(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95), _matte(h, w))
    out["grey.jpg"] = (enc(Image.fromarray(rgb[..., 0]), "JPEG", quality=95), _matte(h, w))
    out["palette.png"] = (enc(Image.fromarray(rgb).quantize(32), "PNG"), _matte(h, w))
    out["rgba.png"] = (enc(Image.fromarray(np.dstack([rgb, np.full((h, w), 255, np.uint8)])), "PNG"), _matte(h, w))
    out["deep16.png"] = (cv2.imencode(".png", (rgb.astype(np.uint16) * 257)[..., ::-1])[1].tobytes(), _matte(h, w))
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: the matte is made for the displayed photo
    out["exif rotated.jpg"] = (enc(im, "JPEG", exif=exif.tobytes(), quality=95), _matte(w, h))
    out["façade ümlaut.png"] = (enc(Image.fromarray(_photo(h, w, 2)), "PNG"), _matte(h, w))
    return out


def bad_files(h: int = 72, w: int = 96) -> dict[str, bytes]:
    """name -> bytes of files that no command can use (headers, where they have one, say h x w)."""
    rgb = _photo(h, w, 3)
    jpg = cv2.imencode(".jpg", rgb)[1].tobytes()
    png = cv2.imencode(".png", rgb)[1].tobytes()
    return {
        "zero.png": b"",
        "truncated-jpeg.jpg": jpg[: len(jpg) // 3],
        "truncated-png.png": png[: len(png) // 2],
        "text.jpg": b"this is a text file, not a photo\n" * 20,
        "bomb.png": bomb_png(),
    }


def write_photo_set(root: Path, h: int = 72, w: int = 96) -> tuple[list[str], list[str]]:
    """root/image + root/alpha with every good and bad case; returns (good stems, bad stems)."""
    (root / "image").mkdir(parents=True)
    (root / "alpha").mkdir(parents=True)
    good, bad = [], []
    for name, (data, matte) in good_photos(h, w).items():
        (root / "image" / name).write_bytes(data)
        (root / "alpha" / (Path(name).stem + ".png")).write_bytes(cv2.imencode(".png", matte)[1].tobytes())
        good.append(Path(name).stem)
    # a matte saved as JPEG, values off 0/255: still a usable matte
    (root / "image" / "jpegmatte.png").write_bytes(cv2.imencode(".png", _photo(h, w, 4))[1].tobytes())
    (root / "alpha" / "jpegmatte.jpg").write_bytes(cv2.imencode(".jpg", _matte(h, w), [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes())
    good.append("jpegmatte")
    for name, data in bad_files(h, w).items():
        (root / "image" / name).write_bytes(data)
        cv2.imwrite(str(root / "alpha" / (Path(name).stem + ".png")), _matte(h, w))
        bad.append(Path(name).stem)
    (root / "image" / "wrongsize.png").write_bytes(cv2.imencode(".png", _photo(h, w, 5))[1].tobytes())
    cv2.imwrite(str(root / "alpha" / "wrongsize.png"), _matte(h // 2, w // 2))
    bad.append("wrongsize")
    return good, bad


def write_flat_set(root: Path, h: int = 72, w: int = 96) -> tuple[list[str], list[str]]:
    """Every good and bad file directly in ``root``, plus a symlink loop; (good names, bad names)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, (data, _m) in good_photos(h, w).items():
        (root / name).write_bytes(data)
    for name, data in bad_files().items():
        (root / name).write_bytes(data)
    (root / "sub").mkdir()
    os.symlink(root, root / "sub" / "loop")
    return sorted(good_photos(h, w)), sorted(bad_files())
