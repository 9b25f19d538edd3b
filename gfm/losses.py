"""Supervision targets from a ground-truth matte and the GFM losses.

Targets (numpy, from the whole matte before any crop): TT trimap by dilation and erosion with
kernel 25; FT foreground mask by erosion with kernel 50; BT mask by dilation with kernel 50.
The focus target is chosen so that ``collaborate(mask, focus_target) == alpha`` exactly for
every RoSTa.

Loss: L = L_CE (glance) + L_FD (focus: alpha + Laplacian, where the glance map leaves alpha
undecided) + L_CM (collaborative matte: alpha + Laplacian + composition, whole image). The
authors weight the four groups 0.25 each; with Adam a common factor changes nothing.

Two Laplacian pyramids (``laplacian=``): ``textbook`` (default; Burt and Adelson: separable 5x5
binomial kernel, reflect padding, band = level - upsampled next level) and ``authors`` (the
authors' core/evaluate.py: a 5x5 kernel that is the *sum* of two 1-D Gaussians, replicate
padding, band = level - its blur, next level = 2x2 average of the blur). README.md's
"Departures from the paper and from the authors' code" lists every difference.
"""
from __future__ import annotations

from typing import cast

import cv2
import numpy as np
import torch
import torch.nn.functional as F

TT_KERNEL, FT_BT_KERNEL = 25, 50
EPS = 1e-6


