"""The route's random operations: probabilities, parameter sets and pure array functions."""
from __future__ import annotations

import numpy as np
import pytest

from rssn import augment
from rssn.seeding import derive_rng

N = 600


def _binomial_ok(count: int, n: int, p: float) -> bool:
    sd = np.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= 4.5 * sd + 1e-9


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 1.0])
def test_each_operation_happens_at_its_probability(p):
    probs = augment.RouteProbabilities(denoise_p=p, blur_p=p, noise_p=p)
    draws = [augment.draw_params(derive_rng(7, "fg", i), probs) for i in range(N)]
    for name, hits in {
        "denoise_fg": sum(d.denoise_fg for d in draws),
        "denoise_bg": sum(d.denoise_bg for d in draws),
        "blur": sum(d.blur_kernel is not None for d in draws),
        "noise": sum(d.noise_seed is not None for d in draws),
    }.items():
        assert _binomial_ok(hits, N, p), (name, hits, p)


def test_operations_are_independent():
    probs = augment.RouteProbabilities()
    draws = [augment.draw_params(derive_rng(3, i), probs) for i in range(N)]
    both = sum(d.denoise_fg and d.denoise_bg for d in draws)
    assert _binomial_ok(both, N, 0.25)


def test_blur_kernels_drawn_from_the_set_uniformly():
    probs = augment.RouteProbabilities(blur_p=1.0)
    ks = [augment.draw_params(derive_rng(1, i), probs).blur_kernel for i in range(N)]
    assert set(ks) == set(augment.PAPER_BLUR_KERNELS)
    for k in augment.PAPER_BLUR_KERNELS:
        assert _binomial_ok(ks.count(k), N, 0.2), k
    custom = augment.RouteProbabilities(blur_p=1.0, blur_kernels=(3, 9))
    assert {augment.draw_params(derive_rng(1, i), custom).blur_kernel for i in range(50)} == {3, 9}


def test_noise_has_the_given_sigma_and_is_clipped():
    rng = np.random.default_rng(0)
    grey = np.full((256, 256, 3), 128.0, np.float32)
    out = augment.add_gaussian_noise(grey, 10.0, rng)
    assert abs(float((out - grey).std()) - 10.0) < 0.1
    assert abs(float((out - grey).mean())) < 0.1
    white = augment.add_gaussian_noise(np.full((64, 64, 3), 250.0, np.float32), 10.0, rng)
    black = augment.add_gaussian_noise(np.zeros((64, 64, 3), np.float32), 10.0, rng)
    assert white.max() == 255.0 and black.min() == 0.0
    assert (white == 255.0).mean() > 0.25 and (black == 0.0).mean() > 0.45
    assert grey[0, 0, 0] == 128.0  # input untouched


def test_fit_background_covers_without_distortion():
    bg = np.random.default_rng(0).integers(0, 255, (300, 1000, 3), dtype=np.uint8)
    crop, box, scaled = augment.fit_background(bg, 200, 150, 0.999, 0.5)
    assert crop.shape == (200, 150, 3)
    assert scaled == (667, 200)  # scale 2/3: aspect kept, height just covers
    x, y, w, h = box
    assert 0 <= x <= scaled[0] - w and y == 0
    crop2, box2, _ = augment.fit_background(bg, 200, 150, 0.0, 0.0)
    assert box2[:2] == (0, 0)
    small = np.zeros((10, 20, 3), np.uint8)
    up, _, sc = augment.fit_background(small, 100, 100, 0.3, 0.3)
    assert up.shape == (100, 100, 3) and sc == (200, 100)


def test_blend_formula_and_box_blur():
    rng = np.random.default_rng(5)
    a = rng.random((8, 9)).astype(np.float32)
    f = rng.integers(0, 255, (8, 9, 3)).astype(np.uint8)
    b = rng.integers(0, 255, (8, 9, 3)).astype(np.uint8)
    out = augment.blend(a, f, b)
    np.testing.assert_allclose(out, a[..., None] * f + (1 - a[..., None]) * b, rtol=1e-6, atol=1e-4)
    img = np.zeros((50, 50, 3), np.uint8)
    img[25, 25] = 255
    bl = augment.box_blur(img, 5)
    assert bl[23:28, 23:28].min() == round(255 / 25) and bl[20, 20].max() == 0
    assert img[25, 25, 0] == 255


def test_same_seed_same_params_different_name_different_params():
    probs = augment.RouteProbabilities()
    a = augment.draw_params(derive_rng(1, "composite", "GT01", 0), probs)
    b = augment.draw_params(derive_rng(1, "composite", "GT01", 0), probs)
    c = augment.draw_params(derive_rng(1, "composite", "GT01", 1), probs)
    assert a == b and a != c


# ---- window versions of the background and blend ops: equal to the whole-image op inside the window


