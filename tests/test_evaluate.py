"""Evaluation: metrics against hand-computed cases, and `doodle eval` end to end as a real subprocess.

The tiny model is trained here for a few seconds on synthetic doodles (the trainer is not used), saved
as a real checkpoint, and evaluated on a real cache and real files.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from doodle_rnn.checkpoint import build_model, load_checkpoint, make_checkpoint, save_checkpoint
from doodle_rnn.data.cache import DoodleCache, PrepareConfig, prepare_cache
from doodle_rnn.data.encode import steps_to_features
from doodle_rnn.data.synthetic import write_ndjson_per_class
from doodle_rnn.evaluate import compute_metrics, ece_bin_of, most_confused_pairs
from doodle_rnn.model import GRUClassifier, ModelConfig
from doodle_rnn.tensors import iterate_cache

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw"
PLOTS = ["confusion_matrix", "per_class_accuracy", "reliability", "confidence_histogram", "confused_pairs",
         "early_guessing"]  # fmt: skip


def doodle(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "doodle_rnn", *args], capture_output=True, text=True, timeout=300
    )


def train_tiny(cache: DoodleCache, epochs: int = 8, seed: int = 0) -> GRUClassifier:
    """A small GRU fitted for a few epochs: good enough to make varied, checkable predictions."""
    torch.manual_seed(seed)
    model = GRUClassifier(
        ModelConfig(num_classes=len(cache.classes), hidden_size=32, num_layers=1, dropout=0.0)
    )
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    model.train()
    for ep in range(epochs):
        for _, x, lengths, y in iterate_cache(cache, cache.split_indices("train"), 32, shuffle=True, seed=ep):
            loss = torch.nn.functional.cross_entropy(model(x, lengths), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    write_ndjson_per_class(root / "files", 480, seed=1)
    prepare_cache(PrepareConfig(inputs=[str(root / "files")], out=str(root / "cache"), val_frac=0.2,
                                test_frac=0.2, encoding="stroke3", progress=False))  # fmt: skip
    cache = DoodleCache(root / "cache")
    model = train_tiny(cache)
    ckpt = root / "tiny.pt"
    save_checkpoint(make_checkpoint(model, cache.classes, cache.encoding, cache.length_rules.to_dict()), ckpt)
    return {"root": root, "files": root / "files", "cache": root / "cache", "ckpt": ckpt}


def independent_top1(ckpt_path: Path, cache: DoodleCache, rows: np.ndarray) -> tuple[int, int]:
    """Correct predictions counted one drawing at a time, without the evaluate module."""
    model = build_model(load_checkpoint(ckpt_path))
    correct = 0
    with torch.no_grad():
        for i in rows.tolist():
            x = torch.from_numpy(steps_to_features(cache.steps_of(i)))[None]
            logits = model(x, torch.tensor([x.shape[1]]))
            correct += int(logits.argmax(1).item() == int(cache.labels[i]))
    return correct, len(rows)


# ------------------------------------------------------------------------------ hand-computed metrics
def probs_for(preds: list[int], n_classes: int, top: float) -> np.ndarray:
    p = np.full((len(preds), n_classes), (1 - top) / (n_classes - 1))
    p[np.arange(len(preds)), preds] = top
    return p


def test_three_class_confusion_precision_recall_f1_nll_by_hand():
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    preds = [0, 0, 1, 1, 2, 2, 2, 0, 0]
    m = compute_metrics(probs_for(preds, 3, 0.7), np.array(labels), ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [2, 0, 2]]
    pc = m["per_class"]
    # precision = diagonal / column sum (4, 2, 3); recall = diagonal / row sum (3, 2, 4)
    assert pc["a"]["precision"] == pytest.approx(2 / 4) and pc["a"]["recall"] == pytest.approx(2 / 3)
    assert pc["b"]["precision"] == pytest.approx(1 / 2) and pc["b"]["recall"] == pytest.approx(1 / 2)
    assert pc["c"]["precision"] == pytest.approx(2 / 3) and pc["c"]["recall"] == pytest.approx(2 / 4)
    assert pc["a"]["f1"] == pytest.approx(4 / 7) and pc["b"]["f1"] == pytest.approx(0.5)
    assert pc["c"]["f1"] == pytest.approx(4 / 7)
    assert pc["c"]["accuracy"] == pc["c"]["recall"] and pc["c"]["support"] == 4 and pc["c"]["predicted"] == 3
    assert m["macro"]["f1"] == pytest.approx((4 / 7 + 0.5 + 4 / 7) / 3)
    assert m["macro"]["precision"] == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)
    assert m["top1"] == pytest.approx(5 / 9) and m["n_drawings"] == 9
    assert m["nll"] == pytest.approx((5 * -math.log(0.7) + 4 * -math.log(0.15)) / 9)
    # every confidence is 0.7 -> one bin [10/15, 11/15): ECE = |5/9 - 0.7|
    assert m["ece"] == pytest.approx(abs(5 / 9 - 0.7))
    assert m["reliability_bins"][10]["count"] == 9 and sum(b["count"] for b in m["reliability_bins"]) == 9
    assert len(m["reliability_bins"]) == 15
    assert m["most_confused"][0] == {"true": "c", "predicted": "a", "count": 2, "rate": 0.5}


def test_ece_by_hand_over_three_bins():
    # confidences 0.95 (right), 0.95 (wrong), 0.55 (right), 0.30 (wrong), 0.32 (right); 4 classes
    conf = [0.95, 0.95, 0.55, 0.30, 0.32]
    labels = np.array([0, 1, 2, 3, 1])
    preds = [0, 0, 2, 0, 1]
    probs = np.stack([probs_for([p], 4, c)[0] for p, c in zip(preds, conf, strict=True)])
    m = compute_metrics(probs, labels, ["w", "x", "y", "z"])
    assert ece_bin_of(np.array(conf)).tolist() == [14, 14, 8, 4, 4]
    # bin 14: 2 drawings, acc 0.5, conf 0.95; bin 8: 1, acc 1, conf 0.55; bin 4: 2, acc 0.5, conf 0.31
    by_hand = (2 * abs(0.5 - 0.95) + 1 * abs(1 - 0.55) + 2 * abs(0.5 - 0.31)) / 5
    assert by_hand == pytest.approx(0.346)
    assert m["ece"] == pytest.approx(by_hand)
    b4 = m["reliability_bins"][4]
    assert b4["count"] == 2 and b4["accuracy"] == 0.5 and b4["confidence"] == pytest.approx(0.31)
    assert ece_bin_of(np.array([0.0, 1.0, 1 / 15 - 1e-9]), 15).tolist() == [0, 14, 0]


def test_top3_and_a_class_without_drawings():
    # the true class is ranked 1st, 2nd, 3rd and 4th in turn
    probs = np.array([[0.4, 0.3, 0.2, 0.1], [0.3, 0.4, 0.2, 0.1], [0.2, 0.3, 0.4, 0.1], [0.1, 0.2, 0.3, 0.4]])
    m = compute_metrics(probs, np.array([0, 0, 0, 0]), ["p", "q", "r", "s"])
    assert m["top1"] == pytest.approx(0.25) and m["top3"] == pytest.approx(0.75)
    # only class p has drawings: the others have no recall/F1 and stay out of the macro averages
    assert m["per_class"]["q"]["recall"] is None and m["per_class"]["q"]["precision"] == 0.0
    assert m["macro"]["classes_with_drawings"] == 1
    assert m["macro"]["recall"] == pytest.approx(0.25)
    assert m["macro"]["precision"] == pytest.approx(1.0)  # p was predicted once, correctly


def test_most_confused_pairs_order():
    cm = np.array([[5, 3, 0], [1, 6, 1], [0, 3, 2]])
    pairs = most_confused_pairs(cm, ["a", "b", "c"], 3)
    # equal counts (a->b 3 of 8, c->b 3 of 5): the higher rate first
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("c", "b", 3),
        ("a", "b", 3),
        ("b", "a", 1),
    ]
    assert pairs[0]["rate"] == pytest.approx(0.6)


# ---------------------------------------------------------------------------------- `doodle eval` CLI
def test_eval_cli_on_cache_writes_plots_summary_and_report(tiny, tmp_path):
    out = tmp_path / "ev"
    r = doodle("eval", "--checkpoint", str(tiny["ckpt"]), "--data", str(tiny["cache"]), "--out", str(out))
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    cache = DoodleCache(tiny["cache"])
    correct, n = independent_top1(tiny["ckpt"], cache, cache.split_indices("test"))
    assert s["n_drawings"] == n == cache.manifest["split_counts"]["test"] > 50
    assert s["metrics"]["top1"] == pytest.approx(correct / n, abs=1e-12)
    assert f"top-1 {correct / n:.4f}" in r.stdout
    assert 0.25 < s["metrics"]["top1"] <= 1.0  # trained: clearly better than chance (1/8)
    assert np.asarray(s["metrics"]["confusion_matrix"]).sum() == n
    assert s["checkpoint"]["sha256"] == hashlib.sha256(tiny["ckpt"].read_bytes()).hexdigest()
    assert s["checkpoint"]["classes"] == cache.classes and s["checkpoint"]["encoding"] == "stroke3"
    assert s["data"]["kind"] == "cache" and s["data"]["split"] == "test"
    assert s["data"]["split_counts"] == cache.manifest["split_counts"]
    assert "15 equal-width bins" in s["metrics"]["ece_rule"]
    assert s["skipped"]["total"] == sum(s["skipped"]["by_reason"].values())
    for name in PLOTS:
        img = Image.open(out / f"{name}.png")
        assert img.format == "PNG" and min(img.size) >= 300, (name, img.size)
        assert s["plots"][name] == f"{name}.png"
    # the confused-pairs grid has example drawings for the top pairs, named by key_id
    ex = s["most_confused_examples"]
    assert ex and ex[0]["true"] == s["metrics"]["most_confused"][0]["true"] and ex[0]["key_ids"]
    html = (out / "report.html").read_text()
    embedded = html.count("src='data:image/png;base64,")
    assert embedded == len(PLOTS)
    assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere
    first = html.split("src='data:image/png;base64,", 1)[1].split("'", 1)[0]
    assert Image.open(io.BytesIO(base64.b64decode(first))).format == "PNG"
    assert f"{s['metrics']['top1'] * 100:.1f}%" in html


def test_eval_early_guessing_in_summary_plot_and_report(tiny, tmp_path):
    """The curve's keys are in summary.json; its 100% points are plain eval on the same drawings."""
    out = tmp_path / "ev"
    r = doodle("eval", "--checkpoint", str(tiny["ckpt"]), "--data", str(tiny["cache"]), "--out", str(out))
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    eg = s["early_guessing"]
    assert list(eg["strokes"]) == ["0.25", "0.5", "0.75", "1.0"]
    assert list(eg["points"]) == [str(p / 100) for p in range(10, 101, 10)]
    assert set(eg["points"]["0.5"]) == {"top1", "top3"}
    ttr = eg["time_to_recognition"]
    assert {"median_share", "never_recognised", "grid", "recognised_by"} <= set(ttr)
    assert ttr["grid"] == [p / 100 for p in range(10, 101, 10)] and 0.1 <= ttr["median_share"] <= 1.0
    n = s["n_drawings"]
    assert eg["n_drawings"] == n and eg["strokes_from"] == {"source files": n, "decoded from the encoded steps (stroke3)": 0,
                                                            "not recovered": 0}  # fmt: skip
    top1 = s["metrics"]["top1"]
    assert eg["points"]["1.0"]["top1"] == eg["strokes"]["1.0"]["top1"] == pytest.approx(top1, abs=1e-12)
    assert eg["points"]["1.0"]["top3"] == pytest.approx(s["metrics"]["top3"], abs=1e-12)
    assert eg["plain_eval_top1_same_drawings"] == pytest.approx(top1, abs=1e-12)
    assert ttr["never_recognised"] == pytest.approx(1 - top1, abs=1e-12)
    assert eg["points"]["0.1"]["top1"] < top1  # a tenth of a drawing is harder than all of it
    assert (
        Image.open(out / "early_guessing.png").format == "PNG"
        and s["plots"]["early_guessing"] == "early_guessing.png"
    )
    html = (out / "report.html").read_text()
    assert "Early guessing" in html and "first 25% of strokes" in html and "first 10% of points" in html
    assert "early guessing on" in r.stdout

    r = doodle("eval", "--checkpoint", str(tiny["ckpt"]), "--data", str(tiny["files"]), "--out", str(tmp_path / "f"),
               "--early-max", "50")  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "f" / "summary.json").read_text())
    eg = s["early_guessing"]
    assert eg["n_drawings"] == eg["drawings_sampled"] == 50 and eg["drawings_available"] == s["n_drawings"]
    assert eg["strokes_from"]["source files"] == 50 and "random subset of 50" in eg["sample_rule"]

    r = doodle("eval", "--checkpoint", str(tiny["ckpt"]), "--data", str(tiny["cache"]), "--out", str(tmp_path / "n"),
               "--no-early")  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "n" / "summary.json").read_text())
    assert s["early_guessing"] is None and not (tmp_path / "n" / "early_guessing.png").exists()
    assert (
        "early_guessing" not in s["plots"]
        and "Early guessing" not in (tmp_path / "n" / "report.html").read_text()
    )


