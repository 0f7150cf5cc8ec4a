"""Read every supported drawing format, streaming, into `Drawing` objects.

Supported (detected from the file name, and for CSV from the header):
- official Quick, Draw! ndjson, simplified (`[[xs],[ys]]` strokes) or raw (`[[xs],[ys],[ts]]`),
  optionally gzip-compressed (`.ndjson.gz`);
- sketch-rnn `.npz` (object arrays of stroke-3 `[dx, dy, pen_state]` under `train`/`valid`/`test`;
  the class is the file name), read by `data/npz.py`, whose restricted unpickler runs nothing in the file;
- the Kaggle "Quick, Draw! Doodle Recognition" CSV (`countrycode,drawing,key_id,recognized,timestamp,word`);
- the reference project's CSV (`word,drawing,recognized`; no key_id, so one is derived from a hash of
  the drawing, which keeps splits stable and de-duplicates repeated rows).

Bad input never crashes a run and never passes silently: every skipped record is counted in a
`SkipReport` by file and reason, with the first few `file:line` positions; with `strict=True` the first
one raises `DataFormatError` naming file, line and reason.

Lines are parsed with orjson (several times faster than `json`; the ndjson parse dominates the cost of
`doodle prepare`), and validated with cheap structural checks so the vectorised encoder can trust them.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from doodle_rnn.data.drawing import Drawing
from doodle_rnn.errors import DoodleError

NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")
SUPPORTED = "official .ndjson (simplified or raw, optionally .gz), sketch-rnn .npz, Kaggle or reference .csv"

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a drawing's JSON easily exceeds csv's 128 KB default


class DataFormatError(DoodleError):
    """A file that cannot be read at all, or (with strict=True) the first bad record."""


@dataclass
class SkipReport:
    """Counts of skipped records per file and reason, with the first few positions for the user."""

    max_examples: int = 5
    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, path: str, line: int, reason: str) -> None:
        self.counts[path][reason] += 1
        if len(self.examples[path]) < self.max_examples:
            self.examples[path].append(f"{path}:{line}: {reason}")

    def merge(self, other: SkipReport) -> None:
        for path, c in other.counts.items():
            self.counts[path].update(c)
            room = self.max_examples - len(self.examples[path])
            self.examples[path].extend(other.examples.get(path, [])[: max(room, 0)])

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def by_reason(self) -> dict[str, int]:
        out: Counter = Counter()
        for c in self.counts.values():
            out.update(c)
        return dict(out)

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "by_reason": self.by_reason(),
            "files": {
                p: {"counts": dict(c), "examples": self.examples.get(p, [])} for p, c in self.counts.items()
            },
        }

    def summary_lines(self) -> list[str]:
        lines = []
        for path, c in self.counts.items():
            n = sum(c.values())
            reasons = ", ".join(f"{r}: {k}" for r, k in c.most_common())
            lines.append(f"skipped {n} record(s) in {path} ({reasons})")
            lines.extend(f"  e.g. {e}" for e in self.examples.get(path, []))
        return lines


def _bad(report: SkipReport | None, strict: bool, path: str, line: int, reason: str) -> None:
    if strict:
        raise DataFormatError(
            f"{path}:{line}: {reason} (run without --strict to skip and count such records)"
        )
    if report is not None:
        report.add(path, line, reason)


def validate_strokes(strokes: object) -> str | None:
    """Return why `strokes` is unusable, or None when it is a well-formed list of strokes.

    A stroke is `[xs, ys]` or `[xs, ys, ts]` of equal, non-zero lengths holding finite numbers.
    Summing is the cheapest complete numeric check in pure Python (a str or None raises TypeError,
    a NaN or infinity makes the sum non-finite).
    """
    if not isinstance(strokes, list):
        return "drawing is not a list of strokes"
    if not strokes:
        return "empty drawing"
    for stroke in strokes:
        if not isinstance(stroke, list) or len(stroke) not in (2, 3):
            return "stroke is not [xs, ys] or [xs, ys, ts]"
        xs, ys = stroke[0], stroke[1]
        if not isinstance(xs, list) or not isinstance(ys, list):
            return "stroke coordinates are not lists"
        n = len(xs)
        if n != len(ys) or (len(stroke) == 3 and (not isinstance(stroke[2], list) or len(stroke[2]) != n)):
            return "x and y (and t) lengths differ"
        if n == 0:
            return "empty stroke"
        try:
            total = sum(xs) + sum(ys) + (sum(stroke[2]) if len(stroke) == 3 else 0)
        except TypeError:
            return "non-numeric coordinates"
        if not math.isfinite(total):
            return "non-finite coordinates"
    return None


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def _open_binary_lines(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _record_to_drawing(rec: dict, strokes: object, word_default: str = "") -> Drawing:
    key = rec.get("key_id")
    return Drawing(
        word=str(rec.get("word", word_default) or word_default),
        key_id=str(key) if key not in (None, "") else "",
        strokes=strokes,  # type: ignore[arg-type]
        countrycode=str(rec.get("countrycode", "") or ""),
        recognized=_as_bool(rec.get("recognized", True)),
        timestamp=str(rec.get("timestamp", "") or ""),
    )


def _as_bool(v: object) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


def content_key(strokes_json: bytes | str) -> str:
    """A stable key_id for formats without one: a hash of the drawing itself."""
    if isinstance(strokes_json, str):
        strokes_json = strokes_json.encode()
    return "h" + hashlib.blake2b(strokes_json, digest_size=8).hexdigest()


def iter_ndjson(path: Path, strict: bool = False, report: SkipReport | None = None) -> Iterator[Drawing]:
    with _open_binary_lines(path) as fh:
        yield from iter_ndjson_lines(fh, str(path), path.name.split(".")[0], strict, report)


def iter_ndjson_lines(
    lines: Iterable[bytes],
    name: str = "<stdin>",
    word_default: str = "",
    strict: bool = False,
    report: SkipReport | None = None,
) -> Iterator[Drawing]:
    """The drawings of ndjson lines from any binary stream (a file, or `sys.stdin.buffer` named `<stdin>`)."""
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            _bad(report, strict, name, lineno, "malformed JSON line")
            continue
        if not isinstance(rec, dict) or "drawing" not in rec:
            _bad(report, strict, name, lineno, "no 'drawing' field")
            continue
        strokes = rec["drawing"]
        d = _checked_drawing(rec, strokes, word_default, (report, strict, name, lineno))
        if d is not None:
            yield d


def _checked_drawing(rec, strokes, word_default: str, where: tuple, key_text: str | bytes | None = None):
    """A record's Drawing, or None (counted, or raised under strict) when its strokes break a rule.

    where: (report, strict, file name, line number); a record without a key_id gets one from its
    strokes' text (`key_text`, else the strokes re-serialised), so identical drawings share it."""
    why = validate_strokes(strokes)
    if why:
        _bad(*where, why)
        return None
    d = _record_to_drawing(rec, strokes, word_default)
    if not d.key_id:
        d.key_id = content_key(key_text if key_text is not None else orjson.dumps(strokes))
    return d


