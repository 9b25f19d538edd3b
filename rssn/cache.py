"""Content-addressed cache of derived images (foreground estimates, BM3D results).

A key is a hash of the input arrays and of every parameter that changes the result, so the
cache can be shared between runs and commands; entries are written atomically, so concurrent
workers that compute the same entry simply write the same bytes twice.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np

from .imageio import atomic_write_bytes, encode_image

CACHE_VERSION = "1"


def content_key(*parts: object) -> str:
    """sha256 over arrays (dtype, shape, bytes) and other values (their repr)."""
    h = hashlib.sha256(CACHE_VERSION.encode())
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.data.cast("B"))
        else:
            h.update(repr(p).encode())
        h.update(b"|")
    return h.hexdigest()


class ImageCache:
    """uint8 images stored as PNG under ``root/kind/ab/key.png``."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root is not None else None

    def _path(self, kind: str, key: str) -> Path:
        assert self.root is not None
        return self.root / kind / key[:2] / f"{key}.png"

    def has(self, kind: str, key: str) -> bool:
        return self.root is not None and self._path(kind, key).exists()

    def get(self, kind: str, key: str) -> np.ndarray | None:
        if self.root is None:
            return None
        path = self._path(kind, key)
        if not path.exists():
            return None
        arr = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None:  # a damaged entry is recomputed
            return None
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if arr.ndim == 3 else arr

    def put(self, kind: str, key: str, arr: np.ndarray) -> None:
        if self.root is None:
            return
        atomic_write_bytes(self._path(kind, key), encode_image(arr, ".png", png_level=1))
