"""Simplified strokes -> steps `[dx, dy, pen_lift]`, the model's input.

Two named encodings (recorded in every cache and checkpoint, so predictions always use the one a
model was trained on):

- `reference`: exactly the reference project's encoder. For each stroke with at least 2 points,
  the differences of consecutive points within that stroke (the pen-up jump between strokes is
  dropped); pen_lift is 1 on a stroke's last difference. Single-point strokes vanish.
- `stroke3`: the same, but keeps the pen-up move from the end of one stroke to the start of the next
  (the step that arrives at a stroke's first point), so where each stroke starts is not lost; single
  points (dots) are kept. pen_lift is 1 on the step that arrives at a stroke's last point, as in
  sketch-rnn's stroke-3, so the step after a pen_lift is a pen-up move.

Steps are stored as exact int16 deltas (coordinates are 0..255 integers after normalisation);
`steps_to_features` turns them into the float features (dx/255, dy/255 clipped to [-1, 1], pen_lift)
and is the only place that does, for training, evaluation and serving alike.

The batch encoder is vectorised over a whole chunk of drawings: per-drawing numpy calls would cost
more than the arithmetic (see benchmarks/bench_data.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

ENCODINGS = ("stroke3", "reference")
# What each holds: README, "Encodings". Chosen from measurements (docs/benchmarks.md): on real-derived
# data `reference` trained as well or better (10 animals, jittered real drawings: val acc 0.981 vs 0.969 after 6 epochs; the 345-class real
# sample: val loss 4.25 vs 4.53 after 5 epochs) and is ~15% faster per epoch (fewer steps); on synthetic
# shapes the two were mixed (acc 0.850 vs 0.878, loss 0.438 vs 0.452 after 3 epochs).
DEFAULT_ENCODING = "reference"
ENCODING_VERSION = 1
SCALE = 255.0


@dataclass(frozen=True)
class LengthRules:
    """Drop drawings with fewer than `min_len` steps; keep at most the first `max_len` steps."""

    min_len: int = 6
    max_len: int = 250

    def to_dict(self) -> dict:
        return asdict(self)


def check_encoding(name: str) -> str:
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding {name!r}; choose one of {', '.join(ENCODINGS)}")
    return name


def encode_batch(
    strokes_list: Sequence[Sequence], encoding: str = DEFAULT_ENCODING, rules: LengthRules = LengthRules()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode many drawings at once.

    Returns `(steps, lengths, kept)`: `steps` int16 [sum(lengths), 3] for the kept drawings in order,
    `lengths` int64 per kept drawing, `kept` the indices (into `strokes_list`) of the drawings that
    passed the length rules. A drawing not already in simplified form is normalised first
    (`normalize.normalize_many`); the pass-through test is `normalize.is_simplified`, evaluated here
    vectorised over the whole chunk (`simplified_mask`; a test keeps the two identical).
    """
    from doodle_rnn.data.normalize import normalize_many

    check_encoding(encoding)
    prepared = list(strokes_list)
    structural = {i for i, s in enumerate(prepared) if _needs_normalising(s)}
    flat = _flatten(
        [[] if i in structural else s for i, s in enumerate(prepared)] if structural else prepared
    )
    todo = sorted(structural | set(np.flatnonzero(~simplified_mask(flat, len(prepared))).tolist()))
    if todo:
        for i, s in zip(todo, normalize_many([prepared[i] for i in todo]), strict=True):
            prepared[i] = s
        flat = _flatten(prepared)
    return _encode_flat(flat, len(prepared), encoding, rules)


def encode_stream(
    drawings: Iterable, encoding: str, rules: LengthRules, chunk: int = 4096
) -> Iterator[tuple[np.ndarray, np.ndarray, list, int]]:
    """Encode a stream of drawings (anything with `.strokes`) `chunk` at a time: memory holds one chunk.

    Yields, per chunk, `(steps, lengths, kept, too_short)`: `encode_batch`'s steps and lengths, the kept
    drawings themselves (in order), and how many the length rules dropped. Callers filter the stream
    before it comes here (a generator) and keep what they need of each kept drawing.
    """
    pending: list = []
    for d in drawings:
        pending.append(d)
        if len(pending) >= chunk:
            yield _encode_chunk(pending, encoding, rules)
            pending = []
    if pending:
        yield _encode_chunk(pending, encoding, rules)


