"""Serving an exported .onnx model needs no torch: load, predict and the app, with torch made unimportable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from test_inference import build_tiny_checkpoint

CODE = r"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from doodle_rnn import Classifier
from doodle_rnn.server.app import create_app
clf = Classifier.load(sys.argv[1])
top = clf.predict([[[10, 200, 400], [30, 35, 300], [0, 40, 95]]], top_k=3)
assert len(top) == 3 and abs(sum(p for _, p in clf.predict([[[0, 255], [0, 255]]], top_k=8)) - 1) < 1e-5
create_app(sys.argv[1])
print("torch-free", top[0][0])
"""


def test_onnx_model_serves_without_torch(tmp_path: Path) -> None:
    ckpt = build_tiny_checkpoint(tmp_path / "tiny.pt", steps=5)
    onnx = tmp_path / "tiny.onnx"
    exp = subprocess.run([sys.executable, "-m", "doodle_rnn", "export", "--checkpoint", str(ckpt), "--onnx", str(onnx)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert exp.returncode == 0, exp.stderr
    r = subprocess.run([sys.executable, "-c", CODE, str(onnx)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("torch-free ")
