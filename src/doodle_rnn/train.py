"""Training: `train(TrainConfig) -> dict`, behind `doodle train` and `python -m doodle_rnn.train`.

AdamW with label smoothing, dropout and gradient clipping; ReduceLROnPlateau on the validation loss
(or OneCycle) and early stopping on it; train-only augmentation in delta space; mixed precision on
CUDA. After every epoch `RUN_DIR/last.pt` holds everything `--resume` needs to continue exactly
(model, optimizer, scheduler, early-stopping state, epoch, RNG states), and `RUN_DIR/best.pt` the
weights with the best validation loss; both are self-describing checkpoints (see checkpoint.py).

Determinism, so that a resumed run equals an uninterrupted one: the batch order and augmentation of
an epoch are functions of (seed, epoch, step) alone, and the only other randomness (dropout) draws
from torch's generator, whose state is saved with each checkpoint.

Data parallel: under `torchrun` every rank builds the same batch list (from the seed) and takes every
world-th batch (`shard_batches`); gradients are averaged by DistributedDataParallel, validation
counts are summed across ranks, and only rank 0 writes files and logs.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from doodle_rnn.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from doodle_rnn.config import TrainConfig, TrainError
from doodle_rnn.data.batches import augment_features, bucket_batches, pad_features, shard_batches
from doodle_rnn.data.cache import DoodleCache
from doodle_rnn.data.encode import ENCODING_VERSION
from doodle_rnn.data.prefixes import random_prefixes
from doodle_rnn.memory import keep_freed_memory
from doodle_rnn.model import GRUClassifier, ModelConfig
from doodle_rnn.text import plural, some

# ---------------------------------------------------------------- setup


def pick_device(name: str) -> torch.device:
    """auto: CUDA, then Apple MPS, then CPU. Asking for a device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available (try --device auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TrainError("--device mps: Apple MPS is not available (try --device auto)")
    return torch.device(name)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local)


def _all_sum(values: list[float], d: Dist, device: torch.device) -> list[float]:
    if d.world <= 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------- RNG state (tensors only: weights_only loads)


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- one pass


def _epoch_rng(cfg: TrainConfig, epoch: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, epoch, *more])


def _train_batches(
    cache: DoodleCache, train_idx: np.ndarray, cfg: TrainConfig, epoch: int
) -> list[np.ndarray]:
    """One epoch's training batches (positions into train_idx); identical on every rank for a seed."""
    rng = _epoch_rng(cfg, epoch)
    lengths = cache.lengths[train_idx]
    if cfg.batching == "bucket":
        return bucket_batches(lengths, cfg.batch_size, True, rng, labels=cache.labels[train_idx])
    return bucket_batches(lengths, cfg.batch_size, True, rng, pool=1)


def _batch_tensors(
    cache: DoodleCache, idx: np.ndarray, device: torch.device, prefix_prob: float = 0.0, rng=None
):
    steps, lens = cache.batch_steps(idx)
    if prefix_prob > 0:
        steps, lens = random_prefixes(steps, lens, cache.encoding, cache.length_rules, rng, prefix_prob)
    x, lengths = pad_features(steps, lens)
    y = torch.from_numpy(cache.labels[idx].astype(np.int64))
    return x, lengths, y


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    cache: DoodleCache,
    indices: np.ndarray,
    batch_size: int,
    device: torch.device,
    d: Dist | None = None,
    amp_dtype: torch.dtype | None = None,
) -> dict:
    """Loss (plain cross-entropy) and top-1/top-3 accuracy over `indices`, summed across ranks."""
    d = d or Dist()
    model.eval()
    everything = bucket_batches(cache.lengths[indices], batch_size, shuffle=False, max_steps=batch_size * 64)
    batches = shard_batches(everything, d.rank, d.world)
    if d.world > 1:  # the few batches left over by sharding are evaluated by rank 0
        rest = everything[len(batches) * d.world :]
        batches = batches + (rest if d.main else [])
    loss_sum = c1 = c3 = n = 0.0
    for b in batches:
        x, lengths, y = _batch_tensors(cache, indices[b], device)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x, lengths)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(3, logits.shape[1]), dim=1).indices
        c1 += (top[:, 0] == y).sum().item()
        c3 += (top == y[:, None]).any(dim=1).sum().item()
        n += len(y)
    loss_sum, c1, c3, n = _all_sum([loss_sum, c1, c3, n], d, device)
    n = max(n, 1.0)
    return {"val_loss": loss_sum / n, "val_acc1": c1 / n, "val_acc3": c3 / n, "val_n": int(n)}


