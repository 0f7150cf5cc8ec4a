"""Many drawings -> one memory-mapped store on disk (`doodle prepare`), and its loader.

Layout of a cache folder:
    steps.npy     int16 [total_steps, 3]  every drawing's (dx, dy, pen_lift) steps, back to back
    offsets.npy   int64 [n + 1]           drawing i is steps[offsets[i]:offsets[i + 1]]
    labels.npy    int16 [n]               index into manifest["classes"]
    splits.npy    uint8 [n]               0 train, 1 val, 2 test
    key_ids.npy   bytes [n]               the drawing's key_id
    manifest.json encoding, length rules, sources, counts per class and split, skips, version

Why this shape: one contiguous array opened with `mmap_mode="r"` lets a million drawings (or 50 million)
be trained on without loading them into RAM, and int16 deltas are exact and 2x smaller than float32.

Splits are stable: a drawing's split is a function of a seeded hash of its key_id only, so adding data
never moves a drawing between train and test; every class is split by the same fractions (stratified in
expectation; the manifest records the exact counts). Duplicate key_ids are kept once.

A crash or Ctrl-C never leaves a cache that loads: everything is written into a temporary sibling folder
and renamed into place at the very end, and the loader requires the manifest's `complete` flag.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from doodle_rnn import __version__
from doodle_rnn.data.encode import (
    DEFAULT_ENCODING,
    ENCODING_VERSION,
    LengthRules,
    check_encoding,
    encode_stream,
    steps_to_features,
)
from doodle_rnn.data.formats import SkipReport, class_of_file, iter_drawings, list_data_files
from doodle_rnn.errors import DoodleError

SPLITS = ("train", "val", "test")
CHUNK = 4096
FORMAT_VERSION = 1


class CacheError(DoodleError):
    pass


@dataclass
class PrepareConfig:
    """Settings of `doodle prepare`; its flags take their defaults from here (length rules: LengthRules)."""

    inputs: list[str]
    out: str
    classes: list[str] | None = None
    max_per_class: int | None = None
    recognized_only: bool = True
    val_frac: float = 0.1
    test_frac: float = 0.1
    encoding: str = DEFAULT_ENCODING
    min_len: int = LengthRules.min_len
    max_len: int = LengthRules.max_len
    seed: int = 42
    jobs: int = 1
    strict: bool = False
    progress: bool = True


@dataclass
class _Shard:
    path: str
    size: int
    n: int = 0
    read: int = 0
    too_short: int = 0
    not_recognized: int = 0
    other_class: int = 0
    over_cap: int = 0
    skips: SkipReport = field(default_factory=SkipReport)
    words: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # arrays; `steps` is dropped by the parent as soon as it is appended to the unordered steps file
    steps: np.ndarray | None = None
    lengths: np.ndarray | None = None
    word_ids: np.ndarray | None = None
    hashes: np.ndarray | None = None
    key_ids: np.ndarray | None = None
    steps_offset: int = 0  # byte offset of this shard's steps in the parent's unordered steps file


def key_hash(key_ids: Iterable[str], seed: int) -> np.ndarray:
    """Seeded 64-bit hash per key_id (blake2b: stable across runs, machines and Python versions)."""
    salt = seed.to_bytes(8, "little", signed=True)
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8, salt=salt).digest(), "little")
            for k in key_ids
        ),
        dtype=np.uint64,
    )


def split_of(hashes: np.ndarray, val_frac: float, test_frac: float) -> np.ndarray:
    u = (hashes >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    out = np.zeros(len(hashes), dtype=np.uint8)
    out[u < test_frac + val_frac] = 1
    out[u < test_frac] = 2
    return out


def _process_file(path: str, cfg: PrepareConfig) -> _Shard:
    """Worker: read one file, filter, encode in chunks. Memory: one file's steps.

    The shard travels back to the parent in memory (one pickle) rather than through files: on slow
    file systems creating a handful of files per input cost more than encoding a small class file.
    """
    t0 = time.perf_counter()
    rules = LengthRules(cfg.min_len, cfg.max_len)
    want = set(cfg.classes) if cfg.classes else None
    shard = _Shard(path=path, size=os.path.getsize(path))
    per_class: Counter = Counter()
    word_index: dict[str, int] = {}
    steps_parts, len_parts, word_parts, keys = [], [], [], []

    def wanted() -> Iterator:
        """The file's drawings that pass the filters, each counted where it is dropped."""
        for d in iter_drawings(path, strict=cfg.strict, report=shard.skips):
            shard.read += 1
            if want is not None and d.word not in want:
                shard.other_class += 1
                continue
            if not d.word:
                shard.skips.add(path, shard.read, "no class label")
                continue
            if cfg.recognized_only and not d.recognized:
                shard.not_recognized += 1
                continue
            if cfg.max_per_class is not None and per_class[d.word] >= cfg.max_per_class:
                shard.over_cap += 1
                continue
            per_class[d.word] += 1
            word_index.setdefault(d.word, len(word_index))
            yield d

    for steps, lengths, kept, too_short in encode_stream(wanted(), cfg.encoding, rules, CHUNK):
        shard.too_short += too_short
        steps_parts.append(steps)
        len_parts.append(lengths)
        word_parts.append(np.fromiter((word_index[d.word] for d in kept), np.int32, len(kept)))
        keys.extend(d.key_id for d in kept)
    shard.words = list(word_index)
    lengths = np.concatenate(len_parts) if len_parts else np.zeros(0, np.int64)
    shard.n = len(lengths)
    shard.steps = np.concatenate(steps_parts) if steps_parts else np.zeros((0, 3), np.int16)
    shard.lengths = lengths
    shard.word_ids = np.concatenate(word_parts) if word_parts else np.zeros(0, np.int32)
    shard.hashes = key_hash(keys, cfg.seed)
    shard.key_ids = np.array(keys, dtype="S") if keys else np.zeros(0, "S1")
    shard.seconds = time.perf_counter() - t0
    return shard


