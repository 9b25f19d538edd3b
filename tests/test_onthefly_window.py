"""On-the-fly composites made on the crop window equal the whole-image composite's crop."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gfm.data import OnTheFlyDataset

from .conftest import shared

SIGMA = 10.0


def _sources(root: Path) -> tuple[Path, Path]:
    """Two alphamatting photos and mattes enlarged 1.6x (so 640 and 960 windows fall inside
    the image as well as at its borders) and two shared backgrounds (large JPEGs: shrunk)."""
    am = shared("alphamatting")
    for d in ("image", "alpha"):
        (root / "fg" / d).mkdir(parents=True)
    for n in ("GT01", "GT03"):
        img = cv2.imread(str(am / "image" / f"{n}.png"))
        a = cv2.imread(str(am / "alpha" / f"{n}.png"), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(root / "fg" / "image" / f"{n}.png"), cv2.resize(img, None, fx=1.6, fy=1.6))
        cv2.imwrite(str(root / "fg" / "alpha" / f"{n}.png"), cv2.resize(a, None, fx=1.6, fy=1.6))
    (root / "bg").mkdir()
    for p in sorted(shared("backgrounds").glob("*.jpg"))[:2]:
        (root / "bg" / p.name).symlink_to(p)
    return root / "fg", root / "bg"


@pytest.mark.slow
def test_window_path_gives_the_whole_image_paths_tensors(tmp_path):
    """Over three epochs of 2 foregrounds x 2 composites (blur kernels and noise drawn at
    random): the crop window, flip, F and B windows and every tensor are equal; the image is
    equal where no noise was drawn. Where noise was drawn (another realisation, on the window
    only), the image minus the noise-free blend has a standard deviation of sigma at source
    resolution: sqrt(sigma^2 + 1/12) with rounding, measured on >= 10^5 unclipped values, so
    a 3 % bound is far beyond sampling error (about 0.3 %) and far below a wrong strength
    (e.g. sigma / 2 after a resize); drawn again, it is the same."""
    fg, bg = _sources(tmp_path)
    opts = {"fg_method": "none", "denoise_p": 0.0, "cache_dir": tmp_path / "cache", "noise_sigma": SIGMA}
    win = OnTheFlyDataset(fg, bg, "rim", 320, seed=3, per_fg=2, compose_options=opts)
    whole = OnTheFlyDataset(fg, bg, "rim", 320, seed=3, per_fg=2, compose_options=opts)
    whole.whole_image = True
    seen_noise = seen_clean = 0
    kernels, places = set(), set()
    for epoch in range(3):
        win.set_epoch(epoch)
        whole.set_epoch(epoch)
        for index in range(len(win)):
            fi, k = divmod(index, 2)
            a, b = win.composite_window(fi, k), whole.composite_window(fi, k)
            assert (a.y, a.x, a.size, a.flip) == (b.y, b.x, b.size, b.flip)
            assert np.array_equal(a.fg, b.fg) and np.array_equal(a.bg, b.bg)
            kernels |= {o["kernel"] for o in a.ops if o["op"] == "box_blur"}
            h, w = a.values.shape
            sides = {"top": a.y == 0, "left": a.x == 0, "bottom": a.y + a.size == h, "right": a.x + a.size == w}
            places |= set(sides.items())
            noisy = any(o["op"] == "gaussian_noise" for o in a.ops)
            assert noisy == any(o["op"] == "gaussian_noise" for o in b.ops)
            sa, sb = win[index], whole[index]
            assert sa.keys() == sb.keys()
            for key in sa:
                if key != "image" or not noisy:
                    assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), (epoch, index, key)
            if not noisy:
                assert np.array_equal(a.image, b.image)
                seen_clean += 1
                continue
            seen_noise += 1
            alpha = a.values[a.y:a.y + a.size, a.x:a.x + a.size, None].astype(np.float32) / 255
            clean = alpha * a.fg.astype(np.float32) + (1 - alpha) * a.bg.astype(np.float32)
            keep = (clean > 5 * SIGMA) & (clean < 255 - 5 * SIGMA)
            diff = a.image.astype(np.float64)[keep] - clean[keep]
            assert diff.size >= 100_000
            assert abs(diff.std() - np.sqrt(SIGMA**2 + 1 / 12)) < 0.03 * SIGMA, diff.std()
            assert abs(diff.mean()) < 0.03 * SIGMA
            assert not np.array_equal(a.image, b.image)  # the window's own draw...
            assert torch.equal(win[index]["image"], sa["image"])  # ...from (seed, epoch, index) alone
    assert seen_noise and seen_clean and len(kernels) >= 2
    # each side of the window both at the image's border and inside the image (where the blur
    # reads the margin)
    assert places == {(side, t) for side in ("top", "left", "bottom", "right") for t in (True, False)}
