"""Prefixes of a drawing as the game sees them mid-drawing, and prefix training's batch transform."""

from __future__ import annotations

import numpy as np
import pytest

from doodle_rnn.data.encode import LengthRules, encode_batch
from doodle_rnn.data.formats import iter_drawings
from doodle_rnn.data.normalize import is_simplified, normalize_strokes
from doodle_rnn.data.prefixes import as_capture, point_prefix, random_prefixes, stroke_prefix
from doodle_rnn.quickstart import bundled_data_dir

SQUARE = [[[0, 100, 100], [0, 0, 100]], [[100, 0, 0], [100, 100, 0]], [[50, 60], [50, 60]]]


def real(n: int = 40) -> list:
    out = []
    for d in iter_drawings(bundled_data_dir() / "cow.ndjson.gz"):
        out.append(d.strokes)
        if len(out) == n:
            break
    return out


def test_stroke_and_point_prefixes_round_up():
    assert stroke_prefix(SQUARE, 0.25) == SQUARE[:1]  # ceil(0.75) = 1
    assert stroke_prefix(SQUARE, 0.5) == SQUARE[:2]  # ceil(1.5) = 2
    assert stroke_prefix(SQUARE, 1.0) == SQUARE
    assert point_prefix(SQUARE, 0.5) == [SQUARE[0], [[100], [100]]]  # ceil(4) = 4 of 8 points
    assert point_prefix(SQUARE, 0.6) == [SQUARE[0], [[100, 0], [100, 100]]]  # ceil(4.8) = 5
    assert point_prefix(SQUARE, 0.01) == [[[0], [0]]]  # never empty
    assert point_prefix(SQUARE, 1.0) == SQUARE


def test_a_captured_prefix_fills_the_frame_like_a_live_capture():
    d = real(1)[0]
    cut = stroke_prefix(d, 0.25)
    cap = as_capture([cut])[0]
    xs = [v for s in cap for v in s[0]]
    ys = [v for s in cap for v in s[1]]
    assert min(xs) == 0 and min(ys) == 0 and max(max(xs), max(ys)) == 255
    # the same as normalising the prefix as a timed raw capture (what the page sends)
    timed = [[s[0], s[1], list(range(len(s[0])))] for s in cut]
    assert cap == normalize_strokes(timed)
    assert is_simplified(cap)


def test_random_prefixes_keep_or_cut_through_the_capture_path():
    drawings = real()
    steps, lengths, _ = encode_batch(drawings, "stroke3")
    rules = LengthRules()
    same_s, same_l = random_prefixes(steps, lengths, "stroke3", rules, np.random.default_rng(0), 0.0)
    assert same_s is steps and np.array_equal(same_l, lengths)
    # prob 1, shares drawn from U(1, 1): every drawing replaced by its whole self, re-captured
    whole_s, whole_l = random_prefixes(steps, lengths, "stroke3", rules, np.random.default_rng(0), 1.0, 1.0)
    want_s, want_l, _ = encode_batch(as_capture(drawings), "stroke3", LengthRules(1, 250))
    assert np.array_equal(whole_l, want_l) and np.array_equal(whole_s, want_s)
    cut_s, cut_l = random_prefixes(steps, lengths, "stroke3", rules, np.random.default_rng(1), 1.0)
    assert (cut_l <= lengths + 5).all() and (cut_l < lengths).mean() > 0.5 and len(cut_s) == cut_l.sum()
    with pytest.raises(ValueError, match="stroke3"):
        random_prefixes(steps, lengths, "reference", rules, np.random.default_rng(0), 0.5)
