"""Composites per second of `rssn compose` at 1080p: naive route, empty cache, warm cache, plain.

Inputs: the shared alphamatting photos and mattes scaled to 1080 px high, and the shared
backgrounds resized to 1080 px on the shorter side (as `bg20k build` writes them).

- route, empty cache: `rssn compose` as shipped, K=--per-fg;
- route, warm cache: the same command again into a new folder with the cache of the first;
- plain: `--route plain` (alpha blending only) with the same warm foreground cache;
- naive: every composite on its own, as a script calling the libraries would do it:
  pymatting's full closed-form solve, then `bm3d.bm3d_rgb` with its default profile (and its
  default threads) on the foreground and/or background each time a composite draws it, then
  the blend. Its time is the sum over the same composites (the draws are read from the
  empty-cache run's manifest) of those steps, each timed here: the full solve once per
  foreground, BM3D np on one foreground and one background (its cost is proportional to the
  pixel count, so the others are scaled by their size), the rest as in the plain run.

Run: .venv/bin/python benchmarks/compose.py [--n-fg 4 --per-fg 5 --workers 2]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rssn.compose import ComposeConfig, run_compose  # noqa: E402
from rssn.denoise import estimate_noise_sigma  # noqa: E402
from rssn.imageio import list_images, read_image, read_matte  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def prepare(root: Path, n_fg: int, height: int) -> tuple[Path, Path]:
    fg, bg = root / "fg", root / "bg"
    (fg / "image").mkdir(parents=True)
    (fg / "alpha").mkdir(parents=True)
    bg.mkdir()
    for p in sorted((SHARED / "alphamatting" / "image").glob("*.png"))[:n_fg]:
        img = cv2.imread(str(p))
        a = cv2.imread(str(SHARED / "alphamatting" / "alpha" / p.name), cv2.IMREAD_GRAYSCALE)
        w = round(img.shape[1] * height / img.shape[0])
        cv2.imwrite(str(fg / "image" / p.name), cv2.resize(img, (w, height), interpolation=cv2.INTER_CUBIC))
        cv2.imwrite(str(fg / "alpha" / p.name), cv2.resize(a, (w, height), interpolation=cv2.INTER_LINEAR))
    for p in list_images(SHARED / "backgrounds"):
        img = cv2.imread(str(p))
        s = height / min(img.shape[:2])
        size = (round(img.shape[1] * s), round(img.shape[0] * s))
        cv2.imwrite(str(bg / f"{p.stem}.jpg"), cv2.resize(img, size, interpolation=cv2.INTER_AREA),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
    return fg, bg


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((folder / "image").glob("*")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _timed(fn, *args, **kw) -> float:
    t = time.perf_counter()
    fn(*args, **kw)
    return time.perf_counter() - t


def naive_seconds(fg_dir: Path, cold_out: Path, plain_per_composite: float, log) -> float:
    """Seconds the naive route needs for the composites of the empty-cache run (see the module doc)."""
    import bm3d
    from pymatting import estimate_foreground_cf

    recs = [json.loads(l) for l in (cold_out / "manifest.jsonl").read_text().splitlines()]
    recs = [r for r in recs if r["type"] == "composite"]
    cf_seconds: dict[str, float] = {}
    photos: dict[str, np.ndarray] = {}
    for stem in sorted({r["fg"]["stem"] for r in recs}):
        img = read_image(fg_dir / "image" / f"{stem}.png")
        alpha = read_matte(fg_dir / "alpha" / f"{stem}.png").alpha
        photos[stem] = img
        cf_seconds[stem] = _timed(estimate_foreground_cf, img / 255.0, alpha)
        log(f"  pymatting estimate_foreground_cf {stem} {img.shape[1]}x{img.shape[0]}: {cf_seconds[stem]:.1f} s")
    # BM3D np, as bm3d_rgb runs by default, on one foreground and one background
    first_bg = next(r["bg"]["path"] for r in recs)
    per_pixel = []
    for name, img in (("foreground " + next(iter(photos)), next(iter(photos.values()))),
                      ("background " + Path(first_bg).name, read_image(first_bg))):
        s = _timed(bm3d.bm3d_rgb, img / 255.0, estimate_noise_sigma(img) / 255.0)
        per_pixel.append(s / (img.shape[0] * img.shape[1]))
        log(f"  bm3d.bm3d_rgb (profile np) {name} {img.shape[1]}x{img.shape[0]}: {s:.1f} s")
    us_px = float(np.mean(per_pixel))
    total = 0.0
    for r in recs:
        total += cf_seconds[r["fg"]["stem"]] + plain_per_composite
        w, h = r["fg"]["size"]
        for op in r["ops"]:
            if op["op"] == "bm3d":
                if op["target"] == "fg":
                    total += us_px * w * h
                else:
                    with Image.open(r["bg"]["path"]) as im:
                        total += us_px * im.width * im.height
    log(f"  BM3D np {us_px * 1e6:.1f} us per pixel; {sum(o['op'] == 'bm3d' for r in recs for o in r['ops'])} "
        f"BM3D runs in the naive route for {len(recs)} composites")
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-fg", type=int, default=4)
    ap.add_argument("--per-fg", type=int, default=5)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--denoise-profile", default="classic")
    args = ap.parse_args()
    if not (SHARED / "alphamatting").is_dir():
        sys.exit(f"needs {SHARED}/alphamatting and backgrounds")
    tmp = Path(tempfile.mkdtemp(prefix="bench-compose-"))
    try:
        fg, bg = prepare(tmp, args.n_fg, args.height)
        base = ComposeConfig(fg_dir=fg, bg_dir=bg, out_dir=tmp / "cold", per_fg=args.per_fg, seed=0,
                             workers=args.workers, cache_dir=tmp / "cache", denoise_profile=args.denoise_profile)
        n = args.n_fg * args.per_fg
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
              f"{args.n_fg} foregrounds at {args.height} px high, K={args.per_fg}, workers={args.workers}, "
              f"BM3D profile {args.denoise_profile}", flush=True)
        cold = run_compose(base, progress=False)
        print(f"route, empty cache      {cold.composites_per_second:8.4f} composites/s  ({n}, {cold.seconds:.0f} s)",
              flush=True)
        warm = run_compose(replace(base, out_dir=tmp / "warm"), progress=False)
        print(f"route, warm cache       {warm.composites_per_second:8.4f} composites/s  ({n})", flush=True)
        plain = run_compose(replace(base, out_dir=tmp / "plain", route="plain"), progress=False)
        print(f"--route plain           {plain.composites_per_second:8.4f} composites/s  ({n})", flush=True)
        print("naive route, timed by step:", flush=True)
        naive = n / naive_seconds(fg, tmp / "cold", 1.0 / plain.composites_per_second,
                                  lambda m: print(m, flush=True))
        print(f"naive route             {naive:8.4f} composites/s  ({n})")
        print(f"empty cache / naive     {cold.composites_per_second / naive:8.2f}   (target >= 5)")
        print(f"warm / plain            {warm.composites_per_second / plain.composites_per_second:8.2f}   "
              "(target >= 0.5, and warm >= 2/s)")
        same = digest(tmp / "cold") == digest(tmp / "warm")
        print(f"cold and warm outputs identical: {same}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
