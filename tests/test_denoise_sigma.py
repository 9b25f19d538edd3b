"""BM3D's noise level (issue #27): a foreground's is measured where its pixels are, not on the
estimated layer, whose clear area is a smooth fill; a background's on the whole image, flat
areas and all. Also the noise strength that reaches the network after the training resize."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from rssn import measures
from rssn.augment import to_uint8
from rssn.denoise import (
    MIN_SIGMA_BLOCKS,
    TOO_FEW,
    clipped_patches,
    estimate_noise_sigma,
    foreground_noise_sigma,
)
from rssn.foreground import estimate_foreground
from rssn.imageio import read_image, read_matte

from .conftest import run_cli, shared

PHOTOS = tuple(f"GT{i:02d}" for i in range(1, 21))


def _half(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A shared alphamatting photo and its matte at half size (as in the issue's table)."""
    am = shared("alphamatting")
    im = read_image(am / "image" / f"{name}.png")
    a = read_matte(am / "alpha" / f"{name}.png").alpha.astype(np.float32)
    hw = (im.shape[1] // 2, im.shape[0] // 2)
    return cv2.resize(im, hw, interpolation=cv2.INTER_AREA), cv2.resize(a, hw, interpolation=cv2.INTER_AREA)


def _noisy(im: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, im.shape)
    return np.clip(np.rint(im + noise), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ foregrounds


@pytest.mark.parametrize("sigma", [5, 10])
def test_foreground_sigma_on_shared_photos_is_the_noisy_photos(sigma):
    """All 20 photos with noise added: the level used for F (photo layout, and an RGBA cut-out
    whose colours are 0 where alpha is 0) is within 15 % of the whole noisy photo's wavelet
    estimate (the issue's bound; measured 0.87-1.10, the low end where fur inflates the
    photo's wavelet estimate, which the block estimator resists)."""
    ratios = []
    for i, name in enumerate(PHOTOS):
        clean, alpha = _half(name)
        photo = _noisy(clean, sigma, i)
        ref = estimate_noise_sigma(photo)
        cutout = photo.copy()
        cutout[alpha == 0] = 0
        for source in (photo, cutout):
            est = foreground_noise_sigma(source, alpha)
            assert est.source == "alpha>=0.99" and est.blocks >= MIN_SIGMA_BLOCKS, (name, est)
            assert est.sigma == pytest.approx(ref, rel=0.15), (name, est.sigma, ref)
            ratios.append(est.sigma / ref)
    # the cut-outs are the case the whole-image estimate got wrong (GT05: 63 % clear)
    clean, alpha = _half("GT05")
    cutout = _noisy(clean, sigma, 4)
    cutout[alpha == 0] = 0
    assert estimate_noise_sigma(cutout) < 0.25 * sigma
    print(f"sigma {sigma}: F / photo {min(ratios):.3f}-{max(ratios):.3f}")


def test_given_foreground_layer_gives_the_photos_sigma_where_the_old_rule_did_not():
    """The issue's three photos: F estimated (closed form) from the noisy photo and given as a
    Composition-1k foreground. Measured on F's own pixels it is within 15 % of the photo's
    estimate; the old whole-layer estimate was 0.5 (the floor) on GT05 (63 % clear)."""
    for name, clear, sigma in (("GT01", 0.39, 5), ("GT13", 0.30, 10), ("GT05", 0.63, 5), ("GT05", 0.63, 10)):
        clean, alpha = _half(name)
        assert np.mean(alpha == 0) == pytest.approx(clear, abs=0.01)
        photo = _noisy(clean, sigma, sigma)
        f8 = to_uint8(estimate_foreground(photo, alpha, "cf") * 255.0)
        ref = estimate_noise_sigma(photo)
        est = foreground_noise_sigma(f8, alpha)
        assert est.sigma == pytest.approx(ref, rel=0.15), (name, sigma, est, ref)
        if name == "GT05":
            assert estimate_noise_sigma(f8) <= 0.55 * sigma  # the bug this replaces


def _flat(h: int, w: int, sigma: float, seed: int = 0, level: int = 128) -> np.ndarray:
    return _noisy(np.full((h, w, 3), level, np.float64), sigma, seed)


def test_transparent_object_is_measured_where_alpha_is_above_zero():
    """No alpha >= 0.99 (glass, a net): the pixels with alpha > 0, pure noise of sigma 6 around
    a smooth fill of 0. The block estimator recovers pure noise within 3 % on large images
    (tests/test_audit.py); with ~100 blocks here, within 6 %."""
    src = _flat(256, 256, 6.0)
    alpha = np.zeros((256, 256), np.float32)
    yy, xx = np.mgrid[:256, :256]
    inside = (yy - 128) ** 2 + (xx - 128) ** 2 < 100**2
    alpha[inside] = 0.5
    src[~inside] = 0
    est = foreground_noise_sigma(src, alpha)
    assert est.source == "alpha>0" and est.sigma == pytest.approx(6.0, rel=0.06), est
    assert estimate_noise_sigma(src) < 1.0  # the whole image would have said almost nothing


def test_clipped_patches_are_left_out():
    """Half the object is blown out (255, no noise): it would be the quietest blocks and pull
    the estimate to 0; left out, the noisy half gives sigma 6 within 6 %. Noise that hits 0 or
    255 now and then (a dark area, sigma 10) marks no patch."""
    src = _flat(256, 256, 6.0)
    src[:, :128] = 255
    alpha = np.ones((256, 256), np.float32)
    assert measures.channel_noise_sigma(src, alpha > 0) < 0.5  # the estimator denoise uses, unmasked
    est = foreground_noise_sigma(src, alpha)
    assert est.source == "alpha>=0.99" and est.sigma == pytest.approx(6.0, rel=0.06), est
    dark = _flat(256, 256, 10.0, level=8)
    assert (dark == 0).mean() > 0.1 and not clipped_patches(dark).any()


def test_clipped_patches_are_the_opening_of_each_clipped_mask():
    """clipped_patches (two morphology passes over all channels) equals its definition, the
    3 x 3 opening of (channel == v) for each channel and v in (0, 255), windows inside the image."""
    k = np.ones((3, 3), np.uint8)
    for seed in range(5):
        x = np.random.default_rng(seed).choice(np.array([0, 255, 7], np.uint8), (60, 70, 3), p=[0.45, 0.45, 0.1])
        ref = np.zeros((60, 70), bool)
        for c in range(3):
            for v in (0, 255):
                m = (x[..., c] == v).astype(np.uint8)
                ref |= cv2.morphologyEx(m, cv2.MORPH_OPEN, k, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
        assert ref.any() and not ref.all()
        np.testing.assert_array_equal(clipped_patches(x), ref)


def test_too_few_foreground_pixels_is_recorded_and_override_wins():
    """A 60 px object has too few 16 px blocks: the whole image's wavelet estimate, recorded
    as such. --denoise-sigma wins over every estimate."""
    src = _flat(200, 200, 5.0)
    alpha = np.zeros((200, 200), np.float32)
    alpha[70:130, 70:130] = 1
    est = foreground_noise_sigma(src, alpha)
    assert est.source == TOO_FEW and est.blocks == 0
    assert est.sigma == round(estimate_noise_sigma(src), 4)
    forced = foreground_noise_sigma(src, alpha, override=7.25)
    assert (forced.sigma, forced.source) == (7.25, "--denoise-sigma")
    big = np.ones((200, 200), np.float32)
    assert foreground_noise_sigma(src, big, override=3.0).sigma == 3.0


# ------------------------------------------------------------------ rssn compose, end to end


@pytest.mark.slow  # BM3D of a 400 x 276 photo: about 10 s on a loaded 2-core machine
def test_compose_denoises_the_foreground_at_the_photos_sigma(tmp_path):
    """`rssn compose` with the foreground and the background drawn for denoising, on a shared
    photo with 63 % clear pixels (GT05, half size, sigma 5 added; the old rule gave 0.5): the
    manifest records for F a sigma within 15 % of the noisy photo's and where it was measured;
    the written F's noise on its alpha >= 0.99 region (rssn audit's measure) is at most half of
    the undenoised F's (measured 5.24 -> 0.46); the background's sigma is its whole-image
    estimate."""
    fg = tmp_path / "fg"
    (fg / "image").mkdir(parents=True)
    (fg / "alpha").mkdir()
    (tmp_path / "bg").mkdir()
    photos = {}
    for name, sigma in (("GT05", 5),):
        clean, alpha = _half(name)
        photo = _noisy(clean, sigma, 1)
        photos[name] = photo, alpha
        cv2.imwrite(str(fg / "image" / f"{name}.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(fg / "alpha" / f"{name}.png"), np.rint(alpha * 255).astype(np.uint8))
    scene = read_image(sorted(shared("backgrounds").glob("*.jpg"))[0], cover=(400, 400))
    bg = _noisy(scene[:96, :96], 8, 2)
    cv2.imwrite(str(tmp_path / "bg" / "b.png"), cv2.cvtColor(bg, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    run_cli("rssn", "compose", "--fg", str(fg), "--bg", str(tmp_path / "bg"), "--out", str(out), "--quiet",
            "--per-fg", "1", "--denoise-p", "1", "--blur-p", "0", "--noise-p", "0", "--workers", "2",
            "--cache", str(tmp_path / "cache"), check=True)
    recs = {r["fg"]["stem"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())
            if r["type"] == "composite"}
    assert sorted(recs) == ["GT05"]
    for name, rec in recs.items():
        photo, _ = photos[name]
        alpha = read_matte(out / rec["outputs"]["alpha"]).alpha
        ops = {o["target"]: o for o in rec["ops"] if o["op"] == "bm3d"}
        assert ops["fg"]["sigma_from"] == "alpha>=0.99" and ops["fg"]["sigma_blocks"] >= MIN_SIGMA_BLOCKS
        assert ops["fg"]["sigma"] == pytest.approx(estimate_noise_sigma(photo), rel=0.15), (name, ops["fg"])
        assert ops["bg"]["sigma_from"] == "whole image"
        assert ops["bg"]["sigma"] == round(estimate_noise_sigma(bg), 4)
        f8 = to_uint8(estimate_foreground(photo, alpha, "cf") * 255.0)
        denoised = read_image(out / rec["outputs"]["fg"])
        region, _ = measures.regions(alpha)
        before, after = measures.noise_sigma(f8, region), measures.noise_sigma(denoised, region)
        assert after <= 0.5 * before, (name, before, after)
        print(f"{name}: sigma {ops['fg']['sigma']} (photo {estimate_noise_sigma(photo):.2f}), "
              f"noise on F {before:.2f} -> {after:.2f}")


# ------------------------------------------------------------------ backgrounds


def test_background_estimate_holds_on_scenes_with_large_flat_areas():
    """The seven shared scenes at 540 px (sky, mist, snow, sea: 12-40 % of 8 px windows with a
    std under 1 grey level) with noise of sigma 5 and 10 added: the whole-image wavelet estimate
    is within -10 % / +25 % of the added sigma. Measured 0.99-1.19: added noise makes a flat area
    pure noise, which the estimator reads right; texture pushes it up (coast). The estimate
    moves in steps of 0.25 (a median of half-integers over three channels), 5 % at sigma 5,
    hence the margin."""
    flat_scenes = 0
    for p in sorted(shared("backgrounds").glob("*.jpg")):
        im = read_image(p, cover=(540, 540))
        s = 540 / min(im.shape[:2])
        im = cv2.resize(im, (round(im.shape[1] * s), round(im.shape[0] * s)), interpolation=cv2.INTER_AREA)
        g = cv2.cvtColor(im, cv2.COLOR_RGB2GRAY).astype(np.float32)
        m = cv2.blur(g, (8, 8))
        flat_scenes += float(np.mean(cv2.blur(g * g, (8, 8)) - m * m < 1)) >= 0.3
        for i, sigma in enumerate((5, 10)):
            est = estimate_noise_sigma(_noisy(im, sigma, i))
            assert 0.9 * sigma <= est <= 1.25 * sigma, (p.name, sigma, est)
    assert flat_scenes >= 3  # the case is covered


# ------------------------------------------------------------------ noise at the network input


@pytest.mark.parametrize("size,area,bilinear", [(640, 5.0, 5.0), (960, 10 / 3, 10.0), (1280, 2.5, 5.0)])
def test_noise_strength_at_the_network_input(size, area, bilinear):
    """Noise of sigma 10 on a training crop of 640/960/1280 px, resized to 320 by `gfm train`'s
    augmentation (area interpolation): the network sees 10 * 320 / size. The authors' bilinear
    resize (cv2.INTER_LINEAR) samples 2x2, 1 and 2x2 pixels: 5, 10, 5. Bound 3 %: the std of
    307,200 samples varies by 0.13 %, the 8-bit rounding adds at most 0.7 %."""
    from gfm.data import MattingDataset, choose_crop

    alpha = np.zeros((size, size), np.float32)
    seed = next(s for s in range(100) if choose_crop(alpha, np.random.default_rng(s))[2] == size)
    image = _flat(size, size, 10.0, seed=size)
    ds = MattingDataset([], "tt", crop=320)
    sample = ds.augment(image, alpha, None, None, np.random.default_rng(seed))
    seen = sample["image"].numpy().astype(np.float64)  # the batch's uint8 image: what to_device scales
    assert seen.shape == (3, 320, 320)
    assert seen.std() == pytest.approx(area, rel=0.03)
    lin = cv2.resize(image, (320, 320), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    assert lin.std() == pytest.approx(bilinear, rel=0.03)
