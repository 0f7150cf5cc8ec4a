"""Download the official per-class Quick, Draw! ndjson files: streamed, resumable, retried, capped.

Why the standard library (`urllib.request`) and not httpx: httpx is only a test extra of this
package, and a downloader is the first thing a fresh install runs, so it must work with nothing but
the runtime dependencies. What we need from HTTP is small (GET, a `Range` header, status, two
headers, a socket timeout, reading in chunks), and `http.client` gives all of it.

How a file travels (why each step exists):
- Bytes go to `DIR/.<word>.ndjson.part` and are renamed to `DIR/<word>.ndjson` only once complete
  (byte count equals Content-Length, or the stream ended cleanly, or the line cap was reached), so a
  final file on disk is always whole: a crash or Ctrl-C can never leave a truncated file that looks
  done. Real files are up to 300 MB, so nothing is ever held in memory beyond one chunk.
- A `.part` left behind is resumed with `Range: bytes=<size>-`; a 206 answer is appended, a 200
  answer (a server that ignores ranges) starts over. A connection dropped mid-file is retried the
  same way, from what was received.
- The sidecar `DIR/.<word>.ndjson.meta.json` records what the final file is (format, bytes, lines,
  and the line cap if `max_per_class` cut it short), so a re-run can tell "complete, skip it" from
  "capped at 5 but 100 are wanted now, download again". A final file without a sidecar (copied in
  by hand) counts as a complete, uncapped file.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import queue
import re
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from doodle_rnn import __version__
from doodle_rnn.categories import resolve_classes
from doodle_rnn.errors import DoodleError

if TYPE_CHECKING:
    from tqdm import tqdm

DEFAULT_BASE_URL = "https://storage.googleapis.com/quickdraw_dataset/full/"
FORMATS = ("simplified", "raw")
CHUNK_SIZE = 1 << 18  # 256 KiB: small enough for smooth progress, large enough to be cheap
MAX_BACKOFF_S = 60.0
UNREACHABLE_HINT = (
    "check the network connection, or use --base-url URL for a mirror, --data-dir DIR for local files "
    "(doodle quickstart), or run `doodle quickstart` without --download to use the bundled drawings"
)
USER_AGENT = f"doodle-rnn/{__version__} (+https://github.com/googlecreativelab/quickdraw-dataset)"

Log = Callable[[str], None]

__all__ = [
    "DEFAULT_BASE_URL",
    "FORMATS",
    "ClassResult",
    "DownloadError",
    "DownloadReport",
    "class_url",
    "download_classes",
    "meta_path",
    "output_path",
    "part_path",
]


class DownloadError(DoodleError):
    """A download that cannot be made as asked (format, limits, base URL, a class name unfit for a file)."""


@dataclass
class ClassResult:
    """What happened to one class; `status` is downloaded, resumed, skipped or failed."""

    word: str
    url: str
    path: Path
    ok: bool
    status: str
    bytes: int = 0
    lines: int | None = None
    capped_at: int | None = None
    attempts: int = 0
    error: str | None = None


@dataclass
class DownloadReport:
    """Per-class outcomes of one `download_classes` call, in the order the classes were asked for."""

    results: list[ClassResult] = field(default_factory=list)
    unreachable: str | None = None  # "cannot reach HOST (reason)" when the server could not be reached at all

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[ClassResult]:
        return [r for r in self.results if not r.ok]

    def summary(self) -> str:
        """A few human lines: totals first, then every failure with its class, URL and reason."""
        done = [r for r in self.results if r.ok]
        counts = {s: sum(r.status == s for r in done) for s in ("downloaded", "resumed", "skipped")}
        total = sum(r.bytes for r in done)
        lines = [
            f"{len(done)}/{len(self.results)} classes OK ({counts['downloaded']} downloaded, "
            f"{counts['resumed']} resumed, {counts['skipped']} already complete), {_human(total)} on disk"
        ]
        gone = [r for r in self.failed if self.unreachable and r.error == self.unreachable]
        for r in self.failed:
            if r not in gone:
                lines.append(f"FAILED {r.word!r}: {r.error} (url: {r.url})")
        if gone:
            names = ", ".join(repr(r.word) for r in gone[:5]) + (
                f" and {len(gone) - 5} more" if len(gone) > 5 else ""
            )
            lines.append(f"FAILED {names}: {self.unreachable} (url: {gone[0].url}, ...)")
            lines.append(f"the server cannot be reached: {UNREACHABLE_HINT}")
        return "\n".join(lines)


class _Retryable(Exception):
    """A transient failure (connection, timeout, 5xx, short body): back off and resume."""


class _Fatal(Exception):
    """A failure that retrying cannot fix (404, 403, a malformed URL)."""


class _Unreachable(_Fatal):
    """The host cannot be resolved or refuses connections: retrying a DNS error only wastes minutes."""


class _DiskFull(_Fatal):
    """The output folder's disk is full: every other class stops too (the .part files stay, to resume)."""


