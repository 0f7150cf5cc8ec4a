"""Early guessing: how well the model names a drawing from its beginning, and how soon it gets it right.

The question is the one the drawing page asks live: a user has drawn part of a doodle, the page sends
those strokes, what does the model say? So every prefix is sent exactly as the page would send it:

- A prefix is a drawing's *source* strokes cut in drawing order: the first `ceil(p * n_strokes)` strokes
  (stroke shares 25/50/75/100%), or the first `ceil(p * n_points)` points over all strokes with the last
  stroke cut mid-way (point shares 10/20/.../100%). Shares are whole percents and the ceiling is taken
  in integers (`-(-p * n // 100)`), so 30% of 10 points is 3, not the 4 that `ceil(0.3 * 10)` gives.
- A cut prefix goes to `Classifier.probabilities`, the batched form of `Classifier.analyze_many`, i.e.
  the server's path (validate, `normalize`, `encode`, pad), *as a capture*: every stroke carries a time
  list (kept from a raw source, else the running point index; normalisation ignores the times), which
  is what makes `encode_batch` normalise it. A prefix of a simplified drawing is therefore normalised
  again and fills the frame, as it would if a user had drawn just those strokes; sent without times, a
  prefix that happened to still look simplified (`normalize.is_simplified`) would be passed through.
  Nothing here normalises, encodes or cuts encoded steps on its own.
- The uncut drawing (100%, and any stroke share whose ceiling takes every stroke) is sent as stored:
  a simplified drawing already is the normalised form of its capture, a raw one is normalised by the
  same path, so the 100% point equals the plain evaluation of the same drawings. For comparison with
  systems that normalise the whole drawing a second time, `full_as_capture` sends it as a capture too.
- A prefix the encoder gives no step for (it cannot happen with the two encodings, whose dots give one
  step, but the rule is there) counts as wrong.

Time to recognition, per drawing, on the point-share grid: the smallest share s such that the top-1
guess is right at s and at every larger share of the grid up to 100%. Reported: the median of s over
the drawings that are recognised, the share never recognised (wrong at 100%), and the cumulative share
recognised by each grid point.

Where the strokes come from (`recover_strokes`): an evaluation reads encoded steps (from a cache or
files), but prefixes need strokes. The honest source is the drawing itself: its file (the cache's
manifest names its source files; `doodle eval` on files has them), found by `key_id`. Every recovered
drawing is checked by encoding it whole and comparing with the steps the evaluation used; one that does
not reproduce them is not used. Without the source files, a `stroke3` drawing is decoded from its steps
(`encode.features_to_strokes`: exact up to a shift, which normalisation removes; checked the same way;
a drawing longer than the `max_len` rule comes back cut to the steps the model read).
A `reference` drawing cannot be: its encoding drops the pen-up move between strokes, so decoding glues
every stroke to the end of the previous one and a prefix of that is a different drawing; such drawings
are left out and counted.

Speed: all prefixes of all drawings (duplicates merged: a stroke prefix is also a point prefix) go
through one batched call; normalising and the model both work on whole batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from doodle_rnn.data.prefixes import as_capture, ceil_share, first_points, n_points

STROKE_PERCENTS = (25, 50, 75, 100)
POINT_PERCENTS = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
RULE = (
    "prefixes of each drawing's strokes in drawing order: the first ceil(p * strokes) strokes, or the first "
    "ceil(p * points) points over all strokes (the last stroke cut); a cut prefix is sent as a capture "
    "(Classifier.probabilities: validate, normalise so it fills the frame, encode), the uncut drawing as "
    "stored (= plain eval); top-3 = the true class among the 3 most probable evaluated classes"
)
TTR_RULE = (
    "per drawing, the smallest share s of the point grid such that the top-1 guess is right at s and at every "
    "larger share up to 100%; median over the recognised drawings; never recognised = wrong at 100%"
)


def share_key(percent: int) -> str:
    """The summary's key for a share: 25 -> "0.25", 10 -> "0.1", 100 -> "1.0"."""
    return str(percent / 100)


# ------------------------------------------------------------------------------------------- prefixes


