"""Would a steadier announcing rule call more drawings early at the same precision? A measurement.

The shipped rule (`early.first_announcements`): a drawing is called ("I know: it's a ...!") at the first
moment its calibrated top probability reaches the card's threshold, chosen on validation so that first
calls are right >= 95% (`early.choose_threshold`). A common alternative waits for the guess to hold: call
at a moment whose top probability reaches the threshold *and* whose top class was also the top class,
with probability >= `floor`, at the `confirm - 1` moments before it. A transient confident mistake is then
skipped, so the threshold may come down; but every call also waits `confirm - 1` moments longer.

This script measures that trade on equal footing with the shipped rule: the same drawings (every k-th of
a stroke3 cache's val and test splits, as `scripts/ship_model.py` picks val), the same moments (every 2% of
their points, sent as captures: `early.point_prefix_probabilities`), the threshold of each rule chosen on
val by the same scan as `choose_threshold` (`early.lowest_threshold`), then judged on test (`early.first_call_stats`). `confirm=1`
is the shipped rule, and the script checks it reproduces `choose_threshold`.

    python scripts/announce_rule_study.py --model quickdraw --data cache/w5k --max-drawings 5000

`--score margin` asks a second question with the same machinery: is the top probability the best
confidence to call on? It replaces it with the margin between the top two probabilities (also in [0, 1];
`margin_guesses`), so every rule and floor reads the margin; its confirm-1 row is then the shipped rule
with the margin for the probability.

`--per-class` asks a third: would a threshold per called class do better than one for all? Per-class
thresholds are fitted on half the val drawings (`fit_class_thresholds`) and judged on the other half and on
test, against the one threshold at the same held-out precision (`equal_precision_calls`). The output also
gives the ceiling of the shipped rule's form (`right_before_complete_ceiling`): the share of drawings whose
top class is right at the threshold at some moment before complete, the most a first-call rule on this
confidence and threshold could call right.

On the page a moment is one answer (asked every 250 ms while drawing and at each stroke's end): about
as many as the 50 moments of the 2% grid for a drawing of a few seconds, which is also what the shipped
threshold's choice assumes (`early.ANNOUNCE_PERCENTS`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def margin_guesses(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`early.top_guesses` with the top probability replaced by the top-two margin, p1 - p2 [S, N].

    A drawing torn between two classes (cup or mug) has a small margin even at a high top probability
    and a clear one a large margin; a moment with no step has margin 0."""
    from doodle_rnn.early import top_guesses

    p = np.nan_to_num(probs, nan=0.0)
    two = np.partition(p, p.shape[2] - 2, axis=2)[:, :, -2:]
    return two[:, :, 1] - two[:, :, 0], top_guesses(probs)[1]


def steady(top_p: np.ndarray, top_c: np.ndarray, confirm: int, floor: float) -> np.ndarray:
    """[S, N] moments whose top class was also the top class, at >= floor, at the confirm - 1 before."""
    ok = np.ones(top_p.shape, dtype=bool)
    for back in range(1, confirm):
        same = np.zeros(top_p.shape, dtype=bool)
        same[back:] = (top_c[back:] == top_c[:-back]) & (top_p[:-back] >= floor)
        ok &= same
    return ok


