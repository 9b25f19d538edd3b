"""Image I/O shared by every command: tolerant reading, exact mattes, atomic writes.

Photos are returned as ``uint8`` RGB arrays with the EXIF orientation applied, whatever
the file holds (grayscale, CMYK, palette, RGBA, 16-bit). Mattes are returned as
:class:`Matte`: the integer values exactly as stored (8 or 16 bit, never guessed from the
values) and their float32 version in [0, 1]. Every writer goes through
:func:`atomic_write_bytes`, so a killed process never leaves a half-written output.
"""
from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
from PIL import Image, ImageOps


def _unpatched_pil_open():
    """PIL's own Image.open. ultralytics replaces Image.open process-wide with a wrapper that,
    on a file PIL cannot identify, tries to pip-install a HEIF plugin and raises
    ModuleNotFoundError when it cannot; we always call PIL's original."""
    op = Image.open
    if getattr(op, "__module__", "").startswith("ultralytics"):
        op = op.__globals__.get("_image_open", op)
    return op


pil_open = _unpatched_pil_open()

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
DEFAULT_MAX_PIXELS = 180_000_000  # above this an image is treated as a decompression bomb
TMP_PREFIX = ".tmp-"


class ImageReadError(ValueError):
    """An input file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: object, reason: str, code: str = "unreadable"):
        """``path``: a path, a :class:`MemoryFile` or a shard member; its ``str()`` names the file.
        ``code``: one of FAILURE_CODES (unreadable; pixel_limit for a decompression bomb)."""
        self.path = str(path)
        self.reason = reason
        self.code = code
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # rebuilt from (path, reason, code) when a worker process sends it back
        return type(self), (self.path, self.reason, self.code)


# Stable codes of failure records, beside the human reason: grouping, exit decisions and
# reports use the code, never the reason's text.
FAILURE_CODES = ("unreadable", "pixel_limit", "empty_file", "unusable_input", "disk_full", "io_error", "invalid",
                 "worker_crashed", "error")


def failure_code(exc: BaseException) -> str:
    """The failure code of an exception met while processing one item: ``disk_full`` by errno
    (ENOSPC, EDQUOT), ``unreadable`` for an input that cannot be decoded, ``io_error`` for any
    other OS error, ``invalid`` for a value refused, else ``error``."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk_full"
    if isinstance(exc, ImageReadError):
        return exc.code
    if isinstance(exc, OSError):
        return "io_error"
    if isinstance(exc, ValueError):
        return "invalid"
    return "error"


@dataclass(frozen=True)
class MemoryFile:
    """Image bytes with a name (a member of a tar shard, say), accepted wherever a path is."""

    name: str
    data: bytes

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Matte:
    """An alpha matte: ``values`` as stored (uint8 or uint16, HxW) and ``maxval`` (255 or 65535)."""

    values: np.ndarray
    maxval: int

    @property
    def alpha(self) -> np.ndarray:
        """The matte as float32 in [0, 1]."""
        return self.values.astype(np.float32) / np.float32(self.maxval)

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape[:2]


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the name has an image extension and is not one of our temporary files."""
    name = os.path.basename(str(path))
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(TMP_PREFIX)


def list_images(root: str | os.PathLike) -> list[Path]:
    """Every image file below ``root`` (recursively, symlink loops ignored), sorted by path."""
    root = Path(root)
    found: list[Path] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop: do not descend again
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if is_image_file(f))
    return sorted(found)


def open_checked(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open with PIL and check the pixel count before anything is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = pil_open(io.BytesIO(path.data) if isinstance(path, MemoryFile) else path)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"too many pixels (decompression bomb?): {exc}") from None
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image") from None
    except OSError as exc:  # UnidentifiedImageError is an OSError
        size = _size_or_none(path)
        if size == 0:
            raise ImageReadError(path, "empty file (0 bytes)") from None
        raise ImageReadError(path, f"not a readable image ({exc.__class__.__name__}: {exc})") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ImageReadError(path, f"{w}x{h} is over the pixel limit of {max_pixels} (decompression bomb?)",
                             code="pixel_limit")
    if w == 0 or h == 0:
        im.close()
        raise ImageReadError(path, f"image has no pixels ({w}x{h})")
    return im


def _size_or_none(path: str | os.PathLike) -> int | None:
    if isinstance(path, MemoryFile):
        return len(path.data)
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _load(im: Image.Image, path: str | os.PathLike) -> Image.Image:
    """Decode fully (first frame of an animation) and apply the EXIF orientation."""
    try:
        im.seek(0)
        im.load()
        return ImageOps.exif_transpose(im)
    except Exception as exc:  # truncated data, bad chunks, codec errors
        raise ImageReadError(path, f"cannot decode ({exc.__class__.__name__}: {exc})") from None


def exif_swaps_axes(im: Image.Image) -> bool:
    try:
        return im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:
        return False


def read_image(
    path: str | os.PathLike,
    *,
    cover: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read a photo as uint8 RGB (HxWx3), EXIF orientation applied.

    ``cover=(width, height)``: the image will be scaled (aspect kept) to cover that size, so a
    JPEG may be decoded at a reduced DCT scale that still covers it: much faster for large
    photos that will be shrunk.
    """
    im = open_checked(path, max_pixels)
    try:
        _draft_to_cover(im, cover)
        im = _load(im, path)
        return _to_rgb8(im, path)
    finally:
        im.close()


