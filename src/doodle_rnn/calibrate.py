"""Temperature scaling (Guo et al., 2017): one number that makes the model's confidence honest.

Logits are divided by a temperature T fitted on held-out data to minimise the negative log-likelihood.
T does not change any prediction (argmax is unchanged), only how sure the model says it is. The fit runs
L-BFGS on log T (T stays positive and the problem is well scaled); the NLL is convex in 1/T, so the
optimum is unique, and the result is checked against T = 1 and a coarse grid so a failed line search can
never make calibration worse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from doodle_rnn.evaluate import (
    EvalError,
    MetricAccumulator,
    checkpoint_identity,
    load_eval_data,
    load_model,
    predict_logits,
    row_labels,
)
from doodle_rnn.probs import softmax

LOG_T_BOUNDS = (-4.0, 4.0)  # T in [0.018, 55]: far beyond any sensible temperature


def nll_at(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return float((lse - z[np.arange(len(z)), labels]).mean())


def calibration_numbers(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    acc = MetricAccumulator(logits.shape[1])
    acc.update(softmax(np.asarray(logits, np.float64), temperature), labels)
    return {"temperature": float(temperature), "nll": nll_at(logits, labels, temperature), "ece": acc.ece()}


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """The temperature minimising the mean NLL of `labels` under softmax(logits / T)."""
    import torch

    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.clamp(*LOG_T_BOUNDS).exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    candidates = [1.0] + list(np.exp(np.linspace(*LOG_T_BOUNDS, 33)))
    lt = float(log_t.detach().clamp(*LOG_T_BOUNDS))
    if math.isfinite(lt):
        candidates.insert(0, math.exp(lt))
    return min(candidates, key=lambda t: nll_at(logits, labels, t))


def collect_logits(model, ev, batch_size: int, device, max_drawings: int | None, seed: int = 0):
    """Raw logits (temperature 1) over the evaluated classes, and the true labels, for (a sample of) `ev`."""
    from doodle_rnn.tensors import iterate_cache

    pick = np.arange(len(ev.indices))
    if max_drawings is not None and len(pick) > max_drawings:
        pick = np.sort(np.random.default_rng(seed).choice(len(pick), max_drawings, replace=False))
    rows, labels = ev.indices[pick], ev.labels[pick]
    label_of = row_labels(rows, labels)
    model.to(device)
    out_logits, out_labels = [], []
    for idx, logits in predict_logits(model, iterate_cache(ev.data, rows, batch_size), device, 1.0):
        out_logits.append(logits[:, ev.columns])
        out_labels.append(np.asarray(label_of(idx), dtype=np.int64))
    return np.concatenate(out_logits), np.concatenate(out_labels)


def calibrate_checkpoint(
    checkpoint: str | Path, inputs: Sequence[str | Path], out: str | Path, split: str | None = "val",
    batch_size: int = 1024, device: str = "auto", max_drawings: int | None = 200_000,
    num_threads: int | None = None,
) -> dict:  # fmt: skip
    """Fit a temperature on held-out data and save a copy of the checkpoint that carries it."""
    from doodle_rnn.checkpoint import save_checkpoint
    from doodle_rnn.devices import pick_device
    from doodle_rnn.threads import use_threads

    ckpt, model = load_model(checkpoint)
    ev = load_eval_data(inputs, ckpt, split)
    if len(ev.indices) < 2:
        raise EvalError(
            f"only {len(ev.indices)} drawing(s) to calibrate on; a temperature needs held-out data"
        )
    use_threads(num_threads, min(len(ev.indices), max_drawings or len(ev.indices)))
    logits, labels = collect_logits(model, ev, batch_size, pick_device(device), max_drawings)
    before = calibration_numbers(logits, labels, float(ckpt.get("temperature", 1.0)))
    t = fit_temperature(logits, labels)
    after = calibration_numbers(logits, labels, t)
    ckpt["temperature"] = float(t)
    metrics = dict(ckpt.get("metrics") or {})
    metrics["calibration"] = {
        "method": "temperature scaling, L-BFGS on log T minimising NLL",
        "data": ev.identity.get("path") or [f["path"] for f in ev.identity.get("files", [])],
        "split": ev.identity["split"],
        "n_drawings": int(len(labels)),
        "before": before,
        "after": after,
        "source_checkpoint_sha256": checkpoint_identity(checkpoint, ckpt)["sha256"],
    }
    ckpt["metrics"] = metrics
    save_checkpoint(ckpt, out)
    return metrics["calibration"]
