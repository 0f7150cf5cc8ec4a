"""`model_files`: the one way a model is found and read, for the CLI, the server and the web export."""

from __future__ import annotations

import pytest

from doodle_rnn.inference import Classifier
from doodle_rnn.model_files import ModelFileError, open_model, read_model_file, resolve_model_file
from doodle_rnn.models import shipped_path
from doodle_rnn.server.models import ModelRegistry


def test_a_shipped_name_resolves_to_its_file_and_reads_with_its_card():
    path = resolve_model_file("animals10")
    assert path == shipped_path("animals10")
    model = read_model_file(path)
    assert model.kind == "pt" and model.name == "animals10" and len(model.meta["classes"]) == 10
    assert model.meta["card"]["announce_threshold"] == model.checkpoint["card"]["announce_threshold"]


def test_an_onnx_file_reads_without_a_checkpoint_and_builds_the_same_classifier(tmp_path):
    pt = open_model("animals10")
    (tmp_path / "a.onnx").write_bytes(pt.onnx_bytes())
    onnx = open_model(tmp_path / "a.onnx")
    assert onnx.kind == "onnx" and onnx.checkpoint is None and onnx.onnx_bytes() == pt.onnx_bytes()
    assert onnx.meta["classes"] == pt.meta["classes"] and onnx.name == "animals10"  # the card's name
    drawing = [[[0, 40, 80, 120], [0, 60, 0, 60]], [[10, 110], [90, 90]]]
    a, b = Classifier.from_model(onnx).predict(drawing), Classifier.from_model(pt).predict(drawing)
    assert [c for c, _ in a] == [c for c, _ in b] and [p for _, p in a] == pytest.approx([p for _, p in b])


def test_what_cannot_be_found_or_read_is_one_error_naming_it(tmp_path):
    with pytest.raises(ModelFileError, match="absent.pt: model not found"):
        resolve_model_file(tmp_path / "absent.pt")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"is a folder.*did you mean .*best\.pt"):
        open_model(tmp_path / "run")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07junk")
    with pytest.raises(ModelFileError, match="junk.onnx"):
        open_model(tmp_path / "junk.onnx")


def test_the_server_registry_builds_from_a_model_already_read():
    model = open_model("animals10")
    registry = ModelRegistry(model, "onnx", lambda clf: None, shipped=False)
    assert registry.names == ["animals10"] and registry.entry(None).classifier.source == str(model.path)
