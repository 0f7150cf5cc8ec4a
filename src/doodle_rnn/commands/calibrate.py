"""`doodle calibrate`: fit a temperature on held-out data and write a calibrated checkpoint copy."""

from __future__ import annotations

import argparse
import sys

HELP = "fit a softmax temperature on held-out data (minimising NLL) and save it in a checkpoint copy"
DESCRIPTION = (
    "Temperature scaling: divide the logits by one number T fitted on held-out data so that the predicted "
    "probabilities match how often the model is right. Predictions do not change. Prints NLL and ECE before "
    "and after, and writes a copy of the checkpoint carrying T (and the numbers, under metrics.calibration)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint file (.pt) to calibrate, or a shipped model's name (animals10)",
    )
    p.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="a prepared cache folder (use held-out data), or data files/folders")  # fmt: skip
    p.add_argument("--split", choices=["train", "val", "test", "all"], default=None,
                   help="split of a prepared cache to fit on (default: val; fitting on test would leak into the test numbers)")  # fmt: skip
    p.add_argument("--out", required=True, help="checkpoint file to write (the calibrated copy)")
    p.add_argument("--batch-size", type=int, default=1024, help="drawings per forward pass")
    p.add_argument(
        "--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"
    )
    p.add_argument("--max-drawings", type=int, default=200_000,
                   help="fit on a fixed random sample of at most this many drawings (memory: N x classes floats)")  # fmt: skip
    p.add_argument("--num-threads", type=int, default=None,
                   help="CPU threads for torch (default: 1 for up to 50,000 drawings, else torch's choice)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from doodle_rnn.calibrate import calibrate_checkpoint
    from doodle_rnn.cli import UserError
    from doodle_rnn.evaluate import is_cache

    if args.max_drawings < 2:
        raise UserError("--max-drawings must be at least 2")
    if args.num_threads is not None and args.num_threads < 1:
        raise UserError("--num-threads must be at least 1")
    split = args.split
    if split is None and len(args.data) == 1 and is_cache(args.data[0]):
        split = "val"
    if split == "test":
        print(
            "warning: fitting the temperature on the test split makes later test numbers optimistic",
            file=sys.stderr,
        )
    c = calibrate_checkpoint(args.checkpoint, args.data, args.out, split=split, batch_size=args.batch_size,
                             device=args.device, max_drawings=args.max_drawings,
                             num_threads=args.num_threads)  # fmt: skip
    b, a = c["before"], c["after"]
    import torch

    from doodle_rnn.text import plural

    print(f"fitted on {plural(c['n_drawings'], 'drawing')} ({c['split']}, {plural(torch.get_num_threads(), 'thread')}); "
          "ECE over 15 equal-width bins")  # fmt: skip
    print(f"before: temperature {b['temperature']:.4f}  NLL {b['nll']:.4f}  ECE {b['ece']:.4f}")
    print(f"after:  temperature {a['temperature']:.4f}  NLL {a['nll']:.4f}  ECE {a['ece']:.4f}")
    print(f"wrote {args.out}")
    return 0
