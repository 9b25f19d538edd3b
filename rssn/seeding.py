"""Random generators derived from a seed and names, never from global state.

A composite's random choices depend only on (seed, foreground name, slot), so the bytes do
not depend on the number of workers or on the order of work.
"""
from __future__ import annotations

import hashlib

import numpy as np


def _words(key: object) -> list[int]:
    digest = hashlib.sha256(str(key).encode("utf-8")).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def derive_rng(seed: int, *keys: object) -> np.random.Generator:
    """A PCG64 generator seeded from ``seed`` and any number of names or numbers."""
    entropy = [int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF]
    for k in keys:
        entropy.extend(_words(k))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
