"""Near-duplicate groups of 64-bit perceptual hashes by multi-index hashing.

Split each hash into m = ceil((d + 1) / 2) chunks: two hashes within Hamming distance d
differ in at most one bit on at least one chunk (pigeonhole). So for every chunk and every
hash, the candidates are the hashes whose chunk equals this one's or differs from it in one
bit; they are found by binary search in the sorted chunk values, and only they are compared.
That is about m * (w + 1) / 2^w * n^2 comparisons for chunks of w bits instead of n^2 / 2.
"""
from __future__ import annotations

import numpy as np


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance of uint64 arrays."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def _chunks(bits: int, n: int) -> list[tuple[int, int]]:
    """(shift, width) of n chunks covering ``bits`` bits as evenly as possible."""
    out, start = [], 0
    for i in range(n):
        width = bits // n + (1 if i < bits % n else 0)
        out.append((start, width))
        start += width
    return out


def near_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """All pairs (i, j), i < j, with Hamming distance <= max_distance, as an (n, 2) int array."""
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(h)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    found: list[np.ndarray] = []
    n_chunks = max(1, -(-(max_distance + 1) // 2))
    for shift, width in _chunks(64, n_chunks):
        key = (h >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(key, kind="stable")
        sorted_keys = key[order]
        flips = [np.uint64(0)] + [np.uint64(1 << b) for b in range(width)] if max_distance > 0 else [np.uint64(0)]
        table = None
        if width <= 22:  # a dense table of bucket starts turns each lookup into a gather
            table = np.searchsorted(sorted_keys, np.arange((1 << width) + 1, dtype=np.uint64))
        for flip in flips:
            q = key ^ flip
            if table is not None:
                qi = q.astype(np.int64)
                lo, hi = table[qi], table[qi + 1]
            else:
                lo = np.searchsorted(sorted_keys, q, side="left")
                hi = np.searchsorted(sorted_keys, q, side="right")
            counts = hi - lo
            if not counts.any():
                continue
            i = np.repeat(np.arange(n), counts)
            starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
            j = order[np.arange(len(i)) + starts]
            keep = i < j
            i, j = i[keep], j[keep]
            close = hamming(h[i], h[j]) <= max_distance
            if close.any():
                found.append(np.stack([i[close], j[close]], axis=1))
    if not found:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(found), axis=0)


def duplicate_groups(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """A group label per hash (union-find over near pairs); equal labels = duplicates."""
    n = len(hashes)
    parent = np.arange(n)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for i, j in near_pairs(hashes, max_distance):
        ri, rj = find(int(i)), find(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)])


def hash_to_int(h) -> int:
    """An imagehash.ImageHash (64 bits) as an unsigned integer."""
    bits = np.asarray(h.hash, dtype=bool).ravel()
    if bits.size != 64:
        raise ValueError(f"expected a 64-bit hash, got {bits.size} bits (use hash size 8)")
    return int("".join("1" if b else "0" for b in bits), 2)
