"""Turn any pen capture into Google's *simplified* Quick, Draw! form, as exactly as we can.

Why exact: the model trains on the official simplified files, while the browser and the raw files give
screen coordinates with times. If our simplification differs from Google's, the model sees a slightly
different kind of drawing at prediction time than at training time.

Google's published procedure (quickdraw-dataset README): align the drawing to the top-left (minimum 0),
scale uniformly so the largest coordinate is 255, resample every stroke at 1 px spacing, simplify
each stroke with Ramer-Douglas-Peucker (epsilon 2.0), integer coordinates. This module reproduces
7,690 of the 7,692 raw/simplified pairs of the shared sample exactly (99.97%,
`benchmarks/bench_normalize.py`).

RDP often meets exact ties, which the last bit of floating-point noise decides, so the arithmetic is
chosen to reproduce Google's noise; do not "tidy" it. All float64: scale as `(v - min) * 255 / extent`;
segment lengths `sqrt(dx*dx + dy*dy)` (not `np.hypot`) with a sequential running sum; samples at
s = 0, 1, 2, ... < L plus the stroke's last point, each `a * (1 - t) + b * t` on its segment; a dot
becomes two identical points; RDP distance to the infinite line through the chord, first farthest
point, split while `> 2.0`; round half to even only at the very end. Each choice, the variants tried
and what they scored, and the two drawings still missed: `docs/normalize.md`.

Speed: everything is vectorised over a batch of drawings. Resampling locates each sample's segment
with one integer `searchsorted`; RDP runs breadth-first, one numpy pass per recursion level over all
open segments of all strokes at once (the result equals the recursive algorithm's, since each segment's
split depends only on that segment). Use `normalize_many` for throughput; `normalize_strokes` is the
same code with a batch of one.

Pass-through: a drawing that `is_simplified` is returned unchanged (as Python ints), because running
the procedure again on simplified data would move points (the bounding box of Google's simplified
drawings often stops short of 0 or 255, since RDP may drop an extreme point).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from doodle_rnn.data.drawing import Drawing

SCALE = 255
EPSILON = 2.0
# `is_simplified` slack: among the 9,810 official simplified drawings in the shared sample the largest
# minimum is 46 (x) / 11 (y) and the largest coordinate is at least 241, so these bounds pass them all
# while a capture drawn in a corner of a small integer canvas still gets normalised.
_MAX_MIN = 64
_MIN_MAX = 191
# Drawings per vectorised pass: large enough to amortise numpy's per-call cost, small enough to stay in
# cache (on the shared 2-core box: 2,000 drawings at once ran at ~3,000/s, chunks of 256 at ~7,400/s).
_CHUNK = 256

SimplifiedStrokes = list[list[list[int]]]


def _integral_in_frame(values: Sequence) -> tuple[float, float] | None:
    """(min, max) of `values` if all are integer-valued numbers within 0..255, else None."""
    lo, hi = math.inf, -math.inf
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            return None
        if not 0 <= v <= SCALE or v != int(v):  # NaN fails the range test before int()
            return None
        lo = min(lo, v)
        hi = max(hi, v)
    return lo, hi


def is_simplified(strokes: Sequence) -> bool:
    """True when `strokes` already look like Google's simplified form.

    The test: at least one stroke; every stroke is `[xs, ys]` (no time list) with equal, non-zero
    lengths; every coordinate is integer-valued within 0..255; and the drawing sits in the canonical
    frame: min x and min y at most 64, largest coordinate at least 191. All 9,810 official simplified
    drawings of the shared sample pass; no raw drawing passes (they carry times). A bounding box that
    touches exactly 0 and 255 would be the natural test, but 29% of Google's own simplified drawings
    fail it (RDP may drop the extreme point), hence the slack.
    """
    if not strokes:
        return False
    min_x = min_y = math.inf
    top = -math.inf
    for stroke in strokes:
        if len(stroke) != 2 or len(stroke[0]) != len(stroke[1]) or len(stroke[0]) == 0:
            return False
        rx = _integral_in_frame(stroke[0])
        ry = _integral_in_frame(stroke[1]) if rx is not None else None
        if ry is None:
            return False
        min_x, min_y, top = min(min_x, rx[0]), min(min_y, ry[0]), max(top, rx[1], ry[1])
    return min_x <= _MAX_MIN and min_y <= _MAX_MIN and top >= _MIN_MAX


def _as_ints(strokes: Sequence) -> SimplifiedStrokes:
    return [[[int(v) for v in s[0]], [int(v) for v in s[1]]] for s in strokes]


def normalize_strokes(strokes: Sequence) -> SimplifiedStrokes:
    """One drawing (strokes `[xs, ys]` or `[xs, ys, ts]`, lists or arrays) -> simplified strokes.

    Empty strokes are dropped; an empty drawing gives `[]`. A drawing with no extent at all (one point,
    or all points equal) maps to the origin.
    """
    return normalize_many([strokes])[0]


def normalize_drawing(d: Drawing) -> Drawing:
    """A new `Drawing` with simplified strokes; every other field is kept."""
    return dataclasses.replace(d, strokes=normalize_strokes(d.strokes), extra=dict(d.extra))


def normalize_drawings(drawings: Iterable[Drawing], batch_size: int = _CHUNK) -> Iterator[Drawing]:
    """Stream `normalize_drawing` over many drawings, vectorised per batch (order kept)."""
    it = iter(drawings)
    while batch := list(itertools.islice(it, batch_size)):
        for d, s in zip(batch, normalize_many([d.strokes for d in batch]), strict=True):
            yield dataclasses.replace(d, strokes=s, extra=dict(d.extra))


def normalize_many(drawings: Sequence[Sequence]) -> list[SimplifiedStrokes]:
    """Simplify many drawings at once (the fast path); same result as `normalize_strokes` on each."""
    out: list[SimplifiedStrokes | None] = [None] * len(drawings)
    todo: list[int] = []
    strokes_todo: list[list] = []
    for i, strokes in enumerate(drawings):
        if is_simplified(strokes):
            out[i] = _as_ints(strokes)
            continue
        kept = [s for s in strokes if len(s[0])]
        for s in kept:
            if len(s) < 2 or len(s[0]) != len(s[1]):
                raise ValueError(f"drawing {i}: a stroke must be [xs, ys] or [xs, ys, ts] of equal lengths")
        if not kept:
            out[i] = []
            continue
        todo.append(i)
        strokes_todo.append(kept)
    for lo in range(0, len(todo), _CHUNK):
        results = _simplify_batch(strokes_todo[lo : lo + _CHUNK])
        for i, result in zip(todo[lo : lo + _CHUNK], results, strict=True):
            out[i] = result
    return out  # type: ignore[return-value]


def _simplify_batch(drawings: list[list]) -> list[SimplifiedStrokes]:
    """Align, scale, resample and simplify drawings whose strokes are all non-empty."""
    stroke_len = np.fromiter((len(s[0]) for d in drawings for s in d), dtype=np.int64)
    strokes_per_drawing = np.fromiter((len(d) for d in drawings), dtype=np.int64)
    x = np.fromiter(itertools.chain.from_iterable(s[0] for d in drawings for s in d), np.float64)
    y = np.fromiter(itertools.chain.from_iterable(s[1] for d in drawings for s in d), np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("stroke coordinates must be finite numbers")

    # 1-2: align each drawing to the top-left and scale its larger extent to 255.
    points_per_drawing = np.add.reduceat(stroke_len, np.cumsum(strokes_per_drawing) - strokes_per_drawing)
    first = np.cumsum(points_per_drawing) - points_per_drawing
    min_x, min_y = np.minimum.reduceat(x, first), np.minimum.reduceat(y, first)
    extent = np.maximum(np.maximum.reduceat(x, first) - min_x, np.maximum.reduceat(y, first) - min_y)
    extent[extent == 0] = 1.0  # a single point or a dot: everything maps to the origin
    point_drawing = np.repeat(np.arange(len(drawings)), points_per_drawing)
    x = (x - min_x[point_drawing]) * SCALE / extent[point_drawing]
    y = (y - min_y[point_drawing]) * SCALE / extent[point_drawing]

    # 3-4: resample at 1 px, then RDP; round half to even at the very end.
    rx, ry, sample_len = _resample(x, y, stroke_len)
    keep = _rdp_mask(rx, ry, sample_len, EPSILON)
    xi = np.rint(rx[keep]).astype(np.int64).tolist()
    yi = np.rint(ry[keep]).astype(np.int64).tolist()
    kept_len = np.add.reduceat(keep, np.cumsum(sample_len) - sample_len).tolist()

    result: list[SimplifiedStrokes] = []
    pos = 0
    lens = iter(kept_len)
    for n_strokes in strokes_per_drawing.tolist():
        strokes = []
        for _ in range(n_strokes):
            n = next(lens)
            strokes.append([xi[pos : pos + n], yi[pos : pos + n]])
            pos += n
        result.append(strokes)
    return result


def _segmented_cumsum(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per-segment running sums, each starting afresh, bit-identical to `np.cumsum` on each segment.

    A global cumsum minus each segment's offset would add rounding noise of the size of the batch
    total; instead segments of similar length are padded into one 2-D array per power-of-two bucket
    and summed along rows (numpy accumulates sequentially, like a per-segment `np.cumsum`).
    """
    out = np.empty_like(values)
    starts = np.cumsum(lengths) - lengths
    bucket = np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64)
    for b in np.unique(bucket).tolist():
        rows = np.flatnonzero(bucket == b)
        width = int(lengths[rows].max())
        cols = np.arange(width)
        valid = cols[None, :] < lengths[rows][:, None]
        idx = np.where(valid, starts[rows][:, None] + cols[None, :], 0)
        block = np.where(valid, values[idx], 0.0)
        np.cumsum(block, axis=1, out=block)
        out[idx[valid]] = block[valid]
    return out


