"""`Classifier`: the Python inference API, its backends, short drawings, streaming, and `doodle predict`.

The models are tiny but really trained (a few optimizer steps on synthetic shapes), built once per
session by `build_tiny_checkpoint`, which the export, server and page tests import too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from doodle_rnn.checkpoint import make_checkpoint, save_checkpoint
from doodle_rnn.data.encode import LengthRules, encode_batch, features_to_strokes, steps_to_features
from doodle_rnn.data.normalize import normalize_strokes
from doodle_rnn.data.synthetic import SHAPES, generate
from doodle_rnn.inference import Classifier, InferenceError
from doodle_rnn.model import GRUClassifier, ModelConfig
from doodle_rnn.tensors import pad_features

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "quickdraw"


def build_tiny_checkpoint(path: Path, temperature: float = 1.0, steps: int = 40, **cfg) -> Path:
    """A small 2-layer bi-GRU trained briefly on synthetic shapes (8 classes), saved as a checkpoint."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several times faster on a small, shared CPU for a model this size
    try:
        return _train_tiny(path, temperature, steps, cfg)
    finally:
        torch.set_num_threads(threads)


def _train_tiny(path: Path, temperature: float, steps: int, cfg: dict) -> Path:
    torch.manual_seed(0)
    rules = LengthRules()
    drawings = list(generate(256, seed=1))
    st, lengths, kept = encode_batch([d.strokes for d in drawings], "stroke3", rules)
    labels = torch.tensor([SHAPES.index(drawings[i].word) for i in kept.tolist()])
    x, lens = pad_features(st, lengths)
    model = GRUClassifier(ModelConfig(num_classes=len(SHAPES), hidden_size=24, dropout=0.0, **cfg))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for i in range(steps):
        idx = torch.arange(i * 32, i * 32 + 32) % len(labels)
        loss = torch.nn.functional.cross_entropy(model(x[idx], lens[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ckpt = make_checkpoint(model, list(SHAPES), "stroke3", rules.to_dict(), metrics={"val_acc": 0.5},
                           temperature=temperature)  # fmt: skip
    save_checkpoint(ckpt, path)
    return path


def raw_drawings(n: int, words: tuple[str, ...] = ("cat", "apple", "bicycle")) -> list[dict]:
    """Real raw captures (x, y, t in screen pixels) from the shared sample, or skip."""
    out = []
    for w in words:
        f = SHARED / "raw" / f"{w}.ndjson"
        if not f.is_file():
            pytest.skip("the real Quick, Draw! sample (../shared/data/quickdraw) is absent")
        with open(f, "rb") as fh:
            out.extend(orjson.loads(line) for _, line in zip(range(n), fh, strict=False))
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def clf(tiny_ckpt) -> Classifier:
    return Classifier.load(tiny_ckpt)


def _torch_probs(ckpt_path: Path, strokes_list: list, temperature: float) -> np.ndarray:
    """The reference answer, computed straight from the torch model and the shared encode/pad path."""
    from doodle_rnn.checkpoint import build_model, load_checkpoint

    model = build_model(load_checkpoint(ckpt_path))
    st, lengths, _ = encode_batch(strokes_list, "stroke3", LengthRules(1, 250))
    x, lens = pad_features(st, lengths)
    with torch.inference_mode():
        return torch.softmax(model(x, lens) / temperature, dim=1).numpy()


def test_predict_shape_order_and_backends_agree(clf, tiny_ckpt):
    strokes = next(iter(generate(1, seed=5))).strokes
    top = clf.predict(strokes, top_k=3)
    assert len(top) == 3 and all(c in SHAPES for c, _ in top)
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert clf.backend == "onnx"
    torch_clf = Classifier.load(tiny_ckpt, backend="torch")
    other = torch_clf.predict(strokes, top_k=len(SHAPES))
    mine = dict(clf.predict(strokes, top_k=len(SHAPES)))
    assert [c for c, _ in other][:1] == [top[0][0]]
    assert max(abs(mine[c] - p) for c, p in other) < 1e-5
    assert len(clf.predict(strokes, top_k=100)) == len(SHAPES)  # top_k is capped at the class count


def test_trained_tiny_model_learned_something(clf):
    drawings = list(generate(64, seed=99))
    tops = clf.predict_many([d.strokes for d in drawings], top_k=1)
    acc = np.mean([t[0][0] == d.word for t, d in zip(tops, drawings, strict=True)])
    assert acc > 1 / len(SHAPES)  # better than chance: the fixture really trained


def test_raw_strokes_go_through_normalize(clf):
    for rec in raw_drawings(3):
        raw = rec["drawing"]
        assert clf.predict(raw, top_k=8) == clf.predict(normalize_strokes(raw), top_k=8)


def test_predict_many_equals_one_at_a_time(clf):
    drawings = [r["drawing"] for r in raw_drawings(12)] + [d.strokes for d in generate(20, seed=3)]
    many = clf.predict_many(drawings, top_k=8)
    for d, m in zip(drawings, many, strict=True):
        one = clf.predict(d, top_k=8)
        assert [c for c, _ in one] == [c for c, _ in m]
        assert np.allclose([p for _, p in one], [p for _, p in m], atol=1e-5)


def test_temperature_is_applied(tmp_path):
    path = build_tiny_checkpoint(tmp_path / "t.pt", temperature=2.5, steps=5)
    c = Classifier.load(path)
    assert c.temperature == 2.5
    drawing = next(iter(generate(1, seed=8))).strokes
    want = _torch_probs(path, [drawing], 2.5)[0]
    got = dict(c.predict(drawing, top_k=len(SHAPES)))
    assert np.allclose([got[s] for s in SHAPES], want, atol=1e-5)


def test_short_and_empty_drawings_get_an_answer(clf):
    short = clf.analyze([[[0, 100, 200], [0, 50, 0]]])  # 2 steps, below min_len 6
    assert short.short and short.steps == 2 and len(short.top) == 3
    # A single tap, raw or not, normalises to a zero-length stroke (two equal points, as in Google's
    # files): one step, and still an answer rather than an error.
    for dot in ([[[5], [5]]], [[[300.5], [200.25], [0]]]):
        p = clf.analyze(dot)
        assert p.steps == 1 and p.short and len(p.top) == 3
        assert clf.model_view(dot) == [[[0, 0], [0, 0]]]


@pytest.mark.parametrize(
    ("strokes", "reason"),
    [
        ([], "empty drawing"),
        ([[[1, 2], [1]]], "lengths differ"),
        ([[[1, "a"], [1, 2]]], "non-numeric"),
        ([[[1, float("nan")], [1, 2]]], "non-finite"),
        ("nope", "not a list"),
    ],  # fmt: skip
)
def test_bad_drawings_raise_clear_errors(clf, strokes, reason):
    with pytest.raises(InferenceError, match=reason):
        clf.predict(strokes)
    with pytest.raises(InferenceError, match="top_k"):
        clf.predict([[[0, 9], [0, 9]]], top_k=0)


def test_stream_equals_predict(clf):
    raw = raw_drawings(1, ("cat",))[0]["drawing"]
    session = clf.stream()
    assert session.predict() == []
    for i, (xs, ys, ts) in enumerate(raw):
        for x, y, t in zip(xs, ys, ts, strict=True):
            session.add_point(x, y, t)
        mid = session.predict()  # while the stroke is still open
        assert mid == clf.predict(session.strokes)
        session.end_stroke()
        assert session.predict() == clf.predict(raw[: i + 1])
    assert session.strokes == raw
    session.undo()
    assert session.strokes == raw[:-1] and session.predict() == clf.predict(raw[:-1])
    session.clear()
    assert session.strokes == [] and session.predict() == []
    session.add_point(1, 2)
    with pytest.raises(InferenceError, match="time"):
        session.add_point(3, 4, 10)


def with_card(src: Path, dst: Path, **card) -> Path:
    """A copy of checkpoint `src` whose model card holds `card` (name, announce_threshold, test, ...)."""
    from doodle_rnn.checkpoint import load_checkpoint

    ckpt = load_checkpoint(src)
    ckpt["card"] = card
    save_checkpoint(ckpt, dst)
    return dst


def test_stream_announces_the_first_confident_guess_and_keeps_it(clf, tiny_ckpt, tmp_path):
    raw = raw_drawings(1, ("cat",))[0]["drawing"]
    assert len(raw) >= 3
    tops = [clf.predict(raw[: i + 1])[0] for i in range(len(raw))]
    # a threshold the drawing reaches at its second-best stroke prefix: confident there, not everywhere
    threshold = sorted(p for _, p in tops)[-2]
    first = next(i for i, (_, p) in enumerate(tops) if p >= threshold)
    model = Classifier.load(with_card(tiny_ckpt, tmp_path / "card.pt", name="tiny-card",
                                      announce_threshold=threshold))  # fmt: skip
    assert model.announce_threshold == threshold
    assert model.info["card"]["announce_threshold"] == threshold and model.info["name"] == "tiny-card"

    session = model.stream()
    empty = session.predict()
    assert empty == [] and not empty.confident and empty.announced is None
    for i, (xs, ys, ts) in enumerate(raw):
        for x, y, t in zip(xs, ys, ts, strict=True):
            session.add_point(x, y, t)
        session.end_stroke()
        guess = session.predict()
        assert guess == clf.predict(raw[: i + 1])  # still the plain list of (class, prob)
        assert isinstance(guess, list) and guess.confident == (guess[0][1] >= threshold)
        # announced from the first confident stroke on, and never changed afterwards
        assert guess.announced == (tops[first][0] if i >= first else None)
    assert session.announced == tops[first][0]
    session.undo()
    assert session.predict().announced == tops[first][0]  # undo keeps what was said
    session.clear()
    assert session.announced is None and session.predict().announced is None
    for xs, ys, ts in raw[: first + 1]:  # a new drawing is announced afresh
        for x, y, t in zip(xs, ys, ts, strict=True):
            session.add_point(x, y, t)
        session.end_stroke()
    assert session.predict().announced == tops[first][0]
    while session.strokes:  # undoing every stroke empties the drawing: nothing stays announced
        session.undo()
    assert session.announced is None


def test_no_threshold_never_announces(clf, tiny_ckpt, tmp_path):
    assert clf.announce_threshold is None and clf.info["card"] == {} and clf.info["name"] == "tiny"
    session = clf.stream()
    for xs, ys, ts in raw_drawings(1, ("cat",))[0]["drawing"]:
        for x, y, t in zip(xs, ys, ts, strict=True):
            session.add_point(x, y, t)
        session.end_stroke()
        guess = session.predict()
        assert not guess.confident and guess.announced is None
    # a card without a threshold: the same
    plain = Classifier.load(
        with_card(tiny_ckpt, tmp_path / "plain.pt", name="plain", announce_threshold=None)
    )
    assert plain.announce_threshold is None and plain.name == "plain"


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, "0.9", True, float("nan")])
def test_bad_threshold_is_a_clear_error(tiny_ckpt, tmp_path, bad):
    path = with_card(tiny_ckpt, tmp_path / "bad.pt", announce_threshold=bad)
    with pytest.raises(InferenceError, match=r"bad\.pt: card\.announce_threshold"):
        Classifier.load(path)


def test_model_view_is_what_the_model_reads(clf):
    raw = raw_drawings(1, ("apple",))[0]["drawing"]
    view = clf.model_view(raw)
    st, lengths, _ = encode_batch([raw], "stroke3", LengthRules(1, 250))
    assert view == features_to_strokes(steps_to_features(st), "stroke3")
    # stroke3 keeps everything but the absolute start: the view is the simplified drawing, shifted.
    simple = normalize_strokes(raw)
    x0, y0 = simple[0][0][0], simple[0][1][0]
    assert [[[v + x0 for v in s[0]], [v + y0 for v in s[1]]] for s in view] == [[s[0], s[1]] for s in simple]


def test_info_and_lazy_import(clf):
    from doodle_rnn import Classifier as Lazy

    assert Lazy is Classifier
    info = clf.info
    assert info["classes"] == list(SHAPES) and info["encoding"] == "stroke3"
    assert info["metrics"] == {"val_acc": 0.5} and info["version"]
    assert clf.classes == list(SHAPES)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(InferenceError, match="missing.pt"):
        Classifier.load(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        Classifier.load(junk)
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"nope")
    with pytest.raises(InferenceError, match="fake.onnx"):
        Classifier.load(fake)


def _doodle(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    # generous: each run imports torch, which takes minutes on a starved machine (nice 19 beside training)
    return subprocess.run(
        [sys.executable, "-m", "doodle_rnn", *args], input=stdin, capture_output=True, timeout=600
    )


def test_cli_predict_file_and_stdin(clf, tiny_ckpt, tmp_path):
    drawings = list(generate(24, seed=11))
    f = tmp_path / "shapes.ndjson"
    f.write_bytes(b"".join(orjson.dumps(d.to_ndjson_dict()) + b"\n" for d in drawings) + b"{broken\n")
    r = _doodle("predict", "--checkpoint", str(tiny_ckpt), str(f), "--top-k", "2")
    assert r.returncode == 0, r.stderr.decode()
    lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert len(lines) == 25 and lines[-1]["summary"] is True
    expected = clf.predict_many([d.strokes for d in drawings], top_k=3)
    hits1 = hits3 = 0
    for rec, d, exp in zip(lines[:-1], drawings, expected, strict=True):
        assert rec["key_id"] == d.key_id and rec["word"] == d.word and len(rec["top"]) == 2
        assert [c for c, _ in rec["top"]] == [c for c, _ in exp[:2]]
        hits1 += exp[0][0] == d.word
        hits3 += d.word in [c for c, _ in exp]
    assert lines[-1]["top1_accuracy"] == pytest.approx(hits1 / 24, abs=1e-6)
    assert lines[-1]["top3_accuracy"] == pytest.approx(hits3 / 24, abs=1e-6)
    assert "malformed JSON line: 1" in r.stderr.decode()  # the skipped line is reported, not silent

    # stdin, without words: no summary line
    body = b"".join(
        orjson.dumps({"key_id": f"k{i}", "drawing": d.strokes}) + b"\n" for i, d in enumerate(drawings[:3])
    )
    r = _doodle("predict", "--checkpoint", str(tiny_ckpt), "-", stdin=body)
    assert r.returncode == 0, r.stderr.decode()
    lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert [x["key_id"] for x in lines] == ["k0", "k1", "k2"] and "word" not in lines[0]


def test_cli_predict_many_files_and_stdin(clf, tiny_ckpt, tmp_path):
    """Several inputs, '-' among them: one line per drawing in input order, one summary over all of them."""
    drawings = list(generate(30, seed=12))
    a, b, c = drawings[:10], drawings[10:20], drawings[20:]
    (tmp_path / "a.ndjson").write_bytes(b"".join(orjson.dumps(d.to_ndjson_dict()) + b"\n" for d in a))
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "c.ndjson").write_bytes(b"".join(orjson.dumps(d.to_ndjson_dict()) + b"\n" for d in c))
    # stdin: records without words or key_ids, and one bad line, read by the same ndjson reader as files
    stdin = b"".join(orjson.dumps({"drawing": d.strokes}) + b"\n" for d in b) + b'{"drawing": 3}\n'
    r = _doodle("predict", "--checkpoint", str(tiny_ckpt), str(tmp_path / "a.ndjson"), "-", str(folder),
                stdin=stdin)  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert len(lines) == 31 and lines[-1]["summary"] is True
    expected = clf.predict_many([d.strokes for d in drawings], top_k=3)
    for i, (rec, d, exp) in enumerate(zip(lines[:-1], drawings, expected, strict=True)):
        assert [c for c, _ in rec["top"]] == [c for c, _ in exp]
        if 10 <= i < 20:  # from stdin: no word, a key_id derived from the drawing itself
            assert "word" not in rec and rec["key_id"].startswith("h") and rec["key_id"] != d.key_id
        else:
            assert rec["word"] == d.word and rec["key_id"] == d.key_id
    worded = [(d, e) for i, (d, e) in enumerate(zip(drawings, expected, strict=True)) if not 10 <= i < 20]
    assert lines[-1]["drawings"] == 20
    assert lines[-1]["top1_accuracy"] == pytest.approx(
        sum(e[0][0] == d.word for d, e in worded) / 20, abs=1e-6
    )
    assert "skipped 1 record(s) in <stdin> (drawing is not a list of strokes: 1)" in r.stderr.decode()
    assert "<stdin>:11: drawing is not a list of strokes" in r.stderr.decode()

    r = _doodle("predict", "--checkpoint", str(tiny_ckpt), "--strict", "-", stdin=b'{"drawing": []}\n')
    assert r.returncode == 2 and b"<stdin>:1: empty drawing" in r.stderr
    r = _doodle("predict", "--checkpoint", str(tiny_ckpt), "-", "-", stdin=b"")
    assert r.returncode == 2 and b"only once" in r.stderr
    r = _doodle(
        "predict", "--checkpoint", str(tiny_ckpt), str(tmp_path / "a.ndjson"), str(tmp_path / "nope.csv")
    )
    assert r.returncode == 2 and b"nope.csv" in r.stderr and r.stdout == b""  # checked before any line


def test_cli_predict_user_errors(tiny_ckpt, tmp_path):
    r = _doodle("predict", "--checkpoint", str(tmp_path / "nope.pt"), str(tmp_path / "x.ndjson"))
    assert r.returncode == 2 and b"error:" in r.stderr and b"nope.pt" in r.stderr
    r = _doodle("predict", "--checkpoint", str(tiny_ckpt), str(tmp_path / "missing.ndjson"))
    assert r.returncode == 2 and b"missing.ndjson" in r.stderr
