"""`gfm predict --rgba` cut-outs: estimated foreground colours under the matte, not the photo's
colours (which carry the old background into every semi-transparent pixel)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from gfm.cutout import cutout_rgba, parse_background, place_on_background
from rssn.imageio import read_image, read_matte

from .conftest import shared


def _half(name: str) -> tuple[np.ndarray, np.ndarray]:
    root = shared("alphamatting")
    image, alpha = read_image(root / "image" / f"{name}.png"), read_matte(root / "alpha" / f"{name}.png").values
    h, w = alpha.shape
    return (cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA),
            cv2.resize(alpha, (w // 2, h // 2), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize("name", ["GT01", "GT04", "GT20"])
def test_cutout_on_a_new_colour_has_no_fringe_of_the_old_background(name):
    """Ground-truth matte, cut-out composited over a flat colour opposite to the old backdrop, against
    a F_ref + (1 - a) colour with F_ref pymatting's converged closed-form foreground; mean absolute
    error over the transition band (0 < a < 1), 0-255 scale.

    Measured at half size: photo colours 5.7-9.0, ml 1.15-1.87 (0.13-0.27 of the photo's), cf
    about 0.3. Bounds: ml below 0.4x the photo's and below 2.5; cf below 0.1x and below 1.0. The
    margins absorb any processor's rounding (all three are float64 solves rounded to 8 bits)."""
    from pymatting import estimate_foreground_cf

    image, a8 = _half(name)
    f_ref = np.clip(estimate_foreground_cf(image / 255.0, a8 / 255.0), 0, 1) * 255.0
    band = (a8 > 0) & (a8 < 255)
    assert band.sum() > 3000
    colour = tuple(int(v) for v in np.where(image[a8 == 0].mean(0) > 127, 0, 255))
    a = (a8 / 255.0)[..., None]
    target = a * f_ref + (1 - a) * np.asarray(colour, float)

    def error(method: str) -> float:
        rgba = cutout_rgba(image, a8, method)
        assert np.array_equal(rgba[..., 3], a8)  # the alpha is the matte as written
        return float(np.abs(place_on_background(rgba, colour).astype(float) - target)[band].mean())

    photo, ml, cf = error("none"), error("ml"), error("cf")
    assert photo > 4.0, photo  # the fringe is real on these photos
    assert ml < 0.4 * photo and ml < 2.5, (photo, ml)
    assert cf < 0.1 * photo and cf < 1.0, (photo, cf)


def test_none_keeps_the_photo_colours_and_placement_is_the_blend():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    a8 = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    rgba = cutout_rgba(image, a8, "none")
    assert np.array_equal(rgba[..., :3], image) and np.array_equal(rgba[..., 3], a8)
    a = a8[..., None] / 255.0
    want = np.clip(np.rint(a * image + (1 - a) * np.array([10, 200, 30])), 0, 255)
    assert np.abs(place_on_background(rgba, (10, 200, 30)).astype(int) - want).max() <= 1  # float32 vs float64 rounding
    # an image background is scaled to cover and centred: a constant image gives its colour
    bg = np.full((7, 100, 3), (1, 2, 3), np.uint8)
    assert np.array_equal(place_on_background(np.dstack([image, np.zeros_like(a8)]), bg),
                          np.broadcast_to(np.array([1, 2, 3], np.uint8), image.shape))


def test_background_spec_parsing(tmp_path):
    assert parse_background("white") == (255, 255, 255)
    assert parse_background("#FF8000") == (255, 128, 0)
    assert parse_background("0,128,255") == (0, 128, 255)
    (tmp_path / "b.jpg").write_bytes(b"x")
    assert parse_background(str(tmp_path / "b.jpg")) == tmp_path / "b.jpg"
    for bad in ("#12345", "300,0,0", "nowhere.png"):
        with pytest.raises(ValueError, match="neither a colour"):
            parse_background(bad)
    with pytest.raises(ValueError, match="uint8 of the image's size"):
        cutout_rgba(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), "ml")