def _resample(
    x: np.ndarray, y: np.ndarray, stroke_len: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample every stroke at arc lengths 0, 1, 2, ... < L, plus its last point.

    On the segment j with the largest `cum[j] <= s`: `v[j]` on a vertex, else `a * (1 - t) + b * t`
    with `t = (s - cum[j]) / seg[j]` (Google's arithmetic, see the module doc). A stroke of length 0
    gives two copies of its point.
    """
    n = len(x)
    start = np.cumsum(stroke_len) - stroke_len
    last = start + stroke_len - 1
    seg = np.zeros(n)
    dx, dy = np.diff(x), np.diff(y)
    seg[1:] = np.sqrt(dx * dx + dy * dy)  # not np.hypot: it differs in the last bit
    seg[start] = 0.0  # no segment joins two strokes
    cum = _segmented_cumsum(seg, stroke_len)
    length = cum[last]
    n_samples = np.maximum(np.ceil(length), 1).astype(np.int64) + 1
    sample_start = np.cumsum(n_samples) - n_samples
    total = int(n_samples.sum())

    # For each integer sample k of a stroke, the last vertex j with cum[j] <= k: vertex j "covers"
    # samples from ceil(cum[j]) on; an integer key per vertex keeps this exact for the whole batch.
    point_stroke = np.repeat(np.arange(len(stroke_len)), stroke_len)
    key = sample_start[point_stroke] + np.minimum(np.ceil(cum).astype(np.int64), n_samples[point_stroke] - 1)
    g = np.arange(total)
    j = np.searchsorted(key, g, side="right") - 1
    sample_stroke = np.repeat(np.arange(len(stroke_len)), n_samples)
    s = (g - sample_start[sample_stroke]).astype(np.float64)
    is_last = np.zeros(total, dtype=bool)
    is_last[sample_start + n_samples - 1] = True
    j[is_last] = last
    on_vertex = is_last | (s == cum[j])

    rx = x[j].copy()
    ry = y[j].copy()
    m = ~on_vertex
    jm = j[m]
    t = (s[m] - cum[jm]) / seg[jm + 1]
    u = 1.0 - t
    rx[m] = x[jm] * u + x[jm + 1] * t
    ry[m] = y[jm] * u + y[jm + 1] * t
    return rx, ry, n_samples


def _rdp_mask(x: np.ndarray, y: np.ndarray, stroke_len: np.ndarray, eps: float) -> np.ndarray:
    """Ramer-Douglas-Peucker keep-mask for all strokes at once, breadth-first.

    Each pass takes every open segment (a, b) of every stroke, measures the distance of its interior
    points to the infinite line through a and b (to a itself when a == b), and splits at the first
    farthest point while that distance is > eps.
    """
    keep = np.zeros(len(x), dtype=bool)
    start = np.cumsum(stroke_len) - stroke_len
    end = start + stroke_len - 1
    keep[start] = True
    keep[end] = True
    open_ = end - start >= 2
    a, b = start[open_], end[open_]
    while a.size:
        inner = b - a - 1
        offset = np.cumsum(inner) - inner
        seg_of = np.repeat(np.arange(a.size), inner)
        idx = np.arange(int(inner.sum())) + np.repeat(a + 1 - offset, inner)
        ax, ay = x[a], y[a]
        dx, dy = x[b] - ax, y[b] - ay
        norm = np.sqrt(dx * dx + dy * dy)
        qx = x[idx] - ax[seg_of]
        qy = y[idx] - ay[seg_of]
        with np.errstate(divide="ignore", invalid="ignore"):
            dist = np.abs(dx[seg_of] * qy - dy[seg_of] * qx) / norm[seg_of]
        degenerate = norm[seg_of] == 0
        if degenerate.any():
            dist[degenerate] = np.hypot(qx[degenerate], qy[degenerate])
        far = np.maximum.reduceat(dist, offset)
        hit = np.flatnonzero(dist == far[seg_of])
        first_hit = hit[np.r_[True, seg_of[hit[1:]] != seg_of[hit[:-1]]]]
        split = far > eps
        k = idx[first_hit][split]
        keep[k] = True
        na = np.concatenate([a[split], k])
        nb = np.concatenate([k, b[split]])
        open_ = nb - na >= 2
        a, b = na[open_], nb[open_]
    return keep