def test_eval_on_files_matches_the_cache_all_split(tiny, tmp_path):
    """Files are encoded as the checkpoint records, so they give exactly the cache's numbers."""
    a = doodle(
        "eval", "--checkpoint", str(tiny["ckpt"]), "--data", str(tiny["files"]), "--out", str(tmp_path / "f")
    )
    b = doodle("eval", "--checkpoint", str(tiny["ckpt"]), "--data", str(tiny["cache"]), "--split", "all",
               "--out", str(tmp_path / "c"))  # fmt: skip
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    sa = json.loads((tmp_path / "f" / "summary.json").read_text())
    sb = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert sa["data"]["kind"] == "files" and len(sa["data"]["files"]) == 8
    assert sa["n_drawings"] == sb["n_drawings"] == 480 - sa["skipped"]["total"]
    assert sa["metrics"]["confusion_matrix"] == sb["metrics"]["confusion_matrix"]
    assert sa["metrics"]["nll"] == pytest.approx(sb["metrics"]["nll"], rel=1e-5)


def test_eval_with_mismatched_classes_uses_the_intersection(tiny, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for shape in ("circle", "square"):
        (data / f"{shape}.ndjson").write_bytes((tiny["files"] / f"{shape}.ndjson").read_bytes())
    blob = [
        json.loads(line) | {"word": "blob"}
        for line in (tiny["files"] / "star.ndjson").read_text().splitlines()
    ]
    (data / "blob.ndjson").write_text("".join(json.dumps(d) + "\n" for d in blob))
    r = doodle("eval", "--checkpoint", str(tiny["ckpt"]), "--data", str(data), "--out", str(tmp_path / "ev"))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert s["classes"]["evaluated"] == ["circle", "square"]
    assert s["classes"]["data_classes_not_in_checkpoint"] == {"blob": 60}
    assert sorted(s["classes"]["checkpoint_classes_without_data"]) == sorted(
        ["cross", "house", "spiral", "star", "triangle", "zigzag"]
    )
    assert s["skipped"]["by_reason"]["class not in checkpoint"] == 60
    assert s["n_drawings"] == 120 - s["skipped"]["total"] + 60
    assert np.asarray(s["metrics"]["confusion_matrix"]).shape == (2, 2)
    assert 0 <= s["top1_over_all_checkpoint_classes"] <= s["metrics"]["top1"]
    assert "blob (60)" in r.stderr

    (data / "circle.ndjson").unlink()
    (data / "square.ndjson").unlink()
    r = doodle("eval", "--checkpoint", str(tiny["ckpt"]), "--data", str(data), "--out", str(tmp_path / "ev2"))
    assert r.returncode == 2 and "do not overlap" in r.stderr and "Traceback" not in r.stderr


def test_eval_missing_or_corrupt_checkpoint_is_a_clear_error(tiny, tmp_path):
    missing = tmp_path / "nope.pt"
    r = doodle(
        "eval", "--checkpoint", str(missing), "--data", str(tiny["cache"]), "--out", str(tmp_path / "a")
    )
    assert r.returncode == 2 and f"error: {missing}: checkpoint not found" in r.stderr
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(tiny["ckpt"].read_bytes()[:2000])
    r = doodle(
        "eval", "--checkpoint", str(corrupt), "--data", str(tiny["cache"]), "--out", str(tmp_path / "b")
    )
    assert r.returncode == 2 and str(corrupt) in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b" / "summary.json").exists()


def test_eval_cache_with_another_encoding_is_a_clear_error(tiny, tmp_path):
    prepare_cache(PrepareConfig(inputs=[str(tiny["files"])], out=str(tmp_path / "ref"), encoding="reference",
                                progress=False))  # fmt: skip
    r = doodle(
        "eval",
        "--checkpoint",
        str(tiny["ckpt"]),
        "--data",
        str(tmp_path / "ref"),
        "--out",
        str(tmp_path / "e"),
    )
    assert r.returncode == 2
    assert (
        "encoded as reference" in r.stderr
        and "expects stroke3" in r.stderr
        and "source data files" in r.stderr
    )


def test_eval_on_real_raw_files_counts_every_drawing(tmp_path):
    """Real raw captures are normalised on the way in; every line is either evaluated or counted as skipped."""
    raw = SHARED / "raw"
    if not raw.is_dir():
        pytest.skip("the real Quick, Draw! sample (../shared/data/quickdraw) is absent")
    torch.manual_seed(0)
    model = GRUClassifier(ModelConfig(num_classes=3, hidden_size=16, num_layers=1, dropout=0.0))
    ckpt = tmp_path / "rand.pt"
    save_checkpoint(
        make_checkpoint(model, ["cat", "dog", "apple"], "stroke3", {"min_len": 6, "max_len": 250}), ckpt
    )
    files = [raw / "cat.ndjson", raw / "dog.ndjson"]
    r = doodle("eval", "--checkpoint", str(ckpt), "--data", *map(str, files), "--out", str(tmp_path / "ev"),
               "--include-unrecognized")  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "ev" / "summary.json").read_text())
    lines = sum(1 for f in files for line in f.read_text().splitlines() if line.strip())
    assert s["n_drawings"] + s["skipped"]["total"] == lines and s["n_drawings"] > 0.8 * lines
    assert s["classes"]["evaluated"] == ["cat", "dog"] and s["classes"][
        "checkpoint_classes_without_data"
    ] == ["apple"]


