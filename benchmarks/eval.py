"""Seconds per 1080p image for each metric of `gfm eval` (target: all together < 0.2 s).

Uses a shared alphamatting matte scaled to 1080x1920 and a perturbed copy as the prediction
(synthetic mattes when ../shared/data is absent). Run: .venv/bin/python benchmarks/eval.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gfm.evaluate import trimap_from_alpha  # noqa: E402
from gfm.metrics import (  # noqa: E402
    connectivity_error_dim, connectivity_error_gfm, gfm_errors, gradient_error_dim, gradient_error_gfm,
    mad_dim, mse_dim, sad_dim,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "alphamatting" / "alpha" / "GT04.png"


def mattes() -> tuple[np.ndarray, np.ndarray]:
    if SHARED.exists():
        g = cv2.imread(str(SHARED), cv2.IMREAD_GRAYSCALE)
    else:
        g = np.zeros((540, 960), np.uint8)
        cv2.circle(g, (480, 270), 200, 255, -1)
        g = cv2.GaussianBlur(g, (0, 0), 6)
    g = cv2.resize(g, (1920, 1080), interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.normal(0, 40, g.shape), (0, 0), 3)
    p = np.clip(cv2.GaussianBlur(g.astype(np.float64), (0, 0), 2) + noise, 0, 255).astype(np.uint8)
    return p, g


def timeit(fn, *args, repeat: int = 5) -> float:
    fn(*args)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p8, g8 = mattes()
    t = trimap_from_alpha(g8, 25)
    u = t == 128
    p, g = p8 / 255.0, g8 / 255.0
    rows = {
        "dim": [("sad", sad_dim, (p8, g8, u)), ("mse", mse_dim, (p8, g8, u)), ("mad", mad_dim, (p8, g8, u)),
                ("grad", gradient_error_dim, (p8, g8, u)), ("conn", connectivity_error_dim, (p8, g8, u))],
        "gfm": [("sad/mse/mad/tran/fg/bg", gfm_errors, (p, g, t)), ("grad", gradient_error_gfm, (p, g)),
                ("conn", connectivity_error_gfm, (p, g))],
    }
    print(f"1080x1920 mattes, unknown region {u.mean() * 100:.1f}% of the image; best of 5 runs")
    for proto, items in rows.items():
        total = 0.0
        for name, fn, args in items:
            s = timeit(fn, *args)
            total += s
            print(f"  {proto:4} {name:24} {s * 1000:8.1f} ms")
        print(f"  {proto:4} {'ALL':24} {total * 1000:8.1f} ms   (target < 200 ms: {'met' if total < 0.2 else 'NOT met'})")


if __name__ == "__main__":
    main()
