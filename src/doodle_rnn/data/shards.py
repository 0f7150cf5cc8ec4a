"""`doodle prepare`, step 1: one input file -> one shard of spill files on disk, in bounded memory.

A shard is what one input file contributes, before de-duplication and the per-class cap across files:
    <stem>.steps  int16 [*, 3]   the encoded steps of the file's kept drawings, back to back
    <stem>.rec    RECORD [n]     per drawing: blake2b hash of key_id, number of steps, local word index
    <stem>.keys   bytes          key_ids as fixed-width byte strings, one width per encoded chunk
    <stem>.json   ShardInfo      counts, skips, words, chunk widths; written last, so its presence
                                 means the shard is complete (a resumed prepare reuses it)

Why files and not one in-memory result per input: memory then holds one chunk of drawings whatever
the size of a file, and a killed prepare keeps every finished file's work for the rerun.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from doodle_rnn.data.encode import LengthRules, encode_stream
from doodle_rnn.data.formats import SkipReport, iter_drawings
from doodle_rnn.data.splits import key_hash

if TYPE_CHECKING:
    from doodle_rnn.data.cache import PrepareConfig

CHUNK = 4096
RECORD = np.dtype([("hash", "<u8"), ("len", "<i4"), ("word", "<i4")])


@dataclass
class ShardInfo:
    """What one input file gave; JSON-serialisable, so a resumed run reads it back unchanged."""

    path: str
    size: int
    mtime_ns: int
    stem: str
    n: int = 0
    n_steps: int = 0
    read: int = 0
    too_short: int = 0
    not_recognized: int = 0
    other_class: int = 0
    over_cap: int = 0
    words: list[str] = field(default_factory=list)
    key_chunks: list[list[int]] = field(default_factory=list)  # [count, width] per chunk of .keys
    skips: dict = field(default_factory=dict)  # SkipReport's counts and examples
    seconds: float = 0.0

    def skip_report(self) -> SkipReport:
        rep = SkipReport()
        for path, counts in self.skips.get("counts", {}).items():
            rep.counts[path].update(counts)
        for path, ex in self.skips.get("examples", {}).items():
            rep.examples[path] = list(ex)
        return rep

    def files(self, folder: Path) -> list[Path]:
        return [folder / f"{self.stem}.{ext}" for ext in ("json", "steps", "rec", "keys")]

    def write(self, folder: Path) -> None:
        tmp = folder / f"{self.stem}.json.tmp"
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, folder / f"{self.stem}.json")

    @classmethod
    def load(cls, path: Path) -> ShardInfo | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def file_identity(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def encode_file(path: str, stem: str, folder: str, cfg: PrepareConfig) -> ShardInfo:
    """Worker: read one file, filter, encode CHUNK drawings at a time, append each chunk to the shard."""
    t0 = time.perf_counter()
    size, mtime = file_identity(path)
    info = ShardInfo(path=path, size=size, mtime_ns=mtime, stem=stem)
    rules = LengthRules(cfg.min_len, cfg.max_len)
    skips = SkipReport()
    word_index: dict[str, int] = {}
    out = Path(folder)
    with open(out / f"{stem}.steps", "wb") as fs, open(out / f"{stem}.rec", "wb") as fr, \
            open(out / f"{stem}.keys", "wb") as fk:  # fmt: skip
        chunks = encode_stream(_wanted(path, cfg, info, skips, word_index), cfg.encoding, rules, CHUNK)
        for steps, lengths, kept, too_short in chunks:
            info.too_short += too_short
            if not len(kept):
                continue
            rec = np.empty(len(kept), RECORD)
            keys = [d.key_id for d in kept]
            rec["hash"] = key_hash(keys, cfg.seed)
            rec["len"] = lengths
            rec["word"] = [word_index[d.word] for d in kept]
            key_arr = np.array(keys, dtype="S")
            fs.write(np.ascontiguousarray(steps, dtype=np.int16).tobytes())
            fr.write(rec.tobytes())
            fk.write(key_arr.tobytes())
            info.key_chunks.append([len(keys), key_arr.itemsize])
            info.n += len(kept)
            info.n_steps += int(lengths.sum())
    info.words = list(word_index)
    info.skips = {"counts": {p: dict(c) for p, c in skips.counts.items()}, "examples": dict(skips.examples)}
    info.seconds = time.perf_counter() - t0
    info.write(out)
    return info


def _wanted(path: str, cfg: PrepareConfig, info: ShardInfo, skips: SkipReport, word_index: dict) -> Iterator:
    """The file's drawings that pass the filters, each counted where it is dropped; the per-class cap
    here is per file (the cap across files is applied after de-duplication, in the merge)."""
    want = set(cfg.classes) if cfg.classes else None
    per_class: Counter = Counter()
    for d in iter_drawings(path, strict=cfg.strict, report=skips):
        info.read += 1
        if want is not None and d.word not in want:
            info.other_class += 1
            continue
        if not d.word:
            skips.add(path, info.read, "no class label")
            continue
        if cfg.recognized_only and not d.recognized:
            info.not_recognized += 1
            continue
        if cfg.max_per_class is not None and per_class[d.word] >= cfg.max_per_class:
            info.over_cap += 1
            continue
        per_class[d.word] += 1
        word_index.setdefault(d.word, len(word_index))
        yield d


def iter_records(info: ShardInfo, folder: Path, chunk: int, keys: bool = False) -> Iterator:
    """The shard's records `chunk` at a time; with keys=True, (records, key_ids as fixed-width bytes)."""
    if not keys:
        with open(folder / f"{info.stem}.rec", "rb") as fr:
            for a in range(0, info.n, chunk):
                yield np.fromfile(fr, RECORD, min(chunk, info.n - a))
        return
    widths = np.repeat([w for _, w in info.key_chunks], [c for c, _ in info.key_chunks]).astype(np.int64)
    key_pos = np.concatenate([[0], np.cumsum(widths)])
    with open(folder / f"{info.stem}.rec", "rb") as fr, open(folder / f"{info.stem}.keys", "rb") as fk:
        for a in range(0, info.n, chunk):
            b = min(a + chunk, info.n)
            rec = np.fromfile(fr, RECORD, b - a)
            raw = np.frombuffer(fk.read(int(key_pos[b] - key_pos[a])), np.uint8)
            yield rec, _fixed_width(raw, widths[a:b])


def _fixed_width(raw: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Variable-width key bytes -> one 'S<max width>' array (np.array(keys, 'S') pads the same way)."""
    w = int(widths.max()) if len(widths) else 1
    if len(widths) and int(widths.min()) == w:  # the usual case: one width for the whole chunk
        return raw.view(f"S{w}").copy()
    out = np.zeros((len(widths), w), np.uint8)
    starts = np.cumsum(widths) - widths
    rows = np.repeat(np.arange(len(widths)), widths)
    cols = np.arange(len(raw)) - np.repeat(starts, widths)
    out[rows, cols] = raw
    return out.view(f"S{w}").reshape(-1)
