"""Every supported format reads into the same Drawing; bad records are skipped, counted and located."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from conftest import bundled_lines

from doodle_rnn.data.formats import DataFormatError, SkipReport, iter_drawings, list_data_files


def _lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_simplified_ndjson_reads_every_line(bundled_dir: Path, tmp_path: Path) -> None:
    """Real simplified drawings, gzipped as bundled and plain as Google serves them, read line for line."""
    gz = bundled_dir / "cow.ndjson.gz"
    recs = [orjson.loads(x) for x in bundled_lines("cow")]
    got = list(iter_drawings(gz))
    assert len(got) == len(recs) == 4000
    path = tmp_path / "cow.ndjson"
    path.write_bytes(b"\n".join(bundled_lines("cow", 500)) + b"\n")
    assert [(d.key_id, d.strokes) for d in iter_drawings(path)] == [(d.key_id, d.strokes) for d in got[:500]]
    assert [d.key_id for d in got] == [r["key_id"] for r in recs]
    assert got[0].strokes == recs[0]["drawing"] and got[0].word == "cow"
    assert got[0].countrycode == recs[0]["countrycode"] and got[0].recognized == recs[0]["recognized"]


def test_raw_ndjson_keeps_times(quickdraw_dir: Path) -> None:
    path = next(iter(sorted((quickdraw_dir / "raw").glob("*.ndjson"))))
    d = next(iter_drawings(path))
    assert all(len(s) == 3 and len(s[0]) == len(s[2]) for s in d.strokes)


def _bad_file(tmp_path: Path) -> Path:
    good = {"word": "cat", "key_id": "1", "recognized": True, "drawing": [[[0, 10, 20], [0, 5, 9]]]}
    lines = [
        orjson.dumps(good),
        b'{"word": "cat", "drawing": [[[0, 1], [0',  # line 2: malformed JSON
        orjson.dumps({**good, "key_id": "3", "drawing": [[[0, 1, 2], [0, 1]]]}),  # 3: x/y lengths differ
        orjson.dumps({**good, "key_id": "4", "drawing": [[["a", 1], [0, 1]]]}),  # 4: non-numeric
        orjson.dumps({**good, "key_id": "5", "drawing": []}),  # 5: empty drawing
        orjson.dumps({**good, "key_id": "6"}),
    ]
    path = tmp_path / "cat.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_bad_records_are_skipped_counted_and_located(tmp_path: Path) -> None:
    path = _bad_file(tmp_path)
    rep = SkipReport()
    got = list(iter_drawings(path, report=rep))
    assert [d.key_id for d in got] == ["1", "6"]
    assert rep.total == 4
    assert rep.by_reason() == {
        "malformed JSON line": 1,
        "x and y (and t) lengths differ": 1,
        "non-numeric coordinates": 1,
        "empty drawing": 1,
    }
    assert rep.examples[str(path)][0] == f"{path}:2: malformed JSON line"


def test_strict_names_file_line_and_reason(tmp_path: Path) -> None:
    path = _bad_file(tmp_path)
    with pytest.raises(DataFormatError, match=r"cat\.ndjson:2: malformed JSON line"):
        list(iter_drawings(path, strict=True))


def test_sketchrnn_npz(tmp_path: Path) -> None:
    # stroke-3: (dx, dy, pen); pen 1 = the pen lifts after this point
    a = np.array([[5, 5, 0], [10, 0, 0], [0, 10, 1], [-20, 0, 0], [5, 5, 1]], dtype=np.int16)
    b = np.array([[1, 1, 0], [2, 2, 1]], dtype=np.int16)
    arrays = {k: np.empty(n, dtype=object) for k, n in (("train", 2), ("valid", 1), ("test", 0))}
    arrays["train"][0], arrays["train"][1], arrays["valid"][0] = a, b, a
    np.savez(tmp_path / "hot dog.npz", **arrays)
    got = list(iter_drawings(tmp_path / "hot dog.npz"))
    assert [d.word for d in got] == ["hot dog"] * 3
    assert got[0].strokes == [[[5.0, 15.0, 15.0], [5.0, 5.0, 15.0]], [[-5.0, 0.0], [15.0, 20.0]]]
    assert len({d.key_id for d in got}) == 3


def test_kaggle_and_reference_csv_match_ndjson(tmp_path: Path) -> None:
    recs = [orjson.loads(x) for x in bundled_lines("cow", 5)]
    kaggle = tmp_path / "train_cow.csv"
    with open(kaggle, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["countrycode", "drawing", "key_id", "recognized", "timestamp", "word"])
        for r in recs:
            w.writerow(
                [
                    r["countrycode"],
                    orjson.dumps(r["drawing"]).decode(),
                    r["key_id"],
                    r["recognized"],
                    r["timestamp"],
                    r["word"],
                ]
            )
    ref = tmp_path / "reference.csv"
    with open(ref, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["word", "drawing", "recognized"])
        for r in recs:
            w.writerow([r["word"], orjson.dumps(r["drawing"]).decode(), r["recognized"]])
    k = list(iter_drawings(kaggle))
    rf = list(iter_drawings(ref))
    assert [d.strokes for d in k] == [d.strokes for d in rf] == [r["drawing"] for r in recs]
    assert [d.key_id for d in k] == [r["key_id"] for r in recs]
    assert [d.recognized for d in k] == [r["recognized"] for r in recs]
    # the reference CSV has no key_id: one is derived from the drawing, stable across reads
    assert [d.key_id for d in rf] == [d.key_id for d in iter_drawings(ref)]
    assert len({d.key_id for d in rf}) == 5


def test_unknown_file_type_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "drawings.parquet"
    p.write_bytes(b"x")
    with pytest.raises(DataFormatError, match="unknown file type"):
        list(iter_drawings(p))
    with pytest.raises(DataFormatError, match="no such file"):
        list_data_files([tmp_path / "missing"])


def test_prepare_cli_reports_skips_and_strict_fails(tmp_path: Path) -> None:
    path = _bad_file(tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "doodle_rnn",
        "prepare",
        "--data",
        str(path),
        "--min-len",
        "1",
        "--jobs",
        "1",
    ]
    ok = subprocess.run([*cmd, "--out", str(tmp_path / "c")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert f"skipped 4 record(s) in {path}" in ok.stderr
    assert f"{path}:2: malformed JSON line" in ok.stderr
    strict = subprocess.run([*cmd, "--out", str(tmp_path / "s"), "--strict"], capture_output=True, text=True)
    assert strict.returncode == 2
    assert f"error: {path}:2: malformed JSON line" in strict.stderr
    assert not (tmp_path / "s").exists()
    assert not list(tmp_path.glob(".s.tmp*"))  # nothing half-written left behind (work folder .s.tmp)
