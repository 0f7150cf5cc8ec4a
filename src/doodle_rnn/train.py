"""Training: `train(TrainConfig) -> dict`, behind `doodle train` (also under torchrun: `-m doodle_rnn train`).

AdamW with label smoothing, dropout and gradient clipping; ReduceLROnPlateau on the validation loss
(or OneCycle) and early stopping on it; train-only augmentation in delta space; mixed precision on
CUDA. After every epoch (and every `--save-every-steps` steps) `RUN_DIR/last.pt` holds everything
`--resume` needs to continue exactly (model, optimizer, scheduler, early-stopping state, epoch and
batch, RNG states), and `RUN_DIR/best.pt` the weights with the best validation loss; both are
self-describing checkpoints (see checkpoint.py).

Validation at scale: each epoch is judged on a fixed random subset of the val split (`--val-max`,
20,000 by default, seeded by --seed, so the same drawings every epoch and after --resume), and at the
end best.pt is measured once on the whole split (`val_full` in metrics.jsonl and in best.pt's metrics).

Determinism, so that a resumed run equals an uninterrupted one: the batch order and augmentation of
an epoch are functions of (seed, epoch, step) alone, and the only other randomness (dropout) draws
from torch's generator, whose state is saved with each checkpoint.

Data parallel: under `torchrun` each rank reads only its own share of the train split (blocks of
consecutive drawings dealt round robin, `data.batches.rank_share`) and shuffles it every epoch; all
ranks take the same number of steps; gradients are averaged by DistributedDataParallel, validation
counts (each rank its share of the val rows) are summed across ranks, and only rank 0 writes files
and logs.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from doodle_rnn import gru_cell
from doodle_rnn.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from doodle_rnn.config import TrainConfig, TrainError
from doodle_rnn.data.batches import EpochBatches, epoch_batches, eval_batches, rank_share, steps_per_rank
from doodle_rnn.data.cache import DoodleCache
from doodle_rnn.data.encode import ENCODING_VERSION
from doodle_rnn.data.prefixes import random_prefixes
from doodle_rnn.devices import BF16_MIN_SPEEDUP, cpu_bf16_speedup, pick_device
from doodle_rnn.memory import keep_freed_memory
from doodle_rnn.model import GRUClassifier, ModelConfig
from doodle_rnn.tensors import augment_features, pad_features
from doodle_rnn.text import plural, some

# ---------------------------------------------------------------- setup


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


def _rng_states_of_ranks(d: Dist, device: torch.device) -> list[dict] | None:
    """Every rank's RNG state, gathered (a collective: all ranks call it); None in one process.

    Ranks draw different dropout masks (their batches differ in shape), so a resumed data-parallel
    run continues exactly only when each rank gets its own state back."""
    if d.world <= 1:
        return None
    import torch.distributed as dist

    states: list = [None] * d.world
    dist.all_gather_object(states, _rng_state(device))
    return states


# ---------------------------------------------------------------- one pass


def _epoch_rng(cfg: TrainConfig, epoch: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, epoch, *more])


def train_batches(
    cache: DoodleCache, train_idx: np.ndarray, cfg: TrainConfig, epoch: int, d: Dist | None = None
) -> EpochBatches:
    """This rank's training batches of `epoch` (positions into train_idx), made on demand.

    One process shuffles the whole split; rank r of a data-parallel run shuffles its own share
    (`rank_share`), and every rank takes `steps_per_rank` batches, so that they step together."""
    d = d or Dist()
    n = len(train_idx)
    share = None if d.world <= 1 else rank_share(n, d.rank, d.world)
    rows = train_idx if share is None else train_idx[share]
    rng = _epoch_rng(cfg, epoch) if d.world <= 1 else _epoch_rng(cfg, epoch, d.rank, d.world)
    count = None if d.world <= 1 else steps_per_rank(n, cfg.batch_size, d.world)
    labels = cache.labels[rows] if cfg.batching == "bucket" else None
    pool = 64 if cfg.batching == "bucket" else 1
    return epoch_batches(cache.lengths[rows], cfg.batch_size, rng, pool, labels, count, share)


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
    """Loss (plain cross-entropy) and top-1/top-3 accuracy over `indices`, summed across ranks.

    Each rank reads its share of the rows (`rank_share`); pass the plain model, not its DDP wrapper,
    since ranks may run different numbers of batches here."""
    d = d or Dist()
    model.eval()
    rows = (
        np.asarray(indices)
        if d.world <= 1
        else np.asarray(indices)[rank_share(len(indices), d.rank, d.world)]
    )
    batches = eval_batches(cache.lengths[rows], batch_size, max_steps=batch_size * 64)
    loss_sum = c1 = c3 = n = 0.0
    for b in batches:
        x, lengths, y = _batch_tensors(cache, rows[b], device)
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
    """Console lines (rank 0) plus the same numbers in RUN_DIR/metrics.jsonl.

    `resumed_at` (on --resume): (last complete epoch, step reached inside the next epoch or None); the
    records past that point, written after last.pt was, are dropped, since that work is done again."""

    def __init__(self, out: Path, enabled: bool, resumed_at: tuple[int, int | None] | None):
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        if enabled and resumed_at is not None and self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and _done_before(json.loads(line), *resumed_at)
            ]
            self.path.write_text("".join(k + "\n" for k in kept))
        elif enabled and resumed_at is None:
            self.path.write_text("")

    def __call__(self, line: str | None, record: dict) -> None:
        if not self.enabled:
            return
        if line is not None:
            print(line, flush=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def _done_before(rec: dict, epoch: int, step: int | None) -> bool:
    """Whether a metrics record belongs to the work a resumed run keeps (see `_Log`)."""
    if rec.get("kind") == "val_full":
        return False  # measured again at the end of the resumed run
    if rec.get("epoch", 0) <= epoch:
        return True
    return (
        step is not None and rec.get("kind") == "batch" and rec["epoch"] == epoch + 1 and rec["step"] <= step
    )


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


def _bf16_speedup(cfg: TrainConfig, d: Dist, device: torch.device) -> float | None:
    """The measured bf16/fp32 product speed ratio the CPU run decides by (None: not a CPU run with --amp).

    Ranks of a data-parallel run decide together, by their mean measurement, so that none trains in
    another precision than the rest."""
    if device.type != "cpu" or not cfg.amp:
        return None
    speedup = cpu_bf16_speedup()
    if d.world > 1:
        speedup = _all_sum([speedup], d, device)[0] / d.world
    return speedup


def _cpu_products_reason(speedup: float | None, matmul_dtype: torch.dtype | None) -> str:
    """What the log says about the CPU GRU's product precision: the choice and the measurement behind it."""
    if speedup is None:
        return "fp32 (--no-amp)"
    why = f"measured {speedup:.2f}x fp32 here" if speedup else "unavailable: no AVX512-BF16/AMX"
    return f"{'bf16' if matmul_dtype is not None else 'fp32'} (bf16 {why})"


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


