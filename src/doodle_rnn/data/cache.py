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

A crash or Ctrl-C never leaves a cache that loads: everything is written into the hidden sibling folder
`.NAME.tmp` and renamed into place at the very end, and the loader requires the manifest's `complete`
flag. A rerun of an interrupted prepare resumes there from the input files it had finished
(data/workdir.py). Memory stays bounded whatever the input size: each input file is encoded into
spill files (data/shards.py) and merged by streaming passes over them (data/merge.py).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from doodle_rnn import __version__
from doodle_rnn.data.encode import (
    DEFAULT_ENCODING,
    ENCODING_VERSION,
    LengthRules,
    check_encoding,
    steps_to_features,
)
from doodle_rnn.data.formats import SkipReport, class_of_file, list_data_files
from doodle_rnn.data.merge import BitSet, Plan, apply_caps, find_duplicates, write_arrays
from doodle_rnn.data.shards import ShardInfo, encode_file, file_identity
from doodle_rnn.data.splits import key_hash, split_of  # noqa: F401 (part of this module's API)
from doodle_rnn.data.workdir import (
    WorkFolder,
    check_space,
    estimate_cache_bytes,
    human_bytes,
    is_disk_full,
    shard_stem,
)
from doodle_rnn.errors import DoodleError

SPLITS = ("train", "val", "test")
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


def prepare_cache(cfg: PrepareConfig) -> dict:
    """Build a cache from files or folders of any supported format; returns the manifest.

    Memory stays bounded whatever the input size (see data/shards.py and data/merge.py); a rerun after
    a kill resumes from the finished input files (data/workdir.py)."""
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
    work = WorkFolder(Path(cfg.out), _job(cfg, files))
    work.open()
    t0 = time.perf_counter()
    try:
        done = work.finished_shards(files)
        todo = [f for i, f in enumerate(files) if i not in done]
        check_space(work.path, estimate_cache_bytes(todo), f"the cache of {len(files)} input file(s)")
        infos = _encode_all(files, done, work, cfg)
        t_encoded = time.perf_counter()
        manifest = _merge(infos, work, cfg)
        manifest["seconds"] = round(time.perf_counter() - t0, 3)
        manifest["phases"] = {
            "encode_s": round(t_encoded - t0, 3),
            "merge_s": round(time.perf_counter() - t_encoded, 3),
        }
        manifest["resumed_files"] = len(done)
        manifest["notes"] = work.notes
        _write_json(work.path / "manifest.json", manifest)
        work.commit()
        return manifest
    except KeyboardInterrupt:
        work.release()  # finished shards stay for the rerun, which resumes from them
        raise
    except BaseException as exc:
        work.discard()
        if is_disk_full(exc):
            raise CacheError(
                f"{work.path}: ran out of space while preparing the cache ({exc.strerror}); it needs "
                f"about {human_bytes(estimate_cache_bytes(files))}; free some space or write --out on "
                "another disk (the partial work was removed)"
            ) from None
        raise


def _job(cfg: PrepareConfig, files: list[Path]) -> dict:
    """What a work folder's shards depend on: a rerun with a different job starts over."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "jobs", "progress", "inputs")}
    return {"settings": settings, "files": [[str(f), *file_identity(f)] for f in files],
            "format_version": FORMAT_VERSION, "package_version": __version__}  # fmt: skip


def _encode_all(
    files: list[Path], done: dict[int, ShardInfo], work: WorkFolder, cfg: PrepareConfig
) -> list[ShardInfo]:
    """Every input file's shard, in input order: finished ones reused, the others encoded (in parallel)."""
    from tqdm import tqdm

    infos: list[ShardInfo | None] = [done.get(i) for i in range(len(files))]
    todo = [i for i in range(len(files)) if i not in done]
    bar = tqdm(total=len(files), initial=len(done), unit="file", desc="prepare", disable=not cfg.progress)

    def take(i: int, info: ShardInfo) -> None:
        infos[i] = info
        bar.update(1)
        bar.set_postfix(drawings=sum(s.n for s in infos if s))

    args = [(str(files[i]), shard_stem(i), str(work.shards), cfg) for i in todo]
    if cfg.jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=cfg.jobs) as pool:
            futures = {pool.submit(encode_file, *a): i for i, a in zip(todo, args, strict=True)}
            for fut in as_completed(futures):
                take(futures[fut], fut.result())
    else:
        for i, a in zip(todo, args, strict=True):
            take(i, encode_file(*a))
    bar.close()
    return infos  # type: ignore[return-value]