def _encode_chunk(
    drawings: list, encoding: str, rules: LengthRules
) -> tuple[np.ndarray, np.ndarray, list, int]:
    steps, lengths, kept = encode_batch([d.strokes for d in drawings], encoding, rules)
    return steps, lengths, [drawings[i] for i in kept.tolist()], len(drawings) - len(kept)


def _needs_normalising(strokes: Sequence) -> bool:
    """Time lists or empty strokes: never the simplified form."""
    return any(len(s) != 2 or len(s[0]) == 0 for s in strokes)


def simplified_mask(flat, n: int) -> np.ndarray:
    """Vectorised `normalize.is_simplified` for drawings without time lists or empty strokes.

    Simplified = has points, every coordinate integer-valued within 0..255, min x and min y at most
    `_MAX_MIN`, largest coordinate at least `_MIN_MAX` (see normalize.is_simplified for why).
    """
    from doodle_rnn.data.normalize import _MAX_MIN, _MIN_MAX

    x, y, _, _, pd = flat
    out = np.zeros(n, dtype=bool)
    if len(x) == 0:
        return out
    good = (x >= 0) & (x <= SCALE) & (y >= 0) & (y <= SCALE) & (x == np.floor(x)) & (y == np.floor(y))
    owners, starts = np.unique(pd, return_index=True)  # points are grouped by drawing, in order
    all_good = np.logical_and.reduceat(good, starts)
    min_x = np.minimum.reduceat(x, starts)
    min_y = np.minimum.reduceat(y, starts)
    top = np.maximum.reduceat(np.maximum(x, y), starts)
    out[owners] = all_good & (min_x <= _MAX_MIN) & (min_y <= _MAX_MIN) & (top >= _MIN_MAX)
    return out


def _flatten(strokes_list: Sequence[Sequence]):
    """All points of all drawings in flat arrays (the only per-stroke Python loop of the encoder)."""
    xs: list = []
    ys: list = []
    slen: list[int] = []
    dcount = np.empty(len(strokes_list), dtype=np.int64)
    for i, strokes in enumerate(strokes_list):
        dcount[i] = len(strokes)
        for s in strokes:
            xs.extend(s[0])
            ys.extend(s[1])
            slen.append(len(s[0]))
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    slen_a = np.asarray(slen, dtype=np.int64)
    point_stroke = np.repeat(np.arange(len(slen_a)), slen_a)
    point_drawing = np.repeat(np.arange(len(strokes_list)), dcount)[point_stroke]
    return x, y, slen_a, dcount, point_drawing


def _encode_flat(
    flat, n: int, encoding: str, rules: LengthRules
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y, slen_a, _, point_drawing = flat
    n_points = len(x)
    if n_points == 0:
        return np.zeros((0, 3), np.int16), np.zeros(0, np.int64), np.zeros(0, np.int64)
    xi = x.astype(np.int32)
    yi = y.astype(np.int32)
    stroke_end = np.cumsum(slen_a)
    is_last = np.zeros(n_points, dtype=bool)
    is_last[stroke_end - 1] = True
    first = np.zeros(n_points, dtype=bool)
    if encoding == "reference":
        first[stroke_end - slen_a] = True
    else:
        first[0] = True
        first[1:] = point_drawing[1:] != point_drawing[:-1]
    dx = np.zeros(n_points, dtype=np.int32)
    dy = np.zeros(n_points, dtype=np.int32)
    np.subtract(xi[1:], xi[:-1], out=dx[1:])
    np.subtract(yi[1:], yi[:-1], out=dy[1:])

    idx = np.flatnonzero(~first)
    owner = point_drawing[idx]
    counts = np.bincount(owner, minlength=n)
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(idx)) - starts[owner]  # position of each step within its drawing, for the cap
    lengths_all = np.minimum(counts, rules.max_len)
    keep_drawing = lengths_all >= rules.min_len
    sel = idx[(rank < rules.max_len) & keep_drawing[owner]]
    steps = np.empty((len(sel), 3), dtype=np.int16)
    steps[:, 0] = dx[sel]
    steps[:, 1] = dy[sel]
    steps[:, 2] = is_last[sel]
    kept = np.flatnonzero(keep_drawing)
    return steps, lengths_all[kept].astype(np.int64), kept


