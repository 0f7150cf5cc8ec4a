"""Evaluation: data in (a cache or files), predictions out, numbers people can check.

- `load_eval_data` opens a prepared cache or reads data files of any supported format, encoding them
  exactly as the checkpoint records (`encode_batch(..., ckpt["encoding"], LengthRules(**ckpt["length_rules"]))`),
  and lines the data's classes up with the checkpoint's (evaluation runs on the intersection).
- `predict_logits` streams length-bucketed batches through the model under `torch.inference_mode`,
  with the checkpoint's temperature applied, yielding one batch at a time: evaluating millions of
  drawings never holds an [N, classes] matrix.
- `MetricAccumulator` / `compute_metrics` turn probabilities and labels into every number of the report
  (top-1, top-3, per-class precision/recall/F1, macro averages, confusion matrix, NLL, ECE with its bins).
- `early_guessing_of` measures how well the model guesses from the first strokes or points of each drawing,
  sent through the capture path (`doodle_rnn.early` says exactly how), and how soon it gets each right.
- `run_evaluation` ties them together for `doodle eval` and writes summary.json, the plots and report.html.

Conventions (also written into summary.json, so a reader never has to guess):
- Confusion matrix rows are true classes, columns predicted classes, entries counts.
- Per-class accuracy is the fraction of that class's drawings predicted correctly (= its recall).
- Precision of a class that is never predicted is 0; a class without drawings has no recall/F1/accuracy
  and is left out of the macro averages.
- ECE uses 15 equal-width confidence bins [0, 1/15), [1/15, 2/15), ..., [14/15, 1] (a confidence of
  exactly 1 falls in the last bin); confidence is the top-1 probability.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from doodle_rnn.errors import DoodleError
from doodle_rnn.probs import softmax

N_BINS = 15
ECE_RULE = (
    "expected calibration error over 15 equal-width bins of top-1 confidence "
    "([0, 1/15), [1/15, 2/15), ..., [14/15, 1]): sum over bins of (bin count / N) * |accuracy - mean confidence|"
)
NLL_EPS = 1e-12


class EvalError(DoodleError):
    """A problem with the evaluation inputs that the user can fix (the CLI prints it as `error: ...`)."""


# ----------------------------------------------------------------------------------------------- metrics
def ece_bin_of(confidence: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Bin index of each confidence: [k/n, (k+1)/n), with 1.0 in the last bin."""
    return np.clip((np.asarray(confidence, np.float64) * n_bins).astype(np.int64), 0, n_bins - 1)


