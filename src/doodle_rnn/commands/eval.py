"""`doodle eval`: a checkpoint on a prepared cache or data files -> summary.json, plots, report.html."""

from __future__ import annotations

import argparse
import sys

HELP = "evaluate a checkpoint: metrics, calibration, plots and a self-contained HTML report"
DESCRIPTION = (
    "Evaluate a checkpoint on a prepared cache (its --split) or on data files of any supported format "
    "(normalised and encoded exactly as the checkpoint records). Writes DIR/summary.json with every number, "
    "five PNG plots, and DIR/report.html, one page that opens offline."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint file (.pt) to evaluate, or a shipped model's name (animals10)",
    )
    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="a prepared cache folder, or data files/folders (ndjson, raw, npz, csv)")  # fmt: skip
    p.add_argument("--split", choices=["train", "val", "test", "all"], default=None,
                   help="split of a prepared cache to evaluate (default: test); data files are always evaluated whole")  # fmt: skip
    p.add_argument("--out", required=True, help="folder for summary.json, the plots and report.html")
    p.add_argument("--batch-size", type=int, default=1024, help="drawings per forward pass (length-bucketed)")
    p.add_argument(
        "--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"
    )
    p.add_argument("--include-unrecognized", action="store_true",
                   help="with data files, also evaluate drawings the game did not recognise")  # fmt: skip
    p.add_argument("--max-drawings", type=int, default=0, metavar="N",
                   help="evaluate a fixed random subset of at most N drawings (seeded; summary.json records it): "
                   "a big cache's whole test split takes long on a CPU; 0: all (default)")  # fmt: skip
    p.add_argument("--no-early", dest="early", action="store_false",
                   help="skip the early-guessing curve (accuracy on the first strokes/points of each drawing)")  # fmt: skip
    p.add_argument("--early-max", type=int, default=5000, metavar="N",
                   help="measure the early-guessing curve on at most N drawings (a fixed random subset; "
                   "0: all; default 5000)")  # fmt: skip
    p.add_argument("--num-threads", type=int, default=None,
                   help="CPU threads for torch (default: 1 for up to 50,000 drawings, else torch's choice)")  # fmt: skip
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from doodle_rnn.cli import UserError
    from doodle_rnn.evaluate import run_evaluation
    from doodle_rnn.text import plural, some

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.early_max < 0:
        raise UserError("--early-max must be 0 (all drawings) or more")
    if args.max_drawings < 0:
        raise UserError("--max-drawings must be 0 (all drawings) or more")
    if args.num_threads is not None and args.num_threads < 1:
        raise UserError("--num-threads must be at least 1")
    s = run_evaluation(
        args.checkpoint, args.data, args.out, split=args.split, batch_size=args.batch_size, device=args.device,
        recognized_only=not args.include_unrecognized, progress=args.progress and sys.stderr.isatty(),
        early=args.early, early_max=args.early_max or None, num_threads=args.num_threads,
        max_drawings=args.max_drawings or None,
    )  # fmt: skip
    m = s["metrics"]
    cls = s["classes"]
    absent = cls["checkpoint_classes_without_data"]
    if absent:
        print(f"note: no data for {plural(len(absent), 'checkpoint class', 'checkpoint classes')}, left out: "
              f"{some(absent)}", file=sys.stderr)  # fmt: skip
    unknown = cls["data_classes_not_in_checkpoint"]
    if unknown:  # one short line: a folder of all 345 classes must not print them all
        names = some([f"{k} ({v})" for k, v in sorted(unknown.items(), key=lambda kv: -kv[1])])
        print(f"note: {plural(len(unknown), 'class', 'classes')} unknown to the checkpoint, "
              f"{plural(sum(unknown.values()), 'drawing')} dropped: {names} (all in {args.out}/summary.json)",
              file=sys.stderr)  # fmt: skip
    sk = s["skipped"]
    if sk["total"]:
        print(f"skipped {sk['total']} drawing(s): " + ", ".join(f"{r}: {k}" for r, k in sk["by_reason"].items() if k),
              file=sys.stderr)  # fmt: skip
    if s["data"].get("sample"):
        print(f"evaluated {s['data']['sample']['rule']}", file=sys.stderr)
    print(
        f"{plural(s['n_drawings'], 'drawing')}, {plural(len(cls['evaluated']), 'class', 'classes')}: top-1 {m['top1']:.4f}, top-3 {m['top3']:.4f}, "
        f"macro F1 {m['macro']['f1']:.4f}, NLL {m['nll']:.4f}, ECE {m['ece']:.4f} (15 equal-width bins), "
        f"temperature {s['temperature']:.3f}"
    )
    if s["top1_over_all_checkpoint_classes"] is not None:
        print(f"top-1 over all {len(s['checkpoint']['classes'])} checkpoint classes: "
              f"{s['top1_over_all_checkpoint_classes']:.4f}")  # fmt: skip
    eg = s["early_guessing"]
    if eg and "skipped" in eg:
        print(f"note: early-guessing curve skipped: {eg['skipped']}", file=sys.stderr)
    elif eg:
        pts, ttr = eg["points"], eg["time_to_recognition"]
        curve = ", ".join(
            f"{float(k):.0%} {v['top1']:.3f}" for k, v in pts.items() if k in ("0.1", "0.3", "0.5", "1.0")
        )
        strokes = " / ".join(f"{v['top1']:.3f}" for v in eg["strokes"].values())
        median = "-" if ttr["median_share"] is None else f"{ttr['median_share']:.0%}"
        print(f"early guessing on {eg['n_drawings']} drawings ({eg['seconds']:.1f}s): top-1 on the first points {curve}; "
              f"on the first 25/50/75/100% of strokes {strokes}; recognised for good after a median {median} "
              f"of points, never {ttr['never_recognised']:.1%}")  # fmt: skip
    print(f"wrote {args.out}/summary.json, {args.out}/report.html and {len(s['plots'])} plots "
          f"({s['seconds']:.1f}s, {s['drawings_per_second']:,.0f} drawings/s on {s['device']}, "
          f"{plural(torch.get_num_threads(), 'thread')})")  # fmt: skip
    return 0
