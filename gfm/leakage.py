"""Validation leakage: the validation photos compared with every training photo and foreground
before any training, by content (so a renamed copy is caught) and by a perceptual hash (so a
resized or re-encoded copy is caught). A validation score on training photos measures memory,
not generalization: an overlap is an error unless the user allows it, and then it is recorded.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# Two 64-bit DCT hashes this close are the same picture. Measured on the 20 alphamatting photos
# scaled to 96-800 px high and re-encoded as JPEG q75: a copy differs by at most 2 bits; the
# closest two different photos differ by 22 (tests/test_leakage.py checks both bounds).
PHASH_MAX_DISTANCE = 4


@dataclass(frozen=True)
class Fingerprint:
    path: str
    sha256: str  # of the file's bytes: the same file under another name
    phash: int | None  # of the picture: a resized or re-encoded copy; None when it does not decode


def phash(grey: np.ndarray) -> int:
    """64-bit DCT hash of a grey image: its 32x32 area reduction, the 8x8 lowest frequencies,
    each bit set where the coefficient exceeds their median."""
    small = cv2.resize(grey.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:8, :8].ravel()
    bits = low > np.median(low)
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def fingerprint(path: str | os.PathLike) -> Fingerprint:
    """The file's sha256 and the picture's perceptual hash (decoded at reduced size: cheap)."""
    data = Path(path).read_bytes()
    buf = np.frombuffer(data, np.uint8)
    grey = cv2.imdecode(buf, cv2.IMREAD_REDUCED_GRAYSCALE_2)
    if grey is None:
        grey = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return Fingerprint(str(path), hashlib.sha256(data).hexdigest(), phash(grey) if grey is not None else None)


def fingerprints(paths: list, workers: int | None = None) -> list[Fingerprint]:
    """Fingerprints of the files among ``paths`` (shard members, which are not files, are left out)."""
    files = [p for p in paths if isinstance(p, (str, os.PathLike))]
    with ThreadPoolExecutor(max(1, min(8, workers or os.cpu_count() or 1))) as pool:  # cv2 releases the GIL
        return list(pool.map(fingerprint, files))


def find_overlap(val: list, train: list, workers: int | None = None) -> list[dict[str, str]]:
    """One record per validation image that is also a training image: {val, train, how}."""
    vf, tf = fingerprints(val, workers), fingerprints(train, workers)
    by_sha = {f.sha256: f for f in tf}
    hashed = [f for f in tf if f.phash is not None]
    table = np.array([f.phash for f in hashed], dtype=np.uint64) if hashed else np.zeros(0, np.uint64)
    out = []
    for v in vf:
        if v.sha256 in by_sha:
            out.append({"val": v.path, "train": by_sha[v.sha256].path, "how": "same bytes"})
            continue
        if v.phash is None or not len(table):
            continue
        x = np.bitwise_xor(table, np.uint64(v.phash))
        dist = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
        i = int(np.argmin(dist))
        if dist[i] <= PHASH_MAX_DISTANCE:
            out.append({"val": v.path, "train": hashed[i].path,
                        "how": f"same picture (perceptual hash {int(dist[i])} of 64 bits apart)"})
    return out


def overlap_message(overlap: list[dict[str, str]], limit: int = 10) -> str:
    lines = [f"{o['val']} = {o['train']} ({o['how']})" for o in overlap[:limit]]
    more = f"; and {len(overlap) - limit} more" if len(overlap) > limit else ""
    return (f"{len(overlap)} validation photo(s) are also training photos: " + "; ".join(lines) + more +
            ". Validate on photos the model never trains on (remove them from --val or from the training "
            "data), or pass --allow-val-overlap if you mean it (the overlap is then recorded)")
