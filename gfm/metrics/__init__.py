"""Matting metrics, exactly as the two reference evaluators compute them.

- ``dim``: the Deep Image Matting MATLAB code (8-bit mattes, scored over the trimap's unknown
  region): :func:`errors.sad_dim`, :func:`errors.mse_dim`, :func:`gradient.gradient_error_dim`,
  :func:`connectivity.connectivity_error_dim`.
- ``gfm``: the GFM paper's Python evaluator (mattes / 255, whole image, plus the trimap areas):
  :func:`errors.gfm_errors`, :func:`gradient.gradient_error_gfm`,
  :func:`connectivity.connectivity_error_gfm`.

Every function checks its arrays first (:mod:`._checks`): the DIM ones take uint8 mattes only,
the GFM ones convert uint8 / uint16 exactly and refuse a float matte on the 0-255 scale.
"""
from .connectivity import connectivity_error_dim, connectivity_error_gfm
from .errors import gfm_errors, mad_dim, mse_dim, sad_dim
from .gradient import gradient_error_dim, gradient_error_gfm
from .protocols import METRIC_COLUMNS, evaluate_dim, evaluate_gfm

__all__ = [
    "METRIC_COLUMNS", "connectivity_error_dim", "connectivity_error_gfm", "evaluate_dim", "evaluate_gfm",
    "gfm_errors", "gradient_error_dim", "gradient_error_gfm", "mad_dim", "mse_dim", "sad_dim",
]
