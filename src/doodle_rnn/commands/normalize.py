"""`doodle normalize`: raw (or any) drawing files -> Google-simplified ndjson, other fields kept."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "convert raw captures (x, y, t) to Google's simplified ndjson form, keeping every other field"
DESCRIPTION = (
    "Read drawing files (official raw or simplified ndjson, or any other supported format), turn every "
    "drawing into Google's simplified form (aligned, scaled to 0..255, resampled at 1 px, RDP epsilon 2, "
    "integer coordinates; already simplified drawings pass unchanged) and write OUT/<same file name> as "
    "ndjson with the official key order. Bad records are skipped and counted, or stop the run with --strict."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs", nargs="+", metavar="IN", help="drawing files or folders (.ndjson, .ndjson.gz, ...)"
    )
    p.add_argument(
        "--out", required=True, help="folder to write the simplified files into (created if missing)"
    )
    p.add_argument(
        "--strict", action="store_true", help="stop at the first bad record instead of skipping it"
    )


def output_name(path: Path) -> str:
    """Same file name for ndjson inputs (gzip kept); other formats get a `.ndjson` name."""
    name = path.name
    if name.endswith((".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")):
        return name
    return f"{path.stem}.ndjson"


def run(args: argparse.Namespace) -> int:
    import gzip
    import os

    import orjson

    from doodle_rnn.cli import UserError
    from doodle_rnn.data.formats import SkipReport, iter_drawings, list_data_files
    from doodle_rnn.data.normalize import normalize_drawings

    files = list_data_files(args.inputs)
    out_dir = Path(args.out)
    targets = [out_dir / output_name(f) for f in files]
    for src, dst in zip(files, targets, strict=True):
        if dst.exists() and dst.resolve() == src.resolve():
            raise UserError(f"{dst} would overwrite its own input; choose another --out folder")
    if len(set(targets)) != len(targets):
        raise UserError(
            "two inputs share a file name and would write the same output; normalise them separately"
        )
    out_dir.mkdir(parents=True, exist_ok=True)

    report = SkipReport()
    total = 0
    for src, dst in zip(files, targets, strict=True):
        tmp = dst.with_name(f".{dst.name}.tmp")
        opener = gzip.open if dst.name.endswith(".gz") else open
        n = 0
        try:
            with opener(tmp, "wb") as f:
                for d in normalize_drawings(iter_drawings(src, strict=args.strict, report=report)):
                    f.write(orjson.dumps(d.to_ndjson_dict()))
                    f.write(b"\n")
                    n += 1
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        total += n
        print(f"{src} -> {dst}: {n} drawing(s)")
    for line in report.summary_lines():
        print(line, file=sys.stderr)
    print(f"normalised {total} drawing(s) from {len(files)} file(s) into {out_dir} ({report.total} skipped)")
    return 0
