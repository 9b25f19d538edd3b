"""Training samples per second per core: the folder path, the packed store, composites on the fly.

Inputs: the shared alphamatting photos and mattes scaled to 1080 px high, each composited
(`--per-fg` times) over a shared background scaled and cropped to its size, written as
`rssn compose` writes them (image/ alpha/ fg/ bg/, PNG level 1); `gfm pack` of that folder.

Each path runs in a process of its own on one thread (OpenCV and torch), the way one loader
worker runs, and reports samples/s, the bytes its process read from disk per sample
(/proc/self/io) and its peak RSS (VmHWM; mapped store pages count there while resident, but
are page cache the kernel can drop, so RssAnon is printed beside it):
- folder: `MattingDataset` (decode four PNGs, crop);
- store, warm: `StoreDataset` with the store's pages in the page cache;
- store, cold: the same after dropping the store's pages (posix_fadvise DONTNEED) before the pass;
- otf: the on-the-fly path before the window one (`OnTheFlyDataset.whole_image = True`; no
  foreground estimation, no BM3D: foregrounds come from the cache; the route's whole-image
  background scaling, blur, blend and noise, then the crop);
- otf-window-decode: the window path decoding every foreground for every sample
  (`OnTheFlyDataset.plane_cache = False`: photo and matte decoded, hashed, cached estimate
  decoded), as before the plane cache;
- otf-window: today's `OnTheFlyDataset`, which draws the crop first and blurs, blends and adds
  noise on the window only (same draws; equal tensors but for the noise's realisation), with
  each foreground's planes decoded once into the cache (`rssn.planes`) and memory-mapped.
  Their ratios to otf are printed.

`--profile otf-window` prints the cProfile of that path's timed pass (cumulative, top 25).

With `--device cuda` it also trains GFM r34 (no pretrained weights, AMP) from the store with
`--workers` loader processes and reports training samples/s and the share of step time the
GPU was not waiting for data.

Run: .venv/bin/python benchmarks/loader.py [--n-fg 4 --per-fg 2 --seconds 8]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PNG1 = [cv2.IMWRITE_PNG_COMPRESSION, 1]


def prepare(root: Path, n_fg: int, per_fg: int, height: int) -> tuple[Path, Path, Path]:
    """1080p composites in `rssn compose` layout, plus their foregrounds and backgrounds."""
    comp, fgd, bgd = root / "comp", root / "fg", root / "bg"
    for d in ("image", "alpha", "fg", "bg"):
        (comp / d).mkdir(parents=True)
    (fgd / "image").mkdir(parents=True)
    (fgd / "alpha").mkdir(parents=True)
    bgd.mkdir()
    bgs = sorted((SHARED / "backgrounds").glob("*.*"))
    rng = np.random.default_rng(0)
    for i, p in enumerate(sorted((SHARED / "alphamatting" / "image").glob("*.png"))[:n_fg]):
        img = cv2.imread(str(p))
        a = cv2.imread(str(SHARED / "alphamatting" / "alpha" / p.name), cv2.IMREAD_GRAYSCALE)
        w = round(img.shape[1] * height / img.shape[0])
        img = cv2.resize(img, (w, height), interpolation=cv2.INTER_CUBIC)
        a = cv2.resize(a, (w, height), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(fgd / "image" / p.name), img, PNG1)
        cv2.imwrite(str(fgd / "alpha" / p.name), a, PNG1)
        af = a[..., None].astype(np.float32) / 255
        for k in range(per_fg):
            bsrc = cv2.imread(str(bgs[(i * per_fg + k) % len(bgs)]))
            s = max(height / bsrc.shape[0], w / bsrc.shape[1])
            b = cv2.resize(bsrc, (round(bsrc.shape[1] * s) + 1, round(bsrc.shape[0] * s) + 1), interpolation=cv2.INTER_AREA)
            y, x = int(rng.integers(b.shape[0] - height + 1)), int(rng.integers(b.shape[1] - w + 1))
            b = b[y:y + height, x:x + w]
            if k == 0:
                cv2.imwrite(str(bgd / f"{p.stem}.png"), b, PNG1)
            comp_img = np.clip(np.rint(af * img + (1 - af) * b), 0, 255).astype(np.uint8)
            name = f"{p.stem}_{k}.png"
            for d, arr in (("image", comp_img), ("alpha", a), ("fg", img), ("bg", b)):
                cv2.imwrite(str(comp / d / name), arr, PNG1)
    return comp, fgd, bgd


def _drop_pages(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _read_bytes() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("read_bytes:")).split()[1])


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(key + ":")).split()[1]) * 1024


def measure(path: str, root: Path, seconds: float, crop: int, profile: bool = False) -> dict:
    """One path in this process, one thread: samples/s, bytes read per sample, peak RSS."""
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    from gfm.data import MattingDataset, OnTheFlyDataset, check_samples, find_samples
    from gfm.store import PIXELS, StoreDataset

    files: list[Path] = []
    if path == "folder":
        samples, _ = check_samples(find_samples(root / "comp")[0])
        ds = MattingDataset(samples, "tt", crop, 0)
        files = [p for s in samples for p in (s.image, s.alpha, s.fg, s.bg)]
    elif path.startswith("store"):
        ds = StoreDataset([root / "store"], "tt", crop, 0)
        files = [root / "store" / PIXELS]
    elif path in ("otf", "otf-window", "otf-window-decode"):
        ds = OnTheFlyDataset(root / "fg", root / "bg", "tt", crop, 0, per_fg=2,
                             compose_options={"fg_method": "none", "denoise_p": 0.0, "cache_dir": root / "cache"})
        ds.whole_image = path == "otf"
        ds.plane_cache = path == "otf-window"
        ds.set_epoch(1000)
        for i in range(len(ds)):  # foregrounds into the cache (as after a first epoch), imports
            ds[i]
    else:
        raise ValueError(path)
    if path == "store-cold":
        ds[0]  # imports and first allocations outside the timed pass
        ds.stores[0]._mm = None  # unmapped: dropped pages are not kept resident by this process
        _drop_pages(files)
    elif files:
        for p in files:  # warm: every page read once
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass
    n, epoch = 0, 0
    rss_start = _status("VmRSS")
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    r0, t0 = _read_bytes(), time.perf_counter()
    while True:
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            ds[i]
            n += 1
            if path != "store-cold" and time.perf_counter() - t0 > seconds:
                break
        epoch += 1
        if path == "store-cold" or time.perf_counter() - t0 > seconds:
            break  # cold: one pass, every sample's window read from disk once
    dt = time.perf_counter() - t0
    if profile:
        import pstats

        prof.disable()
        print(f"cProfile of {path}: {n} samples", file=sys.stderr)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    return {"path": path, "samples": n, "seconds": round(dt, 2), "samples_per_s": n / dt,
            "read_bytes_per_sample": (_read_bytes() - r0) / n, "peak_rss": _status("VmHWM"),
            "rss_anon": _status("RssAnon"), "rss_start": rss_start}


def train_e2e(root: Path, device: str, workers: int, steps: int, batch: int, crop: int) -> dict:
    """End-to-end GFM r34 training from the store: samples/s and the share of time not waiting."""
    import torch
    from torch.utils.data import DataLoader

    from gfm.data import collate, to_device
    from gfm.losses import gfm_loss
    from gfm.model import GFM, ModelConfig
    from gfm.store import StoreDataset

    dev = torch.device(device)
    ds = StoreDataset([root / "store"], "tt", crop, 0)
    idx = [i % len(ds) for i in range(steps * batch + batch)]
    loader = DataLoader(torch.utils.data.Subset(ds, idx), batch_size=batch, num_workers=workers, collate_fn=collate,
                        pin_memory=dev.type == "cuda", prefetch_factor=4 if workers else None, drop_last=True)
    model = GFM(config=ModelConfig(backbone="r34", rosta="tt"), pretrained="none").to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    wait = busy = 0.0
    n = 0
    it = iter(loader)
    t_ready = time.perf_counter()
    for step in range(steps + 1):
        b = next(it)
        t_got = time.perf_counter()
        b = to_device(b, dev)
        with torch.autocast(device_type=dev.type, enabled=dev.type == "cuda"):
            out = model(b["image"])
        loss = gfm_loss(out, b)["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        float(loss.detach())  # waits for the device: the step ends here
        t_done = time.perf_counter()
        if step:  # the first step warms up
            wait += t_got - t_ready
            busy += t_done - t_got
            n += batch
        t_ready = t_done
    return {"device": device, "workers": workers, "batch": batch, "train_samples_per_s": n / (wait + busy),
            "busy_share": busy / (wait + busy)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-fg", type=int, default=4)
    ap.add_argument("--per-fg", type=int, default=2)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--crop", type=int, default=320)
    ap.add_argument("--device", default=None, help="cuda: also end-to-end training samples/s")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--paths", default="folder,store-warm,store-cold,otf,otf-window-decode,otf-window")
    ap.add_argument("--profile", default="", help="a path whose timed pass is profiled (cProfile, to stderr)")
    ap.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_root", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._measure:
        print(json.dumps(measure(args._measure, Path(args._root), args.seconds, args.crop,
                                 profile=args._measure == args.profile)))
        return
    from gfm.store import PIXELS, pack

    with tempfile.TemporaryDirectory(prefix="gfm-loader-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        comp, _, _ = prepare(root, args.n_fg, args.per_fg, args.height)
        print(f"prepared {args.n_fg * args.per_fg} composites at {args.height} px in {time.perf_counter() - t0:.1f} s")
        summary = pack([str(comp)], root / "store", photo_fgbg=False, workers=1, log=lambda m: None)
        png = sum(p.stat().st_size for p in comp.rglob("*.png")) / summary.samples
        store = (root / "store" / PIXELS).stat().st_size / summary.samples
        print(f"pack: {summary.seconds:.1f} s for {summary.samples} samples (one process); bytes per sample: "
              f"store {store / 1e6:.1f} MB, PNG level 1 {png / 1e6:.1f} MB ({store / png:.2f}x)")
        results = {}
        for path in [p for p in args.paths.split(",") if p]:
            proc = subprocess.run([sys.executable, __file__, "--_measure", path, "--_root", str(root),
                                   "--seconds", str(args.seconds), "--crop", str(args.crop), "--profile", args.profile],
                                  capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if proc.returncode or path == args.profile:
                print(proc.stderr)
            if proc.returncode:
                continue
            results[path] = json.loads(proc.stdout.strip().splitlines()[-1])
        base = results.get("folder", {}).get("samples_per_s")
        otf = results.get("otf", {}).get("samples_per_s")
        if results:
            print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores; one process, one thread, "
                  f"crop -> {args.crop}")
            print("| path | samples/s per core | vs folder | vs otf | MB read from disk per sample | RSS before MB "
                  "| peak RSS MB | RssAnon MB |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for path, r in results.items():
            ratio = f"{r['samples_per_s'] / base:.1f}x" if base else "-"
            vs_otf = f"{r['samples_per_s'] / otf:.2f}x" if otf and path.startswith("otf") else "-"
            print(f"| {path} | {r['samples_per_s']:.1f} | {ratio} | {vs_otf} | {r['read_bytes_per_sample'] / 1e6:.1f} | "
                  f"{r['rss_start'] / 1e6:.0f} | {r['peak_rss'] / 1e6:.0f} | {r['rss_anon'] / 1e6:.0f} |")
        if args.device:
            r = train_e2e(root, args.device, args.workers, args.steps, args.batch, args.crop)
            print(f"\nend to end on {r['device']}: {r['workers']} workers, batch {r['batch']}: "
                  f"{r['train_samples_per_s']:.1f} training samples/s, device busy {r['busy_share']:.0%} of the time")


if __name__ == "__main__":
    main()
