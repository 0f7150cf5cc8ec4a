"""`doodle lr-find`: a learning-rate range test with plots and a suggested rate."""

from __future__ import annotations

import argparse
import math

from doodle_rnn.config import DEVICES, LRFindConfig

HELP = "learning-rate range test: plots loss and gradient norm against the rate and suggests one"
DESCRIPTION = (
    "Train a fresh model for a few hundred batches while the learning rate grows exponentially, stop "
    "when the smoothed loss diverges, and write DIR/lr_find.png, DIR/grad_norm.png and DIR/lr_find.json "
    "with a suggested rate (steepest descent of the smoothed loss)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="CACHE", help="cache folder from `doodle prepare`")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the plots and lr_find.json")
    p.add_argument("--start-lr", type=float, default=LRFindConfig.start_lr, help="first learning rate")
    p.add_argument("--end-lr", type=float, default=LRFindConfig.end_lr, help="last learning rate")
    p.add_argument(
        "--num-iter", type=int, default=LRFindConfig.num_iter, help="batches over which the rate grows"
    )
    p.add_argument("--batch-size", type=int, default=LRFindConfig.batch_size, help="drawings per batch")
    p.add_argument("--weight-decay", type=float, default=LRFindConfig.weight_decay, help="AdamW weight decay")
    p.add_argument(
        "--label-smoothing",
        type=float,
        default=LRFindConfig.label_smoothing,
        help="label smoothing of the loss",
    )
    p.add_argument("--dropout", type=float, default=LRFindConfig.dropout, help="model dropout")
    p.add_argument(
        "--hidden-size", type=int, default=LRFindConfig.hidden_size, help="GRU hidden units per direction"
    )
    p.add_argument("--num-layers", type=int, default=LRFindConfig.num_layers, help="stacked GRU layers")
    p.add_argument("--rnn", choices=("gru", "lstm"), default=LRFindConfig.rnn, help="recurrent cell")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=LRFindConfig.augment,
        help="augment batches",
    )
    p.add_argument(
        "--diverge",
        type=float,
        default=LRFindConfig.diverge,
        help="stop when smoothed loss exceeds this x the best",
    )
    p.add_argument("--device", choices=DEVICES, default=LRFindConfig.device, help="where to run")
    p.add_argument(
        "--seed", type=int, default=LRFindConfig.seed, help="seed of initialisation and batch order"
    )
    p.add_argument("--num-threads", type=int, default=None, help="CPU threads for torch")


def run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from doodle_rnn.lr_find import LRFindConfig, lr_find

    names = {f.name for f in fields(LRFindConfig)}
    cfg = LRFindConfig(**{k: v for k, v in vars(args).items() if k in names})
    res = lr_find(cfg)
    print(
        f"suggested lr: {res['suggested_lr']:.2e} (smoothed loss lowest at {res['min_loss_lr']:.2e}; "
        f"{res['iterations']} batches, stop: {res['stop']}); plots in {args.out}/lr_find.png and grad_norm.png"
    )
    for line in advice(res["suggested_lr"], res["iterations"], args.data):
        print(line)
    return 0


def advice(lr: float, batches: int, data: str) -> list[str]:
    """How to use the suggestion, and when not to trust it over the recipe's default."""
    from doodle_rnn.config import TrainConfig

    default = TrainConfig.lr
    lines = [
        f"to use it: doodle train --data {data} --out RUN_DIR --lr {lr:.1e} (the default --lr is {default:g})"
    ]
    ratio = max(lr / default, default / lr) if lr > 0 else math.inf
    if ratio >= 10:
        lines.append(
            f"note: that is {ratio:.0f}x {'below' if lr < default else 'above'} the default, which the reference "
            f"recipe was tuned with; a range test on a fresh model is noisy (this one: {batches} batches). Check "
            f"that lr_find.png falls steadily before its suggestion, and compare both rates in short runs "
            f"(--max-steps 300, same --data) by their val_loss before a long run; if unsure, keep the default."
        )
    return lines