def _draft_to_cover(im: Image.Image, cover: tuple[int, int] | None) -> None:
    """Set a JPEG's reduced DCT scale that still covers ``cover`` (no-op otherwise)."""
    if cover is not None and im.format == "JPEG":
        swapped = exif_swaps_axes(im)
        sw, sh = im.size  # as stored
        dw, dh = (sh, sw) if swapped else (sw, sh)  # as displayed
        s = max(cover[0] / dw, cover[1] / dh)
        need_w, need_h = math.ceil(dw * s - 1e-9), math.ceil(dh * s - 1e-9)
        im.draft("RGB", (need_h, need_w) if swapped else (need_w, need_h))


def decode_size(path: str | os.PathLike, *, cover: tuple[int, int] | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """The stored (width, height) :func:`read_image` decodes ``path`` at with ``cover`` (a
    JPEG's reduced scale; otherwise the full size), from the header alone: what a cache of
    decoded pixels keys by."""
    im = open_checked(path, max_pixels)
    try:
        _draft_to_cover(im, cover)
        return im.size
    finally:
        im.close()


def read_rgba(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, Matte]:
    """Read an image with an alpha channel as (uint8 RGB, Matte of its alpha channel)."""
    im = open_checked(path, max_pixels)
    try:
        im = _load(im, path)
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        if im.mode not in ("RGBA", "LA", "PA", "RGBa", "La"):
            raise ImageReadError(path, f"has no alpha channel (mode {im.mode}); an RGBA image was expected")
        rgba = np.asarray(im.convert("RGBA"))
        return np.ascontiguousarray(rgba[..., :3]), Matte(np.ascontiguousarray(rgba[..., 3]), 255)
    finally:
        im.close()


def _to_rgb8(im: Image.Image, path: str | os.PathLike) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        if mode == "F":
            top = 1.0 if arr.max() <= 1.0 else 255.0
        g = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    try:
        rgb = im.convert("RGB")  # handles L, LA, P, PA, CMYK, YCbCr, RGBA (alpha dropped)
    except Exception as exc:
        raise ImageReadError(path, f"cannot convert mode {mode} to RGB ({exc})") from None
    return np.asarray(rgb).copy()


def _png_bit_depth(path: str | os.PathLike) -> int | None:
    """Bit depth from a PNG's IHDR chunk, or None for other files."""
    try:
        if isinstance(path, MemoryFile):
            head = path.data[:26]
        else:
            with open(path, "rb") as f:
                head = f.read(26)
    except OSError:
        return None
    if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return None


def read_matte(
    path: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    rgb_tolerance: int = 8,
) -> Matte:
    """Read an alpha matte stored as L, RGB (R=G=B), RGBA, LA, palette or 16-bit PNG.

    The bit depth comes from the file, never from the values: an 8-bit matte holding only 0
    and 255 is still an 8-bit matte. RGBA and LA use their alpha channel, unless that channel
    is fully opaque and the colour channels hold the matte (a grey matte saved with alpha).
    RGB mattes must have R, G and B within ``rgb_tolerance`` of each other (JPEG-saved mattes
    drift slightly) and are averaged.
    """
    if _png_bit_depth(path) == 16:
        return _read_matte_16(path, max_pixels, rgb_tolerance)
    im = open_checked(path, max_pixels)
    try:
        im = _load(im, path)
        mode = im.mode
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im)
            if arr.min() < 0 or arr.max() > 65535:
                raise ImageReadError(path, "matte values outside 0..65535")
            return Matte(arr.astype(np.uint16), 65535)
        if mode == "F":
            arr = np.asarray(im, dtype=np.float32)
            if arr.min() < 0 or arr.max() > 1:
                raise ImageReadError(path, "float matte values outside [0, 1]")
            return Matte(np.rint(arr * 65535).astype(np.uint16), 65535)
        if mode == "1":
            im = im.convert("L")
            mode = "L"
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            mode = im.mode
        if mode == "L":
            return Matte(np.asarray(im).copy(), 255)
        if mode in ("LA", "La"):
            arr = np.asarray(im.convert("LA"))
            return Matte(_pick_alpha(arr[..., 1], arr[..., :1], path, rgb_tolerance), 255)
        if mode in ("RGBA", "RGBa"):
            arr = np.asarray(im.convert("RGBA"))
            return Matte(_pick_alpha(arr[..., 3], arr[..., :3], path, rgb_tolerance), 255)
        if mode in ("RGB", "CMYK", "YCbCr"):
            arr = np.asarray(im.convert("RGB"))
            return Matte(_grey_from_rgb(arr, path, rgb_tolerance), 255)
        raise ImageReadError(path, f"unsupported matte mode {mode}")
    finally:
        im.close()


