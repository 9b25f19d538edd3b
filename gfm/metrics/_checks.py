"""The metrics' input checks: one call per protocol, on top of :mod:`rssn.checks`.

Decisions (each public metric's docstring repeats its own):

- DIM protocol: the MATLAB code scores 8-bit mattes, so ``pred`` and ``gt`` must be HxW uint8;
  floats and 16-bit mattes are refused with the conversion to use (rounding to 8 bits is not
  exact, so it is the caller's choice). ``unknown`` is a boolean mask, a trimap holds 0/128/255.
- Both: a ground truth that is an integer 0/1 mask is refused (it is on the wrong scale); a
  prediction is not checked for that, since a poor one may legitimately be all but empty.
- GFM protocol: the authors' script divides the PNGs by 255, so uint8 (and uint16) mattes are
  converted exactly (x / 255, x / 65535, float64) and float mattes must lie in [0, 1]; a float
  matte on the 0-255 scale is refused, never divided by a guess.
"""
from __future__ import annotations

import numpy as np

from rssn.checks import bool_mask, matte8, matte_unit, same_size, trimap_areas


def dim_pair(func: str, pred: np.ndarray, gt: np.ndarray) -> None:
    """Refuse anything but two HxW uint8 mattes of one size."""
    matte8(pred, func, "pred")
    matte8(gt, func, "gt", given=True)
    same_size(func, gt=gt, pred=pred)


def dim_inputs(func: str, pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray) -> None:
    """Two uint8 mattes and a boolean unknown-region mask, all of one size."""
    dim_pair(func, pred, gt)
    bool_mask(unknown, func, "unknown")
    same_size(func, gt=gt, unknown=unknown)


def dim_trimap(func: str, pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """The unknown region (trimap == 128) after checking the mattes and the trimap's values."""
    dim_pair(func, pred, gt)
    _, _, unknown = trimap_areas(trimap, func, "trimap")
    same_size(func, gt=gt, trimap=trimap)
    return unknown


def gfm_pair(func: str, pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pred and gt as float64 in [0, 1] (uint8 / uint16 converted exactly), of one size."""
    p = matte_unit(pred, func, "pred")
    g = matte_unit(gt, func, "gt", given=True)
    same_size(func, gt=g, pred=p)
    return p, g


def gfm_inputs(func: str, pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`gfm_pair` plus the trimap's (foreground, background, unknown) masks."""
    p, g = gfm_pair(func, pred, gt)
    areas = trimap_areas(trimap, func, "trimap")
    same_size(func, gt=g, trimap=trimap)
    return p, g, areas
