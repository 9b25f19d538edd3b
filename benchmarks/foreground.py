"""Closed-form foreground estimation on the transition band vs pymatting's full solve.

The 20 shared alphamatting photos scaled to 1080 px high. For each: time of
``pymatting.estimate_foreground_cf`` (default rtol 1e-5), time of our band solve, and the
difference in what is blended, alpha * |F - F_full| in grey levels (99.9th percentile and
maximum), against the default full solve and against a converged full solve (rtol 1e-7).
Targets: median speed-up >= 5x; p99.9 <= 1 and max <= 3 grey levels.
Run: .venv/bin/python benchmarks/foreground.py [--height 1080] [--n 20]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rssn.closed_form_band import estimate_foreground_cf_band, transition_band  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "alphamatting"


def main() -> None:
    from pymatting import estimate_foreground_cf

    ap = argparse.ArgumentParser()
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--converged", action="store_true", help="also compare with a full solve at rtol 1e-7 (slow)")
    args = ap.parse_args()
    rows = []
    print(f"{'photo':6} {'size':>10} {'band':>5} {'full s':>7} {'band s':>7} {'x':>5} "
          f"{'p99.9 vs default':>17} {'max':>6} {'p99.9 vs converged':>19} {'max':>6}")
    for p in sorted((SHARED / "image").glob("*.png"))[: args.n]:
        img = cv2.imread(str(p))[..., ::-1]
        a = cv2.imread(str(SHARED / "alpha" / p.name), cv2.IMREAD_GRAYSCALE)
        w = round(img.shape[1] * args.height / img.shape[0])
        img = cv2.resize(img, (w, args.height), interpolation=cv2.INTER_CUBIC) / 255.0
        a = cv2.resize(a, (w, args.height), interpolation=cv2.INTER_LINEAR) / 255.0
        t = time.perf_counter()
        full = estimate_foreground_cf(img, a)
        t_full = time.perf_counter() - t
        t = time.perf_counter()
        band = estimate_foreground_cf_band(img, a)
        t_band = time.perf_counter() - t
        d1 = a[..., None] * np.abs(band - full) * 255
        d2 = a[..., None] * np.abs(band - estimate_foreground_cf(img, a, rtol=1e-7)) * 255 if args.converged else d1 * np.nan
        r = (p.stem, t_full, t_band, np.percentile(d1, 99.9), d1.max(), np.percentile(d2, 99.9), d2.max())
        rows.append(r)
        print(f"{p.stem:6} {w:>4}x{args.height:<5} {transition_band(a, 3).mean() * 100:4.0f}% {t_full:7.2f} {t_band:7.2f} "
              f"{t_full / t_band:5.1f} {r[3]:17.3f} {r[4]:6.2f} {r[5]:19.3f} {r[6]:6.2f}", flush=True)
    x = np.array([[r[1] / r[2], r[3], r[4], r[5], r[6]] for r in rows])
    print(f"median speed-up {np.median(x[:, 0]):.1f}x (min {x[:, 0].min():.1f}x); worst p99.9 / max: "
          f"vs default full {x[:, 1].max():.3f} / {x[:, 2].max():.2f}, vs converged full {x[:, 3].max():.3f} / {x[:, 4].max():.2f}")


if __name__ == "__main__":
    main()