def _kernel(k: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def glance_targets(alpha: np.ndarray, rosta: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(glance class map int64, focus weight float32, focus target float32) for a whole matte.

    Compute them on the whole matte and crop them with the image: erosion at a crop edge would
    invent a transition band wherever opaque foreground touches it. At the matte's own border the
    morphology treats the outside as more of the same (OpenCV's default), so a foreground that
    fills the image edge is not eroded there either.

    The focus weight marks the pixels whose alpha the glance map leaves undecided, where the
    focus decoder is supervised:
    - TT: the trimap's unknown band (dilation minus erosion, kernel 25);
    - FT: pixels with alpha > 0 outside the eroded foreground F (kernel 50); the fusion there is
      F + focus, so focus must give alpha;
    - BT: pixels inside the dilated background-complement B (kernel 50) with alpha < 1; the fusion
      there is B - focus, so focus must give 1 - alpha.
    The paper's text calls all three "the transition area"; for FT and BT its band (B minus F)
    also covers pixels whose alpha is already 0 (FT) or 1 (BT) and is decided by the fusion loss,
    so supervising focus there only dilutes the focus loss. ``scale`` shrinks the kernels for
    mattes already shrunk from the training resolution.
    """
    a = alpha.astype(np.float32)
    opaque = (a >= 1.0).astype(np.uint8)
    nonzero = (a > 0.0).astype(np.uint8)
    if rosta == "tt":
        k = _kernel(max(1, round(TT_KERNEL * scale)))
        fg = cv2.erode(opaque, k) == 1
        bg = cv2.dilate(nonzero, k) == 0
        cls = np.ones(a.shape, np.int64)
        cls[fg], cls[bg] = 2, 0
        return cls, (cls == 1).astype(np.float32), a
    k = _kernel(max(1, round(FT_BT_KERNEL * scale)))
    if rosta == "ft":
        mask = cv2.erode(opaque, k)
        return mask.astype(np.int64), ((mask == 0) & (a > 0)).astype(np.float32), a
    if rosta == "bt":
        mask = cv2.dilate(nonzero, k)
        return mask.astype(np.int64), ((mask == 1) & (a < 1)).astype(np.float32), (1.0 - a) * mask
    raise ValueError(f"unknown RoSTa {rosta!r}")


def all_glance_targets(alpha: np.ndarray, rosta: str) -> dict[str, np.ndarray]:
    """Targets keyed for a batch: ``glance``/``transition``/``focus`` for one RoSTa, and for RIM
    the same three per RoSTa with the suffix ``_tt``, ``_ft``, ``_bt``."""
    if rosta != "rim":
        cls, weight, focus = glance_targets(alpha, rosta)
        return {"glance": cls, "transition": weight, "focus": focus}
    out = {}
    for r in ("tt", "ft", "bt"):
        cls, weight, focus = glance_targets(alpha, r)
        out.update({f"glance_{r}": cls, f"transition_{r}": weight, f"focus_{r}": focus})
    return out


def alpha_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Charbonnier (smooth L1-like) alpha loss, averaged over ``weight``."""
    err = torch.sqrt((pred - target) ** 2 + EPS**2)
    if weight is None:
        return err.mean()
    return (err * weight).sum() / (weight.sum() + EPS)


LAPLACIAN_KINDS = ("textbook", "authors")


def _gauss_kernel(channels: int, device, dtype) -> torch.Tensor:
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=device, dtype=dtype) / 16.0
    k = torch.outer(k1, k1)
    return k.expand(channels, 1, 5, 5).contiguous()


def authors_kernel() -> np.ndarray:
    """The authors' 5x5 blur (``build_gauss_kernel(size=5, sigma=1)``) in float64:
    k[i, j] = (g(i) + g(j)) / sum, g(t) = exp(-(t - 2)^2 / 2)^2 = exp(-(t - 2)^2). Their grid
    has two coordinates per cell and they *sum* the 1-D Gaussians of the two where a 2-D
    Gaussian multiplies them, so the kernel is a plus-shaped blur, not separable."""
    g = np.exp(-((np.arange(5, dtype=np.float64) - 2.0) ** 2))
    k = g[:, None] + g[None, :]
    return k / k.sum()


def _authors_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The authors' pyramid: band = level - blur(level) (replicate padding), next level = 2x2
    average pooling of the blur; always ``levels`` bands and the residual."""
    if min(x.shape[-2:]) < 2 ** levels:
        raise ValueError(f"the authors' Laplacian pyramid needs sides of at least {2 ** levels} px for {levels} "
                         f"levels, got {tuple(x.shape[-2:])}; train with a larger --crop or --laplacian textbook")
    c = x.shape[1]
    k = torch.from_numpy(authors_kernel()).to(device=x.device, dtype=x.dtype).expand(c, 1, 5, 5).contiguous()
    pyr, cur = [], x
    for _ in range(levels):
        blurred = F.conv2d(F.pad(cur, (2, 2, 2, 2), mode="replicate"), k, groups=c)
        pyr.append(cur - blurred)
        cur = F.avg_pool2d(blurred, 2)
    pyr.append(cur)
    return pyr


def laplacian_pyramid(x: torch.Tensor, levels: int = 5, kind: str = "textbook") -> list[torch.Tensor]:
    """Laplacian pyramid of NCHW ``x``: ``levels`` band-pass levels, finest first, then the
    low-pass residual. ``textbook``: 5x5 binomial kernel, reflect padding, band = level minus
    the upsampled next level (the bands add back up to ``x``; stops early below 3 px).
    ``authors``: :func:`_authors_pyramid`."""
    if kind == "authors":
        return _authors_pyramid(x, levels)
    if kind != "textbook":
        raise ValueError(f"unknown Laplacian pyramid {kind!r}; use one of {', '.join(LAPLACIAN_KINDS)}")
    k = _gauss_kernel(x.shape[1], x.device, x.dtype)
    pyr, cur = [], x
    for _ in range(levels):
        blurred = F.conv2d(F.pad(cur, (2, 2, 2, 2), mode="reflect"), k, groups=x.shape[1])
        down = blurred[..., ::2, ::2]
        up = torch.zeros_like(cur)
        up[..., ::2, ::2] = down * 4
        up = F.conv2d(F.pad(up, (2, 2, 2, 2), mode="reflect"), k, groups=x.shape[1])
        pyr.append(cur - up)
        cur = down
        if min(cur.shape[-2:]) < 3:
            break
    pyr.append(cur)
    return pyr


def laplacian_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, levels: int = 5,
                   kind: str = "textbook") -> torch.Tensor:
    """Sum over pyramid levels of the mean L1 difference (inputs masked by ``weight`` first)."""
    if weight is not None:
        pred, target = pred * weight, target * weight
    per_level = (F.l1_loss(a, b) for a, b in zip(laplacian_pyramid(pred, levels, kind),
                                                  laplacian_pyramid(target, levels, kind)))
    return cast(torch.Tensor, sum(per_level))  # a pyramid holds at least its residual: never sum's 0


def composition_loss(alpha_pred: torch.Tensor, alpha_gt: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """Eq. 7 of the paper: Charbonnier difference between C(alpha_pred) and C(alpha_gt), where
    C(a) = a F + (1 - a) B is made from the *same* F and B tensors (alphas N1HW, F and B N3HW,
    all in [0, 1]).

    Not against the training input: an RSSN composite carries noise that its stored (clean) F
    and B do not, and a photo differs from its closed-form F and B by their residual, so the
    input would put a floor under the loss at the true alpha and a gradient that pushes alpha
    to explain noise. Here the loss at alpha_gt is 3 * EPS (the Charbonnier floor of the three
    channels) and its gradient there is 0, whatever the input.

    Scale as the authors (and the paper's "/N, N the number of pixels"): summed over the colour
    channels, divided by the number of pixels (N * H * W), so the term is 3x a mean over every
    value (their 0-255 values divided by 255 give the same figure).
    """
    d = (alpha_pred - alpha_gt) * (fg - bg)  # C(alpha_pred) - C(alpha_gt), without the rounding of two blends
    return torch.sqrt(d ** 2 + EPS**2).sum(dim=1).mean()


def _head_terms(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], suffix: str = "",
                laplacian: str = "textbook") -> dict[str, torch.Tensor]:
    """L_CE (glance) + L_FD (focus alpha and Laplacian on the focus weight) for one RoSTa head."""
    w = batch["transition" + suffix]
    target = batch["focus" + suffix]
    return {
        "ce": F.cross_entropy(out["glance"].float(), batch["glance" + suffix]),
        "focus_alpha": alpha_loss(out["focus"].float(), target, w),
        "focus_lap": laplacian_loss(out["focus"].float(), target, w, kind=laplacian),
    }


def _fusion_terms(fusion: torch.Tensor, batch: dict[str, torch.Tensor], laplacian: str = "textbook") -> dict[str, torch.Tensor]:
    """L_CM on a collaborative matte: alpha and Laplacian over the whole image, plus composition
    where the sample has F and B (composites: the stored F and B; photos: closed-form F and B)."""
    fusion = fusion.float()
    terms = {"fusion_alpha": alpha_loss(fusion, batch["alpha"]),
             "fusion_lap": laplacian_loss(fusion, batch["alpha"], kind=laplacian)}
    has = batch["has_fgbg"].view(-1)
    if bool(has.any()):
        idx = has > 0
        terms["comp"] = composition_loss(fusion[idx], batch["alpha"][idx], batch["fg"][idx], batch["bg"][idx])
    else:
        terms["comp"] = torch.zeros((), device=fusion.device)
    return terms


def gfm_loss(out: dict, batch: dict[str, torch.Tensor], laplacian: str = "textbook") -> dict[str, torch.Tensor]:
    """Every loss term and their total ``loss`` = L_CE + L_FD + L_CM (Eq. 6 of the paper).

    For RIM (``out`` has ``heads``): the three RoSTa heads each with their own L_CE + L_FD + L_CM,
    plus L_CM on the RIM output; the reported terms are summed over the heads and RIM.
    ``laplacian``: the pyramid of the Laplacian terms (``textbook`` or ``authors``). The batch's
    ``fg`` and ``bg`` are the F and B of the composition term; the input image is not used.
    """
    if laplacian not in LAPLACIAN_KINDS:
        raise ValueError(f"unknown Laplacian pyramid {laplacian!r}; use one of {', '.join(LAPLACIAN_KINDS)}")
    if "heads" not in out:
        terms = {**_head_terms(out, batch, laplacian=laplacian), **_fusion_terms(out["fusion"], batch, laplacian)}
    else:
        terms = {}
        for r, head in out["heads"].items():
            for k, v in {**_head_terms(head, batch, f"_{r}", laplacian),
                         **_fusion_terms(head["fusion"], batch, laplacian)}.items():
                terms[k] = terms.get(k, 0) + v
        for k, v in _fusion_terms(out["fusion"], batch, laplacian).items():
            terms[k] = terms[k] + v
    terms["loss"] = cast(torch.Tensor, sum(terms.values()))  # terms is never empty: never sum's 0
    return terms
