"""Supervision targets from a ground-truth matte and the GFM losses.

Targets (numpy, from the whole matte before any crop): TT trimap by dilation and erosion with
kernel 25; FT foreground mask by erosion with kernel 50; BT mask by dilation with kernel 50.
The focus target is chosen so that ``collaborate(mask, focus_target) == alpha`` exactly for
every RoSTa.

Loss: L = L_CE (glance) + L_FD (focus: alpha + Laplacian, where the glance map leaves alpha
undecided) + L_CM (collaborative matte: alpha + Laplacian + composition, whole image). The
authors weight the four groups 0.25 each; with Adam a common factor changes nothing.
"""
from __future__ import annotations

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


def _gauss_kernel(channels: int, device, dtype) -> torch.Tensor:
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=device, dtype=dtype) / 16.0
    k = torch.outer(k1, k1)
    return k.expand(channels, 1, 5, 5).contiguous()


def laplacian_pyramid(x: torch.Tensor, levels: int = 5) -> list[torch.Tensor]:
    """Laplacian pyramid with a 5x5 Gaussian kernel (reflect padding)."""
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


def laplacian_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, levels: int = 5) -> torch.Tensor:
    """Sum over pyramid levels of the mean L1 difference (inputs masked by ``weight`` first)."""
    if weight is not None:
        pred, target = pred * weight, target * weight
    return sum(F.l1_loss(a, b) for a, b in zip(laplacian_pyramid(pred, levels), laplacian_pyramid(target, levels)))


def composition_loss(alpha: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Charbonnier difference between a F + (1 - a) B and the composite (all in [0, 1])."""
    comp = alpha * fg + (1 - alpha) * bg
    return torch.sqrt((comp - image) ** 2 + EPS**2).mean()


def _head_terms(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], suffix: str = "") -> dict[str, torch.Tensor]:
    """L_CE (glance) + L_FD (focus alpha and Laplacian on the focus weight) for one RoSTa head."""
    w = batch["transition" + suffix]
    target = batch["focus" + suffix]
    return {
        "ce": F.cross_entropy(out["glance"].float(), batch["glance" + suffix]),
        "focus_alpha": alpha_loss(out["focus"].float(), target, w),
        "focus_lap": laplacian_loss(out["focus"].float(), target, w),
    }


def _fusion_terms(fusion: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """L_CM on a collaborative matte: alpha and Laplacian over the whole image, plus composition
    where the sample has F and B (composites, or photos with closed-form F and B)."""
    fusion = fusion.float()
    terms = {"fusion_alpha": alpha_loss(fusion, batch["alpha"]), "fusion_lap": laplacian_loss(fusion, batch["alpha"])}
    has = batch["has_fgbg"].view(-1)
    if bool(has.any()):
        idx = has > 0
        terms["comp"] = composition_loss(fusion[idx], batch["fg"][idx], batch["bg"][idx], batch["image_raw"][idx])
    else:
        terms["comp"] = torch.zeros((), device=fusion.device)
    return terms


def gfm_loss(out: dict, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every loss term and their total ``loss`` = L_CE + L_FD + L_CM (Eq. 6 of the paper).

    For RIM (``out`` has ``heads``): the three RoSTa heads each with their own L_CE + L_FD + L_CM,
    plus L_CM on the RIM output; the reported terms are summed over the heads and RIM.
    """
    if "heads" not in out:
        terms = {**_head_terms(out, batch), **_fusion_terms(out["fusion"], batch)}
    else:
        terms = {}
        for r, head in out["heads"].items():
            for k, v in {**_head_terms(head, batch, f"_{r}"), **_fusion_terms(head["fusion"], batch)}.items():
                terms[k] = terms.get(k, 0) + v
        for k, v in _fusion_terms(out["fusion"], batch).items():
            terms[k] = terms[k] + v
    terms["loss"] = sum(terms.values())
    return terms
