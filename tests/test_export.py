"""ONNX export: logits parity with torch on real drawings in mixed-length batches, metadata, int8, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from test_inference import SHARED, build_tiny_checkpoint

from doodle_rnn.checkpoint import load_checkpoint, make_checkpoint
from doodle_rnn.data.encode import LengthRules, encode_batch
from doodle_rnn.data.synthetic import SHAPES, generate
from doodle_rnn.export import export_onnx, read_metadata, verify_parity
from doodle_rnn.inference import Classifier, InferenceError
from doodle_rnn.model import GRUClassifier, ModelConfig
from doodle_rnn.tensors import pad_features


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """torch's reference forward passes run several times faster on one thread on a small shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("export") / "tiny.pt")


@pytest.fixture(scope="module")
def real_batches() -> list:
    """Padded batches of 16 real drawings (raw and simplified) in file order: lengths mix freely."""
    if not (SHARED / "raw").is_dir():
        pytest.skip("the real Quick, Draw! sample (../shared/data/quickdraw) is absent")
    strokes = []
    for kind, words in (("raw", ("cat", "bicycle", "house")), ("simplified", ("monkey", "octopus", "snake"))):
        for w in words:
            with open(SHARED / kind / f"{w}.ndjson", "rb") as fh:
                strokes.extend(orjson.loads(line)["drawing"] for _, line in zip(range(16), fh, strict=False))
    strokes.append([[[0, 10, 20], [0, 5, 0]]])  # 2 steps: shorter than the training min_len
    steps, lengths, _ = encode_batch(strokes, "stroke3", LengthRules(1, 250))
    assert lengths.min() <= 2 and lengths.max() >= 100  # really mixed
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    out = []
    for s in range(0, len(lengths), 16):
        idx = range(s, min(s + 16, len(lengths)))
        sub = np.concatenate([steps[offsets[i] : offsets[i + 1]] for i in idx])
        out.append(pad_features(sub, lengths[s : s + 16]))
    return out


def _random_ckpt(num_classes: int = 345, **cfg) -> dict:
    torch.manual_seed(1)
    model = GRUClassifier(ModelConfig(num_classes=num_classes, **cfg)).eval()
    return make_checkpoint(
        model, [f"class{i}" for i in range(num_classes)], "stroke3", LengthRules().to_dict()
    )


def test_parity_default_size_on_real_drawings(real_batches, tmp_path):
    ckpt = _random_ckpt()  # 2 x bi-GRU 192, 345 classes: the shipped shape
    export_onnx(ckpt, tmp_path / "m.onnx")
    assert verify_parity(ckpt, tmp_path / "m.onnx", real_batches) <= 1e-4


def test_parity_trained_tiny_model(tiny_ckpt, real_batches, tmp_path):
    ckpt = load_checkpoint(tiny_ckpt)
    export_onnx(ckpt, tmp_path / "t.onnx")
    assert verify_parity(ckpt, tmp_path / "t.onnx", real_batches) <= 1e-4


@pytest.mark.parametrize(
    "cfg",
    [
        {"rnn": "lstm", "hidden_size": 16},
        {"bidirectional": False, "hidden_size": 16},
        {"num_layers": 3, "hidden_size": 8},
        {"num_layers": 1, "hidden_size": 8},
        {"hidden_size": 16, "conv_channels": [8, 12], "conv_kernel": 5},  # the conv front end
        {"hidden_size": 8, "conv_channels": [4], "conv_kernel": 3},
    ],  # fmt: skip
)
def test_parity_other_configs(cfg, real_batches, tmp_path):
    ckpt = _random_ckpt(num_classes=5, dropout=0.0, **cfg)
    export_onnx(ckpt, tmp_path / "c.onnx")
    assert verify_parity(ckpt, tmp_path / "c.onnx", real_batches[:2]) <= 1e-4


def test_padding_never_changes_logits(tiny_ckpt, tmp_path):
    """The same drawing alone and inside a batch padded to a much longer one: same logits."""
    import onnxruntime as ort

    export_onnx(load_checkpoint(tiny_ckpt), tmp_path / "t.onnx")
    sess = ort.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"])
    a, b = (d.strokes for d in generate(2, seed=4))
    steps, lengths, _ = encode_batch([a, b], "stroke3", LengthRules(1, 250))
    alone = sess.run(
        None, {"x": pad_features(steps[: lengths[0]], lengths[:1])[0].numpy(), "lengths": lengths[:1]}
    )[0]
    x, lens = pad_features(steps, lengths)
    wide = np.zeros((2, x.shape[1] + 40, 3), np.float32)
    wide[:, : x.shape[1]] = x.numpy()
    wide[:, x.shape[1] :] = 0.7  # garbage in the padding must be ignored too
    both = sess.run(None, {"x": wide, "lengths": lens.numpy()})[0]
    assert np.abs(both[0] - alone[0]).max() <= 1e-5


