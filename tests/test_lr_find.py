"""`lr_find`: the suggested rate on loss curves of known shape, and the sweep runs the trainer's own steps.

The `suggest` curves are synthetic (a smoothed loss against an exponentially growing rate, as the range
test records them), so where the loss falls fastest and where it bottoms out are known in advance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from doodle_rnn.config import LRFindConfig, TrainConfig
from doodle_rnn.data.cache import PrepareConfig, prepare_cache
from doodle_rnn.data.synthetic import write_ndjson_per_class
from doodle_rnn.lr_find import lr_find, suggest
from doodle_rnn.train import train

LRS = np.logspace(-6, 0, 100)  # 1e-6 .. 1, as `--start-lr 1e-6 --end-lr 1 --num-iter 100` sweeps them


def _drop(center: float, width_decades: float) -> np.ndarray:
    """1 at rates well below `center`, 0 well above it; the fall is steepest at `center`."""
    return 1 / (1 + np.exp((np.log10(LRS) - math.log10(center)) / width_decades))


def _blow_up(start: float) -> np.ndarray:
    """0 below `start`, then a loss that grows fast as the rate gets too hot."""
    return 4 * np.clip(np.log10(LRS) - math.log10(start), 0, None) ** 2


def test_suggests_the_steepest_descent_when_it_is_well_below_the_minimum():
    # falls fastest at 1e-3, bottoms out near 0.05, diverges after: min / 10 (~5e-3) is hotter than 1e-3
    loss = 1.0 + 1.3 * _drop(1e-3, 0.25) + _blow_up(0.05)
    got = suggest(LRS.tolist(), loss.tolist())
    assert 7e-4 <= got <= 1.4e-3
    assert got < LRS[np.argmin(loss)] / 10
    assert got in LRS.tolist()  # one of the swept rates, not an interpolation


def test_never_suggests_more_than_a_tenth_of_the_rate_at_the_minimum():
    # a sharp fall right before the minimum: the steepest point (~2e-2) is already too hot
    loss = 1.0 + 1.3 * _drop(2e-2, 0.05) + _blow_up(4e-2)
    i_min = int(np.argmin(loss))
    steepest = LRS[int(np.argmin(np.gradient(loss, np.log(LRS))))]
    assert steepest > LRS[i_min] / 10  # the curve is what this test means it to be
    assert suggest(LRS.tolist(), loss.tolist()) == pytest.approx(LRS[i_min] / 10, rel=1e-12)


def test_ignores_a_steep_start_and_end_of_the_curve():
    # the first and last 10% of the steps are not trusted: a steep fall there (warm-up noise, the
    # last steps of a run stopped at --end-lr) is not chosen over the real fall at 1e-4
    loss = 2.0 + 0.5 * _drop(1e-4, 0.3)
    loss[:8] += np.linspace(3.0, 0.0, 8)  # falls by 3 over the first 8 steps
    loss[-8:] -= np.linspace(0.0, 1.5, 8)  # and by 1.5 over the last 8 (min at the last rate, 1e0)
    got = suggest(LRS.tolist(), loss.tolist())
    assert 5e-5 <= got <= 2e-4


@pytest.mark.parametrize(
    "curve",
    [np.full(100, 2.3), 2.3 + _blow_up(1e-6), 2.3 + np.linspace(0, 1, 100)],
    ids=["flat", "diverges_at_once", "only_rises"],
)
def test_a_curve_that_never_falls_suggests_a_tenth_of_the_start_rate(curve):
    # nothing to learn from the range: the minimum is the first rate, so the suggestion is below the range
    assert suggest(LRS.tolist(), curve.tolist()) == pytest.approx(LRS[0] / 10, rel=1e-12)


def test_a_short_curve_suggests_a_tenth_of_the_rate_at_its_minimum():
    # fewer than 5 steps (a test that diverged at once): no slope to trust, only the minimum
    assert suggest([1e-4, 1e-3, 1e-2, 1e-1], [2.0, 1.5, 1.8, 9.0]) == pytest.approx(1e-4)
    assert suggest([1e-3], [2.0]) == pytest.approx(1e-4)


def test_no_steps_suggest_nothing():
    assert math.isnan(suggest([], []))


def test_lr_find_steps_are_the_trainers_steps(tmp_path: Path) -> None:
    write_ndjson_per_class(tmp_path / "syn", 300, seed=11)
    cache = tmp_path / "cache"
    prepare_cache(PrepareConfig(inputs=[str(tmp_path / "syn")], out=str(cache), progress=False))
    common = {"data": str(cache), "batch_size": 16, "hidden_size": 16, "num_threads": 1, "weight_decay": 0.5}
    res = lr_find(LRFindConfig(out=str(tmp_path / "lrf"), num_iter=3, start_lr=3e-3, end_lr=1.0, **common))
    train(TrainConfig(out=str(tmp_path / "run"), lr=3e-3, max_steps=2, log_every=1, **common))
    batches = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "batch"]  # fmt: skip
    # step 1: same model, batch, augmentation and loss; step 2: also the same update (param groups with
    # no decay on biases and gains, clipping) at the same rate; step 3 follows a hotter rate in lr_find
    first, mean_of_two = batches[0]["loss"], batches[1]["loss"]
    assert res["loss"][0] == first
    assert res["loss"][1] == pytest.approx(2 * mean_of_two - first, rel=1e-6)
    assert res["lr"][0] == pytest.approx(3e-3) and res["lr"][2] == pytest.approx(1.0)
    assert all(n > 0 for n in res["grad_norm"])  # measured before clipping
    for name in ("lr_find.png", "grad_norm.png"):
        assert (tmp_path / "lrf" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
