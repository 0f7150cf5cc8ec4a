"""`Classifier`: load a trained model and predict any drawing, the same way it was trained.

Every drawing goes through the one path training used: `encode.encode_batch` (which normalises raw
captures to Google's simplified form) and `tensors.pad_features`; nothing here preprocesses on its own,
so the browser, the CLI, the server and the Python API cannot drift from the training data.

Backends. A model runs on one of two engines with the same logits (parity-tested to 1e-4):
- `onnx`: ONNX Runtime on the graph of `doodle_rnn.export` (fused GRU kernel with per-sequence lengths).
  About 3x faster than torch eager for one drawing on CPU, so it is what `auto` picks when
  onnxruntime is installed; a `.pt` checkpoint is converted in memory on load.
- `torch`: the `GRUClassifier` itself (`backend="torch"`).
An exported `.onnx` file carries classes, encoding, length rules and temperature in its metadata, so it
loads without the checkpoint.

Short drawings. The length rules' `min_len` is a data-cleaning rule for training (drop scribbles).
A user's drawing in progress is often shorter, and still deserves an answer, so inference accepts any
drawing with at least one step (`Prediction.short` says when it was below `min_len`, where the model
is less reliable), and keeps the first `max_len` steps exactly as training did. Even a single tap
gives one step (normalisation turns it into a zero-length stroke, as in Google's files); should a
drawing ever reach the model with no step at all, its prediction is an empty list, never an exception.

Announcing ("I know: it's a cow!"). A shipped model's card may carry `announce_threshold`, chosen on the
validation split so that a guess whose calibrated top-1 probability reaches it is right at least 95% of
the time. `Classifier.announce_threshold` exposes it (None: the model never announces), and a stream's
`predict()` says whether its guess is confident and which class the drawing has been announced as.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from doodle_rnn.data.encode import (
    LengthRules,
    encode_batch,
    features_to_strokes,
    pad_steps,
    rules_from_dict,
    steps_to_features,
)
from doodle_rnn.data.formats import validate_strokes
from doodle_rnn.errors import DoodleError
from doodle_rnn.probs import softmax

if TYPE_CHECKING:
    from doodle_rnn.model_files import ModelFile

BACKENDS = ("auto", "onnx", "torch")
# ONNX Runtime's GRU kernel is fastest on small, length-sorted batches (measured in
# benchmarks/bench_infer.py: ~2,000 drawings/s per core at 16, fewer at 128 and above).
DEFAULT_CHUNK = 16


class InferenceError(DoodleError):
    """A model file that cannot be used, or a drawing that is not a drawing."""


@dataclass
class Prediction:
    """One drawing's answer. `top` is empty when the drawing has no step for the model to read."""

    top: list[tuple[str, float]]
    steps: int  # steps the model read (after normalising, encoding and the max_len cap)
    short: bool  # fewer steps than the training rules' min_len: an answer, but a less reliable one
    features: np.ndarray = field(repr=False)  # float32 [steps, 3], exactly what the model read


class StreamGuess(list):
    """`StreamSession.predict()`'s answer: the (class, probability) list, best first, plus the announcement.

    confident: the top probability reaches the model's `announce_threshold` (never, without one).
    announced: the class this drawing was announced as: the first confident guess since the drawing
        started (or was cleared). It stays through later strokes and undo, like the game's "I know: it's
        a cow!", which is never taken back; None until then.
    """

    confident: bool
    announced: str | None

    def __init__(self, top=(), confident: bool = False, announced: str | None = None):
        super().__init__(top)
        self.confident = confident
        self.announced = announced


class _OrtBackend:
    name = "onnx"

    def __init__(self, model: str | bytes, threads: int = 1):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

    def logits(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"x": x, "lengths": lengths})[0]


