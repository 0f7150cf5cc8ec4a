"""Learning-rate range test (`doodle lr-find`): which learning rate should training start from?

It runs the trainer's own steps (`train.py`: the same model, AdamW with no decay on biases and gains,
the same random batches and augmentation, bf16/autocast choice, label-smoothed loss and gradient
clipping) on a fresh model, while the rate grows exponentially from `start_lr` to `end_lr` over
`num_iter` steps. The loss is smoothed (bias-corrected exponential average) and the test stops early
once it diverges (smoothed loss > `diverge` x the best seen). Suggested rate: where the smoothed loss
falls fastest against log(lr), but never more than a tenth of the rate at the loss minimum (the minimum
itself is already too hot, and on a short, noisy test the steepest point can sit right next to it).
Writes `lr_find.png` (loss vs lr), `grad_norm.png` (gradient norm before clipping vs lr) and
`lr_find.json`; the pictures are drawn by `plots.py`.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from doodle_rnn.config import LRFindConfig, TrainConfig
from doodle_rnn.data.cache import CacheError, DoodleCache
from doodle_rnn.devices import pick_device
from doodle_rnn.memory import keep_freed_memory
from doodle_rnn.train import (
    Dist,
    TrainError,
    TrainRun,
    batch_inputs,
    build_run,
    model_config,
    optimizer_step,
    train_batches,
    training_loss,
)


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
    """Sweep the rate over the trainer's steps; write the plots and lr_find.json; return the result."""
    if cfg.num_iter < 2 or not 0 < cfg.start_lr < cfg.end_lr:
        raise TrainError("lr-find needs --num-iter >= 2 and 0 < --start-lr < --end-lr")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    keep_freed_memory()  # as train(): big per-step tensors reuse freed heap
    run = _fresh_run(cfg)
    print(f"lr-find: up to {cfg.num_iter} batches of {cfg.batch_size}, lr {cfg.start_lr:.1e} -> {cfg.end_lr:.1e} "
          f"on {run.device}, {torch.get_num_threads()} thread(s)", flush=True)  # fmt: skip
    sweep = _sweep(run, cfg)
    suggested = suggest(sweep["lr"], sweep["smoothed_loss"])
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    from doodle_rnn import plots

    plots.plot_lr_find(sweep["lr"], sweep["loss"], sweep["smoothed_loss"], suggested, out / "lr_find.png")
    plots.plot_grad_norm(sweep["lr"], sweep["grad_norm"], out / "grad_norm.png")
    result = {
        "suggested_lr": suggested,
        "min_loss_lr": sweep["lr"][int(np.argmin(sweep["smoothed_loss"]))],
        "iterations": len(sweep["lr"]),
        "stop": sweep.pop("stop"),
        "config": asdict(cfg),
        **sweep,
    }
    (out / "lr_find.json").write_text(json.dumps(result) + "\n")
    return result


def train_config(cfg: LRFindConfig) -> TrainConfig:
    """The training recipe that the test sweeps: lr-find's settings over TrainConfig's defaults."""
    shared = {k: v for k, v in asdict(cfg).items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig(**{**shared, "lr": cfg.start_lr})


def _fresh_run(cfg: LRFindConfig) -> TrainRun:
    """A new model with the trainer's optimiser and precision on the cache's train split."""
    tcfg = train_config(cfg)
    try:
        cache = DoodleCache(cfg.data)
    except CacheError as exc:
        raise TrainError(str(exc)) from exc
    idx = cache.split_indices("train")
    if len(idx) == 0:
        raise TrainError(f"{cfg.data}: the train split is empty")
    device = pick_device(cfg.device)
    return build_run(tcfg, Dist(), Path(cfg.out), device, cache, idx, idx[:0], model_config(tcfg, cache))


def _steps(run: TrainRun) -> Iterator[tuple[int, int, np.ndarray]]:
    """(epoch, batch number, batch) of the trainer's epochs, one after another, for as long as asked."""
    epoch = 1
    while True:
        for i, b in enumerate(train_batches(run.cache, run.train_idx, run.cfg, epoch)):
            yield epoch, i, b
        epoch += 1


def _sweep(run: TrainRun, cfg: LRFindConfig) -> dict:
    from tqdm import tqdm

    gamma = (cfg.end_lr / cfg.start_lr) ** (1.0 / (cfg.num_iter - 1))
    rec: dict = {"lr": [], "loss": [], "smoothed_loss": [], "grad_norm": [], "stop": "end_lr"}
    avg, best = 0.0, math.inf
    run.net.train()
    bar = tqdm(total=cfg.num_iter, desc="lr-find", unit="batch", leave=False, disable=not sys.stderr.isatty())
    for it, (epoch, i, b) in zip(range(cfg.num_iter), _steps(run), strict=False):
        lr = cfg.start_lr * gamma**it
        for g in run.opt.param_groups:
            g["lr"] = lr
        x, lengths, y = batch_inputs(run, epoch, i, b)
        loss, _ = training_loss(run, x, lengths, y)
        run.scaler.scale(loss).backward()
        norm = optimizer_step(run)
        value = loss.item()
        avg = cfg.smoothing * avg + (1 - cfg.smoothing) * value
        s = avg / (1 - cfg.smoothing ** (it + 1))
        best = min(best, s)
        for k, v in (("lr", lr), ("loss", value), ("smoothed_loss", s), ("grad_norm", norm)):
            rec[k].append(v)
        bar.update(1)
        bar.set_postfix(lr=f"{lr:.1e}", loss=f"{s:.3f}")
        if not math.isfinite(value) or s > cfg.diverge * best:
            rec["stop"] = "diverged"
            break
    bar.close()
    return rec
