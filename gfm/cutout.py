"""Cut-outs from a predicted matte: estimated foreground colours under the alpha, and the cut-out
placed on a new background.

A photo's colour in a semi-transparent pixel (hair, fur, motion blur) is a mix of the subject
and the old background, I = a F + (1 - a) B. Writing the photo's colours under the matte brings
the old background back as a fringe wherever the cut-out is pasted; writing the estimated
foreground colours F does not. PNG stores straight (not premultiplied) colour, so the RGB of a
cut-out is F itself and its alpha the matte.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from rssn.augment import fit_background
from rssn.foreground import FG_METHODS, estimate_foreground

CUTOUT_FG_METHODS = FG_METHODS  # cf, cf-full, ml, none (the photo's own colours)
NAMED_COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128), "gray": (128, 128, 128),
                 "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def cutout_rgba(image: np.ndarray, alpha8: np.ndarray, fg_method: str = "ml") -> np.ndarray:
    """RGBA uint8 cut-out: straight foreground colours F estimated from ``image`` (uint8 HxWx3)
    under ``alpha8`` (uint8 HxW, the matte as written), or the photo's colours with ``none``.

    F is estimated from the 8-bit matte that is written beside it, so the two agree exactly.
    """
    if fg_method not in CUTOUT_FG_METHODS:
        raise ValueError(f"unknown foreground method {fg_method!r}; choose from {', '.join(CUTOUT_FG_METHODS)}")
    if alpha8.dtype != np.uint8 or alpha8.shape != image.shape[:2]:
        raise ValueError(f"alpha must be uint8 of the image's size {image.shape[:2]}, got {alpha8.dtype} {alpha8.shape}")
    if fg_method == "none":
        rgb = image
    else:
        f = estimate_foreground(image, alpha8.astype(np.float64) / 255.0, fg_method)
        rgb = np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)
    return np.dstack([rgb, alpha8])


def parse_background(spec: str) -> tuple[int, int, int] | Path:
    """A colour (``white``, ``#rrggbb``, ``r,g,b``) or an image file; ValueError says what to pass."""
    s = spec.strip().lower()
    if s in NAMED_COLOURS:
        return NAMED_COLOURS[s]
    if re.fullmatch(r"#[0-9a-f]{6}", s):
        r, g, b = (int(s[i : i + 2], 16) for i in (1, 3, 5))
        return r, g, b
    if re.fullmatch(r"\d{1,3},\d{1,3},\d{1,3}", s):
        r, g, b = (int(v) for v in s.split(","))
        if max(r, g, b) <= 255:
            return r, g, b
    p = Path(spec)
    if p.is_file():
        return p
    raise ValueError(f"--background {spec!r} is neither a colour (white, black, #rrggbb, r,g,b with values 0-255) "
                     f"nor an existing image file")


def place_on_background(rgba: np.ndarray, background: tuple[int, int, int] | np.ndarray) -> np.ndarray:
    """The cut-out over a flat colour or an image (scaled to cover, centred): uint8 HxWx3,
    a F + (1 - a) B rounded half to even."""
    h, w = rgba.shape[:2]
    if isinstance(background, np.ndarray):
        bg, _, _ = fit_background(background, h, w, 0.5, 0.5)
        bg = bg.astype(np.float32)
    else:
        bg = np.broadcast_to(np.asarray(background, np.float32), (h, w, 3))
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    out = a * rgba[..., :3].astype(np.float32) + (1.0 - a) * bg
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
