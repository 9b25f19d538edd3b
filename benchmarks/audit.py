"""`rssn audit` speed: seconds per 1080p image on one core (target: at most 0.5 s).

1920x1080 images made from the shared scene photos, with a shared alphamatting matte scaled
to the same size, written as PNG like `rssn compose` writes them. Timed on one thread:
decoding the PNG and its matte (the baseline every audit pays), `measure_image` alone, and
`measure_item` (read + measure, what a worker does). Reports seconds and the ratio to the
decode baseline timed in the same run.

Run: .venv/bin/python benchmarks/audit.py [--n 7] [--repeat 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rssn.audit import AuditItem, measure_item, read_pair  # noqa: E402
from rssn.imageio import list_images, read_image, read_matte  # noqa: E402
from rssn.measures import measure_image  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    matte = read_matte(SHARED / "alphamatting" / "alpha" / "GT04.png").values
    matte = cv2.resize(matte, (1920, 1080), interpolation=cv2.INTER_LINEAR)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(list_images(SHARED / "backgrounds")[: args.n]):
            img = cv2.resize(read_image(path), (1920, 1080), interpolation=cv2.INTER_AREA)
            ip, ap_ = Path(tmp) / f"{i}.png", Path(tmp) / f"{i}-a.png"
            cv2.imwrite(str(ip), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
            cv2.imwrite(str(ap_), matte)
            item = AuditItem("bench", str(i), str(ip), str(ap_))
            image, alpha = read_pair(item)
            decode = best(lambda item=item: read_pair(item), args.repeat)  # defaults bind this iteration's values
            measure = best(lambda image=image, alpha=alpha: measure_image(image, alpha), args.repeat)
            whole = best(lambda item=item: measure_item(item, 8), args.repeat)
            rows.append((path.stem, decode, measure, whole))
    print(f"{'image':<18}{'decode s':>10}{'measure s':>11}{'read+measure s':>16}{'x decode':>10}")
    for name, d, m, w in rows:
        print(f"{name:<18}{d:>10.3f}{m:>11.3f}{w:>16.3f}{w / d:>10.1f}")
    d, m, w = (float(np.mean([r[k] for r in rows])) for k in (1, 2, 3))
    print(f"{'mean':<18}{d:>10.3f}{m:>11.3f}{w:>16.3f}{w / d:>10.1f}")
    print(f"seconds per 1080p image on one core: {w:.3f} (target 0.5); measures alone {m:.3f}")


if __name__ == "__main__":
    main()