def prefix_sizes(strokes: Sequence, stroke_percents=STROKE_PERCENTS, point_percents=POINT_PERCENTS):
    """Points in each stroke prefix and each point prefix of one drawing: (list per stroke share, per point share)."""
    per_stroke = np.cumsum([len(s[0]) for s in strokes]).tolist()
    total = per_stroke[-1] if per_stroke else 0
    by_strokes = [per_stroke[ceil_share(p, len(strokes)) - 1] if strokes else 0 for p in stroke_percents]
    by_points = [ceil_share(p, total) for p in point_percents]
    return by_strokes, by_points


def prefix_drawing(strokes: Sequence, k: int) -> list:
    """What is sent for the first `k` points: the drawing as stored when uncut, else a capture."""
    return (
        [list(map(list, s)) for s in strokes]
        if k >= n_points(strokes)
        else as_capture(first_points(strokes, k))
    )


def build_prefixes(
    strokes_list: Sequence[Sequence],
    stroke_percents: Sequence[int] = STROKE_PERCENTS,
    point_percents: Sequence[int] = POINT_PERCENTS,
) -> tuple[list, np.ndarray]:
    """Every prefix to send, and `slot` [n, stroke shares + point shares + 1]: the prefix of each drawing
    at each share (stroke shares first, then point shares, last the whole drawing as a capture).

    A drawing's equal prefixes are sent once (a stroke prefix is also a point prefix), and a drawing's
    prefixes are consecutive in the list.
    """
    slot = np.empty((len(strokes_list), len(stroke_percents) + len(point_percents) + 1), dtype=np.int64)
    sent: list = []
    for i, strokes in enumerate(strokes_list):
        by_s, by_p = prefix_sizes(strokes, stroke_percents, point_percents)
        seen: dict[int, int] = {}
        for j, k in enumerate(by_s + by_p):
            if k not in seen:
                seen[k] = len(sent)
                sent.append(prefix_drawing(strokes, k))
            slot[i, j] = seen[k]
        slot[i, -1] = len(sent)
        sent.append(as_capture(strokes))
    return sent, slot


