"""BM3D denoising (step 3 of the RSSN route) and the noise-level estimate it needs."""
from __future__ import annotations

import numpy as np

PROFILES = ("np", "lc", "refilter", "vn", "high", "deb")
MIN_SIGMA = 0.5  # grey levels; BM3D needs a positive noise level


def estimate_noise_sigma(img: np.ndarray) -> float:
    """Noise standard deviation on the 0-255 scale, from the median absolute diagonal
    Haar wavelet coefficient (Donoho's robust estimator), averaged over channels."""
    x = img.astype(np.float64)
    if x.ndim == 2:
        x = x[..., None]
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    if h < 2 or w < 2:
        return MIN_SIGMA
    x = x[:h, :w]
    hh = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2.0
    sigmas = np.median(np.abs(hh), axis=(0, 1)) / 0.6745
    return float(max(MIN_SIGMA, float(np.mean(sigmas))))


def _profile(name: str):
    import bm3d

    if name == "lc":
        return bm3d.BM3DProfileLC()
    if name not in PROFILES:
        raise ValueError(f"unknown BM3D profile {name!r}; choose from {PROFILES}")
    return name


def bm3d_denoise(img: np.ndarray, sigma: float, profile: str = "np") -> np.ndarray:
    """BM3D on a uint8 RGB image with noise level ``sigma`` (0-255 scale); returns uint8."""
    import bm3d

    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3, got {img.dtype} {img.shape}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    z = img.astype(np.float64) / 255.0
    out = bm3d.bm3d_rgb(z, sigma / 255.0, profile=_profile(profile))
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
