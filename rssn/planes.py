"""Foreground planes: each foreground decoded and estimated once, then memory-mapped.

Composing on the fly (`gfm train --fg --bg`) builds a :class:`rssn.compose.ForegroundState`
per sample: decode the photo and matte, hash them (`content_key`), decode the cached estimate
PNG; about half of a window composite's time. Here the first use of a foreground (by any
process) writes what the composite reads as raw .npy files: the matte's values, the estimate
``fg8``, the matte's transition pixels and, the first time a draw asks for it, the
BM3D-denoised ``fg8`` with its noise record. Later uses memory-map them
(``np.load(mmap_mode="r")``), so a window composite reads only the pages of its window.

Foregrounds: ``ROOT/fg/ab/KEY/`` (ROOT is ``CACHE/planes`` by default) holding ``matte.npy``,
``fg8.npy``, ``transitions.npy`` and ``meta.json`` (written last: it marks a complete entry),
then ``fg8-bm3d.npy`` and ``bm3d.json`` (written last of the two). Every file is written
atomically (temporary file, fsync, rename), so processes that build the same entry at once
write the same bytes and the last rename wins. KEY hashes the source files' paths, sizes,
mtime_ns and ctime_ns (read before the files are), the settings that decide the planes
(layout kind, fg_method, denoise sigma and profile) and the version constants of the estimate,
BM3D, the foreground noise rule, the content cache and :data:`PLANES_VERSION`: a changed file or
algorithm gets a new entry and the old one is never served (it stays on disk until the folder
is removed).

The planes are a speed-up, never a condition: an entry is written only while the cache's disk
keeps :data:`MIN_FREE_BYTES` free after it, and a write that fails (full disk, read-only or
unwritable cache) is logged once; either way the sample is composed from the decoded files, with
the same tensors.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .cache import ImageCache, content_key
from .compose import BackgroundReader, ComposeConfig, ForegroundState, read_background
from .denoise import FG_SIGMA_VERSION, SigmaEstimate
from .denoise import VERSION as DENOISE_VERSION
from .foreground import ALGORITHM_VERSION
from .imageio import Matte, atomic_open, atomic_write_json, decode_size
from .layout import ForegroundItem

# bump when the planes' files, their contents or the key change
PLANES_VERSION = "1"
PLANES_DIR = "planes"  # below the rssn cache (``--cache``)
MIN_FREE_BYTES = 8 << 30  # planes are written only while their disk keeps this much free after them

log = logging.getLogger(__name__)
_warned: set[str] = set()  # the reasons already logged in this process


def _room_for(folder: Path, nbytes: int) -> bool:
    """Whether ``nbytes`` more fit on ``folder``'s disk leaving :data:`MIN_FREE_BYTES` free
    (logged once per process when not: the run goes on decoding)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return False
    if free - nbytes >= MIN_FREE_BYTES:
        return True
    _warn_once("room", f"plane cache {probe}: {free / 2**30:.1f} GiB free, fewer than "
                       f"{MIN_FREE_BYTES / 2**30:.0f} GiB would be left; decoding files for every sample "
                       "instead (same samples, slower); free space or pass another --cache")
    return False


def _warn_once(kind: str, message: str) -> None:
    if kind not in _warned:
        _warned.add(kind)
        log.warning(message)


def _try_write(write: Callable[[], None], folder: Path, nbytes: int) -> bool:
    """Run ``write`` (an entry's files) when there is room; False when there is none or the
    write fails with an OSError (full disk, read-only or unwritable cache), logged once."""
    if not _room_for(folder, nbytes):
        return False
    try:
        write()
        return True
    except OSError as exc:
        _warn_once("write", f"plane cache {folder}: cannot write ({exc.strerror or exc}); decoding files "
                            "for every sample instead (same samples, slower)")
        return False


def planes_root(cfg: ComposeConfig) -> Path:
    """Where a run's planes live: ``CACHE/planes`` (``fg/`` and ``bg/`` below it)."""
    return cfg.cache_root / PLANES_DIR