def class_url(word: str, fmt: str = "simplified", base_url: str = DEFAULT_BASE_URL) -> str:
    """`<base>/<fmt>/<word>.ndjson` with the word URL-escaped (`The%20Eiffel%20Tower.ndjson`)."""
    return f"{base_url.rstrip('/')}/{fmt}/{urllib.parse.quote(word)}.ndjson"


def output_path(out_dir: Path, word: str) -> Path:
    """`out_dir/<word>.ndjson`, refusing any name that would land outside `out_dir`.

    Class names are already checked against the official list; this is the second lock, so that
    no future caller can turn a name like `../../etc/x` into a write outside the output folder.
    """
    root = Path(out_dir).resolve()
    if not word or word != word.strip() or any(c in word for c in "/\\\0") or word in (".", ".."):
        raise DownloadError(f"class name {word!r} cannot be used as a file name")
    final = (root / f"{word}.ndjson").resolve()
    if final.parent != root:
        raise DownloadError(f"class name {word!r} would write outside {root}")
    return final


def part_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.part")


def meta_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.meta.json")


def download_classes(
    classes: list[str],
    out_dir: Path,
    fmt: str = "simplified",
    base_url: str = DEFAULT_BASE_URL,
    max_per_class: int | None = None,
    jobs: int = 4,
    retries: int = 5,
    progress: bool = True,
    *,
    retry_delay: float = 0.5,
    timeout: float = 30.0,
    log: Log | None = None,
) -> DownloadReport:
    """Download `<word>.ndjson` for every class into `out_dir`; never raises for a failed class.

    `classes` may hold official names and the presets `animals10` / `all` (UnknownClassError, a
    ValueError, names the nearest official names for a typo). `retries` counts consecutive attempts
    that made no progress; the wait doubles from `retry_delay` seconds each time. `log` receives
    one-line notes (skips, retries, failures); by default they go to stderr above the progress bars.
    """
    if fmt not in FORMATS:
        raise DownloadError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if max_per_class is not None and max_per_class < 1:
        raise DownloadError(f"max_per_class must be at least 1, got {max_per_class}")
    if jobs < 1 or retries < 0 or retry_delay < 0:
        raise DownloadError("jobs must be >= 1, retries >= 0 and retry_delay >= 0")
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
        raise DownloadError(f"base URL must start with http:// or https://, got {base_url!r}")
    words = resolve_classes(list(classes))
    out_dir = Path(out_dir)
    paths = {w: output_path(out_dir, w) for w in words}  # check every name before touching the disk
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]  # removed again if left empty
    out_dir.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm  # a runtime dependency; imported here so importing this module stays light

    show = progress and sys.stderr.isatty()
    say: Log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    stop = threading.Event()
    settings = _Settings(fmt, max_per_class, retries, retry_delay, timeout, say, stop, {})
    slots: queue.SimpleQueue[int] = queue.SimpleQueue()  # one screen row per worker for its bar
    for i in range(min(jobs, len(words))):
        slots.put(i + 1)

    overall = tqdm(total=len(words), unit="file", desc=f"{fmt} files", position=0, disable=not show)

    def one(word: str) -> ClassResult:
        slot = slots.get()
        bar = tqdm(
            total=None, unit="B", unit_scale=True, unit_divisor=1024, desc=word[:24],
            position=slot, leave=False, disable=not show,
        )  # fmt: skip
        try:
            return _download_one(word, class_url(word, fmt, base_url), paths[word], bar, settings)
        finally:
            bar.close()
            slots.put(slot)
            overall.update(1)

    report = DownloadReport()
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="download")
    try:
        futures = [pool.submit(one, w) for w in words]
        report.results = [f.result() for f in futures]
    except BaseException:  # Ctrl-C: tell the workers to stop at their next chunk, keep their .part
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        overall.close()
        for p in created:  # a failed download leaves no empty folder behind
            try:
                p.rmdir()
            except OSError:
                break
    report.unreachable = settings.unreachable.get("error")
    return report


