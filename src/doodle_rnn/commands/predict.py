"""`doodle predict`: classify every drawing of some files (or stdin) and print one JSON line each."""

from __future__ import annotations

import argparse

HELP = "classify drawings from ndjson/csv/npz files or stdin; one JSON line per drawing"
DESCRIPTION = (
    "Classify every drawing of each FILE in turn (any supported format, or a folder of them; '-' reads "
    "ndjson lines from stdin) with a checkpoint or exported ONNX model. Prints one JSON line per drawing: "
    "key_id, the true word when the file has one, and top: [[class, probability], ...]. When true words "
    "are present, a closing line gives top-1 and top-3 accuracy over all the drawings whose word is one "
    "of the model's classes."
)
BATCH = 512  # drawings classified at once: bounded memory for any file size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        default="animals10",
        help="model: a shipped model's name (animals10), a .pt checkpoint or a .onnx file from `doodle export`",
    )
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="drawings (.ndjson[.gz], .csv, .npz, or a folder of them), or '-' for ndjson on stdin",
    )
    p.add_argument("--top-k", type=int, default=3, help="how many classes to print per drawing")
    p.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto",
                   help="inference engine (auto: ONNX Runtime when installed)")  # fmt: skip
    p.add_argument(
        "--strict", action="store_true", help="stop at the first bad record instead of skipping it"
    )


def run(args: argparse.Namespace) -> int:
    import sys

    import orjson

    from doodle_rnn.cli import UserError
    from doodle_rnn.data.formats import SkipReport
    from doodle_rnn.inference import Classifier

    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, not {args.top_k}")
    if args.files.count("-") > 1:
        raise UserError("'-' (stdin) can be given only once")
    # library errors (bad checkpoint, unreadable file) are DoodleErrors: cli.py prints them
    clf = Classifier.load(args.checkpoint, backend=args.backend)
    sources = _sources(args.files)  # every file is checked before the first line is printed
    report = SkipReport()
    known = set(clf.classes)
    hits1 = hits3 = scored = 0
    out = sys.stdout.buffer
    for items in _batches(_drawings(sources, args.strict, report)):
        tops = clf.predict_many([x.strokes for x in items], max(args.top_k, 3))
        for item, top in zip(items, tops, strict=True):
            rec: dict = {"key_id": item.key_id}
            if item.word:
                rec["word"] = item.word
            rec["top"] = [[c, round(p, 6)] for c, p in top[: args.top_k]]
            out.write(orjson.dumps(rec) + b"\n")
            if item.word and item.word in known:
                scored += 1
                names = [c for c, _ in top]
                hits1 += bool(names[:1] == [item.word])
                hits3 += item.word in names[:3]
    if scored:
        summary = {"summary": True, "drawings": scored, "top1_accuracy": round(hits1 / scored, 6),
                   "top3_accuracy": round(hits3 / scored, 6)}  # fmt: skip
        out.write(orjson.dumps(summary) + b"\n")
    out.flush()
    for line in report.summary_lines():
        print(line, file=sys.stderr)
    return 0


def _sources(files: list[str]) -> list:
    """The inputs in order: '-' as is, folders expanded into their data files."""
    from doodle_rnn.data.formats import list_data_files

    return [x for f in files for x in (["-"] if f == "-" else list_data_files([f]))]


def _drawings(sources: list, strict: bool, report):
    """Every drawing of every source in turn; stdin goes through the same ndjson reader as files."""
    import sys

    from doodle_rnn.data.formats import iter_drawings, iter_ndjson_lines

    for src in sources:
        if src == "-":
            yield from iter_ndjson_lines(sys.stdin.buffer, "<stdin>", strict=strict, report=report)
        else:
            yield from iter_drawings(src, strict=strict, report=report)


def _batches(drawings):
    """The drawings in lists of at most BATCH (bounded memory for any input size)."""
    batch = []
    for d in drawings:
        batch.append(d)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
