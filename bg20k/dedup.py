"""Near-duplicate groups of 64-bit perceptual hashes by multi-index hashing.

Split each hash into m = ceil((d + 1) / 2) chunks: two hashes within Hamming distance d
differ in at most one bit on at least one chunk (pigeonhole). So for every chunk and every
hash, the candidates are the hashes whose chunk equals this one's or differs from it in one
bit; they are found by binary search in the sorted chunk values, and only they are compared.
That is about m * (w + 1) / 2^w * n^2 comparisons for chunks of w bits instead of n^2 / 2.

`assign_groups` uses the same index for grouping without chains: images are taken in a
priority order and each one joins a group only through its kept representative (matching its
own hash or the hash of its mirror image), so a run of near-equal images (plain skies, walls)
cannot link distant images into one group; only the highest-priority entries of a bucket are
compared (a cap), so a flood of equal chunks cannot make the pairs grow quadratically.
"""
from __future__ import annotations

import numpy as np


def _bucket_table(sorted_keys: np.ndarray, width: int) -> np.ndarray | None:
    """Start of every bucket of ``width``-bit keys (a dense table turns each lookup into a
    gather); None when the table would be too large (over 2^22 buckets)."""
    if width > 22:
        return None
    return np.searchsorted(sorted_keys, np.arange((1 << width) + 1, dtype=np.uint64))


def _bucket_bounds(sorted_keys: np.ndarray, q: np.ndarray, table: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) of the entries of ``sorted_keys`` equal to each query key ``q``."""
    if table is not None:
        qi = q.astype(np.int64)
        return table[qi], table[qi + 1]
    return np.searchsorted(sorted_keys, q, side="left"), np.searchsorted(sorted_keys, q, side="right")


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
        table = _bucket_table(sorted_keys, width)
        for flip in flips:
            q = key ^ flip
            lo, hi = _bucket_bounds(sorted_keys, q, table)
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


def _capped_candidates(h: np.ndarray, queries: np.ndarray, valid: np.ndarray, prio: np.ndarray,
                       max_distance: int, bucket_cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) with prio[j] < prio[i] and Hamming(queries[i], h[j]) <= max_distance,
    looking at no more than ``bucket_cap`` entries (the highest-priority ones) per bucket."""
    n = len(h)
    n_chunks = max(1, -(-(max_distance + 1) // 2))
    by_prio = np.argsort(prio, kind="stable")
    found_i, found_j = [], []
    for shift, width in _chunks(64, n_chunks):
        mask = np.uint64((1 << width) - 1)
        key = (h[by_prio] >> np.uint64(shift)) & mask
        order = by_prio[np.argsort(key, kind="stable")]  # by key, then by priority
        sorted_keys = (h[order] >> np.uint64(shift)) & mask
        qkey = (queries >> np.uint64(shift)) & mask
        flips = [0] + ([1 << b for b in range(width)] if max_distance > 0 else [])
        table = _bucket_table(sorted_keys, width)
        for flip in flips:
            q = qkey ^ np.uint64(flip)
            lo, hi = _bucket_bounds(sorted_keys, q, table)
            counts = np.minimum(hi - lo, bucket_cap)
            counts[~valid] = 0
            if not counts.any():
                continue
            i = np.repeat(np.arange(n), counts)
            starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
            j = order[np.arange(len(i)) + starts]
            keep = (prio[j] < prio[i]) & (hamming(queries[i], h[j]) <= max_distance)
            found_i.append(i[keep])
            found_j.append(j[keep])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    return i, j, hamming(queries[i], h[j])


def assign_groups(hashes: list[int], mirrored: list[int | None], order: list[int], max_distance: int,
                  bucket_cap: int = 16) -> list[int]:
    """For each image, the index of its group's representative (itself when it starts a group).

    ``order`` lists the image indices by priority: each, in turn, joins the nearest
    representative within ``max_distance`` of its hash or of its mirror's hash (ties: the
    earlier representative), or becomes a representative. Only the ``bucket_cap``
    highest-priority entries of a multi-index bucket are looked at, so the candidates per image
    are bounded by ``2 x chunks x (bits per chunk + 1) x bucket_cap`` however many near-equal
    hashes there are; a representative past the cap of every bucket it shares with an image
    is missed, and the image starts a group of its own (a missed duplicate, never a chain).
    """
    if bucket_cap < 1:
        raise ValueError(f"bucket_cap must be at least 1, got {bucket_cap}")
    n = len(hashes)
    if n == 0:
        return []
    h = np.array(hashes, dtype=np.uint64)
    prio = np.empty(n, np.int64)
    prio[np.asarray(order, np.int64)] = np.arange(n)
    has_m = np.array([m is not None for m in mirrored], bool)
    hm = np.array([m if m is not None else 0 for m in mirrored], dtype=np.uint64)
    parts = [_capped_candidates(h, h, np.ones(n, bool), prio, max_distance, bucket_cap)]
    if has_m.any():
        parts.append(_capped_candidates(h, hm, has_m, prio, max_distance, bucket_cap))
    i = np.concatenate([p[0] for p in parts])
    j = np.concatenate([p[1] for p in parts])
    d = np.concatenate([p[2] for p in parts])
    srt = np.lexsort((prio[j], d, i))  # per image: nearest first, then the earlier representative
    i, j = i[srt], j[srt]
    ptr = np.searchsorted(i, np.arange(n + 1)).tolist()
    is_rep = [False] * n
    rep_of = [-1] * n
    jl = j.tolist()
    for k in order:
        for idx in range(ptr[k], ptr[k + 1]):
            r = jl[idx]
            if is_rep[r]:
                rep_of[k] = r
                break
        else:
            rep_of[k] = k
            is_rep[k] = True
    return rep_of


def hash_to_int(h) -> int:
    """An imagehash.ImageHash (64 bits) as an unsigned integer."""
    bits = np.asarray(h.hash, dtype=bool).ravel()
    if bits.size != 64:
        raise ValueError(f"expected a 64-bit hash, got {bits.size} bits (use hash size 8)")
    return int("".join("1" if b else "0" for b in bits), 2)
