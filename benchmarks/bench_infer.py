"""Inference speed on real shared drawings: one drawing, batches, streaming; torch vs ONNX Runtime; int8.

    python benchmarks/bench_infer.py [--checkpoint CKPT] [--drawings 1000] [--repeats 300]

Prints one JSON object. Without --checkpoint the model is the default size (2 x bi-GRU 192, 345 classes)
with random weights: speed does not depend on the weights. Latencies are end to end through the
Classifier (validate, normalise when raw, encode, pad, run, softmax, top-k), per drawing, cycling over
real drawings; `model_only_50_steps` times the network alone on a 50-step drawing. torch runs with one
intra-op thread (on a small shared CPU two threads are slower for a batch of one; see the note).
int8: dynamic quantisation of the ONNX file; with --checkpoint it also reports top-1 accuracy on the
shared drawings whose word is one of the model's classes (these may overlap its training data).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import torch
from machine_facts import machine_facts

from doodle_rnn.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from doodle_rnn.data.encode import LengthRules, encode_batch
from doodle_rnn.export import export_onnx, quantize_int8
from doodle_rnn.inference import Classifier
from doodle_rnn.model import GRUClassifier, ModelConfig
from doodle_rnn.tensors import pad_features

SHARED = (
    Path(os.environ.get("DOODLE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    / "data"
    / "quickdraw"
)


def load_drawings(kind: str, per_class: int, limit: int) -> list[tuple[str, list]]:
    out = []
    for f in sorted(glob.glob(str(SHARED / kind / "*.ndjson"))):
        with open(f, "rb") as fh:
            for _, line in zip(range(per_class), fh, strict=False):
                rec = orjson.loads(line)
                out.append((rec["word"], rec["drawing"]))
        if len(out) >= limit:
            break
    return out[:limit]


def pct(ts: list[float]) -> dict:
    ms = np.asarray(ts) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3)}  # fmt: skip


def single_latency(clf: Classifier, drawings: list, repeats: int) -> dict:
    for d in drawings[:20]:
        clf.predict(d)
    ts = []
    for i in range(repeats):
        d = drawings[i % len(drawings)]
        t0 = time.perf_counter()
        clf.predict(d)
        ts.append(time.perf_counter() - t0)
    return pct(ts)


def model_only(clf: Classifier, steps: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    st = np.c_[rng.integers(-20, 20, (steps, 2)), (rng.random(steps) < 0.1)].astype(np.int16)
    x, lens = pad_features(st, np.array([steps]))
    x, lens = x.numpy(), lens.numpy()
    for _ in range(20):
        clf._backend.logits(x, lens)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        clf._backend.logits(x, lens)
        ts.append(time.perf_counter() - t0)
    return pct(ts)


def throughput(clf: Classifier, drawings: list, rounds: int = 3) -> float:
    clf.predict_many(drawings[:64])
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        clf.predict_many(drawings)
        best = max(best, len(drawings) / (time.perf_counter() - t0))
    return round(best, 1)


def streaming(clf: Classifier, raw: list, max_updates: int = 300) -> dict:
    """Cost of one update: add the points since the last update, then predict (as the page does)."""
    ts, n = [], 0
    for strokes in raw:
        session = clf.stream()
        for xs, ys, tt in strokes:
            for j, (x, y, t) in enumerate(zip(xs, ys, tt, strict=True)):
                t0 = time.perf_counter()
                session.add_point(x, y, t)
                if j % 4 == 3 or j == len(xs) - 1:  # an update every few points, like a throttled page
                    session.predict()
                    ts.append(time.perf_counter() - t0)
                    n += 1
            session.end_stroke()
            if n >= max_updates:
                return {**pct(ts), "updates": n}
    return {**pct(ts), "updates": n}


def accuracy(clf: Classifier, labelled: list) -> float | None:
    known = [(w, d) for w, d in labelled if w in set(clf.classes)]
    if not known:
        return None
    tops = clf.predict_many([d for _, d in known], 1)
    return round(float(np.mean([t[0][0] == w for t, (w, _) in zip(tops, known, strict=True)])), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="a trained checkpoint (default: random weights, default model size)")
    ap.add_argument("--drawings", type=int, default=1035, help="real simplified drawings for throughput")
    ap.add_argument("--repeats", type=int, default=300, help="timed single-drawing predictions per backend")
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"needs the shared sample at {SHARED}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as d:
        run(args, Path(d))


def run(args: argparse.Namespace, tmp: Path) -> None:
    if args.checkpoint:
        ckpt_path = Path(args.checkpoint)
        ckpt = load_checkpoint(ckpt_path)
    else:
        torch.manual_seed(0)
        model = GRUClassifier(ModelConfig(num_classes=345)).eval()
        from doodle_rnn.categories import all_categories

        ckpt = make_checkpoint(model, list(all_categories()), "stroke3", LengthRules().to_dict())
        ckpt_path = tmp / "default.pt"
        save_checkpoint(ckpt, ckpt_path)
    onnx_path = export_onnx(ckpt, tmp / "m.onnx")
    int8_path = quantize_int8(onnx_path, tmp / "m-int8.onnx")

    simplified = load_drawings("simplified", 3, args.drawings)
    raw = load_drawings("raw", 2, 200)
    simp_strokes = [d for _, d in simplified]
    raw_strokes = [d for _, d in raw]
    _, lengths, _ = encode_batch(simp_strokes, ckpt["encoding"], LengthRules(1, 250))

    backends = {
        "torch": Classifier.load(ckpt_path, backend="torch"),
        "onnxruntime": Classifier.load(onnx_path),
        "onnxruntime_int8": Classifier.load(int8_path),
    }
    result: dict = {
        "machine": machine_facts(),
        "model": {**ckpt["model_config"], "weights": "trained" if args.checkpoint else "random"},
        "data": {
            "simplified_drawings": len(simp_strokes),
            "raw_drawings": len(raw_strokes),
            "steps_mean": round(float(lengths.mean()), 1),
            "steps_p50": float(np.median(lengths)),
        },  # fmt: skip
        "torch_threads": torch.get_num_threads(),
        "file_bytes": {"onnx": onnx_path.stat().st_size, "onnx_int8": int8_path.stat().st_size},
    }
    for name, clf in backends.items():
        r = {
            "model_only_50_steps": model_only(clf, 50, args.repeats),
            "single_simplified": single_latency(clf, simp_strokes, args.repeats),
            "single_raw": single_latency(clf, raw_strokes, args.repeats // 2),
            "batch_drawings_per_s": throughput(clf, simp_strokes),
        }
        result[name] = r
    result["streaming_update_onnxruntime"] = streaming(backends["onnxruntime"], raw_strokes)
    f32, q8 = backends["onnxruntime"], backends["onnxruntime_int8"]
    a, b = f32.predict_many(simp_strokes, 1), q8.predict_many(simp_strokes, 1)
    result["int8"] = {
        "top1_agreement_with_float": round(
            float(np.mean([x[0][0] == y[0][0] for x, y in zip(a, b, strict=True)])), 4
        ),
        "max_top1_probability_diff": round(max(abs(x[0][1] - y[0][1]) for x, y in zip(a, b, strict=True)), 5),
        "speedup_single": round(
            result["onnxruntime"]["single_simplified"]["p50_ms"]
            / result["onnxruntime_int8"]["single_simplified"]["p50_ms"],
            3,
        ),  # fmt: skip
        "speedup_batch": round(
            result["onnxruntime_int8"]["batch_drawings_per_s"]
            / result["onnxruntime"]["batch_drawings_per_s"],
            3,
        ),  # fmt: skip
        "accuracy_float": accuracy(f32, simplified) if args.checkpoint else None,
        "accuracy_int8": accuracy(q8, simplified) if args.checkpoint else None,
    }
    result["load_avg_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
