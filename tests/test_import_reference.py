"""`doodle import-reference`: a checkpoint in the reference trainer's exact format converts losslessly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from doodle_rnn.checkpoint import CheckpointError, build_model, load_checkpoint
from doodle_rnn.data.encode import encode_strokes, rules_from_dict
from doodle_rnn.data.synthetic import SHAPES, generate
from doodle_rnn.tensors import pad_features


class ReferenceNet(nn.Module):
    """The reference project's model, written independently here: nn.GRU over packed sequences."""

    def __init__(self, n_classes: int, hidden: int = 24, layers: int = 2, dropout: float = 0.3):
        super().__init__()
        self.gru = nn.GRU(3, hidden, num_layers=layers, batch_first=True, bidirectional=True, dropout=dropout)
        self.norm = nn.LayerNorm(2 * hidden)
        self.fc = nn.Linear(2 * hidden, n_classes)

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return self.fc(self.norm(torch.cat([h[-2], h[-1]], dim=-1)))


def _reference_file(path: Path) -> ReferenceNet:
    torch.manual_seed(7)
    net = ReferenceNet(len(SHAPES)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # not the default init: the copy must carry real weights
    torch.save(
        {
            "model_state": net.state_dict(),
            "class_to_idx": {name: i for i, name in reversed(list(enumerate(SHAPES)))},
            "config": {
                "hidden_size": 24,
                "num_layers": 2,
                "bidirectional": True,
                "dropout": 0.3,
                "max_len": 200,
                "min_seq_len": 5,
                "lr": 0.001,
                "batch_size": 128,
            },  # fmt: skip
            "metrics": {"val_acc": 0.91, "val_loss": 0.33, "history": [1, 2]},
        },
        path,
    )
    return net


def test_import_reference_predicts_like_the_original(tmp_path):
    net = _reference_file(tmp_path / "ref.pt")
    r = subprocess.run(
        [sys.executable, "-m", "doodle_rnn", "import-reference", str(tmp_path / "ref.pt"), "--out", str(tmp_path / "ours.pt")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    ckpt = load_checkpoint(tmp_path / "ours.pt")
    assert ckpt["classes"] == list(SHAPES)
    assert ckpt["encoding"] == "reference"
    assert ckpt["length_rules"] == {"min_len": 5, "max_len": 200}
    assert ckpt["model_config"]["hidden_size"] == 24 and ckpt["model_config"]["dropout"] == 0.3
    assert ckpt["metrics"]["val_acc"] == 0.91 and "history" not in ckpt["metrics"]
    ours = build_model(ckpt)
    rules = rules_from_dict(ckpt["length_rules"])
    encoded = [encode_strokes(d.strokes, "reference", rules) for d in generate(24, seed=5)]
    encoded = [e for e in encoded if e is not None]
    x, lengths = pad_features(np.concatenate(encoded), np.array([len(e) for e in encoded]))
    with torch.no_grad():
        want = net(x, lengths)
        for impl in ("fused", "packed"):
            ours.impl = impl
            torch.testing.assert_close(ours(x, lengths), want, atol=1e-5, rtol=0)
    assert (want.argmax(1) == ours(x, lengths).argmax(1)).all()


def test_import_reference_rejects_other_files(tmp_path):
    torch.save({"model_state": {}, "config": {}}, tmp_path / "bad.pt")
    r = subprocess.run([sys.executable, "-m", "doodle_rnn", "import-reference", str(tmp_path / "bad.pt"), "--out",
                        str(tmp_path / "o.pt")], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "missing class_to_idx" in r.stderr and not (tmp_path / "o.pt").exists()
    r = subprocess.run([sys.executable, "-m", "doodle_rnn", "import-reference", str(tmp_path / "nope.pt"), "--out",
                        str(tmp_path / "o.pt")], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "file not found" in r.stderr


def test_our_loader_points_at_import_reference(tmp_path):
    _reference_file(tmp_path / "ref.pt")
    with pytest.raises(CheckpointError, match="import-reference"):
        load_checkpoint(tmp_path / "ref.pt")
