"""Self-describing checkpoints: everything needed to predict travels in the file.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
`torch.load(path, weights_only=True)` reads it (no pickled code runs on load):

    format, format_version, package_version
    model_config   dict (ModelConfig)          model_state  state dict
    classes        list of class names         encoding, encoding_version, length_rules
    temperature    float (1.0 until `doodle calibrate` fits one)
    metrics        dict (best validation numbers, epoch, ...)
    train_state    dict, only in last.pt (optimizer, scheduler, early stopping, epoch, RNG) for --resume

Writes are atomic (temporary file in the same folder, then os.replace): a kill at any moment leaves
the previous good file.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from doodle_rnn import __version__
from doodle_rnn.errors import DoodleError
from doodle_rnn.model import GRUClassifier, ModelConfig
from doodle_rnn.text import missing_model_message

FORMAT = "doodle-rnn-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(DoodleError):
    pass


def make_checkpoint(
    model: GRUClassifier,
    classes: list[str],
    encoding: str,
    length_rules: dict,
    metrics: dict | None = None,
    temperature: float = 1.0,
    encoding_version: int = 1,
) -> dict:
    state = {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "model_config": _unwrap(model).cfg.to_dict(),
        "model_state": state,
        "classes": list(classes),
        "encoding": encoding,
        "encoding_version": encoding_version,
        "length_rules": dict(length_rules),
        "temperature": float(temperature),
        "metrics": dict(metrics or {}),
    }


def _unwrap(model: torch.nn.Module) -> GRUClassifier:
    while hasattr(model, "module"):  # DDP / compiled wrappers
        model = model.module  # type: ignore[assignment]
    return getattr(model, "_orig_mod", model)  # type: ignore[return-value]


def save_checkpoint(ckpt: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as fh:
            torch.save(ckpt, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict:
    """Load safely (weights_only=True); a missing, corrupt or foreign file is a clear error naming it.

    `path` may also name a shipped model (`animals10`, see doodle_rnn.models).
    """
    from doodle_rnn.models import ShippedModelError, resolve_model

    try:
        path = resolve_model(path)
    except ShippedModelError as exc:
        raise CheckpointError(str(exc)) from exc
    if not path.is_file():
        raise CheckpointError(missing_model_message(path))
    return read_checkpoint(path)


def read_checkpoint(path: Path) -> dict:
    """`load_checkpoint` for a file already found (no name lookup; `model_files` resolves once)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged file
        # Never pass on torch's advice to retry with weights_only=False: that runs the file's code.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        why = (
            f"it holds Python objects ({found.group(1)}) that a safe load does not run"
            if found
            else "it is not in PyTorch's checkpoint format"
        )
        raise CheckpointError(
            f"{path}: not a doodle-rnn checkpoint ({why}); use a .pt written by `doodle train` or "
            "`doodle calibrate`, or an .onnx from `doodle export`"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = (
            " (a reference-project checkpoint? convert it with `doodle import-reference`)"
            if (isinstance(ckpt, dict) and "class_to_idx" in ckpt)
            else ""
        )
        raise CheckpointError(f"{path}: not a doodle-rnn checkpoint{hint}")
    return ckpt


def build_model(ckpt: dict) -> GRUClassifier:
    model = GRUClassifier(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    return model


REFERENCE_CONFIG_KEYS = ("hidden_size", "num_layers", "bidirectional", "dropout", "max_len", "min_seq_len")


def from_reference(ref: dict, source: str = "reference checkpoint") -> dict:
    """Convert the reference trainer's checkpoint dict into ours.

    The reference saves `{"model_state", "class_to_idx", "config", "metrics"}`; its encoder is our
    `reference` encoding and its `max_len` / `min_seq_len` become our length rules. The weights are
    checked by loading them into a freshly built model, so a mismatch fails here, not at predict time.
    """
    if not isinstance(ref, dict):
        raise CheckpointError(f"{source}: expected a dict, got {type(ref).__name__}")
    missing = [k for k in ("model_state", "class_to_idx", "config") if k not in ref]
    if missing:
        raise CheckpointError(f"{source}: not a reference checkpoint (missing {', '.join(missing)})")
    cfg, c2i = ref["config"], ref["class_to_idx"]
    missing = [k for k in REFERENCE_CONFIG_KEYS if k not in cfg]
    if missing:
        raise CheckpointError(f"{source}: config lacks {', '.join(missing)}")
    if sorted(c2i.values()) != list(range(len(c2i))):
        raise CheckpointError(f"{source}: class_to_idx indices are not 0..{len(c2i) - 1}")
    classes = [name for name, _ in sorted(c2i.items(), key=lambda kv: kv[1])]
    state = ref["model_state"]
    mcfg = ModelConfig(
        num_classes=len(classes),
        input_size=int(state["gru.weight_ih_l0"].shape[1]) if "gru.weight_ih_l0" in state else 3,
        hidden_size=int(cfg["hidden_size"]),
        num_layers=int(cfg["num_layers"]),
        bidirectional=bool(cfg["bidirectional"]),
        dropout=float(cfg["dropout"]),
        rnn="gru",
    )
    model = GRUClassifier(mcfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not fit the model its config describes ({exc})") from exc
    metrics = {
        k: v for k, v in dict(ref.get("metrics") or {}).items() if isinstance(v, (int, float, str, bool))
    }
    metrics["imported_from"] = "reference"
    return make_checkpoint(
        model,
        classes,
        encoding="reference",
        length_rules={"min_len": int(cfg["min_seq_len"]), "max_len": int(cfg["max_len"])},
        metrics=metrics,
    )
