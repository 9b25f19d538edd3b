"""`gfm predict`: hybrid-resolution inference as in the paper, on CPU or CUDA.

Glance runs on the image scaled by ``glance_scale`` (1/3) and focus on the image scaled by
``focus_scale`` (1/2); both outputs are brought back to the input size and fused with the
RoSTa rule. ``scale`` instead runs one pass (the paper's 5/13 = 0.385). Sizes are rounded to
multiples of 32, and ``max_side`` caps the longer side, keeping the aspect ratio.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from rssn.imageio import ImageReadError, list_images, read_image, write_image

from .data import normalise
from .model import GFM, collaborate


def _scaled_size(h: int, w: int, scale: float, max_side: int | None) -> tuple[int, int]:
    s = scale
    if max_side is not None and max(h, w) * s > max_side:
        s = max_side / max(h, w)
    return max(32, int(round(h * s / 32)) * 32), max(32, int(round(w * s / 32)) * 32)


def _run(model: GFM, image: np.ndarray, size: tuple[int, int], device: torch.device) -> dict[str, torch.Tensor]:
    resized = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA if size[0] < image.shape[0] else cv2.INTER_LINEAR)
    x = normalise(resized)[None].to(device)
    with torch.autocast(device_type=device.type, enabled=device.type == "cuda"):
        out = model(x)
    return {k: v.float() for k, v in out.items()}


@torch.no_grad()
def predict_matte(model: GFM, image: np.ndarray, *, device: torch.device | str = "cpu",
                  glance_scale: float = 1 / 3, focus_scale: float = 1 / 2, scale: float | None = None,
                  max_side: int | None = None) -> np.ndarray:
    """The alpha matte (float32 HxW in [0, 1]) of a uint8 RGB image."""
    device = torch.device(device)
    model.eval()
    h, w = image.shape[:2]
    if scale is not None:
        out = _run(model, image, _scaled_size(h, w, scale, max_side), device)
        fusion = F.interpolate(out["fusion"], size=(h, w), mode="bilinear", align_corners=False)
    else:
        g = _run(model, image, _scaled_size(h, w, glance_scale, max_side), device)["glance"]
        f = _run(model, image, _scaled_size(h, w, focus_scale, max_side), device)["focus"]
        g = F.interpolate(g, size=(h, w), mode="bilinear", align_corners=False)
        f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
        fusion = collaborate(g, f, model.rosta)
    return fusion[0, 0].clamp(0, 1).cpu().numpy().astype(np.float32)


def load_model(checkpoint: str | Path, device: torch.device, backbone: str | None = None,
               rosta: str | None = None) -> GFM:
    """The model of a checkpoint; a backbone or RoSTa that differs from the one asked for is an error."""
    from .train import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    mc = ckpt["model_config"]
    for name, want in (("backbone", backbone), ("rosta", rosta)):
        if want is not None and want != mc[name]:
            raise ValueError(f"{checkpoint}: the checkpoint was trained with --{name} {mc[name]}, "
                             f"not {want}; drop --{name} or pass the right checkpoint")
    model = GFM(mc["backbone"], mc["rosta"], pretrained="none")
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


@dataclass
class PredictResult:
    written: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def run_predict(model: GFM, inputs: list[Path], out_dir: Path, device: torch.device, *, rgba: bool = False,
                progress: bool = True, **kw) -> PredictResult:
    """Predict each input and write OUT/<stem>.png (8-bit matte), optionally OUT/rgba/<stem>.png."""
    from tqdm import tqdm

    res = PredictResult()
    t0 = time.perf_counter()
    for p in tqdm(inputs, unit="image", disable=not progress, dynamic_ncols=True):
        try:
            image = read_image(p)
        except ImageReadError as exc:
            res.failures.append({"file": exc.path, "reason": exc.reason})
            continue
        alpha = predict_matte(model, image, device=device, **kw)
        a8 = np.clip(np.rint(alpha * 255), 0, 255).astype(np.uint8)
        write_image(out_dir / f"{p.stem}.png", a8)
        if rgba:
            write_image(out_dir / "rgba" / f"{p.stem}.png", np.dstack([image, a8]))
        res.written.append(str(out_dir / f"{p.stem}.png"))
    res.seconds = time.perf_counter() - t0
    return res


def collect_inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return list_images(path)  # already only image files
