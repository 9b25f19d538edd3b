"""Closed-form foreground estimation (Levin et al.) solved only where it matters.

pymatting's ``estimate_foreground_cf`` minimises, for each colour channel,

    sum_p (a_p F_p + (1 - a_p) B_p - I_p)^2
      + sum_{4 directions} sum_p (eps + |a_p - a_q|) ((F_p - F_q)^2 + (B_p - B_q)^2)

over every pixel. Where alpha is 1 the foreground is the photo, and where alpha is 0 it is
never blended, so here the same system is assembled and solved only for the pixels of the
transition band (0 < alpha < 1, dilated by ``margin``), with fixed values outside it: the
photo for F where alpha is 1 and for B where alpha is 0, the multi-level estimate for the
other (it is never blended there, but it is the boundary condition of pockets such as a
region of alpha 0.95 inside the foreground). Across the band's edge the smoothness weights
are eps (alpha is flat there), so the fixed values barely reach the transition pixels. The system is solved by conjugate
gradients preconditioned with an incomplete Cholesky factor of the band system only,
starting from the multi-level estimate.
"""
from __future__ import annotations

import cv2
import numpy as np
import scipy.sparse

REGULARIZATION = 1e-5


def transition_band(alpha: np.ndarray, margin: int) -> np.ndarray:
    """Boolean mask of 0 < alpha < 1, dilated by ``margin`` pixels (square neighbourhood)."""
    band = ((alpha > 0) & (alpha < 1)).astype(np.uint8)
    if margin > 0:
        band = cv2.dilate(band, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    return band.astype(bool)


def _band_system(alpha: np.ndarray, band: np.ndarray, eps: float):
    """The band system with F and B interleaved per pixel ([F_0, B_0, F_1, B_1, ...]: the
    incomplete Cholesky factor then stays local and sparse), and the edges from band pixels
    to fixed pixels (band index, fixed pixel, weight) that move the fixed values to the rhs."""
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
    diag = np.bincount(ip[ip >= 0], wgt[ip >= 0], minlength=m) + np.bincount(iq[iq >= 0], wgt[iq >= 0], minlength=m)
    both = (ip >= 0) & (iq >= 0)
    ab = a[flat_band]
    rows, cols, vals = [], [], []
    for off in (0, 1):  # the F (0) and B (1) copies of the smoothness term
        rows += [2 * ip[both] + off, 2 * iq[both] + off]
        cols += [2 * iq[both] + off, 2 * ip[both] + off]
        vals += [-wgt[both], -wgt[both]]
    k = np.arange(m)
    rows += [2 * k, 2 * k + 1, 2 * k, 2 * k + 1]
    cols += [2 * k, 2 * k + 1, 2 * k + 1, 2 * k]
    vals += [ab * ab + diag, (1 - ab) ** 2 + diag, ab * (1 - ab), ab * (1 - ab)]
    A = scipy.sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(2 * m, 2 * m))
    A.sum_duplicates()
    out_p = (ip >= 0) & (iq < 0)
    out_q = (iq >= 0) & (ip < 0)
    fixed = (np.concatenate([ip[out_p], iq[out_q]]), np.concatenate([q[out_p], p[out_q]]),
             np.concatenate([wgt[out_p], wgt[out_q]]))
    return A, flat_band, fixed, m


def estimate_foreground_cf_band(image: np.ndarray, alpha: np.ndarray, *, margin: int = 3,
                                regularization: float = REGULARIZATION, rtol: float = 1e-6,
                                discard_threshold: float = 1e-3,
                                return_background: bool = False):
    """Closed-form F (and B) as pymatting's ``estimate_foreground_cf``, solved on the band.

    ``image`` float in [0, 1] (HxWx3), ``alpha`` float in [0, 1] (HxW). Outside the band F is
    the image where alpha is 1 and B where alpha is 0; the rest is the multi-level estimate.
    """
    from pymatting import estimate_foreground_ml
    from pymatting.preconditioner.ichol import ichol
    from pymatting.solver.cg import cg

    image = np.asarray(image, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    if image.ndim != 3 or image.shape[:2] != alpha.shape:
        raise ValueError(f"image {image.shape} and alpha {alpha.shape} do not match")
    h, w, d = image.shape
    band = transition_band(alpha, margin)
    f0, b0 = estimate_foreground_ml(image, alpha, return_background=True)
    # Fixed values outside the band: the photo where it is what we want (F where alpha = 1,
    # B where alpha = 0), the multi-level estimate elsewhere. Holding B to the photo inside
    # the foreground would be wrong next to semi-transparent pockets (alpha 0.95, say).
    opaque = (alpha >= 1)[..., None]
    clear = (alpha <= 0)[..., None]
    fg = np.where(opaque, image, f0)
    bg = np.where(clear, image, b0)
    if not band.any():
        return (fg, bg) if return_background else fg
    A, flat_band, (side, other, wgt), m = _band_system(alpha, band, regularization)
    precondition = ichol(A.tocsc(), discard_threshold=discard_threshold)
    a = alpha.ravel()[flat_band]
    flat_img = image.reshape(-1, d)
    flat_fg, flat_bg = fg.reshape(-1, d), bg.reshape(-1, d)
    for ch in range(d):
        i_band = flat_img[flat_band, ch]
        # fixed neighbours pull each unknown towards their fixed value
        pull_f = np.bincount(side, wgt * flat_fg[other, ch], minlength=m)
        pull_b = np.bincount(side, wgt * flat_bg[other, ch], minlength=m)
        b = np.empty(2 * m)
        b[0::2] = a * i_band + pull_f
        b[1::2] = (1 - a) * i_band + pull_b
        x0 = np.empty(2 * m)
        x0[0::2] = f0.reshape(-1, d)[flat_band, ch]
        x0[1::2] = b0.reshape(-1, d)[flat_band, ch]
        x = cg(A, b, x0=x0, M=precondition, rtol=rtol)
        flat_fg[flat_band, ch] = x[0::2]
        flat_bg[flat_band, ch] = x[1::2]
    fg = np.clip(fg, 0, 1)
    bg = np.clip(bg, 0, 1)
    return (fg, bg) if return_background else fg