def prepare_cache(cfg: PrepareConfig) -> dict:
    """Build a cache from files or folders of any supported format; returns the manifest."""
    from tqdm import tqdm

    check_encoding(cfg.encoding)
    if not (0 <= cfg.val_frac < 1 and 0 <= cfg.test_frac < 1 and cfg.val_frac + cfg.test_frac < 1):
        raise CacheError("--val-frac and --test-frac must be >= 0 and sum to less than 1")
    files = list_data_files(cfg.inputs)
    if cfg.classes:
        want = set(cfg.classes)
        files = [f for f in files if class_of_file(f) is None or class_of_file(f) in want]
        if not files:
            raise CacheError(
                f"none of the input files holds the requested classes ({', '.join(cfg.classes)})"
            )
    out = Path(cfg.out)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        shards: list[_Shard] = [None] * len(files)  # type: ignore[list-item]
        bar = tqdm(total=len(files), unit="file", desc="prepare", disable=not cfg.progress)
        unordered = tmp / "steps.unordered"
        with open(unordered, "wb") as sink:

            def take(i: int, shard: _Shard) -> None:
                """Append the shard's steps to one file and keep only its small per-drawing arrays."""
                shard.steps_offset = sink.tell()
                sink.write(np.ascontiguousarray(shard.steps).tobytes())
                shard.steps = None
                shards[i] = shard
                bar.update(1)
                bar.set_postfix(drawings=sum(s.n for s in shards if s))

            if cfg.jobs > 1 and len(files) > 1:
                with ProcessPoolExecutor(max_workers=cfg.jobs) as pool:
                    futures = {pool.submit(_process_file, str(f), cfg): i for i, f in enumerate(files)}
                    for fut in as_completed(futures):
                        take(futures[fut], fut.result())
            else:
                for i, f in enumerate(files):
                    take(i, _process_file(str(f), cfg))
        bar.close()
        manifest = _merge(shards, tmp, cfg)
        manifest["seconds"] = round(time.perf_counter() - t0, 3)
        unordered.unlink()
        _write_json(tmp / "manifest.json", manifest)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _merge(shards: list[_Shard], tmp: Path, cfg: PrepareConfig) -> dict:
    """Global class list, de-duplication, per-class cap, splits; then one contiguous copy of the steps."""
    words = (
        sorted({w for s in shards for w in s.words})
        if not cfg.classes
        else [c for c in cfg.classes if any(c in s.words for s in shards)]
    )
    if not words:
        raise CacheError(_nothing_usable(shards, cfg))
    missing = [c for c in cfg.classes or [] if c not in words]
    if missing and len(words) < 2:
        raise CacheError(
            f"no drawings of the requested class(es) {', '.join(missing)} in the inputs; only "
            f"{', '.join(words)} is left, and a classifier needs at least two classes"
        )
    class_id = {w: i for i, w in enumerate(words)}
    lengths_a = np.concatenate([s.lengths for s in shards])
    labels_a = np.concatenate(
        [np.array([class_id[w] for w in s.words] or [0], dtype=np.int32)[s.word_ids] for s in shards]
    )
    hashes_a = np.concatenate([s.hashes for s in shards])
    keep = np.zeros(len(hashes_a), dtype=bool)
    keep[np.unique(hashes_a, return_index=True)[1]] = True  # first occurrence of every key_id
    duplicates = int(len(keep) - keep.sum())
    over_cap = 0
    if cfg.max_per_class is not None:
        idx = np.flatnonzero(keep)
        order = np.argsort(labels_a[idx], kind="stable")
        lab_sorted = labels_a[idx][order]
        starts = np.searchsorted(lab_sorted, lab_sorted, side="left")
        rank = np.empty(len(idx), dtype=np.int64)
        rank[order] = np.arange(len(idx)) - starts
        drop = idx[rank >= cfg.max_per_class]
        keep[drop] = False
        over_cap = len(drop)
    splits_all = split_of(hashes_a, cfg.val_frac, cfg.test_frac)

    sel = np.flatnonzero(keep)
    n = len(sel)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths_a[sel], out=offsets[1:])
    steps_out = np.lib.format.open_memmap(
        tmp / "steps.npy", mode="w+", dtype=np.int16, shape=(int(offsets[-1]), 3)
    )
    pos = 0
    shard_start = 0
    unordered = np.memmap(tmp / "steps.unordered", dtype=np.int16, mode="r").reshape(-1, 3) if n else None
    for s in shards:
        mask = keep[shard_start : shard_start + s.n]
        if mask.any():
            ln = lengths_a[shard_start : shard_start + s.n]
            first = s.steps_offset // 6  # 3 int16 per step
            steps = unordered[first : first + int(ln.sum())]
            if mask.all():
                chunk = steps
            else:
                starts = np.cumsum(ln) - ln
                take = np.repeat(starts[mask], ln[mask]) + _ranges(ln[mask])
                chunk = steps[take]
            steps_out[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        shard_start += s.n
    steps_out.flush()
    del steps_out, unordered
    key_arr = np.concatenate([s.key_ids for s in shards])[sel] if n else np.zeros(0, "S1")
    np.save(tmp / "offsets.npy", offsets)
    np.save(tmp / "labels.npy", labels_a[sel].astype(np.int16))
    np.save(tmp / "splits.npy", splits_all[sel])
    np.save(tmp / "key_ids.npy", key_arr)

    counts = {
        w: {sp: int(((labels_a[sel] == i) & (splits_all[sel] == k)).sum()) for k, sp in enumerate(SPLITS)}
        for i, w in enumerate(words)
    }
    skips = SkipReport()
    for s in shards:
        skips.merge(s.skips)
    return {
        "complete": True,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "encoding": cfg.encoding,
        "encoding_version": ENCODING_VERSION,
        "length_rules": {"min_len": cfg.min_len, "max_len": cfg.max_len},
        "classes": words,
        "missing_classes": missing,  # requested with --classes, but no usable drawing in the inputs
        "n_drawings": n,
        "n_steps": int(offsets[-1]),
        "split_counts": {sp: int((splits_all[sel] == k).sum()) for k, sp in enumerate(SPLITS)},
        "counts": counts,
        "split_rule": {
            "val_frac": cfg.val_frac,
            "test_frac": cfg.test_frac,
            "seed": cfg.seed,
            "hash": "blake2b-64(key_id)",
        },
        "filters": {"recognized_only": cfg.recognized_only, "max_per_class": cfg.max_per_class},
        "sources": [
            {"path": s.path, "bytes": s.size, "read": s.read, "encoded": s.n, "seconds": round(s.seconds, 3)}
            for s in shards
        ],
        "dropped": {
            "too_short": sum(s.too_short for s in shards),
            "not_recognized": sum(s.not_recognized for s in shards),
            "other_class": sum(s.other_class for s in shards),
            "over_max_per_class": sum(s.over_cap for s in shards) + over_cap,
            "duplicate_key_id": duplicates,
        },
        "skipped": skips.to_dict(),
    }


def _nothing_usable(shards: list[_Shard], cfg: PrepareConfig) -> str:
    """The error when no drawing survived: every skipped and dropped count, with first file:line positions."""
    skips = SkipReport()
    for s in shards:
        skips.merge(s.skips)
    read = sum(s.read for s in shards)
    lines = [f"no usable drawings in the inputs ({read} well-formed, {skips.total} bad record(s) skipped)"]
    lines += skips.summary_lines()
    dropped = {
        "too short (under --min-len steps)": sum(s.too_short for s in shards),
        "not recognised by the game (keep them with --all)": sum(s.not_recognized for s in shards),
        "of other classes than --classes": sum(s.other_class for s in shards),
    }
    lines += [f"dropped {k} drawing(s) {why}" for why, k in dropped.items() if k]
    if len(lines) == 1:
        lines.append("the inputs hold no drawings at all (empty files?)")
    return "\n".join(lines)


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """[0..l0-1, 0..l1-1, ...] without a Python loop."""
    total = int(lengths.sum())
    starts = np.cumsum(lengths) - lengths
    return np.arange(total) - np.repeat(starts, lengths)


def gather_steps(
    steps: np.ndarray, offsets: np.ndarray, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated steps of drawings `indices` (drawing i is steps[offsets[i]:offsets[i + 1]]) and their
    lengths, gathered without a Python loop; `steps` may be memory-mapped."""
    indices = np.asarray(indices)
    starts = offsets[indices]
    lens = offsets[indices + 1] - starts
    take = np.repeat(starts, lens) + _ranges(lens)
    return np.asarray(steps[take]), lens


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _lengths(offsets: np.ndarray, max_len: int, where: Path, chunk: int = 1 << 22) -> np.ndarray:
    """Steps per drawing as int16 (int32 past 32,767 steps), computed in chunks from memory-mapped
    offsets: 2 bytes a drawing held, never a full int64 copy (400 MB at 50 million drawings)."""
    n = len(offsets) - 1
    out = np.empty(n, dtype=np.int16 if max_len < 2**15 else np.int32)
    for s in range(0, n, chunk):
        d = np.diff(offsets[s : s + chunk + 1])
        if len(d) and not 0 <= d.min() <= d.max() <= np.iinfo(out.dtype).max:
            raise CacheError(
                f"{where / 'offsets.npy'} does not fit the manifest's length rules; prepare it again"
            )
        out[s : s + chunk] = d
    return out


def _rows_equal(values: np.ndarray, k: int, dtype, chunk: int = 1 << 22) -> np.ndarray:
    """Rows where `values == k`, ascending, found chunk by chunk straight into one `dtype` array: no
    int64 copy of the whole split on the way (a 40 M-row split: 160 MB at the peak, not 480 MB)."""
    starts = range(0, len(values), chunk)
    counts = [int(np.count_nonzero(values[s : s + chunk] == k)) for s in starts]
    out, pos = np.empty(sum(counts), dtype=dtype), 0
    for s, c in zip(starts, counts, strict=True):
        out[pos : pos + c] = np.flatnonzero(values[s : s + chunk] == k) + s
        pos += c
    return out


class DoodleCache:
    """A prepared cache, memory-mapped: opening it costs little, whatever its size.

    The steps, offsets and key_ids stay on disk, mapped (the OS pages in what is read); what is held
    is a few bytes a drawing: its length (int16), label (int16) and split (uint8). Drawings are read
    with `preadv` (`batch_steps`), not through the mapping: on Linux 6.x a read through a mapping maps
    the page-cache folio around it into the process (9,600 random drawings left 520 MB of file pages
    resident on a 10 M-drawing cache, 5.3 GB on a freshly written 50 M one, and were slower there;
    docs/benchmarks.md), while `preadv` copies just the drawing's bytes.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not mf.is_file():
            raise CacheError(
                f"{self.path}: not a prepared cache (no manifest.json); run `doodle prepare` first"
            )
        try:
            self.manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as exc:
            raise CacheError(f"{mf}: corrupt manifest ({exc}); prepare the cache again") from exc
        if not self.manifest.get("complete"):
            raise CacheError(f"{self.path}: incomplete cache; prepare it again")
        try:
            self.steps = np.load(self.path / "steps.npy", mmap_mode="r")
            self.offsets = np.load(self.path / "offsets.npy", mmap_mode="r")
            self.labels = np.load(self.path / "labels.npy")
            self.splits = np.load(self.path / "splits.npy")
            self.key_ids = np.load(self.path / "key_ids.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise CacheError(f"{self.path}: cannot read cache arrays ({exc}); prepare it again") from exc
        self.classes: list[str] = list(self.manifest["classes"])
        self.encoding: str = self.manifest["encoding"]
        self.length_rules = LengthRules(**self.manifest["length_rules"])
        self.lengths = _lengths(self.offsets, self.length_rules.max_len, self.path)
        self._file = None  # steps.npy opened for pread on first use

    def __len__(self) -> int:
        return len(self.labels)

    def split_indices(self, split: str) -> np.ndarray:
        """Rows of a split in cache order, as int32 where the cache has under 2**31 rows (4 bytes a row)."""
        dtype = np.int32 if len(self) < 2**31 - 1 else np.int64
        if split == "all":
            return np.arange(len(self), dtype=dtype)
        if split not in SPLITS:
            raise CacheError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)} or all")
        return _rows_equal(self.splits, SPLITS.index(split), dtype)

    def steps_of(self, i: int) -> np.ndarray:
        return self.batch_steps(np.array([i]))[0]

    def features_of(self, i: int) -> np.ndarray:
        return steps_to_features(self.steps_of(i))

    def batch_steps(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated steps of drawings `indices` and their lengths, each drawing read straight into
        the output array (see the class docstring for why not through the mapping)."""
        if not hasattr(os, "preadv"):  # Windows: through the mapping
            return gather_steps(self.steps, self.offsets, indices)
        indices = np.asarray(indices, dtype=np.int64)
        starts = np.asarray(self.offsets[indices])
        lens = np.asarray(self.offsets[indices + 1]) - starts
        out = np.empty((int(lens.sum()), 3), dtype=self.steps.dtype)
        if len(out):
            self._read_into(out, starts, lens)
        return out, lens

    def _read_into(self, out: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> None:
        if self._file is None:  # opened on first use, closed with the cache
            self._file = open(self.path / "steps.npy", "rb", buffering=0)  # noqa: SIM115
        fd, row, base = self._file.fileno(), out.strides[0], self.steps.offset
        view, pos = memoryview(out).cast("B"), 0
        for s, n in zip(starts.tolist(), (lens * row).tolist(), strict=True):
            if os.preadv(fd, [view[pos : pos + n]], base + s * row) != n:
                raise CacheError(
                    f"{self.path / 'steps.npy'} is shorter than its offsets say; prepare the cache again"
                )
            pos += n
