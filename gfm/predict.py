"""`gfm predict`: the authors' test protocol, on CPU or CUDA, for one model or an ensemble.

HYBRID (default): glance from a pass over the image scaled by ``glance_scale`` (1/3), focus from
a pass at ``focus_scale`` (1/2). Each pass's size is ``int(h * s)`` rounded down to a multiple
of 32 (at least 32). The glance decision is brought back to the input size as the authors do:
the class map (0, 1/2, 1 for TT; 0, 1 for FT/BT) is resized bilinearly, pixels where it is
exactly 0 or 1 keep it, and the others take the focus alpha (TT), or the resized map plus
(FT) or minus (BT) the focus output. RIM runs one pass at ``glance_scale`` and returns the RIM
output, as the authors' test does. RESIZE (``scale``): one pass, the collaborative matte.

``max_side`` (1600 by default, as the authors' cap) bounds the longer side of each pass and
keeps the aspect ratio; the authors cap each side on its own, which is the same whenever no
side exceeds the cap. Resizing uses OpenCV's area filter down and bilinear up (the authors use
skimage's anti-aliased resize): outputs agree to a fraction of a grey level.

Several models: the pixel-wise median of their mattes (the paper's EN-median).

Outputs are named by the input's path relative to the input folder (``sub/a.jpg`` ->
``OUT/sub/a.png``), so inputs in different folders never overwrite each other; two inputs of
one folder with the same stem (``a.jpg``, ``a.png``) would, so both are refused, each naming
the other. A pass whose 32 px minimum changes the aspect ratio by more than 10 % (10x4000 runs as
32x1312) and an input with transparent pixels are predicted, with a warning.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from rssn.checks import photo8
from rssn.imageio import ImageReadError, list_images, open_checked, read_image, read_rgba, write_image

from .data import model_input
from .model import GFM

DEFAULT_MAX_SIDE = 1600
ASPECT_TOLERANCE = 0.10  # warn when a pass's aspect ratio differs from the image's by more


def pass_size(h: int, w: int, scale: float, max_side: int | None = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """(height, width) of one network pass: ``int(side * scale)`` rounded down to a multiple of
    32, the longer side at most ``max_side`` (0 or None: no cap)."""
    rh, rw = _rounded_pass(h, w, scale, max_side)
    return max(32, rh), max(32, rw)


def _rounded_pass(h: int, w: int, scale: float, max_side: int | None) -> tuple[int, int]:
    """The pass size before the 32 px minimum (a side may be 0)."""
    s = scale
    if max_side and max(h, w) * s > max_side:
        s = max_side / max(h, w)
    return int(h * s) // 32 * 32, int(w * s) // 32 * 32


def aspect_change(h: int, w: int, pass_hw: tuple[int, int]) -> float:
    """How much a pass of size ``pass_hw`` stretches an h x w image: the ratio of the two
    aspect ratios, larger over smaller, minus 1 (0: none; 10x4000 as 32x1312: 8.8)."""
    r = (pass_hw[1] / pass_hw[0]) / (w / h)
    return max(r, 1 / r) - 1


def pass_scales(rosta: str, glance_scale: float, focus_scale: float, scale: float | None) -> tuple[float, ...]:
    """The scales of the passes :func:`predict_matte` runs for a model of this RoSTa."""
    if scale is not None:
        return (scale,)
    return (glance_scale,) if rosta == "rim" else (glance_scale, focus_scale)


def _resize(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    down = hw[0] * hw[1] < a.shape[0] * a.shape[1]
    return cv2.resize(a, (hw[1], hw[0]), interpolation=cv2.INTER_AREA if down else cv2.INTER_LINEAR)


def _forward(model: GFM, image: np.ndarray, hw: tuple[int, int], device: torch.device) -> dict:
    x = model_input(_resize(image.astype(np.float32), hw), model.config.input_range)[None].to(device)
    with torch.autocast(device_type=device.type, enabled=device.type == "cuda"):
        out = model(x)
    return out


def _np(t: torch.Tensor) -> np.ndarray:
    return t[0, 0].float().cpu().numpy().astype(np.float32)


def _glance_map(glance_logits: torch.Tensor, rosta: str) -> np.ndarray:
    """The decided classes as a 0..1 map: TT 0, 1/2, 1 (bg, transition, fg); FT/BT 0, 1."""
    cls = glance_logits.argmax(dim=1)[0].cpu().numpy().astype(np.float32)
    return cls / 2 if rosta == "tt" else cls


def fuse_resized(glance: np.ndarray, focus: np.ndarray, rosta: str) -> np.ndarray:
    """The authors' test-time fusion of a resized glance map and focus output (same size)."""
    if rosta == "tt":
        decided = (glance <= 1e-6) | (glance >= 1 - 1e-6)
        return np.where(decided, np.round(glance), focus).astype(np.float32)
    if rosta == "ft":
        return np.minimum(glance + focus, 1).astype(np.float32)
    if rosta == "bt":
        return np.maximum(glance - focus, 0).astype(np.float32)
    raise ValueError(f"unknown RoSTa {rosta!r}")


