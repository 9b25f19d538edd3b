"""The RSSN route's image operations as pure array functions, and the one function that draws
their random parameters.

Every function here returns a new array and never mutates its inputs; randomness comes only
from the generator passed to :func:`draw_params` or :func:`add_gaussian_noise`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .checks import MATTE_MAX, check_array, describe, image255, matte_unit, same_size

PAPER_BLUR_KERNELS = (20, 30, 40, 50, 60)


@dataclass(frozen=True)
class RouteProbabilities:
    """Probabilities and parameter sets of the random operations."""

    denoise_p: float = 0.5
    blur_p: float = 0.5
    blur_kernels: tuple[int, ...] = PAPER_BLUR_KERNELS
    noise_p: float = 0.5


@dataclass(frozen=True)
class CompositeParams:
    """Everything random about one composite."""

    crop_fx: float  # horizontal crop position as a fraction of the free range
    crop_fy: float
    denoise_fg: bool
    denoise_bg: bool
    blur_kernel: int | None
    noise_seed: int | None


def draw_params(rng: np.random.Generator, probs: RouteProbabilities) -> CompositeParams:
    """Draw one composite's parameters; always the same number of draws, whatever the outcome."""
    u = rng.random(6)
    kernel = int(probs.blur_kernels[int(rng.integers(len(probs.blur_kernels)))])
    noise_seed = int(rng.integers(0, 2**63 - 1))
    return CompositeParams(
        crop_fx=float(u[0]),
        crop_fy=float(u[1]),
        denoise_fg=bool(u[2] < probs.denoise_p),
        denoise_bg=bool(u[3] < probs.denoise_p),
        blur_kernel=kernel if u[4] < probs.blur_p else None,
        noise_seed=noise_seed if u[5] < probs.noise_p else None,
    )


def cover_size(src_w: int, src_h: int, out_w: int, out_h: int) -> tuple[int, int]:
    """Size of ``src`` scaled (aspect kept) so that it just covers ``out_w`` x ``out_h``."""
    s = max(out_w / src_w, out_h / src_h)
    return max(out_w, int(math.ceil(src_w * s - 1e-9))), max(out_h, int(math.ceil(src_h * s - 1e-9)))


def fit_background(
    bg: np.ndarray, out_h: int, out_w: int, fx: float, fy: float
) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int]]:
    """Scale ``bg`` to cover out_w x out_h without distortion, then crop at (fx, fy) in [0, 1).

    Returns the crop, the crop box (x, y, w, h) in the scaled image and the scaled size (w, h).
    """
    view, box, scaled = fit_background_view(bg, out_h, out_w, fx, fy)
    return np.ascontiguousarray(view), box, scaled


def fit_background_view(
    bg: np.ndarray, out_h: int, out_w: int, fx: float, fy: float
) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int]]:
    """:func:`fit_background` without copying the crop: a view into the scaled image, for
    callers that read only a window of it (the on-the-fly training composite)."""
    h, w = bg.shape[:2]
    sw, sh = cover_size(w, h, out_w, out_h)
    if (sw, sh) != (w, h):
        interp = cv2.INTER_AREA if sw < w else cv2.INTER_CUBIC
        scaled = cv2.resize(bg, (sw, sh), interpolation=interp)
    else:
        scaled = bg
    x = min(int(fx * (sw - out_w + 1)), sw - out_w)
    y = min(int(fy * (sh - out_h + 1)), sh - out_h)
    return scaled[y : y + out_h, x : x + out_w], (x, y, out_w, out_h), (sw, sh)


BLUR_DTYPES = (np.uint8, np.uint16, np.float32, np.float64)


def box_blur(img: np.ndarray, kernel: int) -> np.ndarray:
    """Averaging filter of ``kernel`` x ``kernel`` (OpenCV box blur, reflected borders).

    ``img``: HxW or HxWxC, uint8, uint16, float32 or float64, on any scale (an average commutes
    with scaling, so [0, 1] and 0-255 images both blur right: no scale check); the result has
    the input's dtype. ``kernel``: an integer >= 1. Anything else is refused."""
    want = "an HxW or HxWxC image of uint8, uint16, float32 or float64"
    img = check_array(img, "box_blur", "img", want)
    if img.ndim not in (2, 3) or img.dtype not in BLUR_DTYPES:
        raise ValueError(f"box_blur: img is {describe(img)}; pass {want}")
    if isinstance(kernel, (bool, np.bool_)) or not isinstance(kernel, (int, np.integer)) or kernel < 1:
        raise ValueError(f"box_blur: kernel is {kernel!r}; pass an integer >= 1 (the side in pixels)")
    return cv2.blur(img, (int(kernel), int(kernel)))


Box = tuple[int, int, int, int]  # (y, x, h, w) of a window, in pixels of the whole image


def window(img: np.ndarray, box: Box) -> np.ndarray:
    """The ``box`` = (y, x, h, w) window of ``img`` (a view)."""
    y, x, h, w = box
    return img[y : y + h, x : x + w]


