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
"""
from __future__ import annotations

import cv2
import numpy as np
import scipy.sparse
from numba import njit

REGULARIZATION = 1e-5


def transition_band(alpha: np.ndarray, margin: int) -> np.ndarray:
    """Boolean mask of 0 < alpha < 1, dilated by ``margin`` pixels (square neighbourhood)."""
    band = ((alpha > 0) & (alpha < 1)).astype(np.uint8)
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


def cg_columns(A, B: np.ndarray, X0: np.ndarray, factor, rtol: float, maxiter: int = 10000) -> np.ndarray:
    """Preconditioned conjugate gradients for A X = B, every column its own CG (as
    pymatting's ``cg`` would run it, stopping at ||r|| < rtol ||b||), run in lockstep so each
    iteration reads A and the incomplete Cholesky factor once for all columns."""
    Lv, Lr, Lp = factor.Ltuple
    Lr, Lp = Lr.astype(np.int64, copy=False), Lp.astype(np.int64, copy=False)

    def precondition(R: np.ndarray) -> np.ndarray:
        Z = np.array(R, order="C")  # a contiguous copy, solved in place
        _ichol_solve_inplace(Lv, Lr, Lp, Z)
        return Z

    X = X0.copy()
    R = B - A @ X
    limit = rtol**2 * np.einsum("ij,ij->j", B, B)  # on squared norms
    active = np.einsum("ij,ij->j", R, R) >= limit
    Z = precondition(R)
    P = Z.copy()
    rz = np.einsum("ij,ij->j", R, Z)
    for _ in range(maxiter):
        if not active.any():
            break
        AP = A @ P
        pap = np.einsum("ij,ij->j", P, AP)
        step = np.divide(rz, pap, out=np.zeros_like(rz), where=active & (pap != 0))
        X += step * P
        R -= step * AP
        active &= np.einsum("ij,ij->j", R, R) >= limit
        Z = precondition(R)
        rz_new = np.einsum("ij,ij->j", R, Z)
        beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=active & (rz != 0))
        rz = rz_new
        P = Z + beta * P
    return X


def estimate_foreground_cf_band(image: np.ndarray, alpha: np.ndarray, *, margin: int = 3,
                                regularization: float = REGULARIZATION, rtol: float = 1e-6,
                                discard_threshold: float = 3e-4,
                                return_background: bool = False):
    """Closed-form F (and B) as pymatting's ``estimate_foreground_cf``, solved on the band.

    ``image`` float in [0, 1] (HxWx3), ``alpha`` float in [0, 1] (HxW). Outside the band F is
    the image where alpha is 1 and B where alpha is 0; the rest (never blended) is the
    multi-level estimate.
    """
    from pymatting import estimate_foreground_ml
    from pymatting.preconditioner.ichol import ichol

    image = np.asarray(image, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    if image.ndim != 3 or image.shape[:2] != alpha.shape:
        raise ValueError(f"image {image.shape} and alpha {alpha.shape} do not match")
    d = image.shape[2]
    band = transition_band(alpha, margin)
    f0, b0 = estimate_foreground_ml(image, alpha, return_background=True)
    # Outside the band: the photo for F where alpha = 1 and for B where alpha = 0 (the band's
    # fixed boundary); the multi-level estimate for the rest, which is never blended.
    opaque = (alpha >= 1)[..., None]
    clear = (alpha <= 0)[..., None]
    fg = np.where(opaque, image, f0)
    bg = np.where(clear, image, b0)
    if not band.any():
        return (fg, bg) if return_background else fg
    A, flat_band, (side_f, other_f, wgt_f), (side_b, other_b, wgt_b), m = _band_system(alpha, band, regularization)
    factor = ichol(A.tocsc(), discard_threshold=discard_threshold)
    a = alpha.ravel()[flat_band]
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
    x = cg_columns(A, b, x0, factor, rtol)
    flat_fg[flat_band] = x[0::2]
    flat_bg[flat_band] = x[1::2]
    fg = np.clip(fg, 0, 1)
    bg = np.clip(bg, 0, 1)
    return (fg, bg) if return_background else fg
