"""GFM losses: the composition term (Eq. 7: C(alpha_pred) against C(alpha_gt) from the same F
and B, the authors' scale) and the authors' Laplacian pyramid (``--laplacian authors``)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from gfm.data import MattingDataset, find_samples, to_device
from gfm.losses import EPS, authors_kernel, composition_loss, gfm_loss, laplacian_loss, laplacian_pyramid
from rssn.augment import add_gaussian_noise, blend, to_uint8
from rssn.imageio import write_image

FLOOR = 3 * EPS  # the Charbonnier floor of the three colour channels: the loss at alpha_pred == alpha_gt


def _composite_set(root: Path, noisy: bool, size: int = 96) -> Path:
    """One composite in `rssn compose`'s layout (image/ alpha/ fg/ bg/). F, B and alpha are the
    same whatever ``noisy``; the image carries the RSSN route's Gaussian noise (sigma 10) when
    ``noisy``, as `rssn compose --noise-p 1` makes it (noise after blending, F and B stored clean)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    alpha = np.clip((size * 0.35 - r) / (size * 0.15), 0, 1).astype(np.float32)
    fg = to_uint8(60 + 150 * rng.random((size, size, 3)))
    bg = to_uint8(np.repeat(np.linspace(20, 230, size, dtype=np.float32)[None, :, None], size, 0).repeat(3, 2))
    comp = blend(alpha, fg, bg)
    if noisy:
        comp = add_gaussian_noise(comp, 10.0, np.random.default_rng(11))
    for d, arr in (("image", to_uint8(comp)), ("alpha", to_uint8(alpha * 255)), ("fg", fg), ("bg", bg)):
        (root / d).mkdir(parents=True, exist_ok=True)
        write_image(root / d / "c0.png", arr)
    return root


def _batch(folder: Path, **kw) -> dict[str, torch.Tensor]:
    """The training batch `gfm train` makes of the folder's first sample (crop 96: no resize)."""
    samples, failures = find_samples(folder)
    assert samples and not failures, failures
    return to_device(default_collate([MattingDataset(samples, "tt", crop=96, seed=0, **kw)[0]]), "cpu")


