"""Early guessing: prefixes cut by hand, sent as captures, and time to recognition on hand-made cases.

The model here is a small untrained GRU (its answers depend on every step, which is all a path test
needs); `test_evaluate.py` checks the curve inside `doodle eval` with a trained one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from doodle_rnn import early
from doodle_rnn.checkpoint import make_checkpoint
from doodle_rnn.data.encode import LengthRules, encode_batch, features_to_strokes
from doodle_rnn.data.normalize import is_simplified
from doodle_rnn.inference import Classifier
from doodle_rnn.model import GRUClassifier, ModelConfig

CLASSES = ["a", "b", "c", "d", "e"]
# A simplified drawing (0..255, three strokes of 4, 3 and 5 points): 12 points.
DRAWING = [
    [[0, 60, 120, 200], [10, 0, 40, 30]],
    [[30, 90, 150], [100, 180, 120]],
    [[255, 200, 170, 100, 40], [255, 210, 240, 190, 250]],
]


@pytest.fixture(scope="module", params=["stroke3", "reference"])
def clf(request) -> Classifier:
    torch.manual_seed(0)
    model = GRUClassifier(ModelConfig(num_classes=len(CLASSES), hidden_size=16, num_layers=1, dropout=0.0))
    ckpt = make_checkpoint(model.eval(), CLASSES, request.param, {"min_len": 6, "max_len": 250})
    return Classifier.from_checkpoint(ckpt, backend="torch")


def test_shares_round_up_in_integers():
    assert early.ceil_share(30, 10) == 3  # ceil(0.3 * 10) in floats is 4
    assert [early.ceil_share(p, 7) for p in (10, 25, 50, 100)] == [1, 2, 4, 7]
    by_strokes, by_points = early.prefix_sizes(DRAWING)
    # strokes: ceil(.25*3)=1 -> 4 points, ceil(.5*3)=2 -> 7, ceil(.75*3)=3 -> 12, all -> 12
    assert by_strokes == [4, 7, 12, 12]
    assert by_points == [2, 3, 4, 5, 6, 8, 9, 10, 11, 12]
    assert early.share_key(10) == "0.1" and early.share_key(25) == "0.25" and early.share_key(100) == "1.0"


def test_first_points_cuts_the_last_stroke_and_captures_carry_times():
    assert early.first_points(DRAWING, 6) == [DRAWING[0], [[30, 90], [100, 180]]]
    cap = early.as_capture(early.first_points(DRAWING, 6))
    assert cap == [[[0, 60, 120, 200], [10, 0, 40, 30], [0, 1, 2, 3]], [[30, 90], [100, 180], [4, 5]]]
    raw = [[[1.5, 2.5], [3.0, 4.0], [100, 130]]]
    assert early.as_capture(raw) == raw  # a raw capture keeps its own times
    assert early.prefix_drawing(DRAWING, 12) == DRAWING  # uncut: sent as stored


def by_hand(strokes: list, kind: str, percent: int) -> list:
    """The prefix cut independently of `early`, then drawn on a 'screen' (x2 and shifted, times in ms).

    Doubling and integer shifts are exact in floating point, so normalising this capture is bit-for-bit
    normalising the cut simplified strokes, as the page would send them if a user drew just those.
    """
    if kind == "strokes":
        m = -(-percent * len(strokes) // 100)
        cut = strokes[:m]
    else:
        k = -(-percent * sum(len(s[0]) for s in strokes) // 100)
        cut, left = [], k
        for xs, ys in strokes:
            if left > 0:
                cut.append([xs[:left], ys[:left]])
            left -= len(xs)
    return strokes if cut == strokes else on_screen(cut)


def on_screen(strokes: list) -> list:
    t, out = 1000.0, []
    for xs, ys in strokes:
        out.append(
            [[2.0 * x + 300 for x in xs], [2.0 * y + 40 for y in ys], [t + 16.0 * i for i in range(len(xs))]]
        )
        t += 16.0 * len(xs) + 250
    return out


def test_each_prefix_answers_exactly_as_a_capture_of_those_strokes(clf):
    """`early` sends each prefix through the capture path: the same probabilities as `Classifier.predict`
    on the same strokes cut by hand and given in screen coordinates with times."""
    sent, slot = early.build_prefixes([DRAWING])
    probs, read = clf.probabilities(sent)
    assert read.all() and slot.shape == (1, 4 + 10 + 1)
    shares = [("strokes", p) for p in early.STROKE_PERCENTS] + [("points", p) for p in early.POINT_PERCENTS]
    for j, (kind, p) in enumerate(shares):
        expected = dict(clf.predict(by_hand(DRAWING, kind, p), top_k=len(CLASSES)))
        got = probs[slot[0, j]]
        np.testing.assert_allclose(
            [expected[c] for c in CLASSES], got, rtol=0, atol=1e-6, err_msg=f"{kind} {p}%"
        )
    # the last slot: the whole drawing sent as a capture (normalised a second time)
    expected = dict(clf.predict(on_screen(DRAWING), top_k=len(CLASSES)))
    np.testing.assert_allclose([expected[c] for c in CLASSES], probs[slot[0, -1]], rtol=0, atol=1e-6)


def test_a_prefix_that_still_looks_simplified_is_normalised_to_fill_the_frame(clf):
    # The first two strokes span 0..200 x 0..180: `is_simplified` would pass them through unchanged.
    two = DRAWING[:2]
    assert is_simplified(two)
    sent, slot = early.build_prefixes([DRAWING], stroke_percents=(50,), point_percents=())
    prefix = sent[slot[0, 0]]
    assert [s[:2] for s in prefix] == two and all(len(s) == 3 for s in prefix)  # sent as a capture
    seen = features_to_strokes(clf.analyze(prefix).features, "stroke3")
    xs = [v for s in seen for v in s[0]]
    ys = [v for s in seen for v in s[1]]
    if clf.encoding == "stroke3":  # decoded exactly up to a shift: the larger extent is now 255
        assert max(max(xs) - min(xs), max(ys) - min(ys)) == 255
    as_stored = clf.analyze(two).features  # sent without times, the two strokes would be passed through
    assert not np.array_equal(clf.analyze(prefix).features, as_stored)


def test_time_to_recognition_by_hand():
    T, F = True, False
    right = np.array([
        [F, T, T, T, T, T, T, T, T, T],  # right from 20% on
        [T, F, T, T, T, T, T, T, T, T],  # right at 10%, lost at 20%: counts from 30%
        [T, T, T, T, T, T, T, T, T, F],  # wrong at the end: never
        [F, F, F, F, F, F, F, F, F, T],  # only the whole drawing: 100%
        [T, T, T, T, T, T, T, T, T, T],  # from the first 10%
    ])  # fmt: skip
    r = early.time_to_recognition(right)
    assert r["never_recognised"] == pytest.approx(1 / 5)
    assert r["median_share"] == pytest.approx(0.25)  # median of 0.1, 0.2, 0.3, 1.0
    assert r["mean_share"] == pytest.approx((0.1 + 0.2 + 0.3 + 1.0) / 4)
    assert r["recognised_by"]["0.1"] == pytest.approx(1 / 5) and r["recognised_by"]["0.3"] == pytest.approx(
        3 / 5
    )
    assert r["recognised_by"]["1.0"] == pytest.approx(4 / 5)
    assert r["grid"][0] == 0.1 and r["grid"][-1] == 1.0


def test_early_guessing_counts_and_the_whole_drawing(clf):
    drawings = [DRAWING, DRAWING[1:], [DRAWING[2]]]
    whole = [p[0][0] for p in clf.predict_many(drawings, 1)]
    labels = [CLASSES.index(w) for w in whole]  # the model's own answers on the whole drawings
    r = early.early_guessing(clf, drawings, labels)
    assert r["n_drawings"] == 3 and r["strokes"]["1.0"]["top1"] == 1.0 and r["points"]["1.0"]["top1"] == 1.0
    assert r["time_to_recognition"]["never_recognised"] == 0.0
    by_name = early.early_guessing(clf, drawings, whole)
    assert by_name["points"] == r["points"]
    # a single-stroke drawing: every stroke share is the whole drawing, so prefixes were merged
    assert r["prefixes_predicted"] < 3 * 15
    with pytest.raises(ValueError, match="2 labels for 3 drawings"):
        early.early_guessing(clf, drawings, labels[:2])


def test_recover_strokes_from_files_from_steps_or_not_at_all(tmp_path, clf):
    rules = LengthRules(6, 250)
    line = {"word": "a", "key_id": "1", "recognized": True, "drawing": DRAWING}
    (tmp_path / "a.ndjson").write_text(json.dumps(line) + "\n")
    steps = [encode_batch([DRAWING], enc, rules)[0] for enc in ("stroke3", "reference")]
    got, counts = early.recover_strokes([tmp_path / "a.ndjson"], ["1"], [steps[0]], "stroke3", rules)
    assert got == [DRAWING] and counts["source files"] == 1
    # no file: stroke3 is decoded from its steps (exact up to a shift) ...
    got, counts = early.recover_strokes([tmp_path / "gone.ndjson"], ["1"], [steps[0]], "stroke3", rules)
    assert (
        counts["decoded from the encoded steps (stroke3)"] == 1
        and counts["source files missing or unreadable"] == 1
    )
    shift_x, shift_y = DRAWING[0][0][0] - got[0][0][0][0], DRAWING[0][1][0] - got[0][0][1][0]
    assert got[0] == [[[x - shift_x for x in s[0]], [y - shift_y for y in s[1]]] for s in DRAWING]
    # ... reference cannot be (pen-up moves are not encoded), and a file whose drawing differs is not used
    got, counts = early.recover_strokes([], ["1"], [steps[1]], "reference", rules)
    assert got == [None] and counts["not recovered"] == 1
    got, counts = early.recover_strokes([tmp_path / "a.ndjson"], ["1"], [steps[0][:-1]], "reference", rules)
    assert got == [None]


def test_announcement_stats_by_hand():
    """Four drawings over shares (50, 90, 100)% and two classes, threshold 0.8:
    0 is called right at 50%, 1 called wrong at 90%, 2 called right only when complete, 3 never called."""
    top = np.array([[0.9, 0.5, 0.5, 0.6], [0.95, 0.85, 0.7, 0.6], [0.99, 0.9, 0.9, 0.7]])  # [share, drawing]
    probs = np.stack([top, 1 - top], axis=2)  # class 0 carries `top`
    probs[1:, 1] = probs[1:, 1, ::-1]  # drawing 1: class 1 on top from 90%
    labels = np.array([0, 0, 0, 0])
    s = early.announcement_stats(probs, labels, 0.8, percents=(50, 90, 100))
    assert s["announced"] == 0.75 and s["announced_before_complete"] == 0.5
    assert s["precision"] == pytest.approx(2 / 3) and s["right_share_of_all"] == 0.5
    assert s["right_before_complete"] == 0.25 and s["median_share_of_points"] == 0.9
    assert early.announcement_stats(probs, labels, 0.999, percents=(50, 90, 100))["announced"] == 0.0


def test_announcement_replay_is_the_page_s_first_call(clf):
    """The replay calls a drawing exactly when the model's top probability on a 2%-grid capture first
    reaches the threshold: here the threshold is the whole drawing's top probability."""
    drawings = [DRAWING, DRAWING[1:]]
    whole = clf.predict_many(drawings, 1)
    labels = [CLASSES.index(t[0][0]) for t in whole]
    threshold = min(t[0][1] for t in whole)
    r = early.announcement_replay(clf, drawings, labels, threshold)
    probs = early.point_prefix_probabilities(clf, drawings)
    first, _ = early.first_announcements(probs, threshold)
    assert r["n_drawings"] == 2 and r["announced"] == 1.0  # both reach it by the end at the latest
    assert r["announced_before_complete"] == float(np.mean(first < len(early.ANNOUNCE_PERCENTS) - 1))
    assert early.announcement_replay(clf, drawings, labels, 1.0)["announced"] == 0.0


