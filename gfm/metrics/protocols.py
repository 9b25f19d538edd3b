"""One image's metrics under each protocol: the inputs checked once, then every metric's kernel."""
from __future__ import annotations

import numpy as np

from ._checks import dim_trimap, gfm_inputs
from .connectivity import _connectivity_error_dim, _connectivity_error_gfm
from .errors import _gfm_errors, _mad_dim, _mse_dim, _sad_dim
from .gradient import _gradient_error_dim, _gradient_error_gfm

METRIC_COLUMNS = ("sad", "mse", "mad", "grad", "conn", "sad_tran", "mse_tran", "mad_tran", "sad_fg", "sad_bg")


def evaluate_dim(pred8: np.ndarray, gt8: np.ndarray, trimap: np.ndarray) -> dict[str, float]:
    """DIM protocol: every metric over trimap == 128.

    ``pred8``, ``gt8``: HxW uint8 mattes; floats and 16-bit mattes are refused (the protocol
    scores 8 bits; how to round is the caller's choice). ``trimap``: only 0, 128 and 255."""
    u = dim_trimap("evaluate_dim", pred8, gt8, trimap)
    return {
        "sad": _sad_dim(pred8, gt8, u),
        "mse": _mse_dim(pred8, gt8, u),
        "mad": _mad_dim(pred8, gt8, u),
        "grad": _gradient_error_dim(pred8, gt8, u),
        "conn": _connectivity_error_dim(pred8, gt8, u),
    }


def evaluate_gfm(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> dict[str, float]:
    """GFM protocol: whole image plus the trimap areas.

    ``pred``, ``gt``: HxW uint8 / uint16 mattes, converted exactly (x / 255, x / 65535, as the
    authors' script after reading PNGs), or float in [0, 1]; a float matte on the 0-255 scale
    is refused. ``trimap``: only 0, 128 and 255."""
    p, g, areas = gfm_inputs("evaluate_gfm", pred, gt, trimap)
    out = _gfm_errors(p, g, areas)
    out["grad"] = _gradient_error_gfm(p, g)
    out["conn"] = _connectivity_error_gfm(p, g)
    return out
