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
