"""`doodle predict`: classify every drawing of a file (or stdin) and print one JSON line each."""

from __future__ import annotations

import argparse

HELP = "classify drawings from an ndjson/csv/npz file or stdin; one JSON line per drawing"
DESCRIPTION = (
    "Classify every drawing of FILE (any supported format; '-' reads ndjson lines from stdin) with a "
    "checkpoint or exported ONNX model. Prints one JSON line per drawing: key_id, the true word when the "
    "file has one, and top: [[class, probability], ...]. When true words are present, a closing line "
    "gives top-1 and top-3 accuracy over the drawings whose word is one of the model's classes."
)
BATCH = 512  # drawings classified at once: bounded memory for any file size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        default="animals10",
        help="model: a shipped model's name (animals10), a .pt checkpoint or a .onnx file from `doodle export`",
    )
    p.add_argument(
        "file", metavar="FILE", help="drawings (.ndjson[.gz], .csv, .npz), or '-' for ndjson on stdin"
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
    from doodle_rnn.data.formats import DataFormatError, SkipReport, iter_drawings
    from doodle_rnn.inference import Classifier

    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, not {args.top_k}")
    try:
        clf = Classifier.load(args.checkpoint, backend=args.backend)
    except ValueError as exc:  # CheckpointError, InferenceError
        raise UserError(str(exc)) from exc
    report = SkipReport()
    try:
        drawings = (
            _stdin_drawings(args.strict, report)
            if args.file == "-"
            else iter_drawings(args.file, strict=args.strict, report=report)
        )
        known = set(clf.classes)
        hits1 = hits3 = scored = 0
        out = sys.stdout.buffer
        batch = []
        for d in _chained(drawings):
            batch.append(d)
            if len(batch) < BATCH and d is not None:
                continue
            items = [x for x in batch if x is not None]
            batch = []
            tops = clf.predict_many([x.strokes for x in items], max(args.top_k, 3)) if items else []
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
    except DataFormatError as exc:
        raise UserError(str(exc)) from exc
    if scored:
        summary = {"summary": True, "drawings": scored, "top1_accuracy": round(hits1 / scored, 6),
                   "top3_accuracy": round(hits3 / scored, 6)}  # fmt: skip
        out.write(orjson.dumps(summary) + b"\n")
    out.flush()
    for line in report.summary_lines():
        print(line, file=sys.stderr)
    return 0


def _chained(it):
    """The drawings, then a None that flushes the last batch."""
    yield from it
    yield None


def _stdin_drawings(strict: bool, report):
    """ndjson records from stdin, with the same checks and skip reporting as files."""
    import sys

    import orjson

    from doodle_rnn.data.drawing import Drawing
    from doodle_rnn.data.formats import DataFormatError, content_key, validate_strokes

    for lineno, raw in enumerate(sys.stdin.buffer, 1):
        if not raw.strip():
            continue
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            rec, why = None, "malformed JSON line"
        else:
            why = validate_strokes(rec.get("drawing")) if isinstance(rec, dict) else "no 'drawing' field"
        if why:
            if strict:
                raise DataFormatError(f"<stdin>:{lineno}: {why} (run without --strict to skip such records)")
            report.add("<stdin>", lineno, why)
            continue
        key = rec.get("key_id")
        yield Drawing(
            word=str(rec.get("word", "") or ""),
            key_id=str(key) if key not in (None, "") else content_key(orjson.dumps(rec["drawing"])),
            strokes=rec["drawing"],
        )