def test_many_classes_plots_show_the_most_confused_part(tmp_path):
    """With 345 classes the matrix shows 30, chosen so the largest confusions are among its cells."""
    from doodle_rnn import plots

    rng = np.random.default_rng(0)
    n = 345
    cm = np.diag(rng.integers(5, 10, n))
    cm[7, 300] = 9  # the largest confusion, far apart in class order
    cm[120, 121] = 4
    cm += rng.random((n, n)) < 0.002  # scattered single mistakes
    names = [f"class {i}" for i in range(n)]
    sel = plots.confusion_subset(cm, 30)
    assert len(sel) == 30 == len(set(sel.tolist()))
    assert sel[:2].tolist() == [7, 300] and {120, 121} <= set(sel.tolist())
    labels = np.repeat(np.arange(n), cm.sum(1))
    preds = np.concatenate([np.repeat(np.arange(n), row) for row in cm])
    m = compute_metrics(probs_for(preds.tolist(), n, 0.5), labels, names)
    assert m["confusion_matrix"] == cm.tolist()
    img = Image.open(plots.plot_confusion_matrix(m["confusion_matrix"], names, tmp_path / "cm.png"))
    assert 1000 < img.size[0] < 2500
    img = Image.open(plots.plot_per_class_accuracy(m["per_class"], tmp_path / "pc.png"))
    assert img.size[1] < 1500  # 60 bars and a histogram, not 345 bars


