"""`doodle render`: drawings of a data file as PNG or SVG pictures."""

from __future__ import annotations

import argparse

HELP = "draw drawings of a data file (raw or simplified, any supported format) as PNG or SVG pictures"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a data file (.ndjson raw or simplified, .ndjson.gz, .npz, .csv)")
    p.add_argument("--key-id", nargs="+", dest="key_ids", default=None, metavar="ID",
                   help="render only the drawings with these key_ids")  # fmt: skip
    p.add_argument("--limit", type=int, default=20, help="render at most N drawings (ignored with --key-id)")
    p.add_argument("--out", required=True, help="folder for the pictures (<word>_<key_id>.<format>)")
    p.add_argument("--format", choices=["png", "svg"], default="png", help="picture format")
    p.add_argument("--size", type=int, default=256, help="PNG width and height in pixels")


def run(args: argparse.Namespace) -> int:
    from doodle_rnn.cli import UserError
    from doodle_rnn.render import render_file

    if args.limit < 1 or args.size < 16:
        raise UserError("--limit must be at least 1 and --size at least 16")
    written, missing = render_file(args.file, args.out, key_ids=args.key_ids,
                                   limit=None if args.key_ids else args.limit, fmt=args.format, size=args.size)  # fmt: skip
    print(f"wrote {len(written)} picture(s) to {args.out}")
    if missing:
        raise UserError(f"key_id(s) not found in {args.file}: {', '.join(missing)}")
    if not written:
        raise UserError(f"no drawings in {args.file}")
    return 0