@dataclass
class TrainRun:
    """What a run holds from one epoch to the next: data, model, optimiser, and how far it has come."""

    cfg: TrainConfig
    d: Dist
    out: Path
    device: torch.device
    cache: DoodleCache
    train_idx: np.ndarray
    val_idx: np.ndarray
    model: GRUClassifier
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    net: torch.nn.Module | None = None  # the model, or its DistributedDataParallel wrapper
    log: _Log | None = None
    start_epoch: int = 1
    global_step: int = 0
    best: dict = field(default_factory=lambda: {"val_loss": math.inf})
    bad_epochs: int = 0
    stop_reason: str = "epochs"
    bf16_speedup: float | None = None  # measured bf16/fp32 product ratio (CPU with --amp), see _bf16_speedup
    val_all: np.ndarray | None = None  # the whole val split (val_idx: the per-epoch subset of it)
    resume_at: dict | None = None  # a mid-epoch last.pt's train_state["in_epoch"]: where to continue


@dataclass
class _EpochStats:
    """One epoch's training numbers, summed over ranks."""

    loss_sum: float
    correct: float
    seen: float
    seconds: float
    hit_max: bool  # --max-steps was reached inside the epoch


def _train(cfg: TrainConfig, d: Dist) -> dict:
    run = _setup(cfg, d)
    epoch = run.start_epoch - 1
    for epoch in range(run.start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        stats = _train_epoch(run, epoch)
        if _end_epoch(run, epoch, stats, t0):
            break
    _barrier(d)
    val_full = _final_validation(run) if cfg.final_val else None
    _barrier(d)
    return _summary(run, epoch) | {"val_full": val_full}


def _barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------- setup and resume


def _setup(cfg: TrainConfig, d: Dist) -> TrainRun:
    """Open the data, claim RUN_DIR, build model and optimiser, and restore them on --resume."""
    out = Path(cfg.out)
    _set_threads(cfg, d)
    device = pick_device(cfg.device)
    if d.world > 1 and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    cache, train_idx, val_all = _open_data(cfg)
    val_idx = val_subset(val_all, cfg.val_max, cfg.seed)
    resume_ckpt = _resume_checkpoint(out, cache, cfg) if cfg.resume else None
    init_ckpt = (
        _checkpoint_for("--init-from", cfg.init_from, cache, cfg)
        if cfg.init_from and not resume_ckpt
        else None
    )
    start = resume_ckpt or init_ckpt
    mcfg = ModelConfig(**start["model_config"]) if start else model_config(cfg, cache)
    cfg = _with_model_of(cfg, mcfg)  # config.json records the model trained, whatever the flags said

    _claim_run_dir(out, cfg, d)
    if d.world > 1:  # every rank judges the folder as it was, before rank 0 writes config.json into it
        import torch.distributed as dist

        dist.barrier()
    if d.main:
        _start_run_dir(out, cfg, d, cache, len(train_idx), len(val_all), device)
        if len(val_idx) < len(val_all):
            print(f"validation: each epoch on a fixed random subset of {len(val_idx):,} of the {len(val_all):,} "
                  f"val drawings (--val-max, seed {cfg.seed})"
                  + ("; best.pt on all of them at the end" if cfg.final_val else ""), flush=True)  # fmt: skip

    run = build_run(cfg, d, out, device, cache, train_idx, val_idx, mcfg)
    run.val_all = val_all
    if device.type == "cpu" and d.main:
        print(f"GRU products: {_cpu_products_reason(run.bf16_speedup, run.model.matmul_dtype)}", flush=True)
        print(f"GRU cell: {gru_cell.status()}", flush=True)
    if resume_ckpt is not None:
        _restore(run, resume_ckpt)
    elif init_ckpt is not None:
        run.model.load_state_dict(init_ckpt["model_state"])
        if d.main:
            print(f"weights from {cfg.init_from} (model {json.dumps(init_ckpt['model_config'])}); "
                  "new optimiser and schedule", flush=True)  # fmt: skip
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        run.net = DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    step_in = run.global_step if run.resume_at is not None else None
    run.log = _Log(out, d.main, (run.start_epoch - 1, step_in) if resume_ckpt is not None else None)
    if resume_ckpt is not None and (resume_ckpt["train_state"]["stopped"] or run.start_epoch > cfg.epochs):
        run.stop_reason = resume_ckpt["train_state"].get("stop_reason", "epochs")
        run.start_epoch = cfg.epochs + 1  # nothing left to do
    return run


def build_run(
    cfg: TrainConfig, d: Dist, out: Path, device: torch.device, cache: DoodleCache,
    train_idx: np.ndarray, val_idx: np.ndarray, mcfg: ModelConfig,
) -> TrainRun:  # fmt: skip
    """The recipe's model, optimiser (no decay on biases and gains), schedule and mixed precision."""
    torch.manual_seed(cfg.seed)
    model = GRUClassifier(mcfg).to(device)
    bf16_speedup = _bf16_speedup(cfg, d, device)
    if bf16_speedup is not None and bf16_speedup >= BF16_MIN_SPEEDUP:
        model.matmul_dtype = torch.bfloat16  # fused GRU: bf16 products, fp32 states, gates and gradients
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    n_batches = steps_per_rank(len(train_idx), cfg.batch_size, d.world)
    sched = _make_scheduler(cfg, opt, math.ceil(n_batches / cfg.grad_accum))
    amp_dtype = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    return TrainRun(cfg, d, out, device, cache, train_idx, val_idx, model, opt, sched, scaler, amp_dtype,
                    net=model, bf16_speedup=bf16_speedup)  # fmt: skip


def _set_threads(cfg: TrainConfig, d: Dist) -> None:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    elif d.world > 1:
        torch.set_num_threads(
            max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", d.world)))
        )


def _open_data(cfg: TrainConfig) -> tuple[DoodleCache, np.ndarray, np.ndarray]:
    """The cache and its train and val rows; a cache the run cannot use is a TrainError."""
    from doodle_rnn.data.cache import CacheError

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
    return cache, train_idx, val_idx


def val_subset(val_idx: np.ndarray, val_max: int | None, seed: int) -> np.ndarray:
    """The val rows each epoch is judged on: all of them, or `val_max` drawn at random without
    replacement (numpy default_rng([seed, 1])), kept in cache order; the same for the same cache and
    seed, so every epoch and every resumed leg compares like with like."""
    if not val_max or len(val_idx) <= val_max:
        return val_idx
    pick = np.random.default_rng([seed, 1]).choice(len(val_idx), val_max, replace=False)
    return val_idx[np.sort(pick)]


def _resume_checkpoint(out: Path, cache: DoodleCache, cfg: TrainConfig) -> dict:
    """RUN_DIR/last.pt, checked to hold a training state for this cache's classes."""
    last = out / "last.pt"
    if not last.is_file():
        raise TrainError(f"--resume: {last} does not exist; start without --resume")
    ckpt = _checkpoint_for("--resume", last, cache, cfg)
    if "train_state" not in ckpt:
        raise TrainError(f"--resume: {last} has no training state")
    return ckpt


def _checkpoint_for(flag: str, path: str | Path, cache: DoodleCache, cfg: TrainConfig) -> dict:
    """The checkpoint a run starts from (--resume's last.pt, --init-from's file), checked to classify this
    cache's classes in its order; any problem is a TrainError naming the flag."""
    from doodle_rnn.checkpoint import CheckpointError

    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise TrainError(f"{flag}: {exc}") from exc
    if ckpt["classes"] != cache.classes:
        raise TrainError(
            f"{flag}: {path} classifies {len(ckpt['classes'])} classes, not the "
            f"{len(cache.classes)} of {cfg.data} in their order; prepare the cache with the same classes"
        )
    return ckpt


def _with_model_of(cfg: TrainConfig, mcfg: ModelConfig) -> TrainConfig:
    """`cfg` with its model flags set to `mcfg`'s (the inverse of `model_config`)."""
    return replace(
        cfg, hidden_size=mcfg.hidden_size, num_layers=mcfg.num_layers, bidirectional=mcfg.bidirectional,
        dropout=mcfg.dropout, rnn=mcfg.rnn, conv_channels=tuple(mcfg.conv_channels), conv_kernel=mcfg.conv_kernel,
    )  # fmt: skip


def model_config(cfg: TrainConfig, cache: DoodleCache) -> ModelConfig:
    return ModelConfig(
        num_classes=len(cache.classes),
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        bidirectional=cfg.bidirectional,
        dropout=cfg.dropout,
        rnn=cfg.rnn,
        conv_channels=list(cfg.conv_channels),
        conv_kernel=cfg.conv_kernel,
    )


def _start_run_dir(
    out: Path, cfg: TrainConfig, d: Dist, cache: DoodleCache, n_train: int, n_val: int, device: torch.device
) -> None:
    """Rank 0: write RUN_DIR/config.json and say what is about to be trained on what."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    print(f"config: {json.dumps(asdict(cfg))}", flush=True)
    print(
        f"data: {plural(len(cache.classes), 'class', 'classes')}, train {n_train}, val {n_val}, "
        f"encoding {cache.encoding}; device {device}"
        + (f" x {d.world} ranks" if d.world > 1 else "")
        + f", {plural(torch.get_num_threads(), 'thread')}",
        flush=True,
    )


def _restore(run: TrainRun, ckpt: dict) -> None:
    """Continue exactly where last.pt stopped: weights, optimiser, schedule, early stopping, RNG."""
    ts = ckpt["train_state"]
    run.model.load_state_dict(ckpt["model_state"])
    run.opt.load_state_dict(ts["optimizer"])
    run.sched.load_state_dict(ts["scheduler"])
    run.scaler.load_state_dict(ts["scaler"])
    run.start_epoch, run.global_step = ts["epoch"] + 1, ts["global_step"]
    run.best, run.bad_epochs = dict(ts["best"]), ts["bad_epochs"]
    ranks = ts.get("rng_ranks")
    _set_rng_state(ranks[run.d.rank] if ranks and len(ranks) == run.d.world else ts["rng"], run.device)
    run.resume_at = ts.get("in_epoch")
    if run.resume_at is not None:
        _check_same_batches(run, ts)
    _warn_if_val_changes(run, ts["config"])
    if run.d.main:
        where = (
            f"in epoch {run.start_epoch} after batch {run.resume_at['batches_done']}"
            if run.resume_at is not None
            else f"after epoch {ts['epoch']}"
        )
        print(f"resumed from {run.out / 'last.pt'} {where} (step {run.global_step})", flush=True)


def _warn_if_val_changes(run: TrainRun, old: dict) -> None:
    """Epochs before and after a resume are compared by val loss: say so when they are judged on other
    drawings (another --val-max or --seed; runs from before --val-max validated on the whole split)."""
    before = val_subset(run.val_all, old.get("val_max"), old.get("seed", run.cfg.seed))
    if not run.d.main or np.array_equal(before, run.val_idx):
        return
    print(
        f"warning: the epochs before this resume were judged on {len(before):,} val drawings, these on another "
        f"{len(run.val_idx):,} (--val-max {run.cfg.val_max}, --seed {run.cfg.seed}): their val losses (early "
        "stopping, best.pt) compare other drawings; resume with the old --val-max and --seed to avoid that",
        file=sys.stderr,
        flush=True,
    )


def _check_same_batches(run: TrainRun, ts: dict) -> None:
    """A run resumed mid-epoch skips the batches already taken: they must be the same batches."""
    old, cfg = ts["config"], run.cfg
    same = {k: (old.get(k), getattr(cfg, k)) for k in ("batch_size", "seed", "batching", "grad_accum")}
    same["ranks"] = (run.resume_at.get("world", 1), run.d.world)
    differ = [f"{k} {a} -> {b}" for k, (a, b) in same.items() if a != b]
    if differ:
        raise TrainError(
            f"--resume: {run.out / 'last.pt'} was saved inside epoch {run.start_epoch}, and continuing it "
            f"needs the same batches, but {', '.join(differ)}; resume with the old settings"
        )


# ---------------------------------------------------------------- one epoch


def _train_epoch(run: TrainRun, epoch: int) -> _EpochStats:
    """One pass over this rank's share of the training batches (or up to --max-steps)."""
    from tqdm import tqdm

    cfg, d, device = run.cfg, run.d, run.device
    t0 = time.perf_counter()
    run.net.train()
    batches = train_batches(run.cache, run.train_idx, cfg, epoch, d)
    start, (loss_sum, correct, seen, seconds_before) = _resume_point(run, epoch)
    bar = tqdm(total=len(batches), initial=start, desc=f"epoch {epoch}", leave=False,
               disable=not (d.main and sys.stderr.isatty()))  # fmt: skip
    run.opt.zero_grad(set_to_none=True)
    hit_max = False
    for i in range(start, len(batches)):
        x, lengths, y = batch_inputs(run, epoch, i, batches[i])
        last_micro = (i + 1) % cfg.grad_accum == 0 or i + 1 == len(batches)
        sync = run.net.no_sync() if (d.world > 1 and not last_micro) else nullcontext()
        with sync:
            loss, logits = training_loss(run, x, lengths, y)
            run.scaler.scale(loss / cfg.grad_accum).backward()
        # Read back every step, on purpose: keeping these sums on the GPU (no wait for it per step) measured
        # slower, 9,215 vs 10,165 train drawings/s (wide1k, batch 512, H100, back to back in one session).
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        if last_micro:
            optimizer_step(run)
        bar.update(1)
        if (i + 1) % cfg.log_every == 0:
            _log_batch(run, epoch, i + 1, len(batches), loss_sum / seen, correct / seen)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc1=f"{correct / seen:.3f}")
        if cfg.max_steps is not None and run.global_step >= cfg.max_steps and last_micro:
            hit_max = True
            break
        if (
            last_micro
            and cfg.save_every_steps
            and run.global_step % cfg.save_every_steps == 0
            and i + 1 < len(batches)
        ):
            sums = _all_sum([loss_sum, correct, seen], d, device)
            _save_in_epoch(run, epoch, i + 1, sums, seconds_before + time.perf_counter() - t0)
    bar.close()
    loss_sum, correct, seen = _all_sum([loss_sum, correct, seen], d, device)
    return _EpochStats(loss_sum, correct, seen, seconds_before + time.perf_counter() - t0, hit_max)


