"""`doodle prepare`, step 2: shards -> the cache's arrays, streaming, in bounded memory.

The rules are those of the in-memory merge this replaces, applied in the same order (input files in
order, drawings in file order): a key_id's first occurrence is kept (de-duplication by its seeded hash),
then at most `max_per_class` of each class in that order, then the split from the hash. Memory holds
one chunk of records, one de-duplication bucket (at most BUCKET_ENTRIES hashes), and one bit per
drawing; the arrays are written to disk as they are made (plain writes, not memory maps, whose touched
pages would count as the process's memory).

    find_duplicates  hashes partitioned into buckets on disk by hash; first occurrence per bucket
    apply_caps       one pass in order: the per-class cap, the sizes of the arrays to write
    write_arrays     one pass in order: steps, offsets, labels, splits, key_ids; each shard's spill
                     files are deleted once copied, so the disk holds about one copy of the steps
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from doodle_rnn.data.shards import RECORD, ShardInfo, iter_records
from doodle_rnn.data.splits import split_of

RECORDS_CHUNK = 1 << 16
BUCKET_ENTRIES = 1 << 22
PAIR = np.dtype([("hash", "<u8"), ("gidx", "<i8")])


class BitSet:
    """One bit per drawing (50 million drawings: 6 MB)."""

    def __init__(self, n: int):
        self.bits = np.zeros((n + 7) // 8, np.uint8)

    def set(self, idx: np.ndarray) -> None:
        idx = np.asarray(idx, np.int64)
        np.bitwise_or.at(self.bits, idx >> 3, np.left_shift(1, idx & 7).astype(np.uint8))

    def get(self, a: int, b: int) -> np.ndarray:
        if b <= a:
            return np.zeros(0, bool)
        raw = np.unpackbits(self.bits[a >> 3 : (b + 7) >> 3], bitorder="little")
        return raw[a & 7 : (a & 7) + (b - a)].astype(bool)


@dataclass
class Plan:
    """What the merge decided: dropped drawings (bits), counts, and the sizes of the arrays."""

    n_total: int
    drop: BitSet
    class_maps: list[np.ndarray]
    duplicates: int = 0
    over_cap: int = 0
    n: int = 0
    n_steps: int = 0
    key_width: int = 1
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def shard_chunks(infos: list[ShardInfo], folder: Path):
    """(shard index, global index of the chunk's first drawing, records) for every chunk, in order."""
    base = 0
    for s, info in enumerate(infos):
        for rec in iter_records(info, folder, RECORDS_CHUNK):
            yield s, base, rec
            base += len(rec)


def find_duplicates(infos: list[ShardInfo], folder: Path, plan: Plan) -> None:
    """Mark every drawing whose key_id hash occurred earlier (in input order) in `plan.drop`."""
    n_buckets = max(1, -(-plan.n_total // BUCKET_ENTRIES))
    bucket_dir = folder / "dedupe"
    bucket_dir.mkdir(exist_ok=True)
    paths = [bucket_dir / f"{b:04d}.pairs" for b in range(n_buckets)]
    with ExitStack() as stack:
        sinks = [stack.enter_context(open(p, "wb")) for p in paths]
        for _, base, rec in shard_chunks(infos, folder):
            pairs = np.empty(len(rec), PAIR)
            pairs["hash"] = rec["hash"]
            pairs["gidx"] = np.arange(base, base + len(rec))
            bucket = (rec["hash"] % np.uint64(n_buckets)).astype(np.int64)
            order = np.argsort(bucket, kind="stable")
            edges = np.searchsorted(bucket[order], np.arange(n_buckets + 1))
            for b in range(n_buckets):
                if edges[b + 1] > edges[b]:
                    sinks[b].write(pairs[order[edges[b] : edges[b + 1]]].tobytes())
    for p in paths:
        pairs = np.fromfile(p, PAIR)  # gidx ascending: appended in input order
        first = np.zeros(len(pairs), bool)
        first[np.unique(pairs["hash"], return_index=True)[1]] = True
        dup = pairs["gidx"][~first]
        plan.drop.set(dup)
        plan.duplicates += len(dup)
        p.unlink()
    bucket_dir.rmdir()


def apply_caps(infos: list[ShardInfo], folder: Path, plan: Plan, n_classes: int, cap: int | None) -> None:
    """In input order: drop what passes `cap` drawings of its class; size the arrays to write."""
    seen = np.zeros(n_classes, np.int64)
    plan.counts = np.zeros(n_classes * 3, np.int64)
    plan.key_width = max([w for info in infos for _, w in info.key_chunks] or [1])
    for s, base, rec in shard_chunks(infos, folder):
        keep = ~plan.drop.get(base, base + len(rec))
        if cap is not None:
            idx = np.flatnonzero(keep)
            labels = plan.class_maps[s][rec["word"][idx]]
            order = np.argsort(labels, kind="stable")
            ls = labels[order]
            rank = np.empty(len(idx), np.int64)
            rank[order] = np.arange(len(ls)) - np.searchsorted(ls, ls, side="left") + seen[ls]
            over = idx[rank >= cap]
            seen += np.bincount(labels, minlength=n_classes)
            if len(over):
                plan.drop.set(base + over)
                plan.over_cap += len(over)
                keep[over] = False
        plan.n += int(keep.sum())
        plan.n_steps += int(rec["len"][keep].sum())


class NpyWriter:
    """A .npy file written front to back: header for the final shape first, then the data in pieces."""

    def __init__(self, path: Path, dtype: np.dtype | str, shape: tuple[int, ...]):
        self.dtype = np.dtype(dtype)
        self.expected = int(np.prod(shape))
        self.written = 0
        self.fh = open(path, "wb")  # noqa: SIM115 (closed by close(), which also checks the count)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self.fh, header)

    def write(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        self.fh.write(arr.tobytes())
        self.written += arr.size

    def close(self) -> None:
        self.fh.close()
        if self.written != self.expected:
            raise RuntimeError(f"{self.fh.name}: wrote {self.written} values, expected {self.expected}")


def write_arrays(
    infos: list[ShardInfo], folder: Path, out: Path, plan: Plan, fracs: tuple[float, float]
) -> None:
    """The cache's arrays, streamed in input order; each shard's spill files go once it is copied."""
    w = {
        "steps": NpyWriter(out / "steps.npy", np.int16, (plan.n_steps, 3)),
        "offsets": NpyWriter(out / "offsets.npy", np.int64, (plan.n + 1,)),
        "labels": NpyWriter(out / "labels.npy", np.int16, (plan.n,)),
        "splits": NpyWriter(out / "splits.npy", np.uint8, (plan.n,)),
        "key_ids": NpyWriter(out / "key_ids.npy", f"S{plan.key_width}" if plan.n else "S1", (plan.n,)),
    }
    w["offsets"].write(np.zeros(1, np.int64))
    end = base = 0
    for s, info in enumerate(infos):
        with open(folder / f"{info.stem}.steps", "rb") as steps_fh:
            for rec, keys in iter_records(info, folder, RECORDS_CHUNK, keys=True):
                lens = rec["len"].astype(np.int64)
                steps = np.fromfile(steps_fh, np.int16, 3 * int(lens.sum())).reshape(-1, 3)
                keep = ~plan.drop.get(base, base + len(rec))
                base += len(rec)
                if not keep.all():
                    steps, lens, rec, keys = steps[np.repeat(keep, lens)], lens[keep], rec[keep], keys[keep]
                labels = plan.class_maps[s][rec["word"]]
                splits = split_of(rec["hash"], *fracs)
                w["steps"].write(steps)
                w["offsets"].write(end + np.cumsum(lens))
                end += int(lens.sum())
                w["labels"].write(labels)
                w["splits"].write(splits)
                w["key_ids"].write(keys)
                plan.counts += np.bincount(labels.astype(np.int64) * 3 + splits, minlength=len(plan.counts))
        _delete_shard(info, folder)
    for writer in w.values():
        writer.close()


def _delete_shard(info: ShardInfo, folder: Path) -> None:
    """The .json first: a rerun after a kill here re-encodes this file instead of trusting half a shard."""
    for p in info.files(folder):
        p.unlink(missing_ok=True)


__all__ = ["RECORD", "BitSet", "Plan", "apply_caps", "find_duplicates", "write_arrays"]