def _rule_study():
    """scripts/announce_rule_study.py as a module (scripts are not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "announce_rule_study.py"
    spec = importlib.util.spec_from_file_location("announce_rule_study", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _growing_truth(seed: int, shares: int, drawings: int, classes: int, truth: int):
    """Random probabilities [shares, drawings, classes] whose true class grows likelier as drawings grow,
    and the labels: the first calls of such drawings are right more often at higher thresholds."""
    logits = np.random.default_rng(seed).normal(size=(shares, drawings, classes)) * 2
    logits[:, :, truth] += np.linspace(0, 4, shares)[:, None]
    probs = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    return probs, np.full(drawings, truth, dtype=np.int64)


def test_steadier_rule_waits_for_the_guess_to_hold():
    """Shares (50, 90, 100)%: drawing 0 is confident-wrong at 50% only, then confident-right; drawing 1 is
    confident-right throughout. The shipped rule (confirm 1) calls 0 wrong at 50%; confirm 2 skips that
    transient mistake, calls 0 right at 100% and 1 at 90% (one moment later than confirm 1)."""
    study = _rule_study()
    top_p = np.array([[0.95, 0.9], [0.9, 0.9], [0.9, 0.9]])
    top_c = np.array([[1, 0], [0, 0], [0, 0]])
    labels = np.array([0, 0])
    first, cls = study.first_steady_calls(top_p, top_c, study.steady(top_p, top_c, 1, 0.0), 0.85)
    assert first.tolist() == [0, 0] and cls.tolist() == [1, 0]
    first, cls = study.first_steady_calls(top_p, top_c, study.steady(top_p, top_c, 2, 0.0), 0.85)
    assert first.tolist() == [2, 1] and cls.tolist() == [0, 0]
    # the floor: the moment before must itself reach it
    assert study.steady(top_p, top_c, 2, 0.95).tolist() == [[False, False], [False, False], [False, False]]
    s = early.first_call_stats(first, cls, labels, 0.85, percents=(50, 90, 100))
    assert s["precision"] == 1.0 and s["announced_before_complete"] == 0.5


def test_margin_score_is_the_gap_between_the_top_two():
    """margin_guesses: p1 - p2 per moment with top_guesses' class; a moment with no step (NaN) has 0."""
    study = _rule_study()
    probs = np.array([[[0.5, 0.3, 0.2], [0.1, 0.45, 0.45]], [[np.nan] * 3, [0.05, 0.05, 0.9]]])
    margin, cls = study.margin_guesses(probs)
    np.testing.assert_allclose(margin, [[0.2, 0.0], [0.0, 0.85]], atol=1e-12)
    assert cls.tolist() == early.top_guesses(probs)[1].tolist()