@torch.no_grad()
def predict_matte(model: GFM, image: np.ndarray, *, device: torch.device | str = "cpu",
                  glance_scale: float = 1 / 3, focus_scale: float = 1 / 2, scale: float | None = None,
                  max_side: int | None = DEFAULT_MAX_SIDE) -> np.ndarray:
    """The alpha matte (float32 HxW in [0, 1]) of a uint8 RGB image.

    ``image``: HxWx3 uint8 RGB; anything else (float, grey, RGBA) is refused, since the
    network's input scale is fixed by the checkpoint. BGR order (cv2.imread) cannot be told
    apart: convert with cv2.cvtColor(x, cv2.COLOR_BGR2RGB)."""
    photo8(image, "predict_matte", "image")
    device = torch.device(device)
    model.eval()
    h, w = image.shape[:2]
    rosta = model.config.rosta
    if rosta == "rim" or scale is not None:
        out = _forward(model, image, pass_size(h, w, scale if scale is not None else glance_scale, max_side), device)
        alpha = _resize(_np(out["fusion"]), (h, w))
    else:
        g = _forward(model, image, pass_size(h, w, glance_scale, max_side), device)["glance"]
        f = _forward(model, image, pass_size(h, w, focus_scale, max_side), device)["focus"]
        alpha = fuse_resized(_resize(_glance_map(g, rosta), (h, w)), _resize(_np(f), (h, w)), rosta)
    return np.clip(alpha, 0, 1).astype(np.float32)


def predict_ensemble(models: list[GFM], image: np.ndarray, **kw) -> np.ndarray:
    """EN-median: the pixel-wise median of the models' mattes (one model: its matte)."""
    mattes = [predict_matte(m, image, **kw) for m in models]
    return mattes[0] if len(mattes) == 1 else np.median(np.stack(mattes), axis=0).astype(np.float32)


@dataclass
class PredictResult:
    written: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    peak_memory_mb: float = 0.0


