"""The closed-form band solver against the truth (issue #32): synthetic mattes with known F and
B (a veil, a ramp, hair-like strands, pockets of alpha 0.95-0.99 inside a foreground), beside
the multi-level estimate and pymatting's full closed-form solve; the system it claims to solve,
solved; a warning when CG gives up.

Errors are in grey levels (0-255) over the fractional pixels (0 < alpha < 1), weighted by alpha:
what the composite shows of F. The bounds sit between the figures measured with this code and
today's (before the issue): those differ by far more than any processor's rounding (the solves
are float64; CG stops on a true residual of 1e-8 or tighter), so the bounds hold everywhere.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from rssn.closed_form_band import estimate_foreground_cf_band


def _texture(n: int, seed: int, amp: float) -> np.ndarray:
    """Smooth random colour texture (3 px features), zero mean, std amp / 2."""
    t = cv2.GaussianBlur(np.random.default_rng(seed).normal(size=(n, n, 3)), (0, 0), 2.0)
    return t / t.std() * amp / 2


def _grid(n: int):
    return np.mgrid[0:n, 0:n] / (n - 1)


def veil(n: int = 128, textured: bool = False):
    """alpha 0.5 in a ring around an opaque disc (radius 20 px, veil to 50 px); F and B smooth
    gradients, B with a texture when ``textured``."""
    y, x = _grid(n)
    r = np.hypot(x - 0.5, y - 0.5) * n
    a = np.where(r < 20, 1.0, np.where(r < 50, 0.5, 0.0))
    F = np.dstack([0.8 - 0.4 * x, 0.3 + 0.4 * y, 0.5 + 0.2 * x * y])
    B = np.dstack([0.2 + 0.5 * y, 0.7 - 0.3 * x, 0.3 + 0.3 * np.sin(3 * x)]) + (_texture(n, 0, 0.25) if textured else 0)
    return a, F, np.clip(B, 0, 1)


def ramp(n: int = 128):
    """alpha rising linearly from 0 to 1 over 60 % of the width."""
    y, x = _grid(n)
    a = np.clip((x - 0.2) / 0.6, 0, 1)
    F = np.dstack([0.9 - 0.3 * y, 0.4 + 0.2 * x, 0.2 + 0.3 * y])
    B = np.dstack([0.1 + 0.3 * x, 0.6 - 0.2 * y, 0.7 - 0.4 * x * y])
    return a, F, B


def strands(n: int = 128, seed: int = 0):
    """25 wavy Gaussian strands (1-3 px wide, peak alpha 0.5-1) hanging from an opaque top."""
    rng = np.random.default_rng(seed)
    y, x = _grid(n)
    a = np.zeros((n, n))
    a[: n // 3] = 1.0
    for k in range(25):
        cx, amp, width = rng.uniform(0, 1), rng.uniform(0.02, 0.08), rng.uniform(0.004, 0.012)
        xc = cx + amp * np.sin(6 * y + k)
        a = np.maximum(a, np.exp(-(((x - xc) / width) ** 2)) * (y < rng.uniform(0.6, 0.95)) * rng.uniform(0.5, 1))
    a = np.clip(a, 0, 1)
    a[a < 1e-3] = 0
    F = np.dstack([0.6 + 0.2 * x, 0.45 + 0.1 * y, 0.3 + 0 * x])
    B = np.dstack([0.2 + 0.6 * y, 0.5 - 0.3 * x, 0.8 - 0.5 * x * y])
    return a, F, B


def pockets(n: int = 128, seed: int = 0):
    """An opaque disc (soft 4 px edge) with 8 small pockets of alpha 0.953-0.99 well inside it,
    F lightly and B strongly textured: the GT02 situation with a known answer."""
    rng = np.random.default_rng(seed)
    y, x = _grid(n)
    r = np.hypot(x - 0.5, y - 0.5) * n
    a = np.clip((48 - r) / 4, 0, 1)
    for _ in range(8):
        cy, cx = rng.uniform(0.3, 0.7, 2) * n
        rr = np.hypot(np.arange(n)[:, None] - cy, np.arange(n)[None] - cx)
        blob = np.clip((rng.uniform(2, 4) - rr) / 1.5, 0, 1)
        a = np.minimum(a, 1 - blob * rng.uniform(0.008, 0.047))
    F = np.clip(np.dstack([0.8 - 0.4 * x, 0.3 + 0.4 * y, 0.5 + 0.2 * x * y]) + _texture(n, 1, 0.1), 0, 1)
    B = np.clip(np.dstack([0.2 + 0.5 * y, 0.7 - 0.3 * x, 0.3 + 0.3 * np.sin(3 * x)]) + _texture(n, 0, 0.25), 0, 1)
    return a, F, B


def _error(f: np.ndarray, F: np.ndarray, a: np.ndarray, region: np.ndarray) -> float:
    return float((a[..., None] * np.abs(f - F))[region].mean() * 255)


# case: (matte, region scored, bound for the band solve). Measured (band now / band before the
# issue / multi-level / pymatting full solve at rtol 1e-10):
#   veil           0.38 / 1.20 / 1.24 / 0.39
#   textured veil  6.15 / 7.00 / 7.31 / 6.16   (unweighted: 12.3 / 14.0 / 14.6 / 12.3)
#   ramp           3.00 / 3.01 / 3.61 / 2.99
#   strands        0.04 / 0.04 / 0.15 / 0.04
#   pockets        0.93 / 2.32 / 0.66 / 1.59   (pocket pixels, alpha 0.95-1, only)
CASES = {
    "veil": (lambda: veil(), "fractional", 0.6),
    "textured-veil": (lambda: veil(textured=True), "fractional", 6.6),
    "ramp": (ramp, "fractional", 3.2),
    "strands": (strands, "fractional", 0.08),
    "pockets": (pockets, "pockets", 1.4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_band_solve_against_the_truth(case):
    from pymatting import estimate_foreground_ml

    make, where, bound = CASES[case]
    a, F, B = make()
    image = a[..., None] * F + (1 - a[..., None]) * B
    region = (a > 0) & (a < 1) if where == "fractional" else (a > 0.95) & (a < 1)
    band = _error(estimate_foreground_cf_band(image, a), F, a, region)
    ml = _error(estimate_foreground_ml(image, a), F, a, region)
    print(f"{case}: band {band:.2f}, multi-level {ml:.2f} grey levels from the true F")
    assert band <= bound, band
    if where == "fractional":  # in pockets the multi-level estimate is closer still (see the table)
        assert band <= ml + 0.05, (band, ml)  # never worse than its own starting point


@pytest.mark.slow
@pytest.mark.parametrize("case", ["veil", "textured-veil", "pockets"])
def test_band_solve_beside_the_full_solve_against_the_truth(case):
    """pymatting's full closed-form solve on the same synthetic mattes: the band solve is as
    close to the truth (within 0.1 grey), and closer in pockets, where the full system leaves B
    almost free."""
    from pymatting import estimate_foreground_cf

    make, where, _ = CASES[case]
    a, F, B = make()
    image = a[..., None] * F + (1 - a[..., None]) * B
    region = (a > 0) & (a < 1) if where == "fractional" else (a > 0.95) & (a < 1)
    band = _error(estimate_foreground_cf_band(image, a), F, a, region)
    full = _error(estimate_foreground_cf(image, a, rtol=1e-10), F, a, region)
    print(f"{case}: band {band:.2f}, full {full:.2f}")
    assert band <= full + 0.1, (band, full)


def test_band_solve_solves_its_own_system():
    """On the veil the multi-level start already meets rtol 1e-6 (CG stopped after 1-3
    iterations, F up to 21 grey from the system's solution). Now F is within 0.1 grey of a
    direct sparse solve of the very same system, and the true residual meets the tolerance."""
    import scipy.sparse.linalg

    from rssn.closed_form_band import CGStats, band_problem, default_rtol

    a, F, B = veil()
    image = a[..., None] * F + (1 - a[..., None]) * B
    prob = band_problem(image, a)
    direct = scipy.sparse.linalg.spsolve(prob.A.tocsc(), prob.b)
    stats = CGStats()
    f, b = estimate_foreground_cf_band(image, a, return_background=True, stats=stats)
    m = int(prob.flat_band.sum())
    assert default_rtol(m, a.size) == 1e-10  # the veil is 48 % of the image
    got = np.empty_like(direct)
    got[0::2] = f.reshape(-1, 3)[prob.flat_band]
    got[1::2] = b.reshape(-1, 3)[prob.flat_band]
    inside = (direct >= 0) & (direct <= 1)  # the result is clipped to [0, 1]
    assert np.abs(got - direct)[inside].max() * 255 < 0.1
    assert stats.iterations > 3 and stats.relative_residual.max() < 1e-10


def test_cg_that_hits_maxiter_warns():
    from rssn.closed_form_band import CGStats

    a, F, B = veil()
    image = a[..., None] * F + (1 - a[..., None]) * B
    stats = CGStats()
    with pytest.warns(RuntimeWarning, match="not converged"):
        estimate_foreground_cf_band(image, a, maxiter=2, stats=stats)
    assert stats.hit_maxiter and stats.iterations == 2


def test_cg_reports_the_true_residual():
    """Convergence is judged on B - A X computed afresh, not on the recurrence; the reported
    figure is that true residual, checked here independently."""
    import scipy.sparse
    from pymatting.preconditioner.ichol import ichol

    from rssn.closed_form_band import CGStats, cg_columns

    n = 200
    A = scipy.sparse.diags([-np.ones(n - 1), 2.01 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1]).tocsr()
    rng = np.random.default_rng(0)
    B = A @ rng.normal(size=(n, 2))
    stats = CGStats()
    X = cg_columns(A, B, np.zeros_like(B), ichol(A.tocsc(), discard_threshold=1e-1), rtol=1e-12, stats=stats)
    true = np.linalg.norm(B - A @ X, axis=0) / np.linalg.norm(B, axis=0)
    np.testing.assert_allclose(stats.relative_residual, true, rtol=1e-6)
    assert true.max() < 1e-12 and not stats.hit_maxiter


@pytest.mark.slow
def test_gt02_pockets_against_the_full_solve():
    """GT02 at 270 px: small pockets of alpha 0.953-0.992 inside the foreground, where the band
    solve once differed from pymatting's converged full solve by up to 16.5 grey levels (B
    reached -7.9 before clipping). Now within 3 (measured 1.97) anywhere, blended."""
    from pymatting import estimate_foreground_cf

    from .conftest import shared

    am = shared("alphamatting")
    img = cv2.imread(str(am / "image" / "GT02.png"))[..., ::-1]
    a = cv2.imread(str(am / "alpha" / "GT02.png"), cv2.IMREAD_GRAYSCALE)
    size = (round(img.shape[1] * 270 / img.shape[0]), 270)
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA) / 255.0
    a = cv2.resize(a, size, interpolation=cv2.INTER_AREA) / 255.0
    full = estimate_foreground_cf(img, a, rtol=1e-10)
    f = estimate_foreground_cf_band(img, a)
    d = a[..., None] * np.abs(f - full) * 255
    pocket = (a > 0.95) & (a < 1)
    print(f"GT02 270 px: max {d.max():.2f}, in pockets {d[pocket].max():.2f}")
    assert d.max() <= 3.0, d.max()


def test_black_channel_needs_no_iterations(recwarn):
    """A colour channel that is 0 everywhere makes a zero right-hand side: its answer is 0 at
    once (it used to iterate to maxiter, and would now warn)."""
    from rssn.closed_form_band import CGStats

    a, F, B = ramp(64)
    image = a[..., None] * F + (1 - a[..., None]) * B
    image[..., 2] = 0
    stats = CGStats()
    f = estimate_foreground_cf_band(image, a, stats=stats)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert stats.iterations < 100 and not stats.hit_maxiter
    assert f[..., 2].max() == 0