def _resume_point(run: TrainRun, epoch: int) -> tuple[int, tuple[float, float, float, float]]:
    """(first batch to take, (loss sum, correct, seen, train seconds) so far) of `epoch`: zeros, or
    where a mid-epoch last.pt left it (the sums, summed over ranks when saved, go to rank 0 alone)."""
    at, run.resume_at = run.resume_at, None
    if at is None or at["epoch"] != epoch:
        return 0, (0.0, 0.0, 0.0, 0.0)
    if not run.d.main:
        return at["batches_done"], (0.0, 0.0, 0.0, 0.0)
    return at["batches_done"], (at["loss_sum"], at["correct"], at["seen"], at["train_seconds"])


def batch_inputs(run: TrainRun, epoch: int, i: int, b: np.ndarray):
    """Training batch `i` of `epoch` (positions `b` into the train split) on the device: prefixes and
    augmentation drawn from (seed, epoch, i, rank) alone."""
    cfg, rank = run.cfg, run.d.rank
    prefix_rng = _epoch_rng(cfg, epoch, i, rank, 1) if cfg.prefix_prob > 0 else None
    x, lengths, y = _batch_tensors(run.cache, run.train_idx[b], run.device, cfg.prefix_prob, prefix_rng)
    if cfg.augment:
        x = augment_features(x, lengths, _epoch_rng(cfg, epoch, i, rank))
    return x.to(run.device, non_blocking=True), lengths, y.to(run.device, non_blocking=True)


