"""`doodle export`: checkpoint -> ONNX (dynamic batch and length), parity-checked before it is kept."""

from __future__ import annotations

import argparse

HELP = "export a checkpoint to ONNX (verified against torch), or the drawing page as a static site (--web)"
DESCRIPTION = (
    "--onnx OUT: write the model of a checkpoint as an ONNX graph that takes padded x [B, T, 3] and "
    "lengths [B] (dynamic batch and length) and returns logits, with classes, encoding, length rules and "
    "temperature in its metadata, so `doodle serve` and `Classifier.load` can run it with ONNX Runtime "
    "alone. The export is checked against torch on drawings of mixed lengths and refused if any logit "
    "differs by more than --tolerance. --quantize int8 also writes dynamically quantised weights (smaller; "
    "check its accuracy with `doodle predict`: it is not the default). "
    "--web DIR: write the drawing page as a static site that recognises in the browser with no server "
    "(ONNX Runtime Web, float16 weights): `python -m http.server -d DIR` or any static host serves it; "
    "every --checkpoint given is offered (default: the shipped models), the first is the default."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        nargs="+",
        metavar="NAME_OR_PATH",
        help="the .pt checkpoint (or shipped model's name, animals10) to export; --web takes several, "
        ".onnx files too (default for --web: every shipped model)",
    )
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--onnx", metavar="OUT", help="the .onnx file to write")
    out.add_argument("--web", metavar="DIR", help="the folder to write the static site to")
    p.add_argument("--precision", choices=("fp16", "fp32"), default="fp16",
                   help="--web: weights stored as float16 (half the download; computed in float32) or float32")  # fmt: skip
    p.add_argument("--ort-dir", metavar="DIR",
                   help="--web: onnxruntime-web's dist folder (default: node_modules/ from scripts/install.sh)")  # fmt: skip
    p.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="int8: dynamic int8 weight quantisation of the written file")  # fmt: skip
    p.add_argument(
        "--tolerance", type=float, default=1e-4, help="largest allowed |logit difference| vs torch"
    )
    p.add_argument("--check-drawings", type=int, default=64,
                   help="synthetic drawings (mixed lengths) used for the parity check")  # fmt: skip
    p.add_argument("--num-threads", type=int, default=1,
                   help="CPU threads for torch and ONNX Runtime (the parity check is small: 1 is fastest)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.web:
        return _run_web(args)
    return _run_onnx(args)


def _run_web(args: argparse.Namespace) -> int:
    import json

    from doodle_rnn.server.models import shipped_on_disk
    from doodle_rnn.web import export_site

    specs = args.checkpoint or list(shipped_on_disk())
    result = export_site(args.web, specs, args.precision, args.ort_dir)
    print(json.dumps(result))
    print(f"serve it with: python -m http.server -d {args.web}  (then open http://localhost:8000/)")
    return 0


def _run_onnx(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from doodle_rnn.checkpoint import load_checkpoint
    from doodle_rnn.cli import UserError
    from doodle_rnn.data.encode import LengthRules, encode_batch
    from doodle_rnn.data.synthetic import generate
    from doodle_rnn.export import export_onnx, quantize_int8, verify_parity
    from doodle_rnn.tensors import pad_features
    from doodle_rnn.threads import use_threads

    out = Path(args.onnx)
    if args.num_threads < 1:
        raise UserError("--num-threads must be at least 1")
    use_threads(args.num_threads, args.check_drawings)
    if out.suffix.lower() != ".onnx":
        raise UserError(f"--onnx {out}: the output name must end in .onnx")
    if not args.checkpoint or len(args.checkpoint) != 1:
        raise UserError("--onnx exports one model: give exactly one --checkpoint")
    ckpt = load_checkpoint(args.checkpoint[0])
    export_onnx(ckpt, out)
    # Parity on drawings of mixed lengths in batches of 16 (padding must not change any logit).
    strokes = [d.strokes for d in generate(max(args.check_drawings, 2), seed=7)]
    steps, lengths, _ = encode_batch(strokes, ckpt["encoding"], LengthRules(1, LengthRules().max_len))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    batches = []
    for s in range(0, len(lengths), 16):
        idx = range(s, min(s + 16, len(lengths)))
        batches.append(
            pad_features(
                np.concatenate([steps[offsets[i] : offsets[i + 1]] for i in idx]), lengths[s : s + 16]
            )
        )
    diff = verify_parity(ckpt, out, batches)
    if diff > args.tolerance:
        out.unlink(missing_ok=True)
        raise UserError(
            f"ONNX logits differ from torch by {diff:.3g} > --tolerance {args.tolerance}; nothing written"
        )
    result = {"onnx": str(out), "bytes": out.stat().st_size, "max_abs_logit_diff": diff}
    if args.quantize == "int8":
        q = quantize_int8(out, out)
        result.update(quantization="int8-dynamic", bytes_int8=q.stat().st_size)
    print(json.dumps(result))
    return 0
