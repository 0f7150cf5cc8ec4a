"""The compiled GRU cell against the Python kernel it replaces: `bench_train.py` run in pairs, same machine.

Each pair runs `bench_train.py ARGS` twice back to back, first with `DOODLE_GRU_CELL=python` (the
Python kernel: today's training loop, and nn.GRU for fp32 validation) and then with the compiled cell,
alternating so that a busy neighbour weighs on both alike. Prints one JSON object: every run's key
figures, the compiled/Python ratio of each pair, and [min, max] over the pairs.

    python benchmarks/bench_gru_cell.py --pairs 2 -- --max-batches 40
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from runner import after_dashes, numeric_ranges, run_json

HERE = Path(__file__).resolve().parent
KEYS = {
    "train_per_s": ("train", "drawings_per_s"),
    "val_per_s": ("val", "drawings_per_s"),
    "whole_epoch_s": ("whole_epoch", "seconds"),
    "whole_fraction_of_best_peak": ("whole_epoch", "fraction_of_best_peak"),
    "train_fraction_of_best_peak": ("fraction_of_best_peak", "train"),
    "val_fraction_of_best_peak": ("fraction_of_best_peak", "val"),
    "peak_rss_mb": ("whole_epoch", "peak_rss_mb"),
    "val_acc1": ("val", "val_acc1"),
    "load_avg_1min": ("machine", "load_avg_1min"),
    "cpu_steal_share": ("cpu_steal_share",),
}


def run_bench(kernel: str, args: list[str]) -> dict:
    env = {**os.environ, "DOODLE_GRU_CELL": kernel}
    rec = run_json([sys.executable, str(HERE / "bench_train.py"), *args], env)
    fig = {}
    for name, path in KEYS.items():
        v = rec
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        fig[name] = v
    fig["matmul_dtype"] = rec["model"]["matmul_dtype"]
    fig["peaks_gflops"] = rec["machine"]["matmul_peak_gflops"]
    return fig


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=2, help="how many (Python, compiled) pairs")
    p.add_argument("bench", nargs=argparse.REMAINDER, help="-- ARGS for bench_train.py")
    args = p.parse_args()
    bench = after_dashes(args.bench)
    pairs = []
    for i in range(args.pairs):
        print(f"pair {i + 1}/{args.pairs}", file=sys.stderr, flush=True)
        pairs.append({"python": run_bench("python", bench), "compiled": run_bench("auto", bench)})
    ratios = [
        {
            k: round(pr["compiled"][k] / pr["python"][k], 3)
            for k in ("train_per_s", "val_per_s", "whole_epoch_s")
        }
        for pr in pairs
    ]
    ranges = {
        f"{side}.{k}": v
        for side in ("python", "compiled")
        for k, v in numeric_ranges([{k: pr[side][k] for k in KEYS} for pr in pairs]).items()
    }
    ranges.update({f"ratio.{k}": [min(r[k] for r in ratios), max(r[k] for r in ratios)] for k in ratios[0]})
    print(json.dumps({"benchmark": "gru_cell", "bench_train_args": bench, "pairs": pairs, "ratios": ratios,
                      "ranges": ranges}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
