"""`gfm predict --rgba` at 1080p: time of each --fg-method against the network's own time.

Photos of the shared alphamatting set scaled to 1080 px high with their ground-truth mattes (the
matte a prediction would give); the network is GFM r34 TT (random weights: the time does not
depend on them) by the authors' hybrid protocol, timed in the same run. Target: ``ml`` adds no
more than the network's own time on the CPU.
Run: .venv/bin/python benchmarks/cutout.py [--n 3] [--threads 2] [--cf-full]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gfm.cutout import cutout_rgba  # noqa: E402
from gfm.model import GFM  # noqa: E402
from gfm.predict import predict_matte  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "alphamatting"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cf-full", action="store_true", help="also time pymatting's full closed-form solve (slow)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    model = GFM("r34", "tt", pretrained="none").eval()
    methods = ["none", "ml", "cf"] + (["cf-full"] if args.cf_full else [])
    times: dict[str, list[float]] = {m: [] for m in ["network", *methods]}
    for p in sorted((SHARED / "image").glob("*.png"))[: args.n]:
        img = cv2.imread(str(p))[..., ::-1]
        a = cv2.imread(str(SHARED / "alpha" / p.name), cv2.IMREAD_GRAYSCALE)
        w = round(img.shape[1] * 1080 / img.shape[0])
        img = np.ascontiguousarray(cv2.resize(img, (w, 1080), interpolation=cv2.INTER_CUBIC))
        a = cv2.resize(a, (w, 1080), interpolation=cv2.INTER_CUBIC)
        t = time.perf_counter()
        predict_matte(model, img)
        times["network"].append(time.perf_counter() - t)
        for m in methods:
            t = time.perf_counter()
            cutout_rgba(img, a, m)
            times[m].append(time.perf_counter() - t)
        print(p.stem, f"{w}x1080", " ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    net = statistics.median(times["network"])
    print(f"\nmedian over {args.n} photos, {args.threads} threads:")
    for k, v in times.items():
        print(f"  {k:8} {statistics.median(v):6.2f} s   {statistics.median(v) / net:5.2f}x the network")


if __name__ == "__main__":
    main()
