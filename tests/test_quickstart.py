"""`doodle quickstart` end to end, as a user runs it: a real mirror on loopback, real subprocess, real server."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

TINY = ["--max-per-class", "60", "--epochs", "1", "--hidden-size", "16", "--num-layers", "1",
        "--max-steps", "5", "--no-progress", "--jobs", "1"]  # fmt: skip
CLASSES = ["--classes", "cow", "snake", "spider"]


@pytest.fixture()
def mirror_dir(tmp_path: Path) -> Path:
    """Real drawings laid out like the official bucket: the bundled files, plain `simplified/<word>.ndjson`."""
    from doodle_rnn.quickstart import bundled_data_dir

    root = tmp_path / "bucket"
    (root / "simplified").mkdir(parents=True)
    for w in ("cow", "snake", "spider"):
        data = gzip.decompress((bundled_data_dir() / f"{w}.ndjson.gz").read_bytes())
        (root / "simplified" / f"{w}.ndjson").write_bytes(data)
    return root


@pytest.fixture()
def mirror(mirror_dir: Path):
    """The mirror directory served over HTTP on loopback."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror_dir))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outputs_exist(work: Path) -> None:
    for rel in ("cache/manifest.json", "run/best.pt", "run/last.pt", "run/metrics.jsonl", "eval/summary.json",
                "eval/report.html"):  # fmt: skip
        assert (work / rel).is_file(), rel
    assert len(list((work / "eval").glob("*.png"))) >= 4


def test_quickstart_from_mirror_then_serves_the_page(tmp_path: Path, mirror: str, mirror_dir: Path) -> None:
    work = tmp_path / "qs"
    port = _free_port()
    cmd = [sys.executable, "-m", "doodle_rnn", "quickstart", "--workdir", str(work), "--base-url", mirror,
           *CLASSES, *TINY, "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    lines: list[str] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "serving the drawing page" in line:
                break
        assert any("serving the drawing page" in x for x in lines), "".join(lines)
        # downloaded files are the mirror's first 60 lines
        got = (work / "data" / "simplified" / "cow.ndjson").read_bytes().splitlines()
        assert got == (mirror_dir / "simplified" / "cow.ndjson").read_bytes().splitlines()[:60]
        _outputs_exist(work)
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        page = httpx.get(f"{base}/", timeout=5)
        assert page.status_code == 200 and "<canvas" in page.text
        drawing = orjson.loads(got[0])["drawing"]
        r = httpx.post(f"{base}/api/predict", json={"strokes": drawing, "top_k": 3}, timeout=10)
        assert r.status_code == 200, r.text
        classes = httpx.get(f"{base}/api/classes", timeout=5).json()
        assert sorted(classes["classes"] if isinstance(classes, dict) else classes) == [
            "cow",
            "snake",
            "spider",
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_quickstart_on_bundled_data_offline_skips_complete_steps(tmp_path: Path) -> None:
    """No network, no ../shared: the bundled real drawings are the default data."""
    work = tmp_path / "qs"
    cmd = [sys.executable, "-m", "doodle_rnn", "quickstart", "--workdir", str(work), *CLASSES, *TINY,
           "--no-serve"]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr + first.stdout
    assert "bundled real drawings" in first.stdout
    _outputs_exist(work)
    manifest = json.loads((work / "cache" / "manifest.json").read_text())
    assert manifest["classes"] == ["cow", "snake", "spider"] and manifest["encoding"] == "stroke3"
    assert manifest["split_counts"]["train"] > 100  # 60 a class, ~80% in train
    summary = json.loads((work / "eval" / "summary.json").read_text())
    # every test-split drawing of the cache was evaluated, and the printed figure is the summary's
    assert summary["n_drawings"] == manifest["split_counts"]["test"] > 0
    assert f"test top-1 {summary['metrics']['top1']:.4f}" in first.stdout
    best_mtime = (work / "run" / "best.pt").stat().st_mtime
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    for step in ("2/4 prepare", "3/4 train", "4/4 evaluate"):
        assert any(step in x and "skipped" in x for x in again.stdout.splitlines()), again.stdout
    assert (work / "run" / "best.pt").stat().st_mtime == best_mtime
    # a half-written step is redone, never reused: remove the eval stamp's output and run again
    (work / "eval" / "report.html").unlink()
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and (work / "eval" / "report.html").is_file()
    assert "4/4 evaluate: test split" in third.stdout


def test_quickstart_with_a_local_data_dir(tmp_path: Path) -> None:
    from doodle_rnn.quickstart import bundled_data_dir

    data = tmp_path / "mine"
    data.mkdir()
    for w in ("cow", "snake", "spider"):
        shutil.copy(bundled_data_dir() / f"{w}.ndjson.gz", data)
    cmd = [sys.executable, "-m", "doodle_rnn", "quickstart", "--workdir", str(tmp_path / "qs"), "--data-dir",
           str(data), *TINY, "--no-serve"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    assert f"using local files in {data}" in r.stdout
    manifest = json.loads((tmp_path / "qs" / "cache" / "manifest.json").read_text())
    assert manifest["classes"] == ["cow", "snake", "spider"]  # animals10 minus the classes without files


def test_quickstart_classes_outside_the_bundle_need_download(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "doodle_rnn", "quickstart", "--workdir", str(tmp_path),
                        "--classes", "cat", "cow", "--no-serve"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "cat" in r.stderr and "--download" in r.stderr
    assert not (tmp_path / "cache").exists()


def test_quickstart_unknown_class_is_a_clear_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "doodle_rnn", "quickstart", "--workdir", str(tmp_path),
                        "--classes", "elefant", "--no-serve"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "elephant" in r.stderr
