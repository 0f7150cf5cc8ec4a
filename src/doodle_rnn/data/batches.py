"""Which drawings go into which batch, the same on every rank: numpy only, no torch.

`epoch_batches` makes one training epoch's batches on demand (random by default), `eval_batches`
cuts evaluation rows sorted by length with a cap on the steps in a batch, and `rank_share` gives
each data-parallel rank the rows it alone reads. The batches become padded tensors (and are
augmented, for training) in `doodle_rnn.tensors`; the padding itself is `encode.pad_steps`, which
needs no torch either.

Scale: an epoch is held as one shuffled order of positions (4 bytes a drawing) plus the order of its
batches, and batch j is cut from it when asked for, so starting an epoch of 40 million drawings costs
one permutation, not a Python loop over 200,000 batch arrays; skipping to batch j (a resumed run)
costs nothing.

Batches: training draws them at random by default (`--batching random`: each batch a random draw,
sorted by length inside for the GRU kernel); `--batching bucket` puts drawings of similar
within-class length quantile together, which learned slower (val top-1 0.46 vs 0.74 after 4 epochs
on the 10-animal workload, docs/benchmarks.md) for ~5% more speed. Evaluation sorts by length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Data-parallel ranks read blocks of up to this many consecutive rows, dealt round robin (`rank_share`).
SHARE_BLOCK = 4096


def positions_dtype(n: int) -> type:
    """The narrowest integer type that holds positions 0..n (int32 below 2**31: half of int64)."""
    return np.int32 if n < 2**31 - 1 else np.int64


class EpochBatches(Sequence):
    """One epoch's batches, each cut from one shuffled order when asked for (see the module docstring).

    Batch j holds `order[c * batch_size:(c + 1) * batch_size]` for chunk c = `chunk_order[j]`, sorted by
    length inside (for the GRU kernel), and mapped through `rows` when given (a rank's share: local
    positions -> positions of the split); `count` may be lower than the number of chunks, so that every
    data-parallel rank takes the same number of steps.
    """

    def __init__(self, order: np.ndarray, lengths: np.ndarray, batch_size: int, chunk_order: np.ndarray,
                 count: int | None = None, rows: np.ndarray | None = None):  # fmt: skip
        self.order, self.lengths, self.batch_size = order, lengths, batch_size
        self.chunk_order, self.rows = chunk_order, rows
        self.count = len(chunk_order) if count is None else min(count, len(chunk_order))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[k] for k in range(*j.indices(self.count))]
        if not -self.count <= j < self.count:
            raise IndexError(f"batch {j} of {self.count}")
        c = int(self.chunk_order[j % self.count])
        b = self.order[c * self.batch_size : (c + 1) * self.batch_size].astype(np.int64)
        b = b[np.argsort(self.lengths[b], kind="stable")]
        return b if self.rows is None else self.rows[b].astype(np.int64)


def n_chunks(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def epoch_batches(
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    pool: int = 64,
    labels: np.ndarray | None = None,
    count: int | None = None,
    rows: np.ndarray | None = None,
) -> EpochBatches:
    """A training epoch over positions 0..len(lengths)-1: shuffled, sorted by length within pools of
    `pool * batch_size`, cut into batches whose order is shuffled (`pool=1`: plain random batches).

    With `labels`, the sort key is a drawing's length *quantile within its own class* instead of its
    raw length. Length says a lot about the class (snakes are short, scorpions long), so batches of
    equal raw length are batches of a few classes, and their gradients pull the model from one class
    prior to the next: on the 10-animal workload raw-length buckets reached 0.21 validation accuracy
    after 6 epochs, against 0.97 with random batches. Quantile buckets keep every class in every batch
    in proportion, while long drawings still travel with long drawings, but they too learned slower
    (0.46 vs 0.74 after 4 epochs), which is why training's default is `pool=1`: random batches.

    `count` and `rows`: see `EpochBatches`.
    """
    n = len(lengths)
    order = np.arange(n, dtype=positions_dtype(n))
    rng.shuffle(order)  # = rng.permutation(n), without its int64 copy
    key = lengths if labels is None else _within_class_quantile(lengths, labels, rng)
    size = pool * batch_size
    if pool > 1:  # sort within pools; with pool 1 the sort inside each batch does it, when it is cut
        for s in range(0, n, size):
            chunk = order[s : s + size]
            order[s : s + size] = chunk[np.argsort(key[chunk], kind="stable")]
    chunk_order = rng.permutation(n_chunks(n, batch_size))
    return EpochBatches(order, lengths, batch_size, chunk_order, count, rows)


def bucket_batches(
    lengths: np.ndarray,
    batch_size: int,
    shuffle: bool,
    rng: np.random.Generator | None = None,
    pool: int = 64,
    labels: np.ndarray | None = None,
    max_steps: int | None = None,
) -> list[np.ndarray]:
    """Positions 0..len(lengths)-1 as a list of batches: `epoch_batches` when shuffling, else
    `eval_batches` (sorted by length globally, `max_steps` capping a batch's total steps)."""
    if not shuffle:
        return eval_batches(lengths, batch_size, max_steps)
    return list(epoch_batches(lengths, batch_size, rng or np.random.default_rng(), pool, labels))


def eval_batches(lengths: np.ndarray, batch_size: int, max_steps: int | None = None) -> list[np.ndarray]:
    """Positions sorted by length, cut into batches of <= batch_size drawings; `max_steps` also caps a
    batch's total steps, so the batches of the longest drawings hold fewer of them: memory follows
    the steps in a batch, and 512 drawings of 150 steps took 1 GB."""
    order = np.argsort(lengths, kind="stable")
    if max_steps is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return _cap_steps(order, lengths[order], batch_size, max_steps)


def _cap_steps(
    order: np.ndarray, sorted_lengths: np.ndarray, batch_size: int, max_steps: int
) -> list[np.ndarray]:
    """Cut `order` (ascending length) into runs of <= batch_size items and <= max_steps steps (>= 1 item)."""
    batches, start, n = [], 0, len(order)
    total = np.concatenate([[0], np.cumsum(sorted_lengths, dtype=np.int64)])
    while start < n:
        end = min(start + batch_size, n)
        fits = int(np.searchsorted(total, total[start] + max_steps, side="right")) - 1
        end = max(start + 1, min(end, fits))
        batches.append(order[start:end])
        start = end
    return batches


def _within_class_quantile(lengths: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each item's rank in (length, random tie-break) order among its class, scaled to [0, 1)."""
    n = len(lengths)
    order = np.lexsort((rng.random(n), lengths, labels))  # by class, then length, ties at random
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    counts = np.bincount(labels)[sorted_labels]
    q = np.empty(n, dtype=np.float64)
    q[order] = (np.arange(n) - starts) / counts
    return q


def share_block(n: int, world: int) -> int:
    """Rows per block of `rank_share`: SHARE_BLOCK, or less on small splits, so that every rank gets at
    least 8 blocks' worth (a 1,000-row split over 2 ranks: blocks of 62)."""
    return max(1, min(SHARE_BLOCK, n // (8 * world)))


def share_size(n: int, rank: int, world: int, block: int | None = None) -> int:
    """How many of n rows `rank_share` gives `rank` (computed, not materialised)."""
    block = block or share_block(n, world)
    cycle = world * block
    return n // cycle * block + min(max(n % cycle - rank * block, 0), block)


def rank_share(n: int, rank: int, world: int, block: int | None = None) -> np.ndarray:
    """Positions of rows 0..n-1 that data-parallel rank `rank` of `world` reads (all of them for one rank).

    Blocks of `block` (default `share_block`) consecutive rows are dealt round robin. Consecutive rows of a split are
    neighbours in the cache's steps file (and of one class), so a rank reads about 1/world of the
    file, not pages scattered over all of it, while every rank still sees every class in proportion.
    The shares are fixed for a run; each rank shuffles its own every epoch.
    """
    if world <= 1:
        return np.arange(n, dtype=positions_dtype(n))
    block = block or share_block(n, world)
    first = np.arange(rank * block, n, world * block, dtype=np.int64)
    out = (first[:, None] + np.arange(block)).ravel()
    return out[out < n].astype(positions_dtype(n))


def steps_per_rank(n: int, batch_size: int, world: int, block: int | None = None) -> int:
    """Batches every rank takes per epoch: the smallest share's, so that ranks step together and none
    waits forever in an all-reduce (a bigger share leaves its last few, random, batches out)."""
    return min(n_chunks(share_size(n, r, world, block), batch_size) for r in range(world))
