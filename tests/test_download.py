"""`doodle download` against a real local HTTP mirror of the shared Quick, Draw! sample.

The mirror is a ThreadingHTTPServer on 127.0.0.1 with a small handler that speaks Range/206/416
and can misbehave on demand (drop the connection mid-body, answer 503, ignore Range), so the
downloader's resume and retry paths run over real sockets.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from doodle_rnn.categories import UnknownClassError
from doodle_rnn.data.sources import class_url, download_classes, meta_path, output_path, part_path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw"
FAST = {"progress": False, "retry_delay": 0.01, "timeout": 10.0, "log": lambda msg: None}


@dataclass
class Mirror:
    """Test-side control of the server: what it saw, and how it should misbehave next."""

    root: Path
    url: str = ""
    seen: list[tuple[str, str | None]] = field(default_factory=list)  # (raw request path, Range)
    drop_after: dict[str, tuple[int, int]] = field(default_factory=dict)  # word -> (bytes, times)
    fail_503: dict[str, int] = field(default_factory=dict)  # word -> how many 503 answers
    ignore_range: bool = False
    stall: dict[str, int] = field(default_factory=dict)  # word -> bytes sent before going silent (once)
    delay: float = 0.0  # seconds each answer waits before its headers (to observe parallelism)
    active: int = 0
    max_active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requests_for(self, word: str) -> list[str | None]:
        """The Range header of every request for `word` (None when there was none)."""
        with self.lock:
            return [rng for path, rng in self.seen if _word(path) == word]


def _word(raw_path: str) -> str:
    return urllib.parse.unquote(raw_path.rsplit("/", 1)[-1]).removesuffix(".ndjson")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        m: Mirror = self.server.mirror  # type: ignore[attr-defined]
        rng = self.headers.get("Range")
        word = _word(self.path)
        with m.lock:
            m.seen.append((self.path, rng))
            fail = m.fail_503.get(word, 0)
            if fail:
                m.fail_503[word] = fail - 1
            stall = m.stall.pop(word, None)
            m.active += 1
            m.max_active = max(m.max_active, m.active)
        try:
            time.sleep(m.delay)
            self._answer(m, rng, word, fail, stall)
        finally:
            with m.lock:
                m.active -= 1

    def _answer(self, m: Mirror, rng: str | None, word: str, fail: int, stall: int | None) -> None:
        with m.lock:
            drop = m.drop_after.get(word)
            if drop and drop[1] > 0:
                m.drop_after[word] = (drop[0], drop[1] - 1)
            else:
                drop = None
        if fail:
            return self._send_status(503)
        file = (m.root / urllib.parse.unquote(self.path).lstrip("/")).resolve()
        if not file.is_relative_to(m.root) or not file.is_file():
            return self._send_status(404)
        data = file.read_bytes()
        start = 0
        if rng and not m.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                return self._send_status(416, {"Content-Range": f"bytes */{len(data)}"})
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        if stall is not None:  # send a little, then say nothing for longer than the client waits
            self.wfile.write(body[:stall])
            self.wfile.flush()
            time.sleep(1.5)
            self.close_connection = True
            return
        if drop is not None:  # promise the whole body, send part of it, hang up
            self.wfile.write(body[: drop[0]])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def _send_status(self, code: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    if not (DATA / "simplified").is_dir():
        pytest.skip(f"shared Quick, Draw! sample not found at {DATA}")
    m = Mirror(root=DATA.resolve())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.mirror = m  # type: ignore[attr-defined]
    m.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield m
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "doodle_rnn", "download", "--retry-delay", "0.01", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


def test_downloads_are_byte_identical_and_rerun_skips(mirror: Mirror, tmp_path: Path) -> None:
    words = ["cow", "hot dog", "The Eiffel Tower", "monkey"]
    report = download_classes(words, tmp_path, base_url=mirror.url, jobs=2, **FAST)

    assert report.ok and report.failed == []
    assert [r.word for r in report.results] == words
    for r in report.results:
        src = DATA / "simplified" / f"{r.word}.ndjson"
        assert r.path == tmp_path.resolve() / f"{r.word}.ndjson"  # official name, spaces kept
        assert r.path.read_bytes() == src.read_bytes()
        assert (r.status, r.bytes, r.lines) == ("downloaded", src.stat().st_size, _lines(src))
        assert not part_path(r.path).exists()
    assert report.results[3].lines == 1000  # monkey holds 1,000 drawings in the sample
    paths = {p for p, _ in mirror.seen}
    assert "/simplified/hot%20dog.ndjson" in paths and "/simplified/The%20Eiffel%20Tower.ndjson" in paths

    again = download_classes(words, tmp_path, base_url=mirror.url, **FAST)
    assert [r.status for r in again.results] == ["skipped"] * 4
    assert again.results[3].lines == 1000 and len(mirror.seen) == 4  # no new request at all


def test_cli_max_per_class_caps_lines_and_sidecar_decides_reuse(mirror: Mirror, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _cli(
        "--classes", "monkey", "hot dog", "--out", str(out), "--base-url", mirror.url, "--max-per-class", "5"
    )
    assert proc.returncode == 0, proc.stderr
    assert "capped at 5" in proc.stdout
    for word in ("monkey", "hot dog"):
        got = (out / f"{word}.ndjson").read_bytes()
        src = (DATA / "simplified" / f"{word}.ndjson").read_bytes()
        assert got.count(b"\n") == 5 and got.endswith(b"\n")
        assert got == b"".join(src.splitlines(keepends=True)[:5])
        meta = json.loads(meta_path(out / f"{word}.ndjson").read_text())
        assert meta["max_per_class"] == 5 and meta["lines"] == 5 and meta["bytes"] == len(got)
    n = len(mirror.seen)

    smaller = download_classes(["monkey"], out, base_url=mirror.url, max_per_class=3, **FAST)
    assert smaller.results[0].status == "skipped" and smaller.results[0].capped_at == 5
    assert len(mirror.seen) == n and _lines(out / "monkey.ndjson") == 5  # reused, not trimmed

    bigger = download_classes(["monkey"], out, base_url=mirror.url, max_per_class=40, **FAST)
    assert bigger.results[0].status == "downloaded" and _lines(out / "monkey.ndjson") == 40

    full = download_classes(["monkey"], out, base_url=mirror.url, **FAST)
    assert full.results[0].status == "downloaded" and full.results[0].capped_at is None
    assert (out / "monkey.ndjson").read_bytes() == (DATA / "simplified" / "monkey.ndjson").read_bytes()
    assert json.loads(meta_path(out / "monkey.ndjson").read_text())["max_per_class"] is None
    # A cap larger than the file just gives the whole file, recorded as uncapped.
    short = download_classes(["cow"], out, base_url=mirror.url, max_per_class=10_000, **FAST)
    assert short.results[0].lines == 25 and short.results[0].capped_at is None


def test_connection_dropped_mid_file_is_resumed_with_range(mirror: Mirror, tmp_path: Path) -> None:
    src = DATA / "simplified" / "monkey.ndjson"
    assert src.stat().st_size > 600_000
    mirror.drop_after["monkey"] = (200_000, 3)  # three hang-ups, each after 200,000 bytes
    report = download_classes(["monkey", "cow"], tmp_path, base_url=mirror.url, retries=1, **FAST)

    assert report.ok, report.summary()
    assert (tmp_path / "monkey.ndjson").read_bytes() == src.read_bytes()
    assert mirror.requests_for("monkey") == [None, "bytes=200000-", "bytes=400000-", "bytes=600000-"]
    assert report.results[0].attempts == 4 and report.results[0].lines == 1000
    assert (tmp_path / "cow.ndjson").read_bytes() == (DATA / "simplified" / "cow.ndjson").read_bytes()


def test_stalled_stream_times_out_and_resumes(mirror: Mirror, tmp_path: Path) -> None:
    mirror.stall["cow"] = 5000
    report = download_classes(["cow"], tmp_path, base_url=mirror.url, **{**FAST, "timeout": 0.4})
    assert report.ok and report.results[0].attempts == 2
    assert mirror.requests_for("cow") == [None, "bytes=5000-"]
    assert (tmp_path / "cow.ndjson").read_bytes() == (DATA / "simplified" / "cow.ndjson").read_bytes()


def test_jobs_download_files_in_parallel(mirror: Mirror, tmp_path: Path) -> None:
    mirror.delay = 0.5  # long enough that three requests overlap even on a busy machine
    words = ["cow", "shark", "snake", "spider"]
    assert download_classes(words, tmp_path, base_url=mirror.url, jobs=3, **FAST).ok
    assert mirror.max_active == 3
    mirror.max_active = 0
    assert download_classes(["bee", "bear"], tmp_path, base_url=mirror.url, jobs=1, **FAST).ok
    assert mirror.max_active == 1


def test_existing_part_file_is_resumed_with_range_request(mirror: Mirror, tmp_path: Path) -> None:
    src = (DATA / "simplified" / "cow.ndjson").read_bytes()
    part = part_path(tmp_path / "cow.ndjson")
    part.write_bytes(src[:1000])
    report = download_classes(["cow"], tmp_path, base_url=mirror.url, **FAST)

    assert mirror.requests_for("cow") == ["bytes=1000-"]
    assert report.results[0].status == "resumed" and report.results[0].lines == 25
    assert (tmp_path / "cow.ndjson").read_bytes() == src and not part.exists()


def test_complete_part_gets_416_and_is_finished(mirror: Mirror, tmp_path: Path) -> None:
    src = (DATA / "simplified" / "cow.ndjson").read_bytes()
    part_path(tmp_path / "cow.ndjson").write_bytes(src)  # crashed between last byte and rename
    report = download_classes(["cow"], tmp_path, base_url=mirror.url, **FAST)
    assert mirror.requests_for("cow") == [f"bytes={len(src)}-"]
    assert report.ok and (tmp_path / "cow.ndjson").read_bytes() == src


def test_capped_part_with_enough_lines_needs_no_request(mirror: Mirror, tmp_path: Path) -> None:
    src = (DATA / "simplified" / "monkey.ndjson").read_bytes()
    part_path(tmp_path / "monkey.ndjson").write_bytes(src[:50_000])  # ~60 lines and a half
    report = download_classes(["monkey"], tmp_path, base_url=mirror.url, max_per_class=7, **FAST)
    assert mirror.requests_for("monkey") == []
    assert (tmp_path / "monkey.ndjson").read_bytes() == b"".join(src.splitlines(keepends=True)[:7])
    assert report.results[0].capped_at == 7


def test_server_ignoring_range_restarts_from_zero(mirror: Mirror, tmp_path: Path) -> None:
    mirror.ignore_range = True
    part = part_path(tmp_path / "cow.ndjson")
    part.write_bytes(b"garbage that is not a prefix of the file\n")
    download_classes(["cow"], tmp_path, base_url=mirror.url, **FAST)
    assert mirror.requests_for("cow") == ["bytes=41-"]  # asked to resume, got a 200
    assert (tmp_path / "cow.ndjson").read_bytes() == (DATA / "simplified" / "cow.ndjson").read_bytes()


def test_5xx_is_retried_and_exhausted_retries_fail_only_that_class(mirror: Mirror, tmp_path: Path) -> None:
    mirror.fail_503.update({"cow": 2, "snake": 99})
    report = download_classes(["cow", "snake", "shark"], tmp_path, base_url=mirror.url, retries=2, **FAST)

    cow, snake, shark = report.results
    assert cow.ok and cow.attempts == 3
    assert not snake.ok and snake.attempts == 3 and "HTTP 503" in snake.error
    assert shark.ok and (tmp_path / "shark.ndjson").exists()
    assert not report.ok and report.failed == [snake]
    assert "FAILED 'snake': HTTP 503" in report.summary() and snake.url in report.summary()
    assert not (tmp_path / "snake.ndjson").exists()


def _closed_port() -> int:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("base", ["http://127.0.0.1:{port}/", "http://doodle-no-such-host.invalid/"])
def test_unreachable_server_fails_at_once_with_reason(tmp_path: Path, base: str) -> None:
    t0 = time.perf_counter()  # the default retry policy: 5 retries from 0.5 s, doubling (15.5 s of waits)
    out = tmp_path / "out"
    report = download_classes(["cow", "cat"], out, base_url=base.format(port=_closed_port()), progress=False,
                              log=lambda msg: None)  # fmt: skip
    assert time.perf_counter() - t0 < 3
    assert not report.ok and [r.attempts for r in report.results] in ([1, 0], [0, 1], [1, 1])  # no retries
    assert all("cannot reach" in r.error for r in report.results)
    assert report.unreachable and "--base-url" in report.summary() and not out.exists()


@pytest.mark.parametrize("base", ["http://127.0.0.1:{port}/", "http://doodle-no-such-host.invalid/"])
def test_cli_unreachable_host_fails_fast_says_what_to_do_and_leaves_no_folder(
    tmp_path: Path, base: str
) -> None:
    out = tmp_path / "data" / "simplified"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "doodle_rnn", "download", "--classes", "animals10", "--out", str(out),
         "--base-url", base.format(port=_closed_port())],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    took = time.perf_counter() - t0
    # No retries: the default policy would wait 15.5 s. The bound is loose because it includes starting
    # Python on a busy machine; the in-process test above times the download itself.
    assert proc.returncode == 1 and "retrying" not in proc.stderr and took < 12, (took, proc.stderr)
    assert "cannot reach" in proc.stderr and "0/10 classes OK" in proc.stderr
    assert "--base-url" in proc.stderr and "--data-dir" in proc.stderr
    assert "`doodle quickstart` without --download" in proc.stderr
    assert len(proc.stderr) < 2000  # one line for the ten classes, not ten
    assert not (tmp_path / "data").exists()  # no empty output folder left behind


def test_switching_format_in_the_same_folder_redownloads(mirror: Mirror, tmp_path: Path) -> None:
    download_classes(["hot dog"], tmp_path, base_url=mirror.url, fmt="simplified", **FAST)
    report = download_classes(["hot dog"], tmp_path, base_url=mirror.url, fmt="raw", **FAST)
    assert report.results[0].status == "downloaded"
    assert (tmp_path / "hot dog.ndjson").read_bytes() == (DATA / "raw" / "hot dog.ndjson").read_bytes()


def test_cli_404_is_reported_and_others_succeed(mirror: Mirror, tmp_path: Path) -> None:
    # The raw sample lacks the ten animal classes, so `cow` is a genuine 404 on this mirror.
    proc = _cli(
        "--format", "raw", "--classes", "cow", "hot dog", "--out", str(tmp_path), "--base-url", mirror.url
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED 'cow': HTTP 404" in proc.stderr
    assert class_url("cow", "raw", mirror.url) in proc.stderr
    assert "1/2 classes OK" in proc.stderr
    assert (tmp_path / "hot dog.ndjson").read_bytes() == (DATA / "raw" / "hot dog.ndjson").read_bytes()
    assert not (tmp_path / "cow.ndjson").exists() and mirror.requests_for("cow") == [None]  # no retry
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hot dog.ndjson.meta.json", "hot dog.ndjson"]


def test_cli_unknown_class_names_the_nearest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _cli("--classes", "cow", "hot dgo", "--out", str(out), "--base-url", "http://127.0.0.1:9/")
    assert proc.returncode == 2
    assert "error: unknown class 'hot dgo'" in proc.stderr and "hot dog" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()

    proc = _cli("--classes", "../../etc/passwd", "--out", str(out), "--base-url", "http://127.0.0.1:9/")
    assert proc.returncode == 2 and "unknown class" in proc.stderr and not out.exists()


def test_library_rejects_unknown_names_and_paths_outside_out(tmp_path: Path) -> None:
    with pytest.raises(UnknownClassError, match="Did you mean: cow"):
        download_classes(["cwo"], tmp_path, **FAST)
    assert output_path(tmp_path, "hot dog") == tmp_path.resolve() / "hot dog.ndjson"
    for bad in ("../evil", "a/b", "..", "", "a\\b", " cow"):
        with pytest.raises(ValueError):
            output_path(tmp_path, bad)
    with pytest.raises(ValueError, match="http"):
        download_classes(["cow"], tmp_path, base_url="ftp://mirror.test/full/", **FAST)
    assert class_url("The Eiffel Tower", "raw", "https://x.test/full/") == (
        "https://x.test/full/raw/The%20Eiffel%20Tower.ndjson"
    )


def test_cli_full_disk_stops_keeps_the_part_and_a_rerun_resumes(mirror: Mirror, tmp_path: Path) -> None:
    """A real limit from the operating system: files may hold at most 100 KB in the first run
    (RLIMIT_FSIZE: the write past it fails with EFBIG, as a full disk fails with ENOSPC)."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    out = tmp_path / "out"
    args = [sys.executable, "-m", "doodle_rnn", "download", "--retry-delay", "0.01", "--full", "--no-progress",
            "--classes", "monkey", "cow", "--jobs", "1", "--out", str(out), "--base-url", mirror.url]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, preexec_fn=limit)
    assert proc.returncode == 1 and f"{out}: no space left" in proc.stderr, proc.stderr
    assert "run the same command again to resume" in proc.stderr and "retrying" not in proc.stderr
    kept = part_path(out / "monkey.ndjson").stat().st_size
    assert 0 < kept <= 100_000 and not (out / "monkey.ndjson").exists()
    assert mirror.requests_for("cow") == []  # stopped: the next class was not started on a full disk
    again = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "resumed" in again.stdout and mirror.requests_for("monkey")[-1] == f"bytes={kept}-"
    src = DATA / "simplified"
    assert (out / "monkey.ndjson").read_bytes() == (src / "monkey.ndjson").read_bytes()
    assert (out / "cow.ndjson").read_bytes() == (src / "cow.ndjson").read_bytes()


def test_cli_full_and_max_per_class_exclude_each_other(tmp_path: Path) -> None:
    proc = _cli("--full", "--max-per-class", "5", "--out", str(tmp_path))
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
