"""The curve of `doodle prepare`, training start-up + 50 steps and an evaluation pass against data size.

Inputs (never in the repository; under --bigdata, default /work/bigdata):
  0.34M  real: ../shared wide1k                                   (336,565 drawings after prepare's filters)
  1.65M  real: wide1k + wide5k-rest                               (1,650,005)
  10M    1.65M + SYNTHETIC synth-a (jittered copies of the real drawings, benchmarks/scale_inputs.py)
  50M    10M + SYNTHETIC synth-b
Each step runs as its own process under `nice -n 10` (the machine is shared) and is measured from outside:
wall seconds, the peak RSS of the largest single process (wait4's ru_maxrss, which covers its workers),
and the peak of the summed RSS of the whole process tree (sampled from /proc every 0.2 s).

Steps per size:
  prepare  `doodle prepare --data ... --classes all --encoding stroke3 --jobs 2` -> cache size on disk
  train    `doodle train --max-steps 50 --batch-size 192 --device cpu` (start-up + 50 steps + one
           validation of 10,000 val drawings, `--val-max 10000 --no-final-val`, where the trainer has
           them; else its validation of the whole val split)
  eval     one `doodle eval` pass over up to 100,000 test drawings (its limit flag when it has one, else a
           cache of the first 100,000 test drawings cut from the big one, and the pass is over that)

    python benchmarks/bench_scale.py --generate                   # make synth-a and synth-b (~14 GB)
    python benchmarks/bench_scale.py --sizes 0.34M 1.65M 10M 50M --out results.json
    python benchmarks/bench_scale.py --plot results.json          # docs/images/scale.png
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DOODLE_SHARED", ROOT.parent / "shared")) / "data" / "quickdraw"
SIZES = {
    "0.34M": ["wide1k"],
    "1.65M": ["wide1k", "wide5k-rest"],
    "10M": ["wide1k", "wide5k-rest", "synth-a"],
    "50M": ["wide1k", "wide5k-rest", "synth-a", "synth-b"],
}
PARTS = {"synth-a": 8_350_000, "synth-b": 40_000_000}
EVAL_N = 100_000


def input_folders(size: str, bigdata: Path) -> list[Path]:
    return [(SHARED if p.startswith("wide") else bigdata) / p / "simplified" for p in SIZES[size]]


def _tree_rss_kb(root: int) -> int:
    """Summed VmRSS of `root` and all its descendants, from /proc."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    parent[int(d)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status") as fh:
                total += next((int(x.split()[1]) for x in fh if x.startswith("VmRSS:")), 0)
        except OSError:
            continue
    return total