def _boxes(h: int, w: int, wh: int, ww: int, reach: int) -> list[tuple[int, int, int, int]]:
    """Windows at every border and corner, just inside and just beyond a margin's reach of
    each edge, and in the middle."""
    def starts(free: int) -> list[int]:
        near = {0, 1, reach - 1, reach, reach + 1, free // 2, free - reach, free - 1, free}
        return sorted(near & set(range(free + 1)))

    return [(y, x, wh, ww) for y in starts(h - wh) for x in starts(w - ww)]


@pytest.fixture(params=[(True, True), (False, True), (False, False)], ids=["default", "no-ipp", "plain"])
def opencv_paths(request):
    """OpenCV's default code, without IPP, and without SIMD (setUseOptimized False): the
    window must equal the whole image on each path this machine has."""
    import cv2

    ipp, opt = cv2.ipp.useIPP(), cv2.useOptimized()
    cv2.ipp.setUseIPP(request.param[0] and ipp)
    cv2.setUseOptimized(request.param[1] and opt)
    yield
    cv2.ipp.setUseIPP(ipp)
    cv2.setUseOptimized(opt)


@pytest.mark.parametrize("kernel", augment.PAPER_BLUR_KERNELS)
def test_box_blur_window_equals_the_whole_image_blur_inside_the_window(kernel, opencv_paths):
    """Every paper kernel; windows touching each border (where the reflected border is the
    image's) and windows whose margin ends just inside or outside the image; RGB and grey;
    random values and 0/1 values (whose box sums often fall exactly half-way between two
    levels, where a rounding that depended on the pixel's place would show); windows larger
    and smaller than the kernel."""
    rng = np.random.default_rng(kernel)
    images = [rng.integers(0, 256, (150, 170, 3), dtype=np.uint8), rng.integers(0, 256, (97, 131), dtype=np.uint8),
              rng.integers(0, 2, (90, 113, 3), dtype=np.uint8)]
    reach = augment.blur_reach(kernel)
    for img in images:
        whole = augment.box_blur(img, kernel)
        h, w = img.shape[:2]
        for wh, ww in ((64, 64), (7, 11), (h, w), (h, 30)):
            for box in _boxes(h, w, wh, ww, reach):
                got = augment.box_blur_window(img, kernel, box)
                assert got.dtype == img.dtype and np.array_equal(got, augment.window(whole, box)), (img.shape, box)


def test_box_blur_window_reads_only_the_window_and_its_reach():
    """Pixels beyond the reach may change without changing the window's blur."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
    k, box = 40, (80, 70, 30, 40)
    m = augment.blur_reach(k)
    other = img.copy()
    mask = np.ones(img.shape[:2], bool)
    mask[box[0] - m:box[0] + box[2] + m, box[1] - m:box[1] + box[3] + m] = False
    other[mask] = 255 - other[mask]
    assert np.array_equal(augment.box_blur_window(img, k, box), augment.box_blur_window(other, k, box))
    rows = slice(box[0], box[0] + box[2])
    assert not np.array_equal(augment.box_blur(img, k)[rows], augment.box_blur(other, k)[rows])  # the rest did change


def test_box_blur_window_refuses_other_types_and_boxes_outside():
    for dtype in (np.float32, np.uint16):
        with pytest.raises(ValueError, match="only uint8"):
            augment.box_blur_window(np.zeros((50, 50, 3), dtype), 20, (0, 0, 10, 10))
    img = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="not inside"):
        augment.box_blur_window(img, 20, (45, 0, 10, 10))


@pytest.mark.parametrize("fy, fx", [(0.0, 0.0), (0.999, 0.999), (0.3, 0.7)])
@pytest.mark.parametrize("src_hw", [(300, 500), (80, 90), (120, 100)])
def test_fit_background_view_is_the_fit_background_crop(src_hw, fy, fx):
    """Shrinking, enlarging and an exact fit, crops at both ends and in the middle: the view
    holds the same pixels as fit_background's copy (so every window of it is equal)."""
    rng = np.random.default_rng(1)
    bg = rng.integers(0, 256, (*src_hw, 3), dtype=np.uint8)
    crop, box, scaled = augment.fit_background(bg, 120, 100, fx, fy)
    view, vbox, vscaled = augment.fit_background_view(bg, 120, 100, fx, fy)
    assert np.array_equal(view, crop) and (vbox, vscaled) == (box, scaled)


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 65535)])
def test_blend_window_equals_the_whole_image_blend_inside_the_window(dtype, top):
    """Windows at every border and corner; a window where the matte holds only 0 and 1 (a
    soft edge, not a 0/1 mask: the whole matte is checked, never the window)."""
    rng = np.random.default_rng(2)
    h, w = 90, 120
    alpha = rng.integers(0, top + 1, (h, w), dtype=np.int64).astype(dtype)
    alpha[:10, :10] = rng.integers(0, 2, (10, 10))
    fg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    whole = augment.blend(alpha.astype(np.float32) / np.float32(top), fg, bg)  # as Matte.alpha converts
    for box in _boxes(h, w, 33, 47, 5) + [(0, 0, 10, 10), (0, 0, h, w)]:
        got = augment.blend_window(alpha, fg, augment.window(bg, box), box)
        assert got.dtype == np.float32 and np.array_equal(got, augment.window(whole, box)), box
