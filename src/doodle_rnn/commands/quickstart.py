"""`doodle quickstart`: the main job in one command."""

from __future__ import annotations

import argparse
import sys

HELP = "train on the bundled 10-animal drawings, evaluate and open the drawing page, in one go"
DESCRIPTION = (
    "Do what a new user came for, offline: prepare a cache from the real drawings bundled with the "
    "package (4,000 of each of the 10 animals), train with the shipped model's recipe for a few epochs "
    "(about a quarter of an hour on a 2-core CPU), evaluate (plots and report), print where everything "
    "is, and serve the drawing page with the trained model. --download fetches the official files "
    "instead (--classes, --max-per-class, --base-url, --full); --data-dir reads local ones. Re-running "
    "skips the steps whose outputs are complete."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from doodle_rnn.config import DEVICES
    from doodle_rnn.data.encode import ENCODINGS
    from doodle_rnn.quickstart import QuickstartConfig

    p.add_argument(
        "--workdir", default=QuickstartConfig.workdir, help="folder for data, cache, run and evaluation"
    )
    p.add_argument(
        "--classes",
        nargs="+",
        default=QuickstartConfig().classes,
        help="class names or presets (animals10, all)",
    )
    p.add_argument(
        "--max-per-class",
        type=int,
        default=QuickstartConfig.max_per_class,
        help="drawings per class to download and use",
    )
    p.add_argument("--full", action="store_true", help="use every drawing of each class (no per-class cap)")
    p.add_argument("--download", action="store_true",
                   help="download the official files instead of using the bundled drawings")  # fmt: skip
    p.add_argument("--data-dir", default=None, help="use local <class>.ndjson files instead")
    p.add_argument(
        "--base-url",
        default=None,
        help="download from this mirror instead of the official bucket (implies --download)",
    )
    p.add_argument("--prefix-prob", type=float, default=QuickstartConfig.prefix_prob,
                   help="share of training drawings cut to a random prefix, for early guesses (stroke3 only)")  # fmt: skip
    p.add_argument("--encoding", choices=ENCODINGS, default=QuickstartConfig.encoding, help="step encoding")
    p.add_argument(
        "--epochs",
        type=int,
        default=QuickstartConfig.epochs,
        help="training epochs (early stopping may end sooner)",
    )
    p.add_argument("--batch-size", type=int, default=QuickstartConfig.batch_size, help="training batch size")
    p.add_argument("--hidden-size", type=int, default=QuickstartConfig.hidden_size, help="GRU hidden size")
    p.add_argument("--num-layers", type=int, default=QuickstartConfig.num_layers, help="GRU layers")
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop training after this many steps (smoke runs)"
    )
    p.add_argument(
        "--patience", type=int, default=QuickstartConfig.patience, help="early-stopping patience in epochs"
    )
    p.add_argument("--device", default=QuickstartConfig.device, choices=DEVICES, help="training device")
    p.add_argument(
        "--seed", type=int, default=QuickstartConfig.seed, help="random seed (splits and training)"
    )
    p.add_argument("--jobs", type=int, default=QuickstartConfig.jobs, help="files prepared in parallel")
    p.add_argument("--no-serve", dest="serve", action="store_false", help="stop after evaluation")
    p.add_argument("--host", default=QuickstartConfig.host, help="address of the drawing page")
    p.add_argument("--port", type=int, default=QuickstartConfig.port, help="port of the drawing page")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from doodle_rnn.quickstart import QuickstartConfig, run_quickstart, serve

    cfg = QuickstartConfig(
        workdir=args.workdir, classes=args.classes, max_per_class=None if args.full else args.max_per_class,
        data_dir=args.data_dir, download=args.download, base_url=args.base_url, prefix_prob=args.prefix_prob, encoding=args.encoding, epochs=args.epochs,
        batch_size=args.batch_size, hidden_size=args.hidden_size, num_layers=args.num_layers,
        max_steps=args.max_steps, patience=args.patience, device=args.device, seed=args.seed, jobs=args.jobs,
        serve=args.serve, host=args.host, port=args.port, progress=args.progress and sys.stderr.isatty(),
    )  # fmt: skip
    out = run_quickstart(cfg)
    if cfg.serve:
        serve(out["checkpoint"], cfg.host, cfg.port)
    return 0
