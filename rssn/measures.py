"""Per-region image measures for the composition-discrepancy audit (`rssn audit`).

The paper (GFM, section 4) names four discrepancies between composites and real photos:
resolution, sharpness, noise and semantics. Each function here measures one of them, or one of
the colour statistics of Xue et al. 2012 that the paper cites, on the pixels of one region of
an image (a boolean mask). All functions are pure: an RGB image (uint8, or float on the 0-255
scale) and a mask in, one number out, inputs never modified. A region too small to measure
gives NaN. The per-image arrays they share (luma, filter responses, Lab, HSV) are computed once
per image by `ImageMaps`, so `measure_image` runs each filter once for both regions.

The audit compares the background region of an image with its foreground region: in a real
photo both come from one camera and one exposure, in a composite they do not.
"""
from __future__ import annotations

import functools
import math

import cv2
import numpy as np

FG_ALPHA = 0.99   # alpha >= this is foreground
BG_ALPHA = 0.01   # alpha <= this is background
ERODE_PX = 8      # both regions are eroded this far away from the matte's boundary
MIN_REGION_PX = 1024  # a region with fewer pixels is "too small to measure"

# Immerkaer's noise mask: the difference of two Laplacians; it cancels any locally quadratic
# signal, and for white noise of std s its response has std 6 s (sum of squares 36).
_NOISE_MASK = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
CONTRAST_WINDOW = 63      # px, the local-contrast window of `sharpness`
COLOUR_CONTRAST_WINDOW = 15  # px, the local-contrast window of Xue et al.'s statistic
RES_TILE = 64             # px, the default tile of the spectrum in `effective_resolution`
RES_MAX_TILES = 64
RES_DROP = 0.1            # the whitened spectrum's drop, from its reference band's median, that marks the limit
RES_PEAK_DROP = 0.04      # ... or its drop from its peak at or below the band (catches blurs that attenuate the band)


def regions(alpha: np.ndarray, erode: int = ERODE_PX) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, background) boolean masks from a matte in [0, 1]: alpha >= 0.99 and
    alpha <= 0.01, each eroded by ``erode`` px so no measure straddles the boundary."""
    fg: np.ndarray = (alpha >= FG_ALPHA).astype(np.uint8)
    bg: np.ndarray = (alpha <= BG_ALPHA).astype(np.uint8)
    if erode > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode + 1, 2 * erode + 1))
        fg = cv2.erode(fg, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        bg = cv2.erode(bg, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return fg.astype(bool), bg.astype(bool)


def _inner(mask: np.ndarray, radius: int) -> np.ndarray:
    """The pixels of ``mask`` whose (2 radius + 1)^2 window lies inside it (filters there see
    only region pixels)."""
    if radius <= 0:
        return mask
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def grey(image: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an RGB image as float32 (0-255)."""
    im = image.astype(np.float32, copy=False)
    return im[..., 0] * np.float32(0.299) + im[..., 1] * np.float32(0.587) + im[..., 2] * np.float32(0.114)