def measure(cmd: list[str], log: Path) -> dict:
    """Run `cmd` under nice -n 10; wall seconds, largest-process peak RSS, peak summed tree RSS."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(["nice", "-n", "10", *cmd], stdout=out, stderr=subprocess.STDOUT)
        peak_tree = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak_tree[0] = max(peak_tree[0], _tree_rss_kb(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}); see {log}:\n{log.read_text()[-2000:]}"
        )
    return {
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "peak_tree_rss_mb": round(peak_tree[0] / 1024),
    }


def _has_flag(command: str, flag: str) -> bool:
    r = subprocess.run(
        [sys.executable, "-m", "doodle_rnn", command, "--help"], capture_output=True, text=True
    )
    return flag in r.stdout


def doodle(*args: str) -> list[str]:
    return [sys.executable, "-m", "doodle_rnn", *args]


def bench_prepare(size: str, bigdata: Path, work: Path, jobs: int) -> dict:
    cache = work / f"cache-{size}"
    folders = [str(f) for f in input_folders(size, bigdata)]
    cmd = doodle("prepare", "--data", *folders, "--out", str(cache), "--classes", "all",
                 "--encoding", "stroke3", "--jobs", str(jobs), "--no-progress")  # fmt: skip
    r = measure(cmd, work / f"prepare-{size}.log")
    m = json.loads((cache / "manifest.json").read_text())
    r["drawings"] = m["n_drawings"]
    r["read"] = sum(s["read"] for s in m["sources"])
    r["cache_mb"] = round(sum(f.stat().st_size for f in cache.iterdir()) / 1e6)
    r["drawings_per_s"] = round(r["read"] / r["wall_s"])
    return r


def bench_train(size: str, work: Path, steps: int) -> dict:
    run = work / f"run-{size}"
    cmd = doodle("train", "--data", str(work / f"cache-{size}"), "--out", str(run), "--max-steps", str(steps),
                 "--batch-size", "192", "--device", "cpu", "--overwrite", "--log-every", "10")  # fmt: skip
    val = _has_flag("train", "--val-max")
    if val:
        cmd += ["--val-max", "10000"]
    if _has_flag("train", "--final-val"):  # the whole val split is the eval column's job, not start-up's
        cmd += ["--no-final-val"]
    r = measure(cmd, work / f"train-{size}.log")
    r["products"] = products_of(work / f"train-{size}.log")
    r["steps"] = steps
    r["validation"] = "10,000 val drawings" if val else "whole val split"
    return r


def products_of(log: Path) -> str:
    """fp32 or bf16: what the trainer chose by measuring at start (its 'GRU products' line)."""
    line = next((x for x in log.read_text().splitlines() if x.startswith("GRU products:")), "")
    return line.split(":", 1)[1].split("(")[0].strip() if line else "?"


def bench_eval(size: str, work: Path) -> dict:
    cache = work / f"cache-{size}"
    flag = next((f for f in ("--max-drawings", "--max", "--limit") if _has_flag("eval", f)), None)
    data = cache
    if flag is None:
        data = cut_test_cache(cache, work / f"eval-cache-{size}", EVAL_N)
    cmd = doodle("eval", "--checkpoint", str(work / f"run-{size}" / "last.pt"), "--data", str(data),
                 "--split", "test", "--out", str(work / f"eval-{size}"), "--no-early", "--no-progress")  # fmt: skip
    if flag:
        cmd += [flag, str(EVAL_N)]
    r = measure(cmd, work / f"eval-{size}.log")
    summary = json.loads((work / f"eval-{size}" / "summary.json").read_text())
    r["drawings"] = summary.get("n") or summary.get("n_drawings") or EVAL_N
    r["how"] = f"doodle eval {flag} {EVAL_N}" if flag else f"first {EVAL_N} test drawings cut into a cache"
    return r


def cut_test_cache(cache: Path, out: Path, n: int) -> Path:
    """A cache of the first n test drawings of `cache` (same classes), for an eval without a limit flag."""
    import numpy as np

    from doodle_rnn.data.cache import DoodleCache

    c = DoodleCache(cache)
    rows = c.split_indices("test")[:n]
    steps, lens = c.batch_steps(rows)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "steps.npy", steps)
    np.save(out / "offsets.npy", np.concatenate([[0], np.cumsum(lens)]))
    np.save(out / "labels.npy", np.asarray(c.labels[rows]))
    np.save(out / "splits.npy", np.asarray(c.splits[rows]))
    np.save(out / "key_ids.npy", np.asarray(c.key_ids[rows]))
    m = dict(
        c.manifest, n_drawings=len(rows), n_steps=int(lens.sum()), note=f"first {n} test drawings of {cache}"
    )
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["sizes"].values() if "prepare" in r]
    n = [r["prepare"]["drawings"] / 1e6 for r in rows]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    for step, style in (("prepare", "o-"), ("train", "s-"), ("eval", "^-")):
        pts = [(x, r[step]) for x, r in zip(n, rows, strict=True) if step in r]
        if not pts:
            continue
        xs = [p[0] for p in pts]
        ax_t.plot(xs, [p[1]["wall_s"] / 60 for p in pts], style, label=step)
        ax_m.plot(xs, [p[1]["peak_tree_rss_mb"] / 1000 for p in pts], style, label=step)
    ax_t.set_yscale("log")
    for ax, label in ((ax_t, "wall minutes (log)"), (ax_m, "peak RSS, GB (all processes)")):
        ax.set_xscale("log")
        ax.set_xlabel("drawings in the cache (millions)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_m.axhline(1.0, color="grey", ls=":", lw=1, label="prepare's 1 GB bound")
    ax_m.legend(fontsize=8)
    ax_t.legend(fontsize=8)
    fig.suptitle("doodle-rnn at scale (2-core shared VM, nice 10; train = start-up + 50 steps)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} KB)")


def table(results: dict) -> str:
    """The docs' markdown table from a results file."""
    head = (
        "| input | drawings | prepare: wall, peak RSS (largest process / all processes) | cache on disk "
        "| train: start-up + 50 steps, peak RSS | eval: up to 100,000 test drawings, peak RSS |"
    )
    lines = [head, "| --- | --- | --- | --- | --- | --- |"]
    for size, r in results["sizes"].items():
        p, t, e = r.get("prepare"), r.get("train"), r.get("eval")
        kind = "real + synthetic" if r.get("synthetic") else "real"
        cells = [
            f"{size} ({kind})",
            f"{p['drawings']:,}" if p else "",
            f"{p['wall_s'] / 60:.1f} min ({p['drawings_per_s']:,}/s), {p['peak_rss_mb']} / {p['peak_tree_rss_mb']} MB"
            if p
            else "not run",
            f"{p['cache_mb'] / 1000:.2f} GB" if p else "",
            f"{t['wall_s']:.0f} s, {t['peak_tree_rss_mb'] / 1000:.2f} GB ({t.get('products', '?')} products)"
            if t
            else "not run",
            f"{e['wall_s']:.0f} s for {e['drawings']:,}, {e['peak_tree_rss_mb'] / 1000:.2f} GB"
            if e
            else "not run",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bigdata", type=Path, default=Path("/work/bigdata"), help="generated inputs and caches")
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    ap.add_argument(
        "--steps", nargs="+", choices=("prepare", "train", "eval"), default=["prepare", "train", "eval"]
    )
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=50)
    ap.add_argument("--out", type=Path, help="JSON file to merge the results into (kept across calls)")
    ap.add_argument(
        "--generate", action="store_true", help="make the synthetic parts first (skips done files)"
    )
    ap.add_argument("--plot", type=Path, metavar="RESULTS", help="draw docs/images/scale.png from RESULTS")
    ap.add_argument("--table", type=Path, metavar="RESULTS", help="print the docs' markdown table of RESULTS")
    args = ap.parse_args()
    if args.plot:
        plot(json.loads(args.plot.read_text()), ROOT / "docs" / "images" / "scale.png")
        return
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    if args.generate:
        parts = [f"--part={p}:{n}" for p, n in PARTS.items()]
        subprocess.run(["nice", "-n", "10", sys.executable, str(Path(__file__).parent / "scale_inputs.py"),
                        "--out", str(args.bigdata), *parts], check=True)  # fmt: skip
    work = args.bigdata / "scale"
    work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out and args.out.exists() else {"sizes": {}}
    results["disk_free_gb_at_start"] = round(shutil.disk_usage(args.bigdata).free / 1e9, 1)
    for size in args.sizes:
        row = results["sizes"].setdefault(size, {})
        if "prepare" in args.steps:
            row["prepare"] = bench_prepare(size, args.bigdata, work, args.jobs)
        if "train" in args.steps:
            row["train"] = bench_train(size, work, args.train_steps)
        if "eval" in args.steps:
            row["eval"] = bench_eval(size, work)
        row["synthetic"] = any(p.startswith("synth") for p in SIZES[size])
        print(json.dumps({size: row}), flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
