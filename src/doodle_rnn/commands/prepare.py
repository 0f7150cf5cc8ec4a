"""`doodle prepare`: files of any supported format -> one memory-mapped training cache."""

from __future__ import annotations

import argparse
import os
import sys

HELP = "read drawings (ndjson, raw, npz, csv), normalise, encode and write a memory-mapped cache"
DESCRIPTION = (
    "Read drawings from files or folders in any supported format, normalise raw captures to Google's "
    "simplified form, encode them as [dx, dy, pen_lift] steps and write one memory-mapped cache with "
    "stable, key_id-hashed train/val/test splits. Memory stays under ~1 GB whatever the input size; the "
    "work happens in the hidden folder .OUT.tmp beside OUT, and a run that was killed resumes from the "
    "input files it had finished when the same command is run again."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from doodle_rnn.data.cache import PrepareConfig as C
    from doodle_rnn.data.encode import ENCODINGS

    p.add_argument("--data", nargs="+", required=True, metavar="PATH", help="data files or folders")
    p.add_argument("--out", required=True, help="cache folder to write (replaced atomically if it exists)")
    p.add_argument(
        "--classes", nargs="+", default=None, help="keep only these classes (or preset animals10/all)"
    )
    p.add_argument("--max-per-class", type=int, default=None, help="keep at most N drawings per class")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--recognized-only", dest="recognized_only", action="store_true", default=C.recognized_only,
                   help="keep only drawings the game recognised (the default)")  # fmt: skip
    g.add_argument(
        "--all", dest="recognized_only", action="store_false", help="keep unrecognised drawings too"
    )
    p.add_argument("--val-frac", type=float, default=C.val_frac, help="fraction of each class for validation")
    p.add_argument("--test-frac", type=float, default=C.test_frac, help="fraction of each class for test")
    p.add_argument("--encoding", choices=ENCODINGS, default=C.encoding, help="step encoding")
    p.add_argument("--min-len", type=int, default=C.min_len, help="drop drawings with fewer steps")
    p.add_argument("--max-len", type=int, default=C.max_len, help="keep at most this many steps")
    p.add_argument("--seed", type=int, default=C.seed, help="salt of the key_id hash that assigns splits")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="files prepared in parallel")
    p.add_argument(
        "--strict", action="store_true", help="stop at the first bad record instead of skipping it"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from doodle_rnn.categories import resolve_classes
    from doodle_rnn.data.cache import PrepareConfig, prepare_cache
    from doodle_rnn.data.formats import SkipReport
    from doodle_rnn.text import plural

    classes = resolve_classes(args.classes) if args.classes else None
    cfg = PrepareConfig(
        inputs=args.data, out=args.out, classes=classes, max_per_class=args.max_per_class,
        recognized_only=args.recognized_only, val_frac=args.val_frac, test_frac=args.test_frac,
        encoding=args.encoding, min_len=args.min_len, max_len=args.max_len, seed=args.seed,
        jobs=args.jobs, strict=args.strict, progress=args.progress and sys.stderr.isatty(),
    )  # fmt: skip
    m = prepare_cache(cfg)
    for note in m.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    if m.get("resumed_files"):
        print(f"resumed: reused {plural(m['resumed_files'], 'input file')} finished by an interrupted run",
              file=sys.stderr)  # fmt: skip
    skipped = m["skipped"]
    rep = SkipReport()
    for path, info in skipped["files"].items():
        for reason, k in info["counts"].items():
            rep.counts[path][reason] += k
        rep.examples[path] = info["examples"]
    for line in rep.summary_lines():
        print(line, file=sys.stderr)
    if m.get("missing_classes"):
        print(f"warning: no drawings of the requested class(es) {', '.join(m['missing_classes'])} in the "
              f"inputs; the cache holds {plural(len(m['classes']), 'class', 'classes')} without them",
              file=sys.stderr)  # fmt: skip
    sc = m["split_counts"]
    rate = m["n_drawings"] / max(m["seconds"], 1e-9)
    print(
        f"wrote {args.out}: {plural(m['n_drawings'], 'drawing')} of {plural(len(m['classes']), 'class', 'classes')} "
        f"(train {sc['train']}, val {sc['val']}, test {sc['test']}), {m['n_steps']} steps, encoding {m['encoding']}; "
        f"dropped {m['dropped']}; skipped {skipped['total']} bad records; {m['seconds']:.1f}s ({rate:,.0f} drawings/s)"
    )
    return 0