def test_per_class_thresholds_lower_where_calls_are_right_and_hold_where_wrong():
    """Class 0 is right at 0.9 from the first moment, class 1 is a confident mistake at 0.9 (drawings of
    class 2, called right at 0.99 a moment later). From one threshold of 0.95 the fit lowers class 0's and
    class 2's thresholds and keeps class 1's: all four drawings are called right before complete, two of
    them earlier. One threshold reaches that precision only above 0.9, calling half of them."""
    study = _rule_study()
    top_p = np.array([[0.9, 0.9, 0.9, 0.9], [0.9, 0.9, 0.99, 0.99], [0.9, 0.9, 0.99, 0.99]])
    top_c = np.array([[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 2, 2]])
    labels = np.array([0, 0, 2, 2])
    grid = np.array([0.85, 0.95, 0.995])
    thr = study.fit_class_thresholds(top_p, top_c, labels, 0.95, grid, weight=10.0, target=0.95)
    assert thr.tolist() == [0.85, 0.95, 0.85]
    first, cls = study.class_calls(top_p, top_c, thr)
    assert first.tolist() == [0, 0, 1, 1] and cls.tolist() == [0, 0, 2, 2]
    one = study.equal_precision_calls(top_p, top_c, labels, 1.0)
    assert one["threshold"] == 0.901 and one["announced_before_complete"] == 0.5
    assert study.right_before_complete_ceiling(top_p, top_c, labels, 0.95) == 0.5
    assert study.right_before_complete_ceiling(top_p, top_c, labels, 0.85) == 1.0


