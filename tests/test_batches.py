"""Batch construction: every drawing once per epoch, padding, and class mix of training batches."""

from __future__ import annotations

import numpy as np

from doodle_rnn.data.batches import bucket_batches
from doodle_rnn.tensors import pad_features


def _length_correlated_classes(n: int = 4000, classes: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    lengths = (10 + 20 * labels + rng.integers(0, 15, n)).astype(np.int64)  # length says the class
    return lengths, labels


def test_every_position_once_and_batches_sorted_inside() -> None:
    lengths, labels = _length_correlated_classes()
    for kwargs in ({"pool": 1}, {"pool": 64}, {"labels": labels}):
        batches = bucket_batches(lengths, 192, True, np.random.default_rng(1), **kwargs)
        assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(len(lengths)))
        assert all(np.all(np.diff(lengths[b]) >= 0) for b in batches)


def test_quantile_buckets_keep_every_class_in_every_batch() -> None:
    """Raw-length buckets hold 1-2 classes when length predicts the class; quantile buckets hold all."""
    lengths, labels = _length_correlated_classes()
    raw = bucket_batches(lengths, 192, True, np.random.default_rng(2), pool=64)
    quant = bucket_batches(lengths, 192, True, np.random.default_rng(2), labels=labels)
    full = [b for b in quant if len(b) == 192]
    assert np.median([len(np.unique(labels[b])) for b in raw]) <= 2
    assert min(len(np.unique(labels[b])) for b in full) == 8
    # while still grouping lengths more tightly than random batches do
    rand = bucket_batches(lengths, 192, True, np.random.default_rng(2), pool=1)
    spread = lambda bs: np.mean([np.ptp(lengths[b]) for b in bs])  # noqa: E731
    assert spread(raw) < spread(full) < spread(rand)


def test_pad_features_places_each_drawing_in_its_row() -> None:
    steps = np.array([[255, 0, 0], [0, 255, 1], [51, 51, 1]], dtype=np.int16)
    x, lengths = pad_features(steps, np.array([2, 1]))
    assert x.shape == (2, 2, 3) and lengths.tolist() == [2, 1]
    np.testing.assert_allclose(x[0].numpy(), [[1, 0, 0], [0, 1, 1]])
    np.testing.assert_allclose(x[1].numpy(), [[0.2, 0.2, 1], [0, 0, 0]])


def test_evaluation_batches_cap_total_steps_and_cover_everything_once():
    rng = np.random.default_rng(3)
    lengths = rng.integers(6, 251, 5000)
    batches = bucket_batches(lengths, 512, False, max_steps=512 * 64)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(5000))
    assert np.all(np.diff(lengths[flat]) >= 0)  # still globally sorted
    assert all(len(b) <= 512 and (lengths[b].sum() <= 512 * 64 or len(b) == 1) for b in batches)
    assert len(batches[0]) == 512 and len(batches[-1]) < 512 * 64 // 240  # short full, long capped
    assert [b.tolist() for b in bucket_batches(lengths, 512, False)] == [
        b.tolist() for b in bucket_batches(lengths, 512, False, max_steps=10**9)
    ]