def _stroke3_to_strokes(arr: np.ndarray) -> list[list[list[float]]]:
    """sketch-rnn stroke-3 (dx, dy, pen_state; pen 1 = lift after this point) -> absolute strokes."""
    a = np.asarray(arr, dtype=np.float64)
    xy = np.cumsum(a[:, :2], axis=0)
    ends = np.flatnonzero(a[:, 2] > 0.5) + 1
    pieces = np.split(xy, ends)
    return [[p[:, 0].tolist(), p[:, 1].tolist()] for p in pieces if len(p)]


def iter_npz(path: Path, strict: bool = False, report: SkipReport | None = None) -> Iterator[Drawing]:
    """sketch-rnn object arrays, rebuilt by `data/npz.py`: no pickle in the file runs (see there)."""
    from doodle_rnn.data.npz import read_npz  # npz.py raises this module's DataFormatError

    name = str(path)
    word = path.name[: -len(".npz")]
    for split, items in read_npz(path, ("train", "valid", "test")).items():
        for i, item in enumerate(items):
            pos = f"{split}[{i}]"
            try:
                arr = np.asarray(item)
                ok = arr.dtype.kind in "iuf" and arr.ndim == 2 and arr.shape[1] == 3 and len(arr) > 0
                ok = ok and bool(np.isfinite(arr).all())
            except (TypeError, ValueError):
                ok = False
            if not ok:
                _bad(report, strict, name, i + 1, f"{pos}: not a finite (n, 3) stroke-3 array of numbers")
                continue
            yield Drawing(word=word, key_id=f"{word}/{split}/{i}", strokes=_stroke3_to_strokes(arr),
                          extra={"sketchrnn_split": split})  # fmt: skip


def iter_csv(path: Path, strict: bool = False, report: SkipReport | None = None) -> Iterator[Drawing]:
    """Kaggle CSV (with key_id) or the reference project's CSV (word, drawing, recognized)."""
    name = str(path)
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        if "drawing" not in cols:
            raise DataFormatError(
                f"{path}: CSV without a 'drawing' column (got {sorted(cols)}); expected the Kaggle "
                "(countrycode,drawing,key_id,recognized,timestamp,word) or reference (word,drawing,recognized) layout"
            )
        word_default = path.name.split(".")[0] if "word" not in cols else ""
        for row in reader:
            lineno = reader.line_num
            text = row.get("drawing") or ""
            try:
                strokes = orjson.loads(text)
            except orjson.JSONDecodeError:
                _bad(report, strict, name, lineno, "malformed drawing JSON")
                continue
            d = _checked_drawing(row, strokes, word_default, (report, strict, name, lineno), key_text=text)
            if d is not None:
                yield d


def detect_format(path: Path) -> str:
    n = path.name.lower()
    if n.endswith(NDJSON_SUFFIXES):
        return "ndjson"
    if n.endswith(".npz"):
        return "npz"
    if n.endswith((".csv", ".csv.gz")):
        return "csv"
    raise DataFormatError(f"{path}: unknown file type; supported: {SUPPORTED}")


READERS = {"ndjson": iter_ndjson, "npz": iter_npz, "csv": iter_csv}


def iter_drawings(
    path: str | Path, strict: bool = False, report: SkipReport | None = None
) -> Iterator[Drawing]:
    """Stream the drawings of one file of any supported format."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    return READERS[detect_format(path)](path, strict=strict, report=report)


def list_data_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand directories into their supported files (sorted, so runs are reproducible)."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            found = [f for f in found if _supported(f)]
            if not found:
                raise DataFormatError(f"{p}: no supported data files in this folder ({SUPPORTED})")
            files.extend(found)
        elif p.is_file():
            detect_format(p)
            files.append(p)
        else:
            raise DataFormatError(f"{p}: no such file or folder")
    return files


def _supported(p: Path) -> bool:
    try:
        detect_format(p)
    except DataFormatError:
        return False
    return True


def class_of_file(path: Path) -> str | None:
    """The class a per-class file holds (official ndjson and sketch-rnn npz are named after it)."""
    fmt = detect_format(path)
    return path.name.split(".")[0] if fmt in ("ndjson", "npz") else None