def test_rule_study_confirm_1_is_the_shipped_choice():
    """On random probabilities the study's confirm-1 rule chooses choose_threshold's threshold and stats."""
    study = _rule_study()
    probs, labels = _growing_truth(seed=0, shares=50, drawings=300, classes=4, truth=0)
    want = early.choose_threshold(probs, labels, target=0.9)
    tops = early.top_guesses(probs)
    (row,) = study.study((*tops, labels), (*tops, labels), [(1, 0.0)], 0.9)
    assert 0.3 < want["threshold"] < 1.0  # the scan found one (the test means something)
    assert row["threshold"] == want["threshold"]
    assert row["val"]["announced_before_complete"] == want["announced_before_complete"]
    assert row["test"]["precision"] == want["precision"]


def test_choose_threshold_is_the_smallest_grid_threshold_meeting_the_target():
    """choose_threshold against its definition: announcement_stats at every grid threshold, smallest first."""
    probs, labels = _growing_truth(seed=1, shares=20, drawings=200, classes=5, truth=2)
    percents = tuple(range(5, 101, 5))
    for target in (0.8, 0.9):
        got = early.choose_threshold(probs, labels, percents, target=target)
        want = next(
            t
            for t in early.THRESHOLD_GRID
            if (s := early.announcement_stats(probs, labels, float(t), percents))["precision"] >= target
            and s["announced"] > 0
        )
        assert got["threshold"] == float(want) and 0.3 < want < 1.0
        assert got["announced"] == early.announcement_stats(probs, labels, float(want), percents)["announced"]
