"""A big cache made quickly by repeating a prepared one: for measuring how code scales, not models.

`tile_cache(source, out, n)` writes a cache of `n` drawings in the layout `DoodleCache` reads
(steps.npy, offsets.npy, labels.npy, splits.npy, key_ids.npy, manifest.json): drawing i is drawing
i mod len(source), with its label and split, and a key_id of its own (`syn000000123`). It works in
chunks of a million drawings through memory-mapped output, so its memory stays flat whatever `n`
(10 million drawings: ~30 s and 2.5 GB of disk from the 0.34 M-drawing wide1k cache). The manifest
says `synthetic`: the drawings are real, their repetition is not, so anything measured on such a cache
must say so. The folder appears only when complete (written beside it, then renamed).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from doodle_rnn.data.cache import SPLITS

CHUNK = 1 << 20


def tile_cache(source: str | Path, out: str | Path, drawings: int) -> dict:
    """Write the synthetic cache; returns its size (drawings, steps, split counts)."""
    source, out = Path(source), Path(out)
    src_steps = np.load(source / "steps.npy", mmap_mode="r")
    src_off = np.load(source / "offsets.npy")
    src_labels, src_splits = np.load(source / "labels.npy"), np.load(source / "splits.npy")
    n_src = len(src_labels)
    reps, rest = divmod(drawings, n_src)
    total_steps = reps * int(src_off[-1]) + int(src_off[rest])
    tmp = out.parent / f".{out.name}.tmp-tiled"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    def array(name: str, dtype, shape) -> np.memmap:
        return np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)

    steps, offsets = array("steps", np.int16, (total_steps, 3)), array("offsets", np.int64, (drawings + 1,))
    labels, splits = array("labels", np.int16, (drawings,)), array("splits", np.uint8, (drawings,))
    keys = array("key_ids", "S12", (drawings,))
    offsets[0], pos = 0, 0
    for start in range(0, drawings, CHUNK):
        i = np.arange(start, min(start + CHUNK, drawings))
        j = i % n_src
        labels[i], splits[i] = src_labels[j], src_splits[j]
        keys[i] = np.char.mod(b"syn%09d", i)
        offsets[i + 1] = pos + np.cumsum(src_off[j + 1] - src_off[j])
        for a, b in _runs(j):  # consecutive source drawings: one copy each
            ln = int(src_off[j[b] + 1] - src_off[j[a]])
            steps[pos : pos + ln] = src_steps[src_off[j[a]] : src_off[j[b] + 1]]
            pos += ln
    for arr in (steps, offsets, labels, splits, keys):
        arr.flush()
    counts = {sp: int(np.count_nonzero(splits == k)) for k, sp in enumerate(SPLITS)}
    manifest = json.loads((source / "manifest.json").read_text())
    manifest |= {"n_drawings": drawings, "n_steps": total_steps, "split_counts": counts, "counts": {},
                 "sources": [], "synthetic": f"{drawings} drawings tiled from {source} ({n_src} real drawings)"}  # fmt: skip
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {"out": str(out), "drawings": drawings, "steps": total_steps, "split_counts": counts}


def _runs(j: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) positions of the runs of consecutive values in `j` (a chunk wraps a few times)."""
    breaks = np.flatnonzero(np.diff(j) != 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(j) - 1]])
    return list(zip(starts.tolist(), ends.tolist(), strict=True))