class _TorchBackend:
    name = "torch"

    def __init__(self, ckpt: dict):
        from doodle_rnn.model import GRUClassifier, ModelConfig

        # The packed nn.GRU, not the fused CPU scan: the scan is built for training (it has a fast
        # backward); for inference packed is ~2x faster per drawing and ~1.4x per batch (bench_infer.py).
        self.model = GRUClassifier(ModelConfig(**ckpt["model_config"]), impl="packed")
        self.model.load_state_dict(ckpt["model_state"])
        self.model.eval()

    def logits(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()


def _announce_threshold(card: dict, source: str) -> float | None:
    t = card.get("announce_threshold") if isinstance(card, dict) else None
    if t is None:
        return None
    if type(t) not in (int, float) or not 0 < t <= 1:
        where = f"{source}: " if source else ""
        raise InferenceError(f"{where}card.announce_threshold must be a number in (0, 1], not {t!r}")
    return float(t)


def _pad(steps: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The shared padding path (`encode.pad_steps`, which `tensors.pad_features` wraps for training)."""
    return pad_steps(steps, lengths)


def open_model_file(spec: str | Path | None) -> ModelFile:
    """`model_files.open_model` for a classifier: a model that cannot be found or read is an
    InferenceError naming it (what `Classifier.load` and the server's registry both raise)."""
    from doodle_rnn.model_files import ModelFileError, open_model

    try:
        return open_model(spec)
    except ModelFileError as exc:
        raise InferenceError(str(exc)) from exc


class Classifier:
    """A loaded model: `predict`, `predict_many`, `stream`, `model_view`; thread-safe for prediction."""

    def __init__(self, backend, meta: dict, source: str):
        self._backend = backend
        self.classes: list[str] = list(meta["classes"])
        self.encoding: str = meta["encoding"]
        self.rules: LengthRules = rules_from_dict(meta["length_rules"])
        # Inference reads any drawing with at least one step (see the module docstring).
        self.infer_rules = LengthRules(min_len=1, max_len=self.rules.max_len)
        self.temperature = float(meta.get("temperature", 1.0)) or 1.0
        self._meta = meta
        self.source = source
        self._announce = _announce_threshold(meta.get("card") or {}, source)
        self.chunk = DEFAULT_CHUNK
        self._pool = None
        self._threads = max(1, min(4, os.cpu_count() or 1))  # a batch runs this many chunks at once
        self._pool_lock = threading.Lock()

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path | None = None, backend: str = "auto", threads: int = 1) -> Classifier:
        """A `.pt` checkpoint, a `.onnx` file from `doodle export`, or a shipped model's name.

        No path: the default shipped model (`animals10`, trained on real drawings; docs/models.md).

        backend: `auto` (ONNX Runtime when installed, else torch), `onnx` or `torch` (`.pt` only).
        threads: ONNX Runtime intra-op threads per run (1 is fastest for this GRU; parallelism comes
        from running several batches at once, see `predict_many`).
        """
        if backend not in BACKENDS:
            raise InferenceError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        return cls.from_model(open_model_file(path), backend, threads)

    @classmethod
    def from_model(cls, model: ModelFile, backend: str = "auto", threads: int = 1) -> Classifier:
        """The classifier of a model file already read (`model_files.open_model`): the shared way in."""
        if backend not in BACKENDS:
            raise InferenceError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if model.kind == "pt":
            return cls.from_checkpoint(model.checkpoint, backend, threads, source=str(model.path))
        if backend == "torch":
            raise InferenceError(
                f"{model.path}: an ONNX file runs on ONNX Runtime; use backend='onnx' or 'auto'"
            )
        try:
            engine = _OrtBackend(model.onnx, threads)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise InferenceError(
                f"{model.path}: not a loadable ONNX model ({type(exc).__name__}: {exc})"
            ) from exc
        return cls(engine, model.meta, str(model.path))

    @classmethod
    def from_checkpoint(
        cls, ckpt: dict, backend: str = "auto", threads: int = 1, source: str = ""
    ) -> Classifier:
        from doodle_rnn.export import metadata_from_checkpoint

        meta = metadata_from_checkpoint(ckpt)
        if backend == "auto":
            try:
                import onnxruntime  # noqa: F401

                backend = "onnx"
            except ImportError:
                backend = "torch"
        if backend == "onnx":
            from doodle_rnn.export import build_onnx

            engine = _OrtBackend(build_onnx(ckpt).SerializeToString(), threads)
        else:
            engine = _TorchBackend(ckpt)
        return cls(engine, meta, source)

    # ----------------------------------------------------------------------------- facts
    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def announce_threshold(self) -> float | None:
        """Calibrated top-1 probability from which a guess is announced (the model card's), or None."""
        return self._announce

    @property
    def name(self) -> str:
        """The model card's name, else the file's stem ("" for a model built in memory)."""
        card = self._meta.get("card") or {}
        return str(card.get("name") or (Path(self.source).stem if self.source else ""))

    @property
    def info(self) -> dict:
        m = self._meta
        return {
            "name": self.name,
            "classes": list(self.classes),
            "encoding": self.encoding,
            "encoding_version": m.get("encoding_version", 1),
            "length_rules": self.rules.to_dict(),
            "temperature": self.temperature,
            "metrics": m.get("metrics", {}),
            "model_config": m.get("model_config", {}),
            "version": m.get("package_version", ""),
            "quantization": m.get("quantization", "none"),
            "backend": self.backend,
            "source": self.source,
            "card": dict(m.get("card") or {}),
        }

    # ----------------------------------------------------------------------------- prediction
    def predict(self, strokes: Sequence, top_k: int = 3) -> list[tuple[str, float]]:
        """Top-k (class, probability) for one drawing: raw `[xs, ys, ts]` strokes of any scale, or simplified."""
        return self.analyze_many([strokes], top_k)[0].top

    def predict_many(self, strokes_list: Sequence[Sequence], top_k: int = 3) -> list[list[tuple[str, float]]]:
        """`predict` for many drawings, batched by length (same answers as one at a time)."""
        return [p.top for p in self.analyze_many(strokes_list, top_k)]

    def analyze(self, strokes: Sequence, top_k: int = 3) -> Prediction:
        """`predict` plus what the model read (steps, features) and whether the drawing was short."""
        return self.analyze_many([strokes], top_k)[0]

    def analyze_many(self, strokes_list: Sequence[Sequence], top_k: int = 3) -> list[Prediction]:
        if top_k < 1:
            raise InferenceError(f"top_k must be at least 1, not {top_k}")
        k = min(int(top_k), len(self.classes))
        n = len(strokes_list)
        if n == 0:
            return []
        steps, lengths, kept = self._encode(strokes_list)
        probs = self._probabilities(steps, lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        out: list[Prediction | None] = [None] * n
        for j, i in enumerate(kept.tolist()):
            p = probs[j]
            best = np.argpartition(-p, k - 1)[:k] if k < len(p) else np.arange(len(p))
            best = best[np.argsort(-p[best], kind="stable")]
            out[i] = Prediction(
                top=[(self.classes[c], float(p[c])) for c in best.tolist()],
                steps=int(lengths[j]),
                short=int(lengths[j]) < self.rules.min_len,
                features=steps_to_features(steps[offsets[j] : offsets[j + 1]]),
            )
        empty = np.zeros((0, 3), np.float32)
        return [p if p is not None else Prediction([], 0, True, empty) for p in out]

    def probabilities(self, strokes_list: Sequence[Sequence]) -> tuple[np.ndarray, np.ndarray]:
        """All class probabilities for many drawings: `(probs [n, classes] float32, read [n] bool)`.

        The same path as `analyze_many` (validate, normalise, encode, pad, batched by length), without
        building a `Prediction` per drawing: for measuring many drawings at once (`early.early_guessing`).
        `read` is False for a drawing that gave no step to read; its row of `probs` is all zeros.
        """
        n = len(strokes_list)
        probs = np.zeros((n, len(self.classes)), np.float32)
        read = np.zeros(n, dtype=bool)
        if n:
            steps, lengths, kept = self._encode(strokes_list)
            probs[kept] = self._probabilities(steps, lengths)
            read[kept] = True
        return probs, read

    def _encode(self, strokes_list: Sequence[Sequence]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validate, then `encode_batch` (normalising raw captures) with the inference length rules."""
        for i, strokes in enumerate(strokes_list):
            why = validate_strokes(strokes)
            if why:
                where = f"drawing {i}: " if len(strokes_list) > 1 else ""
                raise InferenceError(f"{where}{why}")
        return encode_batch(strokes_list, self.encoding, self.infer_rules)

    def _probabilities(self, steps: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Softmax(logits / temperature) for encoded drawings, in their given order."""
        n = len(lengths)
        if n == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        order = np.argsort(lengths, kind="stable")
        size = self.chunk
        if self.backend == "onnx":  # spread even a small batch over the threads (the GRU is compute-bound)
            size = max(1, min(size, -(-n // self._threads)))
        chunks = [order[s : s + size] for s in range(0, n, size)]

        def run(idx: np.ndarray) -> np.ndarray:
            sub = np.concatenate([steps[offsets[i] : offsets[i + 1]] for i in idx.tolist()])
            x, lens = _pad(sub, lengths[idx])
            return self._backend.logits(x, lens)

        if len(chunks) > 1 and self.backend == "onnx":
            results = list(self._executor().map(run, chunks))
        else:
            results = [run(c) for c in chunks]
        logits = np.empty((n, len(self.classes)), np.float32)
        for idx, lg in zip(chunks, results, strict=True):
            logits[idx] = lg
        return softmax(logits, self.temperature)

    def _executor(self):
        """Threads that run length-chunks at once (ONNX Runtime releases the GIL while it computes)."""
        with self._pool_lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="doodle-infer")
            return self._pool

    def model_view(self, strokes: Sequence) -> list[list[list[int]]]:
        """The drawing as the model sees it: normalised, encoded and decoded back into strokes."""
        return self.view_of(self.analyze(strokes, 1))

    def view_of(self, pred: Prediction) -> list[list[list[int]]]:
        return features_to_strokes(pred.features, self.encoding) if pred.steps else []

    def stream(self) -> StreamSession:
        """An incremental drawing: add points as they arrive, ask for a prediction at any time."""
        return StreamSession(self)


class StreamSession:
    """Points arrive one by one (pointer events); `predict()` answers for the drawing so far.

    The model is bidirectional and a raw drawing is normalised over its whole extent (alignment and
    scale change as it grows), so there is no state to carry forward honestly: each `predict()` runs
    the full path on the strokes so far, which is what makes it equal `Classifier.predict` on the same
    strokes. The answer is cached until the drawing changes.

    The announcement (`StreamGuess.announced`) is the one piece of state: the first confident answer
    `predict()` gave for this drawing. Only answers that were asked for count (as on the page, which
    announces from the answers it received). It stays through further strokes and `undo()`, and is
    forgotten when the drawing is emptied (`clear()`, or undoing its last stroke).
    """

    def __init__(self, clf: Classifier):
        self.clf = clf
        self._strokes: list[list[list[float]]] = []
        self._open = False
        self._timed: bool | None = None
        self._cache: tuple[int, int, list] | None = None
        self._version = 0
        self._announced: str | None = None

    def add_point(self, x: float, y: float, t: float | None = None) -> None:
        timed = t is not None
        if self._timed is None:
            self._timed = timed
        elif timed != self._timed:
            raise InferenceError("give a time for every point of a drawing, or for none")
        if not self._open:
            self._strokes.append([[], [], []] if timed else [[], []])
            self._open = True
        s = self._strokes[-1]
        s[0].append(x)
        s[1].append(y)
        if timed:
            s[2].append(t)
        self._version += 1

    def end_stroke(self) -> None:
        self._open = False

    def undo(self) -> None:
        """Remove the last stroke (the page's undo button). An announcement stays unless nothing is left."""
        if self._strokes:
            self._strokes.pop()
            self._open = False
            self._version += 1
            if not self._strokes:
                self._announced = None

    def clear(self) -> None:
        """Start a new drawing (and forget its announcement)."""
        self._strokes.clear()
        self._open = False
        self._timed = None
        self._announced = None
        self._version += 1

    @property
    def strokes(self) -> list[list[list[float]]]:
        return [[list(c) for c in s] for s in self._strokes]

    @property
    def announced(self) -> str | None:
        """The class this drawing has been announced as (see the class docstring), or None."""
        return self._announced

    def predict(self, top_k: int = 3) -> StreamGuess:
        """Top-k (class, probability) for the drawing so far, with `confident` and `announced` (StreamGuess)."""
        if not self._strokes:
            return StreamGuess([], False, self._announced)
        if self._cache and self._cache[0] == self._version and self._cache[1] == top_k:
            top = self._cache[2]
        else:
            top = self.clf.predict(self._strokes, top_k)
            self._cache = (self._version, top_k, top)
        threshold = self.clf.announce_threshold
        confident = bool(top) and threshold is not None and top[0][1] >= threshold
        if confident and self._announced is None:
            self._announced = top[0][0]
        return StreamGuess(top, confident, self._announced)