@dataclass
class MetricAccumulator:
    """Running sums from which every metric follows; `update` per batch, `result` once at the end."""

    n_classes: int
    n_bins: int = N_BINS
    top_k: int = 3
    confusion: np.ndarray = field(init=False)
    n: int = field(init=False, default=0)
    topk_correct: int = field(init=False, default=0)
    nll_sum: float = field(init=False, default=0.0)
    bin_count: np.ndarray = field(init=False)
    bin_conf: np.ndarray = field(init=False)
    bin_correct: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        c, b = self.n_classes, self.n_bins
        self.confusion = np.zeros((c, c), dtype=np.int64)
        self.bin_count = np.zeros(b, dtype=np.int64)
        self.bin_conf = np.zeros(b, dtype=np.float64)
        self.bin_correct = np.zeros(b, dtype=np.int64)

    def update(self, probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add a batch; returns (predicted class, confidence) per drawing for the caller to keep."""
        probs = np.asarray(probs, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        if probs.ndim != 2 or probs.shape[1] != self.n_classes or len(probs) != len(labels):
            raise ValueError(f"probs must be [N, {self.n_classes}] with one label per row; got {probs.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.n_classes):
            raise ValueError(f"labels must lie in 0..{self.n_classes - 1}")
        pred = probs.argmax(axis=1)
        conf = probs[np.arange(len(probs)), pred]
        c = self.n_classes
        self.confusion += np.bincount(labels * c + pred, minlength=c * c).reshape(c, c)
        k = min(self.top_k, c)
        topk = (
            np.argpartition(-probs, k - 1, axis=1)[:, :k] if k < c else np.tile(np.arange(c), (len(probs), 1))
        )
        self.topk_correct += int((topk == labels[:, None]).any(axis=1).sum())
        p_true = probs[np.arange(len(probs)), labels]
        self.nll_sum += float(-np.log(np.clip(p_true, NLL_EPS, 1.0)).sum())
        bins = ece_bin_of(conf, self.n_bins)
        correct = pred == labels
        self.bin_count += np.bincount(bins, minlength=self.n_bins)
        self.bin_conf += np.bincount(bins, weights=conf, minlength=self.n_bins)
        self.bin_correct += np.bincount(bins, weights=correct, minlength=self.n_bins).astype(np.int64)
        self.n += len(labels)
        return pred, conf

    def ece(self) -> float:
        """Expected calibration error (ECE_RULE) of everything added so far."""
        return float(np.abs(self.bin_correct - self.bin_conf).sum() / max(self.n, 1))

    def result(self, classes: Sequence[str], n_pairs: int = 20) -> dict:
        if len(classes) != self.n_classes:
            raise ValueError(f"{len(classes)} class names for {self.n_classes} classes")
        cm = self.confusion
        n = max(self.n, 1)
        tp = np.diag(cm).astype(np.float64)
        support = cm.sum(axis=1)
        predicted = cm.sum(axis=0)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(support > 0, tp / np.maximum(support, 1), np.nan)
            denom = precision + recall
            f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
        f1 = np.where(support > 0, f1, np.nan)
        present = support > 0
        per_class = {
            name: {
                "support": int(support[i]),
                "predicted": int(predicted[i]),
                "correct": int(tp[i]),
                "accuracy": _num(recall[i]),
                "precision": float(precision[i]),
                "recall": _num(recall[i]),
                "f1": _num(f1[i]),
            }
            for i, name in enumerate(classes)
        }
        bins = []
        for b in range(self.n_bins):
            cnt = int(self.bin_count[b])
            bins.append({
                "lo": b / self.n_bins,
                "hi": (b + 1) / self.n_bins,
                "count": cnt,
                "accuracy": self.bin_correct[b] / cnt if cnt else None,
                "confidence": self.bin_conf[b] / cnt if cnt else None,
            })  # fmt: skip
        return {
            "n_drawings": int(self.n),
            "n_classes": int(self.n_classes),
            "top1": float(tp.sum() / n),
            "top3": float(self.topk_correct / n),
            "top3_note": "top-3 accuracy"
            if self.n_classes > 3
            else f"top-{self.n_classes}: fewer than 4 classes",
            "nll": float(self.nll_sum / n),
            "ece": self.ece(),
            "ece_rule": ECE_RULE,
            "reliability_bins": bins,
            "macro": {
                "precision": _mean(precision[present]),
                "recall": _mean(recall[present]),
                "f1": _mean(f1[present]),
                "accuracy": _mean(recall[present]),
                "classes_with_drawings": int(present.sum()),
            },
            "per_class": per_class,
            "confusion_matrix": cm.tolist(),
            "confusion_matrix_layout": "rows: true class, columns: predicted class, entries: counts (class order of `classes`)",
            "classes": list(classes),
            "most_confused": most_confused_pairs(cm, classes, n_pairs),
        }


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _mean(a: np.ndarray) -> float | None:
    return float(a.mean()) if len(a) else None


def most_confused_pairs(cm: np.ndarray, classes: Sequence[str], n: int = 20) -> list[dict]:
    """Off-diagonal cells by count (ties: by rate, then class order): true -> predicted."""
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    t, p = np.nonzero(off)
    rate = off[t, p] / np.maximum(support[t], 1)
    order = np.lexsort((p, t, -rate, -off[t, p]))[:n]
    return [
        {
            "true": classes[t[i]],
            "predicted": classes[p[i]],
            "count": int(off[t[i], p[i]]),
            "rate": float(rate[i]),
        }
        for i in order
    ]


def compute_metrics(
    probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], n_bins: int = N_BINS
) -> dict:
    """Every metric of the report for probabilities [N, C] (rows sum to 1) and true labels [N]."""
    acc = MetricAccumulator(len(classes), n_bins=n_bins)
    acc.update(probs, labels)
    return acc.result(classes)


# -------------------------------------------------------------------------------------------- prediction
def predict_logits(
    model, batches: Iterable[tuple], device=None, temperature: float = 1.0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (indices, logits / temperature as float32 [B, C]) for each (indices, x, lengths, ...) batch.

    `batches` is typically `iterate_cache(data, indices, batch_size)`: length-bucketed, so a batch holds
    drawings of similar length and little time is spent on padding.
    """
    import torch

    device = device or torch.device("cpu")
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            idx, x, lengths = batch[0], batch[1], batch[2]
            logits = model(x.to(device, non_blocking=True), lengths)
            yield np.asarray(idx), (logits.float() / float(temperature)).cpu().numpy()


# ------------------------------------------------------------------------------------------------ data
@dataclass
class EncodedDrawings:
    """Drawings read from files and encoded in memory, with the cache's batching interface
    (`lengths`, `labels`, `batch_steps`), so both go through the same `iterate_cache`."""

    steps: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    key_ids: list[str]
    classes: list[str]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.labels)

    def batch_steps(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from doodle_rnn.data.cache import gather_steps

        return gather_steps(self.steps, self.offsets, indices)


@dataclass
class EvalData:
    """What `load_eval_data` hands to the evaluation: the drawings, which to use, and how classes map."""

    data: object  # DoodleCache or EncodedDrawings
    indices: np.ndarray  # rows of `data` to evaluate
    labels: np.ndarray  # true class per row in `indices`, as an index into `classes`
    classes: list[str]  # evaluated classes (checkpoint order, present in both)
    columns: np.ndarray  # checkpoint logit column of each evaluated class
    encoding: str
    identity: dict  # where the data came from
    skipped: dict  # reason -> count: drawings of this evaluation's data that were not evaluated
    skip_examples: list[str]
    classes_not_in_data: list[str]  # checkpoint classes without data (their logits are left out)
    classes_not_in_checkpoint: dict[str, int]  # data classes unknown to the checkpoint -> drawings dropped
    skipped_at_prepare: dict = field(default_factory=dict)  # a cache's own drops, all splits (manifest)


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def checkpoint_identity(path: str | Path, ckpt: dict) -> dict:
    return {
        "path": str(Path(path).resolve()),
        "sha256": _sha256(Path(path)),
        "classes": list(ckpt["classes"]),
        "encoding": ckpt["encoding"],
        "encoding_version": ckpt.get("encoding_version"),
        "length_rules": dict(ckpt["length_rules"]),
        "temperature": float(ckpt.get("temperature", 1.0)),
        "model_config": dict(ckpt.get("model_config", {})),
        "package_version": ckpt.get("package_version"),
    }


def is_cache(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


def load_eval_data(
    inputs: Sequence[str | Path], ckpt: dict, split: str | None = None, recognized_only: bool = True
) -> EvalData:
    """Open a prepared cache (one folder with manifest.json) or read and encode data files."""
    if len(inputs) == 1 and is_cache(inputs[0]):
        return _from_cache(Path(inputs[0]), ckpt, split or "test")
    if any(is_cache(p) for p in inputs):
        raise EvalError("give either one prepared cache or data files/folders, not a mix")
    if split not in (None, "all"):
        raise EvalError(
            f"--split {split} needs a prepared cache; data files have no splits and are evaluated whole "
            "(leave --split out, or prepare a cache with `doodle prepare`)"
        )
    return _from_files(inputs, ckpt, recognized_only)


def sample_eval_data(ev: EvalData, max_drawings: int | None, seed: int = 0) -> EvalData:
    """`ev` cut to a fixed random subset of at most `max_drawings` drawings (numpy default_rng(seed),
    without replacement, kept in data order), recorded in its identity; the whole of it otherwise.

    A test split of 5 million drawings takes ~45 minutes at 2,000 drawings/s on a CPU; 100,000 of them
    give top-1 within ~0.2 points (one standard error at 90%) in a minute."""
    n = len(ev.indices)
    if not max_drawings or n <= max_drawings:
        return ev
    pick = np.sort(np.random.default_rng(seed).choice(n, max_drawings, replace=False))
    rule = f"a random subset of {max_drawings:,} of {n:,} (numpy default_rng({seed}), without replacement); --max-drawings"
    identity = ev.identity | {"sample": {"drawings": int(max_drawings), "of": int(n), "rule": rule}}
    return replace(ev, indices=ev.indices[pick], labels=ev.labels[pick], identity=identity)


def _class_map(
    data_classes: Sequence[str], ckpt_classes: Sequence[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Evaluated classes (checkpoint order), their logit columns, and data label -> evaluated label (-1: drop)."""
    in_data = set(data_classes)
    classes = [c for c in ckpt_classes if c in in_data]
    if not classes:
        raise EvalError(
            f"the checkpoint's classes ({_short(ckpt_classes)}) and the data's classes ({_short(data_classes)}) "
            "do not overlap: this checkpoint cannot be evaluated on this data"
        )
    pos = {c: i for i, c in enumerate(classes)}
    columns = np.array([list(ckpt_classes).index(c) for c in classes], dtype=np.int64)
    remap = np.array([pos.get(c, -1) for c in data_classes], dtype=np.int64)
    return classes, columns, remap


def _short(names: Sequence[str], n: int = 8) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _from_cache(path: Path, ckpt: dict, split: str) -> EvalData:
    from doodle_rnn.data.cache import CacheError, DoodleCache

    try:
        cache = DoodleCache(path)
        rows = cache.split_indices(split)
    except CacheError as exc:
        raise EvalError(str(exc)) from exc
    mine = (cache.encoding, cache.manifest.get("encoding_version", 1), cache.length_rules.to_dict())
    theirs = (ckpt["encoding"], ckpt.get("encoding_version", 1), dict(ckpt["length_rules"]))
    if mine != theirs:
        raise EvalError(
            f"{path}: the cache is encoded as {mine[0]} v{mine[1]} with length rules {mine[2]}, but the checkpoint "
            f"expects {theirs[0]} v{theirs[1]} with {theirs[2]}; pass the source data files instead (they are "
            f"re-encoded as the checkpoint records) or prepare a cache with --encoding {theirs[0]} "
            f"--min-len {theirs[2]['min_len']} --max-len {theirs[2]['max_len']}"
        )
    classes, columns, remap = _class_map(cache.classes, ckpt["classes"])
    labels = remap[cache.labels[rows].astype(np.int64)]
    keep = labels >= 0
    dropped = Counter(cache.classes[i] for i in cache.labels[rows][~keep].tolist())
    m = cache.manifest
    at_prepare = {str(k): int(v) for k, v in m.get("dropped", {}).items() if v}
    bad = m.get("skipped", {})
    for reason, k in bad.get("by_reason", {}).items():
        at_prepare[f"bad record: {reason}"] = int(k)
    skipped = {"class not in checkpoint": int(sum(dropped.values()))} if dropped else {}
    examples = [e for f in bad.get("files", {}).values() for e in f.get("examples", [])][:10]
    identity = {
        "kind": "cache",
        "path": str(path.resolve()),
        "split": split,
        "created": m.get("created"),
        "encoding": m.get("encoding"),
        "length_rules": m.get("length_rules"),
        "n_drawings": m.get("n_drawings"),
        "split_counts": m.get("split_counts"),
        "n_classes": len(cache.classes),
        "split_rule": m.get("split_rule"),
        "filters": m.get("filters"),
        "sources": [s.get("path") for s in m.get("sources", [])],
    }
    return EvalData(
        data=cache, indices=rows[keep], labels=labels[keep], classes=classes, columns=columns,
        encoding=cache.encoding, identity=identity, skipped=skipped, skip_examples=examples,
        classes_not_in_data=[c for c in ckpt["classes"] if c not in set(cache.classes)],
        classes_not_in_checkpoint=dict(dropped), skipped_at_prepare=at_prepare,
    )  # fmt: skip


def _from_files(
    inputs: Sequence[str | Path], ckpt: dict, recognized_only: bool, chunk: int = 4096
) -> EvalData:
    from doodle_rnn.data.encode import LengthRules, encode_stream
    from doodle_rnn.data.formats import DataFormatError, SkipReport, iter_drawings, list_data_files

    try:
        files = list_data_files(inputs)
    except DataFormatError as exc:
        raise EvalError(str(exc)) from exc
    encoding = ckpt["encoding"]
    rules = LengthRules(**ckpt["length_rules"])
    known = {c: i for i, c in enumerate(ckpt["classes"])}
    report = SkipReport()
    skipped: Counter = Counter()
    unknown: Counter = Counter()
    seen: set[str] = set()
    steps_parts: list[np.ndarray] = []
    len_parts: list[np.ndarray] = []
    labels: list[int] = []
    keys: list[str] = []
    file_info = []

    def usable() -> Iterator:
        """The files' drawings of the checkpoint's classes that pass the filters, each counted where dropped."""
        for f in files:
            file_info.append({"path": str(f.resolve()), "bytes": f.stat().st_size})
            for d in iter_drawings(f, strict=False, report=report):
                if d.word not in known:
                    unknown[d.word or "(no class)"] += 1
                    continue
                if recognized_only and not d.recognized:
                    skipped["not recognized by the game"] += 1
                    continue
                if d.key_id in seen:
                    skipped["duplicate key_id"] += 1
                    continue
                seen.add(d.key_id)
                yield d

    try:
        for steps, lengths, kept, too_short in encode_stream(usable(), encoding, rules, chunk):
            skipped["too short (length rules)"] += too_short
            steps_parts.append(steps)
            len_parts.append(lengths)
            labels.extend(known[d.word] for d in kept)
            keys.extend(d.key_id for d in kept)
    except DataFormatError as exc:
        raise EvalError(str(exc)) from exc
    for reason, k in report.by_reason().items():
        skipped[f"bad record: {reason}"] += k
    if unknown:
        skipped["class not in checkpoint"] = sum(unknown.values())
    present = sorted(set(labels))
    if not labels:
        if unknown:
            _class_map(list(unknown), ckpt["classes"])  # raises the no-overlap error
        raise EvalError(
            f"no usable drawings in {_short([str(p) for p in inputs])} ({dict(skipped) or 'empty'})"
        )
    data_classes = [ckpt["classes"][i] for i in present]
    classes, columns, remap = _class_map(data_classes, ckpt["classes"])
    ckpt_to_eval = np.full(len(ckpt["classes"]), -1, dtype=np.int64)
    ckpt_to_eval[columns] = np.arange(len(classes))
    lengths = np.concatenate(len_parts)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    lab = ckpt_to_eval[np.asarray(labels, dtype=np.int64)]
    data = EncodedDrawings(np.concatenate(steps_parts), offsets, lab, keys, classes)
    examples = [e for ex in report.examples.values() for e in ex][:10]
    return EvalData(
        data=data, indices=np.arange(len(lab)), labels=lab, classes=classes, columns=columns, encoding=encoding,
        identity={"kind": "files", "files": file_info, "split": "all (files have no splits)",
                  "recognized_only": recognized_only},
        skipped=dict(skipped), skip_examples=examples,
        classes_not_in_data=[c for c in ckpt["classes"] if c not in set(classes)],
        classes_not_in_checkpoint=dict(unknown),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ evaluation
@dataclass
class Predictions:
    """Per-drawing results, kept for plots and example pictures (O(N), never O(N x classes))."""

    rows: np.ndarray  # row in the data
    labels: np.ndarray  # true evaluated class
    pred: np.ndarray  # predicted evaluated class
    conf: np.ndarray  # top-1 probability
    metrics: dict
    top1_all_classes: float | None = None  # argmax over every checkpoint class, when some had no data


def evaluate_data(model, ev: EvalData, temperature: float = 1.0, batch_size: int = 1024, device=None,
                  progress: bool = False) -> Predictions:  # fmt: skip
    """Predict every drawing of `ev` and accumulate the metrics over its classes.

    Probabilities are a softmax over the evaluated classes only (the checkpoint's classes that the data
    has); when the checkpoint knows more classes, the top-1 over all of them is reported beside it.
    """
    import torch
    from tqdm import tqdm

    from doodle_rnn.tensors import iterate_cache

    device = device or torch.device("cpu")
    model.to(device)
    label_of = row_labels(ev.indices, ev.labels)
    acc = MetricAccumulator(len(ev.classes))
    restricted = len(ev.columns) < len(model.fc.weight)
    full_correct = 0
    parts: list[tuple[np.ndarray, ...]] = []
    batches = iterate_cache(ev.data, ev.indices, batch_size)  # type: ignore[arg-type]
    bar = tqdm(total=len(ev.indices), unit="drawing", desc="eval", disable=not progress)
    for rows, logits in predict_logits(model, batches, device, temperature):
        y = label_of(rows)
        pred, conf = acc.update(softmax(logits[:, ev.columns]), y)
        if restricted:
            full_correct += int((logits.argmax(axis=1) == ev.columns[y]).sum())
        parts.append((rows, y, pred.astype(np.int32), conf.astype(np.float32)))
        bar.update(len(rows))
    bar.close()
    rows, y, pred, conf = (np.concatenate([p[i] for p in parts]) for i in range(4))
    metrics = acc.result(ev.classes)
    return Predictions(rows, y, pred, conf, metrics, full_correct / max(len(rows), 1) if restricted else None)


def row_labels(indices: np.ndarray, labels: np.ndarray):
    """rows -> their evaluated labels, by binary search when `indices` ascend (a cache's split, files):
    nothing the size of the whole cache is allocated (an int64 per cache row was 400 MB at 50 M)."""
    if len(indices) < 2 or bool(np.all(indices[1:] > indices[:-1])):
        return lambda rows: labels[np.searchsorted(indices, rows)]
    table = dict(zip(indices.tolist(), labels.tolist(), strict=True))
    return lambda rows: np.array([table[r] for r in rows.tolist()], dtype=np.int64)


def example_strokes(ev: EvalData, rows: Sequence[int]) -> list[list]:
    """The drawings at `rows` as strokes, decoded from the encoded steps: exactly what the model saw."""
    from doodle_rnn.data.encode import batch_strokes

    return batch_strokes(*ev.data.batch_steps(np.asarray(rows, dtype=np.int64)), ev.encoding)


def confused_examples(ev: EvalData, pr: Predictions, n_pairs: int = 6, per_pair: int = 4) -> list[dict]:
    """For the most confused pairs, the most confident wrong predictions of each, with their strokes."""
    out = []
    for pair in pr.metrics["most_confused"][:n_pairs]:
        t, p = ev.classes.index(pair["true"]), ev.classes.index(pair["predicted"])
        hit = np.flatnonzero((pr.labels == t) & (pr.pred == p))
        hit = hit[np.argsort(-pr.conf[hit], kind="stable")][:per_pair]
        rows = pr.rows[hit]
        keys = [_key_of(ev.data, r) for r in rows.tolist()]
        out.append({
            **pair,
            "examples": [
                {"key_id": k, "confidence": float(c), "strokes": s}
                for k, c, s in zip(keys, pr.conf[hit].tolist(), example_strokes(ev, rows.tolist()), strict=True)
            ],
        })  # fmt: skip
    return out


def _key_of(data, row: int) -> str:
    k = data.key_ids[row]
    return k.decode() if isinstance(k, bytes | np.bytes_) else str(k)


def early_guessing_of(ckpt: dict, ev: EvalData, pr: Predictions, max_drawings: int | None = 5000,
                      seed: int = 0) -> dict:  # fmt: skip
    """The curve for the drawings of an evaluation, through the capture path of a `Classifier`.

    Strokes come from the source files by key_id, each checked to reproduce the steps plain eval used
    (`early.recover_strokes`, which says what happens without the files). With more than `max_drawings`
    drawings a random subset (fixed seed) is measured. A checkpoint whose card has an `announce_threshold`
    (a shipped model) also gets `announcement`: its first calls on those drawings replayed at every 2% of
    their points (`early.announcement_replay`). Returns the summary's `early_guessing` entry
    (with the `_right` arrays for the plot; `run_evaluation` drops them before writing JSON).
    """
    from doodle_rnn import early
    from doodle_rnn.data.encode import LengthRules
    from doodle_rnn.inference import Classifier

    t0 = time.perf_counter()
    pick = np.arange(len(ev.indices))
    if max_drawings is not None and len(pick) > max_drawings:
        pick = np.sort(np.random.default_rng(seed).choice(len(pick), max_drawings, replace=False))
    rows = ev.indices[pick]
    keys = [_key_of(ev.data, r) for r in rows.tolist()]
    expected = [ev.data.batch_steps(np.array([r]))[0] for r in rows.tolist()]
    if ev.identity["kind"] == "cache":
        sources = list(ev.identity.get("sources") or [])
    else:
        sources = [f["path"] for f in ev.identity["files"]]
    strokes, origin = early.recover_strokes(sources, keys, expected, ev.encoding,
                                            LengthRules(**ckpt["length_rules"]))  # fmt: skip
    use = [j for j, s in enumerate(strokes) if s is not None]
    info = {"drawings_available": int(len(ev.indices)), "drawings_sampled": int(len(pick)),
            "sample_rule": None if len(pick) == len(ev.indices) else
            f"a random subset of {len(pick)} (numpy default_rng({seed}), without replacement); --early-max",
            "strokes_from": origin, "recover_seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
    if not use:
        return info | {"skipped": "no drawing's strokes could be recovered (source files missing, and the "
                       f"{ev.encoding} encoding cannot be decoded into strokes); evaluate the source files "
                       "instead, or keep them where the cache's manifest says"}  # fmt: skip
    clf = Classifier.from_checkpoint(ckpt)
    labels = ev.labels[pick][use]
    measured = [strokes[j] for j in use]
    res = early.early_guessing(clf, measured, labels, ev.columns)
    threshold = (ckpt.get("card") or {}).get("announce_threshold")
    if threshold is not None:  # a shipped model: how its "I know" calls fare on these drawings
        res["announcement"] = early.announcement_replay(clf, measured, labels, float(threshold), ev.columns)
    row_pos = {r: i for i, r in enumerate(pr.rows.tolist())}
    plain = [pr.pred[row_pos[r]] == pr.labels[row_pos[r]] for r in rows[use].tolist()]
    return info | res | {"plain_eval_top1_same_drawings": float(np.mean(plain)), "backend": clf.backend,
                         "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip


def load_model(checkpoint: str | Path):
    """(checkpoint dict, model in eval mode); any unusable file is an EvalError naming it."""
    from doodle_rnn.checkpoint import CheckpointError, build_model, load_checkpoint

    try:
        ckpt = load_checkpoint(checkpoint)
        return ckpt, build_model(ckpt)
    except (CheckpointError, KeyError, RuntimeError, TypeError) as exc:
        raise EvalError(
            str(exc) if isinstance(exc, CheckpointError) else f"{checkpoint}: unusable checkpoint ({exc})"
        ) from exc


def run_evaluation(checkpoint: str | Path, inputs: Sequence[str | Path], out: str | Path, split: str | None = None,
                   batch_size: int = 1024, device: str = "auto", recognized_only: bool = True,
                   progress: bool = False, early: bool = True, early_max: int | None = 5000,
                   num_threads: int | None = None, max_drawings: int | None = None) -> dict:  # fmt: skip
    """`doodle eval`: load, predict, measure, plot, and write DIR/summary.json + DIR/report.html.

    early: also measure the early-guessing curve (`early_guessing_of`) on up to `early_max` drawings.
    max_drawings: evaluate a fixed random subset of at most this many (`sample_eval_data`).
    """
    from doodle_rnn import plots, report
    from doodle_rnn.devices import pick_device
    from doodle_rnn.models import ShippedModelError, resolve_model
    from doodle_rnn.threads import use_threads

    t0 = time.perf_counter()
    try:
        checkpoint = resolve_model(checkpoint)  # a shipped model's name -> its file
    except ShippedModelError as exc:
        raise EvalError(str(exc)) from exc
    ckpt, model = load_model(checkpoint)
    dev = pick_device(device)
    ev = sample_eval_data(load_eval_data(inputs, ckpt, split, recognized_only), max_drawings)
    if len(ev.indices) == 0:
        raise EvalError(f"no drawings to evaluate in split {split or 'test'} of {inputs[0]}")
    use_threads(num_threads, len(ev.indices))  # small jobs: one thread (see threads.py)
    temperature = float(ckpt.get("temperature", 1.0))
    t_pred = time.perf_counter()
    pr = evaluate_data(model, ev, temperature, batch_size, dev, progress)
    pred_seconds = time.perf_counter() - t_pred
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = pr.metrics
    pairs = confused_examples(ev, pr)
    images = plots.write_all(out, m, pr.conf, pr.pred == pr.labels, pairs)
    eg = early_guessing_of(ckpt, ev, pr, early_max) if early else None
    if eg is not None and "skipped" not in eg:
        images["early_guessing"] = plots.plot_early_guessing(eg, out / "early_guessing.png")
    summary = {
        "checkpoint": checkpoint_identity(checkpoint, ckpt),
        "data": ev.identity,
        "classes": {
            "evaluated": ev.classes,
            "checkpoint_classes_without_data": ev.classes_not_in_data,
            "data_classes_not_in_checkpoint": ev.classes_not_in_checkpoint,
            "probabilities": (
                "softmax over the evaluated classes only"
                + (
                    f" ({len(ev.classes)} of the checkpoint's {len(ckpt['classes'])})"
                    if ev.classes_not_in_data
                    else ""
                )
            ),
        },
        "temperature": temperature,
        "n_drawings": m["n_drawings"],
        "skipped": {
            "total": int(sum(ev.skipped.values())),
            "by_reason": ev.skipped,
            "examples": ev.skip_examples,
            "at_prepare": {
                "note": "dropped or skipped when the cache was prepared (whole cache, all splits)",
                "by_reason": ev.skipped_at_prepare,
            }
            if ev.identity["kind"] == "cache"
            else None,
        },
        "metrics": m,
        "top1_over_all_checkpoint_classes": pr.top1_all_classes,
        "most_confused_examples": [
            {k: v for k, v in p.items() if k != "examples"}
            | {"key_ids": [e["key_id"] for e in p["examples"]]}
            for p in pairs
        ],
        "early_guessing": None if eg is None else {k: v for k, v in eg.items() if k != "_right"},
        "plots": {k: v.name for k, v in images.items()},
        "device": str(dev),
        "batch_size": batch_size,
        "seconds": round(time.perf_counter() - t0, 3),
        "predict_seconds": round(pred_seconds, 3),
        "drawings_per_second": round(m["n_drawings"] / max(pred_seconds, 1e-9), 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.html").write_text(report.render_html(summary, images), encoding="utf-8")
    return summary
