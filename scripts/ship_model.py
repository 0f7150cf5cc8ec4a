"""Turn a trained run into a shipped model: calibrate, choose the announcement threshold, test, card, copy.

    python scripts/ship_model.py --checkpoint runs/animals10/best.pt --data cache/animals10 \
        --name animals10 --out src/doodle_rnn/models/animals10.pt --eval-out runs/animals10/eval-test \
        --command "doodle prepare ..." --command "doodle train ..."

Steps, each the library's own function (the same `doodle calibrate` / `doodle eval` run):
1. temperature scaling on the validation split (`calibrate.calibrate_checkpoint`);
2. the announcement threshold on the validation split, replayed at 2%, 4%, ... of each drawing's
   points through the capture path (`early.choose_threshold`: first announcements right >= 95%);
3. `doodle eval` on the test split (never tuned on): metrics, plots, report, and the threshold's first calls
   on the early-guessing drawings (replayed at every 2% of their points);
4. a `card` in the checkpoint (name, test metrics, threshold, how it was made), training state dropped.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def val_strokes(cache_dir: str, split: str) -> tuple[list, np.ndarray, list[str]]:
    """A stroke3 cache's drawings of one split as strokes (exact up to a shift, which normalising removes)."""
    from doodle_rnn.data.cache import DoodleCache
    from doodle_rnn.data.encode import batch_strokes

    cache = DoodleCache(cache_dir)
    if cache.encoding != "stroke3":
        raise SystemExit(f"{cache_dir}: the threshold replay needs a stroke3 cache, not {cache.encoding}")
    idx = cache.split_indices(split)
    strokes = batch_strokes(*cache.batch_steps(idx), "stroke3")
    return strokes, cache.labels[idx].astype(np.int64), list(cache.classes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True, help="the stroke3 cache the model was trained on")
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--eval-out", required=True, help="folder for the test-split evaluation")
    ap.add_argument("--command", action="append", default=[], help="a command that made the model (repeat)")
    ap.add_argument("--note", default="", help="one line on data and machine for the card")
    ap.add_argument("--data-name", default="animals5k", help="the shared folder the cache was prepared from")
    ap.add_argument("--num-threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument(
        "--max-val", type=int, default=None, help="replay only this many val drawings (smoke runs)"
    )
    args = ap.parse_args()

    from doodle_rnn.calibrate import calibrate_checkpoint
    from doodle_rnn.checkpoint import load_checkpoint, save_checkpoint
    from doodle_rnn.early import choose_threshold, point_prefix_probabilities
    from doodle_rnn.evaluate import run_evaluation
    from doodle_rnn.inference import Classifier

    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        calibrated = Path(tmp) / "calibrated.pt"
        cal = calibrate_checkpoint(args.checkpoint, [args.data], calibrated, split="val")
        print(f"temperature {cal['after']['temperature']:.3f} (val NLL {cal['before']['nll']:.4f} -> "
              f"{cal['after']['nll']:.4f})", flush=True)  # fmt: skip
        ckpt = load_checkpoint(calibrated)

        clf = Classifier.from_checkpoint(ckpt)
        strokes, labels, classes = val_strokes(args.data, "val")
        if args.max_val is not None:  # every k-th drawing, so every class is in
            step = max(1, -(-len(labels) // args.max_val))
            strokes, labels = strokes[::step], labels[::step]
        if classes != list(ckpt["classes"]):
            raise SystemExit("the cache's classes differ from the checkpoint's")
        probs = point_prefix_probabilities(clf, strokes)
        announce = choose_threshold(probs, labels)
        print(f"announce threshold {announce['threshold']:.3f}: {json.dumps(announce)}", flush=True)
        # the threshold goes into the file evaluated, so the test split's early-guessing section also
        # reports how its first calls fare there (`evaluate.early_guessing_of`)
        ckpt["card"] = {"name": args.name, "announce_threshold": announce["threshold"]}
        save_checkpoint(ckpt, calibrated)

        summary = run_evaluation(
            calibrated, [args.data], args.eval_out, split="test", num_threads=args.num_threads
        )
        m = summary["metrics"]
        print(f"test top-1 {m['top1']:.4f} top-3 {m['top3']:.4f} nll {m['nll']:.4f} ece {m['ece']:.4f} "
              f"on {summary['n_drawings']} drawings", flush=True)  # fmt: skip

    ckpt.pop("train_state", None)
    ckpt["card"] = {
        "name": args.name,
        "announce_threshold": announce["threshold"],
        "announcement": {**announce, "split": "val", "n_drawings": len(labels)},
        "test": {
            "top1": m["top1"], "top3": m["top3"], "nll": m["nll"], "ece": m["ece"],
            "n_drawings": summary["n_drawings"],
            "data": f"real Quick, Draw! drawings: test split of `doodle prepare` (defaults) on {args.data_name}",
            "early_guessing": summary.get("early_guessing"),
        },
        "validation": ckpt.get("metrics", {}),
        "made_by": args.command,
        "note": args.note,
        "licence": "weights trained on the Quick, Draw! dataset by Google Creative Lab, CC BY 4.0",
    }  # fmt: skip
    save_checkpoint(ckpt, args.out)
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out} ({size / 1e6:.1f} MB) in {time.perf_counter() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