@dataclass(frozen=True)
class _Settings:
    """What every class of one `download_classes` call shares: format, cap, retry policy, log, stop."""

    fmt: str
    cap: int | None
    retries: int
    retry_delay: float
    timeout: float
    say: Log
    stop: threading.Event
    unreachable: dict  # {"error": "cannot reach HOST (...)"} once the host proved unreachable: others stop


def _download_one(word: str, url: str, final: Path, bar: tqdm, settings: _Settings) -> ClassResult:
    """Skip, resume or download one class, retrying transient failures; always returns a result."""
    fmt, cap, say = settings.fmt, settings.cap, settings.say
    result = ClassResult(word=word, url=url, path=final, ok=False, status="failed")
    existing = _reusable(final, fmt, cap)
    if existing is not None:
        result.ok, result.status = True, "skipped"
        result.bytes, result.lines, result.capped_at = existing
        say(f"{word}: already complete ({_describe(result)}), skipping")
        return result

    part = part_path(final)
    old_meta = _read_meta(final)
    if part.exists() and old_meta is not None and old_meta.get("format") != fmt:
        part.unlink()  # a half-download of the other format: not a prefix of this file
    _write_meta(final, {"format": fmt, "complete": False})  # any older final file is now stale

    try:
        return _fetch_with_retries(result, part, final, bar, settings)
    finally:
        if not result.ok and not part.exists() and not final.exists():
            meta_path(final).unlink(missing_ok=True)  # leave no trace of a class that never arrived


def _fetch_with_retries(
    result: ClassResult, part: Path, final: Path, bar: tqdm, settings: _Settings
) -> ClassResult:
    """Attempt until complete, a fatal answer, or `settings.retries` attempts in a row without progress."""
    word, url = result.word, result.url
    cap, say, stop = settings.cap, settings.say, settings.stop
    resumed_from = part.stat().st_size if part.exists() else 0
    failures = 0
    if "error" in settings.unreachable:  # another class found the host unreachable: do not ask again
        result.error = settings.unreachable["error"]
        return result
    if stop.is_set():
        result.error = "stopped (disk full or interrupted)"
        return result
    while True:
        result.attempts += 1
        before = part.stat().st_size if part.exists() else 0
        try:
            size, lines, capped = _attempt(url, part, cap, settings.timeout, bar, stop)
            break
        except _Fatal as exc:
            if not isinstance(exc, _Unreachable) or result.attempts == 1:
                if isinstance(exc, _Unreachable):  # the other classes need not ask again
                    settings.unreachable.setdefault("error", str(exc))
                if isinstance(exc, _DiskFull):
                    stop.set()
                result.error = str(exc)
                say(f"{word}: failed: {exc} ({url})")
                return result
            error: Exception = exc  # unreachable after it answered earlier in this call (a restart?): retry
        except _Retryable as exc:
            error = exc
        if stop.is_set():
            result.error = "interrupted"
            return result
        after = part.stat().st_size if part.exists() else 0
        failures = 0 if after > before else failures + 1  # progress earns a fresh set of retries
        if failures > settings.retries:
            result.error = f"{error} (gave up after {result.attempts} attempts)"
            say(f"{word}: failed: {result.error} ({url})")
            return result
        delay = min(settings.retry_delay * 2 ** max(failures - 1, 0), MAX_BACKOFF_S)
        say(f"{word}: {error}; retrying from byte {after} in {delay:.2g}s")
        stop.wait(delay)  # a sleep that Ctrl-C (via `stop`) cuts short

    meta = {
        "format": settings.fmt,
        "complete": True,
        "bytes": size,
        "lines": lines,
        "max_per_class": cap if capped else None,
    }
    if capped:
        _write_meta(final, meta)  # sidecar first: a capped file must never be seen without it
        os.replace(part, final)
    else:
        os.replace(part, final)
        _write_meta(final, meta)
    result.ok, result.bytes, result.lines = True, size, lines
    result.capped_at = cap if capped else None
    result.status = "resumed" if resumed_from else "downloaded"
    return result


