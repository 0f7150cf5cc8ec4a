"""Guessing early, as the game does: predictions on the first part of each drawing, and when to announce.

`prefix_probabilities` sends every prefix of every drawing through the capture path (cut with
`data.prefixes`, re-normalised like a live capture, then `Classifier.probabilities`, which encodes
exactly as for any request), batched over all drawings and shares at once.

The announcement ("I know: it's a cow!") is the first moment, while a drawing grows, that the calibrated
top probability reaches a threshold; the page and `StreamSession` keep that guess. `choose_threshold`
picks the smallest threshold whose *first* announcements are right at least `target` of the time on
held-out drawings, replayed at growing shares of their points: the precision a player sees, which is
lower than the precision over all moments (the earliest, least certain moments are exactly where the
first announcement tends to happen).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from doodle_rnn.data.prefixes import POINT_SHARES, as_capture, prefix

TARGET_PRECISION = 0.95


def prefix_probabilities(
    clf, strokes_list: Sequence[Sequence], shares: Sequence[float], unit: str
) -> np.ndarray:
    """Calibrated probabilities [S, N, C] of each drawing cut to each share of its strokes or points."""
    cuts = [prefix(s, share, unit) for share in shares for s in strokes_list]
    probs = clf.probabilities(as_capture(cuts))
    return probs.reshape(len(shares), len(strokes_list), -1)


def first_announcements(probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """For probs [S, N, C] over growing shares: (share index of the first confident guess, or -1; its class)."""
    top_p = np.nan_to_num(probs.max(axis=2), nan=0.0)
    top_c = np.nan_to_num(probs, nan=0.0).argmax(axis=2)
    hit = top_p >= threshold
    first = np.where(hit.any(axis=0), hit.argmax(axis=0), -1)
    cls = np.where(first >= 0, top_c[np.maximum(first, 0), np.arange(probs.shape[1])], -1)
    return first, cls


def announcement_stats(
    probs: np.ndarray, labels: np.ndarray, threshold: float, shares: Sequence[float]
) -> dict:
    first, cls = first_announcements(probs, threshold)
    made = first >= 0
    right = made & (cls == labels)
    share_at = np.asarray(shares)[first[made]] if made.any() else np.array([])
    return {
        "threshold": float(threshold),
        "announced": float(made.mean()),
        "precision": float(right.sum() / max(made.sum(), 1)),
        "right_share_of_all": float(right.mean()),
        "median_share_of_points": float(np.median(share_at)) if len(share_at) else None,
    }


def choose_threshold(
    probs: np.ndarray,
    labels: np.ndarray,
    shares: Sequence[float] = POINT_SHARES,
    target: float = TARGET_PRECISION,
) -> dict:
    """The smallest threshold (on a 0.001 grid) whose first announcements reach `target` precision."""
    labels = np.asarray(labels)
    for t in np.round(np.arange(0.30, 1.0005, 0.001), 3):
        stats = announcement_stats(probs, labels, float(t), shares)
        if stats["precision"] >= target and stats["announced"] > 0:
            return {**stats, "target_precision": target, "unit": "points", "shares": list(shares)}
    return {**announcement_stats(probs, labels, 1.0, shares), "target_precision": target, "unit": "points",
            "shares": list(shares)}  # fmt: skip