def _check_box(func: str, shape: tuple[int, ...], box: Box) -> Box:
    if len(box) != 4 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in box):
        raise ValueError(f"{func}: box is {box!r}; pass (y, x, h, w) as four integers")
    y, x, h, w = (int(v) for v in box)
    if y < 0 or x < 0 or h < 1 or w < 1 or y + h > shape[0] or x + w > shape[1]:
        raise ValueError(f"{func}: box (y={y}, x={x}, h={h}, w={w}) is not inside the {shape[1]}x{shape[0]} "
                         "image; pass a window of at least one pixel inside it")
    return y, x, h, w


def blur_reach(kernel: int) -> int:
    """Pixels beyond a window that a ``kernel`` box blur may read: ``kernel // 2`` is the
    farthest (an even kernel's anchor is off centre, so one side reads one pixel less), plus
    one pixel of slack."""
    return int(kernel) // 2 + 1


def box_blur_window(img: np.ndarray, kernel: int, box: Box) -> np.ndarray:
    """``box_blur(img, kernel)`` inside ``box`` = (y, x, h, w), reading only the window plus
    :func:`blur_reach` pixels around it (clipped at the image: where the margin reaches an image
    edge, the region's own reflected border is the image's, so the result is the same).

    ``img``: the whole image (a view is enough: only the region is read and copied), HxW or
    HxWxC uint8 (the route's backgrounds). For uint8, OpenCV rounds a sum the same way wherever
    the pixel falls in the row (checked with its SIMD, IPP and plain code: the tests run all
    three); for uint16 it does not (a pixel at another place in the row was off by one) and
    float sums depend on where the running sum starts, so other types are refused: use
    :func:`box_blur` on the whole image. Returns a new h x w array."""
    want = "an HxW or HxWxC uint8 image"
    img = check_array(img, "box_blur_window", "img", want)
    if img.ndim not in (2, 3) or img.dtype != np.uint8:
        raise ValueError(f"box_blur_window: img is {describe(img)}; pass {want} (only uint8 blurs a window exactly "
                         "equal to the whole image's; for other types use box_blur on the whole image)")
    if isinstance(kernel, (bool, np.bool_)) or not isinstance(kernel, (int, np.integer)) or kernel < 1:
        raise ValueError(f"box_blur_window: kernel is {kernel!r}; pass an integer >= 1 (the side in pixels)")
    y, x, h, w = _check_box("box_blur_window", img.shape, box)
    m = blur_reach(kernel)
    y0, x0 = max(0, y - m), max(0, x - m)
    y1, x1 = min(img.shape[0], y + h + m), min(img.shape[1], x + w + m)
    region = np.ascontiguousarray(img[y0:y1, x0:x1])
    out = cv2.blur(region, (int(kernel), int(kernel)))
    return np.ascontiguousarray(out[y - y0 : y - y0 + h, x - x0 : x - x0 + w])


def blend_window(alpha: np.ndarray, fg: np.ndarray, bg_window: np.ndarray, box: Box) -> np.ndarray:
    """``blend(alpha, fg, bg)`` inside ``box`` = (y, x, h, w): ``alpha`` and ``fg`` whole (only
    the window is read and converted to float), ``bg_window`` the background's h x w window
    (from :func:`box_blur_window` or :func:`window`). Blending is per pixel, so the result is
    the whole-image blend's window exactly."""
    box = _check_box("blend_window", np.shape(alpha), box)
    a = window(alpha, box)
    if a.dtype in MATTE_MAX:  # as blend converts the whole matte; here the 0/1-mask check
        # cannot apply: a window of a real matte may hold only 0 and 1
        a = a.astype(np.float32) / np.float32(MATTE_MAX[a.dtype])
    return blend(a, window(fg, box), bg_window)


def blend(alpha: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """I = a F + (1 - a) B in float32 on the 0-255 scale.

    ``alpha``: HxW float in [0, 1], or uint8 / uint16 converted exactly (x / 255 or x / 65535 in
    float32, as :attr:`rssn.imageio.Matte.alpha`); a float alpha on 0-255 is refused.
    ``fg``, ``bg``: HxWx3 on the 0-255 scale, uint8 or float; a float layer whose maximum is in
    (0, 1] is on the [0, 1] scale and is refused (multiply it by 255; a 0-255 layer that dark
    everywhere is not a photo). Sizes must agree."""
    a = matte_unit(alpha, "blend", "alpha", np.float32, given=True)
    fg = image255(fg, "blend", "fg")
    bg = image255(bg, "blend", "bg")
    same_size("blend", alpha=a, fg=fg, bg=bg)
    a = a[..., None]
    return a * fg.astype(np.float32) + (1.0 - a) * bg.astype(np.float32)


def add_gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, sigma^2) noise (0-255 scale) and clip to [0, 255]; returns float32.

    ``img``: HxW or HxWx3 on the 0-255 scale, uint8 or float (a float image whose maximum is in
    (0, 1] is on the [0, 1] scale and is refused: the noise and the clip would be 255x too
    strong). ``sigma``: finite and >= 0. ``rng``: a numpy Generator (the only randomness)."""
    img = image255(img, "add_gaussian_noise", "img", gray=True)
    if not (isinstance(sigma, (int, float, np.integer, np.floating)) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"add_gaussian_noise: sigma is {sigma!r}; pass a finite number >= 0 (grey levels on 0-255)")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"add_gaussian_noise: rng is a {type(rng).__name__}; pass np.random.default_rng(seed)")
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(img.astype(np.float32) + noise, 0.0, 255.0)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Round half to even and clip to uint8."""
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
