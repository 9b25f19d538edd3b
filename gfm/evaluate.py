"""`gfm eval`: pair predictions with ground truth (and trimaps) by stem and score them.

Stages: pair (by file stem) -> score one image (read, normalise, metrics) -> report (CSV,
JSON, terminal table, optional error maps). A bad pair is recorded with its reason and the
rest is still scored.
"""
from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rssn.checks import check_choice_setting, check_int_setting
from rssn.imageio import (
    ImageReadError,
    Matte,
    atomic_write_bytes,
    atomic_write_json,
    read_matte,
    read_trimap,
    write_image,
)
from rssn.layout import files_by_stem

from .metrics import METRIC_COLUMNS, evaluate_dim, evaluate_gfm

PROTOCOL_COLUMNS = {
    "dim": ("sad", "mse", "mad", "grad", "conn"),
    "gfm": METRIC_COLUMNS,
}


@dataclass(frozen=True)
class EvalConfig:
    pred_dir: Path
    gt_dir: Path
    trimap_dir: Path | None = None
    protocol: str = "dim"
    trimap_kernel: int = 25
    error_maps: Path | None = None

    def __post_init__(self) -> None:
        if self.pred_dir is None or self.gt_dir is None:
            raise ValueError("EvalConfig: give pred_dir and gt_dir (the predictions and the ground-truth mattes)")
        check_choice_setting("EvalConfig", "protocol", self.protocol, tuple(PROTOCOL_COLUMNS))
        check_int_setting("EvalConfig", "trimap_kernel", self.trimap_kernel, 1)


@dataclass
class EvalResult:
    protocol: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def columns(self) -> tuple[str, ...]:
        return PROTOCOL_COLUMNS[self.protocol]

    @property
    def total(self) -> int:
        """Every image considered: scored or failed (the mean is over the scored ones only)."""
        return len(self.rows) + len(self.failures)

    def means(self) -> dict[str, float]:
        if not self.rows:
            return {}
        return {c: float(np.mean([r[c] for r in self.rows])) for c in self.columns}


