"""Serving an exported .onnx model needs no torch: load, predict and the app, with torch made unimportable."""

from __future__ import annotations

import json
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


SRC = Path(__file__).resolve().parent.parent / "src" / "doodle_rnn"
COMMAND_LAYER = ("doodle_rnn.cli", "doodle_rnn.commands", "doodle_rnn.__main__")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _library_modules() -> list[str]:
    names = sorted(_module_name(p) for p in SRC.rglob("*.py"))
    return [n for n in names if not n.startswith(COMMAND_LAYER)]


def _imported_names(path: Path) -> set[str]:
    """Every module an `import` statement of `path` names, at any depth (lazy imports inside functions too)."""
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _import_in_fresh_python(names: list[str], probe: str) -> list:
    """Import `names` one after another in a new interpreter; `probe` (an expression) after each."""
    code = (
        "import importlib, json, sys\n"
        "seen = []\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        f"    seen.append({probe})\n"
        "print(json.dumps(seen))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_data_modules_never_import_torch() -> None:
    """Every `doodle_rnn.data.*` module imports, in a fresh interpreter, without bringing torch in."""
    data = [n for n in _library_modules() if n.startswith("doodle_rnn.data")]
    assert {"doodle_rnn.data.batches", "doodle_rnn.data.cache", "doodle_rnn.data.encode"} <= set(data)
    assert _import_in_fresh_python(data, "'torch' in sys.modules") == [False] * len(data)
    for p in (SRC / "data").rglob("*.py"):  # nor lazily, inside a function
        assert not {n for n in _imported_names(p) if n.split(".")[0] == "torch"}, p


def test_library_never_imports_the_command_layer() -> None:
    """Arrows point one way: no library module imports `cli.py` or `commands/`, at load time or lazily."""
    library = _library_modules()
    assert "doodle_rnn.train" in library and "doodle_rnn.data.cache" in library
    for name in library:
        path = SRC.parent.joinpath(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        up = {n for n in _imported_names(path) if n.startswith(COMMAND_LAYER) or n == "doodle_rnn.cli"}
        assert not up, f"{name} imports {sorted(up)}"
    up = "sorted(m for m in sys.modules if m.startswith(('doodle_rnn.cli', 'doodle_rnn.commands')))"
    assert _import_in_fresh_python(library, up) == [[]] * len(library)
