"""`report.html`: one self-contained page with the evaluation's numbers and pictures.

Images are embedded as base64 data URLs and the style sheet is inline, so the file can be mailed,
archived or opened offline and still shows everything. All text coming from data (class names, paths)
is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.name, th.name { text-align: left; }
tr.low td { background: #fff1f0; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.note { color: #666; font-size: 0.85em; } code { background: #f6f6f6; padding: 0 3px; }
"""

_TITLES = {
    "confusion_matrix": "Confusion matrix",
    "per_class_accuracy": "Per-class accuracy",
    "reliability": "Reliability diagram",
    "confidence_histogram": "Confidence of correct and wrong predictions",
    "confused_pairs": "Most confused pairs, with examples",
    "early_guessing": "Early guessing: accuracy on the beginning of each drawing",
}


def _e(x: object) -> str:
    return html.escape(str(x))


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.1f}%"


def _f(x: float | None, nd: int = 3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def embed_png(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def _table(
    header: list[str], rows: list[list[str]], name_cols: int = 1, row_class: list[str] | None = None
) -> str:
    th = "".join(
        f'<th class="name">{_e(h)}</th>' if i < name_cols else f"<th>{_e(h)}</th>"
        for i, h in enumerate(header)
    )
    body = []
    for k, r in enumerate(rows):
        cls = f' class="{row_class[k]}"' if row_class and row_class[k] else ""
        tds = "".join(
            f'<td class="name">{c}</td>' if i < name_cols else f"<td>{c}</td>" for i, c in enumerate(r)
        )
        body.append(f"<tr{cls}>{tds}</tr>")
    head = f"<thead><tr>{th}</tr></thead>" if any(header) else ""
    return f"<table>{head}<tbody>{''.join(body)}</tbody></table>"


def _early_tables(eg: dict) -> str:
    """The early-guessing numbers beside their plot: both curves, time to recognition, how it was measured."""
    pts = [
        [_e(f"first {float(k):.0%} of points"), _pct(v["top1"]), _pct(v["top3"])]
        for k, v in eg["points"].items()
    ]
    sts = [
        [_e(f"first {float(k):.0%} of strokes"), _pct(v["top1"]), _pct(v["top3"])]
        for k, v in eg["strokes"].items()
    ]
    ttr = eg["time_to_recognition"]
    median = "–" if ttr["median_share"] is None else f"{ttr['median_share']:.0%} of its points"
    facts = [
        ["drawings measured", f"{eg['n_drawings']:,} of {eg['drawings_available']:,}"],
        ["median time to recognition (recognised drawings)", median],
        ["never recognised (wrong on the whole drawing)", _pct(ttr["never_recognised"])],
        ["whole drawing normalised again, as a capture: top-1 / top-3",
         f"{_pct(eg['full_as_capture']['top1'])} / {_pct(eg['full_as_capture']['top3'])}"],
        ["plain eval top-1 on the same drawings", _pct(eg["plain_eval_top1_same_drawings"])],
        ["strokes from", _e(", ".join(f"{k}: {v:,}" for k, v in eg["strokes_from"].items()))],
        ["time", _e(f"{eg['seconds']} s for {eg['prefixes_predicted']:,} prefixes ({eg['backend']})")],
    ]  # fmt: skip
    ann = eg.get("announcement")
    if ann:  # a shipped model's "I know" threshold, replayed at every 2% of the points
        facts.append([f"calls at the model card threshold {ann['threshold']:.3f}: at all / before the last point",
                      f"{_pct(ann['announced'])} / {_pct(ann['announced_before_complete'])}"])  # fmt: skip
        facts.append(["first calls right", _pct(ann["precision"])])
    return (
        _table(["prefix", "top-1", "top-3"], sts + pts)
        + _table(["", ""], [[_e(a), b] for a, b in facts], name_cols=2)
        + f"<p class='note'>{_e(eg['rule'])}. Time to recognition: {_e(ttr['rule'])}.</p>"
    )


def render_html(summary: dict, images: dict[str, Path]) -> str:
    m = summary["metrics"]
    ck = summary["checkpoint"]
    data = summary["data"]
    cls = summary["classes"]
    overview = [
        ["drawings evaluated", f"{summary['n_drawings']:,}"],
        ["classes evaluated", str(len(cls["evaluated"]))],
        ["top-1 accuracy", _pct(m["top1"])],
        ["top-3 accuracy", _pct(m["top3"])],
        ["macro precision", _pct(m["macro"]["precision"])],
        ["macro recall (mean per-class accuracy)", _pct(m["macro"]["recall"])],
        ["macro F1", _pct(m["macro"]["f1"])],
        ["negative log-likelihood (mean, nats)", _f(m["nll"], 4)],
        ["expected calibration error (15 equal-width bins)", _f(m["ece"], 4)],
        ["temperature applied", _f(summary["temperature"], 4)],
        ["drawings skipped", f"{summary['skipped']['total']:,}"],
    ]
    if summary.get("top1_over_all_checkpoint_classes") is not None:
        overview.insert(
            3, ["top-1 over all checkpoint classes", _pct(summary["top1_over_all_checkpoint_classes"])]
        )
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>doodle-rnn evaluation: {_e(Path(ck['path']).name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Evaluation of <code>{_e(Path(ck['path']).name)}</code></h1>",
        _table(["metric", "value"], [[_e(a), _e(b)] for a, b in overview]),
        f"<p class='note'>{_e(m['ece_rule'])}. {_e(cls['probabilities'])}.</p>",
    ]
    if cls["checkpoint_classes_without_data"] or cls["data_classes_not_in_checkpoint"]:
        parts.append("<h2>Class lists</h2><p>")
        if cls["checkpoint_classes_without_data"]:
            parts.append(
                f"Checkpoint classes without data (left out): {_e(', '.join(cls['checkpoint_classes_without_data']))}.<br>"
            )
        if cls["data_classes_not_in_checkpoint"]:
            dropped = ", ".join(f"{k} ({v})" for k, v in cls["data_classes_not_in_checkpoint"].items())
            parts.append(f"Data classes the checkpoint does not know (drawings dropped): {_e(dropped)}.")
        parts.append("</p>")
    for key, path in images.items():
        parts.append(f"<h2>{_e(_TITLES.get(key, key))}</h2><img alt='{_e(key)}' src='{embed_png(path)}'>")
        if key == "early_guessing":
            parts.append(_early_tables(summary["early_guessing"]))
    eg = summary.get("early_guessing")
    if eg and "skipped" in eg:
        parts.append(f"<h2>{_e(_TITLES['early_guessing'])}</h2><p>Not measured: {_e(eg['skipped'])}.</p>")
    pc = m["per_class"]
    ranked = sorted(pc.items(), key=lambda kv: (kv[1]["accuracy"] is None, kv[1]["accuracy"] or 0.0))
    macro_acc = m["macro"]["accuracy"] or 0.0
    rows = [
        [_e(name), f"{v['support']:,}", f"{v['predicted']:,}", _pct(v["accuracy"]), _pct(v["precision"]),
         _pct(v["recall"]), _pct(v["f1"])]
        for name, v in ranked
    ]  # fmt: skip
    low = ["low" if v["accuracy"] is not None and v["accuracy"] < macro_acc else "" for _, v in ranked]
    parts.append("<h2>Per-class metrics (lowest accuracy first)</h2>")
    parts.append(
        _table(
            ["class", "drawings", "predicted", "accuracy", "precision", "recall", "F1"], rows, row_class=low
        )
    )
    if m["most_confused"]:
        parts.append("<h2>Most confused pairs</h2>")
        parts.append(_table(
            ["true class", "predicted as", "drawings", "share of true class"],
            [[_e(p["true"]), _e(p["predicted"]), str(p["count"]), _pct(p["rate"])] for p in m["most_confused"]],
            name_cols=2,
        ))  # fmt: skip
    sk = summary["skipped"]
    parts.append("<h2>Drawings not evaluated</h2>")
    if sk["total"]:
        parts.append(_table(["reason", "drawings"], [[_e(r), f"{k:,}"] for r, k in sk["by_reason"].items()]))
        if sk["examples"]:
            parts.append("<p class='note'>" + "<br>".join(_e(x) for x in sk["examples"]) + "</p>")
    else:
        parts.append("<p>None.</p>")
    if sk.get("at_prepare") and sk["at_prepare"]["by_reason"]:
        parts.append(f"<p>{_e(sk['at_prepare']['note'].capitalize())}:</p>")
        parts.append(
            _table(
                ["reason", "drawings"], [[_e(r), f"{k:,}"] for r, k in sk["at_prepare"]["by_reason"].items()]
            )
        )
    parts.append("<h2>What was evaluated</h2>")
    ident = [
        ["checkpoint", _e(ck["path"])],
        ["sha256", f"<code>{_e(ck['sha256'])}</code>"],
        [
            "encoding",
            _e(f"{ck['encoding']} v{ck.get('encoding_version')}, length rules {ck['length_rules']}"),
        ],
        ["model", _e(ck.get("model_config", {}))],
    ]
    if data["kind"] == "cache":
        ident += [
            ["data (cache)", _e(data["path"])],
            ["split", _e(data["split"])],
            ["cache drawings per split", _e(data.get("split_counts"))],
            ["cache created", _e(data.get("created"))],
        ]
    else:
        files = data["files"]
        shown = ", ".join(Path(f["path"]).name for f in files[:20]) + (
            f", … ({len(files)} files)" if len(files) > 20 else ""
        )
        ident += [["data (files)", _e(shown)], ["split", _e(data["split"])]]
    if data.get("sample"):
        ident.append(["evaluated", _e(data["sample"]["rule"])])
    ident.append(
        [
            "device, time",
            _e(
                f"{summary['device']}, {summary['seconds']} s ({summary['drawings_per_second']:,} drawings/s)"
            ),
        ]
    )
    parts.append(_table(["", ""], ident, name_cols=2))
    parts.append("<p class='note'>All numbers are also in summary.json beside this page.</p></body></html>")
    return "\n".join(parts)
