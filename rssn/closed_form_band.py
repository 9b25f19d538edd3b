"""Closed-form foreground estimation (Levin et al.) solved only where it matters.

pymatting's ``estimate_foreground_cf`` minimises, for each colour channel,

    sum_p (a_p F_p + (1 - a_p) B_p - I_p)^2
      + sum_{4 directions} sum_p (eps + |a_p - a_q|) ((F_p - F_q)^2 + (B_p - B_q)^2)

over every pixel. Where alpha is 1 the foreground is the photo, and where alpha is 0 it is
never blended, so here the same system is assembled and solved only for the pixels of the
transition band (0 < alpha < 1, dilated by ``margin``). Outside the band, F where alpha is 1
and B where alpha is 0 are held at the photo (their data term pins them there in the full
system too). B where alpha is 1 and F where alpha is 0 have no data term: in the full system
they are harmonic functions that follow the band at a cost of eps per edge, so the band sees
them as a free boundary (those edges are left out) rather than as fixed values. Pinning them,
to the multi-level estimate say, moved small pockets of alpha 0.95-0.99 inside a foreground
by up to 13 grey levels away from the converged full solve.

The system, F and B interleaved per pixel, is solved by conjugate gradients preconditioned
with an incomplete Cholesky factor of the band system only, starting from the multi-level
estimate, the three colour channels in lockstep (one pass over the factor serves all three).
It is solved, not just improved: the multi-level start often meets a tolerance of 1e-6 at
once while the system is badly conditioned (in a veil of alpha 0.5 only eps ties F to B), so
the tolerance is 1e-8 (1e-10 when the band is a quarter of the image or more), convergence is
judged on the true residual, and a CG that reaches ``maxiter`` warns.

Where alpha is within 0.05 of 1, B has almost no data term ((1 - alpha)^2), and with the free
boundary a small pocket of alpha 0.95-0.99 inside a foreground could run away (B of -7.9 on
GT02, F 16.5 grey from the full solve); likewise F where alpha is near 0. A weak prior
(1e-6, a tenth of eps) pulls them towards the multi-level estimate. On synthetic mattes with
a known answer (tests/test_band_truth.py) this brings F in pockets closer to the truth than
the full solve. On real photos it moves near-opaque regions with large B gaps: GT16 at 360 px
is 1.13 grey levels (99.9th percentile of alpha |F - F_full|) from the converged full solve,
against 0.06 without the prior.

Memory: about 1 KB per band pixel (measured as peak resident memory on full-band images of
57,600 and 129,600 pixels: 988 and 996 bytes per pixel), so an image that is all band at 1080p
needs about 2 GB per worker; a typical matte (5-35 % band) 0.1-0.7 GB.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.sparse
from numba import njit

REGULARIZATION = 1e-5
PRIOR_WEIGHT = 1e-6  # a tenth of the smoothness eps: holds pockets, moves little else
PRIOR_ALPHA = 0.05
RTOL = 1e-8
RTOL_LARGE_BAND = 1e-10
LARGE_BAND_SHARE = 0.25


def transition_band(alpha: np.ndarray, margin: int) -> np.ndarray:
    """Boolean mask of 0 < alpha < 1, dilated by ``margin`` pixels (square neighbourhood)."""
    band: np.ndarray = ((alpha > 0) & (alpha < 1)).astype(np.uint8)
    if margin > 0:
        band = cv2.dilate(band, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    return band.astype(bool)


def _band_system(alpha: np.ndarray, band: np.ndarray, eps: float):
    """The band system with F and B interleaved per pixel ([F_0, B_0, F_1, B_1, ...]: the
    incomplete Cholesky factor then stays local and sparse), and for F and for B the edges from
    band pixels to fixed pixels (band index, fixed pixel, weight) that move the fixed values to
    the right-hand side.

    Outside the band alpha is 0 or 1. F next to an opaque pixel and B next to a clear one meet
    fixed values (the photo). B next to an opaque pixel is, in the full system, a harmonic
    function with no data term that follows the band at a cost of eps per edge, so that edge is
    left out (a free boundary), and likewise F next to a clear pixel.
    """
    h, w = alpha.shape
    flat_band = band.ravel()
    m = int(flat_band.sum())
    idx = np.full(h * w, -1, np.int64)
    idx[flat_band] = np.arange(m)
    a = alpha.ravel().astype(np.float64)
    pix = np.arange(h * w).reshape(h, w)
    p = np.concatenate([pix[:, :-1].ravel(), pix[:-1, :].ravel()])
    q = np.concatenate([pix[:, 1:].ravel(), pix[1:, :].ravel()])
    ip, iq = idx[p], idx[q]
    keep = (ip >= 0) | (iq >= 0)
    p, q, ip, iq = p[keep], q[keep], ip[keep], iq[keep]
    # each undirected edge appears in two of pymatting's four directions: its weight counts twice
    wgt = 2.0 * (eps + np.abs(a[p] - a[q]))
    both = (ip >= 0) & (iq >= 0)
    diag = np.bincount(ip[both], wgt[both], minlength=m) + np.bincount(iq[both], wgt[both], minlength=m)
    out_p = (ip >= 0) & (iq < 0)
    out_q = (iq >= 0) & (ip < 0)
    side = np.concatenate([ip[out_p], iq[out_q]])
    other = np.concatenate([q[out_p], p[out_q]])
    w_out = np.concatenate([wgt[out_p], wgt[out_q]])
    fixed = []
    for holds in ((a[other] >= 1), (a[other] <= 0)):  # F, then B
        fixed.append((side[holds], other[holds], w_out[holds]))
    diag_f = diag + np.bincount(fixed[0][0], fixed[0][2], minlength=m)
    diag_b = diag + np.bincount(fixed[1][0], fixed[1][2], minlength=m)
    ab = a[flat_band]
    rows, cols, vals = [], [], []
    for off in (0, 1):  # the F (0) and B (1) copies of the smoothness term
        rows += [2 * ip[both] + off, 2 * iq[both] + off]
        cols += [2 * iq[both] + off, 2 * ip[both] + off]
        vals += [-wgt[both], -wgt[both]]
    k = np.arange(m)
    rows += [2 * k, 2 * k + 1, 2 * k, 2 * k + 1]
    cols += [2 * k, 2 * k + 1, 2 * k + 1, 2 * k]
    vals += [ab * ab + diag_f, (1 - ab) ** 2 + diag_b, ab * (1 - ab), ab * (1 - ab)]
    A = scipy.sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(2 * m, 2 * m))
    A.sum_duplicates()
    return A, flat_band, fixed[0], fixed[1], m


@njit("void(f8[:], i8[:], i8[:], f8[:, ::1])", cache=True, nogil=True)
def _ichol_solve_inplace(data, indices, indptr, x):  # pragma: no cover - compiled
    """x <- (L L^T)^-1 x for a csc lower factor L and several right-hand sides (the columns
    of x, rows contiguous): one pass over L serves all of them."""
    n, k = x.shape
    for j in range(n):
        d = data[indptr[j]]
        for c in range(k):
            x[j, c] /= d
        for p in range(indptr[j] + 1, indptr[j + 1]):
            i, v = indices[p], data[p]
            for c in range(k):
                x[i, c] -= v * x[j, c]
    for i in range(n - 1, -1, -1):
        for p in range(indptr[i] + 1, indptr[i + 1]):
            j, v = indices[p], data[p]
            for c in range(k):
                x[i, c] -= v * x[j, c]
        d = data[indptr[i]]
        for c in range(k):
            x[i, c] /= d


class CGStats:
    """What :func:`cg_columns` did: iterations, restarts from the true residual, and the final
    true relative residual of each column (||b - A x|| / ||b||)."""

    def __init__(self) -> None:
        self.iterations = 0
        self.restarts = 0
        self.relative_residual = np.zeros(0)
        self.hit_maxiter = False


def cg_columns(A, B: np.ndarray, X0: np.ndarray, factor, rtol: float, maxiter: int = 10000,
               stats: CGStats | None = None) -> np.ndarray:
    """Preconditioned conjugate gradients for A X = B, every column its own CG (as
    pymatting's ``cg`` would run it, stopping at ||r|| < rtol ||b||), run in lockstep so each
    iteration reads A and the incomplete Cholesky factor once for all columns.

    Convergence is judged by the true residual B - A X: when the recurrence says a column has
    converged, its true residual is computed, and a column that has not really converged
    restarts from it (rounding lets the two drift apart on ill-conditioned systems). A column
    still above the tolerance after ``maxiter`` iterations raises a RuntimeWarning.
    """
    Lv, Lr, Lp = factor.Ltuple
    Lr, Lp = Lr.astype(np.int64, copy=False), Lp.astype(np.int64, copy=False)
    stats = stats if stats is not None else CGStats()

    def precondition(R: np.ndarray) -> np.ndarray:
        Z = np.array(R, order="C")  # a contiguous copy, solved in place
        _ichol_solve_inplace(Lv, Lr, Lp, Z)
        return Z

    def sq(M: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->j", M, M)

    X = X0.copy()
    zero = sq(B) == 0  # A X = 0 has the answer 0 (A is positive definite): nothing to iterate
    X[:, zero] = 0
    R = B - A @ X
    limit = rtol**2 * sq(B)  # on squared norms
    active = (sq(R) >= limit) & ~zero
    Z = precondition(R)
    P = Z.copy()
    rz = np.einsum("ij,ij->j", R, Z)
    it = 0
    while True:
        while it < maxiter and active.any():
            it += 1
            AP = A @ P
            pap = np.einsum("ij,ij->j", P, AP)
            step = np.divide(rz, pap, out=np.zeros_like(rz), where=active & (pap != 0))
            X += step * P
            R -= step * AP
            active &= sq(R) >= limit
            Z = precondition(R)
            rz_new = np.einsum("ij,ij->j", R, Z)
            beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=active & (rz != 0))
            rz = rz_new
            P = Z + beta * P
        R_true = B - A @ X
        again = (sq(R_true) >= limit) & ~zero
        if not again.any() or it >= maxiter or stats.restarts >= 20:
            break
        # the recurrence drifted from the true residual: restart those columns from it
        stats.restarts += 1
        R[:, again] = R_true[:, again]
        Z = precondition(R)
        P = Z.copy()
        rz = np.einsum("ij,ij->j", R, Z)
        active = again
    norm_b = np.sqrt(sq(B))
    stats.iterations = it
    stats.relative_residual = np.sqrt(sq(R_true)) / np.where(norm_b > 0, norm_b, 1)
    stats.hit_maxiter = bool(again.any())
    if again.any():
        warnings.warn(f"closed-form band: conjugate gradients stopped after {it} iterations (maxiter {maxiter}) "
                      f"with relative residual {stats.relative_residual.max():.2e} above rtol {rtol:.0e}; "
                      "the foreground colours are not converged", RuntimeWarning, stacklevel=2)
    return X


@dataclass
class BandProblem:
    """The band system A x = b (F and B interleaved per band pixel, one column per colour
    channel), its multi-level starting point ``x0``, and the full-size F and B it fills in."""

    A: scipy.sparse.csr_matrix | None  # A, b and x0 are None when there is no band
    b: np.ndarray | None
    x0: np.ndarray | None
    flat_band: np.ndarray
    fg: np.ndarray
    bg: np.ndarray


def band_problem(image: np.ndarray, alpha: np.ndarray, *, margin: int = 3, regularization: float = REGULARIZATION,
                 prior_weight: float = PRIOR_WEIGHT, prior_alpha: float = PRIOR_ALPHA) -> BandProblem:
    """Assemble the band system of :func:`estimate_foreground_cf_band` (A, b, x0 None: no band).

    The weak prior adds ``prior_weight * (F - F_ml)^2`` where alpha < ``prior_alpha`` and
    ``prior_weight * (B - B_ml)^2`` where 1 - alpha < ``prior_alpha``, towards the multi-level
    estimate: there the data term (alpha^2 or (1 - alpha)^2) barely holds the colour, and a
    pocket of alpha 0.95-0.99 inside a foreground could otherwise run away (B of -7.9).
    """
    from pymatting import estimate_foreground_ml

    image = np.asarray(image, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    if image.ndim != 3 or image.shape[:2] != alpha.shape:
        raise ValueError(f"image {image.shape} and alpha {alpha.shape} do not match")
    d = image.shape[2]
    band = transition_band(alpha, margin)
    f0, b0 = estimate_foreground_ml(image, alpha, return_background=True)
    # Outside the band: the photo for F where alpha = 1 and for B where alpha = 0 (the band's
    # fixed boundary); the multi-level estimate for the rest, which is never blended.
    fg = np.where((alpha >= 1)[..., None], image, f0)
    bg = np.where((alpha <= 0)[..., None], image, b0)
    if not band.any():
        return BandProblem(None, None, None, band.ravel(), fg, bg)
    A, flat_band, (side_f, other_f, wgt_f), (side_b, other_b, wgt_b), m = _band_system(alpha, band, regularization)
    a = alpha.ravel()[flat_band]
    w_prior = np.empty(2 * m)
    w_prior[0::2] = prior_weight * (a < prior_alpha)
    w_prior[1::2] = prior_weight * (1 - a < prior_alpha)
    if prior_weight > 0:
        A = (A + scipy.sparse.diags(w_prior)).tocsr()
    flat_img = image.reshape(-1, d)
    flat_fg, flat_bg = fg.reshape(-1, d), bg.reshape(-1, d)
    # fixed neighbours pull each unknown towards their fixed value
    pull_f = np.stack([np.bincount(side_f, wgt_f * flat_fg[other_f, ch], minlength=m) for ch in range(d)], 1)
    pull_b = np.stack([np.bincount(side_b, wgt_b * flat_bg[other_b, ch], minlength=m) for ch in range(d)], 1)
    i_band = flat_img[flat_band]
    b = np.empty((2 * m, d))
    b[0::2] = a[:, None] * i_band + pull_f
    b[1::2] = (1 - a)[:, None] * i_band + pull_b
    x0 = np.empty((2 * m, d))
    x0[0::2] = f0.reshape(-1, d)[flat_band]
    x0[1::2] = b0.reshape(-1, d)[flat_band]
    b += w_prior[:, None] * x0
    return BandProblem(A, b, x0, flat_band, fg, bg)


def default_rtol(band_pixels: int, image_pixels: int) -> float:
    """CG tolerance: 1e-8, and 1e-10 when the band is at least a quarter of the image. The
    multi-level start often meets 1e-6 already (1-3 iterations) while the system is badly
    conditioned (a veil of alpha 0.5 has only eps tying F to B): at 1e-6 F was up to 21 grey
    from the direct solve of the same system, at 1e-8 1.5, at 1e-10 0.02."""
    return RTOL_LARGE_BAND if band_pixels >= LARGE_BAND_SHARE * image_pixels else RTOL


def estimate_foreground_cf_band(image: np.ndarray, alpha: np.ndarray, *, margin: int = 3,
                                regularization: float = REGULARIZATION, rtol: float | None = None,
                                discard_threshold: float = 3e-4, prior_weight: float = PRIOR_WEIGHT,
                                prior_alpha: float = PRIOR_ALPHA, maxiter: int = 10000,
                                return_background: bool = False, stats: CGStats | None = None):
    """Closed-form F (and B) as pymatting's ``estimate_foreground_cf``, solved on the band, with
    a weak prior towards the multi-level estimate where alpha is within ``prior_alpha`` of 0
    (F) or 1 (B) (see :func:`band_problem`).

    ``image`` float in [0, 1] (HxWx3), ``alpha`` float in [0, 1] (HxW). Outside the band F is
    the image where alpha is 1 and B where alpha is 0; the rest (never blended) is the
    multi-level estimate. ``rtol`` None: :func:`default_rtol`. ``stats`` (a :class:`CGStats`)
    receives the iterations and the true residual. Memory: about 1 KB per band pixel (the
    system, its incomplete Cholesky factor and the CG vectors), so a 1080p image that is all
    band needs about 2 GB.
    """
    from pymatting.preconditioner.ichol import ichol

    prob = band_problem(image, alpha, margin=margin, regularization=regularization, prior_weight=prior_weight,
                        prior_alpha=prior_alpha)
    fg, bg = prob.fg, prob.bg
    if prob.A is not None and prob.b is not None and prob.x0 is not None:  # all or none
        d = fg.shape[2]
        m = int(prob.flat_band.sum())
        factor = ichol(prob.A.tocsc(), discard_threshold=discard_threshold)
        if rtol is None:
            rtol = default_rtol(m, prob.flat_band.size)
        x = cg_columns(prob.A, prob.b, prob.x0, factor, rtol, maxiter, stats)
        flat_fg, flat_bg = fg.reshape(-1, d), bg.reshape(-1, d)
        flat_fg[prob.flat_band] = x[0::2]
        flat_bg[prob.flat_band] = x[1::2]
    fg = np.clip(fg, 0, 1)
    bg = np.clip(bg, 0, 1)
    return (fg, bg) if return_background else fg
