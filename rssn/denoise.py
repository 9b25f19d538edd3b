"""BM3D denoising (step 2 of the RSSN route) and the noise-level estimates it needs."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .measures import channel_noise_sigma, noise_blocks

# classic: BM3D for white Gaussian noise as published (Dabov et al. 2007), i.e. the bm3d
# package's default profile in its conventional mode (no exact variances for correlated
# noise, which a scalar sigma does not need). 4.5x faster than "np" with the same PSNR
# on noisy photos (benchmarks/denoise.py). The others are the bm3d package's profiles.
PROFILES = ("classic", "np", "lc", "refilter", "vn", "high", "deb")
DEFAULT_PROFILE = "classic"
# bumped when the bytes a profile gives change: part of every cache key
VERSION = "single-thread-1"
MIN_SIGMA = 0.5  # grey levels; BM3D needs a positive noise level

# A foreground's noise level is measured where its own pixels are (foreground_noise_sigma).
FG_ALPHA = 0.99          # where alpha >= this, F is the source's own pixels
FG_ERODE_PX = 3          # ...eroded this far from the matte's boundary
MIN_SIGMA_BLOCKS = 32    # 16 x 16 blocks (8,192 px) a region needs to give an estimate
# bumped when the rule that picks a foreground's noise level changes: part of the foreground's
# BM3D cache key, so no entry made under an older rule is served
FG_SIGMA_VERSION = "fg-region-1"
TOO_FEW = "whole image (too few foreground pixels)"


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


def clipped_patches(img: np.ndarray) -> np.ndarray:
    """Pixels of clipped patches: in some channel, 3 x 3 px all at 0 or all at 255 (noise that
    hits 0 or 255 now and then does not make one)."""
    k = np.ones((3, 3), np.uint8)
    # the centres of such windows (3 x 3 minimum 255 or maximum 0), then the windows around them
    # a window that leaves the image is no patch (one border value per channel)
    low = cv2.erode(img, k, borderType=cv2.BORDER_CONSTANT, borderValue=(0,) * 4)
    high = cv2.dilate(img, k, borderType=cv2.BORDER_CONSTANT, borderValue=(255,) * 4)
    centres = (low == 255) | (high == 0)
    if centres.ndim == 3:
        centres = centres.any(axis=2)
    return cv2.dilate(centres.view(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)


@dataclass(frozen=True)
class SigmaEstimate:
    """A BM3D noise level and where it was measured (both recorded in the manifest)."""

    sigma: float
    source: str      # --denoise-sigma | alpha>=0.99 | alpha>0 | whole image (too few foreground pixels)
    blocks: int = 0  # 16 x 16 blocks measured (0: none)

    def record(self) -> dict[str, object]:
        return {"sigma": self.sigma, "sigma_from": self.source, "sigma_blocks": self.blocks}


def foreground_noise_sigma(source: np.ndarray, alpha: np.ndarray, override: float | None = None) -> SigmaEstimate:
    """The noise level of a foreground for BM3D, measured where the foreground's pixels are.

    ``source`` is the uint8 RGB image the foreground's pixels come from: the photo, a given
    foreground (Composition-1k ``fg/``) or an RGBA cut-out's colours; ``alpha`` its matte in
    [0, 1]. Not the estimated foreground layer: where alpha is 0 that holds the estimator's
    smooth fill, which drags a whole-image estimate toward zero (issue #27). The first region
    with ``MIN_SIGMA_BLOCKS`` blocks is used: alpha >= 0.99 eroded 3 px (F is the source's own
    pixels there), then alpha > 0 (transparent objects). The estimator is
    :func:`rssn.measures.channel_noise_sigma` (Immerkaer's mask per channel, quietest 10 % of 16 px blocks), which
    fur and hair inflate far less than the median wavelet estimator; as it takes the quietest
    blocks, clipped patches (3 x 3 px at 0 or 255 in a channel: blown highlights, crushed
    shadows, which carry no noise) are left out. With no such region: the wavelet estimate of
    the whole ``source`` (for a photo its camera's noise; for a given foreground possibly far
    too low), recorded as such. ``override`` (``--denoise-sigma``) wins over every estimate.
    """
    if override is not None:
        return SigmaEstimate(round(float(override), 4), "--denoise-sigma")
    if source.ndim != 3 or source.shape[2] != 3 or alpha.shape != source.shape[:2]:
        raise ValueError(f"expected HxWx3 and a matching matte, got {source.shape} and {alpha.shape}")
    some = alpha > 0
    ys, xs = np.nonzero(some.any(axis=1))[0], np.nonzero(some.any(axis=0))[0]
    if len(ys):  # only the object's bounding box (and a 1 px margin) is looked at
        box = (slice(max(0, ys[0] - 1), ys[-1] + 2), slice(max(0, xs[0] - 1), xs[-1] + 2))
        src, a = source[box], alpha[box]
        unclipped = ~clipped_patches(src)
        core: np.ndarray = (a >= FG_ALPHA).view(np.uint8)
        if FG_ERODE_PX > 0:
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * FG_ERODE_PX + 1,) * 2)
            core = cv2.erode(core, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        for name, region in (("alpha>=0.99", core.view(bool)), ("alpha>0", some[box])):
            region = region & unclipped
            n = noise_blocks(region)
            if n >= MIN_SIGMA_BLOCKS:
                sigma = channel_noise_sigma(src, region, MIN_SIGMA_BLOCKS)
                return SigmaEstimate(round(max(MIN_SIGMA, sigma), 4), name, n)
    return SigmaEstimate(round(estimate_noise_sigma(source), 4), TOO_FEW)


def bm3d_profile(name: str):
    """The bm3d profile object for ``name``, single-threaded.

    bm3d's multi-threaded aggregation adds in a varying order, so its result depends on the
    thread count (differences up to about 5e-5 on the 0-1 scale, which can flip a rounding to
    8 bits). One thread gives the same bytes on every machine; the executors run several images
    at once instead.
    """
    import bm3d

    classes = {"classic": bm3d.BM3DProfile, "np": bm3d.BM3DProfile, "lc": bm3d.BM3DProfileLC,
               "refilter": bm3d.BM3DProfileRefilter, "vn": bm3d.BM3DProfileVN, "high": bm3d.BM3DProfileHigh,
               "deb": bm3d.BM3DProfileDeb}
    if name not in classes:
        raise ValueError(f"unknown BM3D profile {name!r}; choose from {PROFILES}")
    profile = classes[name]()
    if name == "classic":
        profile.nf = 0  # conventional (white-noise) mode
    profile.num_threads = 1
    return profile


def bm3d_denoise(img: np.ndarray, sigma: float, profile: str = DEFAULT_PROFILE) -> np.ndarray:
    """BM3D on a uint8 RGB image with noise level ``sigma`` (0-255 scale); returns uint8."""
    import bm3d

    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3, got {img.dtype} {img.shape}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    z = img.astype(np.float64) / 255.0
    out = bm3d.bm3d_rgb(z, sigma / 255.0, profile=bm3d_profile(profile))
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
