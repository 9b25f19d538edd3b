"""`rssn audit`: measure how far a corpus of composites is from real photos, before training.

find (main process: the images and mattes of each set)  ->  measure (workers: read, one row of
`rssn.measures` per image)  ->  detect (optional, main process: salient objects in the
background region)  ->  summarise (per set and measure: median, quartiles, Wasserstein-1 to the
reference set)  ->  report (audit.csv, audit.json, report.html with histograms).

Rows are kept in REPORT/rows.jsonl keyed by set and image with a fingerprint of the files and
settings: a re-run measures only what is new or changed, a killed run resumes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checks import check_choice_setting, check_int_setting, check_number_setting
from .imageio import ImageReadError, read_image, read_matte, read_rgba, remove_stale_temporaries
from .layout import LayoutError, find_foregrounds
from .manifest import Manifest
from .measures import ERODE_PX, GAPS, MEASURES, MIN_REGION_PX, measure_image

MEASURES_VERSION = 4  # bump when a measure's definition changes: cached rows are then measured again
SEM_COLUMNS = ("sem_bg",)


class AuditError(ValueError):
    """A set or option that cannot be audited; raised before any work."""


@dataclass(frozen=True)
class AuditItem:
    set: str
    name: str
    image: str
    matte: str | None          # None: the image's alpha channel
    ops: tuple = ()            # the composite's manifest operations
    source: str = ""           # foreground / background the composite came from


@dataclass(frozen=True)
class AuditConfig:
    sets: tuple[tuple[str, Path], ...]
    out_dir: Path
    reference: str | None = None
    erode: int = ERODE_PX
    limit: int | None = None
    detector: str | None = None
    conf: float = 0.25
    classes: tuple[str, ...] | None = None
    min_box_fraction: float = 0.01
    imgsz: int = 640
    far: int = 4
    workers: int = 1
    executor: str = "local"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        """The ranges `rssn audit`'s options enforce, for Python callers too."""
        own = "AuditConfig"
        if not self.sets:
            raise ValueError(f"{own}: give at least one (name, folder) set")
        names = [n for n, _ in self.sets]
        if len(set(names)) != len(names):
            raise ValueError(f"{own}: set names must differ, got {', '.join(names)}")
        if self.reference is not None and self.reference not in names:
            raise ValueError(f"{own}: reference {self.reference!r} is not one of the sets ({', '.join(names)})")
        for key, lo in (("erode", 0), ("imgsz", 32), ("far", 0), ("workers", 1)):
            check_int_setting(own, key, getattr(self, key), lo)
        check_int_setting(own, "limit", self.limit, 1, optional=True)
        for key in ("conf", "min_box_fraction"):
            check_number_setting(own, key, getattr(self, key), 0.0, 1.0)
        check_choice_setting(own, "executor", self.executor, ("local", "ray"))


@dataclass
class SetInfo:
    name: str
    root: str
    kind: str                      # "composites" or "photos"
    items: list[AuditItem] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)


# ------------------------------------------------------------------ find


