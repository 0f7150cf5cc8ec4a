"""`doodle prepare` at scale, on small real inputs: the streaming merge gives the cache the in-memory rules
give, memory stays flat as the input grows, a killed run resumes, a full disk gives one clear line."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from doodle_rnn.data import merge, shards
from doodle_rnn.data.cache import DoodleCache, PrepareConfig, prepare_cache
from doodle_rnn.data.encode import LengthRules, encode_batch
from doodle_rnn.data.formats import iter_drawings, list_data_files
from doodle_rnn.data.splits import key_hash, split_of

ARRAYS = ("steps", "offsets", "labels", "splits", "key_ids")


def reference_arrays(cfg: PrepareConfig) -> dict[str, np.ndarray]:
    """The cache's arrays by the rules, everything in memory: the whole input read, the per-file cap, the
    first occurrence of each key_id hash kept in input order, then the cap across files, then splits."""
    rows = []  # (word, hash, key_id, steps) in input order
    for f in list_data_files(cfg.inputs):
        per_class: Counter = Counter()
        kept = []
        for d in iter_drawings(f):
            if (cfg.classes and d.word not in cfg.classes) or (cfg.recognized_only and not d.recognized):
                continue
            if cfg.max_per_class is not None and per_class[d.word] >= cfg.max_per_class:
                continue
            per_class[d.word] += 1
            kept.append(d)
        steps, lengths, idx = encode_batch([d.strokes for d in kept], cfg.encoding, LengthRules())
        for d, part in zip([kept[i] for i in idx], np.split(steps, np.cumsum(lengths)[:-1]), strict=True):
            rows.append((d.word, int(key_hash([d.key_id], cfg.seed)[0]), d.key_id, part))
    words = (
        sorted({r[0] for r in rows})
        if not cfg.classes
        else [c for c in cfg.classes if c in {r[0] for r in rows}]
    )
    seen, per_class, out = set(), Counter(), []
    for r in rows:
        if r[1] in seen:
            continue
        seen.add(r[1])
        per_class[r[0]] += 1
        if cfg.max_per_class is None or per_class[r[0]] <= cfg.max_per_class:
            out.append(r)
    hashes = np.array([r[1] for r in out], np.uint64)
    width = np.array([r[2] for r in rows], "S").itemsize  # as wide as the longest key_id encoded
    return {
        "steps": np.concatenate([r[3] for r in out]),
        "offsets": np.concatenate([[0], np.cumsum([len(r[3]) for r in out])]),
        "labels": np.array([words.index(r[0]) for r in out], np.int16),
        "splits": split_of(hashes, cfg.val_frac, cfg.test_frac),
        "key_ids": np.array([r[2] for r in out], f"S{width}"),
    }


def _real_inputs(root: Path, bundled_dir: Path) -> Path:
    """Three bundled classes, plus a second folder repeating some cows (duplicates across files)."""
    a, b = root / "a", root / "b"
    a.mkdir(parents=True)
    b.mkdir()
    for w in ("cow", "shark", "snake"):
        shutil.copy(bundled_dir / f"{w}.ndjson.gz", a)
    cows = gzip.decompress((bundled_dir / "cow.ndjson.gz").read_bytes()).splitlines(keepends=True)
    (b / "cow.ndjson").write_bytes(b"".join(cows[500:900]))
    sharks = gzip.decompress((bundled_dir / "shark.ndjson.gz").read_bytes()).splitlines()[:900]
    # key_ids of 2 to 10 bytes, longer in each encoded chunk of 300 (and shorter than the real ones)
    recs = [orjson.loads(x) | {"key_id": "s" + str(i) * (1 + i // 300)} for i, x in enumerate(sharks)]
    (b / "shark.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))
    return root


@pytest.mark.parametrize("small_chunks", [False, True], ids=["defaults", "many-chunks-and-buckets"])
def test_streaming_merge_matches_the_in_memory_rules(
    tmp_path: Path, bundled_dir: Path, monkeypatch, small_chunks: bool
) -> None:
    root = _real_inputs(tmp_path / "in", bundled_dir)
    if small_chunks:  # many record chunks, de-duplication buckets and encode chunks, in this process
        monkeypatch.setattr(merge, "RECORDS_CHUNK", 777)
        monkeypatch.setattr(merge, "BUCKET_ENTRIES", 2000)
        monkeypatch.setattr(shards, "CHUNK", 300)
    cfg = PrepareConfig(
        [str(root / "a"), str(root / "b")], str(tmp_path / "c"), max_per_class=3500,
        jobs=1 if small_chunks else 2, progress=False,
    )  # fmt: skip
    m = prepare_cache(cfg)
    ref = reference_arrays(cfg)
    c = DoodleCache(tmp_path / "c")
    for name in ARRAYS:
        got = np.asarray(getattr(c, name))
        assert got.dtype == ref[name].dtype and np.array_equal(got, ref[name]), name
    assert m["dropped"]["duplicate_key_id"] >= 400 and m["dropped"]["over_max_per_class"] > 0
    assert m["n_drawings"] == len(ref["labels"]) and sum(m["split_counts"].values()) == m["n_drawings"]
    assert not list(tmp_path.glob(".c*"))


def _peak_rss_mb(data: Path, out: Path) -> float:
    """Peak RSS of a fresh interpreter that runs `doodle prepare` in itself (--jobs 1)."""
    code = (
        "import resource, sys; from doodle_rnn.cli import main; rc = main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
    )
    args = ["prepare", "--data", str(data), "--out", str(out), "--jobs", "1", "--no-progress"]
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1]) / 1024


def _copies(bundled_dir: Path, folder: Path, k: int) -> None:
    """k copies of 5 bundled classes with new key_ids (so none de-duplicates): 20,000 x k drawings."""
    folder.mkdir(parents=True)
    for f in sorted(bundled_dir.glob("*.ndjson.gz"))[:5]:
        text = gzip.decompress(f.read_bytes())
        for i in range(k):
            (folder / f.name.replace(".ndjson.gz", f"-{i}.ndjson")).write_bytes(
                text.replace(b'"key_id":"', f'"key_id":"c{i}-'.encode())
            )


def test_peak_memory_stays_flat_as_the_input_grows_4x(tmp_path: Path, bundled_dir: Path) -> None:
    """The in-memory merge this replaced held ~0.58 KB a drawing: +35 MB from 20,000 to 80,000 drawings."""
    _copies(bundled_dir, tmp_path / "x1", 1)
    _copies(bundled_dir, tmp_path / "x4", 4)
    small = _peak_rss_mb(tmp_path / "x1", tmp_path / "c1")
    big = _peak_rss_mb(tmp_path / "x4", tmp_path / "c4")
    assert DoodleCache(tmp_path / "c4").manifest["n_drawings"] > 3.9 * len(DoodleCache(tmp_path / "c1"))
    print(f"peak RSS {small:.1f} MB (20,000 drawings), {big:.1f} MB (80,000)")
    assert big - small < 12, (small, big)


def _split_inputs(bundled_dir: Path, folder: Path, parts: int, classes: int = 10) -> None:
    """The bundled drawings as many small files, so a prepare spends a while between files."""
    folder.mkdir(parents=True)
    for f in sorted(bundled_dir.glob("*.ndjson.gz"))[:classes]:
        lines = gzip.decompress(f.read_bytes()).splitlines(keepends=True)
        for i in range(parts):
            (folder / f.name.replace(".ndjson.gz", f"-{i:02d}.ndjson")).write_bytes(b"".join(lines[i::parts]))


def _prepare_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "doodle_rnn", "prepare", "--data", str(data), "--out", str(out),
            "--jobs", "1", "--no-progress", *extra]  # fmt: skip


def test_a_killed_prepare_resumes_and_leaves_no_work_folder(tmp_path: Path, bundled_dir: Path) -> None:
    data = tmp_path / "in"
    _split_inputs(bundled_dir, data, 8)  # 80 files
    out, work = tmp_path / "c", tmp_path / ".c.tmp"
    proc = subprocess.Popen(_prepare_cmd(data, out), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list((work / "shards").glob("*.json"))) < 10 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list((work / "shards").glob("*.json")))
    assert 10 <= done_before < 80 and not out.exists()
    (tmp_path / ".c.tmp-0badf00d").mkdir()  # what an older version left behind when it was killed
    r = subprocess.run(_prepare_cmd(data, out), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resumed: reused" in r.stderr and "removed" in r.stderr and ".c.tmp-0badf00d" in r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["resumed_files"] >= done_before and any(".c.tmp-0badf00d" in n for n in m["notes"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "in"]  # no work folder, no leftover
    clean = prepare_cache(PrepareConfig([str(data)], str(tmp_path / "clean"), progress=False))
    assert clean["n_drawings"] == m["n_drawings"] and clean["dropped"] == m["dropped"]
    for name in ARRAYS:
        assert np.array_equal(np.load(out / f"{name}.npy"), np.load(tmp_path / "clean" / f"{name}.npy")), name


def test_a_rerun_with_other_settings_starts_over(tmp_path: Path, bundled_dir: Path) -> None:
    data = tmp_path / "in"
    _split_inputs(bundled_dir, data, 2, classes=2)
    work = tmp_path / ".c.tmp" / "shards"
    prepare_cache(PrepareConfig([str(data)], str(tmp_path / "c"), progress=False))  # an older cache
    # a stale work folder of a different job (say --min-len 8) must not feed this run
    work.mkdir(parents=True)
    (work.parent / "job.json").write_text('{"settings": {"min_len": 8}}')
    (work / "000000.json").write_text("{}")
    m = prepare_cache(PrepareConfig([str(data)], str(tmp_path / "c"), progress=False))
    assert m["resumed_files"] == 0 and any("starting over" in n for n in m["notes"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "in"]


def test_too_little_free_space_is_one_line_before_any_work(tmp_path: Path, bundled_dir: Path) -> None:
    env = {**os.environ, "DOODLE_PREPARE_FREE_BYTES": "1000000"}  # the estimate needs ~15 MB
    r = subprocess.run(_prepare_cmd(bundled_dir, tmp_path / "c"), capture_output=True, text=True, env=env)
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and str(tmp_path / ".c.tmp") in line and "needs about" in line, line
    assert "1.0 MB is free" in line and sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_disk_that_fills_up_mid_way_is_one_line_and_no_partial_cache(
    tmp_path: Path, bundled_dir: Path
) -> None:
    """A real limit from the operating system: every file this prepare writes may hold at most 200 KB
    (RLIMIT_FSIZE; the write past it fails with EFBIG, as it would with ENOSPC on a full disk)."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    r = subprocess.run(
        _prepare_cmd(bundled_dir, tmp_path / "c"),
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=120,
    )
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and str(tmp_path / ".c.tmp") in line and "ran out of space" in line, line
    assert "needs about" in line and sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_full_tmpfs_is_one_line_and_no_partial_cache(tmp_path: Path, bundled_dir: Path) -> None:
    """A real full disk: a 2 MB tmpfs (needs root and a kernel that allows the mount; skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        env = {**os.environ, "DOODLE_PREPARE_FREE_BYTES": str(10**12)}  # pass the estimate: fill up for real
        r = subprocess.run(_prepare_cmd(bundled_dir, disk / "c"), capture_output=True, text=True, env=env)
        line = r.stderr.strip()
        assert r.returncode == 2 and "\n" not in line and "No space left" in line, line
        assert str(disk / ".c.tmp") in line and list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)
