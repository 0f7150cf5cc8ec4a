"""`doodle <command>`: a thin layer; every command lives in `doodle_rnn.commands.<name>`.

Each command module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Command modules import their heavy dependencies inside `run`, so `doodle --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from doodle_rnn import __version__
from doodle_rnn.errors import DoodleError

COMMANDS = [
    "download",
    "prepare",
    "normalize",
    "train",
    "lr_find",
    "eval",
    "calibrate",
    "render",
    "predict",
    "export",
    "import_reference",
    "serve",
    "quickstart",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show `(default: X)` only where it informs: a value the flag takes when it is not given.

    Left out: required flags, defaults of None (the help says what absence means), switches without a
    value (`--no-progress` is on when given; its stored default True read as "no progress by default"),
    and help that already states its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or "(default" in text or action.required:
            return text
        if action.default is None or action.default is argparse.SUPPRESS:
            return text
        if action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction):
            return text  # store_true / store_false / store_const / count switches
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="doodle",
        description="Recognise Quick, Draw! doodles from pen strokes with a recurrent network.",
    )
    parser.add_argument("--version", action="version", version=f"doodle-rnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"doodle_rnn.commands.{name}")
        except ModuleNotFoundError as exc:  # a command still being built must not break the others
            if exc.name == f"doodle_rnn.commands.{name}":
                continue
            raise
        p = sub.add_parser(
            name.replace("_", "-"),
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            formatter_class=HelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except DoodleError as exc:  # every error a user can fix, from a command or the library: mapped here once
        print(f"error: {exc}", file=sys.stderr)
        return 2


class UserError(DoodleError):
    """A bad flag or argument that a command finds itself; printed like any other DoodleError."""


if __name__ == "__main__":
    sys.exit(main())