# ---------------------------------------------------------------- the loop


class _Log:
    """Console lines (rank 0) plus the same numbers in RUN_DIR/metrics.jsonl."""

    def __init__(self, out: Path, enabled: bool, keep_epochs_upto: int | None):
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        if enabled and keep_epochs_upto is not None and self.path.exists():
            # On resume, drop records of the epoch that was interrupted (it is run again).
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("epoch", 0) <= keep_epochs_upto
            ]
            self.path.write_text("".join(k + "\n" for k in kept))
        elif enabled and keep_epochs_upto is None:
            self.path.write_text("")

    def __call__(self, line: str | None, record: dict) -> None:
        if not self.enabled:
            return
        if line is not None:
            print(line, flush=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def _make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    if cfg.scheduler == "onecycle":
        total = cfg.epochs * max(steps_per_epoch, 1)
        if cfg.max_steps:
            total = min(total, cfg.max_steps)
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total, 2))
    return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only; biases and LayerNorm gains are not pulled to zero."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def cpu_has_fast_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX, where bf16 matrix products run ~4x the fp32 rate."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if not cfg.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train(cfg: TrainConfig) -> dict:
    """Train on the cache at `cfg.data`, writing checkpoints and logs to `cfg.out`; returns a summary."""
    cfg.check()
    keep_freed_memory()  # big per-step tensors: reuse freed heap instead of faulting in new pages
    d = init_distributed(cfg.device)
    try:
        return _train(cfg, d)
    finally:
        if d.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


RUN_FILES = ("best.pt", "last.pt", "metrics.jsonl", "config.json")