def _attempt(
    url: str, part: Path, cap: int | None, timeout: float, bar: tqdm, stop: threading.Event
) -> tuple[int, int, bool]:
    """One GET (a Range GET when `part` has bytes); returns (bytes, lines, capped) when complete."""
    offset = part.stat().st_size if part.exists() else 0
    lines, last = _count_lines(part) if offset else (0, b"")
    if cap is not None and lines >= cap:  # an interrupted capped run already holds enough lines
        size = _truncate_after_lines(part, cap)
        return size, cap, True

    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # nothing left past our bytes: done, or a changed file
            total = _range_total(exc.headers.get("Content-Range"))
            if total == offset:
                return offset, lines + (last not in (b"", b"\n")), False
            part.unlink()
            raise _Retryable(f"server refused resuming at byte {offset} (HTTP 416); starting over") from exc
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from exc
        raise _Fatal(f"HTTP {exc.code} {exc.reason}") from exc
    except ValueError as exc:  # malformed URL / unknown scheme
        raise _Fatal(str(exc)) from exc
    except urllib.error.URLError as exc:
        if _unreachable(exc.reason):
            raise _Unreachable(f"cannot reach {_host(url)} ({_reason(exc.reason)})") from exc
        raise _Retryable(f"cannot connect: {exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, RemoteDisconnected
        if _unreachable(exc):
            raise _Unreachable(f"cannot reach {_host(url)} ({_reason(exc)})") from exc
        raise _Retryable(f"connection error: {exc!r}") from exc

    with resp:
        length = resp.headers.get("Content-Length")
        if resp.status == 206:
            start = _range_start(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Retryable(f"server answered a different range (from {start}, asked {offset})")
            total = _range_total(resp.headers.get("Content-Range"))
            if total is None and length is not None:
                total = offset + int(length)
            mode = "ab"
        elif resp.status == 200:  # no range support, or no part: (re)start from byte 0
            offset, lines, last, mode = 0, 0, b"", "wb"
            total = int(length) if length is not None else None
        else:
            raise _Fatal(f"unexpected HTTP {resp.status} {resp.reason}")

        size = offset
        bar.reset(total=total)
        bar.update(offset)
        with open(part, mode) as f:
            while True:
                if stop.is_set():
                    raise _Retryable("interrupted")
                try:
                    chunk = resp.read1(CHUNK_SIZE)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Retryable(f"connection lost after byte {size}: {exc!r}") from exc
                if not chunk:
                    break
                n = chunk.count(b"\n")
                if cap is not None and lines + n >= cap:
                    chunk = chunk[: _nth_newline(chunk, cap - lines) + 1]
                    _write(f, chunk, part, size)
                    bar.update(len(chunk))
                    return size + len(chunk), cap, True
                _write(f, chunk, part, size)
                size += len(chunk)
                lines += n
                last = chunk[-1:]
                bar.update(len(chunk))
    if total is not None and size != total:
        if size > total:
            part.unlink()
        raise _Retryable(f"connection dropped at byte {size} of {total}")
    return size, lines + (last not in (b"", b"\n")), False


def _write(f, chunk: bytes, part: Path, size: int) -> None:
    """Append one chunk; a full disk stops every class (each would fail the same way) and keeps the .part."""
    try:
        f.write(chunk)
        f.flush()
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        raise _DiskFull(
            f"{part.parent}: no space left ({exc.strerror}) after {_human(size)} of this file; the "
            f"partial file is kept: free some space and run the same command again to resume"
        ) from exc


_NO_ROUTE = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH}


def _unreachable(reason: object) -> bool:
    """A name that does not resolve, or a host that refuses or cannot be routed to: not worth retrying."""
    if isinstance(reason, socket.gaierror):
        return True
    return isinstance(reason, OSError) and reason.errno in _NO_ROUTE


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _reason(reason: object) -> str:
    if isinstance(reason, socket.gaierror):
        return f"the name does not resolve: {reason.strerror or reason}"
    if isinstance(reason, OSError) and reason.errno == errno.ECONNREFUSED:
        return "connection refused: nothing listens there"
    return str(getattr(reason, "strerror", None) or reason)


def _reusable(final: Path, fmt: str, cap: int | None) -> tuple[int, int | None, int | None] | None:
    """(bytes, lines, capped_at) when the final file already satisfies this request, else None.

    A complete uncapped file satisfies any request; a file capped at M satisfies a cap <= M only.
    """
    if not final.is_file():
        return None
    size = final.stat().st_size
    meta = _read_meta(final)
    if meta is None:
        return (size, None, None) if not meta_path(final).exists() else None  # unreadable sidecar
    if not meta.get("complete") or meta.get("bytes") != size or meta.get("format") != fmt:
        return None
    have = meta.get("max_per_class")
    if have is not None and (cap is None or cap > have):
        return None
    return size, meta.get("lines"), have


def _read_meta(final: Path) -> dict | None:
    try:
        meta = json.loads(meta_path(final).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _write_meta(final: Path, meta: dict) -> None:
    path = meta_path(final)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # atomic: a reader sees the old sidecar or the new one, never half


def _count_lines(path: Path) -> tuple[int, bytes]:
    """Newlines in `path` and its last byte, reading in chunks (a part can be hundreds of MB)."""
    lines, last = 0, b""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines, last


def _truncate_after_lines(path: Path, n: int) -> int:
    """Cut `path` right after its n-th newline; returns the new size."""
    seen, pos = 0, 0
    with open(path, "r+b") as f:
        while chunk := f.read(1 << 20):
            k = chunk.count(b"\n")
            if seen + k >= n:
                size = pos + _nth_newline(chunk, n - seen) + 1
                f.truncate(size)
                return size
            seen, pos = seen + k, pos + len(chunk)
    raise ValueError(f"{path} holds fewer than {n} lines")


def _nth_newline(chunk: bytes, n: int) -> int:
    pos = -1
    for _ in range(n):
        pos = chunk.index(b"\n", pos + 1)
    return pos


_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


def _range_start(header: str | None) -> int | None:
    m = _CONTENT_RANGE.match(header or "")
    return int(m.group(1)) if m and m.group(1) else None


def _range_total(header: str | None) -> int | None:
    m = _CONTENT_RANGE.match(header or "")
    return int(m.group(2)) if m and m.group(2) != "*" else None


def _describe(r: ClassResult) -> str:
    lines = f", {r.lines:,} lines" if r.lines is not None else ""
    cap = f", capped at {r.capped_at:,}" if r.capped_at is not None else ""
    return f"{_human(r.bytes)}{lines}{cap}"


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
