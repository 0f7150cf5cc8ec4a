"""Learning-rate range test (`doodle lr-find`): which learning rate should training start from?

The rate grows exponentially from `start_lr` to `end_lr` over `num_iter` training batches of a fresh
model; the loss is smoothed (bias-corrected exponential average) and the test stops early once it
diverges (smoothed loss > `diverge` x the best seen). Suggested rate: where the smoothed loss falls
fastest against log(lr), but never more than a tenth of the rate at the loss minimum (the minimum
itself is already too hot, and on a short, noisy test the steepest point can sit right next to it).
Writes `lr_find.png` (loss vs lr), `grad_norm.png` (gradient norm vs lr) and `lr_find.json`.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from doodle_rnn.config import LRFindConfig
from doodle_rnn.data.batches import bucket_batches
from doodle_rnn.data.cache import CacheError, DoodleCache
from doodle_rnn.devices import pick_device
from doodle_rnn.memory import keep_freed_memory
from doodle_rnn.model import GRUClassifier, ModelConfig
from doodle_rnn.tensors import augment_features, pad_features
from doodle_rnn.train import TrainError


def suggest(lrs: list[float], smoothed: list[float]) -> float:
    """min(steepest descent of the smoothed loss over log(lr), lr at the minimum / 10)."""
    if not lrs:
        return math.nan
    at_min = lrs[int(np.argmin(smoothed))] / 10
    if len(lrs) < 5:
        return at_min
    lo, hi = len(lrs) // 10, max(len(lrs) * 9 // 10, len(lrs) // 10 + 3)
    grad = np.gradient(np.asarray(smoothed[lo:hi]), np.log(np.asarray(lrs[lo:hi])))
    return float(min(lrs[lo + int(np.argmin(grad))], at_min))


def lr_find(cfg: LRFindConfig) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if cfg.num_iter < 2 or not 0 < cfg.start_lr < cfg.end_lr:
        raise TrainError("lr-find needs --num-iter >= 2 and 0 < --start-lr < --end-lr")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    keep_freed_memory()  # as train(): big per-step tensors reuse freed heap
    try:
        cache = DoodleCache(cfg.data)
    except CacheError as exc:
        raise TrainError(str(exc)) from exc
    device = pick_device(cfg.device)
    idx = cache.split_indices("train")
    if len(idx) == 0:
        raise TrainError(f"{cfg.data}: the train split is empty")
    torch.manual_seed(cfg.seed)
    mcfg = ModelConfig(num_classes=len(cache.classes), hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                       dropout=cfg.dropout, rnn=cfg.rnn)  # fmt: skip
    model = GRUClassifier(mcfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.start_lr, weight_decay=cfg.weight_decay)
    gamma = (cfg.end_lr / cfg.start_lr) ** (1.0 / (cfg.num_iter - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    grad_norms: list[float] = []
    avg, best, epoch = 0.0, math.inf, 0
    batches: list[np.ndarray] = []
    stop = "end_lr"
    from tqdm import tqdm

    print(f"lr-find: up to {cfg.num_iter} batches of {cfg.batch_size}, lr {cfg.start_lr:.1e} -> {cfg.end_lr:.1e} "
          f"on {device}, {torch.get_num_threads()} thread(s)", flush=True)  # fmt: skip
    bar = tqdm(total=cfg.num_iter, desc="lr-find", unit="batch", leave=False, disable=not sys.stderr.isatty())
    for it in range(cfg.num_iter):
        if not batches:  # cycle through the data as often as needed
            batches = bucket_batches(
                cache.lengths[idx],
                cfg.batch_size,
                True,
                np.random.default_rng([cfg.seed, epoch]),
                labels=cache.labels[idx],
            )
            epoch += 1
        b = idx[batches.pop()]
        lr = cfg.start_lr * gamma**it
        for g in opt.param_groups:
            g["lr"] = lr
        x, lengths = pad_features(*cache.batch_steps(b))
        if cfg.augment:
            x = augment_features(x, lengths, np.random.default_rng([cfg.seed, 1_000_003, it]))
        y = torch.from_numpy(cache.labels[b].astype(np.int64)).to(device)
        loss = F.cross_entropy(model(x.to(device), lengths), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item()
        opt.step()
        value = loss.item()
        avg = cfg.smoothing * avg + (1 - cfg.smoothing) * value
        s = avg / (1 - cfg.smoothing ** (it + 1))
        lrs.append(lr)
        losses.append(value)
        smoothed.append(s)
        grad_norms.append(gn)
        best = min(best, s)
        bar.update(1)
        bar.set_postfix(lr=f"{lr:.1e}", loss=f"{s:.3f}")
        if not math.isfinite(value) or s > cfg.diverge * best:
            stop = "diverged"
            break
    bar.close()
    suggested = suggest(lrs, smoothed)
    i_min = int(np.argmin(smoothed))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(lrs, losses, color="0.8", lw=0.8, label="loss")
    ax.plot(lrs, smoothed, color="C0", label="smoothed loss")
    ax.axvline(suggested, color="C3", ls="--", label=f"suggested {suggested:.2e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="LR range test")
    top = smoothed[0] * 1.5 if smoothed else 1
    ax.set_ylim(min(losses) * 0.9 if losses else 0, max(top, min(losses) * 1.1 if losses else 1))
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "lr_find.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(lrs, grad_norms, color="C2")
    ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="gradient norm (before clipping)",
           title="Gradient norm during the LR range test")  # fmt: skip
    fig.tight_layout()
    fig.savefig(out / "grad_norm.png", dpi=120)
    plt.close(fig)
    result = {
        "suggested_lr": suggested,
        "min_loss_lr": lrs[i_min],
        "iterations": len(lrs),
        "stop": stop,
        "config": asdict(cfg),
        "lr": lrs,
        "loss": losses,
        "smoothed_loss": smoothed,
        "grad_norm": grad_norms,
    }
    (out / "lr_find.json").write_text(json.dumps(result) + "\n")
    return result
