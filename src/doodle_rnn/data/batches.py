"""Length-bucketed batches of padded features, the one way drawings become tensors.

Training, evaluation and serving all go through `pad_features` (and so through
`encode.steps_to_features`): there is no second conversion that could drift.

Bucketing: drawings are sorted by length inside large random pools, cut into batches, and the batches
are shuffled, so a batch holds drawings of similar length (little padding, little wasted compute) while
the order of batches stays random.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from doodle_rnn.data.cache import DoodleCache
from doodle_rnn.data.encode import steps_to_features


def pad_features(steps: np.ndarray, lengths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated int16 steps + lengths -> zero-padded float32 [B, T, 3] and int64 lengths [B]."""
    lengths = np.asarray(lengths, dtype=np.int64)
    b, t = len(lengths), int(lengths.max()) if len(lengths) else 0
    feats = steps_to_features(steps)
    out = np.zeros((b, t, 3), dtype=np.float32)
    rows = np.repeat(np.arange(b), lengths)
    cols = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = feats
    return torch.from_numpy(out), torch.from_numpy(lengths)


def bucket_batches(
    lengths: np.ndarray, batch_size: int, shuffle: bool, rng: np.random.Generator | None = None, pool: int = 64
) -> list[np.ndarray]:
    """Split positions 0..len(lengths)-1 into batches of similar length.

    With shuffle, positions are shuffled, sorted by length within pools of `pool * batch_size`, cut into
    batches, and the batch order is shuffled. Without, they are sorted by length globally (evaluation).
    """
    n = len(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    rng = rng or np.random.default_rng()
    perm = rng.permutation(n)
    size = pool * batch_size
    batches = []
    for s in range(0, n, size):
        chunk = perm[s : s + size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def iterate_cache(
    cache: DoodleCache, indices: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (cache indices, x [B, T, 3], lengths [B], labels [B]) over `indices`."""
    indices = np.asarray(indices)
    batches = bucket_batches(cache.lengths[indices], batch_size, shuffle, np.random.default_rng(seed))
    for b in batches:
        idx = indices[b]
        steps, lens = cache.batch_steps(idx)
        x, lengths = pad_features(steps, lens)
        yield idx, x, lengths, torch.from_numpy(cache.labels[idx].astype(np.int64))
