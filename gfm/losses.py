"""Supervision targets from a ground-truth matte and the GFM losses.

Targets (numpy, at the data's resolution): TT trimap by dilation and erosion with kernel 25;
FT foreground mask by erosion with kernel 50; BT mask by dilation with kernel 50. The
transition area is where the mask does not decide alpha, and the focus target is chosen so
that ``collaborate(mask, focus_target) == alpha`` exactly for every RoSTa.

Loss: L = L_CE (glance) + L_FD (focus: alpha + Laplacian, transition area) + L_CM
(collaborative matte: alpha + Laplacian + composition, whole image).
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
    """(glance class map int64, transition weight float32, focus target float32) for ``alpha``.

    ``scale`` shrinks the kernels for data already shrunk from the training resolution.
    """
    a = alpha.astype(np.float32)
    opaque = (a >= 1.0).astype(np.uint8)
    nonzero = (a > 0.0).astype(np.uint8)
    if rosta == "tt":
        k = _kernel(max(1, round(TT_KERNEL * scale)))
        fg = cv2.erode(opaque, k, borderType=cv2.BORDER_CONSTANT, borderValue=0) == 1
        bg = cv2.dilate(nonzero, k) == 0
        cls = np.ones(a.shape, np.int64)
        cls[fg], cls[bg] = 2, 0
        return cls, (cls == 1).astype(np.float32), a
    k = _kernel(max(1, round(FT_BT_KERNEL * scale)))
    if rosta == "ft":
        mask = cv2.erode(opaque, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        return mask.astype(np.int64), (1 - mask).astype(np.float32), a
    if rosta == "bt":
        mask = cv2.dilate(nonzero, k)
        return mask.astype(np.int64), mask.astype(np.float32), (1.0 - a) * mask
    raise ValueError(f"unknown RoSTa {rosta!r}")


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


def gfm_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every loss term and their total ``loss``; ``batch`` holds the targets of :mod:`gfm.data`."""
    w = batch["transition"]
    terms = {
        "ce": F.cross_entropy(out["glance"].float(), batch["glance"]),
        "focus_alpha": alpha_loss(out["focus"].float(), batch["focus"], w),
        "focus_lap": laplacian_loss(out["focus"].float(), batch["focus"], w),
        "fusion_alpha": alpha_loss(out["fusion"].float(), batch["alpha"]),
        "fusion_lap": laplacian_loss(out["fusion"].float(), batch["alpha"]),
    }
    has = batch["has_fgbg"].view(-1, 1, 1, 1).float()
    if bool(has.any()):
        idx = has.view(-1) > 0
        terms["comp"] = composition_loss(out["fusion"].float()[idx], batch["fg"][idx], batch["bg"][idx], batch["image_raw"][idx])
    else:
        terms["comp"] = torch.zeros((), device=w.device)
    terms["loss"] = sum(terms.values())
    return terms