# ------------------------------------------------------------------------------------------- measuring
def _topk_hits(probs: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 right, true class among the k most probable) per row."""
    c = probs.shape[1]
    top1 = probs.argmax(axis=1) == labels
    if k >= c:
        return top1, np.ones(len(labels), dtype=bool)
    topk = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    return top1, (topk == labels[:, None]).any(axis=1)


def time_to_recognition(right: np.ndarray, percents: Sequence[int] = POINT_PERCENTS) -> dict:
    """From top-1 right/wrong per drawing and grid share ([n, len(percents)], shares ascending)."""
    right = np.asarray(right, dtype=bool)
    shares = np.asarray(percents, dtype=np.float64) / 100
    n = len(right)
    # stays[i, j]: right at share j and at every larger one
    stays = np.flip(np.logical_and.accumulate(np.flip(right, axis=1), axis=1), axis=1)
    recognised = stays[:, -1] if n else np.zeros(0, bool)
    first = np.argmax(stays, axis=1)
    s = shares[first[recognised]]
    return {
        "median_share": float(np.median(s)) if len(s) else None,
        "mean_share": float(s.mean()) if len(s) else None,
        "never_recognised": float(1 - recognised.mean()) if n else None,
        "recognised_by": {
            share_key(p): float((recognised & (first <= j)).mean()) if n else None
            for j, p in enumerate(percents)
        },
        "grid": [float(x) for x in shares],
        "n_drawings": int(n),
        "rule": TTR_RULE,
    }


def early_guessing(
    clf,
    strokes_list: Sequence[Sequence],
    labels: Sequence,
    columns: Sequence[int] | None = None,
    stroke_percents: Sequence[int] = STROKE_PERCENTS,
    point_percents: Sequence[int] = POINT_PERCENTS,
    top_k: int = 3,
) -> dict:
    """The early-guessing curve of `clf` (a `Classifier`) on drawings with known classes.

    strokes_list: each drawing's strokes as stored (simplified `[xs, ys]` or raw `[xs, ys, ts]`).
    labels: each drawing's true class, a class name or an index into `columns`.
    columns: the classes competing for the answer, as indices into `clf.classes` (default: all); the
        evaluation passes the classes its data has, as plain eval does.
    Returns top-1/top-3 per stroke share and per point share (keys "0.25", "0.1", ...), `full_as_capture`,
    `time_to_recognition`, and per-prefix right/wrong arrays under `"_right"` (for plots; not JSON).
    """
    t0 = time.perf_counter()
    columns = np.arange(len(clf.classes)) if columns is None else np.asarray(columns, dtype=np.int64)
    names = [clf.classes[c] for c in columns.tolist()]
    y = np.array([names.index(v) if isinstance(v, str) else int(v) for v in labels], dtype=np.int64)
    n = len(strokes_list)
    if len(y) != n:
        raise ValueError(f"{len(y)} labels for {n} drawings")
    ns, npt = len(stroke_percents), len(point_percents)
    sent, slot = build_prefixes(strokes_list, stroke_percents, point_percents)
    owner = np.empty(len(sent), dtype=np.int64)  # the drawing of each prefix
    owner[slot] = np.arange(n)[:, None]
    t_cut = time.perf_counter()
    probs, read = clf.probabilities(sent)
    top1, topk = _topk_hits(probs[:, columns], y[owner], min(top_k, len(columns)))
    top1 &= read
    topk &= read
    r1, rk = top1[slot], topk[slot]  # [n, shares]

    def table(lo: int, percents: Sequence[int]) -> dict:
        return {share_key(p): {"top1": float(r1[:, lo + j].mean()) if n else None,
                               "top3": float(rk[:, lo + j].mean()) if n else None}
                for j, p in enumerate(percents)}  # fmt: skip

    seconds = time.perf_counter() - t0
    predict_seconds = seconds - (t_cut - t0)
    return {
        "n_drawings": n,
        "strokes": table(0, stroke_percents),
        "points": table(ns, point_percents),
        "full_as_capture": {
            "top1": float(r1[:, -1].mean()) if n else None,
            "top3": float(rk[:, -1].mean()) if n else None,
        },
        "time_to_recognition": time_to_recognition(r1[:, ns : ns + npt], point_percents),
        "top3_note": f"top-{min(top_k, len(columns))} over {len(columns)} classes",
        "rule": RULE,
        "prefixes_predicted": len(sent),
        "prefixes_without_steps": int((~read).sum()),
        "seconds": round(seconds, 3),
        "predict_seconds": round(predict_seconds, 3),
        "_right": {"top1": r1, "topk": rk},
    }


# -------------------------------------------------------------------------------- where strokes come from
def recover_strokes(
    sources: Sequence[str | Path],
    key_ids: Sequence[str],
    expected: Sequence[np.ndarray],
    encoding: str,
    rules,
) -> tuple[list, dict]:
    """Each drawing's strokes (None when not recovered), found by key_id and checked against its steps.

    sources: the data files the steps were made from; key_ids / expected: per drawing, its key and the
    int16 steps the evaluation used. A `stroke3` drawing not found (or not reproducing its steps) is
    decoded from its steps instead and checked the same way. Returns (strokes per drawing, counts by origin).
    """
    from doodle_rnn.data.encode import encode_batch, steps_to_strokes
    from doodle_rnn.data.formats import DataFormatError, SkipReport, iter_drawings

    want: dict[str, list[int]] = {}
    for i, k in enumerate(key_ids):
        want.setdefault(k, []).append(i)
    candidates: dict[str, list] = {}
    missing_files = 0
    for path in sources:
        if not Path(path).is_file():
            missing_files += 1
            continue
        try:
            for d in iter_drawings(Path(path), strict=False, report=SkipReport()):
                if d.key_id in want:
                    candidates.setdefault(d.key_id, []).append(d.strokes)
        except DataFormatError:
            missing_files += 1
    out: list = [None] * len(key_ids)

    def matches(strokes_list: list, idx: list[int]) -> list[bool]:
        steps, lengths, kept = encode_batch(strokes_list, encoding, rules)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        ok = [False] * len(idx)
        for j, row in enumerate(kept.tolist()):
            got = steps[offsets[j] : offsets[j + 1]]
            ok[row] = np.array_equal(got, np.asarray(expected[idx[row]]))
        return ok

    # Candidates in file order; duplicates of a key_id are tried in turn until one reproduces the steps.
    for depth in range(max((len(v) for v in candidates.values()), default=0)):
        idx = [i for i, k in enumerate(key_ids) if out[i] is None and len(candidates.get(k, [])) > depth]
        trial = [candidates[key_ids[i]][depth] for i in idx]
        for i, s, ok in zip(idx, trial, matches(trial, idx) if idx else [], strict=True):
            if ok:
                out[i] = s
    counts = {"source files": sum(s is not None for s in out)}
    if encoding == "stroke3":
        idx = [i for i, s in enumerate(out) if s is None]
        decoded = [_shift_to_origin(steps_to_strokes(expected[i], encoding))
                   for i in idx]  # fmt: skip
        for i, s, ok in zip(idx, decoded, matches(decoded, idx) if idx else [], strict=True):
            if ok:
                out[i] = s
        counts["decoded from the encoded steps (stroke3)"] = (
            sum(s is not None for s in out) - counts["source files"]
        )
    counts["not recovered"] = sum(s is None for s in out)
    if missing_files:
        counts["source files missing or unreadable"] = missing_files
    return out, counts


def _shift_to_origin(strokes: list) -> list:
    """Decoded stroke3 strokes start at (0, 0); move them so the smallest x and y are 0, as stored."""
    if not strokes:
        return strokes
    mx = min(min(s[0]) for s in strokes)
    my = min(min(s[1]) for s in strokes)
    return [[[v - mx for v in s[0]], [v - my for v in s[1]]] for s in strokes]


# -------------------------------------------------------------------------------- announcing
# When the page says "I know: it's a cow!": the first moment, while a drawing grows, that the calibrated
# top probability reaches a threshold (the page and `StreamSession` then keep that guess).
# `choose_threshold` picks the smallest threshold whose *first* announcements are right at least
# `target` of the time on held-out drawings replayed at growing shares of their points: the precision a
# player sees, lower than the precision over all moments, since first announcements happen early.
TARGET_PRECISION = 0.95
# The page asks while a stroke is drawn (every 250 ms) and at each stroke's end, so a drawing is seen at
# many more moments than the curve's 10% grid, and every extra moment is another chance for a confident
# wrong first guess: on 1,500 validation drawings the shipped model's first calls at threshold 0.97 were
# right 91.6% of the time on a 10% grid, 89.6% on 5%, 87.3% on 2%. So the threshold is chosen on a 2%
# grid (50 moments a drawing, about as many as the page's requests for a drawing of a few seconds).
ANNOUNCE_PERCENTS = tuple(range(2, 101, 2))
THRESHOLD_GRID = np.round(np.arange(0.30, 1.0005, 0.001), 3)  # the thresholds `choose_threshold` tries


def point_prefix_probabilities(
    clf, strokes_list: Sequence[Sequence], percents=ANNOUNCE_PERCENTS
) -> np.ndarray:
    """Calibrated probabilities [S, N, C] of each drawing at each share of its points, sent as captures."""
    sent = [prefix_drawing(s, ceil_share(p, n_points(s))) for p in percents for s in strokes_list]
    probs, read = clf.probabilities(sent)
    probs[~read] = np.nan
    return probs.reshape(len(percents), len(strokes_list), -1)


def top_guesses(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top probability and class [S, N] of probs [S, N, C] (a moment with no step: probability 0)."""
    return np.nan_to_num(probs.max(axis=2), nan=0.0), np.nan_to_num(probs, nan=0.0).argmax(axis=2)


