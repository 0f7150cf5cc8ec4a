"""Temperature scaling: the fit recovers a known temperature, and `doodle calibrate` repairs an
over-confident model (lower ECE and NLL, same predictions) without touching the original checkpoint."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from doodle_rnn.calibrate import calibration_numbers, fit_temperature, nll_at
from doodle_rnn.checkpoint import build_model, load_checkpoint, make_checkpoint, save_checkpoint
from doodle_rnn.data.cache import DoodleCache, PrepareConfig, prepare_cache
from doodle_rnn.data.synthetic import write_ndjson_per_class
from doodle_rnn.model import GRUClassifier, ModelConfig
from doodle_rnn.tensors import iterate_cache


def doodle(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "doodle_rnn", *args], capture_output=True, text=True, timeout=300
    )


def test_fit_recovers_a_known_temperature():
    """Labels drawn from softmax(z); the model reports 3 z: the best temperature is 3."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (20000, 6))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)
    t = fit_temperature(3 * z, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    assert nll_at(3 * z, labels, t) < nll_at(3 * z, labels, 1.0)
    assert nll_at(3 * z, labels, t) <= min(nll_at(3 * z, labels, s) for s in (2.8, 3.2))
    # temperature never changes the ranking, so accuracy is unchanged
    assert calibration_numbers(3 * z, labels, t)["ece"] < calibration_numbers(3 * z, labels, 1.0)["ece"]


def test_calibrate_cli_fixes_an_overconfident_model(tmp_path):
    write_ndjson_per_class(tmp_path / "files", 400, seed=3)
    prepare_cache(PrepareConfig(inputs=[str(tmp_path / "files")], out=str(tmp_path / "cache"), val_frac=0.3,
                                test_frac=0.2, progress=False))  # fmt: skip
    cache = DoodleCache(tmp_path / "cache")
    torch.manual_seed(0)
    model = GRUClassifier(
        ModelConfig(num_classes=len(cache.classes), hidden_size=32, num_layers=1, dropout=0.0)
    )
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    for ep in range(5):
        for _, x, lengths, y in iterate_cache(cache, cache.split_indices("train"), 32, shuffle=True, seed=ep):
            loss = torch.nn.functional.cross_entropy(model(x, lengths), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():  # make it deliberately over-confident: logits x 10
        model.fc.weight.mul_(10)
        model.fc.bias.mul_(10)
    src = tmp_path / "hot.pt"
    save_checkpoint(
        make_checkpoint(model.eval(), cache.classes, cache.encoding, cache.length_rules.to_dict()), src
    )
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "calibrated.pt"

    r = doodle("calibrate", "--checkpoint", str(src), "--data", str(tmp_path / "cache"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    nums = {k: tuple(map(float, re.search(rf"{k}:\s+temperature (\S+)\s+NLL (\S+)\s+ECE (\S+)", r.stdout).groups()))
            for k in ("before", "after")}  # fmt: skip
    (t0, nll0, ece0), (t1, nll1, ece1) = nums["before"], nums["after"]
    assert t0 == 1.0 and t1 > 2.0  # logits were scaled by 10: a large temperature undoes it
    assert nll1 < nll0 and ece1 < ece0
    assert nll1 < 0.8 * nll0

    calibrated = load_checkpoint(out)
    assert calibrated["temperature"] == pytest.approx(t1, rel=1e-3)
    c = calibrated["metrics"]["calibration"]
    assert c["split"] == "val" and c["n_drawings"] == cache.manifest["split_counts"]["val"]
    assert c["before"]["nll"] == pytest.approx(nll0, abs=1e-4) and c["after"]["ece"] == pytest.approx(
        ece1, abs=1e-4
    )
    assert c["source_checkpoint_sha256"] == digest
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest  # the original is untouched
    assert load_checkpoint(src)["temperature"] == 1.0
    # same weights, so the same predictions
    a, b = build_model(load_checkpoint(src)), build_model(calibrated)
    assert all(
        torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )

    # `doodle eval` applies the stored temperature: the test split is better calibrated too
    for name, ck in (("hot", src), ("cal", out)):
        r = doodle(
            "eval", "--checkpoint", str(ck), "--data", str(tmp_path / "cache"), "--out", str(tmp_path / name)
        )
        assert r.returncode == 0, r.stderr
    hot = json.loads((tmp_path / "hot" / "summary.json").read_text())
    cal = json.loads((tmp_path / "cal" / "summary.json").read_text())
    assert cal["temperature"] == pytest.approx(t1, rel=1e-3) and hot["temperature"] == 1.0
    assert cal["metrics"]["top1"] == hot["metrics"]["top1"]
    assert cal["metrics"]["confusion_matrix"] == hot["metrics"]["confusion_matrix"]
    assert cal["metrics"]["nll"] < hot["metrics"]["nll"] and cal["metrics"]["ece"] < hot["metrics"]["ece"]


def test_calibrate_missing_checkpoint_is_a_clear_error(tmp_path):
    write_ndjson_per_class(tmp_path / "files", 40, seed=0)
    r = doodle("calibrate", "--checkpoint", str(tmp_path / "absent.pt"), "--data", str(tmp_path / "files"),
               "--out", str(tmp_path / "x.pt"))  # fmt: skip
    assert r.returncode == 2 and f"{tmp_path / 'absent.pt'}: checkpoint not found" in r.stderr
    assert not (tmp_path / "x.pt").exists()


def test_a_folder_or_a_foreign_file_as_checkpoint_says_what_it_is(tmp_path):
    import datetime

    write_ndjson_per_class(tmp_path / "files", 5, seed=0)
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(make_checkpoint(GRUClassifier(ModelConfig(num_classes=8, hidden_size=4)), ["a"] * 8,
                                    "stroke3", {"min_len": 6, "max_len": 250}), run / "best.pt")  # fmt: skip
    torch.save({"when": datetime.date(2020, 1, 1)}, tmp_path / "objects.pt")
    (tmp_path / "notes.pt").write_text("hello\n")
    for cmd in ("calibrate", "eval"):
        r = doodle(
            cmd, "--checkpoint", str(run), "--data", str(tmp_path / "files"), "--out", str(tmp_path / "o")
        )
        assert r.returncode == 2 and f"did you mean {run / 'best.pt'}?" in r.stderr, r.stderr
        for bad in ("objects.pt", "notes.pt"):
            r = doodle(cmd, "--checkpoint", str(tmp_path / bad), "--data", str(tmp_path / "files"),
                       "--out", str(tmp_path / "o"))  # fmt: skip
            assert r.returncode == 2 and f"{tmp_path / bad}: not a doodle-rnn checkpoint" in r.stderr, (
                r.stderr
            )
            assert "weights_only" not in r.stderr and "Traceback" not in r.stderr
            assert len(r.stderr.strip().splitlines()) == 1


def test_small_jobs_run_on_one_thread_unless_told(tmp_path):
    from doodle_rnn.data.synthetic import SHAPES

    write_ndjson_per_class(tmp_path / "files", 10, seed=0)
    model = GRUClassifier(ModelConfig(num_classes=len(SHAPES), hidden_size=4))
    save_checkpoint(make_checkpoint(model, list(SHAPES), "stroke3", {"min_len": 6, "max_len": 250}),
                    tmp_path / "m.pt")  # fmt: skip
    common = ("--checkpoint", str(tmp_path / "m.pt"), "--data", str(tmp_path / "files"))
    r = doodle("calibrate", *common, "--out", str(tmp_path / "c.pt"))
    assert r.returncode == 0 and ", 1 thread)" in r.stdout, r.stdout + r.stderr
    r = doodle("calibrate", *common, "--out", str(tmp_path / "c.pt"), "--num-threads", "2")
    assert r.returncode == 0 and ", 2 threads)" in r.stdout, r.stdout + r.stderr
    r = doodle("eval", *common, "--out", str(tmp_path / "ev"), "--num-threads", "0")
    assert r.returncode == 2 and "--num-threads must be at least 1" in r.stderr
