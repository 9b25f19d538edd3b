"""Generate the project's own small sample set (synthetic, so it is ours to ship).

samples/fg/image + samples/fg/alpha: photos of soft, hairy synthetic objects with their exact
mattes (the photo is a F + (1 - a) B over a textured studio backdrop);
samples/bg: textured scene-like backgrounds. Run: python samples/make_samples.py
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    small = rng.random((max(2, h // scale), max(2, w // scale), 3)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def make_foreground(rng: np.random.Generator, h: int = 240, w: int = 320) -> tuple[np.ndarray, np.ndarray]:
    alpha = np.zeros((h, w), np.float32)
    cy, cx, r = h * 0.55, w * 0.5, min(h, w) * 0.28
    cv2.ellipse(alpha, (int(cx), int(cy)), (int(r * 1.1), int(r)), 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    hair = np.zeros((h * 4, w * 4), np.float32)  # thin strands drawn at 4x, then area-reduced
    for _ in range(260):
        t = rng.uniform(0, 2 * np.pi)
        x0, y0 = cx + np.cos(t) * r * 0.9, cy + np.sin(t) * r * 0.85
        length = rng.uniform(0.3, 0.8) * r
        bend = rng.normal(0, 0.4)
        pts = []
        for s in np.linspace(0, 1, 12):
            a = t + bend * s
            pts.append([(x0 + np.cos(a) * length * s) * 4, (y0 + np.sin(a) * length * s) * 4])
        cv2.polylines(hair, [np.int32(pts)], False, 1.0, 1 + int(rng.integers(2)), cv2.LINE_AA)
    hair = cv2.resize(hair, (w, h), interpolation=cv2.INTER_AREA)
    alpha = np.clip(np.maximum(cv2.GaussianBlur(alpha, (0, 0), 1.2), hair), 0, 1)
    base = rng.uniform(0.2, 0.9, 3).astype(np.float32)
    fg = np.clip(base * (0.6 + 0.5 * _smooth_noise(rng, h, w, 16)), 0, 1)
    backdrop = np.clip(rng.uniform(0.1, 0.8, 3).astype(np.float32) * (0.7 + 0.4 * _smooth_noise(rng, h, w, 40)), 0, 1)
    photo = alpha[..., None] * fg + (1 - alpha[..., None]) * backdrop
    return np.uint8(np.rint(photo * 255)), np.uint8(np.rint(alpha * 255))


def make_background(rng: np.random.Generator, h: int = 360, w: int = 480) -> np.ndarray:
    sky = np.linspace(0, 1, h, dtype=np.float32)[:, None, None] * rng.uniform(0.2, 0.6, 3).astype(np.float32)
    tex = 0.5 * _smooth_noise(rng, h, w, 8) + 0.5 * _smooth_noise(rng, h, w, 60)
    return np.uint8(np.clip(255 * (0.3 + sky + 0.4 * tex), 0, 255))


def main() -> None:
    rng = np.random.default_rng(20260101)
    for d in ("fg/image", "fg/alpha", "bg"):
        (ROOT / d).mkdir(parents=True, exist_ok=True)
    for i in range(4):
        photo, alpha = make_foreground(rng)
        cv2.imwrite(str(ROOT / "fg/image" / f"toy{i + 1:02d}.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(ROOT / "fg/alpha" / f"toy{i + 1:02d}.png"), alpha)
    for i in range(3):
        bg = make_background(rng)
        cv2.imwrite(str(ROOT / "bg" / f"scene{i + 1:02d}.jpg"), cv2.cvtColor(bg, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 92])


if __name__ == "__main__":
    main()
