"""`doodle train`: train the GRU classifier on a prepared cache (flags fill one TrainConfig)."""

from __future__ import annotations

import argparse

HELP = "train the recurrent classifier on a prepared cache, with checkpoints, logs and --resume"
DESCRIPTION = (
    "Train the GRU classifier on a cache written by `doodle prepare`. Writes RUN_DIR/config.json, "
    "RUN_DIR/metrics.jsonl, RUN_DIR/best.pt (best validation loss) and RUN_DIR/last.pt (resumable with "
    "--resume). Also runs under torchrun as `python -m doodle_rnn.train` for data-parallel training."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="CACHE", help="cache folder from `doodle prepare`")
    p.add_argument(
        "--out", required=True, metavar="RUN_DIR", help="folder for checkpoints, config and metrics"
    )
    p.add_argument("--epochs", type=int, default=15, help="maximum number of epochs")
    p.add_argument("--batch-size", type=int, default=192, help="drawings per batch (per rank)")
    p.add_argument("--eval-batch-size", type=int, default=512, help="drawings per validation batch")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay on weight matrices")
    p.add_argument("--label-smoothing", type=float, default=0.05, help="label smoothing of the training loss")
    p.add_argument(
        "--dropout", type=float, default=0.2, help="dropout between GRU layers and before the classifier"
    )
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (0: off)")
    p.add_argument(
        "--patience", type=int, default=4, help="stop after this many epochs without a better val loss"
    )
    p.add_argument("--scheduler", choices=("plateau", "onecycle"), default="plateau",
                   help="plateau: halve the rate when val loss stalls; onecycle: one warm-up/anneal cycle")  # fmt: skip
    p.add_argument("--batching", choices=("random", "bucket"), default="random",
                   help="random: batches drawn at random; bucket: similar lengths together (faster on CPU, "
                   "learned much slower in our measurements)")  # fmt: skip
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random rotation, scale and jitter of training drawings")  # fmt: skip
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="auto picks CUDA, then MPS, then CPU")  # fmt: skip
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision: bf16 or fp16 autocast on CUDA; bf16 GRU matrix products on CPUs with AVX512-BF16/AMX")  # fmt: skip
    p.add_argument(
        "--seed", type=int, default=42, help="seed of initialisation, batch order, augmentation, dropout"
    )
    p.add_argument("--resume", action="store_true", help="continue exactly from RUN_DIR/last.pt")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--grad-accum", type=int, default=1, help="batches whose gradients are summed per step")
    p.add_argument("--hidden-size", type=int, default=192, help="GRU hidden units per direction")
    p.add_argument("--num-layers", type=int, default=2, help="stacked GRU layers")
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True,
                   help="read each drawing forwards and backwards")  # fmt: skip
    p.add_argument("--rnn", choices=("gru", "lstm"), default="gru", help="recurrent cell")
    p.add_argument(
        "--num-threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    p.add_argument("--log-every", type=int, default=50, help="print a batch line every N batches")


def config_from_args(args: argparse.Namespace):
    from doodle_rnn.train import TrainConfig

    return TrainConfig.from_dict(vars(args))


def run(args: argparse.Namespace) -> int:
    from doodle_rnn.checkpoint import CheckpointError
    from doodle_rnn.cli import UserError
    from doodle_rnn.train import TrainError, train

    try:
        train(config_from_args(args))
    except (TrainError, CheckpointError) as exc:
        raise UserError(str(exc)) from exc
    return 0