def training_loss(run: TrainRun, x: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor):
    """(training loss, logits): the forward pass under the run's autocast, label-smoothed cross-entropy."""
    with torch.autocast(
        run.device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None
    ):
        logits = run.net(x, lengths)
    return F.cross_entropy(logits.float(), y, label_smoothing=run.cfg.label_smoothing), logits


def optimizer_step(run: TrainRun) -> float | None:
    """Clip, step (through the fp16 scaler when it is on), and advance a OneCycle schedule.

    Returns the gradient norm before clipping (None when clipping is off)."""
    norm = None
    if run.cfg.grad_clip > 0:
        run.scaler.unscale_(run.opt)
        norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip))
    run.scaler.step(run.opt)
    run.scaler.update()
    run.opt.zero_grad(set_to_none=True)
    run.global_step += 1
    if run.cfg.scheduler == "onecycle" and run.global_step < run.sched.total_steps:
        run.sched.step()
    return norm


def _log_batch(run: TrainRun, epoch: int, batch: int, batches: int, loss: float, acc1: float) -> None:
    lr = run.opt.param_groups[0]["lr"]
    rec = {"kind": "batch", "epoch": epoch, "batch": batch, "batches": batches, "step": run.global_step,
           "loss": loss, "acc1": acc1, "lr": lr}  # fmt: skip
    run.log(f"  Batch {batch}/{batches} | loss={loss:.4f} acc1={acc1:.3f} lr={lr:.5f}", rec)