def first_calls(top_p: np.ndarray, top_c: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """From `top_guesses`: (share index of the first top probability >= threshold or -1, its class)."""
    hit = top_p >= threshold
    first = np.where(hit.any(axis=0), hit.argmax(axis=0), -1)
    cls = np.where(first >= 0, top_c[np.maximum(first, 0), np.arange(top_p.shape[1])], -1)
    return first, cls


def first_announcements(probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """For probs [S, N, C] over growing shares: (share index of the first confident guess or -1, its class)."""
    return first_calls(*top_guesses(probs), threshold)


def announcement_stats(
    probs: np.ndarray, labels: np.ndarray, threshold: float, percents=ANNOUNCE_PERCENTS
) -> dict:
    """How the first calls at `threshold` fare (`first_call_stats`) for probs [S, N, C] over growing shares."""
    return first_call_stats(*first_announcements(probs, threshold), labels, threshold, percents)


def first_call_stats(
    first: np.ndarray, cls: np.ndarray, labels: np.ndarray, threshold: float, percents=ANNOUNCE_PERCENTS
) -> dict:
    """Share of drawings called (at all, before their last share), first calls' precision, median share.

    first / cls: per drawing, the share index of its first call (-1: never) and the class called, from
    any announcing rule (the shipped one is `first_announcements`; scripts/announce_rule_study.py tries
    others on the same footing).
    """
    made = first >= 0
    right = made & (cls == np.asarray(labels))
    at = np.asarray(percents, dtype=np.float64)[first[made]] / 100
    before_end = made & (first < len(percents) - 1)  # called while points were still to come
    return {
        "threshold": float(threshold),
        "announced": float(made.mean()),
        "announced_before_complete": float(before_end.mean()),
        "right_before_complete": float((before_end & right).mean()),
        "precision": float(right.sum() / max(made.sum(), 1)),
        "right_share_of_all": float(right.mean()),
        "median_share_of_points": float(np.median(at)) if len(at) else None,
    }


def announcement_replay(
    clf,
    strokes_list: Sequence[Sequence],
    labels: Sequence[int],
    threshold: float,
    columns: Sequence[int] | None = None,
) -> dict:
    """First calls at `threshold` of drawings replayed at every 2% of their points, as the page sees them.

    This is how a model's announcement threshold is judged on the test split: the share of drawings called
    at all, called before their last point, and how often the first call is right. `labels` index into
    `columns` (default: all classes); with a subset of classes the probabilities are renormalised over it,
    as plain evaluation does.
    """
    probs = point_prefix_probabilities(clf, strokes_list)
    if columns is not None and len(columns) < probs.shape[2]:
        probs = probs[:, :, np.asarray(columns, dtype=np.int64)]
        probs = probs / probs.sum(axis=2, keepdims=True)
    return {**announcement_stats(probs, np.asarray(labels), threshold), "n_drawings": len(strokes_list),
            "shares_of_points": [p / 100 for p in ANNOUNCE_PERCENTS]}  # fmt: skip


def choose_threshold(
    probs: np.ndarray, labels: np.ndarray, percents=ANNOUNCE_PERCENTS, target: float = TARGET_PRECISION
) -> dict:
    """The smallest threshold (0.001 steps) whose first announcements are right at least `target` of the time."""
    info = {"target_precision": target, "shares_of_points": [p / 100 for p in percents]}
    tops = top_guesses(probs)  # once: the scan only compares them with each threshold
    return {**lowest_threshold(lambda t: first_calls(*tops, t), labels, percents, target), **info}


def lowest_threshold(
    calls: Callable[[float], tuple[np.ndarray, np.ndarray]],
    labels: np.ndarray,
    percents=ANNOUNCE_PERCENTS,
    target: float = TARGET_PRECISION,
) -> dict:
    """`first_call_stats` at the smallest `THRESHOLD_GRID` threshold whose first calls are right >= `target`
    (at 1.0 where none is); `calls(t)` gives (first, cls) at threshold t, for the shipped rule or another."""
    for t in THRESHOLD_GRID:
        stats = first_call_stats(*calls(float(t)), labels, float(t), percents)
        if stats["precision"] >= target and stats["announced"] > 0:
            return stats
    return first_call_stats(*calls(1.0), labels, 1.0, percents)
