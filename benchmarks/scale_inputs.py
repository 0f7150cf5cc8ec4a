"""Inputs for bench_scale.py: the real wide5k drawings plus SYNTHETIC jittered copies, written fast.

The real part is the shared `wide1k` + `wide5k-rest` folders (1,650,005 drawings after prepare's default
filters), read in place. Past that, each part folder (`synth-a`, `synth-b`, ...) holds, per class, copies
of that class's real drawings with every point moved by an independent random -2..2 px (clipped to
0..255) and a new key_id `8CCCRRRRJJJJJJJJ` (class, round, drawing; real derived key_ids start with 9,
so a copy never de-duplicates against a real drawing). Copies are spread over classes in proportion to
the class's real count, so class imbalance stays as in the real data.

Why this is fast: a drawing's JSON text has the same brackets in every copy (the stroke lengths do not
change), so each real drawing is parsed once into a `%`-template and its points; a copy is one vectorised
noise add and one C-level `template % points`. Files are gzip level 1, one per class per part, written
by a process pool (one class at a time per process).

    python benchmarks/scale_inputs.py --out /work/bigdata --part synth-a:8350000 --part synth-b:40000000
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import orjson

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw"
REAL = [SHARED / "wide1k" / "simplified", SHARED / "wide5k-rest" / "simplified"]
JITTER_PX = 2


def class_names() -> list[str]:
    return sorted(p.name.removesuffix(".ndjson.gz") for p in REAL[0].glob("*.ndjson.gz"))


def load_class(word: str) -> tuple[list[str], list[np.ndarray]]:
    """The class's real recognised drawings as (%-templates with a %s for the key_id, int16 points)."""
    templates, points = [], []
    word_json = json.dumps(word).replace("%", "%%")
    head = (
        '{"word":'
        + word_json
        + ',"countrycode":"","timestamp":"","recognized":true,"key_id":"%s","drawing":['
    )

    for folder in REAL:
        path = folder / f"{word}.ndjson.gz"
        if not path.exists():
            continue
        with gzip.open(path, "rb") as fh:
            for line in fh:
                rec = orjson.loads(line)
                if not rec.get("recognized", True):
                    continue
                strokes = rec["drawing"]
                parts = []
                pts: list[int] = []
                for xs, ys in (s[:2] for s in strokes):
                    parts.append(
                        "[[" + ",".join(["%d"] * len(xs)) + "],[" + ",".join(["%d"] * len(ys)) + "]]"
                    )
                    pts.extend(xs)
                    pts.extend(ys)
                templates.append(head + ",".join(parts) + "]}\n")
                points.append(np.asarray(pts, dtype=np.int16))
    return templates, points


def write_copies(job: tuple[str, int, int, int, str, int]) -> tuple[str, int, float]:
    """One class of one part: `count` jittered copies; key_id = 8, part, class, round, drawing (unique)."""
    word, class_idx, count, part, out_dir, seed = job
    t0 = time.perf_counter()
    templates, points = load_class(word)
    n_real = len(templates)
    flat = np.concatenate(points).astype(np.int16)
    bounds = np.cumsum([0] + [len(p) for p in points])
    rng = np.random.default_rng([seed, class_idx, part])
    path = Path(out_dir) / f"{word}.ndjson.gz"
    tmp = path.with_suffix(".gz.tmp")
    written = 0
    with gzip.open(tmp, "wt", compresslevel=1, encoding="ascii") as fh:
        r = 0
        while written < count:
            take = min(n_real, count - written)
            noisy = np.clip(flat + rng.integers(-JITTER_PX, JITTER_PX + 1, len(flat), dtype=np.int16), 0, 255)
            vals = noisy.tolist()
            fh.write(
                "".join(
                    templates[j] % (f"8{part}{class_idx:03d}{r:03d}{j:08d}", *vals[bounds[j] : bounds[j + 1]])
                    for j in range(take)
                )
            )
            written += take
            r += 1
    os.replace(tmp, path)
    return word, written, time.perf_counter() - t0


def real_counts(words: list[str]) -> dict[str, int]:
    """Lines per class in the real folders (read once; recognised-only filtering is done by load_class)."""
    counts = {}
    for w in words:
        n = 0
        for folder in REAL:
            p = folder / f"{w}.ndjson.gz"
            if p.exists():
                with gzip.open(p, "rb") as fh:
                    n += sum(1 for _ in fh)
        counts[w] = n
    return counts


def plan(words: list[str], counts: dict[str, int], total: int) -> list[int]:
    """`total` copies spread over classes in proportion to their real counts (largest remainder)."""
    weights = np.array([counts[w] for w in words], dtype=np.float64)
    share = weights / weights.sum() * total
    out = np.floor(share).astype(np.int64)
    out[np.argsort(-(share - out))[: total - int(out.sum())]] += 1
    return out.tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the part folders (never inside the repo)")
    ap.add_argument("--part", action="append", required=True, help="NAME:COPIES, e.g. synth-a:8350000")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    words = class_names()
    counts = real_counts(words)
    for part, spec in enumerate(args.part):
        name, copies = spec.split(":")
        out_dir = Path(args.out) / name / "simplified"
        out_dir.mkdir(parents=True, exist_ok=True)
        per_class = plan(words, counts, int(copies))
        jobs = [
            (w, i, c, part, str(out_dir), args.seed)
            for i, (w, c) in enumerate(zip(words, per_class, strict=True))
            if not (out_dir / f"{w}.ndjson.gz").exists()
        ]
        t0 = time.perf_counter()
        done = 0
        with Pool(args.jobs) as pool:
            for word, n, _ in pool.imap_unordered(write_copies, jobs):
                done += n
                print(f"{name}: {word} {n} ({done} so far, {time.perf_counter() - t0:.0f} s)", flush=True)
        (out_dir.parent / "README.txt").write_text(
            f"SYNTHETIC: {copies} jittered copies of the real wide5k drawings (benchmarks/scale_inputs.py, "
            f"seed {args.seed}); for benchmarks only.\n"
        )
        print(json.dumps({"part": name, "copies": int(copies), "seconds": round(time.perf_counter() - t0)}))


if __name__ == "__main__":
    main()
