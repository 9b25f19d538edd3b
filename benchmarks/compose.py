"""Composites per second of `rssn compose` at 1080p: naive route, empty cache, warm cache, plain.

Inputs: the shared alphamatting photos and mattes scaled to 1080 px high, and the shared
backgrounds resized to 1080 px on the shorter side (as `bg20k build` writes them).

- naive: foreground estimation and BM3D redone for every composite (no sharing, no cache),
  timed on --naive-composites composites with the same random draws;
- route, empty cache: `rssn compose` as shipped, K=--per-fg;
- route, warm cache: the same command again into a new folder with the cache of the first;
- plain: `--route plain` (alpha blending only) with the same warm foreground cache.

Run: .venv/bin/python benchmarks/compose.py [--n-fg 4 --per-fg 5 --workers 2]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rssn.compose import ComposeConfig, Unit, assign_backgrounds, compose_unit, run_compose  # noqa: E402
from rssn.imageio import list_images  # noqa: E402
from rssn.layout import find_foregrounds  # noqa: E402

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


def naive_rate(cfg: ComposeConfig, n: int, tmp: Path) -> float:
    """Composites per second when every composite redoes estimation and BM3D (fresh cache each)."""
    items, _ = find_foregrounds(cfg.fg_dir)
    backgrounds = [str(p) for p in list_images(cfg.bg_dir)]
    jobs = []
    for item in items:
        for slot, b in enumerate(assign_backgrounds(cfg.seed, item.stem, len(backgrounds), cfg.per_fg)):
            jobs.append(Unit(item, ((slot, backgrounds[b]),)))
    t = time.perf_counter()
    for i, unit in enumerate(jobs[:n]):
        c = replace(cfg, out_dir=tmp / "naive", cache_dir=tmp / f"naive-cache-{i}")
        recs = compose_unit(unit, c)
        assert recs[0]["type"] == "composite", recs
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-fg", type=int, default=4)
    ap.add_argument("--per-fg", type=int, default=5)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--naive-composites", type=int, default=2)
    ap.add_argument("--denoise-profile", default="np")
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
        naive = naive_rate(base, args.naive_composites, tmp)
        print(f"naive route             {naive:8.4f} composites/s  ({args.naive_composites} composites)", flush=True)
        cold = run_compose(base, progress=False)
        print(f"route, empty cache      {cold.composites_per_second:8.4f} composites/s  ({n})  "
              f"x{cold.composites_per_second / naive:.1f} naive", flush=True)
        warm = run_compose(replace(base, out_dir=tmp / "warm"), progress=False)
        print(f"route, warm cache       {warm.composites_per_second:8.4f} composites/s  ({n})", flush=True)
        plain = run_compose(replace(base, out_dir=tmp / "plain", route="plain"), progress=False)
        print(f"--route plain           {plain.composites_per_second:8.4f} composites/s  ({n})", flush=True)
        print(f"warm / plain            {warm.composites_per_second / plain.composites_per_second:8.2f}")
        same = digest(tmp / "cold") == digest(tmp / "warm")
        print(f"cold and warm outputs identical: {same}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