# ---------------------------------------------------------------- end of epoch


def _end_epoch(run: TrainRun, epoch: int, stats: _EpochStats, t0: float) -> bool:
    """Validate, step the plateau schedule, judge early stopping, log, save checkpoints; True: stop."""
    cfg = run.cfg
    val = evaluate(run.model, run.cache, run.val_idx, cfg.eval_batch_size, run.device, run.d, run.amp_dtype)
    secs = time.perf_counter() - t0
    if cfg.scheduler == "plateau":
        run.sched.step(val["val_loss"])
    improved = val["val_loss"] < run.best["val_loss"]
    run.bad_epochs = 0 if improved else run.bad_epochs + 1
    seen = max(stats.seen, 1)
    rec = {
        "kind": "epoch", "epoch": epoch, "step": run.global_step,
        "train_loss": stats.loss_sum / seen, "train_acc1": stats.correct / seen, **val,
        "lr": run.opt.param_groups[0]["lr"], "seconds": secs, "train_seconds": stats.seconds,
        "train_drawings_per_s": stats.seen / max(stats.seconds, 1e-9), "improved": improved,
    }  # fmt: skip
    if improved:
        run.best = {
            k: rec[k]
            for k in ("epoch", "step", "train_loss", "train_acc1", "val_loss", "val_acc1", "val_acc3")
        }
    stopped = stats.hit_max or run.bad_epochs >= cfg.patience
    if stats.hit_max:
        run.stop_reason = "max_steps"
    elif run.bad_epochs >= cfg.patience:
        run.stop_reason = "early_stopping"
    run.log(
        f"Epoch {epoch:02d} | train_loss={rec['train_loss']:.4f} train_acc1={rec['train_acc1']:.3f} "
        f"val_loss={val['val_loss']:.4f} val_acc1={val['val_acc1']:.3f} val_acc3={val['val_acc3']:.3f} | "
        f"{secs:.1f}s" + (" *" if improved else ""),
        rec,
    )
    rng_ranks = _rng_states_of_ranks(run.d, run.device)
    if run.d.main:
        _save_checkpoints(run, rec, improved, stopped, rng_ranks)
    return stopped


