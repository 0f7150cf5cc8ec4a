"""`doodle prepare` on real and synthetic data: counts, stable splits, de-duplication, atomic writes."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from doodle_rnn.data.cache import CacheError, DoodleCache, PrepareConfig, prepare_cache
from doodle_rnn.data.encode import DEFAULT_ENCODING, LengthRules, encode_batch, steps_to_features
from doodle_rnn.data.synthetic import write_ndjson_per_class


def test_prepare_real_sample_counts_match_files(tmp_path: Path, bundled_dir: Path) -> None:
    """The bundled real drawings (gzipped official files, 4,000 a class) prepared by the command."""
    src = bundled_dir
    out = tmp_path / "c"
    r = subprocess.run(
        [sys.executable, "-m", "doodle_rnn", "prepare", "--data", str(src), "--out", str(out), "--jobs", "2"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    files = sorted(src.glob("*.ndjson.gz"))
    assert m["classes"] == [f.name.removesuffix(".ndjson.gz") for f in files] and len(files) == 10
    # recount from the files: recognised drawings with >= 6 steps, key_ids de-duplicated
    expected: dict[str, int] = {}
    for f in files:
        recs = [orjson.loads(x) for x in gzip.decompress(f.read_bytes()).splitlines() if x.strip()]
        recs = [x for x in recs if x["recognized"]]
        _, _, kept = encode_batch([x["drawing"] for x in recs], DEFAULT_ENCODING, LengthRules())
        expected[f.name.removesuffix(".ndjson.gz")] = len({recs[i]["key_id"] for i in kept})
    assert {w: sum(c.values()) for w, c in m["counts"].items()} == expected
    assert m["n_drawings"] == sum(expected.values()) == sum(m["split_counts"].values())
    assert sum(s["read"] for s in m["sources"]) == 40_000
    assert m["dropped"]["duplicate_key_id"] > 0  # some key_ids repeat within a bundled file: each kept once
    c = DoodleCache(out)
    assert len(c) == m["n_drawings"] and c.steps.shape == (m["n_steps"], 3)
    assert isinstance(c.steps, np.memmap)
    # the cache holds exactly what the encoder makes of the first cow drawing
    cow = [orjson.loads(x) for x in gzip.decompress((src / "cow.ndjson.gz").read_bytes()).splitlines()]
    first = next(x for x in cow if x["recognized"])
    i = int(np.flatnonzero(np.asarray(c.key_ids) == first["key_id"].encode())[0])
    steps, _, _ = encode_batch([first["drawing"]], DEFAULT_ENCODING, LengthRules())
    assert np.array_equal(c.steps_of(i), steps) and c.classes[c.labels[i]] == "cow"
    np.testing.assert_array_equal(c.features_of(i), steps_to_features(steps))


def test_splits_are_stable_when_data_is_added(tmp_path: Path) -> None:
    data = tmp_path / "d"
    write_ndjson_per_class(data, 800, seed=1)
    small = prepare_cache(PrepareConfig([str(data / "circle.ndjson")], str(tmp_path / "a"), progress=False))
    big = prepare_cache(PrepareConfig([str(data)], str(tmp_path / "b"), progress=False, jobs=2))
    a, b = DoodleCache(tmp_path / "a"), DoodleCache(tmp_path / "b")
    split_b = dict(zip(np.asarray(b.key_ids).tolist(), b.splits.tolist(), strict=True))
    assert all(
        split_b[k] == s for k, s in zip(np.asarray(a.key_ids).tolist(), a.splits.tolist(), strict=True)
    )
    assert small["n_drawings"] == 100 and big["n_drawings"] == 800
    # every class is split by the same fractions (hash-based, so approximately): 10% +- noise
    for counts in big["counts"].values():
        assert 60 <= counts["train"] <= 95 and counts["val"] + counts["test"] >= 5


def test_duplicates_kept_once_and_cap_per_class(tmp_path: Path) -> None:
    data = tmp_path / "d"
    files = write_ndjson_per_class(data, 160, seed=2)
    dup = tmp_path / "dup"
    dup.mkdir()
    (dup / "circle.ndjson").write_bytes(files[0].read_bytes())  # the same 20 circles again
    m = prepare_cache(PrepareConfig([str(data), str(dup)], str(tmp_path / "c"), progress=False))
    assert m["dropped"]["duplicate_key_id"] == 20 and m["n_drawings"] == 160
    m2 = prepare_cache(
        PrepareConfig(
            [str(data)], str(tmp_path / "c2"), max_per_class=7, classes=["circle", "star"], progress=False
        )
    )
    assert m2["classes"] == ["circle", "star"] and m2["n_drawings"] == 14


def test_failed_prepare_leaves_nothing_that_loads(tmp_path: Path) -> None:
    data = tmp_path / "d"
    write_ndjson_per_class(data, 40, seed=3)
    with open(data / "circle.ndjson", "ab") as fh:
        fh.write(b"not json\n")
    with pytest.raises(ValueError, match="malformed JSON"):
        prepare_cache(PrepareConfig([str(data)], str(tmp_path / "c"), strict=True, progress=False))
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".c.*"))
    with pytest.raises(CacheError, match="not a prepared cache"):
        DoodleCache(tmp_path / "c")


def _prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "doodle_rnn", "prepare", "--no-progress", "--jobs", "1", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_all_bad_inputs_report_their_counts_and_positions(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ndjson"
    junk.write_text('not json\n{"word": "cat", "drawing": [[[1, 2], [3]]]}\n{"word": "cat"}\n')
    r = _prepare("--data", str(junk), "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and r.stderr.startswith("error: no usable drawings"), r.stderr
    assert "skipped 3 record(s) in" in r.stderr  # the counts are printed, not promised "above"
    for line in (1, 2, 3):
        assert f"{junk}:{line}: " in r.stderr
    assert "see the skipped counts above" not in r.stderr and not (tmp_path / "c").exists()


def test_a_requested_class_without_data_is_named(tmp_path: Path) -> None:
    write_ndjson_per_class(tmp_path / "syn", 30, seed=1)
    have = ["circle", "house"]  # official class names among the synthetic ones; no cat file
    r = _prepare("--data", str(tmp_path / "syn"), "--out", str(tmp_path / "c"), "--classes", *have, "cat")
    assert r.returncode == 0, r.stderr
    assert "warning: no drawings of the requested class(es) cat" in r.stderr and "2 classes" in r.stderr
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["classes"] == have
    r = _prepare("--data", str(tmp_path / "syn"), "--out", str(tmp_path / "d"), "--classes", have[0], "cat")
    assert r.returncode == 2 and "cat" in r.stderr and "at least two classes" in r.stderr
    assert not (tmp_path / "d").exists()