def read_trimap(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, rgb_tolerance: int = 8) -> np.ndarray:
    """Read a trimap's grey levels (uint8 HxW, 16-bit files scaled to 8 bits) from its colours.

    Unlike :func:`read_matte`, an alpha channel is never used: a palette trimap with a
    transparency entry (often the background colour) is read by its palette colours, and an
    RGBA or LA trimap by its colour channels (R = G = B within ``rgb_tolerance``).
    """
    if _png_bit_depth(path) == 16:
        open_checked(path, max_pixels).close()  # size check only; OpenCV decodes 16-bit colour exactly
        data = np.frombuffer(path.data, np.uint8) if isinstance(path, MemoryFile) else np.fromfile(str(path), np.uint8)
        arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise ImageReadError(path, "cannot decode 16-bit PNG")
        grey = arr if arr.ndim == 2 else _grey_from_rgb(arr[..., : 1 if arr.shape[2] == 2 else 3], path, rgb_tolerance * 257)
        return np.rint(grey / 257.0).astype(np.uint8)
    im = open_checked(path, max_pixels)
    try:
        im = _load(im, path)
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return np.rint(read_matte(path, max_pixels=max_pixels).values / 257.0).astype(np.uint8)
        if im.mode in ("1", "L", "LA", "La"):
            return np.asarray(im.convert("L")).copy()
        try:
            rgb = np.asarray(im.convert("RGB"))  # palette entries by colour, alpha dropped
        except Exception as exc:
            raise ImageReadError(path, f"cannot convert trimap mode {im.mode} ({exc})") from None
        return _grey_from_rgb(rgb, path, rgb_tolerance)
    finally:
        im.close()