def _checkpoint(run: TrainRun, metrics: dict) -> dict:
    cache = run.cache
    return make_checkpoint(
        run.model, cache.classes, metrics=metrics, encoding=cache.encoding,
        length_rules=cache.length_rules.to_dict(),
        encoding_version=int(cache.manifest.get("encoding_version", ENCODING_VERSION)),
    )  # fmt: skip


def _train_state(run: TrainRun, epoch_done: int, stopped: bool, rng_ranks: list[dict] | None) -> dict:
    """All that --resume needs besides the weights, after `epoch_done` complete epochs."""
    return {
        "epoch": epoch_done, "global_step": run.global_step, "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict(), "scaler": run.scaler.state_dict(), "best": run.best,
        "bad_epochs": run.bad_epochs, "rng": _rng_state(run.device), "rng_ranks": rng_ranks,
        "stopped": stopped, "stop_reason": run.stop_reason, "config": asdict(run.cfg),
    }  # fmt: skip


def _save_checkpoints(
    run: TrainRun, rec: dict, improved: bool, stopped: bool, rng_ranks: list | None
) -> None:
    """RUN_DIR/best.pt when validation improved, and RUN_DIR/last.pt with all that --resume needs."""
    metrics = {**{k: rec[k] for k in ("epoch", "step", "val_loss", "val_acc1", "val_acc3")}, "best": run.best}
    ckpt = _checkpoint(run, metrics)
    if improved:
        save_checkpoint({**ckpt, "metrics": {**run.best, "best": run.best}}, run.out / "best.pt")
    ckpt["train_state"] = _train_state(run, rec["epoch"], stopped, rng_ranks)
    save_checkpoint(ckpt, run.out / "last.pt")


