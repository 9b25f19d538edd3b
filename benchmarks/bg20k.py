"""`bg20k build` speed: images per second per stage on a few hundred large JPEGs, and the
near-duplicate search time for 100k and 1M hashes.

The JPEGs are made from the shared background photos (random crops, flips and colour shifts,
about 3000x2000). Run: .venv/bin/python benchmarks/bg20k.py [--n 200] [--workers 2]

``--rss 1000,10000,50000``: peak RSS of a build process against the number of URLs, served by a
loopback server (100 kB bodies: a small JPEG padded with unique bytes, so each is its own image
and is rejected as too small without a full decode). ``--skewed 100000``: grouping time and
traced memory when 5 % of the hashes are near-equal (plain skies, walls).
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
from bg20k.dedup import assign_groups, duplicate_groups  # noqa: E402

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


def rss_per_urls(counts: list[int], workers: int, max_per_host: int = 16) -> None:
    """Peak RSS of `run_build` (its own process) for each URL count (one loopback host: private
    networks allowed, and 16 connections to it unless --max-per-host says otherwise)."""
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    small = cv2.imencode(".jpg", np.full((48, 64, 3), 128, np.uint8))[1].tobytes()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *a):
            pass

        def do_GET(self):
            k = int(self.path.strip("/").split(".")[0])
            body = small + k.to_bytes(8, "big") * ((100_000 - len(small)) // 8)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    child = ("import resource, sys, time; from pathlib import Path; from bg20k.build import BuildConfig, run_build; "
             "t = time.perf_counter(); "
             "s = run_build(BuildConfig(out_dir=Path(sys.argv[1]), url_files=(Path(sys.argv[2]),), screen=False, "
             "workers=int(sys.argv[3]), allow_private_networks=True, max_per_host=int(sys.argv[4])), progress=False); "
             "hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]; "
             "print(hwm, time.perf_counter() - t, "
             "s.counts['rejected_resolution'])")
    root = str(Path(__file__).resolve().parents[1])
    try:
        for n in counts:
            tmp = Path(tempfile.mkdtemp(prefix="bench-bg20k-rss-"))
            try:
                (tmp / "urls.txt").write_text("".join(f"{base}/{k}.jpg\n" for k in range(n)))
                env = {**os.environ, "PYTHONPATH": root}
                out = subprocess.run([sys.executable, "-c", child, str(tmp / "out"), str(tmp / "urls.txt"), str(workers),
                                      str(max_per_host)],
                                     capture_output=True, text=True, env=env, check=True).stdout.split()
                rss_kb, secs, rejected = int(out[0]), float(out[1]), int(out[2])
                print(f"  {n:>7,} URLs (100 kB each): peak RSS {rss_kb / 1024:7.1f} MB, {secs:7.1f} s, "
                      f"{rejected} recorded as too small")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        server.shutdown()


def skewed_dedup(n: int) -> None:
    """Grouping time and traced peak memory with 5 % of the hashes in one near-equal cluster."""
    import tracemalloc

    from bg20k.dedup import assign_groups

    for m in (n // 10, n // 2, n):
        rng = np.random.default_rng(2)
        h = [int(v) for v in rng.integers(0, 2**63, m, dtype=np.uint64)]
        centre = h[0]
        for k in range(m // 20):  # 5 %: within 0-8 bits of one hash
            h[k] = centre ^ int(sum(1 << int(b) for b in rng.choice(64, int(rng.integers(0, 9)), replace=False)))
        t = time.perf_counter()
        rep = assign_groups(h, [None] * m, list(range(m)), 6)
        secs = time.perf_counter() - t
        tracemalloc.start()  # a second run for memory: tracing slows it down
        assign_groups(h, [None] * m, list(range(m)), 6)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        sizes = np.bincount(np.array(rep))
        print(f"  skewed dedup of {m:>7,} hashes (5 % clustered): {secs:6.2f} s, traced peak {peak / 2**20:6.1f} MB, "
              f"largest group {sizes.max()}, groups {np.count_nonzero(sizes)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--detector", default="yolov8n.yaml", help="yaml: untrained network, same speed as the weights")
    ap.add_argument("--skip-1m", action="store_true")
    ap.add_argument("--rss", default=None, help="comma-separated URL counts, e.g. 1000,10000,50000: peak RSS only")
    ap.add_argument("--skewed", type=int, default=None, help="hash count for the skewed dedup case only")
    ap.add_argument("--max-per-host", type=int, default=16, help="--rss: connections to the one loopback host")
    args = ap.parse_args()
    if args.rss or args.skewed:
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        if args.rss:
            rss_per_urls([int(v) for v in args.rss.split(",")], args.workers, args.max_per_host)
        if args.skewed:
            skewed_dedup(args.skewed)
        return
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
        t1 = time.perf_counter() - t
        hl = [int(v) for v in h]
        t = time.perf_counter()
        assign_groups(hl, [None] * n, list(range(n)), 6)
        print(f"dedup of {n:>9,} random 64-bit hashes at distance 6: all near pairs {t1:6.2f} s, "
              f"against representatives (what build uses) {time.perf_counter() - t:6.2f} s")


if __name__ == "__main__":
    main()
