"""Foreground colour estimation from a photo and its matte (step 1 of the RSSN route)."""
from __future__ import annotations

import numpy as np

from .checks import matte_unit, photo8, same_size

FG_METHODS = ("cf", "cf-full", "ml", "none")
ALGORITHM_VERSION = {"cf": "band-3", "cf-full": "pymatting-1", "ml": "pymatting-1", "none": "1"}


def estimate_foreground(image: np.ndarray, alpha: np.ndarray, method: str = "cf") -> np.ndarray:
    """Foreground colours F (float64 HxWx3 in [0, 1]) such that image ~ a F + (1 - a) B.

    ``cf``: closed-form estimation (Levin et al.), the system of
    ``pymatting.estimate_foreground_cf`` solved on the transition band only (5-10x faster,
    see :mod:`rssn.closed_form_band`); ``cf-full``: pymatting's solve over every pixel;
    ``ml``: pymatting's multi-level estimator (much faster, slightly less exact);
    ``none``: the photo's own colours (naive cut-and-paste).

    ``image``: HxWx3 uint8 RGB, anything else refused (a float photo's scale and rounding are
    the caller's choice). ``alpha``: HxW float in [0, 1], or uint8 / uint16 converted exactly
    (x / 255, x / 65535); a float alpha on 0-255 or an integer 0/1 mask is refused.
    """
    a = _check("estimate_foreground", image, alpha)
    if method not in FG_METHODS:
        raise ValueError(f"estimate_foreground: method is {method!r}; pass one of {', '.join(FG_METHODS)}")
    img = image.astype(np.float64) / 255.0
    if method == "none":
        return img
    if method == "cf":
        from .closed_form_band import estimate_foreground_cf_band

        return estimate_foreground_cf_band(img, a)
    if method == "cf-full":
        from pymatting import estimate_foreground_cf

        return np.clip(estimate_foreground_cf(img, a), 0.0, 1.0)
    if method == "ml":
        from pymatting import estimate_foreground_ml

        return np.clip(estimate_foreground_ml(img, a), 0.0, 1.0)
    raise ValueError(f"unknown foreground method {method!r}; choose from {FG_METHODS}")


def estimate_foreground_background(image: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form estimate of both F and B (float64 in [0, 1]); used to check the estimate.
    Inputs as :func:`estimate_foreground` (checked and converted the same way)."""
    a = _check("estimate_foreground_background", image, alpha)
    from pymatting import estimate_foreground_cf

    f, b = estimate_foreground_cf(image.astype(np.float64) / 255.0, a, return_background=True)
    return f, b


def _check(func: str, image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Refuse a wrong photo or matte; the matte as float64 in [0, 1]."""
    photo8(image, func, "image")
    a = matte_unit(alpha, func, "alpha", np.float64, given=True)
    same_size(func, image=image, alpha=a)
    return a
