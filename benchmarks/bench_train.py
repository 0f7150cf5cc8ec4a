"""Training and validation throughput of the default model (2 x bi-GRU 192) at batch 192, on CPU.

Data (synthetic, labelled so in the output): 25,500 drawings of the 10 animal classes, made by
resampling the real simplified animal drawings in the shared Quick, Draw! sample with small jitter
(Gaussian, 1 px, on every point), 2,550 per class, split 85/15 by key_id hash (about 21,675 train,
3,825 val). Encoding `reference` by default (mean ~50 steps, like the reference trainer's data).

Training is one epoch of the real `train()` loop (batch building, augmentation, forward, backward,
AdamW, clipping), so the number is what `doodle train` gets; validation is `train.evaluate` at batch
192. FLOPs count real steps only (no padding): forward per step = sum over layers and directions of
2 * (in * 3H + H * 3H) multiply-adds x 2, training = 3 x forward. The fp32 matmul peak is measured
in the same run with the same threads.

    python benchmarks/bench_train.py [--max-batches 40] [--num-threads N] [--impl fused|packed]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import torch
from machine_facts import cpu_steal, machine_facts, sync_device

from doodle_rnn.data.cache import DoodleCache, PrepareConfig, prepare_cache
from doodle_rnn.data.formats import iter_drawings
from doodle_rnn.model import GRUClassifier
from doodle_rnn.train import evaluate

ANIMALS = (
    "butterfly",
    "cow",
    "elephant",
    "giraffe",
    "monkey",
    "octopus",
    "scorpion",
    "shark",
    "snake",
    "spider",
)
SHARED = Path(os.environ.get("DOODLE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REAL = SHARED / "data" / "quickdraw" / "simplified"


def make_data(out: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    for word in ANIMALS:
        src = [d.strokes for d in iter_drawings(REAL / f"{word}.ndjson")]
        with open(out / f"{word}.ndjson", "wb") as fh:
            for i in range(per_class):
                strokes = src[rng.integers(len(src))]
                jit = [
                    [np.clip(np.rint(np.asarray(s[k], float) + rng.normal(0, 1.0, len(s[k]))), 0, 255).astype(int).tolist()
                     for k in (0, 1)]
                    for s in strokes
                ]  # fmt: skip
                rec = {
                    "word": word,
                    "key_id": f"bench-{word}-{i}",
                    "recognized": True,
                    "countrycode": "ZZ",
                    "drawing": jit,
                }
                fh.write(orjson.dumps(rec) + b"\n")


def flops_per_step(model: GRUClassifier) -> float:
    c = model.cfg
    dirs = 2 if c.bidirectional else 1
    total, fan_in = 0, c.input_size
    for _ in range(c.num_layers):
        total += dirs * 2 * (fan_in * 3 * c.hidden_size + c.hidden_size * 3 * c.hidden_size)
        fan_in = c.hidden_size * dirs
    return float(total)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-batches", type=int, default=None, help="train/validate on this many batches only")
    p.add_argument("--num-threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--per-class", type=int, default=2550, help="drawings per class")
    p.add_argument("--encoding", default="reference", help="step encoding of the cache")
    p.add_argument("--batching", default="random", choices=("random", "bucket"), help="training batches")
    p.add_argument("--impl", default="auto", choices=("auto", "fused", "packed"), help="GRU implementation")
    p.add_argument("--batch-size", type=int, default=192, help="batch size")
    p.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="where to train (cuda: packed nn.GRU)"
    )
    p.add_argument("--lr", type=float, default=0.002, help="peak learning rate")
    p.add_argument(
        "--fp32", action="store_true", help="fp32 products even where the CPU has fast bf16 (--no-amp)"
    )
    args = p.parse_args()
    if not REAL.is_dir():
        print(json.dumps({"error": f"needs the shared sample at {REAL}"}))
        return 1
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_data(tmp / "ndjson", args.per_class, seed=0)
        prepare_cache(PrepareConfig(inputs=[str(tmp / "ndjson")], out=str(tmp / "cache"), val_frac=0.15,
                                    test_frac=0.0, encoding=args.encoding, progress=False))  # fmt: skip
        cache = DoodleCache(tmp / "cache")
        tr, va = cache.split_indices("train"), cache.split_indices("val")
        device = torch.device(args.device)
        facts = machine_facts(args.device)
        peak, peak_bf16 = facts["matmul_peak_gflops"]["fp32"], facts["matmul_peak_gflops"]["bf16"]
        argv = [
            "train",
            "--data",
            str(tmp / "cache"),
            "--out",
            str(tmp / "run"),
            "--epochs",
            "1",
            "--batch-size",
            str(args.batch_size),
            "--log-every",
            str(10**9),
            "--batching",
            args.batching,
            "--device",
            args.device,
            "--lr",
            str(args.lr),
            "--amp" if not args.fp32 else "--no-amp",
        ]
        if args.max_batches:
            argv += ["--max-steps", str(args.max_batches)]
        if args.num_threads:
            argv += ["--num-threads", str(args.num_threads)]
        # What a user waits for: a fresh `doodle train` process, from its start (imports, cache, model) to
        # the checkpoint written and the process gone; the loop alone is its logged train_seconds.
        code = (f"import doodle_rnn.model as m; m.GRUClassifier.__init__.__defaults__ = ({args.impl!r},); "
                f"from doodle_rnn.cli import main; raise SystemExit(main({argv!r}))")  # fmt: skip
        steal0 = cpu_steal()
        t0 = time.perf_counter()
        child = subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.PIPE, text=True)
        whole_epoch = time.perf_counter() - t0
        steal = cpu_steal(since=steal0)
        records = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
        rec = [r for r in records if r.get("kind") == "epoch"][-1]  # not the closing val_full record
        child_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        n_train = int(round(rec["train_drawings_per_s"] * rec["train_seconds"]))
        from doodle_rnn.checkpoint import build_model, load_checkpoint

        model = build_model(load_checkpoint(tmp / "run" / "last.pt")).to(device)
        model.impl = args.impl
        if any(line.startswith("GRU products: bf16") for line in child.stdout.splitlines()):
            model.matmul_dtype = torch.bfloat16  # validate in the products the training process chose
        vidx = va
        if args.max_batches:
            vidx = np.random.default_rng(1).permutation(va)[: args.max_batches * args.batch_size]
        amp_dtype = torch.bfloat16 if not args.fp32 and device.type == "cuda" else None
        t0 = time.perf_counter()
        val = evaluate(model, cache, vidx, args.batch_size, device, amp_dtype=amp_dtype)
        sync_device(device)
        val_secs = time.perf_counter() - t0
        fps = flops_per_step(model)
        mean_steps_train = float(cache.lengths[tr].mean())
        mean_steps_val = float(cache.lengths[vidx].mean())
        train_gflops = rec["train_drawings_per_s"] * mean_steps_train * fps * 3 / 1e9
        val_dps = len(vidx) / val_secs
        # the whole process's work: the epoch's training plus its validation pass over every val drawing
        whole_gflops = (
            (n_train * mean_steps_train * fps * 3 + len(va) * float(cache.lengths[va].mean()) * fps)
            / whole_epoch
            / 1e9
        )
        val_gflops = val_dps * mean_steps_val * fps / 1e9
        print(json.dumps({
            "benchmark": "train",
            "data": "synthetic: real simplified animal drawings (10 classes) resampled with 1 px Gaussian jitter",
            "encoding": args.encoding,
            "drawings": {"train": len(tr), "val": len(va), "mean_steps": round(float(cache.lengths.mean()), 1)},
            "model": {**model.cfg.to_dict(), "impl": args.impl, "batching": args.batching, "matmul_dtype": str(model.matmul_dtype or "float32")},
            "batch_size": args.batch_size,
            "max_batches": args.max_batches,
            "whole_epoch": {"seconds": round(whole_epoch, 2), "what": "doodle train process: start to checkpoint written and exit",
                            "train_drawings_per_s": round(n_train / whole_epoch, 1), "gflops": round(whole_gflops, 1),
                            "fraction_of_bf16_peak": round(whole_gflops / peak_bf16, 3),
                            "fraction_of_best_peak": round(whole_gflops / max(peak, peak_bf16), 3),
                            "peak_rss_mb": round(child_rss_mb, 1)},
            "cpu_steal_share": steal,
            "train": {"drawings": n_train, "seconds": round(rec["train_seconds"], 2),
                      "drawings_per_s": round(rec["train_drawings_per_s"], 1), "gflops": round(train_gflops, 1)},
            "val": {"drawings": len(vidx), "seconds": round(val_secs, 2), "drawings_per_s": round(val_dps, 1),
                    "gflops": round(val_gflops, 1), "val_acc1": round(val["val_acc1"], 4)},
            "flops_per_step_forward": fps,
            "fraction_of_peak": {"train": round(train_gflops / peak, 3), "val": round(val_gflops / peak, 3)},
            "fraction_of_bf16_peak": {"train": round(train_gflops / peak_bf16, 3), "val": round(val_gflops / peak_bf16, 3)},
            "fraction_of_best_peak": {"train": round(train_gflops / max(peak, peak_bf16), 3),
                                      "val": round(val_gflops / max(peak, peak_bf16), 3),
                                      "what": "the faster of the in-run fp32 and bf16 product peaks: the machine's ceiling"},
            "peak_rss_mb_validation_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "machine": facts,
        }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