def _merge(infos: list[ShardInfo], work: WorkFolder, cfg: PrepareConfig) -> dict:
    """Global class list, then de-duplication, per-class cap, splits and the arrays (data/merge.py)."""
    present = {w for s in infos for w in s.words}
    words = sorted(present) if not cfg.classes else [c for c in cfg.classes if c in present]
    if not words:
        raise CacheError(_nothing_usable(infos))
    missing = [c for c in cfg.classes or [] if c not in words]
    if missing and len(words) < 2:
        raise CacheError(
            f"no drawings of the requested class(es) {', '.join(missing)} in the inputs; only "
            f"{', '.join(words)} is left, and a classifier needs at least two classes"
        )
    class_id = {w: i for i, w in enumerate(words)}
    maps = [np.array([class_id[w] for w in s.words] or [0], dtype=np.int64) for s in infos]
    n_total = sum(s.n for s in infos)
    plan = Plan(n_total=n_total, drop=BitSet(n_total), class_maps=maps)
    find_duplicates(infos, work.shards, plan)
    apply_caps(infos, work.shards, plan, len(words), cfg.max_per_class)
    largest = max(s.n_steps * 6 for s in infos)
    check_space(work.path, plan.n_steps * 6 + plan.n * (11 + plan.key_width) + largest, "the cache's arrays")
    write_arrays(infos, work.shards, work.path, plan, (cfg.val_frac, cfg.test_frac))
    counts = plan.counts.reshape(-1, 3)
    return _manifest(infos, cfg, words, missing, plan, counts)


def _manifest(infos: list[ShardInfo], cfg: PrepareConfig, words, missing, plan: Plan, counts) -> dict:
    skips = SkipReport()
    for s in infos:
        skips.merge(s.skip_report())
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
        "n_drawings": plan.n,
        "n_steps": plan.n_steps,
        "split_counts": {sp: int(counts[:, k].sum()) for k, sp in enumerate(SPLITS)},
        "counts": {w: {sp: int(counts[i, k]) for k, sp in enumerate(SPLITS)} for i, w in enumerate(words)},
        "split_rule": {
            "val_frac": cfg.val_frac,
            "test_frac": cfg.test_frac,
            "seed": cfg.seed,
            "hash": "blake2b-64(key_id)",
        },
        "filters": {"recognized_only": cfg.recognized_only, "max_per_class": cfg.max_per_class},
        "sources": [
            {"path": s.path, "bytes": s.size, "read": s.read, "encoded": s.n, "seconds": round(s.seconds, 3)}
            for s in infos
        ],
        "dropped": {
            "too_short": sum(s.too_short for s in infos),
            "not_recognized": sum(s.not_recognized for s in infos),
            "other_class": sum(s.other_class for s in infos),
            "over_max_per_class": sum(s.over_cap for s in infos) + plan.over_cap,
            "duplicate_key_id": plan.duplicates,
        },
        "skipped": skips.to_dict(),
    }


def _nothing_usable(infos: list[ShardInfo]) -> str:
    """The error when no drawing survived: every skipped and dropped count, with first file:line positions."""
    skips = SkipReport()
    for s in infos:
        skips.merge(s.skip_report())
    read = sum(s.read for s in infos)
    lines = [f"no usable drawings in the inputs ({read} well-formed, {skips.total} bad record(s) skipped)"]
    lines += skips.summary_lines()
    dropped = {
        "too short (under --min-len steps)": sum(s.too_short for s in infos),
        "not recognised by the game (keep them with --all)": sum(s.not_recognized for s in infos),
        "of other classes than --classes": sum(s.other_class for s in infos),
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
