"""The pictures, as PNG files. The evaluation's: confusion matrix, per-class accuracy, reliability
diagram, confidence histogram, a grid of example drawings for the most confused pairs, the early-guessing
curve; and lr-find's loss and gradient norm against the learning rate.

Figures are built with `matplotlib.figure.Figure` directly (no pyplot): no global backend state, nothing
opens a window, and it works on a headless server. Every plot is laid out to stay readable from
10 classes up to all 345 (large class lists show the most relevant part and say so in the title).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

DPI = 110
MAX_MATRIX_CLASSES = 30
MAX_BARS = 60


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def confusion_subset(cm: np.ndarray, max_classes: int = MAX_MATRIX_CLASSES) -> np.ndarray:
    """Indices of the classes to show: all when few; else the classes of the most confused pairs.

    Pairs are taken by count (ties: by the share of the true class), and both classes of each pair are
    added until `max_classes` are chosen, in the order found: the big confusions are then cells of the
    sub-matrix (not lost to classes outside it) and sit near its diagonal.
    """
    cm = np.asarray(cm)
    n = len(cm)
    if n <= max_classes:
        return np.arange(n)
    off = cm.astype(np.float64).copy()
    np.fill_diagonal(off, 0)
    rate = off / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    t, p = np.nonzero(off)
    order = np.lexsort((p, t, -rate[t, p], -off[t, p]))
    chosen: list[int] = []
    for i in order:
        for c in (int(t[i]), int(p[i])):
            if c not in chosen and len(chosen) < max_classes:
                chosen.append(c)
        if len(chosen) >= max_classes:
            break
    if len(chosen) < max_classes:  # few confusions: fill with the least accurate classes
        acc = np.diag(cm) / np.maximum(cm.sum(axis=1), 1)
        chosen += [int(c) for c in np.argsort(acc, kind="stable") if c not in chosen][
            : max_classes - len(chosen)
        ]
    return np.array(chosen, dtype=np.int64)


def plot_confusion_matrix(cm: Sequence, classes: Sequence[str], path: Path,
                          max_classes: int = MAX_MATRIX_CLASSES) -> Path:  # fmt: skip
    """Row-normalised confusion matrix (each row: where that class's drawings went), names on both axes."""
    from matplotlib.ticker import PercentFormatter

    cm = np.asarray(cm, dtype=np.float64)
    rate = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    sel = confusion_subset(cm, max_classes)
    sub = rate[np.ix_(sel, sel)]
    names = [classes[i] for i in sel]
    n = len(sel)
    side = max(5.5, 0.34 * n + 3.0)
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    im = ax.imshow(sub, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(
        range(n), names, rotation=60, ha="right", rotation_mode="anchor", fontsize=9 if n <= 15 else 7
    )
    ax.set_yticks(range(n), names, fontsize=9 if n <= 15 else 7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 30:  # values in the cells while they still fit
        for i in range(n):
            for j in range(n):
                v = sub[i, j]
                if v >= 0.005:
                    ax.text(j, i, f"{v * 100:.0f}", ha="center", va="center", fontsize=8 if n <= 20 else 6.5,
                            color="white" if v > 0.55 else "black")  # fmt: skip
    title = "Confusion matrix (row-normalised, % of each true class)"
    if n < len(classes):
        title = (f"Confusion matrix: {n} of {len(classes)} classes, those of the most confused pairs\n"
                 "(row-normalised over all predictions, % of each true class; rows need not sum to 100)")  # fmt: skip
    ax.set_title(title, fontsize=11)
    fig.colorbar(im, ax=ax, shrink=0.8, format=PercentFormatter(1.0))
    return _save(fig, path)


def plot_per_class_accuracy(per_class: dict, path: Path, max_bars: int = MAX_BARS) -> Path:
    """Per-class accuracy, sorted, as horizontal bars (the worst and best classes when there are many)."""
    # ties: more drawings first among the lowest (a 0% class with 10 drawings says more than one with 1)
    ranked = sorted(
        (v["accuracy"], -v["support"], name) for name, v in per_class.items() if v["accuracy"] is not None
    )
    items = [(a, name, -neg) for a, neg, name in ranked]
    mean = float(np.mean([a for a, _, _ in items])) if items else 0.0
    if len(items) <= max_bars:
        panels = [("", items)]
    else:
        half = max_bars // 2
        low, high = items[:half], sorted(items[-half:], key=lambda it: (it[0], it[2], it[1]))
        tied = sum(1 for a, _, _ in items if a == low[-1][0])
        note = (
            f"\n({tied} classes at {low[-1][0]:.0%}; those with the most drawings shown)"
            if tied > half
            else ""
        )
        panels = [(f"{half} lowest{note}", low), (f"{half} highest", high)]
    rows = max(len(p[1]) for p in panels)
    many = len(panels) > 1
    fig = _figure(6.5 * len(panels) + (4.0 if many else 0), max(3.0, 0.24 * rows + 1.6))
    axes = fig.subplots(
        1, len(panels) + many, squeeze=False, width_ratios=[6.5] * len(panels) + [4.0] * many
    )[0]
    if many:  # how the accuracies of all classes are spread
        ax = axes[-1]
        ax.hist([a for a, _, _ in items], bins=np.linspace(0, 1, 21), color="gray", edgecolor="black", lw=0.6)
        ax.axvline(mean, color="black", ls="--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel("accuracy")
        ax.set_ylabel("classes")
        ax.set_title(f"all {len(items)} classes", fontsize=10)
    for ax, (label, part) in zip(axes, panels, strict=False):
        acc = [a for a, _, _ in part]
        y = np.arange(len(part))
        colors = ["#d62728" if a < mean else "#1f77b4" for a in acc]
        ax.barh(y, acc, color=colors, height=0.75)
        ax.set_yticks(y, [f"{name} (n={n})" for _, name, n in part], fontsize=8)
        for yi, a in zip(y, acc, strict=True):  # the value beside the bar, or inside it when the bar is long
            inside = a > 0.88
            ax.text(a - 0.01 if inside else a + 0.01, yi, f"{a:.0%}", va="center", fontsize=7,
                    ha="right" if inside else "left", color="white" if inside else "black",
                    bbox=None if inside else {"facecolor": "white", "edgecolor": "none", "pad": 0.5})  # fmt: skip
        ax.axvline(mean, color="black", ls="--", lw=1, label=f"mean over classes {mean:.1%}")
        ax.set_xlim(0, 1.0)
        ax.set_ylim(-0.6, len(part) - 0.4)
        ax.set_xlabel("accuracy (share of the class's drawings predicted correctly)")
        ax.legend(loc="lower right", fontsize=8)
        if label:
            ax.set_title(label, fontsize=10)
    fig.suptitle(f"Per-class accuracy, sorted ({len(items)} classes)", fontsize=11)
    return _save(fig, path)


def plot_reliability(bins: Sequence[dict], ece: float, path: Path) -> Path:
    """Reliability diagram: accuracy vs mean confidence per bin, the diagonal, counts, ECE in the title."""
    fig = _figure(6.5, 6.5)
    ax, axc = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    width = bins[0]["hi"] - bins[0]["lo"]
    lo = np.array([b["lo"] for b in bins])
    count = np.array([b["count"] for b in bins])
    acc = np.array([b["accuracy"] if b["accuracy"] is not None else np.nan for b in bins])
    conf = np.array([b["confidence"] if b["confidence"] is not None else np.nan for b in bins])
    has = count > 0
    ax.bar(lo[has], acc[has], width=width, align="edge", color="#1f77b4", edgecolor="black", lw=0.6,
           label="accuracy in bin")  # fmt: skip
    gap_lo = np.minimum(acc, conf)[has]
    ax.bar(lo[has], np.abs(conf - acc)[has], bottom=gap_lo, width=width, align="edge", color="none",
           edgecolor="#d62728", hatch="///", lw=0.8, label="gap to the bin's mean confidence")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="perfect calibration")
    top = np.fmax(acc, conf)  # counts above the taller of the two bars, clear of the hatching
    for x, t, c in zip(lo[has], top[has], count[has], strict=True):
        ax.text(x + width / 2, min(t + 0.01, 1.01), str(c), ha="center", va="bottom", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"Reliability diagram: ECE = {ece:.3f}\n({len(bins)} equal-width confidence bins; numbers: drawings per bin)",
                 fontsize=11)  # fmt: skip
    axc.bar(lo, count, width=width, align="edge", color="gray", edgecolor="black", lw=0.6)
    axc.set_ylabel("drawings")
    axc.set_xlabel("confidence (top-1 probability)")
    return _save(fig, path)


def plot_confidence_histogram(conf: np.ndarray, correct: np.ndarray, path: Path, n_bins: int = 30) -> Path:
    """How sure the model is when it is right and when it is wrong."""
    from matplotlib.ticker import MaxNLocator

    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    edges = np.linspace(0, 1, n_bins + 1)
    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot()
    for mask, color, name in ((correct, "#2ca02c", "correct"), (~correct, "#d62728", "wrong")):
        n = int(mask.sum())
        mean = f", mean confidence {conf[mask].mean():.2f}" if n else ""
        ax.hist(conf[mask], bins=edges, color=color, alpha=0.3, label=f"{name}: {n}{mean}")
        ax.hist(conf[mask], bins=edges, color=color, histtype="step", lw=1.8)
    ax.set_xlim(0, 1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("drawings")
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(f"Confidence of correct and wrong predictions ({len(conf)} drawings)", fontsize=11)
    return _save(fig, path)


def plot_confused_pairs(pairs: Sequence[dict], path: Path) -> Path:
    """One row per confused pair (true -> predicted), its most confident mistakes drawn as the model saw them."""
    from doodle_rnn.render import draw_strokes

    pairs = [p for p in pairs if p.get("examples")]
    if not pairs:
        fig = _figure(6, 1.5)
        fig.text(0.5, 0.5, "No confusions: every drawing was predicted correctly.", ha="center", va="center")
        return _save(fig, path)
    cols = max(len(p["examples"]) for p in pairs)
    fig = _figure(1.9 * cols + 1.6, 2.15 * len(pairs) + 0.6)
    axes = fig.subplots(len(pairs), cols, squeeze=False)
    for r, pair in enumerate(pairs):
        for c in range(cols):
            ax = axes[r, c]
            if c >= len(pair["examples"]):
                ax.set_axis_off()
                continue
            ex = pair["examples"][c]
            draw_strokes(ax, ex["strokes"], line_width=1.2)
            ax.set_title(f"true: {pair['true']}\npred: {pair['predicted']} ({ex['confidence']:.0%})",
                         fontsize=7.5, color="#b00000")  # fmt: skip
        axes[r, 0].set_ylabel(f"{pair['true']}\n→ {pair['predicted']}\n{pair['count']}× ({pair['rate']:.0%})",
                              fontsize=8.5, rotation=0, ha="right", va="center")  # fmt: skip
    fig.suptitle(
        "Most confused pairs: their most confident mistakes (drawn from the model's input)", fontsize=11
    )
    return _save(fig, path)


def plot_early_guessing(early: dict, path: Path) -> Path:
    """Top-1 / top-3 against the share of each drawing shown (points; strokes as markers), and how many
    drawings are recognised for good by each share of their points."""
    fig = _figure(11.0, 4.6)
    ax, axr = fig.subplots(1, 2, width_ratios=[3, 2])
    for name, color in (("top1", "#1f77b4"), ("top3", "#2ca02c")):
        label = "top-1" if name == "top1" else "top-3"
        pts = sorted((float(k), v[name]) for k, v in early["points"].items())
        ax.plot([p for p, _ in pts], [v for _, v in pts], "-o", color=color, lw=1.8, ms=4,
                label=f"{label}, first share of points")  # fmt: skip
        sts = sorted((float(k), v[name]) for k, v in early["strokes"].items())
        ax.plot([p for p, _ in sts], [v for _, v in sts], "s--", color=color, lw=1, ms=7, mfc="white",
                label=f"{label}, first share of strokes")  # fmt: skip
        for p, v in pts if name == "top1" else []:
            ax.annotate(
                f"{v:.0%}", (p, v), textcoords="offset points", xytext=(0, -13), ha="center", fontsize=7
            )
    _shares_axes(ax, "share of each drawing shown (points or strokes, in drawing order)", "accuracy")
    ax.set_title(
        f"Early guessing ({early['n_drawings']:,} drawings, each prefix sent as a capture)", fontsize=11
    )
    ttr = early["time_to_recognition"]
    by = sorted((float(k), v) for k, v in ttr["recognised_by"].items())
    axr.step([0] + [p for p, _ in by], [0] + [v for _, v in by], where="post", color="#9467bd", lw=1.8)
    if ttr["median_share"] is not None:
        axr.axvline(ttr["median_share"], color="black", ls="--", lw=1,
                    label=f"median over recognised: {ttr['median_share']:.0%} of points")  # fmt: skip
    axr.axhline(1 - ttr["never_recognised"], color="#d62728", ls=":", lw=1,
                label=f"recognised at 100%: {1 - ttr['never_recognised']:.1%} (never: {ttr['never_recognised']:.1%})")  # fmt: skip
    _shares_axes(axr, "share of points drawn", "drawings recognised for good")
    axr.set_title("Time to recognition (right from here to the end)", fontsize=11)
    return _save(fig, path)


def _shares_axes(ax, xlabel: str, ylabel: str) -> None:
    """Both axes 0-100% (shares of a drawing, accuracies), grid and legend: the early-guessing panels."""
    from matplotlib.ticker import PercentFormatter

    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="lower right", fontsize=8)


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], suggested: float,
                 path: Path) -> Path:  # fmt: skip
    """`doodle lr-find`: training loss (raw and smoothed) against the learning rate, with the suggestion."""
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    ax.plot(lrs, losses, color="0.8", lw=0.8, label="loss")
    ax.plot(lrs, smoothed, color="C0", label="smoothed loss")
    ax.axvline(suggested, color="C3", ls="--", label=f"suggested {suggested:.2e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="LR range test")
    top = smoothed[0] * 1.5 if len(smoothed) else 1
    ax.set_ylim(min(losses) * 0.9 if len(losses) else 0, max(top, min(losses) * 1.1 if len(losses) else 1))
    ax.legend()
    return _save(fig, path)


def plot_grad_norm(lrs: Sequence[float], norms: Sequence[float], path: Path) -> Path:
    """`doodle lr-find`: the gradient norm (before clipping) against the learning rate."""
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    ax.plot(lrs, norms, color="C2")
    ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="gradient norm (before clipping)",
           title="Gradient norm during the LR range test")  # fmt: skip
    return _save(fig, path)


def write_all(
    out: Path, metrics: dict, conf: np.ndarray, correct: np.ndarray, pairs: Sequence[dict]
) -> dict[str, Path]:
    """Write every plot of the report into `out`; returns name -> path (in report order)."""
    out = Path(out)
    return {
        "confusion_matrix": plot_confusion_matrix(
            metrics["confusion_matrix"], metrics["classes"], out / "confusion_matrix.png"
        ),
        "per_class_accuracy": plot_per_class_accuracy(metrics["per_class"], out / "per_class_accuracy.png"),
        "reliability": plot_reliability(metrics["reliability_bins"], metrics["ece"], out / "reliability.png"),
        "confidence_histogram": plot_confidence_histogram(conf, correct, out / "confidence_histogram.png"),
        "confused_pairs": plot_confused_pairs(pairs, out / "confused_pairs.png"),
    }
