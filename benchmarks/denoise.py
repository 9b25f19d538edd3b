"""BM3D profiles: time, denoising quality and agreement, and thread-count determinism.

Crops of the shared backgrounds (--size square, taken from the 1080 px version) with added
Gaussian noise of sigma 10, denoised at sigma 10 with each profile on one thread:
seconds per megapixel, PSNR against the clean crop, and the difference from the bm3d
package's default profile `np` in grey levels. Then bm3d's own multi-threading: the same
image on 1 and 2 threads, compared bit for bit.

Run: .venv/bin/python benchmarks/denoise.py [--size 512] [--n 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rssn.denoise import bm3d_profile  # noqa: E402
from rssn.imageio import list_images, read_image  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    import bm3d

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--profiles", default="classic,np,lc")
    args = ap.parse_args()
    profiles = args.profiles.split(",")
    rows: dict[str, list[tuple[float, float, float, float]]] = {p: [] for p in profiles}
    for path in list_images(SHARED / "backgrounds")[: args.n]:
        img = read_image(path)
        s = 1080 / min(img.shape[:2])
        img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        y, x = (img.shape[0] - args.size) // 2, (img.shape[1] - args.size) // 2
        clean = img[y:y + args.size, x:x + args.size].astype(np.float64)
        noisy = np.clip(clean + np.random.default_rng(0).normal(0, 10, clean.shape), 0, 255).round()
        outs = {}
        for name in profiles:
            t = time.perf_counter()
            out = bm3d.bm3d_rgb(noisy / 255.0, 10 / 255.0, profile=bm3d_profile(name))
            dt = time.perf_counter() - t
            outs[name] = np.clip(np.rint(out * 255), 0, 255)
            psnr = 10 * np.log10(255**2 / np.mean((outs[name] - clean) ** 2))
            rows[name].append((dt / (args.size**2 / 1e6), psnr, 0.0, 0.0))
        for name in profiles:
            d = np.abs(outs[name] - outs["np"]) if "np" in outs else np.zeros(1)
            s_mp, psnr, _, _ = rows[name][-1]
            rows[name][-1] = (s_mp, psnr, float(d.mean()), float(d.max()))
            print(f"{path.stem:24s} {name:8s} {s_mp:6.1f} s/MP (1 thread)  PSNR {psnr:6.2f} dB  "
                  f"vs np: mean {d.mean():.3f} max {d.max():.0f}", flush=True)
    print(f"\n{'profile':8s} {'s/MP':>6s} {'PSNR':>7s} {'mean |d| vs np':>15s} {'max':>4s}")
    for name, r in rows.items():
        a = np.array(r)
        print(f"{name:8s} {a[:, 0].mean():6.1f} {a[:, 1].mean():7.2f} {a[:, 2].mean():15.3f} {a[:, 3].max():4.0f}")
    # bm3d's own threads: same bytes?
    prof1, prof2 = bm3d_profile("classic"), bm3d_profile("classic")
    prof2.num_threads = 2
    t = time.perf_counter()
    one = bm3d.bm3d_rgb(noisy / 255.0, 10 / 255.0, profile=prof1)
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    two = bm3d.bm3d_rgb(noisy / 255.0, 10 / 255.0, profile=prof2)
    t2 = time.perf_counter() - t
    flips = int((np.rint(one * 255) != np.rint(two * 255)).sum())
    print(f"\nclassic on 1 thread {t1:.1f} s, on 2 threads {t2:.1f} s ({t1 / t2:.2f}x); float results identical: "
          f"{np.array_equal(one, two)} (max difference {np.abs(one - two).max() * 255:.2e} grey levels, "
          f"{flips} of {one.size} rounded values differ)")


if __name__ == "__main__":
    main()