def _out(batch: dict[str, torch.Tensor], fusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """A network output whose glance and focus are the targets, and whose matte is ``fusion``."""
    glance = torch.nn.functional.one_hot(batch["glance"], 3).permute(0, 3, 1, 2).float() * 5
    return {"glance": glance, "focus": batch["focus"], "fusion": fusion}


def _photo_batch(tmp_path: Path) -> dict[str, torch.Tensor]:
    from .test_gfm_train import small_real_set

    photos = small_real_set(tmp_path / "photos", 128, ("GT01",))  # skips without ../shared/data
    return _batch(photos, photo_fgbg_cache=tmp_path / "cache")  # closed-form F and B, as gfm train


@pytest.mark.parametrize("kind", ["noisy composite", "photo"])
def test_composition_loss_at_the_true_alpha_is_the_floor(tmp_path, kind):
    """Eq. 7 at alpha_pred = alpha_gt is eps alone, for an RSSN composite with noise and for a
    photo with closed-form F and B, although neither input equals alpha F + (1 - alpha) B."""
    batch = _photo_batch(tmp_path) if kind == "photo" else _batch(_composite_set(tmp_path / "comp", noisy=True))
    assert bool(batch["has_fgbg"].all())
    terms = gfm_loss(_out(batch, batch["alpha"].clone()), batch)
    assert float(terms["comp"]) == pytest.approx(FLOOR, rel=1e-4)
    # what the loss compared before: the input; its floor at the true alpha was far above eps
    c_gt = batch["alpha"] * batch["fg"] + (1 - batch["alpha"]) * batch["bg"]
    residual = float((batch["image_raw"] - c_gt).abs().mean())
    assert residual > (0.01 if kind == "noisy composite" else 1e-4), residual


def test_composition_gradient_does_not_depend_on_input_noise(tmp_path):
    clean = _batch(_composite_set(tmp_path / "clean", noisy=False))
    noisy = _batch(_composite_set(tmp_path / "noisy", noisy=True))
    for k in ("alpha", "fg", "bg"):  # the same sample and crop: only the input differs
        assert torch.equal(clean[k], noisy[k]), k
    assert float((clean["image_raw"] - noisy["image_raw"]).abs().mean()) > 0.02  # sigma 10 of 255

    wobble = 0.2 * torch.sin(torch.arange(96.0) / 7)[None, None, :, None] * torch.cos(torch.arange(96.0) / 5)
    grads = []
    for batch in (clean, noisy):
        fusion = (batch["alpha"] + wobble).clamp(0, 1).requires_grad_(True)
        gfm_loss(_out(batch, fusion), batch)["loss"].backward()
        grads.append(fusion.grad)
    assert grads[0].abs().sum() > 0 and torch.equal(grads[0], grads[1])

    # at the true alpha the composition term pulls nowhere (the old one pulled towards the noise)
    at_gt = noisy["alpha"].clone().requires_grad_(True)
    composition_loss(at_gt, noisy["alpha"], noisy["fg"], noisy["bg"]).backward()
    assert int(torch.count_nonzero(at_gt.grad)) == 0


def _authors_composition(img, alpha, fg, bg, predict):
    """The authors' core/evaluate.py get_composition_loss_whole_img (0-255 images), without .cuda()."""
    weighted = torch.ones(alpha.shape, dtype=predict.dtype)
    predict_3 = torch.cat((predict, predict, predict), 1)
    comp = predict_3 * fg + (1. - predict_3) * bg
    comp_loss = torch.sqrt((comp - img) ** 2 + 1e-12) / 255.
    return comp_loss.sum() / (weighted.sum())


def test_composition_loss_sums_the_channels_and_divides_by_the_pixels():
    p = torch.tensor([[[[0.0, 1.0]]]])
    g = torch.tensor([[[[0.5, 1.0]]]])
    fg, bg = torch.ones(1, 3, 1, 2), torch.zeros(1, 3, 1, 2)
    # pixel 1: |0 - 0.5| in each of 3 channels = 1.5; pixel 2: the floor; / 2 pixels
    assert float(composition_loss(p, g, fg, bg)) == pytest.approx((1.5 + FLOOR) / 2, abs=1e-6)

    gen = torch.Generator().manual_seed(0)
    shape = (2, 1, 8, 9)
    a_gt, a_pred = torch.rand(shape, generator=gen, dtype=torch.float64), torch.rand(shape, generator=gen, dtype=torch.float64)
    f = torch.rand((2, 3, 8, 9), generator=gen, dtype=torch.float64)
    b = torch.rand((2, 3, 8, 9), generator=gen, dtype=torch.float64)
    ours = float(composition_loss(a_pred, a_gt, f, b))
    # the authors' on 0-255 values, with their input equal to C(alpha_gt) (a clean composite);
    # their eps is 1e-6 on the 0-255 scale, ours on the 0-1 scale: at most 1e-6 apart per value
    theirs = float(_authors_composition(255 * (a_gt * f + (1 - a_gt) * b), a_gt, 255 * f, 255 * b, a_pred))
    assert ours == pytest.approx(theirs, abs=3e-6) and ours > 0.1
    d = (a_pred - a_gt) * (f - b)
    assert ours == pytest.approx(3 * float(torch.sqrt(d ** 2 + EPS ** 2).mean()), rel=1e-12)  # 3x the mean


def test_authors_kernel_is_the_sum_of_two_gaussians():
    g0, g1 = math.exp(-4), math.exp(-1)  # exp(-(t - 2)^2) at t = 0 and 1; 1 at the centre
    z = 10 * (1 + 2 * g1 + 2 * g0)  # 5 x 5 cells, each adding two 1-D values
    k = authors_kernel()
    assert k.dtype == np.float64 and k.shape == (5, 5)
    np.testing.assert_allclose([k[2, 2], k[0, 0], k[0, 2], k[1, 2], k[0, 1]],
                               [2 / z, 2 * g0 / z, (g0 + 1) / z, (g1 + 1) / z, (g0 + g1) / z], rtol=1e-14)
    assert k.sum() == pytest.approx(1.0, abs=1e-15)


def _pattern() -> tuple[torch.Tensor, torch.Tensor]:
    """Two fixed 40 x 48 inputs in [0, 1], exact in binary (no random generator, no libm)."""
    i, j = np.mgrid[0:40, 0:48]
    x = ((3 * i * i + 7 * j + i * j) % 23) / 22.0
    y = ((5 * i + j * j) % 19) / 18.0
    return torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None]


# The authors' laplacian_pyramid(x, build_gauss_kernel(5, 1.0), 5) and
# get_laplacian_loss_whole_img(y, x) from core/evaluate.py (transcribed with .cuda() dropped,
# run in float64 on their float32 kernel): per level (shape, sum |band|, band[0, 0], band[-1, -1]).
AUTHORS_LEVELS = [
    ((40, 48), 438.37460581090465, -0.22097945164635097, 0.0027404553680258625),
    ((20, 24), 14.237970039093423, -0.0691418856630382, -0.046971408465781184),
    ((10, 12), 1.6296145768626482, -0.02931538412671114, 0.0007993986452786705),
    ((5, 6), 0.16762435490636224, -0.0014085504083025668, -0.0009566254418664766),
    ((2, 3), 0.009988056166152837, 0.00100413091481516, -0.001381172372102557),
    ((1, 1), 0.4921097310302449, 0.4921097310302449, 0.4921097310302449),
]
AUTHORS_LOSS = 0.37759571437454525