def _read_matte_16(path: str | os.PathLike, max_pixels: int, rgb_tolerance: int) -> Matte:
    im = open_checked(path, max_pixels)  # size check only; OpenCV decodes 16-bit colour exactly
    im.close()
    data = np.frombuffer(path.data, np.uint8) if isinstance(path, MemoryFile) else np.fromfile(str(path), dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageReadError(path, "cannot decode 16-bit PNG")
    if arr.ndim == 2:
        return Matte(arr.astype(np.uint16), 65535)
    if arr.shape[2] == 4:
        bgr, a = arr[..., :3], arr[..., 3]
        return Matte(_pick_alpha(a, bgr, path, rgb_tolerance * 257, top=65535), 65535)
    if arr.shape[2] == 2:
        return Matte(_pick_alpha(arr[..., 1], arr[..., :1], path, rgb_tolerance * 257, top=65535), 65535)
    return Matte(_grey_from_rgb(arr[..., :3], path, rgb_tolerance * 257), 65535)


def _pick_alpha(a: np.ndarray, colour: np.ndarray, path, tol: int, top: int = 255) -> np.ndarray:
    """Alpha channel, or the grey colour channels when alpha is fully opaque and they vary."""
    if a.min() == top and colour.max() != colour.min():
        return _grey_from_rgb(colour, path, tol)
    return np.ascontiguousarray(a)


def _grey_from_rgb(arr: np.ndarray, path, tol: int) -> np.ndarray:
    if arr.shape[2] == 1:
        return np.ascontiguousarray(arr[..., 0])
    spread = int((arr.max(axis=2).astype(np.int64) - arr.min(axis=2)).max())
    if spread == 0:
        return np.ascontiguousarray(arr[..., 0])
    if spread > tol:
        raise ImageReadError(
            path, f"colour image, not a matte: R, G and B differ by up to {spread} (allowed {tol})"
        )
    dtype = arr.dtype
    return np.rint(arr.astype(np.float64).mean(axis=2)).astype(dtype)


# ---------------------------------------------------------------- writing


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file in the same folder, fsync it, then rename over ``path``."""
    atomic_write_chunks(path, (data,))


def atomic_write_chunks(path: str | os.PathLike, chunks: Iterable[bytes]) -> None:
    """Like :func:`atomic_write_bytes`, for a file made piece by piece (a large report), so that
    the whole file is never in memory at once."""
    with atomic_open(path) as f:
        for c in chunks:
            f.write(c)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: a temporary file in the same folder, fsynced and
    renamed over ``path`` when the block ends, removed when it raises. For writers that stream
    (``torch.save`` of a checkpoint), so the file's bytes are never held in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, doc: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """``doc`` as JSON plus a newline, written atomically; values JSON cannot hold (paths, ...) as str."""
    import json

    atomic_write_bytes(path, (json.dumps(doc, indent=indent, sort_keys=sort_keys, default=str) + "\n").encode())


def encode_image(arr: np.ndarray, ext: str, *, png_level: int = 1, jpeg_quality: int = 95) -> bytes:
    """Encode an RGB/grey uint8 or uint16 array as PNG or JPEG bytes (deterministic)."""
    ext = ext.lower()
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA)
    if ext == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)]
    elif ext in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    else:
        raise ValueError(f"cannot write {ext!r}: use .png or .jpg")
    ok, buf = cv2.imencode(ext, arr, params)
    if not ok:
        raise OSError(f"OpenCV could not encode a {arr.shape} {arr.dtype} array as {ext}")
    return buf.tobytes()


def write_image(path: str | os.PathLike, arr: np.ndarray, *, png_level: int = 1, jpeg_quality: int = 95) -> None:
    """Encode by the file's extension and write atomically."""
    data = encode_image(arr, Path(path).suffix, png_level=png_level, jpeg_quality=jpeg_quality)
    atomic_write_bytes(path, data)


def write_matte(path: str | os.PathLike, matte: Matte, *, png_level: int = 1) -> None:
    """Write a matte as a single-channel PNG of its own bit depth (values unchanged)."""
    write_image(path, matte.values, png_level=png_level)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> int:
    """Delete temporary files a killed run left in ``folder`` (recursively); returns the count."""
    n = 0
    for dirpath, _dirs, files in os.walk(folder):
        for f in files:
            if f.startswith(TMP_PREFIX):
                try:
                    os.unlink(os.path.join(dirpath, f))
                    n += 1
                except OSError:
                    pass
    return n

