"""One image's metrics under each protocol."""
from __future__ import annotations

import numpy as np

from .connectivity import connectivity_error_dim, connectivity_error_gfm
from .errors import gfm_errors, mad_dim, mse_dim, sad_dim
from .gradient import gradient_error_dim, gradient_error_gfm

METRIC_COLUMNS = ("sad", "mse", "mad", "grad", "conn", "sad_tran", "mse_tran", "mad_tran", "sad_fg", "sad_bg")


def evaluate_dim(pred8: np.ndarray, gt8: np.ndarray, trimap: np.ndarray) -> dict[str, float]:
    """DIM protocol: 8-bit mattes, every metric over trimap == 128."""
    u = trimap == 128
    return {
        "sad": sad_dim(pred8, gt8, u),
        "mse": mse_dim(pred8, gt8, u),
        "mad": mad_dim(pred8, gt8, u),
        "grad": gradient_error_dim(pred8, gt8, u),
        "conn": connectivity_error_dim(pred8, gt8, u),
    }


def evaluate_gfm(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> dict[str, float]:
    """GFM protocol: mattes as float64 in [0, 1]; whole image plus the trimap areas."""
    out = gfm_errors(pred, gt, trimap)
    out["grad"] = gradient_error_gfm(pred, gt)
    out["conn"] = connectivity_error_gfm(pred, gt)
    return out
