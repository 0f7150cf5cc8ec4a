"""The first part of a drawing, sent as the page would send it while someone is still drawing.

Quick, Draw! guesses *during* drawing, so a model is judged (`early.py`) and trained (`random_prefixes`)
on prefixes: the first k strokes, or the first k points in drawing order (the last stroke cut mid-way).
A cut prefix is sent `as_capture`: every stroke carries a time list, as the page's strokes do, so
`encode_batch` normalises it like any live capture and the partial drawing fills the 0..255 frame (sent
without times, a prefix of a simplified drawing that happened to still pass `normalize.is_simplified`
would go through un-normalised, small in a corner). Nothing here normalises or encodes on its own.
torch-free, like all of `data/`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from doodle_rnn.data.encode import LengthRules, encode_batch, steps_to_strokes


def ceil_share(percent: int, n: int) -> int:
    """ceil(percent / 100 * n) in integers (no float rounding: 30% of 10 is 3)."""
    return -(-percent * n // 100)


def n_points(strokes: Sequence) -> int:
    return sum(len(s[0]) for s in strokes)


def first_points(strokes: Sequence, k: int) -> list:
    """The first `k` points over all strokes in drawing order (the last stroke kept cut mid-way)."""
    out = []
    left = k
    for s in strokes:
        if left <= 0:
            break
        n = len(s[0])
        out.append([list(c) for c in s] if n <= left else [list(c[:left]) for c in s])
        left -= n
    return out


def as_capture(strokes: Sequence) -> list:
    """Strokes as the drawing page sends them, `[xs, ys, ts]`: a raw capture's own times are kept,
    otherwise each point gets its running index in drawing order (normalisation does not read times)."""
    if all(len(s) == 3 for s in strokes):
        return [[list(c) for c in s] for s in strokes]
    out = []
    t = 0
    for s in strokes:
        n = len(s[0])
        out.append([list(s[0]), list(s[1]), list(range(t, t + n))])
        t += n
    return out


def random_prefixes(
    steps: np.ndarray,
    lengths: np.ndarray,
    encoding: str,
    rules: LengthRules,
    rng: np.random.Generator,
    prob: float,
    min_share: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Training: replace each drawing of a batch, with probability `prob`, by a random prefix of it.

    The prefix is cut at a stroke or a point boundary (even odds) at a share drawn from
    U(min_share, 1) (rounded up, so never empty), then sent `as_capture` through `encode_batch`, so
    the model learns from exactly what the page sends while someone is halfway through a drawing.
    Needs the `stroke3` encoding, the only one whose steps give the strokes back (`reference` drops
    where each stroke starts, so its re-normalised prefix would not be what a capture gives).
    """
    if encoding != "stroke3":
        raise ValueError(
            "prefix training needs a cache with the stroke3 encoding (doodle prepare --encoding stroke3)"
        )
    lengths = np.asarray(lengths, dtype=np.int64)
    chosen = np.flatnonzero(rng.random(len(lengths)) < prob)
    if not len(chosen):
        return steps, lengths
    starts = np.cumsum(lengths) - lengths
    shares = rng.uniform(min_share, 1.0, len(chosen))
    by_points = rng.random(len(chosen)) < 0.5
    cut = []
    for i, share, points in zip(chosen, shares, by_points, strict=True):
        drawing = steps_to_strokes(steps[starts[i] : starts[i] + lengths[i]], encoding)
        if points:
            part = first_points(drawing, max(1, math.ceil(share * n_points(drawing))))
        else:
            part = drawing[: max(1, math.ceil(share * len(drawing)))]
        cut.append(as_capture(part))
    new_steps, new_lengths, kept = encode_batch(cut, encoding, LengthRules(1, rules.max_len))
    parts = [steps[starts[i] : starts[i] + lengths[i]] for i in range(len(lengths))]
    out_lengths = lengths.copy()
    new_starts = np.cumsum(new_lengths) - new_lengths
    for j, k in enumerate(kept):  # a prefix with no step at all would keep the whole drawing
        i = chosen[k]
        parts[i] = new_steps[new_starts[j] : new_starts[j] + new_lengths[j]]
        out_lengths[i] = new_lengths[j]
    return np.concatenate(parts), out_lengths