def _by_stem(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """The image files of ``folder`` by stem, and the stems that several files share (all of
    them, so neither is picked silently: GT01.jpg beside GT01.png is ambiguous)."""
    by_stem, failures = files_by_stem(folder)
    dups: dict[str, list[Path]] = {}
    for f in failures:
        p = Path(f.path)
        dups.setdefault(p.stem, [by_stem[p.stem]]).append(p)
    return {s: p for s, p in by_stem.items() if s not in dups}, dups


def normalise_trimap(values: np.ndarray, path: str | Path) -> np.ndarray:
    """Map a trimap to exactly 0 / 128 / 255; values near 128 (lossy saving) count as unknown.

    Values 1 and 2 are refused, not read as background: they mean a trimap coded 0/1/2, which
    would otherwise score as all background (SAD 0). A trimap without an unknown pixel is
    refused too, since every unknown-region metric of it is an empty sum.
    """
    t = values if values.dtype == np.uint8 else np.rint(values / 257.0).astype(np.uint8)
    out = np.full(t.shape, 128, np.uint8)
    out[t <= 16] = 0
    out[t >= 239] = 255
    coded = (t == 1) | (t == 2)
    bad = coded | (t > 16) & (t < 96) | (t > 160) & (t < 239)
    if bad.any():
        vals = np.unique(t[bad])[:8].tolist()
        hint = "; it looks coded 0/1/2: save it as 0/128/255" if coded.any() and t.max() <= 2 else ""
        raise ImageReadError(path, f"trimap values must be 0, 128 or 255; found {vals} in {int(bad.sum())} pixels{hint}")
    if not (out == 128).any():
        raise ImageReadError(path, "trimap has no unknown (128) pixel, so every unknown-region metric would be 0")
    return out


def trimap_from_alpha(gt8: np.ndarray, kernel: int = 25) -> np.ndarray:
    """Trimap by erosion of the opaque part and dilation of the non-zero part (square kernel)."""
    k = np.ones((kernel, kernel), np.uint8)
    fg = cv2.erode((gt8 == 255).astype(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    nonzero = cv2.dilate((gt8 > 0).astype(np.uint8), k)
    t = np.full(gt8.shape, 128, np.uint8)
    t[fg == 1] = 255
    t[nonzero == 0] = 0
    return t


def _to8(m: Matte) -> np.ndarray:
    return m.values if m.maxval == 255 else np.rint(m.values.astype(np.float64) / 257.0).astype(np.uint8)


def score_one(pred_path: Path, gt_path: Path, trimap_path: Path | None, cfg: EvalConfig) -> tuple[dict[str, Any], np.ndarray]:
    """The metrics of one image and its absolute-error map (float 0..1)."""
    pred, gt = read_matte(pred_path), read_matte(gt_path)
    if pred.shape != gt.shape:
        raise ImageReadError(pred_path, f"prediction is {pred.shape[1]}x{pred.shape[0]} but the ground truth "
                                        f"{gt_path} is {gt.shape[1]}x{gt.shape[0]}")
    if trimap_path is not None:
        trimap = normalise_trimap(read_trimap(trimap_path), trimap_path)
        if trimap.shape != gt.shape:
            raise ImageReadError(trimap_path, f"trimap is {trimap.shape[1]}x{trimap.shape[0]}, ground truth is "
                                              f"{gt.shape[1]}x{gt.shape[0]}")
    else:
        trimap = trimap_from_alpha(_to8(gt), cfg.trimap_kernel)
        if cfg.protocol == "dim" and not (trimap == 128).any():
            raise ImageReadError(gt_path, "the trimap made from this ground truth has no unknown pixel (an all-0 or "
                                          "all-1 matte), so every DIM metric would be 0; pass --trimap or leave it out")
    if cfg.protocol == "dim":
        p8, g8 = _to8(pred), _to8(gt)
        metrics = evaluate_dim(p8, g8, trimap)
        err = np.abs(p8.astype(np.float32) - g8) / 255.0
    else:
        p, g = pred.values / float(pred.maxval), gt.values / float(gt.maxval)
        metrics = evaluate_gfm(p, g, trimap)
        err = np.abs(p - g).astype(np.float32)
    return metrics, err


def error_map_image(err: np.ndarray) -> np.ndarray:
    """A colour map of the absolute error (dark: none, bright: large), RGB uint8."""
    scaled = np.clip(np.sqrt(err) * 255.0, 0, 255).astype(np.uint8)  # sqrt shows small errors too
    bgr = cv2.applyColorMap(scaled, cv2.COLORMAP_INFERNO)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def run_eval(cfg: EvalConfig, progress: bool = True) -> EvalResult:
    from tqdm import tqdm

    t0 = time.perf_counter()
    (preds, dup_p), (gts, dup_g) = _by_stem(cfg.pred_dir), _by_stem(cfg.gt_dir)
    trimaps, dup_t = _by_stem(cfg.trimap_dir) if cfg.trimap_dir is not None else ({}, {})
    result = EvalResult(cfg.protocol)
    dup_reasons: dict[str, tuple[str, str]] = {}
    for what, dups in (("trimap", dup_t), ("ground truth", dup_g), ("prediction", dup_p)):
        for stem, files in dups.items():
            names = " and ".join(str(f) for f in files)
            dup_reasons[stem] = (str(files[0]), f"{len(files)} {what} files share the stem {stem!r}: {names}; "
                                                f"keep one of them")
    for stem in sorted(dup_reasons):
        result.failures.append({"name": stem, "file": dup_reasons[stem][0], "reason": dup_reasons[stem][1]})
    preds = {s: p for s, p in preds.items() if s not in dup_reasons}
    gts = {s: p for s, p in gts.items() if s not in dup_reasons}
    for stem in sorted(set(gts) - set(preds)):
        result.failures.append({"name": stem, "file": str(gts[stem]), "reason": "no prediction with this stem"})
    for stem in tqdm(sorted(preds), unit="image", disable=not progress, dynamic_ncols=True):
        pred_path = preds[stem]
        if stem not in gts:
            result.failures.append({"name": stem, "file": str(pred_path), "reason": f"no ground truth with stem {stem!r} in {cfg.gt_dir}"})
            continue
        trimap_path = None
        if cfg.trimap_dir is not None:
            if stem not in trimaps:
                result.failures.append({"name": stem, "file": str(pred_path), "reason": f"no trimap with stem {stem!r} in {cfg.trimap_dir}"})
                continue
            trimap_path = trimaps[stem]
        try:
            metrics, err = score_one(pred_path, gts[stem], trimap_path, cfg)
        except (ImageReadError, ValueError, OSError) as exc:
            reason = exc.reason if isinstance(exc, ImageReadError) else str(exc)
            result.failures.append({"name": stem, "file": getattr(exc, "path", str(pred_path)), "reason": reason})
            continue
        result.rows.append({"name": pred_path.name, **metrics})
        if cfg.error_maps is not None:
            write_image(cfg.error_maps / f"{stem}.png", error_map_image(err))
    result.seconds = time.perf_counter() - t0
    return result


def _fmt(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.8f}"


def write_csv(result: EvalResult, path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", *METRIC_COLUMNS])
    for r in result.rows:
        w.writerow([r["name"], *[_fmt(r.get(c)) for c in METRIC_COLUMNS]])
    means = result.means()
    w.writerow(["mean", *[_fmt(means.get(c)) for c in METRIC_COLUMNS]])
    atomic_write_bytes(path, buf.getvalue().encode())


def write_json(result: EvalResult, path: Path) -> None:
    doc = {"protocol": result.protocol, "means": result.means(), "count": len(result.rows),
           "total": result.total, "failed": len(result.failures), "failures": result.failures, "seconds": round(result.seconds, 3),
           "images": result.rows}
    atomic_write_json(path, doc)


def summary_table(result: EvalResult) -> str:
    cols = result.columns
    partial = " (PARTIAL: the mean leaves the failed images out)" if result.failures else ""
    lines = [f"protocol {result.protocol}: scored {len(result.rows)} of {result.total} images, "
             f"{len(result.failures)} failed, {result.seconds:.2f} s", "  " + "  ".join(f"{c:>10}" for c in cols)]
    means = result.means()
    if means:
        lines.append("  " + "  ".join(f"{means[c]:>10.5f}" for c in cols)
                     + f"  mean of {len(result.rows)} of {result.total}{partial}")
    for f in result.failures:
        lines.append(f"  failed: {f['file']}: {f['reason']}")
    return "\n".join(lines)
