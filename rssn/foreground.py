"""Foreground colour estimation from a photo and its matte (step 1 of the RSSN route)."""
from __future__ import annotations

import numpy as np

FG_METHODS = ("cf", "cf-full", "ml", "none")
ALGORITHM_VERSION = {"cf": "band-3", "cf-full": "pymatting-1", "ml": "pymatting-1", "none": "1"}


def estimate_foreground(image: np.ndarray, alpha: np.ndarray, method: str = "cf") -> np.ndarray:
    """Foreground colours F (float64 HxWx3 in [0, 1]) such that image ~ a F + (1 - a) B.

    ``cf``: closed-form estimation (Levin et al.), the system of
    ``pymatting.estimate_foreground_cf`` solved on the transition band only (5-10x faster,
    see :mod:`rssn.closed_form_band`); ``cf-full``: pymatting's solve over every pixel;
    ``ml``: pymatting's multi-level estimator (much faster, slightly less exact);
    ``none``: the photo's own colours (naive cut-and-paste).
    """
    _check(image, alpha)
    img = image.astype(np.float64) / 255.0
    if method == "none":
        return img
    a = alpha.astype(np.float64)
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
    """Closed-form estimate of both F and B (float64 in [0, 1]); used to check the estimate."""
    _check(image, alpha)
    from pymatting import estimate_foreground_cf

    f, b = estimate_foreground_cf(image.astype(np.float64) / 255.0, alpha.astype(np.float64), return_background=True)
    return f, b


def _check(image: np.ndarray, alpha: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 HxWx3, got {image.dtype} {image.shape}")
    if alpha.shape != image.shape[:2]:
        raise ValueError(f"matte is {alpha.shape[1]}x{alpha.shape[0]}, image is {image.shape[1]}x{image.shape[0]}")
