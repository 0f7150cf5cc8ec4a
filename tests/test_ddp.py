"""Data-parallel training: two CPU ranks on gloo under torchrun finish and write files once."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import torch

from doodle_rnn.checkpoint import load_checkpoint
from doodle_rnn.data.cache import PrepareConfig, prepare_cache
from doodle_rnn.data.synthetic import write_ndjson_per_class


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_ranks(tmp_path: Path):
    write_ndjson_per_class(tmp_path / "syn", 800, seed=3)
    prepare_cache(PrepareConfig(inputs=[str(tmp_path / "syn")], out=str(tmp_path / "cache"), progress=False))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "doodle_rnn", "train", "--data", str(tmp_path / "cache"),
           "--out", str(run), "--epochs", "2", "--hidden-size", "16", "--batch-size", "16", "--max-steps", "12",
           "--log-every", "4", "--device", "cpu", "--save-every-steps", "5"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    # only rank 0 prints and writes
    assert r.stdout.count("config: {") == 1
    assert "x 2 ranks" in r.stdout
    assert r.stdout.count("GRU products: ") == 1  # rank 0 says which products the ranks use
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in recs if x["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1]  # 12 steps < one epoch of 637 / 16 / 2 batches per rank
    assert epochs[0]["step"] == 12
    # validation covered the whole val split once, summed over both ranks
    n_val = json.loads((tmp_path / "cache" / "manifest.json").read_text())["split_counts"]["val"]
    assert epochs[0]["val_n"] == n_val
    # and best.pt's measurement on the whole split is logged once at the end (here: the same rows)
    full = [x for x in recs if x["kind"] == "val_full"]
    assert len(full) == 1 and full[0]["val_n"] == n_val and full[0]["val_loss"] == epochs[0]["val_loss"]
    batch_recs = [x for x in recs if x["kind"] == "batch"]
    assert [b["batch"] for b in batch_recs] == [4, 8, 12]
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.jsonl"]
    last = load_checkpoint(run / "last.pt")
    assert last["train_state"]["global_step"] == 12
    # state dict is the plain model's (no DDP "module." prefix), so it loads anywhere
    assert all(not k.startswith("module.") for k in last["model_state"])
    assert torch.isfinite(torch.tensor(epochs[0]["val_loss"]))
