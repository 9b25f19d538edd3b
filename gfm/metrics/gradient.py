"""Gradient error: the MATLAB Gaussian-derivative version and the GFM (scipy) version."""
from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from ._checks import dim_inputs, gfm_pair


@lru_cache(maxsize=8)
def dim_gradient_kernels(sigma: float = 1.4) -> tuple[np.ndarray, np.ndarray]:
    """The 9x9 (for sigma 1.4) x and y kernels of the DIM code's ``gaussgradient``."""
    half = math.ceil(sigma * math.sqrt(-2.0 * math.log(math.sqrt(2.0 * math.pi) * sigma * 0.01)))
    t = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(t**2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    dg = -t * g / sigma**2
    hx = np.outer(g, dg)  # rows: G(y), columns: dG(x)
    hx /= math.sqrt(float((hx * hx).sum()))
    return hx, hx.T.copy()


def _mat2gray(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        return np.zeros_like(x, dtype=np.float64)
    return (x.astype(np.float64) - lo) / (hi - lo)


@lru_cache(maxsize=8)
def _separable_factors(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """hx = outer(a, b) exactly up to rounding: a = G (rows), b = dG / norm (columns), both
    flipped because MATLAB's imfilter(..., 'conv') convolves while OpenCV correlates."""
    hx, _ = dim_gradient_kernels(sigma)
    half = hx.shape[0] // 2
    t = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(t**2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    b = hx[half] / g[half]  # the middle row divided by G(0) is the normalised dG
    return g[::-1].copy(), b[::-1].copy()


def _dim_magnitude(x: np.ndarray, sigma: float) -> np.ndarray:
    a, b = _separable_factors(sigma)
    img = _mat2gray(x)
    gx = cv2.sepFilter2D(img, cv2.CV_64F, b, a, borderType=cv2.BORDER_REPLICATE)  # columns dG, rows G
    gy = cv2.sepFilter2D(img, cv2.CV_64F, a, b, borderType=cv2.BORDER_REPLICATE)
    return np.sqrt(gx * gx + gy * gy).astype(np.float32)


def gradient_error_dim(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray, sigma: float = 1.4) -> float:
    """Sum over the unknown region of (|grad p| - |grad g|)^2 / 1000, as the DIM MATLAB code.

    Refuses anything but HxW uint8 mattes and a boolean ``unknown`` mask."""
    dim_inputs("gradient_error_dim", pred, gt, unknown)
    return _gradient_error_dim(pred, gt, unknown, sigma)


def _gradient_error_dim(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray, sigma: float = 1.4) -> float:
    d = _dim_magnitude(pred, sigma) - _dim_magnitude(gt, sigma)
    return float(np.sum((d * d)[unknown], dtype=np.float64) / 1000.0)


@lru_cache(maxsize=8)
def _scipy_gaussian_weights(sigma: float, order: int, truncate: float = 4.0) -> np.ndarray:
    """The correlation weights scipy.ndimage.gaussian_filter1d uses (read off an impulse)."""
    from scipy.ndimage import gaussian_filter1d

    radius = int(truncate * float(sigma) + 0.5)
    impulse = np.zeros(2 * radius + 1)
    impulse[radius] = 1.0
    # correlating an impulse with w gives w reversed
    return gaussian_filter1d(impulse, sigma, order=order, mode="constant", truncate=truncate)[::-1].copy()


def _scipy_pass(x: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """One scipy correlate1d pass ('reflect' borders), computed in double, stored as float32."""
    k = weights.reshape(-1, 1) if axis == 0 else weights.reshape(1, -1)
    out = cv2.filter2D(x.astype(np.float64, copy=False), cv2.CV_64F, k, borderType=cv2.BORDER_REFLECT)
    return out.astype(np.float32)


def _gfm_magnitude(x: np.ndarray, sigma: float) -> np.ndarray:
    """As scipy's gaussian_filter(x, sigma, order=[1, 0] / [0, 1], output=float32): axis 0
    first, the intermediate rounded to float32 like scipy's output array."""
    d, s = _scipy_gaussian_weights(sigma, 1), _scipy_gaussian_weights(sigma, 0)
    gx = _scipy_pass(_scipy_pass(x, d, 0), s, 1)
    gy = _scipy_pass(_scipy_pass(x, s, 0), d, 1)
    return np.sqrt(gx**2 + gy**2)


def gradient_error_gfm(pred: np.ndarray, gt: np.ndarray, sigma: float = 1.4) -> float:
    """Whole-image sum of (|grad p| - |grad g|)^2 / 10, as the GFM evaluator.

    Mattes: HxW uint8 / uint16, converted exactly (x / 255, x / 65535), or float in [0, 1];
    a float matte on the 0-255 scale is refused."""
    p, g = gfm_pair("gradient_error_gfm", pred, gt)
    return _gradient_error_gfm(p, g, sigma)


def _gradient_error_gfm(pred: np.ndarray, gt: np.ndarray, sigma: float = 1.4) -> float:
    err = np.square(_gfm_magnitude(pred, sigma) - _gfm_magnitude(gt, sigma))
    return float(np.sum(err) / 10)