def _save_in_epoch(run: TrainRun, epoch: int, batches_done: int, sums: list[float], seconds: float) -> None:
    """--save-every-steps: RUN_DIR/last.pt inside `epoch`, after `batches_done` of its batches (a step
    boundary), with the epoch's running sums (over all ranks), so that --resume continues exactly here.
    All ranks call it (they gather their RNG states); rank 0 writes."""
    rng_ranks = _rng_states_of_ranks(run.d, run.device)
    if not run.d.main:
        return
    ckpt = _checkpoint(run, {"epoch": epoch - 1, "step": run.global_step, "best": run.best})
    ckpt["train_state"] = _train_state(run, epoch - 1, False, rng_ranks) | {
        "in_epoch": {"epoch": epoch, "batches_done": batches_done, "loss_sum": sums[0], "correct": sums[1],
                     "seen": sums[2], "train_seconds": seconds, "world": run.d.world},
    }  # fmt: skip
    save_checkpoint(ckpt, run.out / "last.pt")


def _final_validation(run: TrainRun) -> dict | None:
    """best.pt measured on the whole val split, once (a later leg whose best.pt did not change reuses it):
    logged as kind `val_full` and stored in best.pt's metrics. None when there is no best.pt."""
    best_path = run.out / "best.pt"
    if not best_path.is_file():
        return None
    ckpt = load_checkpoint(best_path)
    metrics = ckpt.get("metrics") or {}
    done = metrics.get("val_full")
    if done is not None and done.get("step") == metrics.get("step"):
        rec = done
    else:
        run.model.load_state_dict(ckpt["model_state"])  # training is over: the model becomes best.pt's
        val = (
            evaluate(
                run.model, run.cache, run.val_all, run.cfg.eval_batch_size, run.device, run.d, run.amp_dtype
            )  # fmt: skip
            if len(run.val_all) > len(run.val_idx)
            else {k: metrics[k] for k in ("val_loss", "val_acc1", "val_acc3")} | {"val_n": len(run.val_all)}
        )
        rec = {"kind": "val_full", "of": "best.pt", "epoch": metrics.get("epoch"), "step": metrics.get("step"),
               **val}  # fmt: skip
        if run.d.main:
            save_checkpoint({**ckpt, "metrics": {**metrics, "val_full": rec}}, best_path)
    run.log(
        f"best.pt on the whole val split ({rec['val_n']:,} drawings): val_loss={rec['val_loss']:.4f} "
        f"val_acc1={rec['val_acc1']:.3f} val_acc3={rec['val_acc3']:.3f}",
        rec,
    )
    return rec


def _summary(run: TrainRun, epoch: int) -> dict:
    out, best = run.out, run.best
    summary = {
        "out": str(out),
        "best": best if math.isfinite(best["val_loss"]) else None,
        "epochs_run": max(epoch - run.start_epoch + 1, 0),
        "last_epoch": epoch,
        "steps": run.global_step,
        "stop_reason": run.stop_reason,
        "best_path": str(out / "best.pt"),
        "last_path": str(out / "last.pt"),
    }
    if run.d.main:
        b = summary["best"]
        if b:
            print(
                f"best: epoch {b['epoch']} val_loss={b['val_loss']:.4f} val_acc1={b['val_acc1']:.3f} -> {out / 'best.pt'}"
            )
        print(f"stopped: {run.stop_reason}", flush=True)
    return summary


if __name__ == "__main__":
    # The torchrun entry point is the CLI itself (the library does not import the command layer):
    sys.exit("use `python -m doodle_rnn train ...` (or `torchrun ... -m doodle_rnn train ...`)")