def planes_key(item: ForegroundItem, cfg: ComposeConfig) -> str:
    """The entry of ``item`` under ``cfg``: its files' identity (path, size, mtime_ns,
    ctime_ns; a missing file raises FileNotFoundError), the deciding settings and versions."""
    parts: list[Any] = [PLANES_VERSION, item.kind]
    for f in (item.image, item.matte):
        if f is None:
            continue
        st = os.stat(f)
        parts += [os.path.abspath(f), st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    method = "given" if item.kind == "fg" else cfg.fg_method
    parts += [method, ALGORITHM_VERSION.get(method), cfg.denoise_sigma, cfg.denoise_profile, DENOISE_VERSION,
              FG_SIGMA_VERSION]
    return content_key(*parts)


class PlaneForeground(ForegroundState):
    """A :class:`ForegroundState` whose planes are memory-mapped from the plane cache: ``matte``
    (values mapped), ``fg8`` (mapped), ``fg_method``, ``transitions`` (row-major flat indices of
    0 < value < maxval) and :meth:`denoised`. There is no ``source``: the first :meth:`denoised`
    of an entry decodes the foreground once more to measure its noise and writes the result."""

    def __init__(self, item: ForegroundItem, cfg: ComposeConfig, cache: ImageCache, folder: Path):
        """Map an entry's planes; raises OSError or ValueError when the entry is missing,
        incomplete or damaged (the caller builds it)."""
        self.item, self.cfg, self.cache, self.folder = item, cfg, cache, folder
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("version") != PLANES_VERSION:
            raise ValueError(f"{folder}: plane format {meta.get('version')!r}, not {PLANES_VERSION!r}")
        values = np.load(folder / "matte.npy", mmap_mode="r")
        fg8 = np.load(folder / "fg8.npy", mmap_mode="r")
        if values.shape != tuple(meta["shape"]) or fg8.shape != (*meta["shape"], 3):
            raise ValueError(f"{folder}: planes of {values.shape} and {fg8.shape}, not {meta['shape']}")
        self.matte = Matte(values, int(meta["maxval"]))
        self.fg8 = fg8
        self.fg_method = str(meta["fg_method"])
        self.transitions = np.load(folder / "transitions.npy", mmap_mode="r")
        self._noise = None
        self._denoised = None

    def noise(self) -> SigmaEstimate:
        return self.denoised()[1]

    def denoised(self) -> tuple[np.ndarray, SigmaEstimate]:
        """The BM3D-denoised ``fg8`` (mapped) and its noise record: from the entry, or made
        through :class:`ForegroundState` (and the content cache) once and written there."""
        if self._denoised is None:
            try:
                rec = json.loads((self.folder / "bm3d.json").read_text())
                est = SigmaEstimate(float(rec["sigma"]), str(rec["source"]), int(rec["blocks"]))
                out = np.load(self.folder / "fg8-bm3d.npy", mmap_mode="r")
                if out.shape != self.fg8.shape:
                    raise ValueError(f"{self.folder}: BM3D plane of {out.shape}, not {self.fg8.shape}")
            except (OSError, ValueError, KeyError, TypeError):
                fg, est = ForegroundState(self.item, self.cfg, self.cache).denoised()

                def write() -> None:
                    _save(self.folder / "fg8-bm3d.npy", fg)
                    atomic_write_json(self.folder / "bm3d.json",
                                      {"sigma": est.sigma, "source": est.source, "blocks": est.blocks})

                out = (np.load(self.folder / "fg8-bm3d.npy", mmap_mode="r")
                       if _try_write(write, self.folder, fg.nbytes) else fg)
            self._denoised = out, est
        return self._denoised

    def derived(self, name: str, make: Callable[[], np.ndarray]) -> np.ndarray:
        """A plane a caller derives from this foreground (``make()``, e.g. training targets
        from the whole matte), made once, kept in the entry as ``name.npy`` and mapped. ``name``
        carries the caller's own version of ``make``: a changed rule is another name."""
        path = self.folder / f"derived-{name}.npy"
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            plane = make()
            return np.load(path, mmap_mode="r") if _try_write(lambda: _save(path, plane), self.folder,
                                                               plane.nbytes) else plane

    def ensure_denoised(self) -> bool:
        had = (self.folder / "bm3d.json").exists()
        self.denoised()
        return not had


def _save(path: Path, arr: np.ndarray) -> None:
    with atomic_open(path) as f:
        np.save(f, np.ascontiguousarray(arr), allow_pickle=False)


def _write(folder: Path, state: ForegroundState) -> None:
    """An entry's planes from a decoded state; ``meta.json`` last."""
    values = state.matte.values
    _save(folder / "matte.npy", values)
    _save(folder / "fg8.npy", state.fg8)
    flat = np.flatnonzero((values > 0) & (values < state.matte.maxval))
    _save(folder / "transitions.npy", flat.astype(np.int32) if values.size < 2**31 else flat)
    atomic_write_json(folder / "meta.json", {
        "version": PLANES_VERSION, "kind": state.item.kind, "image": str(state.item.image),
        "matte": str(state.item.matte) if state.item.matte else None, "fg_method": state.fg_method,
        "maxval": state.matte.maxval, "shape": list(values.shape)})


def open_foreground(item: ForegroundItem, cfg: ComposeConfig, cache: ImageCache | None = None,
                    root: Path | None = None) -> ForegroundState:
    """``item``'s planes, built on first use (decode, estimate through the content ``cache``,
    write) and memory-mapped: a :class:`PlaneForeground`, or the decoded
    :class:`ForegroundState` when the planes cannot be written (no room, a failed write). A foreground that fails to load raises as
    :class:`ForegroundState` does (ImageReadError, naming the file), and nothing is written.
    ``root``: the plane folder (:func:`planes_root` by default)."""
    cache = cache if cache is not None else ImageCache(cfg.cache_root)
    key = planes_key(item, cfg)  # before any file is read: a file changed later has another key
    folder = (root if root is not None else planes_root(cfg)) / "fg" / key[:2] / key
    try:
        return PlaneForeground(item, cfg, cache, folder)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not built yet (or damaged): build it
    state = ForegroundState(item, cfg, cache)
    if not _try_write(lambda: _write(folder, state), folder, 2 * state.fg8.nbytes + state.matte.values.nbytes):
        return state  # decoded, not mapped: the caller composes from it all the same
    return PlaneForeground(item, cfg, cache, folder)


def open_background(path: str, cover: tuple[int, int] | None, denoise: bool, cfg: ComposeConfig,
                    cache: ImageCache | None = None, root: Path | None = None) -> tuple[np.ndarray, float | None]:
    """:func:`rssn.compose.read_background` through the plane cache: (pixels memory-mapped,
    BM3D sigma or None). An entry is ``ROOT/bg/ab/KEY/`` with ``rgb.npy`` and ``meta.json``
    (last); KEY hashes the file's identity (as :func:`planes_key`), the size it is decoded at
    (a JPEG's reduced scale for ``cover``, :func:`rssn.imageio.decode_size`) and, denoised, the
    BM3D settings and version. A file that fails to read raises as ``read_background`` does."""
    st = os.stat(path)  # before the file is read
    size = decode_size(path, cover=None if denoise else cover)
    parts: list[Any] = [PLANES_VERSION, "bg", os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                        size, denoise]
    if denoise:
        parts += [cfg.denoise_sigma, cfg.denoise_profile, DENOISE_VERSION]
    key = content_key(*parts)
    folder = (root if root is not None else planes_root(cfg)) / "bg" / key[:2] / key
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("version") != PLANES_VERSION:
            raise ValueError(f"{folder}: plane format {meta.get('version')!r}, not {PLANES_VERSION!r}")
        arr = np.load(folder / "rgb.npy", mmap_mode="r")
        if arr.shape != tuple(meta["shape"]):
            raise ValueError(f"{folder}: plane of {arr.shape}, not {meta['shape']}")
        return arr, meta["sigma"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not built yet (or damaged): build it
    pixels, sigma = read_background(path, cover, denoise, cfg,
                                    cache if cache is not None else ImageCache(cfg.cache_root))
    def write() -> None:
        _save(folder / "rgb.npy", pixels)
        atomic_write_json(folder / "meta.json", {"version": PLANES_VERSION, "path": str(path), "denoised": denoise,
                                                 "sigma": sigma, "shape": list(pixels.shape)})

    if not _try_write(write, folder, pixels.nbytes):
        return pixels, sigma
    return np.load(folder / "rgb.npy", mmap_mode="r"), sigma


def background_reader(cfg: ComposeConfig, cache: ImageCache | None = None, root: Path | None = None
                      ) -> BackgroundReader:
    """A ``bg_reader`` for :func:`rssn.compose.make_composite_window`: :func:`open_background`."""
    def read(path: str, cover: tuple[int, int] | None, denoise: bool) -> tuple[np.ndarray, float | None]:
        return open_background(path, cover, denoise, cfg, cache, root)

    return read
