"""SAD, MSE and MAD in both conventions."""
from __future__ import annotations

import numpy as np

from ._checks import check_pair, check_uint8


def _diff8(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return pred.astype(np.float64) - gt.astype(np.float64)


def sad_dim(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray) -> float:
    """Sum over the unknown region of |p - g| / 255, divided by 1000 (8-bit mattes)."""
    check_pair(pred, gt, unknown)
    check_uint8(pred, gt)
    return float(np.abs(_diff8(pred, gt))[unknown].sum() / 255.0 / 1000.0)


def mse_dim(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray) -> float:
    """Mean over the unknown region of ((p - g) / 255)^2."""
    check_pair(pred, gt, unknown)
    check_uint8(pred, gt)
    n = int(unknown.sum())
    return float(((_diff8(pred, gt)[unknown] / 255.0) ** 2).sum() / n) if n else 0.0


def mad_dim(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray) -> float:
    """Mean over the unknown region of |p - g| / 255."""
    check_pair(pred, gt, unknown)
    check_uint8(pred, gt)
    n = int(unknown.sum())
    return float((np.abs(_diff8(pred, gt)[unknown]) / 255.0).sum() / n) if n else 0.0


def gfm_errors(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> dict[str, float]:
    """The GFM evaluator's SAD/MSE/MAD over the whole image and by trimap area.

    ``pred`` and ``gt`` are float64 in [0, 1]; ``trimap`` holds 0 / 128 / 255.
    """
    check_pair(pred, gt, trimap)
    n = pred.size
    diff = pred - gt
    adiff = np.abs(diff)
    sum_abs = float(np.sum(adiff))
    out = {"sad": sum_abs / 1000, "mse": float(np.dot(diff.ravel(), diff.ravel()) / n), "mad": sum_abs / n}
    fg, bg = trimap == 255, trimap == 0
    sum_fg, sum_bg = float(adiff[fg].sum()), float(adiff[bg].sum())
    # the transition-area figures force p to 1 on the trimap's foreground and 0 on its background
    forced_fg = float((1.0 - gt[fg]).sum())
    forced_bg = float(gt[bg].sum())
    unknown = ~(fg | bg)
    du = diff[unknown]
    sum_abs_tran = float(np.abs(du).sum()) + forced_fg + forced_bg
    sum_sq_tran = float(np.dot(du, du)) + float(np.square(1.0 - gt[fg]).sum()) + float(np.square(gt[bg]).sum())
    n_unknown = float((trimap == 128).sum())
    if n_unknown == 0:
        n_unknown = float(unknown.sum())
    out["sad_tran"] = sum_abs_tran / 1000
    out["mse_tran"] = sum_sq_tran / n_unknown if n_unknown else 0.0
    out["mad_tran"] = sum_abs_tran / n_unknown if n_unknown else 0.0
    out["sad_fg"] = sum_fg / 1000
    out["sad_bg"] = sum_bg / 1000
    return out
