"""The shipped `quickdraw` model (338 classes), judged on bundled real drawings it never trained on.

`doodle_rnn/bundled/quickdraw/heldout.ndjson.gz` holds 5 drawings of each class from the test split of
`wide1k`, which lies inside the test split of `wide5k` the model was trained beside (chosen by key_id, so
never trained or tuned on). Both ways in must reach the model card's test
accuracy and agree drawing for drawing: `doodle eval` on the file (a real subprocess: read, normalise,
encode, batch) and `Classifier.predict_many` on the strokes as a user would send them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from doodle_rnn.data.formats import iter_drawings
from doodle_rnn.inference import Classifier
from doodle_rnn.models import shipped_path

HELDOUT = Path(str(resources.files("doodle_rnn").joinpath("bundled/quickdraw/heldout.ndjson.gz")))
# 1,690 drawings give a standard error of ~1.1 points on top-1 near 0.7: 4.5 points is 4 of them.
SLACK = 0.045


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return Classifier.load("quickdraw")


@pytest.fixture(scope="module")
def heldout() -> list:
    return list(iter_drawings(HELDOUT))


def test_quickdraw_is_shipped_with_a_card_that_meets_the_targets(clf: Classifier, heldout: list) -> None:
    card = clf.info["card"]
    assert card["name"] == "quickdraw" and len(clf.classes) == 338
    assert {d.word for d in heldout} == set(clf.classes) and len(heldout) == 5 * 338
    # trained on wide5k (1.32 M drawings) with prefix training in eight legs, the last three without label
    # smoothing: better than the first seven (0.8067 / 0.9391, 0.553 at half the strokes; 39.1% called
    # early, but only 94.2% of those first calls right on test), the first six (0.8051 / 0.9385, 37.8%,
    # 0.546) and the wide1k model (0.714 / 0.887, no early calls to speak of); top-1, top-3 and half the
    # strokes hold issue 20's 0.80 / 0.93 / 0.55, and first calls on test its 95%
    assert card["test"]["top1"] >= 0.807 and card["test"]["top3"] >= 0.939, card["test"]
    assert card["test"]["n_drawings"] > 160_000 and "wide5k" in card["test"]["data"]
    assert 0.0 < card["announce_threshold"] < 0.999 and card["announcement"]["precision"] >= 0.95
    calls = card["test"]["early_guessing"]["announcement"]
    assert calls["threshold"] == card["announce_threshold"] and calls["announced_before_complete"] >= 0.37
    assert calls["precision"] >= 0.95, calls  # legs 1-7: 0.942 on test
    assert card["test"]["early_guessing"]["strokes"]["0.5"]["top1"] >= 0.555  # legs 1-7: 0.553; wide1k: 0.376
    assert shipped_path("quickdraw").stat().st_size < 10_000_000


def test_quickdraw_on_held_out_drawings_file_and_serving_paths_agree(
    clf: Classifier, heldout: list, tmp_path: Path
) -> None:
    top = clf.predict_many([d.strokes for d in heldout], top_k=3)
    words = [d.word for d in heldout]
    top1 = float(np.mean([t[0][0] == w for t, w in zip(top, words, strict=True)]))
    top3 = float(np.mean([w in [c for c, _ in t] for t, w in zip(top, words, strict=True)]))
    card = clf.info["card"]["test"]
    assert top1 >= card["top1"] - SLACK and top3 >= card["top3"] - SLACK, (top1, top3, card)

    r = subprocess.run([sys.executable, "-m", "doodle_rnn", "eval", "--checkpoint", "quickdraw", "--data",
                        str(HELDOUT), "--out", str(tmp_path / "eval"), "--no-early", "--no-progress"],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert s["n_drawings"] == len(heldout)
    # the same drawings through the file path: the same answers (up to float noise on a near-tie)
    assert abs(s["metrics"]["top1"] - top1) <= 1 / len(heldout), (s["metrics"]["top1"], top1)
    assert abs(s["metrics"]["top3"] - top3) <= 1 / len(heldout), (s["metrics"]["top3"], top3)
