"""Connectivity error (Rhemann et al.), in the DIM MATLAB and the GFM Python conventions.

The slow part of the usual ports is labelling: here OpenCV labels each threshold's mask in
one pass and the largest 4-connected component is read off its statistics.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from ._checks import dim_inputs, gfm_pair


def largest_component(mask: np.ndarray, tie: str = "C") -> np.ndarray | None:
    """The largest 4-connected component of ``mask`` as a boolean array (None when empty).

    A tie between equally large components goes to the one met first in ``tie`` order:
    ``C`` row-major (skimage's labels), ``F`` column-major (MATLAB's bwconncomp).
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    if n <= 1:
        return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    best = np.flatnonzero(areas == areas.max()) + 1
    if len(best) > 1:
        lab = labels if tie == "C" else labels.T
        flat = lab.ravel()
        first = {int(b): int(np.argmax(flat == b)) for b in best}
        label = min(first, key=first.__getitem__)
    else:
        label = int(best[0])
    return labels == label


def _largest_in(m: np.ndarray, t, tie: str) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """The largest component of m >= t as (bounding box, boolean crop), or None when empty."""
    mask = m >= t
    ys, xs = _bbox(mask)
    if ys is None or xs is None:  # both or neither
        return None
    comp = largest_component(np.ascontiguousarray(mask[ys, xs]), tie)  # never None: the box holds a pixel
    return None if comp is None else ((ys, xs), comp)


def _leave_index(m: np.ndarray, thresholds, tie: str, skip_empty: bool) -> np.ndarray:
    """For each pixel, the first index i at which it is outside the largest component of
    (p >= t_i) & (g >= t_i), given m = min(p, g); 0 for pixels that never leave it.

    The thresholds' components are independent, so they are labelled on two threads
    (OpenCV releases the GIL); the update is sequential and confined to the bounding box of
    the pixels still unassigned.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        comps = list(pool.map(lambda t: _largest_in(m, t, tie), list(thresholds[1:])))
    level = np.zeros(m.shape, np.uint8)  # 0: unassigned
    todo = (slice(0, m.shape[0]), slice(0, m.shape[1]))  # holds every unassigned pixel
    for i, comp in enumerate(comps, start=1):
        lv = level[todo]
        if comp is None:
            if skip_empty:
                continue
            lv[lv == 0] = i
            break
        omega = np.zeros(m.shape, bool)
        omega[comp[0]] = comp[1]
        unassigned = lv == 0
        inside = omega[todo]
        lv[unassigned & ~inside] = i
        ry, rx = _bbox(unassigned & inside)
        if ry is None or rx is None:  # both or neither
            break
        todo = (slice(todo[0].start + ry.start, todo[0].start + ry.stop),
                slice(todo[1].start + rx.start, todo[1].start + rx.stop))
    return level


def _l_lookup(thresholds: np.ndarray, dtype) -> np.ndarray:
    """l for each leave index: t_{i-1} for index i, and 1 for pixels that never left."""
    return np.concatenate([[1.0], np.asarray(thresholds, np.float64)[:-1]]).astype(dtype)


def _bbox(mask: np.ndarray) -> tuple[slice, slice] | tuple[None, None]:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None, None
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _phi_abs_diff(p: np.ndarray, g: np.ndarray, l_map: np.ndarray, theta) -> np.ndarray:
    """|phi_p - phi_g| with phi = 1 - d * (d >= theta), d = x - l (fused, few temporaries)."""
    dp = np.subtract(p, l_map)
    dp *= dp >= theta
    dg = np.subtract(g, l_map)
    dg *= dg >= theta
    phi_p = np.subtract(1, dp, out=dp)
    phi_g = np.subtract(1, dg, out=dg)
    return np.abs(np.subtract(phi_p, phi_g, out=phi_p), out=phi_p)


def connectivity_error_dim(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray,
                           step: float = 0.1, theta: float = 0.15) -> float:
    """Sum over the unknown region of |phi_p - phi_g| / 1000, as the DIM MATLAB code (single
    precision). Refuses anything but HxW uint8 mattes and a boolean ``unknown`` mask."""
    dim_inputs("connectivity_error_dim", pred, gt, unknown)
    return _connectivity_error_dim(pred, gt, unknown, step, theta)


def _connectivity_error_dim(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray,
                            step: float = 0.1, theta: float = 0.15) -> float:
    n = int(round(1 / step)) + 1
    thresholds = (np.arange(n, dtype=np.float64) * step).astype(np.float32)  # MATLAB 0:step:1 vs single
    # p / 255 >= t in single precision, as an exact test on the 8-bit values:
    values = np.arange(256, dtype=np.float32) / np.float32(255)
    int_thresholds = np.array([np.searchsorted(values, t, side="left") for t in thresholds])
    leave = _leave_index(np.minimum(pred, gt), int_thresholds, "F", skip_empty=False)
    l_u = _l_lookup(thresholds, np.float32)[leave[unknown]]
    p = values[pred[unknown]]
    g = values[gt[unknown]]
    diff = _phi_abs_diff(p, g, l_u, np.float32(theta))
    return float(np.sum(diff, dtype=np.float64) / 1000.0)


def connectivity_error_gfm(pred: np.ndarray, gt: np.ndarray, step: float = 0.1, theta: float = 0.15) -> float:
    """Whole-image connectivity error of the GFM evaluator.

    Mattes: HxW uint8 / uint16, converted exactly (x / 255, x / 65535), or float in [0, 1];
    a float matte on the 0-255 scale is refused."""
    p, g = gfm_pair("connectivity_error_gfm", pred, gt)
    return _connectivity_error_gfm(p, g, step, theta)


def _connectivity_error_gfm(pred: np.ndarray, gt: np.ndarray, step: float = 0.1, theta: float = 0.15) -> float:
    thresholds = np.arange(0, 1 + step, step)
    m = np.minimum(pred, gt)
    eight_bit = np.rint(m * 255.0)
    if np.array_equal(eight_bit / 255.0, m):  # the usual 8-bit mattes: compare small integers instead
        values = np.arange(256) / 255.0
        cuts = np.array([np.searchsorted(values, t, side="left") for t in thresholds])
        leave = _leave_index(eight_bit.astype(np.uint8), cuts, "C", skip_empty=True)
    else:
        leave = _leave_index(m, thresholds, "C", skip_empty=True)
    l_map = _l_lookup(thresholds, np.float32)[leave]
    return float(np.sum(_phi_abs_diff(pred, gt, l_map, theta)) / 1000)