def test_authors_pyramid_matches_their_function():
    x, y = _pattern()
    pyr = laplacian_pyramid(x, 5, "authors")
    assert len(pyr) == len(AUTHORS_LEVELS)
    # Their kernel is computed in float32 (about 6e-8 relative per tap); on inputs in [0, 1] that
    # moves any band value by under 1e-7, so 1e-6 absolute (and 1e-6 relative for the sums of
    # up to 1,920 values) holds on any processor, while padding or kernel mistakes move the
    # corner values by 1e-2 or more (the textbook pyramid's differ by 0.2).
    for band, (shape, abs_sum, first, last) in zip(pyr, AUTHORS_LEVELS):
        assert tuple(band.shape[-2:]) == shape
        assert float(band.abs().sum()) == pytest.approx(abs_sum, rel=1e-6)
        assert float(band[0, 0, 0, 0]) == pytest.approx(first, abs=1e-6)
        assert float(band[0, 0, -1, -1]) == pytest.approx(last, abs=1e-6)
    assert float(laplacian_loss(y, x, kind="authors")) == pytest.approx(AUTHORS_LOSS, abs=1e-6)
    # in float32, as training runs: float32 rounding over 6 levels stays far below 1e-5
    assert float(laplacian_loss(y.float(), x.float(), kind="authors")) == pytest.approx(AUTHORS_LOSS, abs=1e-5)
    assert float(laplacian_loss(y, x)) - AUTHORS_LOSS > 0.02  # the default (textbook) is another pyramid


def test_gfm_loss_uses_the_chosen_pyramid():
    torch.manual_seed(0)
    alpha = torch.zeros(1, 1, 64, 64)
    alpha[..., 16:48, 20:44] = 1
    alpha[..., 14:16, 18:46] = 0.5
    from gfm.losses import all_glance_targets

    t = all_glance_targets(alpha[0, 0].numpy(), "tt")
    batch = {"alpha": alpha, "has_fgbg": torch.tensor([False]), "fg": torch.zeros(1, 3, 64, 64),
             "bg": torch.zeros(1, 3, 64, 64), "glance": torch.from_numpy(t["glance"])[None],
             "transition": torch.from_numpy(t["transition"])[None, None], "focus": torch.from_numpy(t["focus"])[None, None]}
    fusion = torch.rand(1, 1, 64, 64)
    out = _out(batch, fusion)
    for kind in ("textbook", "authors"):
        terms = gfm_loss(out, batch, laplacian=kind)
        assert float(terms["fusion_lap"]) == pytest.approx(float(laplacian_loss(fusion, alpha, kind=kind)), rel=1e-6)
    assert float(gfm_loss(out, batch, "authors")["fusion_lap"]) != pytest.approx(float(gfm_loss(out, batch)["fusion_lap"]), rel=0.01)
    with pytest.raises(ValueError, match="textbook, authors"):
        gfm_loss(out, batch, laplacian="burt")


@pytest.mark.slow  # two r34 models and a checkpoint: about 30 s on a loaded 2-core machine
def test_train_records_the_pyramid_and_resume_keeps_it(tmp_path):
    from gfm.train import TrainConfig, run_train

    from .helpers import make_tiny_set

    fg, _ = make_tiny_set(tmp_path / "src", n_fg=2, n_bg=1, fg_hw=(72, 72), bg_hw=(72, 72))
    cfg = TrainConfig(data=(str(fg),), out=str(tmp_path / "run"), pretrained="none", crop=64, batch_size=2, epochs=1,
                      device="cpu", photo_fgbg=False, cache_dir=str(tmp_path / "cache"), laplacian="authors")
    run_train(cfg, progress=False, log=lambda m: None)
    ckpt = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert json.loads(ckpt["config"])["laplacian"] == "authors"
    from dataclasses import replace

    with pytest.raises(ValueError, match="--laplacian authors"):
        run_train(replace(cfg, epochs=2, resume="auto", laplacian="textbook"), progress=False, log=lambda m: None)


def test_experiment_passes_the_pyramid_to_every_arm(tmp_path):
    from gfm.experiment import ExperimentConfig, train_config

    cfg = ExperimentConfig(fg=tmp_path, bg=tmp_path, val=tmp_path, out=tmp_path, arms=(), laplacian="authors")
    assert train_config(cfg, ("comp",), tmp_path / "run", 0).laplacian == "authors"
    assert train_config(ExperimentConfig(fg=tmp_path, bg=tmp_path, val=tmp_path, out=tmp_path, arms=()),
                        ("comp",), tmp_path / "run", 0).laplacian == "textbook"
