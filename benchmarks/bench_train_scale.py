"""Training start-up and memory against cache size: a synthetic big cache, and paired old/new measurements.

    # a cache of N drawings, tiled from a real prepared cache (labelled synthetic in its manifest)
    python benchmarks/bench_train_scale.py make --source CACHE --out /work/bigdata/big10m --drawings 10000000
    # start-up phases, the first steps and peak RSS, each in a fresh process of each Python given
    python benchmarks/bench_train_scale.py measure --cache /work/bigdata/big10m \
        --python /work/main/.venv/bin/python .venv/bin/python --runs 2

`make` is `doodle_rnn.data.tiled.tile_cache`: drawing i of the big cache is drawing i mod n of the
source, with its label and split, and a key_id of its own, written in chunks (flat memory). The
drawings are real, the repetition is not: figures from it say how the code scales, not how a model
learns, and are labelled synthetic.

`measure` runs, in a child process per Python (so each imports its own doodle_rnn): open the cache
and its splits, build the run (model, optimiser, and whatever the code builds for the first epoch),
then `--steps` training steps of batch 192, then one validation pass as `doodle train` would run it
per epoch (`--no-val` leaves it out: the old code validates the whole val split). It prints one
JSON line per run with the seconds of each phase, the child's peak RSS (ru_maxrss), and after each
phase its resident memory split into its own (RssAnon) and the cache's file pages it has mapped
(RssFile: clean pages of the page cache, which the kernel takes back under memory pressure).

    # reading random batches of drawings: through the memory mapping (old) vs preadv (new)
    python benchmarks/bench_train_scale.py gather --cache C --batch 192 --batches 50 [--warm]

`gather` prints, per fresh process, ms per batch and the file pages the reads left mapped; `--warm`
reads every batch once first (a small cache whose pages are all mapped already, as after an epoch).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
def mem():
    # current resident memory split: the process's own (anon) and mapped file pages (the cache)
    f = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith(("RssAnon", "RssFile")))
    return {k: int(v.split()[0]) / 1024 for k, v in f.items()}
t0 = time.perf_counter()
from doodle_rnn.config import TrainConfig
from doodle_rnn import train as T
cfg = TrainConfig(data=sys.argv[1], out=sys.argv[2], epochs=1, batch_size=192, hidden_size=64,
                  num_threads=1, log_every=10**9, max_steps=int(sys.argv[3]), amp=False, overwrite=True)
t_import = time.perf_counter()
run = T._setup(cfg, T.Dist())
t_setup = time.perf_counter()
rss_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
mem_setup = mem()
stats = T._train_epoch(run, 1)
t_steps = time.perf_counter()
rss_steps = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
mem_steps = mem()
out = {"import_s": t_import - t0, "setup_s": t_setup - t_import, "steps_s": t_steps - t_setup,
       "rss_after_setup_mb": rss_setup / 1024, "rss_after_steps_mb": rss_steps / 1024,
       "anon_mb_after_setup": mem_setup["RssAnon"], "file_mb_after_setup": mem_setup["RssFile"],
       "anon_mb_after_steps": mem_steps["RssAnon"], "file_mb_after_steps": mem_steps["RssFile"],
       "n_train": len(run.train_idx), "n_val": len(run.val_idx)}
if sys.argv[4] == "val":
    val = T.evaluate(run.net, run.cache, run.val_idx, cfg.eval_batch_size, run.device, run.d)
    m = mem()
    out |= {"val_s": time.perf_counter() - t_steps, "val_n": val["val_n"], "anon_mb_after_val": m["RssAnon"],
            "file_mb_after_val": m["RssFile"]}
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


GATHER = r"""
import json, sys, time, numpy as np
from doodle_rnn.data.cache import DoodleCache, gather_steps
def file_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("RssFile")).split()[1]) / 1024
c, how, bs, n, warm = DoodleCache(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "warm"
read = c.batch_steps if how == "preadv" else (lambda b: gather_steps(c.steps, c.offsets, b))
rng = np.random.default_rng(int(sys.argv[6]))
batches = [np.sort(rng.choice(len(c), bs, replace=False)) for _ in range(n)]
if warm:  # every page read once before timing: the mapping's pages are mapped already
    for b in batches: read(b)
read(batches[0]); before = file_mb(); t = time.perf_counter()
for b in batches: read(b)
print(json.dumps({"how": how, "ms_per_batch": (time.perf_counter() - t) / n * 1000, "file_mb_mapped": file_mb() - before}))
"""


def gather(cache: Path, runs: int, batch: int, batches: int, warm: bool) -> None:
    """Reading random batches of drawings: through the memory mapping (old) or with preadv (new),
    each in a fresh process, alternating; ms per batch and the file pages it left mapped."""
    for r in range(runs):
        for how in ("mmap", "preadv"):
            args = [str(cache), how, str(batch), str(batches), "warm" if warm else "cold", str(r)]
            child = subprocess.run([sys.executable, "-c", GATHER, *args], capture_output=True, text=True)
            if child.returncode:
                raise SystemExit(child.stderr)
            print(child.stdout.strip(), flush=True)


def measure(cache: Path, pythons: list[str], runs: int, steps: int, val: bool) -> list[dict]:
    """Paired runs: for each run, every Python once, one after another (same load, same page cache)."""
    results = []
    for r in range(runs):
        for py in pythons:
            run_dir = Path("/tmp") / f"bench_train_scale_run_{r}"
            t0 = time.perf_counter()
            child = subprocess.run([py, "-c", CHILD, str(cache), str(run_dir), str(steps), "val" if val else "-"],
                                   capture_output=True, text=True)  # fmt: skip
            if child.returncode:
                raise SystemExit(child.stderr)
            rec = json.loads(child.stdout.strip().splitlines()[-1])
            rec |= {"python": py, "run": r, "process_s": time.perf_counter() - t0}
            print(json.dumps(rec), flush=True)
            results.append(rec)
            shutil.rmtree(run_dir, ignore_errors=True)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write a synthetic cache of N drawings tiled from a real one")
    m.add_argument("--source", type=Path, required=True)
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--drawings", type=int, required=True)
    s = sub.add_parser("measure", help="start-up, first steps, validation and peak RSS per Python")
    s.add_argument("--cache", type=Path, required=True)
    s.add_argument("--python", nargs="+", default=[sys.executable])
    s.add_argument("--runs", type=int, default=2)
    s.add_argument("--steps", type=int, default=5)
    s.add_argument("--no-val", dest="val", action="store_false")
    g = sub.add_parser("gather", help="reading random batches: through the mapping vs preadv")
    g.add_argument("--cache", type=Path, required=True)
    g.add_argument("--runs", type=int, default=3)
    g.add_argument("--batch", type=int, default=192)
    g.add_argument("--batches", type=int, default=50)
    g.add_argument("--warm", action="store_true", help="read every batch once before timing")
    a = p.parse_args()
    if a.cmd == "gather":
        gather(a.cache, a.runs, a.batch, a.batches, a.warm)
    elif a.cmd == "make":
        from doodle_rnn.data.tiled import tile_cache

        print(json.dumps(tile_cache(a.source, a.out, a.drawings)))
    else:
        measure(a.cache, a.python, a.runs, a.steps, a.val)
    return 0


if __name__ == "__main__":
    sys.exit(main())
