"""Prefix training's batch transform: random prefixes of cached drawings, sent through the capture path.

(Cutting and the capture rule themselves are tested in test_early.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from doodle_rnn.data.encode import LengthRules, encode_batch
from doodle_rnn.data.formats import iter_drawings
from doodle_rnn.data.prefixes import as_capture, first_points, random_prefixes
from doodle_rnn.quickstart import bundled_data_dir


def real(n: int = 40) -> list:
    out = []
    for d in iter_drawings(bundled_data_dir() / "cow.ndjson.gz"):
        out.append(d.strokes)
        if len(out) == n:
            break
    return out


def test_random_prefixes_keep_or_cut_through_the_capture_path():
    drawings = real()
    steps, lengths, _ = encode_batch(drawings, "stroke3")
    rules = LengthRules()
    same_s, same_l = random_prefixes(steps, lengths, "stroke3", rules, np.random.default_rng(0), 0.0)
    assert same_s is steps and np.array_equal(same_l, lengths)
    # prob 1 with shares from U(1, 1): every drawing replaced by its whole self sent as a capture, which
    # is what the page sends for it (normalised again from the decoded steps: exact up to a shift)
    whole_s, whole_l = random_prefixes(steps, lengths, "stroke3", rules, np.random.default_rng(0), 1.0, 1.0)
    want_s, want_l, _ = encode_batch([as_capture(d) for d in drawings], "stroke3", LengthRules(1, 250))
    assert np.array_equal(whole_l, want_l) and np.array_equal(whole_s, want_s)
    cut_s, cut_l = random_prefixes(steps, lengths, "stroke3", rules, np.random.default_rng(1), 1.0)
    assert (cut_l < lengths).mean() > 0.5 and len(cut_s) == cut_l.sum() and cut_l.min() >= 1
    with pytest.raises(ValueError, match="stroke3"):
        random_prefixes(steps, lengths, "reference", rules, np.random.default_rng(0), 0.5)


def test_a_cut_prefix_is_framed_like_a_live_capture():
    d = real(1)[0]
    part = first_points(d, 12)
    steps, _, _ = encode_batch([as_capture(part)], "stroke3", LengthRules(1, 250))
    pos = np.vstack([[0, 0], np.cumsum(steps[:, :2], axis=0)])
    extent = pos.max(axis=0) - pos.min(axis=0)
    assert extent.max() >= 250  # the 12 points fill the frame, as when a user has drawn only them
