"""GFM model: shapes, RoSTa fusion rules, targets and loss terms on hand-made cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gfm.losses import alpha_loss, composition_loss, glance_targets, laplacian_loss, laplacian_pyramid
from gfm.model import GFM, collaborate


@pytest.mark.parametrize("backbone", ["r34", "r34_2b"])
@pytest.mark.parametrize("rosta,classes", [("tt", 3), ("ft", 2), ("bt", 2)])
def test_output_shapes(backbone, rosta, classes):
    torch.manual_seed(0)
    model = GFM(backbone, rosta).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert out["glance"].shape == (2, classes, 64, 96)
    assert out["focus"].shape == out["fusion"].shape == (2, 1, 64, 96)
    assert float(out["fusion"].min()) >= 0 and float(out["fusion"].max()) <= 1


def _logits(classes: list[list[int]], n: int) -> torch.Tensor:
    c = torch.tensor(classes)
    return torch.nn.functional.one_hot(c, n).permute(2, 0, 1)[None].float() * 5


def test_collaborative_rules_by_hand():
    focus = torch.tensor([[[[0.3, 0.6], [0.9, 0.2]]]])
    tt = collaborate(_logits([[0, 1], [2, 1]], 3), focus, "tt")
    assert tt.flatten().tolist() == pytest.approx([0.0, 0.6, 1.0, 0.2])
    ft = collaborate(_logits([[0, 1], [1, 0]], 2), focus, "ft")  # mask + focus, clamped
    assert ft.flatten().tolist() == pytest.approx([0.3, 1.0, 1.0, 0.2])
    bt = collaborate(_logits([[0, 1], [1, 0]], 2), focus, "bt")  # mask - focus, clamped
    assert bt.flatten().tolist() == pytest.approx([0.0, 0.4, 0.1, 0.0])


@pytest.mark.parametrize("rosta", ["tt", "ft", "bt"])
def test_targets_fuse_back_to_the_matte(rosta):
    """The glance and focus targets, fused with the RoSTa rule, give the ground truth exactly."""
    alpha = np.zeros((160, 160), np.float32)
    yy, xx = np.mgrid[0:160, 0:160]
    r = np.hypot(yy - 80, xx - 80)
    alpha[r < 40] = 1
    ring = (r >= 40) & (r < 55)
    alpha[ring] = (55 - r[ring]) / 15
    cls, trans, focus = glance_targets(alpha, rosta)
    n = 3 if rosta == "tt" else 2
    fused = collaborate(_logits(cls.tolist(), n), torch.from_numpy(focus)[None, None], rosta)
    np.testing.assert_allclose(fused[0, 0].numpy(), alpha, atol=1e-6)
    # the transition area covers every pixel with 0 < alpha < 1
    assert trans[(alpha > 0) & (alpha < 1)].min() == 1
    if rosta == "tt":
        assert set(np.unique(cls)) == {0, 1, 2}


def test_alpha_and_composition_loss_by_hand():
    p = torch.tensor([[[[0.0, 1.0]]]])
    g = torch.tensor([[[[0.5, 1.0]]]])
    assert float(alpha_loss(p, g)) == pytest.approx(0.25, abs=1e-5)
    w = torch.tensor([[[[1.0, 0.0]]]])
    assert float(alpha_loss(p, g, w)) == pytest.approx(0.5, abs=1e-5)
    fg = torch.ones(1, 3, 1, 2)
    bg = torch.zeros(1, 3, 1, 2)
    img = torch.full((1, 3, 1, 2), 0.5)
    # a F + (1 - a) B = a here: |0 - 0.5| and |1 - 0.5| -> mean 0.5
    assert float(composition_loss(p, fg, bg, img)) == pytest.approx(0.5, abs=1e-5)


def test_laplacian_pyramid_reconstructs_and_loss_sees_edges():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 64, 64)
    pyr = laplacian_pyramid(x, 5)
    assert len(pyr) == 6 and pyr[-1].shape[-1] == 2
    assert float(laplacian_loss(x, x)) == 0.0
    flat = torch.full((1, 1, 32, 32), 0.5)
    edge = flat.clone()
    edge[..., 16:] = 0.6
    shift = flat + 0.1
    # a constant offset lives only in the low-pass residual; an edge also in the band-pass levels
    lap_edge, lap_shift = float(laplacian_loss(edge, flat)), float(laplacian_loss(shift, flat))
    assert lap_edge > 0 and lap_shift > 0
    assert sum(float((a - b).abs().mean()) for a, b in zip(laplacian_pyramid(shift)[:-1], laplacian_pyramid(flat)[:-1])) < 1e-5


def test_fusion_runs_on_cpu_without_cuda():
    model = GFM("r34", "tt").eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 32, 32))
    assert out["fusion"].device.type == "cpu"
