"""One way to open a model, shared by `Classifier` (CLI, server) and the web export: resolve once, then read.

    spec (a shipped name, a .pt or a .onnx path)
      -> resolve_model_file   the one place a name becomes a file, and a missing file an error
      -> read_model_file      the file's metadata, plus its checkpoint dict (.pt) or graph bytes (.onnx)
      -> ModelFile            what every consumer builds from: `Classifier.from_model`, `web.export_site`

Why: the server used to resolve a name and check the file in the command, again in `Classifier.load`
and again in `load_checkpoint`, and built its ONNX graph through a chain of modules. Here each step runs
once; `ModelFile.onnx_bytes()` is the graph whichever kind the file was (built in memory from a
checkpoint), which is what ONNX Runtime in Python and in the browser both run.

torch-free at import: a .pt file imports torch when it is read, an .onnx file never does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from doodle_rnn.errors import DoodleError


class ModelFileError(DoodleError):
    """A model that cannot be found or read: says which file and what to give instead."""


def resolve_model_file(spec: str | Path | None, what: str = "model") -> Path:
    """A shipped model's name or a path -> an existing model file (None: the default shipped model)."""
    from doodle_rnn.models import ShippedModelError, resolve_model
    from doodle_rnn.text import missing_model_message

    try:
        path = resolve_model(spec)
    except ShippedModelError as exc:
        raise ModelFileError(str(exc)) from exc
    if not path.is_file():
        raise ModelFileError(missing_model_message(path, what))
    return path


@dataclass(frozen=True)
class ModelFile:
    """A model file, read: `meta` (classes, encoding, length rules, temperature, card, ...) and its weights.

    Exactly one of `checkpoint` (a .pt's dict) and `onnx` (an .onnx file's bytes) is set.
    """

    path: Path
    meta: dict
    checkpoint: dict | None = field(default=None, repr=False)
    onnx: bytes | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return "onnx" if self.onnx is not None else "pt"

    @property
    def name(self) -> str:
        """The model card's name, else the file's stem (`tiny.pt` -> `tiny`)."""
        card = self.meta.get("card") or {}
        return str(card.get("name") or self.path.stem)

    def onnx_bytes(self) -> bytes:
        """The serialized ONNX graph: the file itself, or built from the checkpoint (`export.build_onnx`)."""
        if self.onnx is not None:
            return self.onnx
        from doodle_rnn.export import build_onnx

        return build_onnx(self.checkpoint).SerializeToString()


def read_model_file(path: str | Path) -> ModelFile:
    """Read an existing .pt checkpoint or an .onnx file from `doodle export` (no name lookup here)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return _read_onnx(path)
    from doodle_rnn.checkpoint import read_checkpoint
    from doodle_rnn.export import metadata_from_checkpoint

    ckpt = read_checkpoint(path)  # CheckpointError (a ValueError) names the file
    return ModelFile(path, metadata_from_checkpoint(ckpt), checkpoint=ckpt)


def open_model(spec: str | Path | None, what: str = "model") -> ModelFile:
    """`read_model_file(resolve_model_file(spec))`: the usual way in."""
    return read_model_file(resolve_model_file(spec, what))


def _read_onnx(path: Path) -> ModelFile:
    import onnx

    from doodle_rnn.export import ExportError, metadata_from_props

    data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own kinds for a damaged file
        raise ModelFileError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from exc
    try:
        meta = metadata_from_props({p.key: p.value for p in model.metadata_props}, path)
    except ExportError as exc:
        raise ModelFileError(str(exc)) from exc
    return ModelFile(path, meta, onnx=data)