def _composites(manifest_path: Path) -> list[dict]:
    """The composite records of an `rssn compose` manifest, read without touching the file (a
    line cut by a kill is skipped; the set's own next compose run repairs it)."""
    out = []
    with open(manifest_path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("type") == "composite":
                out.append(rec)
    return out


def _composite_items(name: str, root: Path, records: list[dict], manifest_path: Path) -> tuple[list[AuditItem], list[dict]]:
    items, failures = [], []
    for rec in records:
        outs = rec.get("outputs", {})
        if "image" not in outs or "alpha" not in outs:
            failures.append({"path": str(manifest_path), "reason": f"composite {rec.get('id')} has no image/alpha files "
                                                                   "(webdataset output: compose with --format png)"})
            continue
        src = f"{rec.get('fg', {}).get('image', '')} over {rec.get('bg', {}).get('path', '')}"
        items.append(AuditItem(name, str(rec["id"]), str(root / outs["image"]), str(root / outs["alpha"]),
                               tuple(json.dumps(o, sort_keys=True) for o in rec.get("ops", [])), src))
    return sorted(items, key=lambda i: i.name), failures


def find_set(name: str, root: Path, limit: int | None = None) -> SetInfo:
    """The images of one set: an `rssn compose` output (its manifest names every composite and
    its operations) or photos with mattes in any layout `rssn compose` reads."""
    if not root.is_dir():
        raise AuditError(f"--set {name}={root}: no such folder")
    manifest = root / "manifest.jsonl"
    records = _composites(manifest) if manifest.is_file() else []
    if records:
        items, failures = _composite_items(name, root, records, manifest)
        if not items:
            raise AuditError(f"--set {name}={root}: its composites have no image/ and alpha/ files (a webdataset "
                             "output?); compose with --format png or jpg to audit them")
        info = SetInfo(name, str(root), "composites", items, failures)
    else:
        try:
            # an image/ + alpha/ folder is read as photos even when fg/ and bg/ sit beside them
            fgs, bad = find_foregrounds(root, prefer="photo")
        except LayoutError as exc:
            raise AuditError(f"--set {name}: {exc}") from None
        items = [AuditItem(name, f.stem, str(f.image), str(f.matte) if f.matte else None) for f in fgs]
        info = SetInfo(name, str(root), "photos", items, [{"path": b.path, "reason": b.reason} for b in bad])
    if limit is not None:
        info.items = info.items[:limit]
    if not info.items and not info.failures:
        raise AuditError(f"--set {name}={root}: no images with mattes found (expected image/ + alpha/, fg/ + alpha/, "
                         "RGBA images, or an rssn compose output)")
    return info


def parse_set(value: str) -> tuple[str, Path]:
    """NAME=DIR -> (NAME, DIR)."""
    name, sep, path = value.partition("=")
    name = name.strip()
    if not sep or not name or not path:
        raise AuditError(f"--set {value!r}: expected NAME=DIR, e.g. --set rssn=comp/rssn")
    if not all(c.isalnum() or c in "-_." for c in name):
        raise AuditError(f"--set {value!r}: a set name may hold letters, digits, '-', '_' and '.'")
    return name, Path(path)


def choose_reference(infos: list[SetInfo], reference: str | None) -> str:
    names = [i.name for i in infos]
    if reference is not None:
        if reference not in names:
            raise AuditError(f"--reference {reference!r} is not one of the sets ({', '.join(names)})")
        return reference
    photos = [i.name for i in infos if i.kind == "photos"]
    if len(photos) == 1:
        return photos[0]
    raise AuditError(f"name the real photos with --reference: {len(photos)} sets are not composites "
                     f"({', '.join(photos) or 'none'})")


# ------------------------------------------------------------------ measure (a worker)


def fingerprint(item: AuditItem, erode: int) -> str:
    """Changes when the files or the measures change (sizes and modification times)."""
    parts = [str(MEASURES_VERSION), str(erode)]
    for p in (item.image, item.matte):
        if p is not None:
            try:
                st = os.stat(p)
                parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                parts.append(f"{p}:missing")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


# The IJG / JPEG Annex K luminance quantisation table (libjpeg, OpenCV and Pillow scale it by quality).
_IJG_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                      14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
                      92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
_FORMATS = ((b"\x89PNG", "png"), (b"\xff\xd8", "jpeg"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"BM", "bmp"))


def _ijg_table(quality: int) -> np.ndarray:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((_IJG_LUMA * scale + 50) // 100, 1, 255)


def jpeg_quality(data: bytes) -> int | None:
    """The IJG quality (1-100) whose luminance table is nearest the file's first quantisation
    table (exact for files libjpeg, OpenCV or Pillow wrote with a quality setting); None when
    ``data`` holds no DQT segment. Tables are compared sorted, so their order does not matter."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDB and i + 4 + 65 <= len(data):
            precision = data[i + 4] >> 4
            raw = data[i + 5:i + 5 + 64 * (1 + precision)]
            table = np.frombuffer(raw, ">u2" if precision else np.uint8).astype(np.int64)
            table = np.sort(table)
            errors = [int(np.abs(np.sort(_ijg_table(q)) - table).sum()) for q in range(1, 101)]
            return int(np.argmin(errors)) + 1
        if marker == 0xDA:           # start of scan: no table came first
            return None
        i += 2 + length
    return None


def image_format(path: str) -> tuple[str, int | None]:
    """(format, JPEG quality or None) of an image file from its first bytes: png, jpeg, webp,
    tiff, bmp or other."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return "unreadable", None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp", None
    for magic, name in _FORMATS:
        if head.startswith(magic):
            return name, (jpeg_quality(head) if name == "jpeg" else None)
    return "other", None


def read_pair(item: AuditItem) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8, alpha float32 in [0, 1]) of one item; ImageReadError names the bad file."""
    if item.matte is None:
        image, matte = read_rgba(item.image)
    else:
        image, matte = read_image(item.image), read_matte(item.matte)
    if image.shape[:2] != matte.shape:
        raise ImageReadError(item.matte or item.image, f"matte is {matte.shape[1]}x{matte.shape[0]} but the image "
                                                       f"is {image.shape[1]}x{image.shape[0]}")
    return image, matte.alpha


def measure_item(item: AuditItem, erode: int) -> dict[str, Any]:
    """One row: status ok / too_small / failed, the measures, and the seconds it took."""
    t = time.perf_counter()
    row: dict[str, Any] = {"set": item.set, "name": item.name}
    try:
        image, alpha = read_pair(item)
    except ImageReadError as exc:
        return {**row, "status": "failed", "reason": f"{exc.path}: {exc.reason}"}
    values = measure_image(image, alpha, erode)
    row["format"], row["jpeg_quality"] = image_format(item.image)
    row.update({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()})
    row["pixels"] = int(image.shape[0] * image.shape[1])
    missing = sorted({k.rsplit("_", 1)[0] for k in MEASURES if row.get(k) is None})
    sizes = f"foreground {values['fg_px']} px, background {values['bg_px']} px after eroding {erode} px"
    if min(values["fg_px"], values["bg_px"]) < MIN_REGION_PX:
        row.update(status="too_small", reason=f"regions too small to measure ({sizes}; {MIN_REGION_PX} needed)")
    elif missing:  # e.g. a thin background where no spectrum tile fits
        row.update(status="ok", reason=f"not measured: {', '.join(missing)} ({sizes})")
    else:
        row.update(status="ok", reason="")
    row["seconds"] = round(time.perf_counter() - t, 4)
    return row


# ------------------------------------------------------------------ detect (optional)


def background_detections(dets, bg: np.ndarray, conf: float, classes: set[str] | None,
                          min_box_fraction: float) -> list:
    """The detections that lie in the background mask ``bg`` (any resolution): a listed class,
    conf >= ``conf``, a box of at least ``min_box_fraction`` of the image, at least half of whose
    pixels are background."""
    h, w = bg.shape
    out = []
    for d in dets:
        if d.conf < conf or (classes is not None and d.name not in classes) or d.area_fraction < min_box_fraction:
            continue
        x1, y1, x2, y2 = d.box
        xa, xb = int(max(0, x1) * w), int(math.ceil(min(1, x2) * w))
        ya, yb = int(max(0, y1) * h), int(math.ceil(min(1, y2) * h))
        if xb <= xa or yb <= ya:
            continue
        if bg[ya:yb, xa:xb].mean() >= 0.5:
            out.append(d)
    return out


# ------------------------------------------------------------------ summarise


def _finite(rows: list[dict], column: str) -> np.ndarray:
    v = [r.get(column) for r in rows if r.get("status") == "ok"]
    return np.array([x for x in v if x is not None and math.isfinite(x)], dtype=np.float64)


BOOTSTRAP = 1000       # resamples for each W1's confidence interval
CI_PERCENT = 95
MIN_IMAGES = 50        # fewer images in a set or the reference: the table warns
BOOTSTRAP_SEED = 20240531


def w1_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Wasserstein-1 distance between the empirical distributions of the rows of ``a`` (B x n)
    and ``b`` (B x m), each row sorted ascending: the integral over p of |Qa(p) - Qb(p)|, exact on
    the union of the two quantile functions' steps (one pass, no loop over B)."""
    n, m = a.shape[-1], b.shape[-1]
    p = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    dp = np.diff(np.concatenate([[0.0], p]))
    mid = p - dp / 2
    ia = np.minimum((mid * n).astype(int), n - 1)
    ib = np.minimum((mid * m).astype(int), m - 1)
    return np.abs(a[..., ia] - b[..., ib]) @ dp


def bootstrap_w1(v: np.ndarray, ref: np.ndarray, key: str, n_boot: int = BOOTSTRAP) -> tuple[float, float]:
    """The percentile bootstrap interval (`CI_PERCENT` %) of W1(v, ref): both samples redrawn
    with replacement ``n_boot`` times from a generator seeded by ``key`` (set and column), so
    the same audit gives the same bytes."""
    rng = np.random.default_rng([BOOTSTRAP_SEED, zlib.crc32(key.encode())])
    a = np.sort(v[rng.integers(0, len(v), (n_boot, len(v)))], axis=1)
    b = np.sort(ref[rng.integers(0, len(ref), (n_boot, len(ref)))], axis=1)
    lo, hi = np.percentile(w1_sorted(a, b), [(100 - CI_PERCENT) / 2, 100 - (100 - CI_PERCENT) / 2])
    return float(lo), float(hi)


def summarise(rows: list[dict], set_names: list[str], reference: str, columns: tuple[str, ...]) -> dict[str, Any]:
    """Per measure and set: n (the images with a finite value in this column: columns can cover
    different images), median, q1, q3, the Wasserstein-1 distance to the reference set and its
    bootstrap interval w1_lo..w1_hi, and ``few`` when the set or the reference has fewer than
    `MIN_IMAGES` values."""
    by_set = {s: [r for r in rows if r["set"] == s] for s in set_names}
    out: dict[str, Any] = {}
    for col in columns:
        ref = _finite(by_set[reference], col)
        per: dict[str, Any] = {}
        for s in set_names:
            v = _finite(by_set[s], col)
            if len(v) == 0:
                per[s] = {"n": 0, "median": None, "q1": None, "q3": None, "w1": None, "w1_lo": None, "w1_hi": None,
                          "few": True}
                continue
            q1, med, q3 = np.percentile(v, [25, 50, 75])
            w1 = lo = hi = None
            if len(ref) and s != reference:
                w1 = float(w1_sorted(np.sort(v)[None], np.sort(ref)[None])[0])
                lo, hi = bootstrap_w1(v, ref, f"{col}/{s}")
            elif len(ref):
                w1 = 0.0
            per[s] = {"n": int(len(v)), "median": round(float(med), 6), "q1": round(float(q1), 6),
                      "q3": round(float(q3), 6), "w1": None if w1 is None else round(w1, 6),
                      "w1_lo": None if lo is None else round(lo, 6), "w1_hi": None if hi is None else round(hi, 6),
                      "few": bool(len(v) < MIN_IMAGES or len(ref) < MIN_IMAGES)}
        out[col] = per
    return out


def clearly_closest(per: dict[str, Any], reference: str) -> str | None:
    """The set whose W1 interval lies wholly below every other set's (None when the intervals
    overlap, or fewer than two sets are compared): the only one the report marks as closest."""
    cand = [(m["w1_lo"], m["w1_hi"], s) for s, m in per.items()
            if s != reference and m.get("w1_lo") is not None and m.get("w1_hi") is not None]
    if len(cand) < 2:
        return None
    best = min(cand, key=lambda c: (per[c[2]]["w1"], c[2]))
    if all(best[1] < lo for lo, _, s in cand if s != best[2]):
        return best[2]
    return None


def farthest(rows: list[dict], measures: dict[str, Any], reference: str, columns: tuple[str, ...],
             n: int) -> dict[str, list[dict]]:
    """For each gap measure, the ``n`` images of the other sets whose value lies farthest from
    the reference set's median (ties: set, then name)."""
    out: dict[str, list[dict]] = {}
    for col in columns:
        med = measures[col][reference]["median"]
        if med is None:
            out[col] = []
            continue
        cand = [r for r in rows if r["set"] != reference and r.get("status") == "ok" and r.get(col) is not None]
        cand.sort(key=lambda r: (-abs(r[col] - med), r["set"], r["name"]))
        out[col] = [{"set": r["set"], "name": r["name"], "value": r[col], "distance": round(abs(r[col] - med), 6)}
                    for r in cand[:n]]
    return out


# ------------------------------------------------------------------ the run


@dataclass
class AuditResult:
    rows: list[dict]
    sets: list[SetInfo]
    reference: str
    measures: dict[str, Any]
    columns: tuple[str, ...]
    measured_now: int = 0
    reused: int = 0
    seconds: float = 0.0


def run_audit(cfg: AuditConfig, progress: bool = True) -> AuditResult:
    from tqdm import tqdm

    from .executor import run_tasks

    t0 = time.perf_counter()
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    infos = [find_set(name, root, cfg.limit) for name, root in cfg.sets]
    reference = choose_reference(infos, cfg.reference)
    detector = None
    if cfg.detector:  # loaded before any work, so a bad --detector stops the run at once
        from bg20k.screen import Detector

        detector = Detector(cfg.detector, cfg.imgsz)
    rows_db = Manifest(out / "rows.jsonl")
    items = [it for info in infos for it in info.items]
    by_key = {f"{it.set}/{it.name}": it for it in items}
    prints = {key: fingerprint(it, cfg.erode) for key, it in by_key.items()}
    todo, reused = [], 0
    for key, it in by_key.items():
        rec = rows_db.get(key)
        if rec is not None and rec.get("fingerprint") == prints[key] and rec["status"] != "failed":
            reused += 1
        else:
            todo.append(it)
    bar = tqdm(total=len(todo), desc="measure", unit="image", disable=not progress or not todo, dynamic_ncols=True)
    for i, row, exc in run_tasks(measure_item, [(it, cfg.erode) for it in todo], workers=cfg.workers,
                                 executor=cfg.executor, ray_address=cfg.ray_address):
        it = todo[i]
        if exc is not None:  # a crashed worker fails this image, not the run
            row = {"set": it.set, "name": it.name, "status": "failed", "reason": f"{exc.__class__.__name__}: {exc}"}
        key = f"{it.set}/{it.name}"
        rows_db.append({"key": key, "fingerprint": prints[key], **row})
        bar.update(1)
    bar.close()

    columns: tuple[str, ...] = MEASURES
    if detector is not None:
        _detect(cfg, detector, by_key, rows_db, progress)
        columns = MEASURES + SEM_COLUMNS
    rows = []
    for key in sorted(by_key):
        rec = dict(rows_db.get(key) or {})
        if cfg.detector:
            sem = rows_db.get(f"sem:{key}")
            if sem is not None and sem["detector"] == _detector_key(cfg) and rec.get("status") == "ok":
                rec["sem_bg"] = len(background_detections(_dets(sem), _background_mask(sem), cfg.conf,
                                                          set(cfg.classes) if cfg.classes else None,
                                                          cfg.min_box_fraction))
        rows.append(rec)
    set_names = [i.name for i in infos]
    measures = summarise(rows, set_names, reference, columns)
    result = AuditResult(rows, infos, reference, measures, columns, len(todo), reused, time.perf_counter() - t0)
    from .audit_report import write_outputs

    write_outputs(cfg, result, by_key)
    rows_db.compact()
    return result


def _detector_key(cfg: AuditConfig) -> str:
    return f"{cfg.detector}|{cfg.imgsz}"


def _dets(rec: dict) -> list:
    from bg20k.screen import Detection

    return [Detection.from_list(d) for d in rec["detections"]]


def _background_mask(rec: dict) -> np.ndarray:
    """The background mask stored with the detections (64 x 64 cells)."""
    h, w = rec["mask_shape"]
    return np.unpackbits(np.frombuffer(bytes.fromhex(rec["bg_mask"]), np.uint8))[: h * w].reshape(h, w).astype(bool)


MASK_SIDE = 64  # the background mask kept with the detections, at this many cells a side


def _detect(cfg: AuditConfig, det, by_key: dict[str, AuditItem], rows_db: Manifest, progress: bool) -> None:
    """Detections (all classes, conf >= 0.05) for every measured image, cached in rows.jsonl
    with a 64 x 64 background mask, so other --conf / --classes re-use them."""
    import cv2
    from tqdm import tqdm

    key_d = _detector_key(cfg)
    todo = [k for k in sorted(by_key) if (rows_db.get(k) or {}).get("status") == "ok"
            and (rows_db.get(f"sem:{k}") or {}).get("detector") != key_d]
    if not todo:
        return
    bar = tqdm(total=len(todo), desc="detect", unit="image", disable=not progress, dynamic_ncols=True)
    batch = 8
    for s in range(0, len(todo), batch):
        keys = todo[s:s + batch]
        pairs = [read_pair(by_key[k]) for k in keys]
        for k, (_image, alpha), dets in zip(keys, pairs, det.detect([p[0] for p in pairs], 0.05)):
            small = cv2.resize(alpha, (MASK_SIDE, MASK_SIDE), interpolation=cv2.INTER_AREA) <= 0.01
            rows_db.append({"key": f"sem:{k}", "detector": key_d, "detections": [d.as_list() for d in dets],
                            "mask_shape": [MASK_SIDE, MASK_SIDE], "bg_mask": np.packbits(small.ravel()).tobytes().hex()})
        bar.update(len(keys))
    bar.close()


def settings_doc(cfg: AuditConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["sets"] = {n: str(p) for n, p in cfg.sets}
    d["out_dir"] = str(cfg.out_dir)
    d["measures_version"] = MEASURES_VERSION
    return d


def gap_columns(columns: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(c for c in columns if c in GAPS or c in SEM_COLUMNS)
