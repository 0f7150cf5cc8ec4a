"""End-to-end ndjson -> cache throughput and peak RSS of `doodle prepare`. Prints one JSON object.

Workloads:
  (a) the real shared simplified sample (../shared/data/quickdraw/simplified, 9,810 drawings, 345 files);
  (b) generated drawings (SYNTHETIC, doodle_rnn.data.synthetic), default 100,000 in 8 files;
  (c) the real shared raw sample (../shared/data/quickdraw/raw, 7,692 raw captures): normalise + encode.
Each runs `doodle prepare` as a real subprocess; drawings/s counts drawings read per wall-clock second of
the whole command (interpreter start included), and peak RSS is the largest of the process and its workers.

    python benchmarks/bench_data.py [--n-synthetic 100000] [--jobs 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_facts import machine_facts

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw"


def run_prepare(data: Path, out: Path, jobs: int) -> dict:
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = subprocess.run(
        [sys.executable, "-m", "doodle_rnn", "prepare", "--data", str(data), "--out", str(out),
         "--jobs", str(jobs), "--all", "--no-progress"],
        capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    m = json.loads((out / "manifest.json").read_text())
    read = sum(s["read"] for s in m["sources"])
    rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "drawings_read": read,
        "drawings_cached": m["n_drawings"],
        "wall_s": round(wall, 3),
        "drawings_per_s": round(read / wall),
        "prepare_s_excluding_startup": m["seconds"],
        "drawings_per_s_excluding_startup": round(read / m["seconds"]),
        "peak_rss_mb": round(max(rss_kb, before) / 1024, 1),
        "input_mb": round(sum(s["bytes"] for s in m["sources"]) / 2**20, 2),
        "cache_mb": round(sum(f.stat().st_size for f in out.iterdir()) / 2**20, 2),
    }


def best_of(fn, repeat: int) -> dict:
    runs = [fn() for _ in range(repeat)]
    return max(runs, key=lambda r: r["drawings_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-synthetic", type=int, default=100_000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="runs per workload; the best is reported")
    args = ap.parse_args()
    from doodle_rnn.data.synthetic import write_ndjson_per_class

    result: dict = {
        "benchmark": "prepare (ndjson -> cache)",
        "machine": machine_facts(),
        "jobs": args.jobs,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if (SHARED / "simplified").is_dir():
            result["real_simplified_sample"] = best_of(
                lambda: run_prepare(SHARED / "simplified", tmp / "a", args.jobs), args.repeat
            )
        syn = tmp / "syn"
        write_ndjson_per_class(syn, args.n_synthetic, seed=0)
        result["synthetic_simplified"] = {"data": "SYNTHETIC (doodle_rnn.data.synthetic)"} | best_of(
            lambda: run_prepare(syn, tmp / "b", args.jobs), args.repeat
        )
        if (SHARED / "raw").is_dir():
            result["real_raw_sample_normalised"] = best_of(
                lambda: run_prepare(SHARED / "raw", tmp / "c", args.jobs), args.repeat
            )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
