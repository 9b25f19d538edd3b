"""`bg20k build` speed: images per second per stage on a few hundred large JPEGs, and the
near-duplicate search time for 100k and 1M hashes.

The JPEGs are made from the shared background photos (random crops, flips and colour shifts,
about 3000x2000). Run: .venv/bin/python benchmarks/bg20k.py [--n 200] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bg20k.build import BuildConfig, run_build  # noqa: E402
from bg20k.dedup import duplicate_groups  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "backgrounds"


def make_jpegs(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    photos = [cv2.imread(str(p)) for p in sorted(SHARED.glob("*.jpg"))]
    folder.mkdir(parents=True)
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        ch, cw = min(h, 2000), min(w, 3000)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        img = p[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = np.clip(img.astype(np.int16) + rng.integers(-30, 30, 3), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"img{i:04d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--detector", default="yolov8n.yaml", help="yaml: untrained network, same speed as the weights")
    ap.add_argument("--skip-1m", action="store_true")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.n} JPEGs "
          f"about 3000x2000, {args.workers} workers")
    tmp = Path(tempfile.mkdtemp(prefix="bench-bg20k-"))
    try:
        make_jpegs(tmp / "src", args.n)
        cfg = BuildConfig(out_dir=tmp / "out", src_dirs=(tmp / "src",), workers=args.workers, detector=args.detector)
        stats = run_build(cfg, progress=False)
        for stage in ("prepare", "dedup", "screen"):
            s, n = stats.seconds[stage], stats.items[stage]
            print(f"  {stage:8} {n:6d} images in {s:7.2f} s  = {n / s if s else float('nan'):8.1f} images/s")
        print(f"  total    {stats.seconds['total']:7.2f} s; kept {stats.counts['kept']}, "
              f"near duplicates {stats.counts['rejected_near_duplicate']}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(1)
    for n in (100_000,) + (() if args.skip_1m else (1_000_000,)):
        h = rng.integers(0, 2**63, n, dtype=np.uint64)
        t = time.perf_counter()
        duplicate_groups(h, 6)
        print(f"dedup of {n:>9,} random 64-bit hashes at distance 6: {time.perf_counter() - t:6.2f} s")


if __name__ == "__main__":
    main()
