"""SAD, MSE and MAD in both conventions."""
from __future__ import annotations

import numpy as np

from ._checks import dim_inputs, gfm_inputs


def _diff8(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return pred.astype(np.float64) - gt.astype(np.float64)


def sad_dim(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray) -> float:
    """Sum over the unknown region of |p - g| / 255, divided by 1000.

    Refuses anything but HxW uint8 mattes and a boolean ``unknown`` mask (the DIM protocol
    scores 8-bit mattes; rounding floats to 8 bits is the caller's choice)."""
    dim_inputs("sad_dim", pred, gt, unknown)
    return _sad_dim(pred, gt, unknown)


def _sad_dim(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray) -> float:
    return float(np.abs(_diff8(pred, gt))[unknown].sum() / 255.0 / 1000.0)


def mse_dim(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray) -> float:
    """Mean over the unknown region of ((p - g) / 255)^2; inputs as :func:`sad_dim` (refused otherwise)."""
    dim_inputs("mse_dim", pred, gt, unknown)
    return _mse_dim(pred, gt, unknown)


def _mse_dim(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray) -> float:
    n = int(unknown.sum())
    return float(((_diff8(pred, gt)[unknown] / 255.0) ** 2).sum() / n) if n else 0.0


def mad_dim(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray) -> float:
    """Mean over the unknown region of |p - g| / 255; inputs as :func:`sad_dim` (refused otherwise)."""
    dim_inputs("mad_dim", pred, gt, unknown)
    return _mad_dim(pred, gt, unknown)


def _mad_dim(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray) -> float:
    n = int(unknown.sum())
    return float((np.abs(_diff8(pred, gt)[unknown]) / 255.0).sum() / n) if n else 0.0


def gfm_errors(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> dict[str, float]:
    """The GFM evaluator's SAD/MSE/MAD over the whole image and by trimap area.

    ``pred`` and ``gt``: HxW uint8 or uint16 mattes, converted exactly (x / 255, x / 65535,
    as the authors' script does after reading PNGs), or float in [0, 1]; a float matte on the
    0-255 scale is refused. ``trimap``: HxW holding only 0, 128 and 255.
    """
    p, g, areas = gfm_inputs("gfm_errors", pred, gt, trimap)
    return _gfm_errors(p, g, areas)


def _gfm_errors(pred: np.ndarray, gt: np.ndarray, areas: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, float]:
    """The kernel: float64 mattes in [0, 1] and the trimap's (fg, bg, unknown) masks."""
    fg, bg, unknown = areas
    n = pred.size
    diff = pred - gt
    adiff = np.abs(diff)
    sum_abs = float(np.sum(adiff))
    out = {"sad": sum_abs / 1000, "mse": float(np.dot(diff.ravel(), diff.ravel()) / n), "mad": sum_abs / n}
    sum_fg, sum_bg = float(adiff[fg].sum()), float(adiff[bg].sum())
    # the transition-area figures force p to 1 on the trimap's foreground and 0 on its background
    forced_fg = float((1.0 - gt[fg]).sum())
    forced_bg = float(gt[bg].sum())
    du = diff[unknown]
    sum_abs_tran = float(np.abs(du).sum()) + forced_fg + forced_bg
    sum_sq_tran = float(np.dot(du, du)) + float(np.square(1.0 - gt[fg]).sum()) + float(np.square(gt[bg]).sum())
    n_unknown = float(np.count_nonzero(unknown))
    out["sad_tran"] = sum_abs_tran / 1000
    out["mse_tran"] = sum_sq_tran / n_unknown if n_unknown else 0.0
    out["mad_tran"] = sum_abs_tran / n_unknown if n_unknown else 0.0
    out["sad_fg"] = sum_fg / 1000
    out["sad_bg"] = sum_bg / 1000
    return out
