"""The shipped `animals10` model, judged on bundled real drawings it never trained on.

The bundled drawings (`doodle_rnn/bundled/animals10`, the first 4,000 of each class of `animals5k`) fall
in the same key_id-hashed splits as when the model was trained, so their test split (~3,900 drawings)
was never trained or tuned on. A change to normalisation, encoding or the model code that hurts the
shipped model fails here: the cache path (`doodle prepare` + `doodle eval`, real subprocesses) and the
serving path (`Classifier.predict_many` on the strokes as a user sends them) must both reach the
accuracy recorded in the model card, and agree with each other.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from doodle_rnn.data.cache import DoodleCache
from doodle_rnn.data.formats import iter_drawings
from doodle_rnn.inference import Classifier
from doodle_rnn.models import DEFAULT_MODEL, resolve_model, shipped_path
from doodle_rnn.quickstart import bundled_data_dir

# How far below its card's test top-1 (the full animals5k test split) the model may land on the bundled
# subset of that split: ~3,900 drawings give a standard error of ~0.4 points; 1.5 points is > 3 of them.
SLACK = 0.015


def doodle(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "doodle_rnn", *args], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def card() -> dict:
    return Classifier.load().info["card"]


@pytest.fixture(scope="module")
def bundled_cache(tmp_path_factory) -> Path:
    """The bundled drawings prepared with `doodle prepare`'s defaults and the model's encoding."""
    out = tmp_path_factory.mktemp("bundled") / "cache"
    enc = Classifier.load().encoding
    r = doodle(
        "prepare", "--data", str(bundled_data_dir()), "--out", str(out), "--encoding", enc, "--jobs", "2"
    )
    assert r.returncode == 0, r.stderr
    return out


def test_the_default_model_is_shipped_and_describes_itself(card: dict) -> None:
    assert resolve_model(None) == shipped_path(DEFAULT_MODEL) and shipped_path("animals10").is_file()
    clf = Classifier.load("animals10")
    assert sorted(clf.classes) == sorted(p.name.split(".")[0] for p in bundled_data_dir().glob("*.ndjson.gz"))
    assert card["name"] == "animals10"
    assert 0.5 < card["announce_threshold"] <= 1.0
    assert card["announcement"]["precision"] >= 0.95
    assert card["test"]["top1"] >= 0.93 and card["test"]["n_drawings"] > 4000
    assert shipped_path("animals10").stat().st_size < 10_000_000  # a few MB in the package


def test_a_local_file_named_like_a_shipped_model_is_not_shadowed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "animals10").write_text("not a model")
    r = doodle("predict", "--checkpoint", "animals10", str(tmp_path / "none.ndjson"))
    assert r.returncode != 0 and "animals10" in r.stderr  # the local file was tried, not the package's


def test_shipped_model_on_bundled_test_drawings_cache_path(
    bundled_cache: Path, card: dict, tmp_path: Path
) -> None:
    r = doodle("eval", "--checkpoint", "animals10", "--data", str(bundled_cache), "--split", "test",
               "--out", str(tmp_path / "eval"), "--no-early")  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert s["n_drawings"] > 3500
    assert s["metrics"]["top1"] >= card["test"]["top1"] - SLACK, s["metrics"]
    assert s["metrics"]["top3"] >= card["test"]["top3"] - SLACK, s["metrics"]


def test_shipped_model_on_bundled_test_drawings_serving_path(bundled_cache: Path, card: dict) -> None:
    """The strokes exactly as in the files, through the API a server uses: the same accuracy."""
    cache = DoodleCache(bundled_cache)
    test_keys = {bytes(cache.key_ids[i]).decode() for i in cache.split_indices("test")}
    drawings = [
        d
        for f in sorted(bundled_data_dir().glob("*.ndjson.gz"))
        for d in iter_drawings(f)
        if d.key_id in test_keys
    ]
    drawings = list({d.key_id: d for d in drawings}.values())  # identical drawings share a key_id
    clf = Classifier.load()
    top = clf.predict_many([d.strokes for d in drawings], top_k=3)
    words = np.array([d.word for d in drawings])
    top1 = float(np.mean([t[0][0] == w for t, w in zip(top, words, strict=True)]))
    top3 = float(np.mean([w in [c for c, _ in t] for t, w in zip(top, words, strict=True)]))
    assert len(drawings) > 3500
    assert top1 >= card["test"]["top1"] - SLACK and top3 >= card["test"]["top3"] - SLACK, (top1, top3)
