"""The packed training store (`gfm pack`): decoded pixels that a crop reads without decoding
the whole image, and everything about a sample that can be computed once.

Layout of STORE/:
- ``header.json``: format name and version, the sources and options it was packed from, and the
  command that rebuilds it;
- ``pixels.bin``: every plane, C-contiguous (H x W x C, uint8; a 16-bit matte stays uint16),
  each starting on a 4096-byte page, memory-mapped by readers: a crop window touches only its
  own rows of each plane;
- per image: the photo or composite, its background (composites; or the closed-form B of a
  photo) and, shared by every composite of the same foreground (same pixels, found by content
  hash), the matte, the foreground, one target plane (the glance classes of every RoSTa from the
  whole matte, :func:`gfm.data.target_plane`) and the transition pixels (0 < alpha < 1, uint32
  row-major indices) that centred crops draw from;
- ``samples.jsonl``: one record per packed sample (offsets, size, content hashes) and one per
  sample whose source could not be read, appended after the sample's planes were flushed: the
  resume state (:class:`rssn.manifest.Manifest`);
- ``complete.json``: written last; a store without it was cut off and is refused.

A store on a shared folder serves every rank of a torchrun job: each maps the same file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rssn.imageio import ImageReadError, atomic_write_bytes, atomic_write_json, read_image, read_matte
from rssn.manifest import Manifest
from rssn.seeding import derive_rng
from rssn.shards import TarPart

from .data import (
    MattingDataset,
    Sample,
    _source,
    check_samples,
    choose_crop_at,
    find_samples,
    photo_foreground_background,
    served,
    target_plane,
    window_sample,
)

STORE_FORMAT = "gfm-training-store"
STORE_VERSION = 1
PAGE = 4096
HEADER, PIXELS, RECORDS, COMPLETE = "header.json", "pixels.bin", "samples.jsonl", "complete.json"


class StoreError(ValueError):
    """A store that cannot be read: cut off, another format version, or not a store."""


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by `gfm pack` (complete or not)."""
    return (Path(path) / HEADER).is_file()


def rebuild_command(header: dict[str, Any], out: str | os.PathLike) -> str:
    """The `gfm pack` command line that (re)builds the store at ``out``."""
    args = ["gfm", "pack", *sum((["--data", s] for s in header.get("sources", [])), []), "--out", str(out)]
    if not header.get("photo_fgbg", True):
        args.append("--no-photo-fgbg")
    return shlex.join(args)


# ---------------------------------------------------------------------------------------------- packing

def decode_sample(sample: Sample, cache_root: str | None) -> dict[str, Any]:
    """Every plane of one sample, decoded and computed (runs on the executor's workers): image,
    matte values, F and B (files, or closed-form for photos when ``cache_root`` is given),
    target plane, transition indices, content hashes and the source's bytes."""
    image = read_image(_source(sample.image))
    matte = read_matte(_source(sample.alpha))
    values = matte.values
    if values.shape != image.shape[:2]:
        raise ImageReadError(sample.alpha, f"matte size {values.shape[::-1]} differs from the photo's {image.shape[1::-1]}")
    alpha = values.astype(np.float32) / np.float32(matte.maxval)
    fg = read_image(_source(sample.fg)) if sample.fg else None
    bg = read_image(_source(sample.bg)) if sample.bg else None
    fg_source = "file" if fg is not None and bg is not None else None
    if fg_source is None and cache_root is not None:
        from rssn.cache import ImageCache

        fg, bg = photo_foreground_background(image, alpha, ImageCache(cache_root))
        fg_source = "closed-form"
    for name, a in (("fg", fg), ("bg", bg)):
        if a is not None and a.shape != image.shape:
            raise ImageReadError(getattr(sample, name), f"{name} size {a.shape[1::-1]} differs from the image's {image.shape[1::-1]}")
    source_bytes = 0
    for p in (sample.image, sample.alpha, sample.fg, sample.bg):
        if p is not None:
            source_bytes += int(p.size) if isinstance(p, TarPart) else os.path.getsize(p)
    return {
        "image": image, "values": values, "top": matte.maxval, "fg": fg if fg_source else None,
        "bg": bg if fg_source else None, "fg_source": fg_source,
        "bits": target_plane(alpha), "trans": np.flatnonzero((values > 0) & (values < matte.maxval)).astype(np.uint32),
        "alpha_hash": hashlib.sha1(values.tobytes() + str(values.shape).encode()).hexdigest(),
        "fg_hash": hashlib.sha1(fg.tobytes() + str(fg.shape).encode()).hexdigest() if fg_source and fg is not None
        else None,
        "source_bytes": source_bytes,
    }