def first_steady_calls(
    top_p: np.ndarray, top_c: np.ndarray, ok: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """The shipped rule's `early.first_calls` over the moments `ok` allows (`steady`)."""
    from doodle_rnn.early import first_calls

    return first_calls(np.where(ok, top_p, 0.0), top_c, threshold)


def class_calls(
    top_p: np.ndarray, top_c: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The shipped rule's first calls with a threshold per called class: a moment counts where
    top_p >= thresholds[top_c]."""
    from doodle_rnn.early import first_calls

    return first_calls((top_p >= thresholds[top_c]).astype(np.float64), top_c, 1.0)


def fit_class_thresholds(
    top_p: np.ndarray, top_c: np.ndarray, labels: np.ndarray, start: float, grid: np.ndarray,
    weight: float, target: float, rounds: int = 2,
) -> np.ndarray:  # fmt: skip
    """Per-class thresholds by coordinate ascent from `start` for every class: each class in turn takes the
    `grid` value that maximises calls before complete - weight * (target * wrong - (1 - target) * right)
    over the drawings whose top class is that class at some moment (the only ones its threshold moves).
    The penalty is zero exactly where first calls are right `target` of the time, so a larger `weight`
    asks for more precision than `target` on the fitted drawings."""
    n_classes = int(max(top_c.max(), labels.max())) + 1
    thresholds = np.full(n_classes, float(start))
    last = top_p.shape[0] - 1
    for _ in range(rounds):
        for k in range(n_classes):
            d = np.flatnonzero((top_c == k).any(axis=0))
            if len(d) == 0:
                continue
            scores = []
            for g in grid:
                thresholds[k] = g
                first, cls = class_calls(top_p[:, d], top_c[:, d], thresholds)
                made, right = first >= 0, cls == labels[d]
                penalty = target * (made & ~right).sum() - (1 - target) * (made & right).sum()
                scores.append((made & (first < last)).sum() - weight * penalty)
            thresholds[k] = grid[int(np.argmax(scores))]
    return thresholds


def equal_precision_calls(top_p: np.ndarray, top_c: np.ndarray, labels: np.ndarray, precision: float) -> dict:
    """The one-threshold rule at the lowest threshold whose first calls are right >= `precision`."""
    from doodle_rnn.early import first_calls, lowest_threshold

    return lowest_threshold(lambda t: first_calls(top_p, top_c, t), labels, target=precision)


def per_class_study(val: tuple, test: tuple, threshold: float, target: float) -> list[dict]:
    """Per-class thresholds fitted on the even val drawings, judged on the odd ones and on test, each beside
    the one-threshold rule at the precision the per-class rule reached there."""
    from doodle_rnn.early import first_call_stats

    (vp, vc, vy), (tp, tc, ty) = val, test
    fit_half = np.arange(len(vy)) % 2 == 0
    grid = np.unique(np.minimum(threshold + np.array([-0.03, -0.015, 0.0, 0.01, 0.015]), 1.0))
    out = []
    for weight in (2.0, 5.0, 10.0):
        thr = fit_class_thresholds(
            vp[:, fit_half], vc[:, fit_half], vy[fit_half], threshold, grid, weight, target
        )
        row = {"weight": weight, "grid": grid.tolist(), "classes_moved": int((thr != threshold).sum())}
        for name, (p, c, y) in (("fit_half", (vp[:, fit_half], vc[:, fit_half], vy[fit_half])),
                                ("held_out_half", (vp[:, ~fit_half], vc[:, ~fit_half], vy[~fit_half])),
                                ("test", (tp, tc, ty))):  # fmt: skip
            stats = first_call_stats(*class_calls(p, c, thr), y, threshold)
            row[name] = stats
            if name != "fit_half":
                row[name + "_one_threshold"] = equal_precision_calls(p, c, y, stats["precision"])
        out.append(row)
    return out


def right_before_complete_ceiling(
    top_p: np.ndarray, top_c: np.ndarray, labels: np.ndarray, threshold: float
) -> float:
    """Share of drawings whose top class is right at >= threshold at some moment before their last."""
    return float(((top_p[:-1] >= threshold) & (top_c[:-1] == labels)).any(axis=0).mean())


def study(val: tuple, test: tuple, rules: list[tuple[int, float]], target: float) -> list[dict]:
    """Per rule (confirm, floor): its threshold chosen on val, and its first calls on val and test."""
    from doodle_rnn.early import first_call_stats, lowest_threshold

    (vp, vc, vy), (tp, tc, ty) = val, test
    out = []
    for confirm, floor in rules:
        v_ok, t_ok = steady(vp, vc, confirm, floor), steady(tp, tc, confirm, floor)
        on_val = lowest_threshold(lambda t, ok=v_ok: first_steady_calls(vp, vc, ok, t), vy, target=target)
        chosen = on_val["threshold"]
        on_test = first_call_stats(*first_steady_calls(tp, tc, t_ok, chosen), ty, chosen)
        out.append({"confirm": confirm, "floor": floor, "threshold": chosen, "val": on_val, "test": on_test})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="quickdraw", help="a shipped model's name or a checkpoint path")
    ap.add_argument("--data", required=True, help="the stroke3 cache the model was trained on")
    ap.add_argument("--max-drawings", type=int, default=5000, help="every k-th drawing of each split")
    ap.add_argument("--max-val-drawings", type=int, default=None,
                    help="every k-th val drawing up to this many (default: --max-drawings); more val drawings "
                         "give the per-class fit more to learn from")  # fmt: skip
    ap.add_argument("--target", type=float, default=0.95, help="first calls' precision on val")
    ap.add_argument("--num-threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the JSON here too")
    ap.add_argument("--score", choices=("top", "margin"), default="top",
                    help="confidence to call on: the top probability (the shipped rule's) or the margin "
                         "between the top two (margin_guesses)")  # fmt: skip
    ap.add_argument("--per-class", action="store_true",
                    help="also fit a threshold per called class on half of val (per_class_study)")  # fmt: skip
    args = ap.parse_args()

    from ship_model import val_strokes

    from doodle_rnn.early import choose_threshold, point_prefix_probabilities, top_guesses
    from doodle_rnn.inference import Classifier

    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
    clf = Classifier.load(args.model)
    t0 = time.perf_counter()
    splits = {}
    for split in ("val", "test"):
        strokes, labels, classes = val_strokes(args.data, split)
        if classes != list(clf.classes):
            raise SystemExit(f"{args.data}: its classes differ from the model's")
        most = args.max_val_drawings if split == "val" and args.max_val_drawings else args.max_drawings
        step = max(1, -(-len(labels) // most))
        probs = point_prefix_probabilities(clf, strokes[::step])
        splits[split] = (probs, labels[::step])
    rules = [(1, 0.0)] + [(k, f) for k in (2, 3, 4, 6, 8, 10, 12) for f in (0.0, 0.5, 0.7, 0.8, 0.9)]
    guesses = top_guesses if args.score == "top" else margin_guesses
    scored = [(*guesses(p), y) for p, y in splits.values()]
    rows = study(*scored, rules, args.target)
    if args.score == "top":  # with the top probability, confirm=1 is the shipped rule: the same choice
        shipped = choose_threshold(*splits["val"], target=args.target)
        if rows[0]["threshold"] != shipped["threshold"]:
            raise SystemExit(
                f"confirm=1 chose {rows[0]['threshold']}, choose_threshold {shipped['threshold']}"
            )
    result = {
        "model": args.model,
        "data": args.data,
        "n_drawings": {k: len(y) for k, (_, y) in splits.items()},
        "target_precision": args.target,
        "score": args.score,
        "seconds": round(time.perf_counter() - t0, 1),
        "rules": rows,
        "right_before_complete_ceiling": {
            split: right_before_complete_ceiling(*guess, rows[0]["threshold"])
            for split, guess in zip(splits, scored, strict=True)
        },
    }
    if args.per_class:
        result["per_class"] = per_class_study(*scored, rows[0]["threshold"], args.target)
        for r in result["per_class"]:
            for name in ("held_out_half", "test"):
                one, per = r[name + "_one_threshold"], r[name]
                print(f"per-class weight {r['weight']:g} on {name}: called {per['announced_before_complete']:.3f} "
                      f"right {per['precision']:.3f} | one threshold at that precision "
                      f"{one['threshold']:.3f}: called {one['announced_before_complete']:.3f} "
                      f"right {one['precision']:.3f}", file=sys.stderr)  # fmt: skip
    for r in sorted(rows, key=lambda r: r["val"]["announced_before_complete"]):
        v, t = r["val"], r["test"]
        print(f"confirm {r['confirm']:2d} floor {r['floor']:.1f} threshold {r['threshold']:.3f} | val called "
              f"{v['announced_before_complete']:.3f} right {v['precision']:.3f} | test called "
              f"{t['announced_before_complete']:.3f} right {t['precision']:.3f} median share "
              f"{t['median_share_of_points']}", file=sys.stderr)  # fmt: skip
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
