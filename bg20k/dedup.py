"""Near-duplicate groups of 64-bit perceptual hashes by multi-index hashing.

Split each hash into m = ceil((d + 1) / 2) chunks: two hashes within Hamming distance d
differ in at most one bit on at least one chunk (pigeonhole). So for every chunk and every
hash, the candidates are the hashes whose chunk equals this one's or differs from it in one
bit; they are found by binary search in the sorted chunk values, and only they are compared.
That is about m * (w + 1) / 2^w * n^2 comparisons for chunks of w bits instead of n^2 / 2.

`assign_groups` uses the same index for grouping without chains: images are taken in a
priority order and each one is compared only with the groups' kept representatives (its own
hash and the hash of its mirror image), so a run of near-equal images (plain skies, walls) can
neither link distant images into one group nor make the pairs grow quadratically; buckets are
capped so that a flood of equal chunks costs a bounded number of comparisons.
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


def _lookup_keys(h: int, n_chunks: int, max_distance: int) -> list[tuple[int, int]]:
    """(chunk index, key) of every bucket that may hold a hash within ``max_distance`` of ``h``."""
    out = []
    for c, (shift, width) in enumerate(_chunks(64, n_chunks)):
        key = (h >> shift) & ((1 << width) - 1)
        out.append((c, key))
        if max_distance > 0:
            out.extend((c, key ^ (1 << b)) for b in range(width))
    return out


def assign_groups(hashes: list[int], mirrored: list[int | None], order: list[int], max_distance: int,
                  bucket_cap: int = 64) -> list[int]:
    """For each image, the index of its group's representative (itself when it starts a group).

    ``order`` lists the image indices by priority: each, in turn, joins the nearest
    representative within ``max_distance`` of its hash or of its mirror's hash (ties: the earlier
    representative), or becomes a representative. A bucket holds at most ``bucket_cap``
    representatives; one that would go past it is left out of that bucket only (a later copy
    that matches it only through that chunk is missed and starts a group of its own: a missed
    duplicate, never a chain), so the work per image is bounded by
    ``chunks x (bits per chunk + 1) x 2 x bucket_cap`` comparisons.
    """
    if bucket_cap < 1:
        raise ValueError(f"bucket_cap must be at least 1, got {bucket_cap}")
    n_chunks = max(1, -(-(max_distance + 1) // 2))
    buckets: list[dict[int, list[int]]] = [{} for _ in range(n_chunks)]
    rep_of = [-1] * len(hashes)
    rank: dict[int, int] = {}
    for i in order:
        best, best_d = -1, max_distance + 1
        for q in (hashes[i], mirrored[i]):
            if q is None:
                continue
            for c, key in _lookup_keys(q, n_chunks, max_distance):
                for r in buckets[c].get(key, ()):
                    d = (q ^ hashes[r]).bit_count()
                    if d < best_d or (d == best_d and best >= 0 and rank[r] < rank[best]):
                        best, best_d = r, d
        if best >= 0:
            rep_of[i] = best
            continue
        rep_of[i] = i
        rank[i] = len(rank)
        for c, (shift, width) in enumerate(_chunks(64, n_chunks)):
            b = buckets[c].setdefault((hashes[i] >> shift) & ((1 << width) - 1), [])
            if len(b) < bucket_cap:
                b.append(i)
    return rep_of


def hash_to_int(h) -> int:
    """An imagehash.ImageHash (64 bits) as an unsigned integer."""
    bits = np.asarray(h.hash, dtype=bool).ravel()
    if bits.size != 64:
        raise ValueError(f"expected a 64-bit hash, got {bits.size} bits (use hash size 8)")
    return int("".join("1" if b else "0" for b in bits), 2)
