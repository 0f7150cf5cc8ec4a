"""Data-parallel training: two CPU ranks on gloo under torchrun finish and write files once."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
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


# A crash of the whole job right after its first mid-epoch save: every rank waits for rank 0's file,
# then exits (as when a machine is taken away); torchrun reports the failure.
CRASH_AFTER_SAVE = """
import os, sys
import torch.distributed as dist
import doodle_rnn.train as t
save = t._save_in_epoch
def save_and_stop(*a):
    save(*a)
    dist.barrier()
    os._exit(9)
t._save_in_epoch = save_and_stop
from doodle_rnn.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_torchrun_resumes_from_inside_an_epoch_exactly(tmp_path: Path):
    write_ndjson_per_class(tmp_path / "syn", 800, seed=3)
    prepare_cache(PrepareConfig(inputs=[str(tmp_path / "syn")], out=str(tmp_path / "cache"), progress=False))
    (tmp_path / "crash.py").write_text(CRASH_AFTER_SAVE)

    def torchrun(entry: list[str], out: Path, *more: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), *entry, "train", "--data", str(tmp_path / "cache"),
               "--out", str(out), "--epochs", "2", "--hidden-size", "16", "--batch-size", "16", "--log-every", "4",
               "--device", "cpu", "--save-every-steps", "6", "--num-threads", "1", *more]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    r = torchrun(["-m", "doodle_rnn"], whole)
    assert r.returncode == 0, r.stdout + r.stderr
    r = torchrun([str(tmp_path / "crash.py")], cut)
    assert r.returncode != 0
    ts = load_checkpoint(cut / "last.pt")["train_state"]
    assert ts["epoch"] == 0 and ts["in_epoch"]["batches_done"] == 6 and len(ts["rng_ranks"]) == 2
    r = torchrun(["-m", "doodle_rnn"], cut, "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "in epoch 1 after batch 6 (step 6)" in r.stdout
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(cut / "last.pt")
    assert a["train_state"]["global_step"] == b["train_state"]["global_step"] > 6
    for k, v in a["model_state"].items():
        torch.testing.assert_close(b["model_state"][k], v, atol=1e-6, rtol=0, msg=k)
    ea = [
        x for x in map(json.loads, (whole / "metrics.jsonl").read_text().splitlines()) if x["kind"] == "epoch"
    ]
    eb = [
        x for x in map(json.loads, (cut / "metrics.jsonl").read_text().splitlines()) if x["kind"] == "epoch"
    ]
    assert [e["epoch"] for e in eb] == [1, 2]
    for x, y in zip(ea, eb, strict=True):  # the epoch's sums: rank 0 carried both ranks' first 6 batches
        for key in ("train_loss", "train_acc1", "val_loss", "val_acc1"):
            assert y[key] == pytest.approx(x[key], abs=1e-6), key
