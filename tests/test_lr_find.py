"""`lr_find` runs the trainer's own steps: with the rate held at the start, its losses are the trainer's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from doodle_rnn.config import LRFindConfig, TrainConfig
from doodle_rnn.data.cache import PrepareConfig, prepare_cache
from doodle_rnn.data.synthetic import write_ndjson_per_class
from doodle_rnn.lr_find import lr_find
from doodle_rnn.train import train


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