def test_onnx_file_is_self_describing(tiny_ckpt, tmp_path):
    ckpt = load_checkpoint(tiny_ckpt)
    out = export_onnx(ckpt, tmp_path / "t.onnx")
    meta = read_metadata(out)
    assert meta["classes"] == list(SHAPES) and meta["encoding"] == "stroke3"
    assert meta["length_rules"] == ckpt["length_rules"] and meta["temperature"] == 1.0
    assert meta["model_config"] == ckpt["model_config"] and meta["metrics"] == {"val_acc": 0.5}
    from_onnx = Classifier.load(out)
    from_torch = Classifier.load(tiny_ckpt, backend="torch")
    assert from_onnx.info["classes"] == from_torch.info["classes"]
    for d in generate(10, seed=12):
        a, b = from_onnx.predict(d.strokes, 8), from_torch.predict(d.strokes, 8)
        assert [c for c, _ in a] == [c for c, _ in b]
        assert np.allclose([p for _, p in a], [p for _, p in b], atol=1e-5)
    with pytest.raises(InferenceError, match="backend"):
        Classifier.load(out, backend="torch")


def test_foreign_onnx_is_refused(tmp_path):
    from onnx import TensorProto, helper, save

    g = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])  # fmt: skip
    save(helper.make_model(g), tmp_path / "other.onnx")
    with pytest.raises(InferenceError, match=r"other\.onnx.*doodle export"):
        Classifier.load(tmp_path / "other.onnx")
    bad = helper.make_model(g)
    helper.set_model_props(bad, {"doodle_rnn.format": '"doodle-rnn-onnx"', "doodle_rnn.classes": "[cat"})
    save(bad, tmp_path / "bad.onnx")
    with pytest.raises(InferenceError, match=r"bad\.onnx: its doodle_rnn metadata is not valid JSON"):
        Classifier.load(tmp_path / "bad.onnx")


def _doodle(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "doodle_rnn", *args], capture_output=True, timeout=180)


def test_cli_export_float_and_int8(tiny_ckpt, tmp_path):
    r = _doodle("export", "--checkpoint", str(tiny_ckpt), "--onnx", str(tmp_path / "f.onnx"))
    assert r.returncode == 0, r.stderr.decode()
    res = json.loads(r.stdout)
    assert res["max_abs_logit_diff"] <= 1e-4 and (tmp_path / "f.onnx").is_file()

    r = _doodle(
        "export", "--checkpoint", str(tiny_ckpt), "--onnx", str(tmp_path / "q.onnx"), "--quantize", "int8"
    )
    assert r.returncode == 0, r.stderr.decode()
    q = Classifier.load(tmp_path / "q.onnx")
    assert q.info["quantization"] == "int8-dynamic" and q.classes == list(SHAPES)
    f = Classifier.load(tmp_path / "f.onnx")
    drawings = [d.strokes for d in generate(48, seed=21)]
    top_f, top_q = f.predict_many(drawings, 1), q.predict_many(drawings, 1)
    agree = np.mean([a[0][0] == b[0][0] for a, b in zip(top_f, top_q, strict=True)])
    assert agree >= 0.9  # int8 changes the answers little (the size/speed trade is measured in bench_infer)

    # `doodle predict` runs from the exported file alone (classes and encoding come from its metadata)
    data = tmp_path / "d.ndjson"
    data.write_bytes(b"".join(orjson.dumps(d.to_ndjson_dict()) + b"\n" for d in generate(8, seed=5)))
    r = _doodle("predict", "--checkpoint", str(tmp_path / "f.onnx"), str(data))
    assert r.returncode == 0, r.stderr.decode()
    lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert len(lines) == 9 and lines[-1]["summary"] and lines[0]["top"][0][0] in SHAPES

    r = _doodle("export", "--checkpoint", str(tiny_ckpt), "--onnx", str(tmp_path / "x.txt"))
    assert r.returncode == 2 and b".onnx" in r.stderr
    r = _doodle("export", "--checkpoint", str(tmp_path / "none.pt"), "--onnx", str(tmp_path / "n.onnx"))
    assert r.returncode == 2 and b"none.pt" in r.stderr
