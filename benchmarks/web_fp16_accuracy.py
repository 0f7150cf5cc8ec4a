"""Test top-1 of a model's float32 graph vs the float16-weight graph `doodle export --web` ships; prints JSON.

Both graphs run in ONNX Runtime (Python) on the test split of a `doodle prepare` cache, the split the
model card's figures come from (same drawings, same encoded steps), so the difference is the float16
storage alone. The browser runs the float16 file and is held to ONNX Runtime in Python by tests/test_web.py.

    doodle prepare --data ../shared/data/quickdraw/animals5k/simplified --out cache/a5k --encoding stroke3
    python benchmarks/web_fp16_accuracy.py --model animals10 --cache cache/a5k
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def top1(session, cache, idx: np.ndarray, temperature: float, chunk: int = 64) -> np.ndarray:
    """Predicted class per drawing of `idx`, in length-sorted chunks (as `Classifier` batches)."""
    from doodle_rnn.data.encode import pad_steps
    from doodle_rnn.probs import softmax

    order = idx[np.argsort(cache.lengths[idx], kind="stable")]
    out = {}
    for s in range(0, len(order), chunk):
        part = order[s : s + chunk]
        steps, lengths = cache.batch_steps(part)
        x, lens = pad_steps(steps, lengths)
        probs = softmax(session.run(["logits"], {"x": x, "lengths": lens})[0], temperature)
        out.update(zip(part.tolist(), probs.argmax(1).tolist(), strict=True))
    return np.array([out[i] for i in idx.tolist()])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a shipped model's name or a .pt checkpoint")
    p.add_argument("--cache", required=True, help="a `doodle prepare` cache with the model's classes")
    args = p.parse_args()

    import onnx
    import onnxruntime as ort

    from doodle_rnn.data.cache import DoodleCache
    from doodle_rnn.export import half_weights
    from doodle_rnn.model_files import open_model

    model = open_model(args.model)
    cache = DoodleCache(args.cache)
    if cache.classes != model.meta["classes"] or cache.encoding != model.meta["encoding"]:
        raise SystemExit(f"{args.cache}: its classes or encoding are not the model's")
    full = onnx.load_model_from_string(model.onnx_bytes())
    half = half_weights(full)
    idx = cache.split_indices("test")
    labels = cache.labels[idx]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    result = {"model": model.name, "cache": args.cache, "test_drawings": len(idx)}
    for name, graph in (("fp32", full), ("fp16_weights", half)):
        sess = ort.InferenceSession(graph.SerializeToString(), so, providers=["CPUExecutionProvider"])
        pred = top1(sess, cache, idx, float(model.meta.get("temperature", 1.0)))
        result[f"top1_{name}"] = float(np.mean(pred == labels))
        result[f"bytes_{name}"] = len(graph.SerializeToString())
        result[f"pred_{name}"] = pred
    result["drawings_whose_top1_changed"] = int(
        (result.pop("pred_fp32") != result.pop("pred_fp16_weights")).sum()
    )
    result["top1_change_points"] = round(100 * (result["top1_fp16_weights"] - result["top1_fp32"]), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
