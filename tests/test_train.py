"""Training end to end on real files: learning, checkpoints, logs, exact resume after SIGKILL, lr-find."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from doodle_rnn.checkpoint import build_model, load_checkpoint
from doodle_rnn.data.batches import steps_per_rank
from doodle_rnn.data.cache import DoodleCache, PrepareConfig, prepare_cache
from doodle_rnn.data.encode import DEFAULT_ENCODING
from doodle_rnn.data.synthetic import write_ndjson_per_class
from doodle_rnn.devices import BF16_MIN_SPEEDUP, cpu_has_bf16_isa
from doodle_rnn.lr_find import suggest
from doodle_rnn.tensors import augment_features, pad_features
from doodle_rnn.train import Dist, TrainConfig, train, train_batches


def _cache(root: Path, n: int, seed: int = 1) -> Path:
    write_ndjson_per_class(root / "syn", n, seed=seed)
    prepare_cache(PrepareConfig(inputs=[str(root / "syn")], out=str(root / "cache"), progress=False))
    return root / "cache"


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory) -> Path:
    return _cache(tmp_path_factory.mktemp("small"), 1200)


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "doodle_rnn", *args], capture_output=True, text=True, **kw)


def _epochs(run: Path) -> list[dict]:
    return [
        r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"
    ]


def test_learns_synthetic_shapes_to_98_percent_in_about_a_minute(tmp_path):
    cache = _cache(tmp_path, 4000)
    cpu0 = time.process_time()  # CPU time, not wall time: the test machine is shared
    cfg = TrainConfig(data=str(cache), out=str(tmp_path / "run"), epochs=12, batch_size=64, hidden_size=64,
                      num_threads=1, log_every=10_000)  # fmt: skip
    summary = train(cfg)
    cpu_secs = time.process_time() - cpu0
    assert summary["best"]["val_acc1"] >= 0.98, summary
    assert cpu_secs < 90, cpu_secs  # ~25 CPU seconds when measured
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["classes"] == DoodleCache(cache).classes
    assert ckpt["metrics"]["val_acc1"] == summary["best"]["val_acc1"]


def test_cli_writes_config_logs_and_self_describing_checkpoints(small_cache, tmp_path):
    run = tmp_path / "run"
    r = _cli("train", "--data", str(small_cache), "--out", str(run), "--epochs", "2", "--hidden-size", "16",
             "--batch-size", "32", "--log-every", "10", "--num-threads", "1", "--no-augment", "--no-amp")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "config: {" in r.stdout
    lines = r.stdout.splitlines()
    batch_lines = [x for x in lines if x.startswith("  Batch ")]
    epoch_lines = [x for x in lines if x.startswith("Epoch ")]
    assert len(epoch_lines) == 2 and epoch_lines[0].startswith("Epoch 01 | train_loss=")
    assert batch_lines and " | loss=" in batch_lines[0] and " lr=" in batch_lines[0]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["hidden_size"] == 16 and cfg["augment"] is False and cfg["epochs"] == 2
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [x for x in recs if x["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert len([x for x in recs if x["kind"] == "batch"]) == len(batch_lines)
    # the console numbers are the file's numbers
    assert f"val_loss={epochs[1]['val_loss']:.4f}" in epoch_lines[1]
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run / name, map_location="cpu", weights_only=True)
        assert ckpt["encoding"] == DEFAULT_ENCODING and ckpt["length_rules"] == {"min_len": 6, "max_len": 250}
        assert ckpt["model_config"]["hidden_size"] == 16 and len(ckpt["classes"]) == 8
        assert ckpt["package_version"]
    best = load_checkpoint(run / "best.pt")
    assert "train_state" not in best
    assert best["metrics"]["val_loss"] == min(e["val_loss"] for e in epochs)
    # the loss fell
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    # the saved model reproduces the logged validation loss
    model = build_model(best)
    cache = DoodleCache(small_cache)
    idx = cache.split_indices("val")
    x, lengths = pad_features(*cache.batch_steps(idx))
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(
            model(x, lengths), torch.from_numpy(cache.labels[idx].astype(np.int64))
        )
    assert loss.item() == pytest.approx(best["metrics"]["val_loss"], rel=1e-4)


def test_user_errors_are_one_line(tmp_path, small_cache):
    r = _cli("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "doodle prepare" in r.stderr
    r = _cli("train", "--data", str(small_cache), "--out", str(tmp_path / "run"), "--resume")
    assert r.returncode == 2 and "last.pt does not exist" in r.stderr


def test_a_run_folder_holding_a_run_is_refused_unless_resume_or_overwrite(small_cache, tmp_path):
    run = tmp_path / "run"
    args = ("train", "--data", str(small_cache), "--out", str(run), "--epochs", "1", "--hidden-size", "8",
            "--batch-size", "64", "--num-threads", "1", "--max-steps", "2", "--log-every", "1000")  # fmt: skip
    assert _cli(*args).returncode == 0
    (run / "eval").mkdir()
    (run / "model.onnx").write_bytes(b"old export")
    before = {f: (run / f).read_bytes() for f in ("best.pt", "metrics.jsonl")}
    r = _cli(*args)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1
    assert "already holds a training run" in r.stderr and "best.pt" in r.stderr
    assert "--resume" in r.stderr and "--overwrite" in r.stderr and "model.onnx" in r.stderr
    assert {f: (run / f).read_bytes() for f in before} == before  # nothing was touched
    r = _cli(*args, "--overwrite", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert "removed the previous run" in r.stdout and "model.onnx" in r.stderr and "eval/" in r.stderr
    assert (run / "best.pt").read_bytes() != before["best.pt"]
    assert json.loads((run / "config.json").read_text())["seed"] == 3
    r = _cli(*args, "--overwrite", "--resume")
    assert r.returncode == 2 and "give one" in r.stderr


def test_resume_after_sigkill_equals_an_uninterrupted_run(small_cache, tmp_path):
    args = ["--data", str(small_cache), "--epochs", "3", "--hidden-size", "16", "--batch-size", "16",
            "--num-threads", "1", "--log-every", "5", "--patience", "10"]  # fmt: skip
    whole = tmp_path / "whole"
    r = _cli("train", *args, "--out", str(whole))
    assert r.returncode == 0, r.stderr

    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "doodle_rnn", "train", *args, "--out", str(cut)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while not (cut / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = load_checkpoint(cut / "last.pt")["train_state"]["epoch"]
    assert done < 3  # killed before the end

    r = _cli("train", *args, "--out", str(cut), "--resume")
    assert r.returncode == 0, r.stderr
    assert f"resumed from {cut / 'last.pt'} after epoch {done}" in r.stdout
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(cut / "last.pt")
    assert a["train_state"]["epoch"] == b["train_state"]["epoch"] == 3
    for k, v in a["model_state"].items():
        torch.testing.assert_close(b["model_state"][k], v, atol=1e-6, rtol=0, msg=k)
    ea, eb = _epochs(whole), _epochs(cut)
    assert [e["epoch"] for e in eb] == [1, 2, 3]
    for x, y in zip(ea, eb, strict=True):
        for key in ("train_loss", "train_acc1", "val_loss", "val_acc1", "lr"):
            assert y[key] == pytest.approx(x[key], abs=1e-6), key
    # optimizer state resumed too (AdamW step counts and moments)
    sa, sb = a["train_state"]["optimizer"]["state"], b["train_state"]["optimizer"]["state"]
    for k in sa:
        torch.testing.assert_close(sb[k]["exp_avg_sq"], sa[k]["exp_avg_sq"], atol=1e-9, rtol=1e-5)


def test_init_from_starts_a_new_cycle_from_a_runs_weights(small_cache, tmp_path):
    """--init-from: the checkpoint's weights and model shape (its flags win over the command's), a fresh
    optimiser and schedule, and a clear error for a checkpoint of other classes."""
    base = ("--data", str(small_cache), "--epochs", "1", "--batch-size", "64", "--num-threads", "1",
            "--log-every", "1000", "--no-final-val")  # fmt: skip
    r = _cli("train", *base, "--out", str(tmp_path / "a"), "--hidden-size", "8", "--max-steps", "6")
    assert r.returncode == 0, r.stderr
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    # a rate of 1e-12 leaves the weights where they were: B starts exactly at A's
    r = _cli("train", *base, "--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a" / "last.pt"),
             "--hidden-size", "16", "--scheduler", "onecycle", "--lr", "1e-12", "--max-steps", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (
        f"weights from {tmp_path / 'a' / 'last.pt'}" in r.stdout and "new optimiser and schedule" in r.stdout
    )
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    assert b["model_config"] == a["model_config"] and b["model_config"]["hidden_size"] == 8
    assert json.loads((tmp_path / "b" / "config.json").read_text())["hidden_size"] == 8
    for k, v in a["model_state"].items():
        torch.testing.assert_close(b["model_state"][k], v, atol=1e-6, rtol=0, msg=k)
    assert b["train_state"]["global_step"] == 2  # its own count, not A's 6
    assert b["train_state"]["optimizer"]["state"][0]["step"].item() == 2
    # without the tiny rate the weights move on from A's
    r = _cli("train", *base, "--out", str(tmp_path / "c"), "--init-from", str(tmp_path / "a" / "last.pt"),
             "--max-steps", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    c = load_checkpoint(tmp_path / "c" / "last.pt")
    assert any(not torch.equal(c["model_state"][k], v) for k, v in a["model_state"].items())

    classes = DoodleCache(small_cache).classes
    prepare_cache(PrepareConfig(inputs=[str(small_cache.parent / "syn")], out=str(tmp_path / "fewer"),
                                classes=classes[:2], progress=False))  # fmt: skip
    r = _cli("train", "--data", str(tmp_path / "fewer"), "--out", str(tmp_path / "d"),
             "--init-from", str(tmp_path / "a" / "last.pt"))  # fmt: skip
    assert r.returncode == 2 and r.stderr.startswith("error: --init-from: ")
    assert f"classifies {len(classes)} classes, not the 2 of" in r.stderr and not (tmp_path / "d").exists()
    r = _cli("train", *base, "--out", str(tmp_path / "e"), "--init-from", str(tmp_path / "nope.pt"))
    assert r.returncode == 2 and r.stderr.startswith("error: --init-from: ") and "nope.pt" in r.stderr


def test_onecycle_grad_accum_and_max_steps(small_cache, tmp_path):
    cfg = TrainConfig(data=str(small_cache), out=str(tmp_path / "run"), epochs=5, batch_size=16, hidden_size=16,
                      scheduler="onecycle", grad_accum=2, max_steps=7, num_threads=1, log_every=10_000)  # fmt: skip
    summary = train(cfg)
    assert summary["steps"] == 7 and summary["stop_reason"] == "max_steps" and summary["last_epoch"] == 1
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["train_state"]["global_step"] == 7
    assert last["train_state"]["optimizer"]["state"][0]["step"].item() == 7


def test_augmentation_changes_steps_but_not_pen_lifts_or_padding():
    steps = np.array([[10, 0, 0], [0, 10, 1], [-10, 0, 0], [5, 5, 1], [3, 3, 1]], dtype=np.int16)
    x, lengths = pad_features(steps, np.array([4, 1]))
    y = augment_features(x, lengths, np.random.default_rng(0))
    assert torch.equal(y[..., 2], x[..., 2])
    assert torch.all(y[1, 1:] == 0)  # padding stays zero
    assert not torch.allclose(y[..., :2], x[..., :2])
    # a linear map in delta space: the length of a step changes by at most the scale range (+ jitter)
    ratio = y[0, :4, :2].norm(dim=1) / x[0, :4, :2].norm(dim=1)
    assert torch.all((ratio > 0.8) & (ratio < 1.2))
    again = augment_features(x, lengths, np.random.default_rng(0))
    assert torch.equal(again, y)  # seeded: resumable


def test_every_rank_gets_the_same_count_of_batches(small_cache):
    cache = DoodleCache(small_cache)
    tr = cache.split_indices("train")
    cfg = TrainConfig(data=str(small_cache), out="-", batch_size=7)
    shards = [train_batches(cache, tr, cfg, 1, Dist(rank=r, world=3)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == steps_per_rank(len(tr), 7, 3)
    taken = np.concatenate([b for s in shards for b in s])
    assert len(np.unique(taken)) == len(taken) > len(tr) - 3 * 7 * 8  # each rank leaves out < its last blocks
    one = train_batches(cache, tr, cfg, 1)
    assert len(one) == -(-len(tr) // 7) and np.array_equal(
        np.sort(np.concatenate(list(one))), np.arange(len(tr))
    )


def test_real_data_smoke_loss_falls(tmp_path, bundled_dir):
    """Real drawings (the bundled ones, 200 of each of 5 animals): two epochs and the loss falls."""
    classes = ["monkey", "cow", "snake", "spider", "octopus"]
    m = prepare_cache(PrepareConfig(inputs=[str(bundled_dir / f"{c}.ndjson.gz") for c in classes],
                                    out=str(tmp_path / "cache"), max_per_class=200, progress=False))  # fmt: skip
    assert m["classes"] == sorted(classes)
    assert all(190 <= sum(c.values()) <= 200 for c in m["counts"].values())  # a few too short or repeated
    summary = train(TrainConfig(data=str(tmp_path / "cache"), out=str(tmp_path / "run"), epochs=2, batch_size=32,
                                hidden_size=32, num_threads=2, log_every=10_000, patience=5))  # fmt: skip
    ep = _epochs(tmp_path / "run")
    assert len(ep) == 2 and ep[1]["train_loss"] < ep[0]["train_loss"]
    assert summary["best"] is not None


def test_lr_find_writes_plots_and_suggests_a_rate(small_cache, tmp_path):
    out = tmp_path / "lrf"
    r = _cli("lr-find", "--data", str(small_cache), "--out", str(out), "--hidden-size", "16", "--batch-size", "16",
             "--num-iter", "60", "--start-lr", "1e-5", "--end-lr", "10", "--num-threads", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "lr_find.json").read_text())
    assert f"suggested lr: {res['suggested_lr']:.2e}" in r.stdout
    assert r.stdout.startswith("lr-find: up to 60 batches")  # says what it does before the batches run
    assert f"doodle train --data {small_cache} --out RUN_DIR --lr {res['suggested_lr']:.1e}" in r.stdout
    lrs = res["lr"]
    assert lrs[0] == pytest.approx(1e-5) and all(b > a for a, b in zip(lrs, lrs[1:], strict=False))
    # the suggestion is suggest() of the curve it recorded (suggest itself: test_lr_find.py)
    assert res["suggested_lr"] == suggest(lrs, res["smoothed_loss"])
    assert len(res["grad_norm"]) == len(lrs) == res["iterations"] <= 60
    for name in ("lr_find.png", "grad_norm.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cpu_products_follow_the_measured_bf16_speedup(small_cache, tmp_path):
    """The log says which products the GRU uses and why; bf16 only where it measured >= 1.25x fp32."""
    r = _cli("train", "--data", str(small_cache), "--out", str(tmp_path / "run"), "--epochs", "1", "--max-steps", "2",
             "--hidden-size", "16", "--batch-size", "32", "--num-threads", "1", "--device", "cpu")  # fmt: skip
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("GRU products: "))
    m = re.fullmatch(
        r"GRU products: (bf16|fp32) \(bf16 (?:measured ([0-9.]+)x fp32 here|unavailable: .*)\)", line
    )
    assert m, line
    if m[2] is None:
        assert m[1] == "fp32" and not cpu_has_bf16_isa()
    else:
        assert cpu_has_bf16_isa() and (m[1] == "bf16") == (float(m[2]) >= BF16_MIN_SPEEDUP)
    r = _cli("train", "--data", str(small_cache), "--out", str(tmp_path / "run2"), "--epochs", "1", "--max-steps", "2",
             "--hidden-size", "16", "--batch-size", "32", "--num-threads", "1", "--device", "cpu", "--no-amp")  # fmt: skip
    assert r.returncode == 0 and "GRU products: fp32 (--no-amp)" in r.stdout.splitlines()


def test_measuring_bf16_leaves_the_seeded_generator_alone():
    """The probe runs inside a seeded run (after the model's initialisation): it must not draw from it."""
    from doodle_rnn.devices import _product_seconds

    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    _product_seconds([(8, 8, 8, 1)], torch.float32)
    assert torch.equal(torch.rand(3), expected)
