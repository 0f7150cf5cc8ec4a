"""The first part of a drawing, as the game sees it while someone is still drawing.

Quick, Draw! guesses *during* drawing, so a model is judged (and can be trained) on prefixes: the first
k strokes, or the first k points in drawing order (the last stroke cut mid-way). A prefix is then sent
as a capture would be: `as_capture` re-normalises it with the same `normalize` a raw capture goes
through on the server, so a partial drawing fills the 0..255 frame exactly as it does live (a prefix
of an already simplified drawing would otherwise pass `is_simplified` unchanged when it happens to
touch the frame's edges, and sit small in a corner when it does not).

Shares are rounded up (`ceil(share * n)`), so every share > 0 keeps at least one stroke or point and
share 1 is the whole drawing. torch-free, like all of `data/`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from doodle_rnn.data.encode import LengthRules, encode_batch, features_to_strokes, steps_to_features
from doodle_rnn.data.normalize import normalize_many

UNITS = ("strokes", "points")
STROKE_SHARES = (0.25, 0.5, 0.75, 1.0)
POINT_SHARES = tuple(round(0.1 * k, 1) for k in range(1, 11))


def stroke_prefix(strokes: Sequence, share: float) -> list:
    """The first `ceil(share * n_strokes)` strokes."""
    k = max(1, math.ceil(share * len(strokes) - 1e-9))
    return [list(s) for s in strokes[:k]]


def point_prefix(strokes: Sequence, share: float) -> list:
    """The first `ceil(share * n_points)` points in drawing order; the last stroke kept is cut mid-way."""
    total = sum(len(s[0]) for s in strokes)
    left = max(1, math.ceil(share * total - 1e-9))
    out: list = []
    for s in strokes:
        if left <= 0:
            break
        n = len(s[0])
        out.append([list(c[: min(n, left)]) for c in s])
        left -= n
    return out


def prefix(strokes: Sequence, share: float, unit: str = "strokes") -> list:
    if unit == "strokes":
        return stroke_prefix(strokes, share)
    if unit == "points":
        return point_prefix(strokes, share)
    raise ValueError(f"unit must be one of {', '.join(UNITS)}, not {unit!r}")


def as_capture(strokes_list: Sequence[Sequence]) -> list:
    """Each drawing re-normalised as a live capture of it would be (fills the frame, resampled, RDP)."""
    return normalize_many(strokes_list, force=True)


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
    U(min_share, 1), then re-normalised like a capture (`as_capture`) and encoded again, so the model
    learns from exactly what the page sends while someone is halfway through a drawing. Needs the
    `stroke3` encoding, the only one whose steps give the strokes back (`reference` drops where each
    stroke starts, so its re-normalised prefix would not be what a capture gives).
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
    units = rng.random(len(chosen)) < 0.5
    cut = []
    for i, share, by_points in zip(chosen, shares, units, strict=True):
        drawing = features_to_strokes(steps_to_features(steps[starts[i] : starts[i] + lengths[i]]), encoding)
        cut.append(point_prefix(drawing, share) if by_points else stroke_prefix(drawing, share))
    new_steps, new_lengths, kept = encode_batch(as_capture(cut), encoding, LengthRules(1, rules.max_len))
    parts = [steps[starts[i] : starts[i] + lengths[i]] for i in range(len(lengths))]
    out_lengths = lengths.copy()
    new_starts = np.cumsum(new_lengths) - new_lengths
    for j, k in enumerate(kept):  # a prefix with no step at all (one dot) keeps the whole drawing
        i = chosen[k]
        parts[i] = new_steps[new_starts[j] : new_starts[j] + new_lengths[j]]
        out_lengths[i] = new_lengths[j]
    return np.concatenate(parts), out_lengths
