"""Ranges over runs: a benchmark run N times, each in a fresh clone of the committed code, summarised.

A figure from one run says little on a shared virtual machine (runs of the same code differ by up to 12%
here), so the README quotes ranges. This is how they are made:

    python benchmarks/ranges.py --runs 3 -- bench_train.py            # the training table's ranges
    python benchmarks/ranges.py --runs 3 -- bench_train.py --fp32

Each run clones the repository's HEAD into a temporary folder (uncommitted changes are not measured) and
runs `benchmarks/<script>` there with this interpreter and that clone's `src` first on the path; the
shared data is found through DOODLE_SHARED (default: `../shared` beside this checkout). Prints one JSON
object: every run's output and, for each numeric field they share, its [min, max].
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from runner import after_dashes, numeric_ranges, run_json

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="how many runs (each in its own fresh clone)")
    p.add_argument("bench", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...], a script in benchmarks/")
    args = p.parse_args()
    bench = after_dashes(args.bench)
    if not bench:
        p.error("name the benchmark after --, e.g. -- bench_train.py")
    env = dict(os.environ)
    env.setdefault("DOODLE_SHARED", str(ROOT.parent / "shared"))
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    )
    results = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            clone = Path(tmp) / "clone"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            env["PYTHONPATH"] = str(clone / "src")
            print(f"run {i + 1}/{args.runs}: {' '.join(bench)}", file=sys.stderr, flush=True)
            results.append(run_json([sys.executable, f"benchmarks/{bench[0]}", *bench[1:]], env, cwd=clone))
    ranges = numeric_ranges(results)
    print(json.dumps({"commit": head.stdout.strip(), "bench": bench, "runs": results, "ranges": ranges}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