def test_ship_model_writes_a_card_whose_test_figures_include_the_threshold_s_first_calls(tiny, tmp_path):
    """scripts/ship_model.py (how shipped models are made): calibrate, threshold on val, test eval, card."""
    out, ev = tmp_path / "shipped.pt", tmp_path / "eval-test"
    script = Path(__file__).resolve().parents[1] / "scripts" / "ship_model.py"
    r = subprocess.run([sys.executable, str(script), "--checkpoint", str(tiny["ckpt"]), "--data", str(tiny["cache"]),
                        "--name", "tinyship", "--out", str(out), "--eval-out", str(ev), "--max-val", "60",
                        "--command", "doodle train ...", "--data-name", "synthetic"],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    ckpt = load_checkpoint(out)
    card = ckpt["card"]
    assert (
        "train_state" not in ckpt and card["name"] == "tinyship" and card["made_by"] == ["doodle train ..."]
    )
    assert ckpt["temperature"] != 1.0  # fitted on val
    assert card["announcement"]["split"] == "val" and card["announcement"]["n_drawings"] <= 60 + 8
    s = json.loads((ev / "summary.json").read_text())
    ann = s["early_guessing"]["announcement"]
    assert ann == card["test"]["early_guessing"]["announcement"]
    assert (
        ann["threshold"] == card["announce_threshold"]
        and ann["n_drawings"] == s["early_guessing"]["n_drawings"]
    )
    assert 0 <= ann["right_before_complete"] <= ann["announced_before_complete"] <= ann["announced"] <= 1
    assert card["test"]["top1"] == s["metrics"]["top1"] and card["test"]["n_drawings"] == s["n_drawings"]
    assert "calls at the model card threshold" in (ev / "report.html").read_text()