def _claim_run_dir(out: Path, cfg: TrainConfig, d: Dist) -> None:
    """Refuse a RUN_DIR that already holds a run unless --resume or --overwrite says what to do with it.

    Without this a new run would silently replace best.pt with a worse model and truncate
    metrics.jsonl while the old run's evaluation, calibrated copy and ONNX export stay beside it.
    """
    if cfg.resume or not out.is_dir():
        return
    held = [f for f in RUN_FILES if (out / f).exists()]
    if not held:
        return
    others = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir() if p.name not in RUN_FILES)
    others = [n for n in others if not n.startswith(".")]
    if not cfg.overwrite:
        made = f"; it also holds {some(others)}, made from that run" if others else ""
        raise TrainError(
            f"{out} already holds a training run ({', '.join(held)}){made}. Add --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    if d.main:
        for f in held:
            (out / f).unlink(missing_ok=True)
        print(f"--overwrite: removed the previous run's {', '.join(held)} from {out}", flush=True)
        if others:
            print(
                f"warning: {out} still holds {some(others)} from the previous run; they do not describe "
                "the new model (remake or remove them)",
                file=sys.stderr,
                flush=True,
            )


def _train(cfg: TrainConfig, d: Dist) -> dict:
    from tqdm import tqdm

    from doodle_rnn.data.cache import CacheError

    out = Path(cfg.out)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    elif d.world > 1:
        torch.set_num_threads(
            max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", d.world)))
        )
    device = pick_device(cfg.device)
    if d.world > 1 and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    try:
        cache = DoodleCache(cfg.data)
    except CacheError as exc:
        raise TrainError(str(exc)) from exc
    if cfg.prefix_prob > 0 and cache.encoding != "stroke3":
        raise TrainError(
            f"--prefix-prob needs a stroke3 cache ({cfg.data} is {cache.encoding}): "
            "doodle prepare --encoding stroke3 ..."
        )
    train_idx, val_idx = cache.split_indices("train"), cache.split_indices("val")
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise TrainError(
            f"{cfg.data}: needs drawings in both the train and val splits (has {len(train_idx)}, {len(val_idx)})"
        )

    resume_ckpt = None
    if cfg.resume:
        last = out / "last.pt"
        if not last.is_file():
            raise TrainError(f"--resume: {last} does not exist; start without --resume")
        resume_ckpt = load_checkpoint(last)
        if "train_state" not in resume_ckpt:
            raise TrainError(f"--resume: {last} has no training state")
        if resume_ckpt["classes"] != cache.classes:
            raise TrainError(f"--resume: {last} was trained on other classes than {cfg.data}")
        mcfg = ModelConfig(**resume_ckpt["model_config"])
    else:
        mcfg = ModelConfig(
            num_classes=len(cache.classes),
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout,
            rnn=cfg.rnn,
            conv_channels=list(cfg.conv_channels),
            conv_kernel=cfg.conv_kernel,
        )

    _claim_run_dir(out, cfg, d)
    if d.world > 1:  # every rank judges the folder as it was, before rank 0 writes config.json into it
        import torch.distributed as dist

        dist.barrier()
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        print(f"config: {json.dumps(asdict(cfg))}", flush=True)
        print(
            f"data: {plural(len(cache.classes), 'class', 'classes')}, train {len(train_idx)}, val {len(val_idx)}, "
            f"encoding {cache.encoding}; device {device}"
            + (f" x {d.world} ranks" if d.world > 1 else "")
            + f", {plural(torch.get_num_threads(), 'thread')}",
            flush=True,
        )

    torch.manual_seed(cfg.seed)
    model = GRUClassifier(mcfg).to(device)
    if device.type == "cpu" and cfg.amp and cpu_has_fast_bf16():
        model.matmul_dtype = torch.bfloat16  # fused GRU: bf16 products, fp32 states, gates and gradients
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    n_batches = len(shard_batches(_train_batches(cache, train_idx, cfg, 0), d.rank, d.world))
    steps_per_epoch = math.ceil(n_batches / cfg.grad_accum)
    sched = _make_scheduler(cfg, opt, steps_per_epoch)
    amp_dtype = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_epoch, global_step = 1, 0
    best = {"val_loss": math.inf}
    bad_epochs = 0
    if resume_ckpt is not None:
        ts = resume_ckpt["train_state"]
        model.load_state_dict(resume_ckpt["model_state"])
        opt.load_state_dict(ts["optimizer"])
        sched.load_state_dict(ts["scheduler"])
        scaler.load_state_dict(ts["scaler"])
        start_epoch, global_step = ts["epoch"] + 1, ts["global_step"]
        best, bad_epochs = dict(ts["best"]), ts["bad_epochs"]
        _set_rng_state(ts["rng"], device)
        if d.main:
            print(
                f"resumed from {out / 'last.pt'} after epoch {ts['epoch']} (step {global_step})", flush=True
            )
    net: torch.nn.Module = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    log = _Log(out, d.main, start_epoch - 1 if resume_ckpt is not None else None)
    describe = {"encoding": cache.encoding, "length_rules": cache.length_rules.to_dict()}
    enc_version = int(cache.manifest.get("encoding_version", ENCODING_VERSION))
    stop_reason = "epochs"
    if resume_ckpt is not None and (ts["stopped"] or start_epoch > cfg.epochs):
        stop_reason = ts.get("stop_reason", "epochs")
        start_epoch = cfg.epochs + 1  # nothing left to do
    epoch = start_epoch - 1
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        net.train()
        batches = _train_batches(cache, train_idx, cfg, epoch)
        batches = shard_batches(batches, d.rank, d.world)
        bar = tqdm(
            total=len(batches),
            desc=f"epoch {epoch}",
            leave=False,
            disable=not (d.main and sys.stderr.isatty()),
        )
        loss_sum = correct = seen = 0.0
        opt.zero_grad(set_to_none=True)
        hit_max = False
        for i, b in enumerate(batches):
            prefix_rng = _epoch_rng(cfg, epoch, i, d.rank, 1) if cfg.prefix_prob > 0 else None
            x, lengths, y = _batch_tensors(cache, train_idx[b], device, cfg.prefix_prob, prefix_rng)
            if cfg.augment:
                x = augment_features(x, lengths, _epoch_rng(cfg, epoch, i, d.rank))
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            last_micro = (i + 1) % cfg.grad_accum == 0 or i + 1 == len(batches)
            sync = net.no_sync() if (d.world > 1 and not last_micro) else nullcontext()
            with sync:
                with torch.autocast(
                    device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                ):
                    logits = net(x, lengths)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                scaler.scale(loss / cfg.grad_accum).backward()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if last_micro:
                if cfg.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                global_step += 1
                if cfg.scheduler == "onecycle" and global_step < sched.total_steps:
                    sched.step()
            bar.update(1)
            lr = opt.param_groups[0]["lr"]
            if (i + 1) % cfg.log_every == 0:
                rec = {"kind": "batch", "epoch": epoch, "batch": i + 1, "batches": len(batches), "step": global_step,
                       "loss": loss_sum / seen, "acc1": correct / seen, "lr": lr}  # fmt: skip
                log(
                    f"  Batch {i + 1}/{len(batches)} | loss={rec['loss']:.4f} acc1={rec['acc1']:.3f} lr={lr:.5f}",
                    rec,
                )
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc1=f"{correct / seen:.3f}")
            if cfg.max_steps is not None and global_step >= cfg.max_steps and last_micro:
                hit_max = True
                break
        bar.close()
        loss_sum, correct, seen = _all_sum([loss_sum, correct, seen], d, device)
        train_secs = time.perf_counter() - t0
        val = evaluate(net, cache, val_idx, cfg.eval_batch_size, device, d, amp_dtype)
        secs = time.perf_counter() - t0
        if cfg.scheduler == "plateau":
            sched.step(val["val_loss"])
        improved = val["val_loss"] < best["val_loss"]
        bad_epochs = 0 if improved else bad_epochs + 1
        rec = {
            "kind": "epoch", "epoch": epoch, "step": global_step,
            "train_loss": loss_sum / max(seen, 1), "train_acc1": correct / max(seen, 1), **val,
            "lr": opt.param_groups[0]["lr"], "seconds": secs, "train_seconds": train_secs,
            "train_drawings_per_s": seen / max(train_secs, 1e-9), "improved": improved,
        }  # fmt: skip
        if improved:
            best = {
                k: rec[k]
                for k in ("epoch", "step", "train_loss", "train_acc1", "val_loss", "val_acc1", "val_acc3")
            }
        stopped = hit_max or bad_epochs >= cfg.patience
        if hit_max:
            stop_reason = "max_steps"
        elif bad_epochs >= cfg.patience:
            stop_reason = "early_stopping"
        log(
            f"Epoch {epoch:02d} | train_loss={rec['train_loss']:.4f} train_acc1={rec['train_acc1']:.3f} "
            f"val_loss={val['val_loss']:.4f} val_acc1={val['val_acc1']:.3f} val_acc3={val['val_acc3']:.3f} | "
            f"{secs:.1f}s" + (" *" if improved else ""),
            rec,
        )
        if d.main:
            metrics = {
                **{k: rec[k] for k in ("epoch", "step", "val_loss", "val_acc1", "val_acc3")},
                "best": best,
            }
            ckpt = make_checkpoint(
                model, cache.classes, metrics=metrics, encoding_version=enc_version, **describe
            )
            if improved:
                save_checkpoint({**ckpt, "metrics": {**best, "best": best}}, out / "best.pt")
            ckpt["train_state"] = {
                "epoch": epoch, "global_step": global_step, "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "best": best,
                "bad_epochs": bad_epochs, "rng": _rng_state(device), "stopped": stopped,
                "stop_reason": stop_reason, "config": asdict(cfg),
            }  # fmt: skip
            save_checkpoint(ckpt, out / "last.pt")
        if stopped:
            break
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()
    summary = {
        "out": str(out),
        "best": best if math.isfinite(best["val_loss"]) else None,
        "epochs_run": max(epoch - start_epoch + 1, 0),
        "last_epoch": epoch,
        "steps": global_step,
        "stop_reason": stop_reason,
        "best_path": str(out / "best.pt"),
        "last_path": str(out / "last.pt"),
    }
    if d.main:
        b = summary["best"]
        if b:
            print(
                f"best: epoch {b['epoch']} val_loss={b['val_loss']:.4f} val_acc1={b['val_acc1']:.3f} -> {out / 'best.pt'}"
            )
        print(f"stopped: {stop_reason}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python -m doodle_rnn.train` (and torchrun): the same flags as `doodle train`."""
    import argparse

    from doodle_rnn.cli import HelpFormatter
    from doodle_rnn.commands.train import add_arguments, run

    p = argparse.ArgumentParser(prog="python -m doodle_rnn.train", formatter_class=HelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except Exception as exc:
        from doodle_rnn.cli import UserError

        if isinstance(exc, UserError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
