"""The two encodings, the length rules, and the one features function."""

from __future__ import annotations

import numpy as np
import pytest

from doodle_rnn.data.encode import (
    LengthRules,
    batch_strokes,
    encode_batch,
    encode_strokes,
    features_to_strokes,
    steps_to_features,
)
from doodle_rnn.data.synthetic import generate

# three strokes in the simplified frame (0..255): a 3-point line, a dot, a 2-point line
DRAWING = [[[0, 100, 200], [0, 0, 50]], [[250], [250]], [[30, 40], [30, 30]]]
LOOSE = LengthRules(min_len=1, max_len=250)


def reference_encoder(strokes, max_len=250):
    """The reference project's encoder, written out plainly as the spec states it."""
    out = []
    for xs, ys in ((s[0], s[1]) for s in strokes):
        if len(xs) < 2:
            continue
        for i in range(1, len(xs)):
            out.append([xs[i] - xs[i - 1], ys[i] - ys[i - 1], 1 if i == len(xs) - 1 else 0])
    return np.array(out[:max_len], dtype=np.int16)


def test_reference_encoding_drops_pen_up_moves_and_dots() -> None:
    steps = encode_strokes(DRAWING, "reference", LOOSE)
    assert steps.tolist() == [[100, 0, 0], [100, 50, 1], [10, 0, 1]]


def test_stroke3_keeps_pen_up_moves_and_dots() -> None:
    steps = encode_strokes(DRAWING, "stroke3", LOOSE)
    # the step to (250, 250) is the pen-up move, and the dot itself ends a stroke
    assert steps.tolist() == [[100, 0, 0], [100, 50, 1], [50, 200, 1], [-220, -220, 0], [10, 0, 1]]
    back = features_to_strokes(steps_to_features(steps), "stroke3")
    assert back == DRAWING


@pytest.mark.parametrize("encoding", ["reference", "stroke3"])
def test_batch_strokes_gives_each_drawing_back_as_the_model_sees_it(encoding: str) -> None:
    drawings = [d.strokes for d in generate(40, seed=4)]
    steps, lengths, kept = encode_batch(drawings, encoding, LengthRules(min_len=6, max_len=60))
    back = batch_strokes(steps, lengths, encoding)
    assert len(back) == len(kept) == len(lengths)
    offsets = np.r_[0, np.cumsum(lengths)]
    for j, strokes in enumerate(back):
        one = steps[offsets[j] : offsets[j + 1]]
        assert strokes == features_to_strokes(steps_to_features(one), encoding)  # split at the right steps
    assert sum(sum(len(s[0]) for s in d) for d in back) >= int(lengths.sum())  # every step became a point


@pytest.mark.parametrize("encoding", ["reference", "stroke3"])
def test_vectorised_batch_equals_one_at_a_time(encoding: str) -> None:
    drawings = [d.strokes for d in generate(300, seed=3)]
    rules = LengthRules(min_len=6, max_len=40)
    steps, lengths, kept = encode_batch(drawings, encoding, rules)
    offsets = np.r_[0, np.cumsum(lengths)]
    for j, i in enumerate(kept):
        one = encode_strokes(drawings[i], encoding, rules)
        assert np.array_equal(steps[offsets[j] : offsets[j + 1]], one)
    if encoding == "reference":
        for j, i in enumerate(kept[:50]):
            assert np.array_equal(steps[offsets[j] : offsets[j + 1]], reference_encoder(drawings[i], 40))


def test_length_rules_drop_short_and_cap_long() -> None:
    short = [[[0, 1, 2, 255], [0, 0, 0, 0]]]  # 3 steps
    long_ = [
        [[0] + [(i * 7) % 256 for i in range(398)] + [255], [(i * 13) % 256 for i in range(400)]]
    ]  # 399 steps
    steps, lengths, kept = encode_batch(
        [short, long_, short], "reference", LengthRules(min_len=6, max_len=250)
    )
    assert kept.tolist() == [1] and lengths.tolist() == [250] and len(steps) == 250
    assert encode_strokes(short, "stroke3", LengthRules(min_len=6)) is None


def test_features_scale_and_clip() -> None:
    f = steps_to_features(np.array([[255, -255, 1], [300, 0, 0], [51, -51, 0]], dtype=np.int16))
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, [[1, -1, 1], [1, 0, 0], [0.2, -0.2, 0]], atol=1e-7)


def test_raw_capture_is_normalised_before_encoding() -> None:
    # a raw capture (with times, screen coordinates) and its already-simplified form encode the same
    from doodle_rnn.data.normalize import normalize_strokes

    raw = [[[100.5, 300.0, 500.25], [200.0, 260.0, 400.0], [0, 16, 33]], [[120, 480], [390, 210], [90, 120]]]
    assert np.array_equal(
        encode_strokes(raw, "stroke3", LOOSE), encode_strokes(normalize_strokes(raw), "stroke3", LOOSE)
    )


def _passthrough_agrees(drawings: list, raw: list) -> None:
    """Train/serve skew guard: the chunk path and the one-drawing path agree on what is 'simplified'."""
    from doodle_rnn.data.encode import _flatten, simplified_mask
    from doodle_rnn.data.normalize import is_simplified

    rng = np.random.default_rng(0)
    variants = list(drawings)
    variants += [[[s[0], s[1]] for s in d] for d in raw[:20]]  # raw coordinates without times
    variants += [
        [[[v // 3 for v in s[0]], [v // 3 for v in s[1]]] for s in d] for d in drawings[:10]
    ]  # small
    variants += [[[[v + 100 for v in s[0]], s[1]] for s in d] for d in drawings[:10]]  # shifted out of frame
    variants += [[[[v + 0.5 for v in s[0]], s[1]] for s in d] for d in drawings[:10]]  # fractional
    variants += [[[rng.integers(0, 256, 5).tolist(), rng.integers(0, 256, 5).tolist()]] for _ in range(50)]
    mask = simplified_mask(_flatten(variants), len(variants))
    assert mask.tolist() == [is_simplified(v) for v in variants]
    assert mask[: len(drawings)].all() and not mask[len(drawings) :].all()


def test_vectorised_passthrough_test_equals_is_simplified() -> None:
    """On real simplified drawings (the bundled cows) and variants of them that are not simplified."""
    import orjson
    from conftest import bundled_lines

    _passthrough_agrees([orjson.loads(x)["drawing"] for x in bundled_lines("cow", 1000)], raw=[])


def test_vectorised_passthrough_on_raw_captures(quickdraw_dir) -> None:
    """The same guard with real raw captures (pixel coordinates, only in the shared sample) among them."""
    import orjson

    drawings = [
        orjson.loads(x)["drawing"]
        for x in (quickdraw_dir / "simplified" / "cow.ndjson").read_bytes().splitlines()
    ]
    raw = [
        orjson.loads(x)["drawing"]
        for x in next((quickdraw_dir / "raw").glob("*.ndjson")).read_bytes().splitlines()
    ]
    assert len(raw) >= 20
    _passthrough_agrees(drawings, raw)
