"""Parity with Google's simplification, and normalisation throughput, on the shared raw/simplified pairs.

Prints one JSON object. Real data only (the raw files of the shared sample and their simplified twins,
matched by key_id). Throughput counts `normalize_many` alone on one core (numpy threads pinned to 1),
JSON parsing excluded; the best of `--repeats` runs is reported, since the box is shared.

    python benchmarks/bench_normalize.py [--data DIR] [--limit N] [--repeats 3] [--misses 5]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import orjson  # noqa: E402
from machine_facts import machine_facts  # noqa: E402

from doodle_rnn.data.normalize import normalize_many  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw"


def load_pairs(data: Path, limit: int | None) -> list[tuple[str, list, list]]:
    """(key_id, raw strokes, Google's simplified strokes) for every raw drawing with a twin."""
    pairs = []
    for raw_file in sorted((data / "raw").glob("*.ndjson")):
        twins = {}
        with open(data / "simplified" / raw_file.name, "rb") as f:
            for line in f:
                rec = orjson.loads(line)
                twins[str(rec["key_id"])] = rec["drawing"]
        with open(raw_file, "rb") as f:
            for line in f:
                rec = orjson.loads(line)
                key = str(rec["key_id"])
                if key in twins:
                    pairs.append((key, rec["drawing"], twins[key]))
        if limit and len(pairs) >= limit:
            return pairs[:limit]
    return pairs


def classify(ours: list, google: list) -> tuple[str, int]:
    """(category, max point-for-point difference in px; -1 when points cannot be paired)."""
    if ours == google:
        return "exact", 0
    if len(ours) != len(google):
        return "stroke_count_differs", -1
    if any(len(a[0]) != len(b[0]) for a, b in zip(ours, google, strict=True)):
        return "point_count_differs", -1
    diff = max(
        abs(p - q)
        for a, b in zip(ours, google, strict=True)
        for i in (0, 1)
        for p, q in zip(a[i], b[i], strict=True)
    )
    return ("within_2px" if diff <= 2 else "over_2px"), diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding raw/ and simplified/")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs (best reported)")
    ap.add_argument("--misses", type=int, default=5, help="key_ids of misses listed per category")
    args = ap.parse_args()

    pairs = load_pairs(args.data, args.limit)
    raw = [p[1] for p in pairs]
    best = float("inf")
    ours: list = []
    for _ in range(max(args.repeats, 1)):
        t0 = time.perf_counter()
        ours = normalize_many(raw)
        best = min(best, time.perf_counter() - t0)

    counts: Counter = Counter()
    examples: dict[str, list[str]] = {}
    diffs: Counter = Counter()
    for (key, _, google), mine in zip(pairs, ours, strict=True):
        cat, diff = classify(mine, google)
        counts[cat] += 1
        if cat != "exact":
            examples.setdefault(cat, [])
            if len(examples[cat]) < args.misses:
                examples[cat].append(key)
            if diff > 0:
                diffs[diff] += 1
    n = len(pairs)
    n_points = sum(len(s[0]) for d in raw for s in d)
    print(
        json.dumps(
            {
                "benchmark": "normalize",
                "data": "real: shared Quick, Draw! sample, raw drawings paired with their simplified twins by key_id",
                "drawings": n,
                "raw_points": n_points,
                "exact_rate": round(counts["exact"] / n, 4),
                "within_2px_rate": round(counts["within_2px"] / n, 4),
                "point_count_differs_rate": round(counts["point_count_differs"] / n, 4),
                "counts": dict(counts),
                "max_diff_px_histogram": {str(k): v for k, v in sorted(diffs.items())},
                "miss_examples": examples,
                "drawings_per_s": round(n / best, 1),
                "raw_points_per_s": round(n_points / best),
                "timing": f"best of {args.repeats}, normalize_many only (JSON parsing excluded), 1 numpy thread",
                "machine": machine_facts(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