class _PlaneWriter:
    """Appends page-aligned planes to pixels.bin; resumes after the last recorded plane."""

    def __init__(self, path: Path, end: int):
        self.f = open(path, "r+b" if path.exists() else "w+b")
        self.f.truncate(end)  # bytes past the last record belong to a sample cut off mid-write
        self.end = end

    def put(self, a: np.ndarray) -> int:
        off = -(-self.end // PAGE) * PAGE
        self.f.seek(off)
        self.f.write(np.ascontiguousarray(a).tobytes())
        self.end = off + a.nbytes
        return off

    def flush(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


@dataclass
class PackSummary:
    samples: int
    failures: int
    store_bytes: int
    source_bytes: int
    seconds: float

    def bytes_per_sample(self) -> tuple[float, float]:
        n = max(self.samples, 1)
        return self.store_bytes / n, self.source_bytes / n


def _record_end(rec: dict[str, Any]) -> int:
    return max((off + n for off, n in rec.get("extents", [])), default=0)


def pack(sources: list[str], out: str | os.PathLike, *, photo_fgbg: bool = True, cache_dir: str | None = None,
         workers: int = 1, executor: str = "local", ray_address: str | None = None,
         log: Callable[[str], None] = print) -> PackSummary:
    """Write (or finish) the store ``out`` from ``sources`` (folders `gfm train` reads).

    Decoding runs on ``workers`` (rssn's executors); this process appends the planes and, after
    each sample's bytes are flushed, its record. A killed pack resumes where it stopped; the store
    is readable only once ``complete.json`` is written.
    """
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header = {"format": STORE_FORMAT, "version": STORE_VERSION, "sources": [str(Path(s).resolve()) for s in sources],
              "photo_fgbg": photo_fgbg}
    header["rebuild"] = rebuild_command(header, out)
    if (out / HEADER).exists():
        old = _read_json(out / HEADER)
        if old.get("version") != STORE_VERSION or old.get("sources") != header["sources"] \
                or old.get("photo_fgbg") != photo_fgbg:
            raise StoreError(f"{out} holds a store packed from other sources, options or format version; "
                             f"pack into another --out, or pass --overwrite")
    atomic_write_json(out / HEADER, header)
    (out / COMPLETE).unlink(missing_ok=True)
    cache_root = None
    if photo_fgbg:
        from rssn.compose import default_cache_dir

        cache_root = str(cache_dir or default_cache_dir())

    samples: list[Sample] = []
    failures: list[tuple[str, str]] = []
    for src in sources:
        found, f = find_samples(src)
        samples += found
        failures += f
    attribution = carry_provenance(sources, out)
    samples, bad = check_samples(samples)
    failures += bad
    manifest = Manifest(out / RECORDS)
    for path, reason in failures:
        manifest.append({"key": f"failure:{path}", "path": str(path), "reason": reason})
    done = [r for r in manifest if r["key"].startswith("sample:")]
    writer = _PlaneWriter(out / PIXELS, max((_record_end(r) for r in done), default=0))
    alphas = {r["alpha_hash"]: r["planes"] for r in done}
    fgs = {r["fg_hash"]: r["planes"]["fg"] for r in done if r.get("fg_hash")}
    tasks = [(i, s) for i, s in enumerate(samples) if f"sample:{s.name}" not in manifest]
    log(f"{len(samples)} samples ({len(done)} already packed), {len(failures)} skipped; packing into {out}")

    def write(i: int, s: Sample, d: dict[str, Any]) -> None:
        extents = []

        def put(a: np.ndarray) -> int:
            off = writer.put(a)
            extents.append((off, a.nbytes))
            return off

        planes: dict[str, Any] = {"image": put(d["image"])}
        if d["alpha_hash"] in alphas:
            planes.update({k: alphas[d["alpha_hash"]][k] for k in ("alpha", "bits", "trans")})
        else:
            planes.update({"alpha": put(d["values"]), "bits": put(d["bits"]), "trans": [put(d["trans"]), len(d["trans"])]})
        if d["fg_source"]:
            planes["fg"] = fgs.get(d["fg_hash"])
            if planes["fg"] is None:
                planes["fg"] = put(d["fg"])
            planes["bg"] = put(d["bg"])
        writer.flush()
        h, w = d["values"].shape
        rec = {"key": f"sample:{s.name}", "name": s.name, "order": i, "h": h, "w": w, "top": d["top"],
               "fg_source": d["fg_source"], "planes": planes, "extents": extents,
               "alpha_hash": d["alpha_hash"], "fg_hash": d["fg_hash"], "source_bytes": d["source_bytes"]}
        if s.name in attribution:
            rec["attribution"] = attribution[s.name]
        manifest.append(rec)
        manifest.discard(f"failure:{s.name}")
        alphas.setdefault(d["alpha_hash"], planes)
        if d["fg_hash"]:
            fgs.setdefault(d["fg_hash"], planes["fg"])

    def fail(s: Sample, exc: BaseException) -> None:
        reason = exc.reason if isinstance(exc, ImageReadError) else f"{type(exc).__name__}: {exc}"
        log(f"skipped {s.name}: {reason}")
        manifest.append({"key": f"failure:{s.name}", "path": s.name, "reason": reason})

    try:
        if workers <= 1 and executor == "local":
            for i, s in tasks:
                try:
                    d = decode_sample(s, cache_root)
                except (ImageReadError, OSError, ValueError) as exc:
                    fail(s, exc)
                    continue
                write(i, s, d)
        else:
            from rssn.executor import run_tasks

            for k, d, error in run_tasks(decode_sample, [(s, cache_root) for _, s in tasks], workers=workers,
                                         executor=executor, ray_address=ray_address):
                i, s = tasks[k]
                if error is not None:
                    fail(s, error)
                else:
                    write(i, s, d)
    finally:
        writer.close()
    order = {s.name: i for i, s in enumerate(samples)}  # a grown source set shifts the order of earlier samples
    for r in list(manifest):
        if r["key"].startswith("sample:") and r["name"] in order and r.get("order") != order[r["name"]]:
            manifest.replace({**r, "order": order[r["name"]]})
    manifest.compact()
    records = [r for r in manifest if r["key"].startswith("sample:")]
    n_fail = sum(1 for r in manifest if r["key"].startswith("failure:"))
    size = os.path.getsize(out / PIXELS)
    summary = PackSummary(len(records), n_fail, size, sum(r["source_bytes"] for r in records),
                          time.perf_counter() - t0)
    atomic_write_json(out / COMPLETE, {"version": STORE_VERSION, "samples": len(records), "failures": n_fail,
                                       "pixels_bytes": size})
    store_b, src_b = summary.bytes_per_sample()
    log(f"packed {summary.samples} samples ({n_fail} skipped) in {summary.seconds:.1f} s: "
        f"{store_b / 1e6:.2f} MB per sample in the store, {src_b / 1e6:.2f} MB in the source files "
        f"({store_b / max(src_b, 1):.2f}x)")
    return summary


PROVENANCE_FILES = ("DATASET.md", "dataset.json", "ATTRIBUTION.csv")


def carry_provenance(sources: list[str], out: Path) -> dict[str, dict[str, Any]]:
    """The attribution of every composite of the ``rssn compose`` outputs among ``sources``
    (``{id: {"fg": ..., "bg": ...}}``, from their manifests), and their dataset cards and
    ATTRIBUTION.csv copied to ``out/sources/NN/`` (NN the source's position), so the store
    carries the terms its data came under."""
    found: dict[str, dict[str, Any]] = {}
    for n, src in enumerate(sources):
        root = Path(src)
        if (root / "manifest.jsonl").is_file():  # read, never rewritten: the source is an input
            for line in (root / "manifest.jsonl").read_bytes().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill of the compose run
                if isinstance(rec, dict) and rec.get("type") == "composite" and \
                        ("attribution" in rec.get("fg", {}) or "attribution" in rec.get("bg", {})):
                    found[rec["id"]] = {"fg": rec["fg"].get("attribution"), "bg": rec["bg"].get("attribution")}
        for name in PROVENANCE_FILES:
            if (root / name).is_file():
                dest = out / "sources" / f"{n:02d}" / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(dest, (root / name).read_bytes())
    return found


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable ({exc})") from None


# ---------------------------------------------------------------------------------------------- reading

class TrainingStore:
    """A complete store, memory-mapped lazily in each process that reads it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not is_store(self.path):
            raise StoreError(f"{self.path}: not a training store (no {HEADER}); make one with "
                             f"`gfm pack --data DIR --out {self.path}`")
        header = _read_json(self.path / HEADER)
        rebuild = header.get("rebuild") or f"gfm pack --data DIR --out {self.path}"
        if header.get("format") != STORE_FORMAT or header.get("version") != STORE_VERSION:
            raise StoreError(f"{self.path}: written by store format {header.get('format')} version "
                             f"{header.get('version')}, this gfm reads version {STORE_VERSION}; rebuild it with "
                             f"`{rebuild} --overwrite`")
        if not (self.path / COMPLETE).is_file():
            raise StoreError(f"{self.path}: the store was cut off mid-write (no {COMPLETE}); finish it with "
                             f"`{rebuild}` (it resumes where it stopped)")
        complete = _read_json(self.path / COMPLETE)
        size = os.path.getsize(self.path / PIXELS) if (self.path / PIXELS).exists() else 0
        if size != complete.get("pixels_bytes"):
            raise StoreError(f"{self.path}: {PIXELS} holds {size} bytes, {COMPLETE} says "
                             f"{complete.get('pixels_bytes')}; rebuild it with `{rebuild} --overwrite`")
        self.header = header
        manifest = Manifest(self.path / RECORDS)  # complete, so compacted: loading it writes nothing
        self.records = sorted((r for r in manifest if r["key"].startswith("sample:")), key=lambda r: r["order"])
        self.failures = [(r["path"], r["reason"]) for r in manifest if r["key"].startswith("failure:")]
        self._mm: np.memmap | None = None

    def __getstate__(self) -> dict[str, Any]:  # workers map the file themselves
        return {**self.__dict__, "_mm": None}

    def _plane(self, offset: int, shape: tuple[int, ...], dtype) -> np.ndarray:
        if self._mm is None:
            self._mm = np.memmap(self.path / PIXELS, np.uint8, "r")
        return np.ndarray(shape, dtype, buffer=self._mm, offset=offset)

    def release(self, rec: dict[str, Any]) -> None:
        """Unmap the pages of one record's planes from this process (MADV_DONTNEED): they stay in
        the page cache for the next reader, but a worker's RSS does not grow with the store."""
        import mmap

        if self._mm is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        h, w, p = rec["h"], rec["w"], rec["planes"]
        spans = [(p["image"], h * w * 3), (p["alpha"], h * w * (2 if rec["top"] == 65535 else 1)),
                 (p["bits"], h * w), (p["trans"][0], 4 * p["trans"][1])]
        if p.get("fg") is not None:
            spans += [(p["fg"], h * w * 3), (p["bg"], h * w * 3)]
        for off, n in spans:
            if n:
                raw = self._mm._mmap  # type: ignore[attr-defined]  # numpy's memmap keeps its mmap.mmap here
                raw.madvise(mmap.MADV_DONTNEED, off, min(n, len(self._mm) - off))

    def planes(self, rec: dict[str, Any]) -> dict[str, np.ndarray]:
        """Views (no reading yet) of one record's planes."""
        h, w, p = rec["h"], rec["w"], rec["planes"]
        out = {"image": self._plane(p["image"], (h, w, 3), np.uint8),
               "alpha": self._plane(p["alpha"], (h, w), np.uint16 if rec["top"] == 65535 else np.uint8),
               "bits": self._plane(p["bits"], (h, w), np.uint8),
               "trans": self._plane(p["trans"][0], (p["trans"][1],), np.uint32)}
        if p.get("fg") is not None:
            out["fg"] = self._plane(p["fg"], (h, w, 3), np.uint8)
            out["bg"] = self._plane(p["bg"], (h, w, 3), np.uint8)
        return out


class StoreDataset(MattingDataset):
    """:class:`gfm.data.MattingDataset` over packed stores: the same draws from (seed, epoch,
    index) and the same tensors, reading only each plane's crop window."""

    def __init__(self, stores: Sequence[str | os.PathLike | TrainingStore], rosta: str, crop: int = 320, seed: int = 0,
                 photo_fgbg: bool = True):
        """``photo_fgbg``: use the closed-form F and B a store holds for photos (as the folder
        path's photo F/B cache does); off, photos train without the composition loss."""
        self.stores = [s if isinstance(s, TrainingStore) else TrainingStore(s) for s in stores]
        self.index = [(k, r) for k, st in enumerate(self.stores) for r in st.records]
        super().__init__([], rosta, crop, seed)
        self.photo_fgbg = photo_fgbg
        self.failures = [f for st in self.stores for f in st.failures]

    @property
    def names(self) -> list[str]:
        return [r["name"] for _, r in self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return served(self._load(index), 0)  # a store was checked when packed: nothing is replaced

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        k, rec = self.index[index]
        p = self.stores[k].planes(rec)
        rng = derive_rng(self.seed, "sample", self.epoch, index)
        trans = p["trans"]  # a view of the memory map: read only when the crop is centred on it
        y, x, size = choose_crop_at(rec["h"], rec["w"], lambda: trans, rng)
        flip = rng.random() < 0.5
        win = (slice(y, y + size), slice(x, x + size))
        use_fb = "fg" in p and (rec["fg_source"] == "file" or self.photo_fgbg)
        out = window_sample(p["image"][win], p["alpha"][win], p["bits"][win], self.rosta,
                             p["fg"][win] if use_fb else None, p["bg"][win] if use_fb else None, size, self.crop, flip)
        del p
        self.stores[k].release(rec)
        return out