class ImageMaps:
    """The per-image arrays the measures share, each computed on first use."""

    def __init__(self, image: np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB image (H x W x 3), got shape {image.shape}")
        self.image = image
        self._cache: dict[str, np.ndarray] = {}

    def _get(self, name: str, make) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    @property
    def u8(self) -> np.ndarray:
        im = self.image
        return im if im.dtype == np.uint8 else self._get("u8", lambda: np.clip(np.rint(im), 0, 255).astype(np.uint8))

    @property
    def grey(self) -> np.ndarray:
        return self._get("grey", lambda: grey(self.image))

    @property
    def noise_response(self) -> np.ndarray:
        """|luma * Immerkaer mask|."""
        return self._get("noise", lambda: np.abs(cv2.filter2D(self.grey, cv2.CV_32F, _NOISE_MASK,
                                                              borderType=cv2.BORDER_REFLECT)))

    @property
    def gradient_energy(self) -> np.ndarray:
        """|grad (G_1px * luma)|^2."""
        def make():
            gs = cv2.GaussianBlur(self.grey, (0, 0), SHARP_SCALE, borderType=cv2.BORDER_REFLECT)
            gx = cv2.Sobel(gs, cv2.CV_32F, 1, 0, ksize=1)
            gy = cv2.Sobel(gs, cv2.CV_32F, 0, 1, ksize=1)
            return (gx * gx + gy * gy) * np.float32(0.25)
        return self._get("grad", make)

    @property
    def lightness(self) -> np.ndarray:
        """CIELAB L* (0-100) from OpenCV's 8-bit conversion."""
        return self._get("L", lambda: cv2.cvtColor(self.u8, cv2.COLOR_RGB2Lab)[..., 0].astype(np.float32)
                         * np.float32(100 / 255))

    @property
    def saturation(self) -> np.ndarray:
        """HSV saturation (max - min) / max in [0, 1]."""
        return self._get("S", lambda: cv2.cvtColor(self.u8, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32)
                         * np.float32(1 / 255))


# ------------------------------------------------------------------ tiles


def _tiles(mask: np.ndarray, size: int, limit: int | None = None, step: int | None = None) -> np.ndarray:
    """Top-left corners (N x 2: y, x) of the size x size tiles on a grid of pitch ``step``
    (default ``size``: non-overlapping) that lie wholly inside ``mask``; at most ``limit``,
    spread evenly in raster order (deterministic)."""
    h, w = mask.shape
    step = step or size
    if h < size or w < size:
        return np.zeros((0, 2), int)
    ii = cv2.integral(mask.astype(np.uint8))
    ys = np.arange(0, h - size + 1, step)
    xs = np.arange(0, w - size + 1, step)
    Y, X = np.meshgrid(ys, xs, indexing="ij")
    inside = (ii[Y + size, X + size] - ii[Y, X + size] - ii[Y + size, X] + ii[Y, X]) == size * size
    corners = np.stack([Y[inside], X[inside]], axis=1)
    if limit is not None and len(corners) > limit:
        corners = corners[np.linspace(0, len(corners) - 1, limit).round().astype(int)]
    return corners


def _tile_means(values: np.ndarray, corners: np.ndarray, size: int) -> np.ndarray:
    """The mean of ``values`` over each tile (one integral image, no loop)."""
    ii = cv2.integral(values.astype(np.float64, copy=False))
    y, x = corners[:, 0], corners[:, 1]
    return (ii[y + size, x + size] - ii[y, x + size] - ii[y + size, x] + ii[y, x]) / (size * size)


# ------------------------------------------------------------------ noise

NOISE_BLOCK = 16       # px
NOISE_QUANTILE = 10    # percent: the quietest blocks hold the least image structure
# The 10th percentile of the 16 x 16 block estimates of pure Gaussian noise is this fraction of
# its sigma (measured on 1080 x 1620 x 3 noise images; the spread of a block's estimate).
NOISE_QUANTILE_BIAS = 0.892
MIN_NOISE_BLOCKS = 8
# Independent noise of std s in each of R, G, B gives std LUMA_NOISE_GAIN * s in Rec. 601 luma.
LUMA_NOISE_GAIN = math.sqrt(0.299 ** 2 + 0.587 ** 2 + 0.114 ** 2)   # 0.6686
# A block whose luma estimate is below this (0-255 scale) is quieter than the rounding of R, G, B
# to 8 bits alone leaves in luma (0.19): an encoder flattened it (JPEG's zeroed coefficients).
FLAT_BLOCK_SIGMA = 0.1
CLIP_SIGMAS = 2.0      # blocks whose mean in any channel lies this many sigma from 0 or 255 clip


def luma_noise_sigma(image: np.ndarray | ImageMaps, mask: np.ndarray, min_blocks: int = MIN_NOISE_BLOCKS) -> float:
    """The standard deviation of white noise in the region's Rec. 601 luma, 0-255 scale (what
    `sharpness` and `effective_resolution` subtract); `noise_sigma` explains the estimator."""
    maps = _maps(image)
    corners = _tiles(_inner(mask, 1), NOISE_BLOCK)
    if len(corners) < max(1, min_blocks):
        return math.nan
    blocks = _tile_means(maps.noise_response, corners, NOISE_BLOCK) * (math.sqrt(math.pi / 2) / 6.0)
    first = float(np.percentile(blocks, NOISE_QUANTILE)) / NOISE_QUANTILE_BIAS
    margin = CLIP_SIGMAS * first / LUMA_NOISE_GAIN    # in each channel's units
    means = np.stack([_tile_means(maps.image[..., c], corners, NOISE_BLOCK) for c in range(3)], axis=1)
    keep = (blocks >= FLAT_BLOCK_SIGMA) & np.all((means > margin) & (means < 255 - margin), axis=1)
    use = blocks[keep] if keep.sum() >= MIN_NOISE_BLOCKS else blocks
    return float(np.percentile(use, NOISE_QUANTILE)) / NOISE_QUANTILE_BIAS


def channel_noise_sigma(image: np.ndarray, mask: np.ndarray, min_blocks: int = MIN_NOISE_BLOCKS) -> float:
    """Per-channel form of :func:`noise_sigma` (the same Immerkaer block estimator on R, G and B,
    averaged), for BM3D's noise level on lossless foregrounds (:mod:`rssn.denoise`). On textured
    content (fur, hair) it reads closer to the truth than the luma form, since texture is
    correlated across channels and luma's 0.669 noise gain makes it weigh 1.5x more there; the
    luma form is the robust one for JPEG, whose chroma smoothing erases channel noise.
    NaN when the region holds fewer than ``min_blocks`` blocks."""
    corners = _tiles(_inner(mask, 1), NOISE_BLOCK)
    if len(corners) < max(1, min_blocks):
        return math.nan
    sig = []
    for c in range(3):
        r = np.abs(cv2.filter2D(np.ascontiguousarray(image[..., c], dtype=np.float32), cv2.CV_32F, _NOISE_MASK,
                                borderType=cv2.BORDER_REFLECT))
        blocks = _tile_means(r, corners, NOISE_BLOCK) * math.sqrt(math.pi / 2) / 6.0
        sig.append(float(np.percentile(blocks, NOISE_QUANTILE)) / NOISE_QUANTILE_BIAS)
    return float(np.mean(sig))


def noise_blocks(mask: np.ndarray) -> int:
    """How many 16 x 16 blocks :func:`noise_sigma` measures in ``mask``."""
    return len(_tiles(_inner(mask, 1), NOISE_BLOCK))


def noise_sigma(image: np.ndarray | ImageMaps, mask: np.ndarray, min_blocks: int = MIN_NOISE_BLOCKS) -> float:
    """The standard deviation of additive Gaussian noise, 0-255 scale, in the region: the
    per-channel sigma of independent R, G, B noise that gives the noise measured in luma.

    Immerkaer 1996 ("Fast noise variance estimation", CVIU 64(2)): the luma is filtered with
    the mask [[1,-2,1],[-2,4,-2],[1,-2,1]], which cancels smooth image structure and keeps 6x
    the noise's std; sigma = sqrt(pi/2) mean|response| / 6. Edges and texture survive the mask
    and inflate that mean, so, as in block-based estimators (Shin et al. 2005; Tai & Yang 2008
    exclude edge pixels for the same reason), we estimate sigma in each 16 x 16 block and take
    the 10th percentile over the blocks, divided by that percentile's known bias for pure noise.
    Two kinds of block are left out: blocks JPEG flattened (estimate below 0.1, less than 8-bit
    rounding leaves) and blocks whose mean in a channel lies within 2 sigma of 0 or 255 (the
    noise clips there). Luma, not each channel, because JPEG keeps luma at full resolution but
    subsamples and smooths chroma, which erases most of the chroma noise; luma is divided by
    0.669, its gain for independent channel noise (RSSN's), so sigma 10 reads 10. Noise
    correlated across channels (a camera's, after demosaicking) reads up to 1.5x its
    per-channel std. Accuracy (tests/test_audit.py): flat content within 3 %; noise added to
    clean photos within 20 % for sigma 5-20 as PNG; as JPEG 1.03-1.16x at quality 95 (sigma 5,
    10; 0.63-0.77x before luma and the flattened blocks) and 0.94-1.05x at quality 90, sigma
    10; quality 90 removes most of sigma 5 (reads 0.37-0.47x: the noise is gone from the file,
    not missed). In texture at sigma 2 it reads about 2x.
    """
    s = luma_noise_sigma(image, mask)
    return s / LUMA_NOISE_GAIN if math.isfinite(s) else math.nan


# ------------------------------------------------------------------ sharpness

SHARP_SCALE = 1.0   # px, the Gaussian scale of the gradient


def _gradient_noise_gain() -> float:
    """E[gradient energy] / sigma^2 for white noise of std sigma in luma, from the filters'
    own impulse response (0.0503 for a 1 px Gaussian)."""
    d = np.zeros((41, 41), np.float32)
    d[20, 20] = 1
    gs = cv2.GaussianBlur(d, (0, 0), SHARP_SCALE, borderType=cv2.BORDER_REFLECT)
    gx = cv2.Sobel(gs, cv2.CV_32F, 1, 0, ksize=1).astype(np.float64)
    gy = cv2.Sobel(gs, cv2.CV_32F, 0, 1, ksize=1).astype(np.float64)
    return float((gx * gx).sum() + (gy * gy).sum()) * 0.25


GRADIENT_NOISE_GAIN = _gradient_noise_gain()
# At least this share of the gradient energy is kept as detail: after JPEG the noise estimate can
# exceed the noise left in the gradient (the encoder removed some, 1.03-1.16x at quality 95), and a
# blurred noisy background would otherwise read 0 and leave its gap undefined.
SHARP_MIN_SHARE = 0.01


def masked_local_std(g: np.ndarray, mask: np.ndarray, window: int, noise_var: float = 0.0) -> np.ndarray:
    """The standard deviation of ``g`` over the region's pixels in a window x window window
    around each pixel (normalised convolution: pixels outside the region do not count), less
    ``noise_var`` of white noise (variances subtract; never below 0)."""
    m = mask.astype(np.float32)
    w = cv2.blur(m, (window, window), borderType=cv2.BORDER_CONSTANT)
    w = np.maximum(w, 1e-6)
    gm = g * m
    mean = cv2.blur(gm, (window, window), borderType=cv2.BORDER_CONSTANT) / w
    mean2 = cv2.blur(gm * g, (window, window), borderType=cv2.BORDER_CONSTANT) / w
    return np.sqrt(np.maximum(mean2 - mean * mean - np.float32(noise_var), 0))


def sharpness(image: np.ndarray | ImageMaps, mask: np.ndarray, window: int = CONTRAST_WINDOW,
              noise: float | None = None) -> float:
    """Fine-scale gradient energy normalised by coarse-scale local contrast, in the region,
    with the region's white noise taken out of both.

    The RMS gradient of the luma smoothed by a Gaussian of 1 px (the energy at fine scales, as
    in gradient-energy focus measures, Pertuz et al. 2013 "Analysis of focus measure operators";
    the smoothing keeps 8-bit rounding from posing as detail) over the mean local standard
    deviation of the luma in a ``window`` = 63 px window of region pixels (the contrast at
    scales larger than the blurs the paper uses), plus 1 so flat regions stay finite. White
    noise of std s in luma adds 0.0503 s^2 to the mean gradient energy and s^2 to each local
    variance; both are subtracted, with s = `luma_noise_sigma` of the region (``noise``, when
    the caller has it), so noise added to a blurred background does not make it look sharp
    (at least 1 % of the energy is kept, so an overestimated noise cannot give 0).
    A box blur of kernel k attenuates the fine scales more than the coarse ones, so the value
    falls monotonically with k (tested for k = 1..60 on real photos, and for 20, 40, 60 with
    noise sigma 5 and 10 added).
    """
    inner = _inner(mask, 3)
    if inner.sum() < MIN_REGION_PX:
        return math.nan
    maps = _maps(image)
    s = luma_noise_sigma(maps, mask) if noise is None else noise
    s2 = s * s if math.isfinite(s) else 0.0
    total = float(np.mean(maps.gradient_energy[inner], dtype=np.float64))
    energy = total - GRADIENT_NOISE_GAIN * s2
    contrast = float(masked_local_std(maps.grey, mask, window, s2)[inner].mean(dtype=np.float64))
    return math.sqrt(max(energy, SHARP_MIN_SHARE * total)) / (contrast + 1.0)


# ------------------------------------------------------------------ resolution

RES_TILE_SIZES = (64, 32)   # px: the largest that fits both regions of an image is used for both
RES_MIN_TILES = 2
# a ring whose power, noise subtracted, is below this fraction of the noise's is within the noise
# estimate's error (its 10th percentile varies by ~3 %, its variance ~6 %) and counts as no detail
RES_NOISE_MARGIN = 0.15
RES_LEVELS = 3              # full size, then 1/2 and 1/4 where the region holds detail only below half Nyquist


def res_tile_size(*masks: np.ndarray) -> int | None:
    """The largest of `RES_TILE_SIZES` at which every mask holds at least two tiles (placed on a
    quarter-tile pitch); None when even the smallest does not fit."""
    for size in RES_TILE_SIZES:
        if all(len(_tiles(m, size, RES_MIN_TILES, size // 4)) >= RES_MIN_TILES for m in masks):
            return size
    return None


def res_lower_limit(size: int) -> float:
    """The lowest value `effective_resolution` can give with ``size`` px tiles: one ring above
    the lowest (a drop from the peak at ring 1 found at ring 2), at the coarsest level."""
    return 1 / (size // 2) / 2 ** (RES_LEVELS - 1)


def _hann_power(size: int) -> float:
    """The power white noise of unit variance has at each frequency of a Hann-windowed tile."""
    return float(np.sum(np.outer(np.hanning(size), np.hanning(size)) ** 2))


def radial_spectrum(image: np.ndarray | ImageMaps, mask: np.ndarray, size: int = RES_TILE,
                    limit: int = RES_MAX_TILES, noise: float = 0.0) -> np.ndarray | None:
    """Mean power spectrum of Hann-windowed luma tiles inside the region (tiles on a quarter-tile
    pitch, at most ``limit``), less the flat floor of white noise of std ``noise`` in luma,
    averaged over rings of integer radius 0..size/2 (cycles per tile); None when fewer than two
    tiles fit. ``image`` may be a 2-D luma array."""
    out = _ring_spectrum(image, mask, size, limit, noise)
    return None if out is None else out[0]


def _ring_spectrum(image, mask, size, limit, noise) -> tuple[np.ndarray, int] | None:
    corners = _tiles(mask, size, limit, max(1, size // 4))
    if len(corners) < RES_MIN_TILES:
        return None
    g = image if isinstance(image, np.ndarray) and image.ndim == 2 else _maps(image).grey
    win = np.outer(np.hanning(size), np.hanning(size)).astype(np.float32)
    stack = np.stack([g[y:y + size, x:x + size] for y, x in corners])
    stack = (stack - stack.mean(axis=(1, 2), keepdims=True)) * win
    power = (np.abs(np.fft.fft2(stack)) ** 2).mean(axis=0)
    power = np.maximum(power - noise * noise * _hann_power(size), 0.0)
    sums = np.bincount(_rings(size)[0], weights=power[_rings(size)[1]], minlength=size // 2 + 1)
    return sums / np.maximum(_rings(size)[2], 1), len(corners)


@functools.lru_cache(maxsize=8)
def _rings(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ring of each kept frequency, the kept mask, frequencies per ring) of a size x size FFT."""
    f = np.fft.fftfreq(size) * size
    r = np.rint(np.hypot(*np.meshgrid(f, f, indexing="ij"))).astype(int)
    keep = r <= size // 2
    return r[keep], keep, np.bincount(r[keep], minlength=size // 2 + 1)


def _first_drop(level: np.ndarray, start: int, threshold: float) -> float:
    """The first ring from ``start`` on whose ``level`` is below ``threshold``, interpolated in
    log level from the ring before, as a fraction of Nyquist; 1.0 when none is."""
    half = len(level) - 1
    for k in range(start, half + 1):
        if level[k] < threshold:
            a, b = math.log(max(level[k - 1], 1e-12)), math.log(max(level[k], 1e-12))
            t = (a - math.log(threshold)) / (a - b) if a != b else 1.0
            return float((k - 1 + min(max(t, 0.0), 1.0)) / half)
    return 1.0


def _cutoff(spec: np.ndarray, floor: float = 0.0, tiles: int = 1) -> float | None:
    """The whitened spectrum's first drop, as a fraction of Nyquist, below `RES_DROP` of its
    reference band's median (looked for above the band) or below `RES_PEAK_DROP` of its peak
    over rings 1 to the band's top (looked for above the peak), whichever comes first; 1.0 when
    it never drops; None when the reference is 0. The peak criterion is for blurs whose first
    zero lies in or under the band: the band is then attenuated too, and a box filter's side
    lobes beyond its zero stay above 10 % of it (a 60 px box read above a 40 px one), while
    the peak (the lowest rings, least attenuated) keeps the drop at the main lobe. A ring whose
    power (noise already subtracted) is within the noise estimate's error of 0 counts as
    dropped: below `RES_NOISE_MARGIN` of the noise ``floor`` plus 3 standard errors of the
    ring's mean noise power (each frequency's power of noise is exponential: std = mean;
    ``tiles`` tiles on a quarter pitch count as tiles / 4 independent ones, half the
    frequencies are mirror images)."""
    counts = _rings(2 * (len(spec) - 1))[2]
    margin = floor * (RES_NOISE_MARGIN + 3.0 / np.sqrt(np.maximum(counts * max(tiles / 4, 1) / 2, 1)))
    half = len(spec) - 1
    r = np.arange(half + 1, dtype=np.float64)
    white = spec * r * r
    lo, hi = max(1, half // 16), max(2, half // 8)
    ref = float(np.median(white[lo:hi + 1]))
    if ref <= 0:
        return None
    top = 1 + int(np.argmax(white[1:hi + 1]))
    kept = np.where(spec < margin, 0.0, white)
    return min(_first_drop(kept / ref, hi + 1, RES_DROP),
               _first_drop(kept / float(white[top]), top + 1, RES_PEAK_DROP))


def effective_resolution(image: np.ndarray | ImageMaps, mask: np.ndarray, size: int = RES_TILE,
                         noise: float | None = None) -> float:
    """The highest spatial frequency the region really holds, as a fraction of Nyquist (1.0:
    detail up to the pixel grid; 0.5: the region could be stored at half the size).

    Natural images have power falling about as 1/f^2 (Field 1987; van der Schaaf & van Hateren
    1996), so the ring-averaged spectrum times f^2 ("whitened") is roughly flat up to the
    frequency where optics, resampling or compression cut it. The flat power of the region's
    white noise (``noise``: its std in luma, by default `luma_noise_sigma`) is subtracted
    before whitening, so noise does not pose as detail. We take the whitened level over
    1/16-1/8 of Nyquist as the reference and report the first frequency above that band where
    it drops below 10 % of it, or, if sooner, the first frequency above the whitened peak at
    or below that band where it drops below 4 % of the peak (interpolated in log power between
    rings; `_cutoff`). The peak criterion matters only for blurs whose first zero lies in or
    under the band: the band is attenuated with the detail, and a box filter's side lobes
    stayed above 10 % of it, so a 60 px box read higher than a 40 px one (ferns: 0.059 against
    0.050); from the peak, box 20 > 40 > 60 on every shared scene and photo at noise sigma 0,
    5 and 10 (tests/test_audit.py). Where the value is below half Nyquist the region is
    measured again at half size (INTER_AREA, which also quarters the noise's variance), twice
    at most, so blurs of 20-60 px are told apart; the lowest value is `res_lower_limit` (0.0078
    with 64 px tiles). An image upscaled by a factor u has nothing above 1/u of Nyquist and
    scores near 1/u. ``size``: the tile, the same for both regions of an image
    (`res_tile_size`).
    """
    maps = _maps(image)
    s = luma_noise_sigma(maps, mask) if noise is None else noise
    s = s if math.isfinite(s) else 0.0
    g, m = maps.grey, mask
    best = math.nan
    for level in range(RES_LEVELS):
        got = _ring_spectrum(g, m, size, RES_MAX_TILES, s)
        if got is None:
            break
        c = _cutoff(got[0], s * s * _hann_power(size), got[1])
        if c is None:
            break
        best = c / 2 ** level
        if c >= 0.5 or level == RES_LEVELS - 1:
            break
        h, w = g.shape
        g = cv2.resize(g, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        m = cv2.resize(m.astype(np.float32), (w // 2, h // 2), interpolation=cv2.INTER_AREA) >= 1.0
        s = s / 2.0
    return best


# ------------------------------------------------------------------ colour and light (Xue et al. 2012)


# Linear-light value of each 8-bit sRGB code (IEC 61966-2-1).
_C = np.arange(256) / 255.0
_SRGB_TO_LINEAR = np.where(_C <= 0.04045, _C / 12.92, ((_C + 0.055) / 1.055) ** 2.4)
_RGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])


def _planck_uv(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CIE 1960 (u, v) of a black body at ``t`` kelvin: Krystek's rational fit (1985, Color Res.
    Appl. 10(1)), within 1e-4 of Planck's law and the 2-degree observer for 1000-15000 K and
    within 0.004 as t goes to infinity (u, v -> 0.1817, 0.2604 against 0.1800, 0.2635)."""
    u = (0.860117757 + 1.54118254e-4 * t + 1.28641212e-7 * t * t) / (1 + 8.42420235e-4 * t + 7.08145163e-7 * t * t)
    v = (0.317398726 + 4.22806245e-5 * t + 4.20481691e-8 * t * t) / (1 - 2.89741816e-5 * t + 1.61456053e-7 * t * t)
    return u, v


_LOCUS_MIRED = np.arange(0.5, 1000.0001, 0.5)            # 2,000,000 K down to 1000 K
_LOCUS_U, _LOCUS_V = _planck_uv(1e6 / _LOCUS_MIRED)
MAX_DUV = 0.05   # farther from the locus than this, a colour has no meaningful colour temperature


def planckian_mired(u: float, v: float) -> tuple[float, float]:
    """(mired, Duv) of the point of the Planckian locus nearest CIE 1960 (u, v), as in Ohno's
    (2014, LEUKOS 10(1)) search: the nearest of the tabulated points 0.5 mired apart, refined
    by a parabola through it and its neighbours. Duv is the signed distance (positive above
    the locus, towards green)."""
    d2 = (_LOCUS_U - u) ** 2 + (_LOCUS_V - v) ** 2
    i = int(np.argmin(d2))
    m = float(_LOCUS_MIRED[i])
    if 0 < i < len(d2) - 1:
        a, b, c = d2[i - 1], d2[i], d2[i + 1]
        den = a - 2 * b + c
        if den > 0:
            m += 0.5 * (a - c) / den * float(_LOCUS_MIRED[1] - _LOCUS_MIRED[0])
    lu, lv = _planck_uv(np.array(1e6 / m))
    duv = math.hypot(u - float(lu), v - float(lv))
    return m, math.copysign(duv, v - float(lv))


def colour_temperature_mired(image: np.ndarray | ImageMaps, mask: np.ndarray) -> float:
    """The correlated colour temperature of the region's mean colour, in mired (10^6 / K;
    higher is warmer, and equal steps in mired are about equally visible); NaN when the colour
    lies farther than Duv 0.05 from the Planckian locus (a saturated backdrop has no colour
    temperature) or beyond 1000 K.

    Mean linear sRGB -> CIE XYZ (D65) -> CIE 1960 uv -> the nearest point of the Planckian
    locus (`planckian_mired`), the CIE definition of CCT, which holds from 1000 K to infinite
    temperature (0 mired); McCamy's cubic, used before, fits only near the locus between about
    2000 and 12500 K and put deep blues at 1000 mired. Xue et al. 2012 found colour temperature
    one of the statistics that most decide whether a composite looks real.
    """
    if mask.sum() < MIN_REGION_PX:
        return math.nan
    u8 = _maps(image).u8
    rgb = np.array([np.bincount(u8[..., c][mask], minlength=256) @ _SRGB_TO_LINEAR for c in range(3)]) / mask.sum()
    X, Y, Z = _RGB_TO_XYZ @ rgb
    den = X + 15 * Y + 3 * Z
    if den <= 1e-9:
        return math.nan
    mired, duv = planckian_mired(4 * X / den, 6 * Y / den)
    if abs(duv) > MAX_DUV or mired >= float(_LOCUS_MIRED[-1]):
        return math.nan
    return float(mired)


def colour_stats(image: np.ndarray | ImageMaps, mask: np.ndarray) -> dict[str, float]:
    """Xue et al. 2012 ("Understanding and improving the realism of image composites", SIGGRAPH)
    statistics of a region: ``lum`` mean CIELAB lightness L* (0-100), ``sat`` mean HSV
    saturation (max - min) / max (0-1), ``temp`` colour temperature in mired, ``contrast``
    mean local standard deviation of L* over the region's pixels in a 15 x 15 window."""
    if mask.sum() < MIN_REGION_PX:
        return {"lum": math.nan, "sat": math.nan, "temp": math.nan, "contrast": math.nan}
    maps = _maps(image)
    L = maps.lightness
    return {"lum": float(L[mask].mean(dtype=np.float64)), "sat": float(maps.saturation[mask].mean(dtype=np.float64)),
            "temp": colour_temperature_mired(maps, mask),
            "contrast": float(masked_local_std(L, mask, COLOUR_CONTRAST_WINDOW)[mask].mean(dtype=np.float64))}


def _maps(image: np.ndarray | ImageMaps) -> ImageMaps:
    return image if isinstance(image, ImageMaps) else ImageMaps(image)


# ------------------------------------------------------------------ one image


MEASURES = ("noise_fg", "noise_bg", "noise_gap", "sharp_fg", "sharp_bg", "sharp_gap", "res_fg", "res_bg", "res_gap",
            "lum_gap", "sat_gap", "temp_gap", "contrast_gap")
GAPS = ("noise_gap", "sharp_gap", "res_gap", "lum_gap", "sat_gap", "temp_gap", "contrast_gap")
# noise_gap is log2((bg + 0.5) / (fg + 0.5)): half a code value, above 8-bit rounding's own noise
# (0.29), keeps a region that an encoder flattened to ~0 from giving a gap of -6 or less.
NOISE_GAP_FLOOR = 0.5


def _log2_ratio(b: float, f: float, floor: float = 0.0) -> float:
    if not (b + floor > 0 and f + floor > 0):
        return math.nan
    return math.log2((b + floor) / (f + floor))


def measure_image(image: np.ndarray, alpha: np.ndarray, erode: int = ERODE_PX) -> dict[str, float | int]:
    """Every measure of one image (RGB uint8) and its matte (float in [0, 1]).

    Region measures end in ``_fg`` / ``_bg``; ``*_gap`` compares the background with the
    foreground: log2(bg / fg) for sharpness, resolution and contrast (0: alike; +1: the
    background has twice the value), log2((bg + 0.5) / (fg + 0.5)) for noise, bg - fg for
    lightness (L* units), saturation and colour temperature (mired). Also ``fg_px`` and
    ``bg_px``, the eroded regions' sizes, and ``res_tile``, the tile both regions' resolution
    was measured with (0: none fits).
    """
    if image.shape[:2] != alpha.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and matte {alpha.shape[:2]} differ in size")
    fg, bg = regions(alpha, erode)
    maps = ImageMaps(image)
    tile = res_tile_size(fg, bg) or RES_TILE_SIZES[-1]
    out: dict[str, float | int] = {"fg_px": int(fg.sum()), "bg_px": int(bg.sum())}
    for name, m in (("fg", fg), ("bg", bg)):
        s = luma_noise_sigma(maps, m)
        out[f"noise_{name}"] = s / LUMA_NOISE_GAIN if math.isfinite(s) else math.nan
        out[f"sharp_{name}"] = sharpness(maps, m, noise=s)
        out[f"res_{name}"] = effective_resolution(maps, m, tile, noise=s)
    out["res_tile"] = tile if res_tile_size(fg, bg) else 0
    out["noise_gap"] = _log2_ratio(out["noise_bg"], out["noise_fg"], NOISE_GAP_FLOOR)
    out["sharp_gap"] = _log2_ratio(out["sharp_bg"], out["sharp_fg"])
    out["res_gap"] = _log2_ratio(out["res_bg"], out["res_fg"])
    cf, cb = colour_stats(maps, fg), colour_stats(maps, bg)
    out["lum_gap"] = cb["lum"] - cf["lum"]
    out["sat_gap"] = cb["sat"] - cf["sat"]
    out["temp_gap"] = cb["temp"] - cf["temp"]
    out["contrast_gap"] = _log2_ratio(cb["contrast"], cf["contrast"])
    return out