def _peak_memory_mb(device: torch.device) -> float:
    """Peak resident memory of this process (CPU) or peak allocated CUDA memory, in MiB.

    On Linux the high-water mark of this process's own memory (VmHWM): ``ru_maxrss`` survives
    fork and exec, so a command started by a large process (a test runner, a notebook) would
    report its parent's peak instead of its own."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def output_names(inputs: list[Path], root: Path | None = None, rgba: bool = False, composite: bool = False
                 ) -> tuple[dict[Path, Path], list[dict[str, str]]]:
    """The matte name of each input (its path relative to ``root`` with a .png suffix; its
    file name when ``root`` is None or not above it) and a failure for each input that would
    write a file another input writes too (two stems in one folder; with ``rgba`` also an
    input folder named rgba/): none of those is predicted."""
    names: dict[Path, Path] = {}
    for p in inputs:
        try:
            rel = p.relative_to(root) if root is not None else Path(p.name)
        except ValueError:
            rel = Path(p.name)
        names[p] = rel.with_suffix(".png")
    writers: dict[Path, list[Path]] = {}
    for p, n in names.items():
        for out in (n, *([Path("rgba") / n] if rgba else []), *([Path("composite") / n] if composite else [])):
            writers.setdefault(out, []).append(p)
    failures, refused = [], set()
    for out, ps in writers.items():
        for p in ps if len(ps) > 1 else ():
            if p in refused:
                continue
            refused.add(p)
            others = ", ".join(str(o) for o in ps if o != p)
            failures.append({"file": str(p), "reason": f"its output {out} would also be written for {others}; "
                                                        "rename one of them (one folder may not hold two images "
                                                        "with the same stem)"})
    return {p: n for p, n in names.items() if p not in refused}, failures


def transparent_pixels(path: Path) -> int:
    """How many pixels of an image file are not fully opaque (0 for files without alpha)."""
    im = open_checked(path)
    try:
        has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    finally:
        im.close()
    if not has_alpha:
        return 0
    return int((read_rgba(path)[1].values < 255).sum())


def run_predict(models: GFM | list[GFM], inputs: list[Path], out_dir: Path, device: torch.device, *,
                rgba: bool = False, fg_method: str = "ml", background: tuple[int, int, int] | np.ndarray | None = None,
                progress: bool = True, root: Path | None = None, **kw) -> PredictResult:
    """Predict each input and write OUT/<name>.png (8-bit matte), where the name is the input's path
    relative to ``root`` (its file name without a root); with ``rgba``, OUT/rgba/<name>.png
    (estimated foreground colours by ``fg_method``, straight, under the matte); with
    ``background`` (a colour or an image), OUT/composite/<name>.png (the cut-out placed on it)."""
    from tqdm import tqdm

    from .cutout import cutout_rgba, place_on_background

    models = models if isinstance(models, list) else [models]
    res = PredictResult()
    t0 = time.perf_counter()
    names, res.failures = output_names(inputs, root, rgba, background is not None)
    scales = sorted({s for m in models for s in pass_scales(m.config.rosta, kw.get("glance_scale", 1 / 3),
                                                             kw.get("focus_scale", 1 / 2), kw.get("scale"))})
    max_side = kw.get("max_side", DEFAULT_MAX_SIDE)
    for p in tqdm([p for p in inputs if p in names], unit="image", disable=not progress, dynamic_ncols=True):
        try:
            image = read_image(p)
            n_clear = transparent_pixels(p)
        except ImageReadError as exc:
            res.failures.append({"file": exc.path, "reason": exc.reason})
            continue
        h, w = image.shape[:2]
        for s in scales:
            hw = pass_size(h, w, s, max_side)
            change = aspect_change(h, w, hw)
            if min(_rounded_pass(h, w, s, max_side)) < 32 and change > ASPECT_TOLERANCE:  # the minimum stretched it
                res.warnings.append({"file": str(p), "warning": f"{w}x{h} runs as {hw[1]}x{hw[0]} at scale {s:.3g} "
                                                               f"(sides rounded to multiples of 32, at least 32): "
                                                               f"the aspect ratio changes by {change:.0%}"})
        if n_clear:
            res.warnings.append({"file": str(p), "warning": f"{n_clear} pixels are transparent; the matte is "
                                                           "predicted from the colours stored under them, which "
                                                           "may be arbitrary (flatten the image first)"})
        alpha = predict_ensemble(models, image, device=device, **kw)
        a8 = np.clip(np.rint(alpha * 255), 0, 255).astype(np.uint8)
        write_image(out_dir / names[p], a8)
        if rgba or background is not None:
            cut = cutout_rgba(image, a8, fg_method)
            if rgba:
                write_image(out_dir / "rgba" / names[p], cut)
            if background is not None:
                write_image(out_dir / "composite" / names[p], place_on_background(cut, background))
        res.written.append(str(out_dir / names[p]))
    res.seconds = time.perf_counter() - t0
    res.peak_memory_mb = _peak_memory_mb(torch.device(device))
    return res


def collect_inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return list_images(path)  # already only image files
