"""`doodle train`: train the GRU classifier on a prepared cache (flags fill one TrainConfig)."""

from __future__ import annotations

import argparse

from doodle_rnn.config import BATCHINGS, DEVICES, SCHEDULERS, TrainConfig

HELP = "train the recurrent classifier on a prepared cache, with checkpoints, logs and --resume"
DESCRIPTION = (
    "Train the GRU classifier on a cache written by `doodle prepare`. Writes RUN_DIR/config.json, "
    "RUN_DIR/metrics.jsonl, RUN_DIR/best.pt (best validation loss) and RUN_DIR/last.pt (resumable with "
    "--resume). Runs under torchrun for data-parallel training: `torchrun --nproc_per_node N -m doodle_rnn train ...`."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="CACHE", help="cache folder from `doodle prepare`")
    p.add_argument(
        "--out", required=True, metavar="RUN_DIR", help="folder for checkpoints, config and metrics"
    )
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="maximum number of epochs")
    p.add_argument(
        "--batch-size", type=int, default=TrainConfig.batch_size, help="drawings per batch (per rank)"
    )
    p.add_argument(
        "--eval-batch-size",
        type=int,
        default=TrainConfig.eval_batch_size,
        help="drawings per validation batch",
    )
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak learning rate (AdamW)")
    p.add_argument(
        "--weight-decay",
        type=float,
        default=TrainConfig.weight_decay,
        help="AdamW weight decay on weight matrices",
    )
    p.add_argument(
        "--label-smoothing",
        type=float,
        default=TrainConfig.label_smoothing,
        help="label smoothing of the training loss",
    )
    p.add_argument(
        "--dropout",
        type=float,
        default=TrainConfig.dropout,
        help="dropout between GRU layers and before the classifier",
    )
    p.add_argument(
        "--grad-clip",
        type=float,
        default=TrainConfig.grad_clip,
        help="clip the gradient norm to this (0: off)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=TrainConfig.patience,
        help="stop after this many epochs without a better val loss",
    )
    p.add_argument("--scheduler", choices=SCHEDULERS, default=TrainConfig.scheduler,
                   help="plateau: halve the rate when val loss stalls; onecycle: one warm-up/anneal cycle")  # fmt: skip
    p.add_argument("--batching", choices=BATCHINGS, default=TrainConfig.batching,
                   help="random: batches drawn at random; bucket: similar lengths together (about 5%% faster on CPU, "
                   "learned much slower in our measurements)")  # fmt: skip
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=TrainConfig.augment,
                   help="random rotation, scale and jitter of training drawings")  # fmt: skip
    p.add_argument("--device", choices=DEVICES, default=TrainConfig.device,
                   help="auto picks CUDA, then MPS, then CPU")  # fmt: skip
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=TrainConfig.amp,
                   help="mixed precision: bf16 or fp16 autocast on CUDA; bf16 GRU matrix products on CPUs with AVX512-BF16/AMX where they measure >= 1.25x fp32 (checked at start)")  # fmt: skip
    p.add_argument(
        "--seed",
        type=int,
        default=TrainConfig.seed,
        help="seed of initialisation, batch order, augmentation, dropout",
    )
    p.add_argument("--resume", action="store_true", help="continue exactly from RUN_DIR/last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in RUN_DIR (without it, a RUN_DIR holding a run is refused)")  # fmt: skip
    p.add_argument("--init-from", metavar="CHECKPOINT", default=None,
                   help="start from this checkpoint's weights and model shape (a run's best.pt or last.pt, or a "
                   "shipped model's name; its classes must be the cache's) with a fresh optimiser and schedule: "
                   "a new learning-rate cycle on top of a finished run (the model flags are taken from it; ignored on --resume)")  # fmt: skip
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--val-max", type=int, default=TrainConfig.val_max, metavar="N",
                   help="validate each epoch on a fixed random subset of N val drawings (seeded by --seed: the "
                   "same every epoch and on --resume); 0: the whole split (default: %(default)s)")  # fmt: skip
    p.add_argument("--final-val", action=argparse.BooleanOptionalAction, default=TrainConfig.final_val,
                   help="after training, evaluate best.pt once on the whole val split (logged as kind "
                   "val_full in metrics.jsonl and stored in best.pt's metrics)")  # fmt: skip
    p.add_argument("--save-every-steps", type=int, default=None, metavar="N",
                   help="also write RUN_DIR/last.pt every N optimizer steps, so that --resume continues "
                   "mid-epoch exactly (default: at the end of each epoch only)")  # fmt: skip
    p.add_argument(
        "--grad-accum",
        type=int,
        default=TrainConfig.grad_accum,
        help="batches whose gradients are summed per step",
    )
    p.add_argument(
        "--hidden-size", type=int, default=TrainConfig.hidden_size, help="GRU hidden units per direction"
    )
    p.add_argument("--num-layers", type=int, default=TrainConfig.num_layers, help="stacked GRU layers")
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=TrainConfig.bidirectional,
                   help="read each drawing forwards and backwards")  # fmt: skip
    p.add_argument("--rnn", choices=("gru", "lstm"), default=TrainConfig.rnn, help="recurrent cell")
    p.add_argument("--conv-channels", type=int, nargs="*", default=list(TrainConfig.conv_channels), metavar="C",
                   help="output channels of 1-D convolutions in front of the GRU (none: the reference model)")  # fmt: skip
    p.add_argument(
        "--conv-kernel", type=int, default=TrainConfig.conv_kernel, help="width of those convolutions"
    )
    p.add_argument("--prefix-prob", type=float, default=TrainConfig.prefix_prob,
                   help="share of training drawings cut to a random prefix (first strokes or points, "
                   "re-normalised like a live capture) so the model guesses early; needs a stroke3 cache")  # fmt: skip
    p.add_argument(
        "--num-threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    p.add_argument(
        "--log-every", type=int, default=TrainConfig.log_every, help="print a batch line every N batches"
    )


def config_from_args(args: argparse.Namespace):
    from doodle_rnn.train import TrainConfig

    return TrainConfig.from_dict(vars(args))


def run(args: argparse.Namespace) -> int:
    from doodle_rnn.train import train

    train(config_from_args(args))
    return 0