def encode_strokes(
    strokes: Sequence, encoding: str = DEFAULT_ENCODING, rules: LengthRules = LengthRules()
) -> np.ndarray | None:
    """One drawing (raw or simplified) -> int16 steps [T, 3], or None when it breaks the length rules."""
    steps, lengths, _ = encode_batch([strokes], encoding, rules)
    return steps if len(lengths) else None


def steps_to_features(steps: np.ndarray) -> np.ndarray:
    """int16 steps -> float32 features [dx/255, dy/255 (clipped to [-1, 1]), pen_lift]."""
    f = steps.astype(np.float32)
    f[..., :2] /= SCALE
    np.clip(f[..., :2], -1.0, 1.0, out=f[..., :2])
    return f


def pad_steps(steps: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated int16 steps + lengths -> zero-padded float32 features [B, T, 3] and int64 lengths [B].

    numpy only, so an ONNX Runtime server needs no torch; `doodle_rnn.tensors.pad_features` wraps it for torch.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    b, t = len(lengths), int(lengths.max()) if len(lengths) else 0
    out = np.zeros((b, t, 3), dtype=np.float32)
    rows = np.repeat(np.arange(b), lengths)
    cols = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = steps_to_features(steps)
    return out, lengths


def features_to_strokes(features: np.ndarray, encoding: str) -> list[list[list[int]]]:
    """Invert the encoding for display ("the drawing as the model sees it").

    `stroke3` is exact up to a shift (the absolute start is not encoded); `reference` cannot know where strokes start, so
    each stroke is drawn continuing from the previous one's end (exactly what the model is given).
    """
    f = np.asarray(features, dtype=np.float64)
    d = np.rint(f[:, :2] * SCALE).astype(np.int64)
    pos = np.cumsum(d, axis=0)
    strokes: list[list[list[int]]] = []
    cur_x: list[int] = [0]  # the first step starts from the origin of the drawing
    cur_y: list[int] = [0]
    for (px, py), pen in zip(pos.tolist(), f[:, 2].tolist(), strict=True):
        cur_x.append(px)
        cur_y.append(py)
        if pen > 0.5:
            strokes.append([cur_x, cur_y])
            cur_x, cur_y = ([px], [py]) if encoding == "reference" else ([], [])
    if len(cur_x) > (1 if encoding == "reference" else 0):
        strokes.append([cur_x, cur_y])
    return strokes


def steps_to_strokes(steps: np.ndarray, encoding: str) -> list[list[list[int]]]:
    """One drawing's stored int16 steps back to strokes (`features_to_strokes` of its features)."""
    return features_to_strokes(steps_to_features(np.asarray(steps)), encoding)


def batch_strokes(steps: np.ndarray, lengths: np.ndarray, encoding: str) -> list[list[list[list[int]]]]:
    """Concatenated steps of several drawings (as `batch_steps` returns them) back to strokes, one per drawing."""
    starts = np.cumsum(lengths) - lengths
    return [
        steps_to_strokes(steps[s : s + n], encoding)
        for s, n in zip(starts.tolist(), np.asarray(lengths).tolist(), strict=True)
    ]


def rules_from_dict(d: dict | None) -> LengthRules:
    return LengthRules(**d) if d else LengthRules()
