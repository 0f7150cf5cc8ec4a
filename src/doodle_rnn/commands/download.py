"""`doodle download`: fetch the official per-class ndjson files (thin over data.sources)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from doodle_rnn.data.sources import DEFAULT_BASE_URL, FORMATS

HELP = "download the official Quick, Draw! per-class ndjson files (resumable, retried, parallel)"
DESCRIPTION = (
    "Download <base>/<format>/<word>.ndjson for each class into OUT/<word>.ndjson. Partial files are "
    "kept as OUT/.<word>.ndjson.part and resumed with an HTTP Range request; complete files are "
    "skipped on a re-run. Exit code 0 when every class is on disk, 1 when some failed, 2 on a bad flag "
    "or class name."
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--classes",
        nargs="+",
        default=["animals10"],
        metavar="NAME",
        help="presets 'animals10' or 'all', or official class names (quote names with spaces: 'hot dog')",
    )
    parser.add_argument("--format", choices=FORMATS, default="simplified", help="which official variant")
    parser.add_argument("--out", type=Path, required=True, help="folder that receives <word>.ndjson")
    parser.add_argument(
        "--base-url", default=DEFAULT_BASE_URL, help="mirror root holding simplified/ and raw/ folders"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--max-per-class",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stop each file after N complete drawings (lines), for a quick trial; unset: whole files",
    )
    size.add_argument(
        "--full",
        action="store_true",
        help="whole files (the default, said explicitly): with --classes all, about 50 million drawings, "
        "about 22 GB of simplified ndjson (estimated from the shared sample's ~420 bytes a line); "
        "streamed to disk a chunk at a time and resumable",
    )
    parser.add_argument("--jobs", type=_positive_int, default=4, help="files downloaded in parallel")
    parser.add_argument(
        "--retries",
        type=_non_negative_int,
        default=5,
        help="retries in a row without progress before a class is given up",
    )
    parser.add_argument(
        "--retry-delay",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="first wait before a retry; doubles on each further retry (max 60 s)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="socket timeout in seconds")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args: argparse.Namespace) -> int:
    from doodle_rnn.cli import UserError
    from doodle_rnn.data.sources import download_classes

    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} exists and is not a folder")
    report = download_classes(
        args.classes,
        args.out,
        fmt=args.format,
        base_url=args.base_url,
        max_per_class=args.max_per_class,
        jobs=args.jobs,
        retries=args.retries,
        progress=not args.no_progress,
        retry_delay=args.retry_delay,
        timeout=args.timeout,
    )

    for r in report.results:
        if r.ok:
            lines = f"{r.lines:>9,} lines" if r.lines is not None else " " * 15
            cap = f"  (capped at {r.capped_at:,})" if r.capped_at is not None else ""
            print(f"{r.status:<10} {r.bytes:>13,} bytes {lines}  {r.path}{cap}")
    print(report.summary(), file=sys.stderr if report.failed else sys.stdout)
    return 0 if report.ok else 1
