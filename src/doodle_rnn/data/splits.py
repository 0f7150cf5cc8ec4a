"""The stable train/val/test rule: a drawing's split is a function of a seeded hash of its key_id only,
so adding data never moves a drawing between train and test, and duplicates share one hash."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np


def key_hash(key_ids: Iterable[str], seed: int) -> np.ndarray:
    """Seeded 64-bit hash per key_id (blake2b: stable across runs, machines and Python versions)."""
    salt = seed.to_bytes(8, "little", signed=True)
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8, salt=salt).digest(), "little")
            for k in key_ids
        ),
        dtype=np.uint64,
    )


def split_of(hashes: np.ndarray, val_frac: float, test_frac: float) -> np.ndarray:
    """0 train, 1 val, 2 test, from the top 53 bits of each hash as a uniform number in [0, 1)."""
    u = (hashes >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    out = np.zeros(len(hashes), dtype=np.uint8)
    out[u < test_frac + val_frac] = 1
    out[u < test_frac] = 2
    return out
